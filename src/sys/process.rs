//! Host side: starting the signer process with a pidfd that names it and no other, learning how
//! it ended whatever the host does with SIGCHLD, and (in the child) the exec of a fork-exec
//! signer, prepared so that it allocates nothing.
//!
//! Two ways to start a child, one per spawn mode:
//!
//! - [`fork_with_pidfd`] for a forked signer, which keeps running in its copy of the host: the C
//!   library's `fork()`, so its fork handlers run and the child's allocator and thread
//!   bookkeeping are those of a proper fork (the signer allocates and starts threads after
//!   fork). Its exit signal is SIGCHLD, which no one can change; a gate keeps the child from
//!   ending before the host holds its pidfd.
//! - [`clone_for_exec`] for a fork-exec signer, which only makes raw system calls until exec: a
//!   `clone` with CLONE_PIDFD (the pidfd comes with the child, atomically) and exit signal 0.
//!   Until exec the child is a "clone child" to the kernel: SIGCHLD set to SIG_IGN does not
//!   auto-reap it, and `waitpid(-1)` without `__WALL` does not see it. Exec resets a process's
//!   exit signal to SIGCHLD (`de_thread` in fs/exec.c), so this covers the way to exec only.
//!
//! After the child has become a SIGCHLD child (always, in fork mode; after exec, in fork-exec),
//! a host that ignores SIGCHLD, or reaps every child, can take its exit status before keyward
//! does. [`pidfd_reap`] then reads the copy the kernel keeps for the pidfd (Linux 6.15 and later,
//! `PIDFD_INFO_EXIT`), and otherwise says at once that the status was collected elsewhere,
//! rather than waiting for one that will never come.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::{
    check_long, clear_of_standard_streams, duplicate_clear_of_standard_streams, exit_immediately,
    pipe_clear_of_standard_streams,
};

/// How a child process ended.
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
    /// It ended, but something else in this process collected its exit status first (SIGCHLD
    /// set to SIG_IGN, or a wait for any child), and the kernel kept no copy for its pidfd
    /// (before Linux 6.15).
    CollectedElsewhere,
}

/// A child just started: its pid, and a pidfd (at 3 or above) that names it and no other
/// process, whoever reaps it.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: libc::pid_t,
    pub(crate) pidfd: OwnedFd,
}

/// Forks with the C library's `fork()` and runs `child_main(argument)` in the child, which never
/// returns; returns the child's pid and pidfd in the parent.
///
/// The child first waits at a gate (one byte on a pipe) until the parent holds its pidfd, so it
/// cannot end, and be reaped by anything else in the host, before the pidfd exists: the pid the
/// pidfd is opened for is still the child's. If the gate fails (the parent could not open the
/// pidfd, or ended), the child exits with `gate_failed`.
///
/// The child is a copy of a possibly multithreaded process in which only the calling thread
/// exists. `child_main` must therefore take no lock another thread could have held (no std
/// `Mutex`, no `std::env`, no stdout), and must end with `_exit`; this crate passes only
/// `entry::run_forked`, which is written to those rules. The C library's own locks (its
/// allocator's among them) are released in the child by its fork handlers.
pub(crate) fn fork_with_pidfd<T>(
    child_main: fn(&T) -> !,
    argument: &T,
    gate_failed: i32,
) -> io::Result<Spawned> {
    let (gate_read, gate_write) = pipe_clear_of_standard_streams()?;
    // SAFETY: fork itself has no memory-safety preconditions. What follows it in the child is
    // the gate (a close and a read) and the crate's own `child_main`, which never returns into
    // the caller's frames (its type is `-> !`, and its panic hook calls `_exit`) and follows the
    // post-fork rules stated above.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // The child: its own copy of the write end would keep the gate from ever reading end of
        // file.
        drop(gate_write);
        let mut byte = [0u8; 1];
        let passed = loop {
            match nix::unistd::read(gate_read.as_fd(), &mut byte) {
                Ok(1) => break true,
                Err(nix::errno::Errno::EINTR) => {}
                _ => break false,
            }
        };
        if !passed {
            exit_immediately(gate_failed);
        }
        drop(gate_read);
        child_main(argument)
    }
    let forked = if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    };
    drop(gate_read);
    let pid = forked?;
    match pidfd_open(pid) {
        Ok(pidfd) => {
            // Open the gate. Should the write fail, the child exits with `gate_failed`, which
            // its pidfd then reports.
            let _ = nix::unistd::write(&gate_write, &[1]);
            Ok(Spawned { pid, pidfd })
        }
        Err(error) => {
            // The child is still at the gate: it has not ended by itself, nobody has reaped it,
            // and the pid is still its own.
            let child = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(child, Some(nix::sys::wait::WaitPidFlag::__WALL));
            Err(error)
        }
    }
}

/// Starts a child with `clone(CLONE_PIDFD)` and exit signal 0, which runs
/// `child_main(argument)`; returns its pid and pidfd in the parent. For a child that goes on to
/// exec (see the module's documentation for why the exit signal is 0 and what exec does to it).
///
/// Every signal is blocked in the calling thread across the clone, and the child keeps them
/// blocked until exec (the mask survives exec; an exec'd signer clears it when it resets its
/// signal handling), so no host handler ever runs in the child.
///
/// The C library's fork handlers do not run and its bookkeeping is not redone in the child: it
/// is a raw copy of this thread in a process where other threads' locks may be held.
/// `child_main` must only make raw system calls (no allocation, no lock, no stdio, no `raise`)
/// and end in exec or `_exit`; this crate passes `entry::run_forked` with an exec prepared,
/// which is written to those rules.
pub(crate) fn clone_for_exec<T>(child_main: fn(&T) -> !, argument: &T) -> io::Result<Spawned> {
    let mut all = MaybeUninit::<libc::sigset_t>::uninit();
    let mut previous = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigfillset initialises `all`; pthread_sigmask only changes this thread's mask and
    // writes the old mask into `previous`.
    let blocked = unsafe {
        libc::sigfillset(all.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), previous.as_mut_ptr())
    };
    if blocked != 0 {
        return Err(io::Error::from_raw_os_error(blocked));
    }
    // CLONE_PIDFD, and 0 in the low byte: no exit signal.
    let flags = libc::c_ulong::from(libc::CLONE_PIDFD.unsigned_abs());
    let mut pidfd: libc::c_int = -1;
    // The child runs only `child_main`, which never returns (`-> !`) and follows the rules above.
    // `pidfd` is a valid, writable int where the kernel stores the pidfd (CLONE_PIDFD uses the
    // parent_tid argument); the child-tid pointer and TLS are unused (null, 0).
    // SAFETY: without CLONE_VM clone copies the address space as fork does; the child resumes here.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null_mut::<libc::c_void>(),
            &raw mut pidfd,
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    if pid == 0 {
        child_main(argument)
    }
    let cloned = check_long(pid);
    // SAFETY: restores this thread's mask, which pthread_sigmask wrote into `previous` above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, previous.as_ptr(), std::ptr::null_mut());
    }
    let pid = libc::pid_t::try_from(cloned?)
        .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    // SAFETY: the kernel created `pidfd` for the child just now; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    if pidfd.as_raw_fd() >= 3 {
        return Ok(Spawned { pid, pidfd });
    }
    // On 0, 1 or 2 (the host closed them): move it up; the low one closes as `pidfd` drops.
    match duplicate_clear_of_standard_streams(pidfd.as_fd()) {
        Ok(moved) => Ok(Spawned { pid, pidfd: moved }),
        Err(error) => {
            let _ = pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
            let _ = pidfd_reap(pidfd.as_fd());
            Err(error)
        }
    }
}

/// Opens a pidfd for `pid`, a child of this process that cannot have been reaped yet (so the
/// pid cannot have been reused). The pidfd is clear of the standard streams.
pub(crate) fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1; no memory is passed.
    let fd = check_long(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    clear_of_standard_streams(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `signal` to the process behind `pidfd`; signal 0 only checks that the process still
/// exists (a zombie included: it has not been reaped). Safe against pid reuse by construction.
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

/// Waits for the process behind `pidfd` (a child of this process) to end, reaps it, and says
/// how it ended. If something else in the host reaped it first, the kernel's copy of its exit
/// status is read through the pidfd (Linux 6.15 and later); without one the end is
/// [`ProcessEnd::CollectedElsewhere`], at once.
pub(crate) fn pidfd_reap(pidfd: BorrowedFd<'_>) -> io::Result<ProcessEnd> {
    let id = libc::id_t::try_from(pidfd.as_raw_fd())
        .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    loop {
        // SAFETY: `info` is a valid, writable siginfo_t; P_PIDFD takes the fd as the id.
        // __WALL: a child started by `clone_for_exec` has no exit signal until it execs, and
        // waitid sees such a "clone child" only with __WALL (or __WCLONE).
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                id,
                info.as_mut_ptr(),
                libc::WEXITED | libc::__WALL,
            )
        };
        if rc == 0 {
            break;
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EINTR) => {}
            // Not (or no longer) ours to wait for: the host reaped it, or the kernel did.
            Some(libc::ECHILD) => return Ok(exit_status_kept_for(pidfd)),
            _ => return Err(error),
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

/// The first version of the kernel's `struct pidfd_info` (`PIDFD_INFO_SIZE_VER0`, 64 bytes),
/// which ends with the exit status.
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
}
const _: () = assert!(std::mem::size_of::<PidfdInfo>() == 64);

/// `PIDFD_GET_INFO`: `_IOWR(0xFF, 11, struct pidfd_info)` for the 64-byte version above.
const PIDFD_GET_INFO: libc::Ioctl = 0xC040_FF0B;
/// `PIDFD_INFO_EXIT`: ask for (and, in the answer's mask, be given) the exit status.
const PIDFD_INFO_EXIT: u64 = 1 << 3;
/// How long to wait for the kernel to record the status of a process being reaped elsewhere.
const EXIT_STATUS_RECORDED_WITHIN: Duration = Duration::from_millis(100);

/// The exit status the kernel keeps for a pidfd once its process has been reaped, by anyone
/// (Linux 6.15 and later). The kernel records it while releasing the process, a moment after
/// the pidfd reports the exit, so an answer without it is asked again, briefly.
fn exit_status_kept_for(pidfd: BorrowedFd<'_>) -> ProcessEnd {
    let pause = Duration::from_millis(2);
    let mut waited = Duration::ZERO;
    loop {
        let mut info = PidfdInfo {
            mask: PIDFD_INFO_EXIT,
            ..PidfdInfo::default()
        };
        // SAFETY: `info` is a valid, writable struct of exactly the size the request number
        // encodes; the kernel writes at most that many bytes into it.
        let rc = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO, &raw mut info) };
        if rc < 0 {
            // No PIDFD_GET_INFO (before Linux 6.13), or nothing left to tell.
            return ProcessEnd::CollectedElsewhere;
        }
        if info.mask & PIDFD_INFO_EXIT != 0 {
            let status = info.exit_code;
            return if libc::WIFEXITED(status) {
                ProcessEnd::Exited(libc::WEXITSTATUS(status))
            } else {
                ProcessEnd::Signaled {
                    signal: libc::WTERMSIG(status),
                    core_dumped: libc::WCOREDUMP(status),
                }
            };
        }
        if waited >= EXIT_STATUS_RECORDED_WITHIN {
            // A kernel that does not know PIDFD_INFO_EXIT (6.13, 6.14) never sets it.
            return ProcessEnd::CollectedElsewhere;
        }
        std::thread::sleep(pause);
        waited += pause;
    }
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

/// Replaces the process image with the program `program` names (a descriptor, so the file run
/// is the file that was opened, whatever is at its path now), with an empty environment
/// (`execveat(program, "", .., AT_EMPTY_PATH)`). Returns only on failure. Allocates nothing:
/// safe between fork and exec.
pub(crate) fn execute(program: BorrowedFd<'_>, arguments: &ExecArguments) -> io::Error {
    let environment: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: the empty path is a NUL-terminated static string; `arguments.pointers` is a
    // null-terminated array of pointers to NUL-terminated strings that `arguments` owns, and
    // `environment` a null-terminated (empty) array; all outlive the call. The descriptor is
    // borrowed, so open.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            program.as_raw_fd(),
            c"".as_ptr(),
            arguments.pointers.as_ptr(),
            environment.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    io::Error::last_os_error()
}
