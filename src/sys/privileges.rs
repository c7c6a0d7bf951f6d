//! Runs in the signer: giving up what a forked copy of the host inherits (signal handlers,
//! capabilities).

use std::io;
use std::mem::MaybeUninit;

use super::{check, check_long};

/// Puts every signal back to its default action and unblocks all of them.
///
/// A forked child inherits the host's handlers, which could run host code inside the sandbox.
pub(crate) fn reset_signal_handlers() -> io::Result<()> {
    for signal in 1..=libc::SIGRTMAX() {
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
