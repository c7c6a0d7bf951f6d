//! Runs in the host: one running signer, seen from the host. Sending a call on the least busy
//! lane, and the one place that decides what a failed call means (`verdict`). Starting it and
//! waiting until it is hardened is in `spawn`, lanes are in `lanes`, the process watch in
//! `watch`.

mod lanes;
mod spawn;
mod watch;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::host::error::{Error, SignerEnd};
use crate::host::operations::Operation;
use crate::host::status::{self, FilterCheck, SignerStatus};
use crate::sys;
use crate::wire::key_types::{KeyMemory, StoreId};
use crate::wire::messages::{Answer, Refusal};
use crate::wire::startup::SealedSummary;
use lanes::Lane;
use watch::ChildWatch;

/// Why a call failed, before it is turned into an [`Error`] with the signer's context.
#[derive(Clone, Debug)]
pub(crate) enum CallFailure {
    /// The signer process is gone (end of file, broken pipe, or its pidfd fired).
    Ended,
    /// No answer before the deadline.
    TimedOut,
    /// A request could not be written whole before the deadline (the pipe stayed full): the
    /// request stream is broken, whatever state the signer is in.
    WriteTimedOut,
    /// The signer sent something the protocol does not allow.
    Misbehaved(&'static str),
    /// keyward itself broke an invariant (a bug); the signer is not to blame.
    Internal(&'static str),
    /// The pipe failed in some other way.
    Io(std::io::ErrorKind),
}

/// One running signer process.
pub(crate) struct SignerProcess {
    generation: u32,
    pid: i32,
    /// The process that spawned the signer. A copy of this value in a process forked from it
    /// owns nothing but its own copies of the descriptors (see `Drop`).
    spawning_pid: u32,
    key_memory: KeyMemory,
    store: StoreId,
    child: Arc<ChildWatch>,
    lanes: Vec<Lane>,
    caller_spin: Duration,
    request_timeout: Duration,
    shutdown: Option<OwnedFd>,
    watcher: Option<JoinHandle<()>>,
    /// How the signer's seccomp program compared with keyward's when it became ready.
    filter: FilterCheck,
    /// What a signer with a sealed store reported when it became ready.
    sealed: Option<SealedSummary>,
}

impl SignerProcess {
    /// Which signer of the service this is.
    pub(crate) fn generation(&self) -> u32 {
        self.generation
    }

    /// The signer's pid.
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// The store the signer serves; every key id it hands out names it.
    pub(crate) fn store(&self) -> StoreId {
        self.store
    }

    /// What the signer reported of its sealed store when it became ready (`None`: memory only).
    pub(crate) fn sealed_summary(&self) -> Option<&SealedSummary> {
        self.sealed.as_ref()
    }

    /// Whether the signer has ended (or is being ended).
    pub(crate) fn has_ended(&self) -> bool {
        self.child.has_ended()
    }

    /// Whether the kernel shows the signer stopped. The pid is read through `/proc` only while
    /// the pidfd shows the process alive, before and after, so a reused pid is never read (the
    /// process is not reaped while this `SignerProcess` lives: only the watcher reaps it, after
    /// the pidfd reports its end).
    fn is_stopped(&self) -> bool {
        let alive = || sys::pidfd_send_signal(self.child.pidfd.as_fd(), 0).is_ok();
        alive() && status::any_thread_stopped(self.pid) && alive()
    }

    /// What the kernel says about the signer.
    pub(crate) fn status(&self) -> std::io::Result<SignerStatus> {
        SignerStatus::read(
            self.pid,
            self.child.pidfd.as_fd(),
            self.generation,
            self.key_memory,
            self.filter.clone(),
        )
    }

    /// Takes lane 0's pipe ends out of the host, for tests that speak raw bytes to a real
    /// signer. The lane is gone from this process afterwards.
    #[cfg(feature = "test-support")]
    pub(crate) fn take_raw_lane(&mut self) -> Option<(OwnedFd, OwnedFd)> {
        if self.lanes.is_empty() {
            return None;
        }
        Some(self.lanes.remove(0).into_raw_ends())
    }

    /// How the signer ended, once its pipe has closed (waits up to two seconds for the kernel).
    #[cfg(feature = "test-support")]
    pub(crate) fn end_after_close(&self) -> SignerEnd {
        self.child.end_after_close()
    }

    /// The one place that decides what a failed call means: the error its caller sees, and
    /// whether the signer can still be trusted. A signer that misbehaved, timed out or whose
    /// pipe failed is killed, and the error says so; a bug in keyward leaves the signer alone
    /// and says it is a bug.
    pub(crate) fn verdict(&self, failure: CallFailure) -> Error {
        match failure {
            CallFailure::Ended => Error::SignerEnded {
                generation: self.generation,
                end: self.child.end_after_close(),
            },
            // A stopped signer (SIGSTOP, a debugger, job control) is not hung: killing it would
            // destroy its keys for an operator's pause. It is left as it is; its late answers
            // are dropped when they come. A running signer that misses the deadline is hung.
            CallFailure::TimedOut if self.is_stopped() => {
                Error::SignerStopped(self.request_timeout)
            }
            CallFailure::TimedOut | CallFailure::WriteTimedOut => {
                self.child.kill(SignerEnd::TimedOut);
                Error::Timeout(self.request_timeout)
            }
            CallFailure::Misbehaved(what) => {
                self.child.kill(SignerEnd::ProtocolViolation);
                Error::SignerMisbehaved {
                    generation: self.generation,
                    what,
                }
            }
            CallFailure::Internal(what) => Error::Internal(what),
            CallFailure::Io(kind) => {
                self.child.kill(SignerEnd::ProtocolViolation);
                Error::Io(std::io::Error::from(kind))
            }
        }
    }

    /// Performs one operation: its request, then its answer, checked to be of its kind. A
    /// refusal comes back as `Ok(Err(refusal))`; every failure has been through [`verdict`].
    ///
    /// [`verdict`]: SignerProcess::verdict
    pub(crate) fn perform<O: Operation>(
        &self,
        operation: &O,
    ) -> Result<Result<O::Output, Refusal>, Error> {
        let answer = self
            .call(operation)
            .map_err(|failure| self.verdict(failure))?;
        match answer {
            Answer::Refused(refusal) => Ok(Err(refusal)),
            answer => match operation.output(answer, self.store) {
                Ok(output) => Ok(Ok(output)),
                Err(what) => Err(self.verdict(CallFailure::Misbehaved(what))),
            },
        }
    }

    /// Performs several operations at once, each on its own lane where lanes are idle: every
    /// request is written before any answer is awaited, so the signer's workers serve them side
    /// by side. The outputs come back in the order of `operations`. A failure of any one is the
    /// failure of all (it has been through [`verdict`]); the answers not yet read are abandoned.
    ///
    /// [`verdict`]: SignerProcess::verdict
    pub(crate) fn perform_spread<O: Operation>(
        &self,
        operations: &[O],
    ) -> Result<Vec<Result<O::Output, Refusal>>, Error> {
        if self.child.has_ended() {
            return Err(self.verdict(CallFailure::Ended));
        }
        let deadline = Instant::now() + self.request_timeout;
        let lanes = self.pick_lanes(operations.len());
        let mut sent: Vec<(&Lane, u64)> = Vec::with_capacity(operations.len());
        let mut failure = None;
        for (operation, lane) in operations.iter().zip(lanes) {
            lane.in_flight.fetch_add(1, Ordering::Relaxed);
            match lane.send(operation.request(), &self.child.pidfd, deadline) {
                Ok(id) => sent.push((lane, id)),
                Err(error) => {
                    lane.in_flight.fetch_sub(1, Ordering::Relaxed);
                    failure = Some(error);
                    break;
                }
            }
        }
        let mut outputs = Vec::with_capacity(operations.len());
        for (index, &(lane, id)) in sent.iter().enumerate() {
            let received = match failure {
                // The answers are a signature away at least: sleep, leave the CPU to the workers.
                None => lane.receive(id, deadline, Duration::ZERO, &self.child.pidfd),
                Some(_) => {
                    lane.abandon(id);
                    lane.in_flight.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
            };
            lane.in_flight.fetch_sub(1, Ordering::Relaxed);
            match received {
                Ok(Answer::Refused(refusal)) => outputs.push(Err(refusal)),
                Ok(answer) => match operations[index].output(answer, self.store) {
                    Ok(output) => outputs.push(Ok(output)),
                    Err(what) => failure = Some(CallFailure::Misbehaved(what)),
                },
                Err(error) => failure = Some(error),
            }
        }
        match failure {
            Some(failure) => Err(self.verdict(failure)),
            None => Ok(outputs),
        }
    }

    /// How many lanes have nothing in flight now (a hint: another caller may take one at once).
    pub(crate) fn idle_lanes(&self) -> usize {
        self.lanes
            .iter()
            .filter(|lane| lane.in_flight.load(Ordering::Relaxed) == 0)
            .count()
    }

    /// `count` lanes for requests sent together: idle lanes first, then the least busy, each
    /// used once while there are enough.
    fn pick_lanes(&self, count: usize) -> Vec<&Lane> {
        let mut lanes: Vec<&Lane> = self.lanes.iter().collect();
        lanes.sort_by_key(|lane| lane.in_flight.load(Ordering::Relaxed));
        lanes.iter().copied().cycle().take(count).collect()
    }

    /// Sends one request and waits for its answer.
    fn call<O: Operation>(&self, operation: &O) -> Result<Answer, CallFailure> {
        if self.child.has_ended() {
            return Err(CallFailure::Ended);
        }
        let lane = self.pick_lane();
        let queued = lane.in_flight.fetch_add(1, Ordering::Relaxed) > 0;
        let deadline = Instant::now() + self.request_timeout;
        let spin = if queued || !operation.answer_is_quick() {
            // Behind another request on the lane, or for a batch, the answer is at least a
            // signature away, and a spinning caller would take CPU from the workers.
            Duration::ZERO
        } else if lane.caller_spin.may_spin() {
            self.caller_spin
        } else {
            // The last spins on this lane ran out before their answers: sleep (see SpinBackoff).
            Duration::ZERO
        };
        let result = lane
            .send(operation.request(), &self.child.pidfd, deadline)
            .and_then(|id| lane.receive(id, deadline, spin, &self.child.pidfd));
        lane.in_flight.fetch_sub(1, Ordering::Relaxed);
        result
    }

    /// The first idle lane, else the least busy: a lone caller always uses lane 0, so only one
    /// signer worker is awake for it.
    fn pick_lane(&self) -> &Lane {
        let mut best = &self.lanes[0];
        let mut best_load = usize::MAX;
        for lane in &self.lanes {
            let load = lane.in_flight.load(Ordering::Relaxed);
            if load == 0 {
                return lane;
            }
            if load < best_load {
                best = lane;
                best_load = load;
            }
        }
        best
    }
}

impl Drop for SignerProcess {
    fn drop(&mut self) {
        if std::process::id() != self.spawning_pid {
            // A copy in a process forked from the host (which forked without exec). The signer
            // and the watcher thread belong to the original process, which goes on using them:
            // this copy must neither signal the signer nor join a thread that does not exist
            // here (glibc's join returns at once and std then panics for want of a result;
            // another C library's could wait forever). Closing this copy's descriptors is all it
            // may do; the original still holds its own, so its signer sees no end of file.
            if let Some(watcher) = self.watcher.take() {
                std::mem::forget(watcher);
            }
            self.lanes.clear();
            drop(self.shutdown.take());
            return;
        }
        let _ = self.child.cause.set(SignerEnd::ShutDown);
        // Closing the request pipes makes every worker read end of file and exit.
        self.lanes.clear();
        // Closing the shutdown pipe wakes the watcher, which gives the signer a moment to exit,
        // kills it otherwise, and reaps it.
        drop(self.shutdown.take());
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::config::Config;
    use crate::host::sandbox_policy;

    /// The comparison reads the program from the kernel and can tell it apart: the real signer's
    /// program is identical to keyward's, and not to a program one instruction or one
    /// instruction's length away from it.
    #[test]
    fn the_filter_comparison_tells_a_different_program_apart() {
        if !nix::unistd::geteuid().is_root() {
            // Without CAP_SYS_ADMIN the kernel shows nothing to compare.
            return;
        }
        let signer = SignerProcess::spawn(&Config::default(), None, 1, None)
            .unwrap_or_else(|error| panic!("spawn: {error}"));
        assert_eq!(signer.filter, FilterCheck::Identical);
        let compiled: Vec<sys::Instruction> = sandbox_policy::compiled_filter()
            .unwrap_or_else(|error| panic!("policy: {error}"))
            .iter()
            .map(|i| (i.code, i.jt, i.jf, i.k))
            .collect();
        let pidfd = signer.child.pidfd.as_fd();
        assert_eq!(
            status::compare_filter(signer.pid, pidfd, &compiled),
            Ok(FilterCheck::Identical)
        );
        let mut altered = compiled.clone();
        if let Some(last) = altered.last_mut() {
            last.3 ^= 1;
        }
        let shorter = &compiled[..compiled.len() - 1];
        for (what, expected) in [("altered", &altered[..]), ("shorter", shorter)] {
            let compared = status::compare_filter(signer.pid, pidfd, expected);
            assert!(
                matches!(&compared, Err(said) if said.contains("not the one keyward compiled")),
                "{what}: {compared:?}"
            );
        }
        // The signer was stopped and released for each reading, and still serves.
        let listed = signer.perform(&crate::host::operations::ListKeys);
        assert!(
            matches!(&listed, Ok(Ok(keys)) if keys.is_empty()),
            "{listed:?}"
        );
    }
}
