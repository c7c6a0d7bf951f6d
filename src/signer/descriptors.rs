//! Runs in the signer (the forked child, before and after exec): the fixed descriptor layout a
//! signer serves from, and the lane numbers that index it.
//!
//! Lane `i` reads requests from descriptor `REQUEST_FD_BASE + i` and writes answers to
//! `RESPONSE_FD_BASE + i`; 0, 1 and 2 are `/dev/null`; nothing else is open. The layout is the
//! same in both spawn modes, so the seccomp policy can name the descriptors (`sandbox/`). A
//! fork-exec child also holds the signer program at `PROGRAM_FD` until it execs through it; the
//! exec'd signer closes it with every other unexpected descriptor (`close_unexpected`).
//! Nothing here allocates: it runs between fork and exec.

use std::os::fd::{BorrowedFd, RawFd};

use crate::sys;
use crate::wire::MAX_WORKERS;

/// `MAX_WORKERS` as a descriptor offset (checked at compile time below).
const WORKER_SLOTS: RawFd = 16;
const _: () = assert!(WORKER_SLOTS as usize == MAX_WORKERS);

/// The descriptor lane `i` reads requests from is `REQUEST_FD_BASE + i`.
pub(crate) const REQUEST_FD_BASE: RawFd = 3;
/// The descriptor lane `i` writes answers to is `RESPONSE_FD_BASE + i`.
pub(crate) const RESPONSE_FD_BASE: RawFd = REQUEST_FD_BASE + WORKER_SLOTS;
/// Where a fork-exec child holds the signer program it execs through. Not close-on-exec: a
/// program that is a script is read by its interpreter through `/dev/fd/35`. The exec'd signer
/// closes it before anything else (`close_unexpected`).
pub(crate) const PROGRAM_FD: RawFd = RESPONSE_FD_BASE + WORKER_SLOTS;
/// Where inherited descriptors are parked while the fixed ones are laid out.
const PARKING_FD_MIN: RawFd = PROGRAM_FD + 16;

/// How many lanes a signer serves: 1 to [`MAX_WORKERS`], checked once where the number enters
/// (the host's config, an exec'd signer's bootstrap), so a lane number is always in range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LaneCount(u8);

impl LaneCount {
    /// `workers` lanes, if that is 1 to [`MAX_WORKERS`].
    pub(crate) fn new(workers: u8) -> Option<Self> {
        (1..=MAX_WORKERS)
            .contains(&usize::from(workers))
            .then_some(Self(workers))
    }

    /// The number of lanes.
    pub(crate) fn get(self) -> usize {
        usize::from(self.0)
    }

    /// Every lane, from 0.
    pub(crate) fn lanes(self) -> impl DoubleEndedIterator<Item = Lane> + ExactSizeIterator {
        (0..self.0).map(Lane)
    }
}

/// One lane's number, below its signer's [`LaneCount`] (and so below [`MAX_WORKERS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lane(u8);

impl Lane {
    /// Lane 0, which every signer has: start-up messages travel on it.
    pub(crate) const FIRST: Lane = Lane(0);

    fn offset(self) -> RawFd {
        RawFd::from(self.0)
    }

    /// The descriptor this lane reads requests from.
    pub(crate) fn request_fd(self) -> BorrowedFd<'static> {
        sys::fixed_descriptor(REQUEST_FD_BASE + self.offset())
    }

    /// The descriptor this lane writes answers to.
    pub(crate) fn response_fd(self) -> BorrowedFd<'static> {
        sys::fixed_descriptor(RESPONSE_FD_BASE + self.offset())
    }
}

/// Puts lane `i`'s pipes on their fixed numbers, stdin/stdout/stderr on /dev/null, the signer
/// program (if there is one to exec) on `PROGRAM_FD`, and closes every other descriptor the host
/// left open. `lanes` holds (request, response) per lane.
pub(crate) fn lay_out(
    lanes: &[(RawFd, RawFd)],
    dev_null: RawFd,
    program: Option<RawFd>,
) -> std::io::Result<()> {
    let count = u8::try_from(lanes.len())
        .ok()
        .and_then(LaneCount::new)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // Park every descriptor we need above the fixed range first, so laying out one cannot
    // overwrite another that still sits on a fixed number. A fixed array: no allocation
    // between fork and exec.
    let mut parked = [(0, 0); MAX_WORKERS];
    for (slot, &(request, response)) in parked.iter_mut().zip(lanes) {
        *slot = (
            sys::duplicate_at_or_above(request, PARKING_FD_MIN)?,
            sys::duplicate_at_or_above(response, PARKING_FD_MIN)?,
        );
    }
    let dev_null = sys::duplicate_at_or_above(dev_null, PARKING_FD_MIN)?;
    let program = match program {
        Some(program) => Some(sys::duplicate_at_or_above(program, PARKING_FD_MIN)?),
        None => None,
    };
    for (lane, &(request, response)) in count.lanes().zip(&parked) {
        sys::duplicate_onto(request, REQUEST_FD_BASE + lane.offset())?;
        sys::duplicate_onto(response, RESPONSE_FD_BASE + lane.offset())?;
    }
    for standard in 0..=2 {
        sys::duplicate_onto(dev_null, standard)?;
    }
    match program {
        Some(program) => {
            sys::duplicate_onto(program, PROGRAM_FD)?;
            close_all_but(count, true)
        }
        None => close_unexpected(count),
    }
}

/// Closes every descriptor but 0-2 and the lanes' own.
pub(crate) fn close_unexpected(count: LaneCount) -> std::io::Result<()> {
    close_all_but(count, false)
}

/// Closes every descriptor but 0-2, the lanes' own, and `PROGRAM_FD` if `keep_program`.
fn close_all_but(count: LaneCount, keep_program: bool) -> std::io::Result<()> {
    let lanes = u32::from(count.0);
    let request_base = REQUEST_FD_BASE.unsigned_abs();
    let response_base = RESPONSE_FD_BASE.unsigned_abs();
    let program = PROGRAM_FD.unsigned_abs();
    sys::close_range(request_base + lanes, response_base - 1)?;
    if keep_program {
        sys::close_range(response_base + lanes, program - 1)?;
        sys::close_range(program + 1, u32::MAX)
    } else {
        sys::close_range(response_base + lanes, u32::MAX)
    }
}
