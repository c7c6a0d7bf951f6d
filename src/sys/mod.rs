//! Both sides: the one place in keyward where `unsafe` code lives.
//!
//! Every function here is a thin, safe wrapper over a system call (or a small group of them) that
//! `libc`/`nix` expose only as `unsafe`. Each unsafe block states the invariant that makes it
//! sound. The rest of the crate is `#![deny(unsafe_code)]`.

#![allow(unsafe_code)]

mod descriptors;
mod fork_sentinel;
mod privileges;
mod process;
mod seccomp_check;
mod secret_memory;
#[cfg(feature = "test-support")]
mod test_hooks;

#[cfg(feature = "test-support")]
pub(crate) use descriptors::write_without_sigpipe;
pub(crate) use descriptors::{
    clear_of_standard_streams, close_range, duplicate_at_or_above,
    duplicate_clear_of_standard_streams, duplicate_onto, fixed_descriptor,
    pipe_clear_of_standard_streams,
};
pub(crate) use fork_sentinel::ForkSentinel;
pub(crate) use privileges::{drop_all_capabilities, reset_signal_handlers};
#[cfg(test)]
pub(crate) use process::pidfd_open;
pub(crate) use process::{
    ExecArguments, ProcessEnd, Spawned, clone_for_exec, execute, fork_with_pidfd, pidfd_reap,
    pidfd_send_signal,
};
pub(crate) use seccomp_check::{FilterRead, Instruction, read_seccomp_filter};
pub(crate) use secret_memory::{SecretCells, SecretMemoryBacking, memfd_secret_available};
#[cfg(feature = "test-support")]
pub(crate) use test_hooks::attempt_forbidden_syscall;

use std::io;

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

/// The size of a memory page (at least 4 KiB).
fn page_size() -> usize {
    // SAFETY: sysconf takes an integer and returns one.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(4096)
}

/// A fresh private anonymous read-write mapping of `len` bytes at an address the kernel picks,
/// zero-filled and page-aligned; the caller owns it and unmaps it.
fn map_anonymous(len: usize) -> io::Result<std::ptr::NonNull<libc::c_void>> {
    // SAFETY: a new mapping; no existing memory is touched.
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
    std::ptr::NonNull::new(address).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

/// Ends the calling process at once: no destructors, no atexit handlers, no stdio flush.
pub(crate) fn exit_immediately(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and never returns; it touches no memory of ours.
    unsafe { libc::_exit(code) }
}
