//! One running signer, seen from the supervisor: starting it, its lanes (one pipe pair per
//! signer worker), sending a request and matching the answer to its caller, and watching the
//! process through a pidfd so its end is noticed and explained.
//!
//! Callers on many threads share a lane. Each request takes the lane's writer lock only to write
//! its frame. For answers, whichever waiting caller gets the lane's reader lock reads frames for
//! everyone and hands each answer to its caller by id, waking that caller alone; the others
//! sleep (parked) until their answer is there or it is their turn to read. A single caller thus
//! reads its own answer directly, with no hand-off thread in between, and many callers cost one
//! wake-up per answer, not one per caller.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, TryLockError};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use zeroize::Zeroize;

use crate::child::{self, ForkedLaunch, SIGNER_ARGUMENT};
use crate::config::{Config, SpawnMode};
use crate::error::{Error, SignerEnd, SpawnError};
use crate::protocol::{
    Bootstrap, HardeningStep, PROTOCOL_VERSION, Request, RequestFrame, Response, ResponseFrame,
    SignerSettings, exit_code,
};
use crate::sandbox::{self, Sandbox};
use crate::status::{self, KeyMemory, SignerStatus};
use crate::sys::{self, ProcessEnd};
use crate::transport::{
    FrameReader, ReadError, WriteError, encode_frame, frame_buffer, write_frame,
};

/// How long to wait for the kernel to report a signer's end once its pipe has closed.
const END_REPORT_WAIT: Duration = Duration::from_secs(2);
/// How long a signer gets to exit after its pipes close, before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Why a call failed, before it is turned into an [`Error`] with the signer's context.
#[derive(Clone, Debug)]
pub(crate) enum CallFailure {
    /// The signer process is gone (end of file, broken pipe, or its pidfd fired).
    Ended,
    /// No answer before the deadline.
    TimedOut,
    /// The signer sent something the protocol does not allow.
    Protocol(&'static str),
    /// The pipe failed in some other way.
    Io(std::io::ErrorKind),
}

/// The process and how it ended, shared with the watcher thread.
struct ChildWatch {
    pidfd: OwnedFd,
    end: Mutex<Option<ProcessEnd>>,
    ended: Condvar,
    /// Set when the supervisor ends the signer on purpose, before the kill, so the end is
    /// reported for what it was (timeout, protocol violation, shutdown) and not as "killed by 9".
    cause: OnceLock<SignerEnd>,
}

impl ChildWatch {
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

    fn has_ended(&self) -> bool {
        self.cause.get().is_some() || lock(&self.end).is_some()
    }

    fn kill(&self, cause: SignerEnd) {
        let _ = self.cause.set(cause);
        // ESRCH (already gone) is fine: the pidfd cannot name another process.
        let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
    }
}

/// The watcher thread: it forks the signer (so the signer's parent-death signal is tied to a
/// thread that lives exactly as long as the signer), then reaps it when it ends, or ends it when
/// the supervisor lets go.
fn watch(watch: &ChildWatch, shutdown: &OwnedFd) {
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
    if let Ok(end) = sys::pidfd_reap(watch.pidfd.as_fd()) {
        watch.record_end(end);
    }
}

/// One call in flight on a lane: its answer once read, and its caller if asleep.
#[derive(Default)]
struct Call {
    answer: Option<Response>,
    /// Set while the caller sleeps, so the reader can wake exactly it.
    sleeping: Option<Thread>,
}

/// Calls waiting on one lane, and answers read for callers not yet back to collect them.
#[derive(Default)]
struct Pending {
    calls: HashMap<u64, Call>,
    /// Requests whose callers gave up (timed out): an answer that arrives for one later is
    /// dropped quietly rather than taken for a protocol violation.
    abandoned: HashSet<u64>,
    failed: Option<CallFailure>,
}

impl Pending {
    /// Forgets a call whose caller is giving up, remembering its id so a late answer is dropped.
    fn abandon(&mut self, id: u64) {
        if self.calls.remove(&id).is_some() {
            self.abandoned.insert(id);
        }
    }

    /// Wakes one sleeping caller still without an answer, to take over reading the lane.
    fn wake_next_reader(&self) {
        let next = self
            .calls
            .values()
            .find(|call| call.answer.is_none() && call.sleeping.is_some());
        if let Some(thread) = next.and_then(|call| call.sleeping.as_ref()) {
            thread.unpark();
        }
    }

    /// Wakes every sleeping caller (the lane has failed).
    fn wake_all(&self) {
        for thread in self
            .calls
            .values()
            .filter_map(|call| call.sleeping.as_ref())
        {
            thread.unpark();
        }
    }
}

struct LaneWriter {
    /// The request pipe's write end, non-blocking.
    fd: OwnedFd,
    buffer: Box<[u8]>,
    next_id: u64,
}

struct LaneReader {
    fd: OwnedFd,
    frames: FrameReader,
}

/// One pipe pair to one signer worker.
struct Lane {
    writer: Mutex<LaneWriter>,
    reader: Mutex<LaneReader>,
    pending: Mutex<Pending>,
    /// A copy of the request pipe's read end, never read: with it the pipe always has a reader,
    /// so writing a request never raises SIGPIPE in the host (see `transport::write_frame`).
    _request_reader_copy: OwnedFd,
    in_flight: AtomicUsize,
}

/// Locks a mutex, ignoring poison: every critical section here leaves its data consistent at
/// each step, so a panic elsewhere cannot leave it half-updated.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One running signer process.
pub(crate) struct SignerProcess {
    generation: u32,
    pid: i32,
    key_memory: KeyMemory,
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
        child::prepare_panic_exit();
        let filter = match config.sandbox {
            Sandbox::Enforced => sandbox::compiled_filter()?,
            Sandbox::UnsandboxedInsecure => {
                eprintln!(
                    "keyward: WARNING: the signer runs WITHOUT its seccomp sandbox \
                     (Sandbox::UnsandboxedInsecure); a compromised signer could make any system call"
                );
                Vec::new()
            }
        };
        let workers = config.workers;
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
            workers: u8::try_from(workers).unwrap_or(1),
            key_limit: config.key_limit,
            secret_memory: config.secret_memory,
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
                let forked = sys::fork_child(child::run_forked, &launch);
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
                        let child = Arc::new(ChildWatch {
                            pidfd,
                            end: Mutex::new(None),
                            ended: Condvar::new(),
                            cause: OnceLock::new(),
                        });
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
            lanes.push(Lane {
                writer: Mutex::new(LaneWriter {
                    fd: request_write,
                    buffer: frame_buffer(),
                    next_id: 1,
                }),
                reader: Mutex::new(LaneReader {
                    fd: response_read,
                    frames: FrameReader::new(),
                }),
                pending: Mutex::new(Pending::default()),
                _request_reader_copy: request_reader_copy,
                in_flight: AtomicUsize::new(0),
            });
        }
        let mut signer = SignerProcess {
            generation,
            pid,
            key_memory: KeyMemory::LockedAnonymous,
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
        signer.key_memory = signer.await_ready(config.spawn_timeout, ready_by)?;
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
        let mut writer = lock(&self.lanes[0].writer);
        let LaneWriter { fd, buffer, .. } = &mut *writer;
        let length = encode_frame(bootstrap, buffer).map_err(|_| SpawnError::UnexpectedGreeting)?;
        write_frame(
            fd.as_fd(),
            &buffer[..length],
            self.child.pidfd.as_fd(),
            deadline,
        )
        .map_err(|_| self.spawn_failure())
    }

    /// Reads each lane's first message: `Ready`, or why not.
    fn await_ready(&self, timeout: Duration, deadline: Instant) -> Result<KeyMemory, SpawnError> {
        let mut key_memory = KeyMemory::LockedAnonymous;
        for lane in &self.lanes {
            let mut reader = lock(&lane.reader);
            let LaneReader { fd, frames } = &mut *reader;
            let payload = match frames.read_frame(
                fd.as_fd(),
                Some(self.child.pidfd.as_fd()),
                Duration::ZERO,
                Some(deadline),
            ) {
                Ok(payload) => payload,
                Err(ReadError::TimedOut) => {
                    self.child.kill(SignerEnd::TimedOut);
                    return Err(SpawnError::NotReady(timeout));
                }
                Err(_) => return Err(self.spawn_failure()),
            };
            match postcard::from_bytes::<ResponseFrame>(payload) {
                Ok(ResponseFrame {
                    response:
                        Response::Ready {
                            protocol_version: PROTOCOL_VERSION,
                            key_memory: reported,
                        },
                    ..
                }) => key_memory = reported,
                Ok(ResponseFrame {
                    response: Response::HardeningFailed { step, errno },
                    ..
                }) => return Err(SpawnError::Hardening { step, errno }),
                Ok(ResponseFrame {
                    response:
                        Response::VersionMismatch { protocol_version }
                        | Response::Ready {
                            protocol_version, ..
                        },
                    ..
                }) => {
                    return Err(SpawnError::VersionMismatch {
                        ours: PROTOCOL_VERSION,
                        theirs: protocol_version,
                    });
                }
                _ => {
                    self.child.kill(SignerEnd::ProtocolViolation);
                    return Err(SpawnError::UnexpectedGreeting);
                }
            }
        }
        Ok(key_memory)
    }

    /// Why a signer that ended before it was ready did so. The steps before its pipe was laid out
    /// can only speak through their exit code.
    fn spawn_failure(&self) -> SpawnError {
        let step = |step| SpawnError::Hardening { step, errno: 0 };
        match self.end_after_close() {
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

    /// Whether the signer has ended (or is being ended).
    pub(crate) fn has_ended(&self) -> bool {
        self.child.has_ended()
    }

    /// What the kernel says about the signer.
    pub(crate) fn status(&self) -> std::io::Result<SignerStatus> {
        SignerStatus::read(self.pid, self.generation, self.key_memory)
    }

    /// Kills the signer, recording why.
    pub(crate) fn kill(&self, cause: SignerEnd) {
        self.child.kill(cause);
    }

    /// Takes lane 0's pipe ends out of the supervisor, for tests that speak raw bytes to a
    /// real signer. The lane is gone from this process afterwards.
    pub(crate) fn take_raw_lane(&mut self) -> Option<(OwnedFd, OwnedFd)> {
        if self.lanes.is_empty() {
            return None;
        }
        let lane = self.lanes.remove(0);
        let writer = lane.writer.into_inner().unwrap_or_else(|p| p.into_inner());
        let reader = lane.reader.into_inner().unwrap_or_else(|p| p.into_inner());
        Some((writer.fd, reader.fd))
    }

    /// How the signer ended, once its pipe has closed; waits briefly for the kernel to say.
    pub(crate) fn end_after_close(&self) -> SignerEnd {
        let end = self.child.wait_for_end(END_REPORT_WAIT);
        if let Some(cause) = self.child.cause.get() {
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
            // The pipe closed but the process has not ended within the wait: treat it as broken.
            None => {
                self.child.kill(SignerEnd::ProtocolViolation);
                SignerEnd::ProtocolViolation
            }
        }
    }

    /// Turns a failed call into the error its caller sees, ending the signer where the failure
    /// means it can no longer be trusted.
    pub(crate) fn error_for(&self, failure: CallFailure) -> Error {
        match failure {
            CallFailure::Ended => Error::SignerEnded {
                generation: self.generation,
                end: self.end_after_close(),
            },
            CallFailure::TimedOut => {
                self.child.kill(SignerEnd::TimedOut);
                Error::Timeout(self.request_timeout)
            }
            CallFailure::Protocol(what) => {
                self.child.kill(SignerEnd::ProtocolViolation);
                Error::Protocol(what)
            }
            CallFailure::Io(kind) => {
                self.child.kill(SignerEnd::ProtocolViolation);
                Error::Io(std::io::Error::from(kind))
            }
        }
    }

    /// Sends one request and waits for its answer.
    pub(crate) fn call(&self, request: Request) -> Result<Response, CallFailure> {
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
            .send(request, &self.child.pidfd, deadline)
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

impl Lane {
    /// Writes a request frame; returns its id. The id is registered before the write, so the
    /// answer always finds its caller.
    fn send(
        &self,
        request: Request,
        pidfd: &OwnedFd,
        deadline: Instant,
    ) -> Result<u64, CallFailure> {
        let mut writer = lock(&self.writer);
        let id = writer.next_id;
        writer.next_id += 1;
        lock(&self.pending).calls.insert(id, Call::default());
        let LaneWriter { fd, buffer, .. } = &mut *writer;
        let written = encode_frame(&RequestFrame { id, request }, buffer)
            .map_err(|_| CallFailure::Protocol("a request did not fit in a frame"))
            .and_then(|length| {
                write_frame(fd.as_fd(), &buffer[..length], pidfd.as_fd(), deadline).map_err(
                    |error| match error {
                        WriteError::PeerExited => CallFailure::Ended,
                        WriteError::TimedOut => CallFailure::TimedOut,
                        WriteError::Io(error) => CallFailure::Io(error.kind()),
                    },
                )
            });
        drop(writer);
        match written {
            Ok(()) => Ok(id),
            Err(failure) => {
                lock(&self.pending).calls.remove(&id);
                Err(failure)
            }
        }
    }

    /// Waits for the answer to `id`, reading the lane for everyone if no one else is.
    fn receive(
        &self,
        id: u64,
        deadline: Instant,
        spin: Duration,
        pidfd: &OwnedFd,
    ) -> Result<Response, CallFailure> {
        let mut pending = lock(&self.pending);
        loop {
            if let Some(failure) = &pending.failed {
                let failure = failure.clone();
                pending.abandon(id);
                return Err(failure);
            }
            if let Some(Call {
                answer: Some(_), ..
            }) = pending.calls.get(&id)
                && let Some(Call {
                    answer: Some(answer),
                    ..
                }) = pending.calls.remove(&id)
            {
                return Ok(answer);
            }
            let reader = match self.reader.try_lock() {
                Ok(reader) => Some(reader),
                Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            };
            match reader {
                Some(mut reader) => {
                    if let Some(call) = pending.calls.get_mut(&id) {
                        call.sleeping = None;
                    }
                    drop(pending);
                    let result = self.read_until(&mut reader, id, deadline, spin, pidfd);
                    drop(reader);
                    // The reader lock is free again before this lock is taken: a caller that
                    // found it taken is registered as sleeping by now, and is woken here.
                    let mut pending = lock(&self.pending);
                    pending.calls.remove(&id);
                    if let Err(failure) = &result {
                        pending.abandoned.insert(id);
                        pending.failed.get_or_insert_with(|| failure.clone());
                        pending.wake_all();
                    } else {
                        pending.wake_next_reader();
                    }
                    return result;
                }
                None => {
                    let now = Instant::now();
                    if now >= deadline {
                        pending.abandon(id);
                        pending.wake_next_reader();
                        return Err(CallFailure::TimedOut);
                    }
                    let Some(call) = pending.calls.get_mut(&id) else {
                        return Err(CallFailure::Protocol("a call lost its place on the lane"));
                    };
                    if call.sleeping.is_none() {
                        call.sleeping = Some(std::thread::current());
                    }
                    drop(pending);
                    // A wake-up given before this point is kept by park, so none is lost.
                    std::thread::park_timeout(deadline - now);
                    pending = lock(&self.pending);
                }
            }
        }
    }

    /// Reads answers until the one for `id` arrives, handing the others to their callers.
    fn read_until(
        &self,
        reader: &mut LaneReader,
        id: u64,
        deadline: Instant,
        spin: Duration,
        pidfd: &OwnedFd,
    ) -> Result<Response, CallFailure> {
        let LaneReader { fd, frames } = reader;
        loop {
            let payload = frames
                .read_frame(fd.as_fd(), Some(pidfd.as_fd()), spin, Some(deadline))
                .map_err(|error| match error {
                    ReadError::Closed { .. } | ReadError::PeerExited => CallFailure::Ended,
                    ReadError::TooLong => CallFailure::Protocol("an answer over the frame cap"),
                    ReadError::TimedOut => CallFailure::TimedOut,
                    ReadError::Io(error) => CallFailure::Io(error.kind()),
                })?;
            let decoded = postcard::from_bytes::<ResponseFrame>(payload);
            // Answers may carry Diffie-Hellman results.
            payload.zeroize();
            let frame = decoded.map_err(|_| CallFailure::Protocol("an undecodable answer"))?;
            if frame.id == id {
                return Ok(frame.response);
            }
            let mut pending = lock(&self.pending);
            let Pending {
                calls, abandoned, ..
            } = &mut *pending;
            match calls.get_mut(&frame.id) {
                Some(call @ Call { answer: None, .. }) => {
                    call.answer = Some(frame.response);
                    if let Some(caller) = &call.sleeping {
                        caller.unpark();
                    }
                }
                None if abandoned.remove(&frame.id) => {}
                _ => {
                    return Err(CallFailure::Protocol(
                        "an answer to a request nobody is waiting for",
                    ));
                }
            }
        }
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
