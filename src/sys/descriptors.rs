//! Both sides: descriptor plumbing. The fixed layout the signer serves from; in the host, keeping
//! every descriptor keyward holds clear of the standard streams; and (for the raw-pipe test
//! harness) a write that never raises SIGPIPE in the host.

use std::io;
#[cfg(feature = "test-support")]
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::{check, check_long};

#[cfg(feature = "test-support")]
/// Writes to a pipe without the host process ever seeing SIGPIPE, whatever its disposition.
///
/// A library cannot assume its host ignores SIGPIPE, and installing a handler would change the
/// host's behaviour. Instead SIGPIPE is blocked in this thread for the duration of the write,
/// and if the write raised one, it is consumed before the mask is restored.
pub(crate) fn write_without_sigpipe(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    let mut sigpipe = MaybeUninit::<libc::sigset_t>::uninit();
    let mut previous = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset/sigaddset initialise the set we pass; pthread_sigmask only changes
    // this thread's mask and writes the old mask into `previous`.
    unsafe {
        libc::sigemptyset(sigpipe.as_mut_ptr());
        libc::sigaddset(sigpipe.as_mut_ptr(), libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, sigpipe.as_ptr(), previous.as_mut_ptr());
    }
    // SAFETY: `previous` was written by pthread_sigmask above.
    let previous = unsafe { previous.assume_init() };
    // SAFETY: `sigpipe` was initialised by sigemptyset/sigaddset above.
    let sigpipe = unsafe { sigpipe.assume_init() };
    // SAFETY: `previous` is an initialised set; sigismember only reads it.
    let was_blocked = unsafe { libc::sigismember(&previous, libc::SIGPIPE) } == 1;
    let result = loop {
        // SAFETY: `bytes` is a valid slice for its whole length; the fd is borrowed, so open.
        let written = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if written >= 0 {
            break Ok(written.unsigned_abs());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            break Err(error);
        }
    };
    if let Err(error) = &result
        && error.raw_os_error() == Some(libc::EPIPE)
        && !was_blocked
    {
        // The EPIPE raised a SIGPIPE for this thread, pending while blocked: take it back.
        let no_wait = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `sigpipe` is initialised; a null siginfo pointer is allowed; the zero timeout
        // makes this a poll that never blocks.
        unsafe {
            libc::sigtimedwait(&sigpipe, std::ptr::null_mut(), &no_wait);
        }
    }
    if !was_blocked {
        // SAFETY: restores this thread's previous mask, which pthread_sigmask gave us.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        }
    }
    result
}

/// Borrows one of the signer's fixed descriptors (its lane pipes) for the rest of the process.
///
/// Only for the descriptors the signer laid out at fixed numbers before serving: nothing closes
/// them while the process runs (the seccomp filter does not even allow `close`).
pub(crate) fn fixed_descriptor(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: per the contract above, `fd` is open and stays open until the process exits, so a
    // 'static borrow never outlives it.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Duplicates `fd` onto the lowest free descriptor at or above `minimum`, close-on-exec clear.
pub(crate) fn duplicate_at_or_above(fd: RawFd, minimum: RawFd) -> io::Result<RawFd> {
    // SAFETY: F_DUPFD takes an int argument and creates a new descriptor; no memory involved.
    check(unsafe { libc::fcntl(fd, libc::F_DUPFD, minimum) })
}

/// Makes `target` refer to what `source` refers to (dup2), close-on-exec clear.
pub(crate) fn duplicate_onto(source: RawFd, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 takes two integers; it may close `target`, which the child no longer uses
    // (the caller has moved every descriptor it needs out of the way first).
    check(unsafe { libc::dup2(source, target) }).map(drop)
}

/// Closes every descriptor in `first..=last`.
pub(crate) fn close_range(first: u32, last: u32) -> io::Result<()> {
    if first > last {
        return Ok(());
    }
    // SAFETY: close_range takes integers; the caller no longer uses any fd in the range.
    check_long(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) }).map(drop)
}

/// The lowest descriptor keyward holds in the host. 0, 1 and 2 are the host's standard streams
/// even when it has closed them (a daemon does): a pipe of keyward's that lands on 1 would take
/// the host's `println!` as requests, one on 0 would hand the signer's answers to whatever reads
/// stdin.
const FIRST_HOST_DESCRIPTOR: RawFd = 3;

/// `fd` itself if it is clear of the standard streams; otherwise a close-on-exec copy at 3 or
/// above, and the low one is closed.
pub(crate) fn clear_of_standard_streams(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= FIRST_HOST_DESCRIPTOR {
        return Ok(fd);
    }
    // `fd` closes when dropped, once the copy exists.
    duplicate_clear_of_standard_streams(fd.as_fd())
}

/// A close-on-exec copy of `fd` at 3 or above.
pub(crate) fn duplicate_clear_of_standard_streams(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes an int argument and creates a new descriptor; no memory.
    let copy = check(unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, FIRST_HOST_DESCRIPTOR)
    })?;
    // SAFETY: the kernel just created `copy`; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// A pipe, (read end, write end), both close-on-exec and both clear of the standard streams.
pub(crate) fn pipe_clear_of_standard_streams() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((
        clear_of_standard_streams(read)?,
        clear_of_standard_streams(write)?,
    ))
}
