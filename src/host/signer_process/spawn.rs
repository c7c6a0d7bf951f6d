//! Runs in the host: starting a signer and waiting until it is hardened and ready. The pipes,
//! the watcher thread that forks (or clones and execs) the signer, the bootstrap of an exec'd
//! signer, the greetings, and the kernel's view of the signer checked before it may serve.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

use super::SignerProcess;
use super::lanes::Lane;
use super::watch::{ChildWatch, watch};
use crate::host::config::Config;
use crate::host::error::{SignerEnd, SpawnError};
use crate::host::sandbox_policy::{self, Sandbox};
use crate::host::signer_program::SignerProgram;
use crate::host::status::{self, FilterCheck};
use crate::host::store::HostStore;
use crate::signer::entry::{self, ForkedLaunch, SIGNER_ARGUMENT};
use crate::sys;
use crate::wire::PROTOCOL_VERSION;
use crate::wire::framing::ReadError;
use crate::wire::key_types::{KeyMemory, StoreId};
use crate::wire::startup::{
    Bootstrap, Greeting, HardeningStep, SealedSummary, SignerSettings, SignerStoreSettings,
    exit_code,
};

impl SignerProcess {
    /// Starts a signer and waits until every worker says it is hardened and ready. With
    /// `program` (fork-exec mode) the signer execs that program, opened when the service was
    /// spawned; without, it is a fork of the host.
    pub(crate) fn spawn(
        config: &Config,
        program: Option<&SignerProgram>,
        generation: u32,
        store: Option<(&HostStore, SignerStoreSettings)>,
    ) -> Result<Self, SpawnError> {
        let (host_store, store_settings) = match store {
            Some((host_store, settings)) => (Some(host_store), Some(settings)),
            None => (None, None),
        };
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
            allow_blind_consensus: config.blind_consensus_signing,
            store: store_settings,
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
            sealed: None,
        };
        // On any failure below, dropping `signer` kills and reaps the process.
        let ready_by = Instant::now() + config.spawn_timeout;
        if let Some(bootstrap) = bootstrap {
            signer.send_bootstrap(&bootstrap, ready_by)?;
        }
        (signer.key_memory, signer.store, signer.sealed) =
            signer.await_ready(config.spawn_timeout, ready_by, host_store)?;
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
        host_store: Option<&HostStore>,
    ) -> Result<(KeyMemory, StoreId, Option<SealedSummary>), SpawnError> {
        let mut ready: Option<(KeyMemory, StoreId, Option<SealedSummary>)> = None;
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
                    sealed,
                } => match &ready {
                    Some((_, first_store, first_sealed))
                        if *first_store != store || *first_sealed != sealed =>
                    {
                        self.child.kill(SignerEnd::ProtocolViolation);
                        return Err(SpawnError::UnexpectedGreeting);
                    }
                    _ => ready = Some((key_memory, store, sealed)),
                },
                Greeting::StoreRefused { problem } => {
                    return Err(match host_store {
                        Some(host_store) => SpawnError::Store(host_store.problem_error(problem)),
                        None => {
                            self.child.kill(SignerEnd::ProtocolViolation);
                            SpawnError::UnexpectedGreeting
                        }
                    });
                }
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
}
