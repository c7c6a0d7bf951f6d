//! Runs in the host: one running signer, seen from the host. Starting it and waiting until it
//! is hardened, sending a call on the least busy lane, and the one place that decides what a
//! failed call means (`verdict`). Lanes are in `lanes`, the process watch in `watch`.

mod lanes;
mod watch;

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

use crate::host::config::{Config, SpawnMode};
use crate::host::error::{Error, SignerEnd, SpawnError};
use crate::host::operations::Operation;
use crate::host::sandbox_policy::{self, Sandbox};
use crate::host::status::{self, SignerStatus};
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
    key_memory: KeyMemory,
    store: StoreId,
    child: Arc<ChildWatch>,
    lanes: Vec<Lane>,
    caller_spin: Duration,
    request_timeout: Duration,
    shutdown: Option<OwnedFd>,
    watcher: Option<JoinHandle<()>>,
}

impl SignerProcess {
    /// Starts a signer and waits until every worker says it is hardened and ready.
    pub(crate) fn spawn(config: &Config, generation: u32) -> Result<Self, SpawnError> {
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
        for _ in 0..workers {
            let (request_read, request_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
                .map_err(|e| system("creating a pipe")(e.into()))?;
            let (response_read, response_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
                .map_err(|e| system("creating a pipe")(e.into()))?;
            let request_reader_copy = request_read
                .try_clone()
                .map_err(system("copying a pipe descriptor"))?;
            parent_ends.push((request_write, response_read, request_reader_copy));
            child_ends.push((request_read, response_write));
        }
        let dev_null: OwnedFd = File::open("/dev/null")
            .map_err(system("opening /dev/null"))?
            .into();
        let exec = match &config.spawn_mode {
            SpawnMode::Fork => None,
            SpawnMode::ForkExec { program } => {
                let program = CString::new(program.as_os_str().as_bytes()).map_err(|_| {
                    SpawnError::System {
                        what: "the signer program path",
                        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
                    }
                })?;
                let argument = CString::new(SIGNER_ARGUMENT).map_err(|_| SpawnError::System {
                    what: "the signer argument",
                    source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
                })?;
                Some((program.clone(), vec![program, argument]))
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
        let bootstrap = exec.as_ref().map(|_| Bootstrap {
            protocol_version: PROTOCOL_VERSION,
            settings: settings.clone(),
            filter: filter.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect(),
        });
        let launch = ForkedLaunch {
            settings,
            filter,
            lanes: child_ends,
            dev_null,
            exec,
        };
        let (shutdown_read, shutdown_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| system("creating a pipe")(e.into()))?;

        let (started_tx, started_rx) = mpsc::channel();
        let watcher = std::thread::Builder::new()
            .name(format!("keyward-signer-{generation}"))
            .spawn(move || {
                let forked = sys::fork_child(entry::run_forked, &launch);
                // The signer's ends of the pipes and /dev/null close here, in the parent, so a
                // closed pipe means the signer is gone.
                drop(launch);
                let started = forked.and_then(|pid| match sys::pidfd_open(pid) {
                    Ok(pidfd) => Ok((pid, pidfd)),
                    Err(error) => {
                        // Without a pidfd we cannot watch it: end it by pid (not yet reaped, so
                        // the pid is still ours) and reap it.
                        let pid = nix::unistd::Pid::from_raw(pid);
                        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                        let _ = nix::sys::wait::waitpid(pid, None);
                        Err(error)
                    }
                });
                match started {
                    Ok((pid, pidfd)) => {
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
                    what: "forking the signer",
                    source: error,
                });
            }
            Err(_) => {
                let _ = watcher.join();
                return Err(SpawnError::System {
                    what: "forking the signer",
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
            key_memory: KeyMemory::LockedAnonymous,
            store: [0; 8],
            child,
            lanes,
            caller_spin: config.latency.caller_spin,
            request_timeout: config.request_timeout,
            shutdown: Some(shutdown_write),
            watcher: Some(watcher),
        };
        // On any failure below, dropping `signer` kills and reaps the process.
        let ready_by = Instant::now() + config.spawn_timeout;
        if let Some(bootstrap) = bootstrap {
            signer.send_bootstrap(&bootstrap, ready_by)?;
        }
        (signer.key_memory, signer.store) = signer.await_ready(config.spawn_timeout, ready_by)?;
        // "Ready" is the signer's word; the kernel's is what counts. A signer that says it but
        // is not filtered, or kept a privilege on any thread, never serves.
        if config.sandbox == Sandbox::Enforced
            && let Err(weakness) = status::confirm_hardened(signer.pid)
        {
            signer.child.kill(SignerEnd::ProtocolViolation);
            return Err(SpawnError::NotHardened(weakness));
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
        SignerStatus::read(self.pid, self.generation, self.key_memory)
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
