//! The one place in keyward where `unsafe` code lives.
//!
//! Every function here is a thin, safe wrapper over a system call (or a small group of them) that
//! `libc`/`nix` expose only as `unsafe`. Each unsafe block states the invariant that makes it
//! sound. The rest of the crate is `#![deny(unsafe_code)]`.

#![allow(unsafe_code)]

mod descriptors;
mod privileges;
mod secret_memory;
#[cfg(feature = "test-support")]
mod test_hooks;

#[cfg(feature = "test-support")]
pub(crate) use descriptors::write_without_sigpipe;
pub(crate) use descriptors::{
    clear_of_standard_streams, close_range, duplicate_at_or_above, duplicate_onto,
    fixed_descriptor, pipe_clear_of_standard_streams,
};
pub(crate) use privileges::{drop_all_capabilities, reset_signal_handlers};
pub(crate) use secret_memory::{SecretCells, SecretMemoryBacking, memfd_secret_available};
#[cfg(feature = "test-support")]
pub(crate) use test_hooks::attempt_forbidden_syscall;

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// How a child process ended, as `waitid` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProcessEnd {
    /// The process called `_exit(code)`.
    Exited(i32),
    /// The process was ended by a signal.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether the kernel wrote a core dump.
        core_dumped: bool,
    },
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn check_long(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Forks the process; the child runs `child_main(argument)`, which never returns.
///
/// Returns the child's pid in the parent.
///
/// The child is a copy of a possibly multithreaded process in which only the calling thread
/// exists. `child_main` must therefore take no lock another thread could have held (no std
/// `Mutex`, no `std::env`, no stdout), and must end with `_exit`; this crate passes only
/// `child::run_forked`, which is written to those rules.
pub(crate) fn fork_child<T>(child_main: fn(&T) -> !, argument: &T) -> io::Result<libc::pid_t> {
    // SAFETY: fork itself has no memory-safety preconditions. What follows it in the child is
    // the crate's own `child_main`, which never returns into the caller's frames (its type is
    // `-> !`, and its panic hook calls `_exit`) and follows the post-fork rules stated above.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => child_main(argument),
        child => Ok(child),
    }
}

/// Ends the calling process at once: no destructors, no atexit handlers, no stdio flush.
pub(crate) fn exit_immediately(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and never returns; it touches no memory of ours.
    unsafe { libc::_exit(code) }
}

/// Opens a pidfd for `pid`, a child of this process that has not been reaped yet (so the pid
/// cannot have been reused). The pidfd is clear of the standard streams.
pub(crate) fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1; no memory is passed.
    let fd = check_long(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    clear_of_standard_streams(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `signal` to the process behind `pidfd`. Safe against pid reuse by construction.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: integers only; the null siginfo pointer is allowed and means "as kill() would".
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    check_long(rc).map(drop)
}

/// Waits for the process behind `pidfd` to end and reaps it.
pub(crate) fn pidfd_reap(pidfd: BorrowedFd<'_>) -> io::Result<ProcessEnd> {
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    loop {
        // SAFETY: `info` is a valid, writable siginfo_t; P_PIDFD takes the fd as the id.
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                libc::id_t::try_from(pidfd.as_raw_fd()).unwrap_or_default(),
                info.as_mut_ptr(),
                libc::WEXITED,
            )
        };
        if rc == 0 {
            break;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    // SAFETY: waitid returned 0 with WEXITED, so the kernel filled in a SIGCHLD siginfo
    // (zeroed before the call, so every field is initialised either way).
    let info = unsafe { info.assume_init() };
    // SAFETY: for a SIGCHLD siginfo, si_status is the valid union member.
    let status = unsafe { info.si_status() };
    Ok(match info.si_code {
        libc::CLD_EXITED => ProcessEnd::Exited(status),
        libc::CLD_DUMPED => ProcessEnd::Signaled {
            signal: status,
            core_dumped: true,
        },
        _ => ProcessEnd::Signaled {
            signal: status,
            core_dumped: false,
        },
    })
}

/// A program's argument vector, prepared before fork: the strings, and the null-terminated array
/// of pointers to them that `execve` takes. Built in the host, so that the child allocates
/// nothing on its way to exec (a host allocator without a fork handler may have its lock held,
/// forever, in the child).
pub(crate) struct ExecArguments {
    /// Owned here so the pointers below stay valid: a `CString`'s bytes live on the heap and do
    /// not move when the `CString` (or this value) does.
    _strings: Vec<CString>,
    /// One pointer into each string, then a null pointer.
    pointers: Vec<*const libc::c_char>,
}

// SAFETY: the raw pointers point into `_strings`, which this value owns and never changes; the
// strings move (and are shared) together with the pointers, so sending or sharing the value
// across threads is sending or sharing owned, immutable data.
unsafe impl Send for ExecArguments {}
// SAFETY: as for Send: nothing reachable through a shared reference is ever written.
unsafe impl Sync for ExecArguments {}

impl ExecArguments {
    /// The argument vector `strings` (the program's name first).
    pub(crate) fn new(strings: Vec<CString>) -> Self {
        let pointers = strings
            .iter()
            .map(|string| string.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        Self {
            _strings: strings,
            pointers,
        }
    }
}

/// Replaces the process image, with an empty environment. Returns only on failure. Allocates
/// nothing: safe between fork and exec.
pub(crate) fn execute(program: &CString, arguments: &ExecArguments) -> io::Error {
    let environment: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: `program` is a NUL-terminated string; `arguments.pointers` is a null-terminated
    // array of pointers to NUL-terminated strings that `arguments` owns, and `environment` a
    // null-terminated (empty) array; all outlive the call.
    unsafe {
        libc::execve(
            program.as_ptr(),
            arguments.pointers.as_ptr(),
            environment.as_ptr(),
        )
    };
    io::Error::last_os_error()
}
