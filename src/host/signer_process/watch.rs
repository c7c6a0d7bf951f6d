//! Runs in the host: watching one signer process through its pidfd. The watcher thread that
//! forks the signer waits for it to end (or for the host to let go), reaps it, and records how
//! it ended, so that every caller is told the same, exact reason, whatever the host does with
//! SIGCHLD (see `sys::pidfd_reap`).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::host::error::SignerEnd;
use crate::host::signer_process::lanes::lock;
use crate::sys::{self, ProcessEnd};
use crate::wire::startup::exit_code;

/// How long to wait for the kernel to report a signer's end once its pipe has closed.
const END_REPORT_WAIT: Duration = Duration::from_secs(2);
/// How long a signer gets to exit after its pipes close, before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The process and how it ended, shared with the watcher thread.
pub(super) struct ChildWatch {
    pub(super) pidfd: OwnedFd,
    end: Mutex<Option<ProcessEnd>>,
    ended: Condvar,
    /// Set when the host ends the signer on purpose, before the kill, so the end is
    /// reported for what it was (timeout, protocol violation, shutdown) and not as "killed by 9".
    pub(super) cause: OnceLock<SignerEnd>,
}

impl ChildWatch {
    /// Watches the process behind `pidfd`, which has not ended yet.
    pub(super) fn new(pidfd: OwnedFd) -> Self {
        Self {
            pidfd,
            end: Mutex::new(None),
            ended: Condvar::new(),
            cause: OnceLock::new(),
        }
    }

    /// How the signer ended, once its pipe has closed; waits briefly for the kernel to say. A
    /// signer whose pipe closed but whose process lives on is killed: it broke the protocol.
    pub(super) fn end_after_close(&self) -> SignerEnd {
        let end = self.wait_for_end(END_REPORT_WAIT);
        if let Some(cause) = self.cause.get() {
            return *cause;
        }
        match end {
            Some(ProcessEnd::Signaled {
                signal: libc::SIGSYS,
                ..
            }) => SignerEnd::SandboxViolation,
            Some(ProcessEnd::Signaled { signal, .. }) => SignerEnd::Killed { signal },
            Some(ProcessEnd::Exited(exit_code::PANICKED)) => SignerEnd::Panicked,
            Some(ProcessEnd::Exited(exit_code::CORRUPT_REQUEST_STREAM)) => {
                SignerEnd::CorruptRequestStream
            }
            Some(ProcessEnd::Exited(code)) => SignerEnd::Exited { code },
            Some(ProcessEnd::CollectedElsewhere) => SignerEnd::ReapedElsewhere,
            None => {
                self.kill(SignerEnd::ProtocolViolation);
                SignerEnd::ProtocolViolation
            }
        }
    }

    fn record_end(&self, end: ProcessEnd) {
        *lock(&self.end) = Some(end);
        self.ended.notify_all();
    }

    fn wait_for_end(&self, timeout: Duration) -> Option<ProcessEnd> {
        let guard = lock(&self.end);
        let (guard, _) = self
            .ended
            .wait_timeout_while(guard, timeout, |end| end.is_none())
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *guard
    }

    pub(super) fn has_ended(&self) -> bool {
        self.cause.get().is_some() || lock(&self.end).is_some()
    }

    pub(super) fn kill(&self, cause: SignerEnd) {
        let _ = self.cause.set(cause);
        // ESRCH (already gone) is fine: the pidfd cannot name another process.
        let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
    }
}

/// The watcher thread: it forks the signer (so the signer's parent-death signal is tied to a
/// thread that lives exactly as long as the signer), then reaps it when it ends, or ends it when
/// the host lets go.
pub(super) fn watch(watch: &ChildWatch, shutdown: &OwnedFd) {
    let mut fds = [
        PollFd::new(watch.pidfd.as_fd(), PollFlags::POLLIN),
        PollFd::new(shutdown.as_fd(), PollFlags::POLLIN),
    ];
    loop {
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    let exited = fds[0].any().unwrap_or(false);
    if !exited {
        let mut pidfd = [PollFd::new(watch.pidfd.as_fd(), PollFlags::POLLIN)];
        let grace = PollTimeout::try_from(SHUTDOWN_GRACE).unwrap_or(PollTimeout::MAX);
        if !matches!(nix::poll::poll(&mut pidfd, grace), Ok(1..)) {
            watch.kill(SignerEnd::ShutDown);
        }
    }
    // Whatever happens, an end is recorded: callers must never wait for one that will not come.
    let end = sys::pidfd_reap(watch.pidfd.as_fd()).unwrap_or(ProcessEnd::CollectedElsewhere);
    watch.record_end(end);
}
