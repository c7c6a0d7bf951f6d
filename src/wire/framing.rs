//! Shared by both sides: length-prefixed frames over pipes, read with a hard cap and a bounded spin.
//!
//! A frame is a little-endian `u32` payload length followed by the payload. The reader's buffer
//! is allocated once, at the cap, so an untrusted length can never make anything allocate: a
//! length over the cap is an error before any payload byte is read.
//!
//! Waiting for a frame spins (non-blocking reads) for a configured while and then sleeps in
//! `poll`: while work flows, neither side pays a scheduler wake-up; when it stops, neither side
//! burns CPU.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use serde::Serialize;
use zeroize::Zeroize;

use crate::wire::{FRAME_HEADER_LEN, MAX_FRAME_LEN};

/// Why no frame could be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The other end closed the pipe; `mid_frame` if it did so part-way through a frame.
    Closed { mid_frame: bool },
    /// A frame header announced more than the cap.
    TooLong,
    /// The deadline passed with no complete frame.
    TimedOut,
    /// The watched process (a pidfd) ended while no data was waiting.
    PeerExited,
    /// The read or poll failed.
    Io(io::Error),
}

/// Accumulates bytes from a pipe and hands out whole frames.
pub(crate) struct FrameReader {
    buffer: Box<[u8]>,
    start: usize,
    end: usize,
    /// Whether the last `read_frame` slept in `poll` (its spin, if any, ran out first).
    slept: bool,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    /// A reader with its whole buffer allocated now (one frame at the cap).
    pub(crate) fn new() -> Self {
        Self {
            buffer: vec![0u8; FRAME_HEADER_LEN + MAX_FRAME_LEN].into_boxed_slice(),
            start: 0,
            end: 0,
            slept: false,
        }
    }

    /// Whether the last [`read_frame`](Self::read_frame) had to sleep for its frame: with a
    /// spin, that the spin ran out before the frame came.
    pub(crate) fn slept_last(&self) -> bool {
        self.slept
    }

    /// Whether bytes of an unfinished frame are buffered.
    pub(crate) fn has_partial_frame(&self) -> bool {
        self.start != self.end
    }

    /// The position and length of the next whole buffered frame's payload, if there is one.
    fn buffered_frame(&self) -> Result<Option<(usize, usize)>, ReadError> {
        let available = &self.buffer[self.start..self.end];
        let Some(header) = available.first_chunk::<FRAME_HEADER_LEN>() else {
            return Ok(None);
        };
        let announced = u32::from_le_bytes(*header);
        let length = usize::try_from(announced).unwrap_or(usize::MAX);
        if length > MAX_FRAME_LEN {
            return Err(ReadError::TooLong);
        }
        if available.len() - FRAME_HEADER_LEN < length {
            return Ok(None);
        }
        Ok(Some((self.start + FRAME_HEADER_LEN, length)))
    }

    /// Takes the next whole frame if one is already buffered, without reading: the signer
    /// answers a burst of requests that one read brought in together.
    pub(crate) fn take_buffered(&mut self) -> Result<Option<&mut [u8]>, ReadError> {
        match self.buffered_frame()? {
            Some((payload_start, length)) => {
                self.start = payload_start + length;
                Ok(Some(
                    &mut self.buffer[payload_start..payload_start + length],
                ))
            }
            None => Ok(None),
        }
    }

    /// Reads until a whole frame is buffered and returns its payload (valid until the next call).
    ///
    /// Spins with non-blocking reads for `spin` (if `fd` is non-blocking), then sleeps in `poll`
    /// until `deadline` (forever if `None`). If `watch` (a pidfd) becomes readable while the pipe
    /// has nothing, the peer has ended: [`ReadError::PeerExited`].
    pub(crate) fn read_frame(
        &mut self,
        fd: BorrowedFd<'_>,
        watch: Option<BorrowedFd<'_>>,
        spin: Duration,
        deadline: Option<Instant>,
    ) -> Result<&mut [u8], ReadError> {
        let spin_until = if spin.is_zero() {
            None
        } else {
            Some(Instant::now() + spin)
        };
        self.slept = false;
        let (payload_start, length) = loop {
            if let Some(frame) = self.buffered_frame()? {
                break frame;
            }
            self.make_room();
            match nix::unistd::read(fd, &mut self.buffer[self.end..]) {
                Ok(0) => {
                    return Err(ReadError::Closed {
                        mid_frame: self.has_partial_frame(),
                    });
                }
                Ok(count) => self.end += count,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    if spin_until.is_some_and(|until| Instant::now() < until) {
                        // Yield rather than pause: on a machine with as many busy threads as
                        // cores, the peer we wait for may need this very core to answer.
                        std::thread::yield_now();
                        continue;
                    }
                    self.slept = true;
                    wait_for(fd, PollFlags::POLLIN, watch, deadline)?;
                }
                Err(errno) => return Err(ReadError::Io(errno.into())),
            }
        };
        self.start = payload_start + length;
        Ok(&mut self.buffer[payload_start..payload_start + length])
    }

    /// Appends bytes as if read from the pipe; returns how many fit. For the fuzzers.
    #[cfg(feature = "test-support")]
    pub(crate) fn push(&mut self, bytes: &[u8]) -> usize {
        self.make_room();
        let count = bytes.len().min(self.buffer.len() - self.end);
        self.buffer[self.end..self.end + count].copy_from_slice(&bytes[..count]);
        self.end += count;
        count
    }

    /// Moves an unfinished frame to the front so the rest of it fits.
    fn make_room(&mut self) {
        if self.start == self.end {
            self.buffer[..self.end].zeroize();
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buffer.len() - self.end < MAX_FRAME_LEN {
            self.buffer.copy_within(self.start..self.end, 0);
            let moved = self.end - self.start;
            self.buffer[moved..self.end].zeroize();
            self.start = 0;
            self.end = moved;
        }
    }
}

impl Drop for FrameReader {
    fn drop(&mut self) {
        // Answers may have carried Diffie-Hellman results.
        self.buffer.zeroize();
    }
}

/// Whether a wait should spin, learnt from how the last spins ended. A spin that runs out before
/// its frame comes was CPU spent for nothing, and it can be worse: on the development VM, after
/// a pause, runs of dozens of requests each paid whole spins (300 to 600 µs where 40 µs was
/// usual), likely because a thread spinning on the core its peer waits for keeps the peer off it
/// until the spin ends. After a spin that ran out, the next waits sleep at once, 1, 2, 4, ... up
/// to [`SpinBackoff::MAX_SKIPPED`] of them; then a wait spins again to see whether spinning pays
/// now. A spin that finds its frame starts over.
#[derive(Debug, Default)]
pub struct SpinBackoff {
    /// Waits still to sleep at once.
    skipping: AtomicU32,
    /// How many waits the next spin that runs out makes sleep at once.
    penalty: AtomicU32,
}

impl SpinBackoff {
    /// The most waits one run-out spin makes sleep at once.
    pub const MAX_SKIPPED: u32 = 64;

    /// Whether the next wait may spin (a wait told no counts towards the backoff).
    pub fn may_spin(&self) -> bool {
        self.skipping
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_err()
    }

    /// How a wait that spun ended: `found_while_spinning` if its frame came during the spin.
    pub fn spun(&self, found_while_spinning: bool) {
        if found_while_spinning {
            // Most requests land here: a load, and a store only after a run-out, so the lane's
            // callers do not all write one cache line on every request.
            if self.penalty.load(Ordering::Relaxed) != 0 {
                self.penalty.store(0, Ordering::Relaxed);
            }
            return;
        }
        let penalty = self
            .penalty
            .load(Ordering::Relaxed)
            .clamp(1, Self::MAX_SKIPPED);
        self.skipping.store(penalty, Ordering::Relaxed);
        self.penalty
            .store((penalty * 2).min(Self::MAX_SKIPPED), Ordering::Relaxed);
    }
}

/// Why a frame could not be written.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// The pipe stayed full and the watched process (a pidfd) ended.
    PeerExited,
    /// The pipe stayed full until the deadline.
    TimedOut,
    /// The write or poll failed.
    Io(io::Error),
}

/// Writes all of `bytes` to a non-blocking pipe, sleeping while it is full until there is
/// room, `watch` (a pidfd) ends, or `deadline` passes.
///
/// The supervisor holds a copy of each request pipe's read end, so a write never finds the
/// pipe without a reader: no `EPIPE`, and no SIGPIPE for the host whatever its disposition,
/// without a signal-mask change around every write. A dead signer is noticed through `watch`
/// here and on the answer's read.
pub(crate) fn write_frame(
    fd: BorrowedFd<'_>,
    mut bytes: &[u8],
    watch: BorrowedFd<'_>,
    deadline: Instant,
) -> Result<(), WriteError> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(0) => return Err(WriteError::Io(io::Error::from(io::ErrorKind::WriteZero))),
            Ok(count) => bytes = &bytes[count.min(bytes.len())..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                wait_for(fd, PollFlags::POLLOUT, Some(watch), Some(deadline)).map_err(|error| {
                    match error {
                        ReadError::PeerExited => WriteError::PeerExited,
                        ReadError::TimedOut => WriteError::TimedOut,
                        ReadError::Io(error) => WriteError::Io(error),
                        ReadError::Closed { .. } | ReadError::TooLong => {
                            WriteError::Io(io::Error::from(io::ErrorKind::BrokenPipe))
                        }
                    }
                })?;
            }
            Err(errno) => return Err(WriteError::Io(errno.into())),
        }
    }
    Ok(())
}

/// Sleeps until `fd` is ready for `events` or `deadline` passes; if `watch` (a pidfd) becomes
/// readable first, the peer has ended.
fn wait_for(
    fd: BorrowedFd<'_>,
    events: PollFlags,
    watch: Option<BorrowedFd<'_>>,
    deadline: Option<Instant>,
) -> Result<(), ReadError> {
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ReadError::TimedOut);
                }
                // Round up so a sub-millisecond remainder still sleeps instead of spinning.
                let millis = left.as_micros().div_ceil(1000);
                i32::try_from(millis)
                    .ok()
                    .and_then(|millis| PollTimeout::try_from(millis).ok())
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        let data = PollFd::new(fd.as_fd(), events);
        let mut with_watch;
        let mut alone;
        let fds: &mut [PollFd<'_>] = match watch {
            Some(watch) => {
                with_watch = [data, PollFd::new(watch, PollFlags::POLLIN)];
                &mut with_watch
            }
            None => {
                alone = [data];
                &mut alone
            }
        };
        match nix::poll::poll(fds, timeout) {
            Ok(0) => {
                if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                    return Err(ReadError::TimedOut);
                }
            }
            Ok(_) => {
                // The pipe comes first: a last answer is still read, a last request written.
                if fds[0].any().unwrap_or(true) {
                    return Ok(());
                }
                return Err(ReadError::PeerExited);
            }
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(ReadError::Io(errno.into())),
        }
    }
}

/// Encodes `message` as one frame at the start of `buffer`; returns the frame's length.
pub(crate) fn encode_frame<T: Serialize>(
    message: &T,
    buffer: &mut [u8],
) -> Result<usize, postcard::Error> {
    let (header, body) = buffer
        .split_first_chunk_mut::<FRAME_HEADER_LEN>()
        .ok_or(postcard::Error::SerializeBufferFull)?;
    let cap = body.len().min(MAX_FRAME_LEN);
    let length = postcard::to_slice(message, &mut body[..cap])?.len();
    // `length <= MAX_FRAME_LEN`, which fits in a u32.
    *header = u32::try_from(length)
        .map_err(|_| postcard::Error::SerializeBufferFull)?
        .to_le_bytes();
    Ok(FRAME_HEADER_LEN + length)
}

/// A buffer large enough for any frame.
pub(crate) fn frame_buffer() -> Box<[u8]> {
    vec![0u8; FRAME_HEADER_LEN + MAX_FRAME_LEN].into_boxed_slice()
}

/// Writes all of `bytes` with `write_once`, retrying short writes and interruptions.
pub(crate) fn write_all(
    mut bytes: &[u8],
    mut write_once: impl FnMut(&[u8]) -> io::Result<usize>,
) -> io::Result<()> {
    while !bytes.is_empty() {
        match write_once(bytes) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(count) => bytes = &bytes[count.min(bytes.len())..],
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                // The pipe is full (a non-blocking fd): wait for room.
                std::hint::spin_loop();
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;
    use std::os::fd::OwnedFd;
    use std::process::{Child, Command};

    /// The backoff's schedule: after a spin that ran out, 1, then 2, 4, ... 64 waits sleep at
    /// once, each run-out doubling the next; a spin that finds its frame starts over.
    #[test]
    fn a_spin_that_runs_out_makes_the_next_waits_sleep_doubling_up_to_the_cap() {
        let backoff = SpinBackoff::default();
        assert!(backoff.may_spin());
        backoff.spun(true);
        assert!(backoff.may_spin());
        for expected in [1, 2, 4, 8, 16, 32, 64, 64] {
            backoff.spun(false);
            let skipped = std::iter::from_fn(|| Some(backoff.may_spin()))
                .take_while(|&may| !may)
                .take(1000)
                .count();
            assert_eq!(skipped, expected);
        }
        backoff.spun(true);
        backoff.spun(false);
        assert!(!backoff.may_spin());
        assert!(backoff.may_spin(), "one skipped wait after a found spin");
    }

    /// `slept_last` tells a frame found while spinning from one waited for in `poll`.
    #[test]
    fn the_reader_says_whether_it_slept_for_its_frame() {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
            .unwrap_or_else(|error| panic!("pipe2: {error}"));
        let mut frames = FrameReader::new();
        let frame = [1u8, 0, 0, 0, 42];
        nix::unistd::write(&write, &frame).unwrap_or_else(|error| panic!("write: {error}"));
        let payload = frames
            .read_frame(read.as_fd(), None, Duration::from_millis(50), None)
            .map(|payload| payload.to_vec());
        assert_eq!(payload.ok(), Some(vec![42]));
        assert!(!frames.slept_last());
        // Nothing there during a 1 ms spin; the frame comes 20 ms later, while it sleeps.
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            nix::unistd::write(&write, &frame).unwrap_or_else(|error| panic!("write: {error}"));
            write
        });
        let payload = frames
            .read_frame(read.as_fd(), None, Duration::from_millis(1), None)
            .map(|payload| payload.to_vec());
        assert_eq!(payload.ok(), Some(vec![42]));
        assert!(frames.slept_last());
        drop(writer.join());
    }

    /// A non-blocking pipe with no room left: (read end, write end).
    fn full_pipe() -> (OwnedFd, OwnedFd) {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
            .unwrap_or_else(|error| panic!("pipe2: {error}"));
        let chunk = [0u8; 4096];
        while nix::unistd::write(&write, &chunk).is_ok() {}
        (read, write)
    }

    fn sleeper(seconds: &str) -> (Child, OwnedFd) {
        let child = Command::new("sleep")
            .arg(seconds)
            .spawn()
            .unwrap_or_else(|error| panic!("sleep: {error}"));
        let pid = i32::try_from(child.id()).unwrap_or_else(|_| panic!("pid"));
        let pidfd = crate::sys::pidfd_open(pid).unwrap_or_else(|error| panic!("pidfd: {error}"));
        (child, pidfd)
    }

    #[test]
    fn a_full_pipe_whose_reader_has_ended_is_peer_exited() {
        let (_read, write) = full_pipe();
        let (mut child, pidfd) = sleeper("0");
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        let result = write_frame(write.as_fd(), &[1, 2, 3], pidfd.as_fd(), deadline);
        assert!(matches!(result, Err(WriteError::PeerExited)), "{result:?}");
        assert!(Instant::now() < deadline, "it waited for the deadline");
    }

    #[test]
    fn a_full_pipe_that_stays_full_times_out_at_the_deadline() {
        let (_read, write) = full_pipe();
        let (mut child, pidfd) = sleeper("30");
        let started = Instant::now();
        let result = write_frame(
            write.as_fd(),
            &[1, 2, 3],
            pidfd.as_fd(),
            started + Duration::from_millis(100),
        );
        let _ = child.kill();
        let _ = child.wait();
        assert!(matches!(result, Err(WriteError::TimedOut)), "{result:?}");
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn a_full_pipe_that_is_drained_takes_the_whole_frame() {
        let (read, write) = full_pipe();
        let (mut child, pidfd) = sleeper("30");
        let drainer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut buffer = [0u8; 65536];
            let mut drained = 0;
            while let Ok(count) = nix::unistd::read(&read, &mut buffer) {
                drained += count;
            }
            (read, drained)
        });
        let frame = [7u8; 10_000];
        let result = write_frame(
            write.as_fd(),
            &frame,
            pidfd.as_fd(),
            Instant::now() + Duration::from_secs(5),
        );
        let (_read, drained) = drainer.join().unwrap_or_else(|_| panic!("drainer"));
        let _ = child.kill();
        let _ = child.wait();
        assert!(result.is_ok(), "{result:?}");
        assert!(drained > 0);
    }
}
