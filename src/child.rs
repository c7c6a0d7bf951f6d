//! The signer process: hardening, in order, then serving. Never returns.
//!
//! A forked signer starts in [`run_forked`] on the supervisor's watcher thread, in a copy of the
//! host process where only that thread exists; an exec'd signer starts in [`run_exec_entry`] in
//! a fresh process image. Both end up in `harden_and_serve`, which takes each hardening step in
//! the order `sandbox-notes.md` prescribes, reports the first step that fails (naming it), and
//! only then serves. After fork nothing here takes a lock another thread could hold, reads the
//! environment, or prints; every way out is `_exit`.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Once, RwLock};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::Signal;
use zeroize::Zeroize;

use crate::dispatch::{LaneState, Outcome, handle_frame};
use crate::key_store::{KeyStore, StoreSetupError};
use crate::protocol::{
    Bootstrap, HardeningStep, MAX_WORKERS, PROTOCOL_VERSION, Response, ResponseFrame,
    SignerSettings, exit_code,
};
use crate::status::KeyMemory;
use crate::sys::{self, SecretMemoryBacking};
use crate::transport::{FrameReader, ReadError, encode_frame, frame_buffer, write_all};

/// The descriptor lane `i` reads requests from is `REQUEST_FD_BASE + i`.
pub(crate) const REQUEST_FD_BASE: RawFd = 3;
/// The descriptor lane `i` writes answers to is `RESPONSE_FD_BASE + i`.
pub(crate) const RESPONSE_FD_BASE: RawFd = REQUEST_FD_BASE + WORKER_SLOTS;
/// Where inherited descriptors are parked while the fixed ones are laid out.
const PARKING_FD_MIN: RawFd = RESPONSE_FD_BASE + WORKER_SLOTS + 16;
/// `MAX_WORKERS` as a descriptor offset (checked at compile time below).
const WORKER_SLOTS: RawFd = 16;
const _: () = assert!(WORKER_SLOTS as usize == MAX_WORKERS);

/// The first argument that makes the keyward binary (or any program that calls
/// [`crate::run_signer_if_requested`]) act as an exec'd signer.
pub const SIGNER_ARGUMENT: &str = "--keyward-signer";

/// The stack each signer worker thread gets; fixed, so spawning reads no environment.
const WORKER_STACK_BYTES: usize = 256 * 1024;

/// Everything a forked signer needs, prepared by the supervisor before fork.
pub(crate) struct ForkedLaunch {
    pub(crate) settings: SignerSettings,
    pub(crate) filter: Vec<seccompiler::sock_filter>,
    /// Per lane: the request pipe's read end and the response pipe's write end.
    pub(crate) lanes: Vec<(OwnedFd, OwnedFd)>,
    pub(crate) dev_null: OwnedFd,
    /// Set in fork-exec mode: the program and its arguments, prepared as C strings.
    pub(crate) exec: Option<(CString, Vec<CString>)>,
}

/// The forked signer's entry point, on the watcher thread of a copy of the host process.
pub(crate) fn run_forked(launch: &ForkedLaunch) -> ! {
    // Not set_hook: it takes std's hook lock, which a host thread that was panicking at the
    // moment of fork holds forever in this copy. The hook installed by `prepare_panic_exit`
    // before fork reads this flag instead.
    IN_FORKED_SIGNER.store(true, Ordering::Relaxed);
    // Should a panic unwind (a host hook that returns), it must stop here and never reach the
    // host's frames that fork returned into.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lay_out_and_start(launch)));
    sys::exit_immediately(exit_code::PANICKED)
}

fn lay_out_and_start(launch: &ForkedLaunch) -> ! {
    if arm_parent_death_signal(launch.settings.parent_pid).is_err() {
        sys::exit_immediately(exit_code::PARENT_CHANGED);
    }
    let lane_fds: Vec<(RawFd, RawFd)> = launch
        .lanes
        .iter()
        .map(|(request, response)| (request.as_raw_fd(), response.as_raw_fd()))
        .collect();
    if lay_out_descriptors(&lane_fds, launch.dev_null.as_raw_fd()).is_err() {
        sys::exit_immediately(exit_code::HARDENING_FAILED);
    }
    if let Some((program, arguments)) = &launch.exec {
        let _error = sys::execute(program, arguments);
        sys::exit_immediately(exit_code::EXEC_FAILED);
    }
    harden_and_serve(&launch.settings, &launch.filter)
}

/// Runs the exec'd signer if this process was started as one (its first argument is
/// [`SIGNER_ARGUMENT`]); otherwise returns at once.
///
/// A program that wants to serve as the signer for [`SpawnMode::ForkExec`](crate::SpawnMode)
/// calls this first thing in `main`. The keyward binary does.
pub fn run_signer_if_requested() {
    let mut arguments = std::env::args_os().skip(1);
    if arguments.next().as_deref() != Some(std::ffi::OsStr::new(SIGNER_ARGUMENT)) {
        return;
    }
    run_exec_entry()
}

fn run_exec_entry() -> ! {
    install_exit_on_panic();
    let bootstrap = match read_bootstrap() {
        Some(bootstrap) => bootstrap,
        None => sys::exit_immediately(exit_code::BAD_BOOTSTRAP),
    };
    if bootstrap.protocol_version != PROTOCOL_VERSION {
        report_and_exit(
            Response::VersionMismatch {
                protocol_version: PROTOCOL_VERSION,
            },
            exit_code::BAD_BOOTSTRAP,
        );
    }
    // The death signal was armed before exec and survives it; check the parent once more.
    if nix::unistd::getppid().as_raw() != bootstrap.settings.parent_pid {
        sys::exit_immediately(exit_code::PARENT_CHANGED);
    }
    let lanes = usize::from(bootstrap.settings.workers);
    if close_unexpected_descriptors(lanes).is_err() {
        report_hardening_failure(HardeningStep::DescriptorHygiene, 0);
    }
    let filter: Vec<seccompiler::sock_filter> = bootstrap
        .filter
        .iter()
        .map(|&(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
        .collect();
    harden_and_serve(&bootstrap.settings, &filter)
}

fn read_bootstrap() -> Option<Bootstrap> {
    let mut reader = FrameReader::new();
    let payload = reader
        .read_frame(request_fd(0), None, Duration::ZERO, None)
        .ok()?;
    postcard::from_bytes::<Bootstrap>(payload).ok()
}

/// A panic in the signer ends the process with a fixed code: nothing is printed, nothing
/// unwinds into the host's frames, and the supervisor reports "the signer panicked".
///
/// For the exec'd signer: a fresh process image with one thread, where setting the hook is safe.
fn install_exit_on_panic() {
    std::panic::set_hook(Box::new(|_| sys::exit_immediately(exit_code::PANICKED)));
}

/// Set first thing in a forked signer; read by the panic hook `prepare_panic_exit` installs.
static IN_FORKED_SIGNER: AtomicBool = AtomicBool::new(false);

/// Called in the host before the first fork: wraps the host's panic hook so that a panic in a
/// forked signer ends it with `_exit` before the host's hook runs, while the host's own panics
/// go to its hook as before. Nothing changes for the host unless it is the signer.
///
/// If the host replaces its panic hook after this, a forked signer that panics runs the host's
/// hook instead; the supervisor's deadlines still end such a signer (see SECURITY.md).
pub(crate) fn prepare_panic_exit() {
    static WRAPPED: Once = Once::new();
    // set_hook panics when called from a panicking thread (a service spawned in a Drop during
    // unwinding); the forked signer then relies on the deadlines alone.
    if std::thread::panicking() {
        return;
    }
    WRAPPED.call_once(|| {
        let host_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_FORKED_SIGNER.load(Ordering::Relaxed) {
                sys::exit_immediately(exit_code::PANICKED);
            }
            host_hook(info)
        }));
    });
}

fn arm_parent_death_signal(expected_parent: i32) -> nix::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    // If the parent died before the signal was armed, we were reparented and nobody will ever
    // send it: stop now.
    if nix::unistd::getppid().as_raw() != expected_parent {
        return Err(nix::errno::Errno::ESRCH);
    }
    Ok(())
}

/// Puts lane `i`'s pipes on their fixed numbers, stdin/stdout/stderr on /dev/null, and closes
/// every other descriptor the host left open.
fn lay_out_descriptors(lanes: &[(RawFd, RawFd)], dev_null: RawFd) -> std::io::Result<()> {
    // Park every descriptor we need above the fixed range first, so laying out one cannot
    // overwrite another that still sits on a fixed number.
    let mut parked = Vec::with_capacity(lanes.len());
    for &(request, response) in lanes {
        parked.push((
            sys::duplicate_at_or_above(request, PARKING_FD_MIN)?,
            sys::duplicate_at_or_above(response, PARKING_FD_MIN)?,
        ));
    }
    let dev_null = sys::duplicate_at_or_above(dev_null, PARKING_FD_MIN)?;
    for (lane, &(request, response)) in parked.iter().enumerate() {
        let lane = RawFd::try_from(lane).unwrap_or(RawFd::MAX);
        sys::duplicate_onto(request, REQUEST_FD_BASE + lane)?;
        sys::duplicate_onto(response, RESPONSE_FD_BASE + lane)?;
    }
    for standard in 0..=2 {
        sys::duplicate_onto(dev_null, standard)?;
    }
    close_unexpected_descriptors(lanes.len())
}

fn close_unexpected_descriptors(lanes: usize) -> std::io::Result<()> {
    let lanes = u32::try_from(lanes).unwrap_or(u32::MAX);
    let request_base = REQUEST_FD_BASE.unsigned_abs();
    let response_base = RESPONSE_FD_BASE.unsigned_abs();
    sys::close_range(request_base + lanes, response_base - 1)?;
    sys::close_range(response_base + lanes, u32::MAX)
}

fn request_fd(lane: usize) -> BorrowedFd<'static> {
    sys::fixed_descriptor(REQUEST_FD_BASE + RawFd::try_from(lane).unwrap_or(0))
}

fn response_fd(lane: usize) -> BorrowedFd<'static> {
    sys::fixed_descriptor(RESPONSE_FD_BASE + RawFd::try_from(lane).unwrap_or(0))
}

/// Writes one message on lane 0 and exits; used before serving starts.
fn report_and_exit(response: Response<()>, code: i32) -> ! {
    let mut buffer = [0u8; 64];
    if let Ok(length) = encode_frame(&ResponseFrame { id: 0, response }, &mut buffer) {
        let _ = write_all(&buffer[..length], |bytes| {
            nix::unistd::write(response_fd(0), bytes).map_err(std::io::Error::from)
        });
    }
    sys::exit_immediately(code)
}

fn report_hardening_failure(step: HardeningStep, errno: i32) -> ! {
    report_and_exit(
        Response::HardeningFailed { step, errno },
        exit_code::HARDENING_FAILED,
    )
}

fn errno_of(error: &std::io::Error) -> i32 {
    error.raw_os_error().unwrap_or(0)
}

/// The hardening steps after descriptor layout, in order, then serving.
fn harden_and_serve(settings: &SignerSettings, filter: &[seccompiler::sock_filter]) -> ! {
    let lanes = usize::from(settings.workers).clamp(1, MAX_WORKERS);

    if let Err(error) = sys::reset_signal_handlers() {
        report_hardening_failure(HardeningStep::SignalHygiene, errno_of(&error));
    }

    // No core dumps before any secret exists. Not dumpable is what matters: the core limit alone
    // does not stop a piped core handler, and not dumpable also closes /proc/<pid>/mem to
    // processes of the same user.
    if let Err(errno) =
        setrlimit(Resource::RLIMIT_CORE, 0, 0).and_then(|()| nix::sys::prctl::set_dumpable(false))
    {
        report_hardening_failure(HardeningStep::NoCoreDumps, errno as i32);
    }

    let store = match KeyStore::new(settings.key_limit, settings.secret_memory) {
        Ok(store) => store,
        Err(StoreSetupError::Memory(error)) => {
            report_hardening_failure(HardeningStep::SecretMemory, errno_of(&error))
        }
        Err(StoreSetupError::Entropy(errno)) => {
            report_hardening_failure(HardeningStep::Entropy, errno)
        }
    };
    let store = Arc::new(RwLock::new(store));
    let spin = Duration::from_micros(u64::from(settings.signer_spin_micros));

    // Request pipes are read without blocking, so a worker can spin briefly before it sleeps.
    for lane in 0..lanes {
        let fd = request_fd(lane);
        if let Err(errno) = fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)) {
            report_hardening_failure(HardeningStep::DescriptorHygiene, errno as i32);
        }
    }

    // Capabilities and no-new-privileges are per thread and inherited by threads created later,
    // so both are settled before the first worker exists: every worker starts with neither.
    if let Err(error) = sys::drop_all_capabilities() {
        report_hardening_failure(HardeningStep::Capabilities, errno_of(&error));
    }
    if let Err(errno) = nix::sys::prctl::set_no_new_privs() {
        report_hardening_failure(HardeningStep::NoNewPrivileges, errno as i32);
    }

    // Workers are started before the filter (thread creation needs clone, mmap and mprotect,
    // which the filter forbids) and wait until it covers them.
    // Every buffer a lane will use is allocated now: once sandboxed, the signer cannot grow its
    // heap (no brk, no mmap).
    let mut buffers: Vec<LaneBuffers> = (0..lanes).map(|_| LaneBuffers::new()).collect();
    let started = Arc::new(Barrier::new(lanes));
    let sandboxed = Arc::new(Barrier::new(lanes));
    for lane in (1..lanes).rev() {
        let store = Arc::clone(&store);
        let started = Arc::clone(&started);
        let sandboxed = Arc::clone(&sandboxed);
        let Some(lane_buffers) = buffers.pop() else {
            report_hardening_failure(HardeningStep::Workers, 0);
        };
        let spawned = std::thread::Builder::new()
            .stack_size(WORKER_STACK_BYTES)
            .spawn(move || {
                started.wait();
                sandboxed.wait();
                serve_lane(lane, &store, spin, lane_buffers)
            });
        if let Err(error) = spawned {
            report_hardening_failure(HardeningStep::Workers, errno_of(&error));
        }
    }
    started.wait();

    // Last before the filter. RLIMIT_NOFILE is 1, not 0, because poll() refuses to watch more
    // descriptors than the limit; with descriptor 0 taken (/dev/null), a limit of 1 still means
    // no new descriptor can ever be created.
    if let Err(errno) = setrlimit(Resource::RLIMIT_NOFILE, 1, 1)
        .and_then(|()| setrlimit(Resource::RLIMIT_NPROC, 0, 0))
        .and_then(|()| setrlimit(Resource::RLIMIT_FSIZE, 0, 0))
    {
        report_hardening_failure(HardeningStep::ResourceLimits, errno as i32);
    }
    if settings.sandboxed {
        // All threads at once (TSYNC): the workers exist already.
        if let Err(error) = seccompiler::apply_filter_all_threads(filter) {
            let errno = match &error {
                seccompiler::Error::Seccomp(error) | seccompiler::Error::Prctl(error) => {
                    errno_of(error)
                }
                _ => 0,
            };
            report_hardening_failure(HardeningStep::SeccompFilter, errno);
        }
    }
    sandboxed.wait();
    let Some(lane_buffers) = buffers.pop() else {
        report_hardening_failure(HardeningStep::Workers, 0);
    };
    serve_lane(0, &store, spin, lane_buffers)
}

/// A lane's read buffer and answer buffer, each one frame at the cap.
struct LaneBuffers {
    reader: FrameReader,
    answer: Box<[u8]>,
}

impl LaneBuffers {
    fn new() -> Self {
        Self {
            reader: FrameReader::new(),
            answer: frame_buffer(),
        }
    }
}

/// Serves one lane until the supervisor closes it: tell it we are ready, then read a request,
/// answer it, wipe the answer, repeat.
fn serve_lane(lane: usize, store: &RwLock<KeyStore>, spin: Duration, buffers: LaneBuffers) -> ! {
    let request = request_fd(lane);
    let response = response_fd(lane);
    let LaneBuffers {
        mut reader,
        mut answer,
    } = buffers;
    let mut state = LaneState::in_signer();
    let send = |bytes: &[u8]| {
        write_all(bytes, |chunk| {
            nix::unistd::write(response.as_fd(), chunk).map_err(std::io::Error::from)
        })
    };
    let key_memory = match store.read().map(|store| store.backing()) {
        Ok(SecretMemoryBacking::MemfdSecret) => KeyMemory::MemfdSecret,
        _ => KeyMemory::LockedAnonymous,
    };
    let ready = ResponseFrame::<()> {
        id: 0,
        response: Response::Ready {
            protocol_version: PROTOCOL_VERSION,
            key_memory,
        },
    };
    match encode_frame(&ready, &mut answer) {
        Ok(length) if send(&answer[..length]).is_ok() => {}
        _ => sys::exit_immediately(exit_code::PIPE_FAILED),
    }
    // Spin for the next request only while requests are flowing: when this one came within a
    // spin of the previous answer. After an idle spell the worker answers and sleeps at once,
    // which keeps it on the core its caller wakes it from rather than on one that has halted.
    let mut flowing = false;
    let mut last_answer: Option<Instant> = None;
    loop {
        let wait = if flowing { spin } else { Duration::ZERO };
        let payload = match reader.read_frame(request, None, wait, None) {
            Ok(payload) => payload,
            Err(ReadError::Closed { mid_frame: false }) => {
                sys::exit_immediately(exit_code::SHUTDOWN)
            }
            Err(ReadError::Closed { mid_frame: true } | ReadError::TooLong) => {
                sys::exit_immediately(exit_code::CORRUPT_REQUEST_STREAM)
            }
            Err(ReadError::TimedOut | ReadError::PeerExited) => continue,
            Err(ReadError::Io(_)) => sys::exit_immediately(exit_code::PIPE_FAILED),
        };
        flowing = last_answer.is_some_and(|answered| answered.elapsed() < spin);
        match handle_frame(store, &mut state, payload, &mut answer) {
            Outcome::Answer(length) => {
                let sent = send(&answer[..length]);
                // Answers may carry Diffie-Hellman results.
                answer[..length].zeroize();
                if sent.is_err() {
                    sys::exit_immediately(exit_code::PIPE_FAILED);
                }
                last_answer = Some(Instant::now());
            }
            Outcome::CorruptStream => sys::exit_immediately(exit_code::CORRUPT_REQUEST_STREAM),
        }
    }
}
