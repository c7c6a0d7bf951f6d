//! Host side: reading the seccomp program a signer thread runs under, from the kernel
//! (`PTRACE_SECCOMP_GET_FILTER`), so that the supervisor can compare it with the program it
//! compiled rather than trust the signer's word.
//!
//! The kernel shows a thread's filter program only to a tracer that has `CAP_SYS_ADMIN` and is
//! not itself under seccomp, and only while the thread is stopped for its tracer. So the thread
//! is seized (`PTRACE_SEIZE`, which stops nothing by itself), interrupted (`PTRACE_INTERRUPT`),
//! read once stopped, and detached, which resumes it; a system call it was blocked in restarts.
//! No wait is made for the stop (a host that reaps every child might take that report): the read
//! itself is retried until the kernel finds the thread stopped.

use std::time::{Duration, Instant};

/// `PTRACE_SECCOMP_GET_FILTER` (linux/ptrace.h; not in the libc crate).
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
/// `PTRACE_EVENT_STOP` (linux/ptrace.h): the event of the stop PTRACE_INTERRUPT causes.
const PTRACE_EVENT_STOP: libc::c_int = 128;
/// How long a seized thread may take to stop (it stops at its next return to user space, at
/// once for a thread blocked in a system call).
const STOP_WITHIN: Duration = Duration::from_secs(1);

/// One classic BPF instruction: code, jump if true, jump if false, constant.
pub(crate) type Instruction = (u16, u8, u8, u32);

/// What reading one thread's seccomp program gave.
#[derive(Debug)]
pub(crate) enum FilterRead {
    /// The thread's newest filter, as it was loaded.
    Program(Vec<Instruction>),
    /// The kernel would not show it to this process (the errno: EPERM when ptrace is refused,
    /// EACCES without CAP_SYS_ADMIN or when this process is itself under seccomp).
    Refused(i32),
    /// The thread was seized but could not be brought to a stop and released: it may still be
    /// traced by this thread. The caller must end the process it belongs to.
    Stuck(i32),
}

/// A ptrace request that hands the kernel no memory of ours (a null data pointer): SEIZE (no
/// options), INTERRUPT, and SECCOMP_GET_FILTER asking only for the length.
fn ptrace_without_memory(
    request: libc::c_uint,
    tid: libc::pid_t,
    address: usize,
) -> Result<libc::c_long, i32> {
    // SAFETY: with a null data pointer no request writes to or reads from this process's memory;
    // `address` is an integer (a filter index) or 0.
    let rc = unsafe { libc::ptrace(request, tid, address, std::ptr::null_mut::<libc::c_void>()) };
    errno_of(rc)
}

/// Detaches from a stopped tracee, which resumes, delivering `signal` to it (0: none).
fn detach(tid: libc::pid_t, signal: usize) -> Result<libc::c_long, i32> {
    // SAFETY: for PTRACE_DETACH the data argument is a signal number, not a pointer: nothing of
    // this process's memory is read or written.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_DETACH,
            tid,
            0usize,
            std::ptr::without_provenance_mut::<libc::c_void>(signal),
        )
    };
    errno_of(rc)
}

fn errno_of(rc: libc::c_long) -> Result<libc::c_long, i32> {
    if rc < 0 {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    } else {
        Ok(rc)
    }
}

/// Reads the newest seccomp filter of thread `tid` (a thread of a child of this process).
pub(crate) fn read_seccomp_filter(tid: libc::pid_t) -> FilterRead {
    if let Err(errno) = ptrace_without_memory(libc::PTRACE_SEIZE, tid, 0) {
        return FilterRead::Refused(errno);
    }
    let read = interrupt_and_read(tid);
    // Detaching needs the thread stopped, which the read's success (or a non-ESRCH failure)
    // shows it is. A signal that reached the thread while it was traced stopped it for us to
    // see, and detaching discards it unless handed back: hand it back.
    let pending = signal_stopped_for(tid);
    match (read, detach(tid, pending)) {
        (read, Ok(_)) => read,
        // The thread has gone: nothing is left traced.
        (read, Err(libc::ESRCH)) if !matches!(read, FilterRead::Stuck(_)) => read,
        (_, Err(errno)) => FilterRead::Stuck(errno),
    }
}

/// The signal a stopped tracee is stopped for, if it is stopped for a signal on its way to
/// delivery (0 if it is stopped for our interrupt, or the answer is unknown).
fn signal_stopped_for(tid: libc::pid_t) -> usize {
    let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: `info` is a valid, writable siginfo_t, which PTRACE_GETSIGINFO fills in.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_GETSIGINFO,
            tid,
            0usize,
            info.as_mut_ptr().cast::<libc::c_void>(),
        )
    };
    if rc < 0 {
        return 0;
    }
    // SAFETY: zeroed before the call and filled in by the kernel on success.
    let info = unsafe { info.assume_init() };
    // The stop PTRACE_INTERRUPT causes reports SIGTRAP with the event in the high bits of the
    // code (PTRACE_EVENT_STOP << 8); a signal-delivery stop reports the signal and its own code.
    let event_stop = info.si_signo == libc::SIGTRAP && info.si_code >> 8 == PTRACE_EVENT_STOP;
    if event_stop {
        0
    } else {
        usize::try_from(info.si_signo).unwrap_or(0)
    }
}

fn interrupt_and_read(tid: libc::pid_t) -> FilterRead {
    if let Err(errno) = ptrace_without_memory(libc::PTRACE_INTERRUPT, tid, 0) {
        return FilterRead::Stuck(errno);
    }
    let started = Instant::now();
    // With a null buffer the kernel only says how many instructions the filter has. ESRCH means
    // "not stopped yet" (or gone).
    let count = loop {
        match ptrace_without_memory(PTRACE_SECCOMP_GET_FILTER, tid, 0) {
            Ok(count) => break count,
            Err(libc::ESRCH) if started.elapsed() < STOP_WITHIN => {
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(libc::ESRCH) => return FilterRead::Stuck(libc::ESRCH),
            Err(errno) => return FilterRead::Refused(errno),
        }
    };
    let Ok(length) = usize::try_from(count) else {
        return FilterRead::Refused(libc::EINVAL);
    };
    let mut program = vec![
        libc::sock_filter {
            code: 0,
            jt: 0,
            jf: 0,
            k: 0,
        };
        length
    ];
    // SAFETY: `program` is a writable buffer of exactly as many instructions as the kernel said
    // the filter (index 0, the newest) has, each laid out as the kernel's struct sock_filter; a
    // loaded filter cannot change, so the kernel writes no more than that.
    let rc = unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_FILTER,
            tid,
            0usize,
            program.as_mut_ptr().cast::<libc::c_void>(),
        )
    };
    match errno_of(rc) {
        Ok(written) if written == count => FilterRead::Program(
            program
                .iter()
                .map(|instruction| {
                    (
                        instruction.code,
                        instruction.jt,
                        instruction.jf,
                        instruction.k,
                    )
                })
                .collect(),
        ),
        Ok(_) => FilterRead::Refused(libc::EINVAL),
        Err(errno) => FilterRead::Refused(errno),
    }
}
