//! Runs in the host: telling, without a system call, whether this process is a fork of the one
//! that made a value. A service checks this on every call; `getpid` there cost a system call a
//! request (0.6 µs on the development VM, about 2% of a signature).
//!
//! A page marked `MADV_WIPEONFORK` reads as zeros in any child that got a copy of this process's
//! memory (fork, or clone without `CLONE_VM`), whatever made the child: libc's `fork`, a raw
//! `clone`, a language runtime. A nonzero mark written at creation is therefore still there in
//! the creating process and gone in every such child. Where the kernel refuses the advice
//! (before Linux 4.14), the sentinel compares process ids instead.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{check, map_anonymous, page_size};

/// The mark a live sentinel holds; any nonzero value would do.
const MARK: u64 = 0x6b65_7977_6172_6421;

/// Tells whether the current process is the one that made this value.
pub(crate) struct ForkSentinel {
    how: How,
}

enum How {
    /// One page of its own, wiped in every forked copy of this process.
    WipedPage {
        mark: NonNull<AtomicU64>,
        len: usize,
    },
    /// The creating process's id (one `getpid` a check).
    ProcessId(u32),
}

// SAFETY: the page is owned by this value alone and only ever accessed through an atomic.
unsafe impl Send for ForkSentinel {}
// SAFETY: as above; `&self` only loads the atomic.
unsafe impl Sync for ForkSentinel {}

impl ForkSentinel {
    /// A sentinel for the current process.
    pub(crate) fn new() -> Self {
        match map_wiped_page() {
            Ok(how) => Self { how },
            Err(_) => Self {
                how: How::ProcessId(std::process::id()),
            },
        }
    }

    /// Whether the current process is a copy (by fork) of the one that made this sentinel.
    pub(crate) fn in_a_forked_copy(&self) -> bool {
        match &self.how {
            // SAFETY: `mark` points into the page this value mapped and keeps mapped until drop;
            // the page is aligned for `AtomicU64`.
            How::WipedPage { mark, .. } => unsafe { mark.as_ref() }.load(Ordering::Relaxed) != MARK,
            How::ProcessId(creator) => *creator != std::process::id(),
        }
    }
}

impl Drop for ForkSentinel {
    fn drop(&mut self) {
        if let How::WipedPage { mark, len } = self.how {
            // SAFETY: the page was mapped by `map_wiped_page` with this length and nothing
            // refers to it once this value is gone.
            unsafe {
                libc::munmap(mark.as_ptr().cast(), len);
            }
        }
    }
}

fn map_wiped_page() -> io::Result<How> {
    let len = page_size();
    let base = map_anonymous(len)?.as_ptr();
    // SAFETY: `base` is the page just mapped, of length `len`.
    if let Err(error) = check(unsafe { libc::madvise(base, len, libc::MADV_WIPEONFORK) }) {
        // SAFETY: as above; the page is unmapped before anything refers to it.
        unsafe {
            libc::munmap(base, len);
        }
        return Err(error);
    }
    let Some(mark) = NonNull::new(base.cast::<AtomicU64>()) else {
        return Err(io::Error::from_raw_os_error(libc::ENOMEM));
    };
    // SAFETY: the page is ours, zero-filled, page-aligned (so aligned for AtomicU64) and at
    // least 8 bytes long; an all-zero AtomicU64 is a valid value.
    unsafe { mark.as_ref() }.store(MARK, Ordering::Relaxed);
    Ok(How::WipedPage { mark, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_creating_process_is_not_a_forked_copy() {
        let sentinel = ForkSentinel::new();
        assert!(matches!(sentinel.how, How::WipedPage { .. }));
        assert!(!sentinel.in_a_forked_copy());
    }
}
