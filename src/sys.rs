//! The one place in keyward where `unsafe` code lives.
//!
//! Every function here is a thin, safe wrapper over a system call (or a small group of them) that
//! `libc`/`nix` expose only as `unsafe`. Each unsafe block states the invariant that makes it
//! sound. The rest of the crate is `#![deny(unsafe_code)]`.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

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
/// cannot have been reused).
pub(crate) fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1; no memory is passed.
    let fd = check_long(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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

/// Puts every signal back to its default action and unblocks all of them.
///
/// A forked child inherits the host's handlers, which could run host code inside the sandbox.
pub(crate) fn reset_signal_handlers() -> io::Result<()> {
    for signal in 1..libc::SIGRTMAX() {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL installs no code of ours; errors (for reserved signals) are ignored.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
    let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises `empty`; sigprocmask reads it and changes only our mask.
    unsafe {
        libc::sigemptyset(empty.as_mut_ptr());
        check(libc::sigprocmask(
            libc::SIG_SETMASK,
            empty.as_ptr(),
            std::ptr::null_mut(),
        ))?;
    }
    Ok(())
}

/// Drops every capability from the effective, permitted and inheritable sets, and the ambient
/// set, so that a signer started as root keeps none of root's powers.
pub(crate) fn drop_all_capabilities() -> io::Result<()> {
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and data are the kernel's v3 layout (one header, two data words) and live
    // for the duration of the call; capset only reads them.
    check_long(unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) })?;
    // SAFETY: integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    check(rc).map(drop)
}

/// Creates a `memfd_secret` descriptor: pages only this process can map, removed from the
/// kernel's direct map, unreadable even through `/proc/<pid>/mem`.
fn memfd_secret() -> io::Result<OwnedFd> {
    // SAFETY: integer argument only; returns a new fd or -1.
    let fd = check_long(unsafe { libc::syscall(libc::SYS_memfd_secret, libc::O_CLOEXEC) })?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What kind of memory a [`SecretCells`] region is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SecretMemoryBacking {
    /// `memfd_secret` pages: locked, out of the kernel's direct map, unreadable by ptrace.
    MemfdSecret,
    /// Anonymous private pages, `mlock`ed, `MADV_DONTDUMP` and `MADV_WIPEONFORK`.
    LockedAnonymous,
}

/// A fixed number of `T` values in memory that is locked, excluded from core dumps and wiped
/// when the region is dropped. The values are constructed in place.
pub(crate) struct SecretCells<T> {
    base: NonNull<T>,
    count: usize,
    mapped_len: usize,
    backing: SecretMemoryBacking,
}

// SAFETY: SecretCells owns its values exclusively (like a Box<[T]>), so it is Send/Sync exactly
// when T is.
unsafe impl<T: Send> Send for SecretCells<T> {}
// SAFETY: as above; shared access only hands out `&T`.
unsafe impl<T: Sync> Sync for SecretCells<T> {}

impl<T> SecretCells<T> {
    /// Maps a region for `count` values of `T` and fills it with `init()`.
    pub(crate) fn new(
        count: usize,
        backing: SecretMemoryBacking,
        mut init: impl FnMut() -> T,
    ) -> io::Result<Self> {
        let page = page_size();
        let bytes = std::mem::size_of::<T>()
            .checked_mul(count.max(1))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        let mapped_len = bytes.div_ceil(page).max(1) * page;
        let base = match backing {
            SecretMemoryBacking::MemfdSecret => map_memfd_secret(mapped_len)?,
            SecretMemoryBacking::LockedAnonymous => map_locked_anonymous(mapped_len)?,
        };
        debug_assert!(std::mem::align_of::<T>() <= page);
        let base = base.cast::<T>();
        for index in 0..count {
            // SAFETY: the mapping is page-aligned (so aligned for T), `mapped_len` covers
            // `count` values, and slot `index` is in bounds and not yet initialised.
            unsafe { base.add(index).write(init()) };
        }
        Ok(Self {
            base,
            count,
            mapped_len,
            backing,
        })
    }

    /// The kind of memory backing this region.
    pub(crate) fn backing(&self) -> SecretMemoryBacking {
        self.backing
    }

    /// The values, shared.
    pub(crate) fn as_slice(&self) -> &[T] {
        // SAFETY: `count` values were initialised in `new` and stay so until `drop`.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.count) }
    }

    /// The values, exclusive.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`; `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), self.count) }
    }
}

impl<T> Drop for SecretCells<T> {
    fn drop(&mut self) {
        // SAFETY: the values were initialised in `new` and are dropped exactly once, here.
        unsafe {
            std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(
                self.base.as_ptr(),
                self.count,
            ));
        }
        let bytes = self.base.cast::<u8>().as_ptr();
        for offset in 0..self.mapped_len {
            // SAFETY: the whole mapping is ours and writable; volatile so the wipe is not
            // optimised away even though the memory is unmapped next.
            unsafe { bytes.add(offset).write_volatile(0) };
        }
        // SAFETY: unmaps exactly the mapping made in `new`; no reference into it survives
        // `&mut self`. Failure leaves zeroed memory mapped, which is harmless.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.mapped_len);
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf takes an integer and returns one.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(4096)
}

fn map_memfd_secret(len: usize) -> io::Result<NonNull<u8>> {
    let fd = memfd_secret()?;
    let length =
        libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
    // SAFETY: integer arguments on a descriptor we own.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), length) })?;
    // SAFETY: a fresh shared mapping of our own memfd; the kernel picks the address. The fd can
    // be closed afterwards (dropped at the end of this function): the mapping keeps the pages.
    let address = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if address == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(address.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

fn map_locked_anonymous(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh private anonymous mapping; the kernel picks the address.
    let address = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if address == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let unmap_on_error = |error: io::Error| {
        // SAFETY: undoes the mapping made above, which nothing references yet.
        unsafe { libc::munmap(address, len) };
        error
    };
    // SAFETY: the three calls act on exactly the mapping made above.
    unsafe {
        check(libc::mlock(address, len)).map_err(unmap_on_error)?;
        check(libc::madvise(address, len, libc::MADV_DONTDUMP)).map_err(unmap_on_error)?;
        check(libc::madvise(address, len, libc::MADV_WIPEONFORK)).map_err(unmap_on_error)?;
    }
    NonNull::new(address.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

/// Whether this kernel lets us create `memfd_secret` memory.
pub(crate) fn memfd_secret_available() -> bool {
    memfd_secret().is_ok()
}

/// Replaces the process image, with an empty environment. Returns only on failure.
pub(crate) fn execute(program: &CString, arguments: &[CString]) -> io::Error {
    let mut argv: Vec<*const libc::c_char> = arguments.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: `program` and every argument are NUL-terminated strings that outlive the call;
    // argv and envp are null-terminated pointer arrays.
    unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// Test-only: attempt a system call the sandbox forbids. Under the filter the kernel kills the
/// process before this returns; without it the call's result is returned.
#[cfg(feature = "sandbox-test-hooks")]
pub(crate) fn attempt_forbidden_syscall(call: crate::protocol::ForbiddenSyscall) -> i64 {
    use crate::protocol::ForbiddenSyscall;
    let path = c"/etc/hostname";
    // SAFETY: each call below is made only to be killed by the seccomp filter. The arguments
    // are valid for the call even if it were allowed: a static path, no memory handed over
    // except a static string, and mappings/processes that the kernel creates itself.
    unsafe {
        match call {
            ForbiddenSyscall::Open => libc::syscall(libc::SYS_open, path.as_ptr(), libc::O_RDONLY),
            ForbiddenSyscall::OpenAt => libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                path.as_ptr(),
                libc::O_RDONLY,
            ),
            ForbiddenSyscall::Socket => {
                libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0)
            }
            ForbiddenSyscall::Execve => {
                let argv: [*const libc::c_char; 1] = [std::ptr::null()];
                libc::syscall(
                    libc::SYS_execve,
                    c"/bin/true".as_ptr(),
                    argv.as_ptr(),
                    argv.as_ptr(),
                )
            }
            ForbiddenSyscall::Ptrace => {
                libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0)
            }
            ForbiddenSyscall::Fork => libc::syscall(libc::SYS_fork),
            ForbiddenSyscall::Clone => libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0),
            ForbiddenSyscall::MmapExecutable => libc::syscall(
                libc::SYS_mmap,
                0,
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            ),
            ForbiddenSyscall::Mprotect => {
                // A page of read-only data, asked to stay read-only: harmless if it were allowed.
                static READ_ONLY: [u8; 1] = [0];
                let page = (READ_ONLY.as_ptr() as usize) & !4095;
                libc::syscall(libc::SYS_mprotect, page, 4096, libc::PROT_READ)
            }
            ForbiddenSyscall::X32Write => {
                const X32_SYSCALL_BIT: libc::c_long = 0x4000_0000;
                let message = b"x";
                libc::syscall(X32_SYSCALL_BIT | libc::SYS_write, 2, message.as_ptr(), 0)
            }
            ForbiddenSyscall::I386IntX80 => {
                // getpid through the i386 entry point (number 20 there): no arguments, so no
                // registers beyond eax are involved. The filter's architecture check kills it.
                let mut result: i64 = 20;
                std::arch::asm!("int 0x80", inout("rax") result);
                result
            }
        }
    }
}
