//! Runs in the host: one running signer, seen from the host. Starting it and waiting until it
//! is hardened, sending a call on the least busy lane, and the one place that decides what a
//! failed call means (`verdict`). Lanes are in `lanes`, the process watch in `watch`.

mod lanes;
mod watch;

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

use crate::host::config::Config;
use crate::host::error::{Error, SignerEnd, SpawnError};
use crate::host::operations::Operation;
use crate::host::sandbox_policy::{self, Sandbox};
use crate::host::signer_program::SignerProgram;
use crate::host::status::{self, FilterCheck, SignerStatus};
use crate::signer::entry::{self, ForkedLaunch, SIGNER_ARGUMENT};
use crate::sys;
use crate::wire::PROTOCOL_VERSION;
use crate::wire::framing::ReadError;
use crate::wire::key_types::{KeyMemory, StoreId};
use crate::wire::messages::{Answer, Refusal};
use crate::wire::startup::{Bootstrap, Greeting, HardeningStep, SignerSettings, exit_code};
use lanes::Lane;
use watch::{ChildWatch, watch};

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
}

impl SignerProcess {
    /// Starts a signer and waits until every worker says it is hardened and ready. With
    /// `program` (fork-exec mode) the signer execs that program, opened when the service was
    /// spawned; without, it is a fork of the host.
    pub(crate) fn spawn(
        config: &Config,
        program: Option<&SignerProgram>,
        generation: u32,
    ) -> Result<Self, SpawnError> {
        let system = |what: &'static str| move |source| SpawnError::System { what, source };
        entry::prepare_panic_exit();
        let filter = match config.sandbox {
            Sandbox::Enforced => sandbox_policy::compiled_filter()?,
            Sandbox::UnsandboxedInsecure => {
                tracing::warn!(
                    "the signer runs WITHOUT its seccomp sandbox (Sandbox::UnsandboxedInsecure); \
                     a compromised signer could make any system call"
                );
                Vec::new()
            }
        };
        // `Config::validate` keeps workers within 1..=MAX_WORKERS; refuse rather than guess if not.
        let workers = config.workers;
        let lane_count = u8::try_from(workers)
            .ok()
            .filter(|&count| (1..=crate::wire::MAX_WORKERS).contains(&usize::from(count)))
            .ok_or_else(|| SpawnError::System {
                what: "the number of signer workers",
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            })?;
        let mut parent_ends = Vec::with_capacity(workers);
        let mut child_ends = Vec::with_capacity(workers);
        // Every descriptor keyward holds in the host sits at 3 or above, whatever the host did
        // with its standard streams (see `sys::clear_of_standard_streams`).
        for _ in 0..workers {
            let (request_read, request_write) =
                sys::pipe_clear_of_standard_streams().map_err(system("creating a pipe"))?;
            let (response_read, response_write) =
                sys::pipe_clear_of_standard_streams().map_err(system("creating a pipe"))?;
            let request_reader_copy = request_read
                .try_clone()
                .and_then(sys::clear_of_standard_streams)
                .map_err(system("copying a pipe descriptor"))?;
            parent_ends.push((request_write, response_read, request_reader_copy));
            child_ends.push((request_read, response_write));
        }
        let dev_null = File::open("/dev/null")
            .map(OwnedFd::from)
            .and_then(sys::clear_of_standard_streams)
            .map_err(system("opening /dev/null"))?;
        let exec = match program {
            None => None,
            Some(program) => {
                let (file, name) = program.for_spawn()?;
                let argument = CString::new(SIGNER_ARGUMENT).map_err(|_| SpawnError::System {
                    what: "the signer argument",
                    source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
                })?;
                Some((file, sys::ExecArguments::new(vec![name, argument])))
            }
        };
        let settings = SignerSettings {
            workers: lane_count,
            key_limit: config.key_limit,
            secret_memory: config.secret_memory,
            // At most 100 ms (`Config::validate`), so it fits.
            signer_spin_micros: u32::try_from(config.latency.signer_spin.as_micros())
                .unwrap_or(u32::MAX),
            parent_pid: nix::unistd::getpid().as_raw(),
            sandboxed: config.sandbox == Sandbox::Enforced,
        };
        // The program as the kernel will show it: what the signer's filter is compared with.
        let program_compiled: Vec<sys::Instruction> =
            filter.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect();
        let bootstrap = exec.as_ref().map(|_| Bootstrap {
            protocol_version: PROTOCOL_VERSION,
            settings: settings.clone(),
            filter: program_compiled.clone(),
        });
        let launch = ForkedLaunch {
            settings,
            filter,
            lanes: child_ends,
            dev_null,
            exec,
        };
        let (shutdown_read, shutdown_write) =
            sys::pipe_clear_of_standard_streams().map_err(system("creating a pipe"))?;

        let (started_tx, started_rx) = mpsc::channel();
        let watcher = std::thread::Builder::new()
            .name(format!("keyward-signer-{generation}"))
            .spawn(move || {
                // A forked signer goes on running in its copy of the host, so it is started by the
                // C library's fork; a fork-exec one only makes raw system calls until exec, so it
                // is cloned with its pidfd and no exit signal (see `sys::clone_for_exec`).
                let started = if launch.exec.is_some() {
                    sys::clone_for_exec(entry::run_forked, &launch)
                } else {
                    sys::fork_with_pidfd(entry::run_forked, &launch, exit_code::PARENT_CHANGED)
                };
                // The signer's ends of the pipes and /dev/null close here, in the parent, so a
                // closed pipe means the signer is gone.
                drop(launch);
                match started {
                    Ok(sys::Spawned { pid, pidfd }) => {
                        let child = Arc::new(ChildWatch::new(pidfd));
                        let _ = started_tx.send(Ok((pid, Arc::clone(&child))));
                        watch(&child, &shutdown_read);
                    }
                    Err(error) => {
                        let _ = started_tx.send(Err(error));
                    }
                }
            })
            .map_err(system("starting the watcher thread"))?;
        let (pid, child) = match started_rx.recv() {
            Ok(Ok(started)) => started,
            Ok(Err(error)) => {
                let _ = watcher.join();
                return Err(SpawnError::System {
                    what: "starting the signer process",
                    source: error,
                });
            }
            Err(_) => {
                let _ = watcher.join();
                return Err(SpawnError::System {
                    what: "starting the signer process",
                    source: std::io::Error::other("the watcher thread ended"),
                });
            }
        };

        let mut lanes = Vec::with_capacity(workers);
        for (request_write, response_read, request_reader_copy) in parent_ends {
            for end in [&request_write, &response_read] {
                fcntl(end, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
                    .map_err(|e| system("configuring a pipe")(e.into()))?;
            }
            lanes.push(Lane::new(request_write, response_read, request_reader_copy));
        }
        let mut signer = SignerProcess {
            generation,
            pid,
            spawning_pid: std::process::id(),
            key_memory: KeyMemory::LockedAnonymous,
            store: [0; 8],
            child,
            lanes,
            caller_spin: config.latency.caller_spin,
            request_timeout: config.request_timeout,
            shutdown: Some(shutdown_write),
            watcher: Some(watcher),
            filter: FilterCheck::Unsandboxed,
        };
        // On any failure below, dropping `signer` kills and reaps the process.
        let ready_by = Instant::now() + config.spawn_timeout;
        if let Some(bootstrap) = bootstrap {
            signer.send_bootstrap(&bootstrap, ready_by)?;
        }
        (signer.key_memory, signer.store) = signer.await_ready(config.spawn_timeout, ready_by)?;
        // "Ready" is the signer's word; the kernel's is what counts. A signer that says it but
        // is not filtered, or kept a privilege on any thread, never serves.
        if config.sandbox == Sandbox::Enforced {
            let pidfd = signer.child.pidfd.as_fd();
            let checked = status::confirm_hardened(signer.pid, pidfd)
                .and_then(|()| status::compare_filter(signer.pid, pidfd, &program_compiled));
            match checked {
                Ok(filter) => signer.filter = filter,
                Err(weakness) => {
                    signer.child.kill(SignerEnd::ProtocolViolation);
                    return Err(SpawnError::NotHardened(weakness));
                }
            }
        }
        Ok(signer)
    }

    fn send_bootstrap(&self, bootstrap: &Bootstrap, deadline: Instant) -> Result<(), SpawnError> {
        let first = self.lanes.first().ok_or(SpawnError::UnexpectedGreeting)?;
        match first.send_start_frame(bootstrap, self.child.pidfd.as_fd(), deadline) {
            Ok(()) => Ok(()),
            Err(None) => Err(SpawnError::System {
                what: "encoding the bootstrap frame",
                source: std::io::Error::from(std::io::ErrorKind::InvalidData),
            }),
            Err(Some(_)) => Err(self.spawn_failure()),
        }
    }

    /// Reads each lane's greeting: `Ready`, or why not. Every lane must report the same store.
    fn await_ready(
        &self,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<(KeyMemory, StoreId), SpawnError> {
        let mut ready: Option<(KeyMemory, StoreId)> = None;
        for lane in &self.lanes {
            let greeting = match lane.read_greeting(self.child.pidfd.as_fd(), deadline) {
                Ok(greeting) => greeting,
                Err(Some(ReadError::TimedOut)) => {
                    self.child.kill(SignerEnd::TimedOut);
                    return Err(SpawnError::NotReady(timeout));
                }
                Err(Some(_)) => return Err(self.spawn_failure()),
                Err(None) => {
                    self.child.kill(SignerEnd::ProtocolViolation);
                    return Err(SpawnError::UnexpectedGreeting);
                }
            };
            match greeting {
                Greeting::Ready {
                    protocol_version: PROTOCOL_VERSION,
                    key_memory,
                    store,
                } => match ready {
                    Some((_, first_store)) if first_store != store => {
                        self.child.kill(SignerEnd::ProtocolViolation);
                        return Err(SpawnError::UnexpectedGreeting);
                    }
                    _ => ready = Some((key_memory, store)),
                },
                Greeting::HardeningFailed { step, errno } => {
                    return Err(SpawnError::Hardening { step, errno });
                }
                Greeting::VersionMismatch { protocol_version }
                | Greeting::Ready {
                    protocol_version, ..
                } => {
                    return Err(SpawnError::VersionMismatch {
                        ours: PROTOCOL_VERSION,
                        theirs: protocol_version,
                    });
                }
            }
        }
        ready.ok_or(SpawnError::UnexpectedGreeting)
    }

    /// Why a signer that ended before it was ready did so. The steps before its pipe was laid out
    /// can only speak through their exit code.
    fn spawn_failure(&self) -> SpawnError {
        let step = |step| SpawnError::Hardening { step, errno: 0 };
        match self.child.end_after_close() {
            SignerEnd::Exited {
                code: exit_code::PARENT_CHANGED,
            } => step(HardeningStep::ParentDeathSignal),
            SignerEnd::Exited {
                code: exit_code::HARDENING_FAILED,
            } => step(HardeningStep::DescriptorHygiene),
            SignerEnd::Exited {
                code: exit_code::EXEC_FAILED,
            } => SpawnError::System {
                what: "executing the signer program (is it the keyward binary, or does it call run_signer_if_requested first?)",
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
            SignerEnd::Exited {
                code: exit_code::BAD_BOOTSTRAP,
            } => SpawnError::UnexpectedGreeting,
            end => SpawnError::Ended(end),
        }
    }

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
            answer => match O::output(answer, self.store) {
                Ok(output) => Ok(Ok(output)),
                Err(what) => Err(self.verdict(CallFailure::Misbehaved(what))),
            },
        }
    }

    /// Sends one request and waits for its answer.
    fn call<O: Operation>(&self, operation: &O) -> Result<Answer, CallFailure> {
        if self.child.has_ended() {
            return Err(CallFailure::Ended);
        }
        let lane = self.pick_lane();
        let queued = lane.in_flight.fetch_add(1, Ordering::Relaxed) > 0;
        let deadline = Instant::now() + self.request_timeout;
        let spin = if queued {
            // Behind another request on the lane, the answer is at least a signature away, and
            // a spinning caller would take CPU from the workers.
            Duration::ZERO
        } else {
            self.caller_spin
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

    /// The comparison reads the program from the kernel and can tell it apart: the real signer's
    /// program is identical to keyward's, and not to a program one instruction or one
    /// instruction's length away from it.
    #[test]
    fn the_filter_comparison_tells_a_different_program_apart() {
        if !nix::unistd::geteuid().is_root() {
            // Without CAP_SYS_ADMIN the kernel shows nothing to compare.
            return;
        }
        let signer = SignerProcess::spawn(&Config::default(), None, 1)
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
