//! Runs in the signer: the hardening steps after the descriptor layout, in the order
//! `sandbox-notes.md` prescribes, each failure reported by name; then the workers start serving.
//! `sandbox/README.md` lists the steps with their reasons.

use std::sync::{Arc, Barrier, RwLock};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::resource::{Resource, setrlimit};

use crate::signer::descriptors::{Lane, LaneCount};
use crate::signer::key_store::{KeyStore, StoreSetupError, scrub_stack};
use crate::signer::serve::{LaneBuffers, serve_lane};
use crate::sys;
use crate::wire::framing::{encode_frame, write_all};
use crate::wire::startup::{Greeting, HardeningStep, SignerSettings, UnlockSource, exit_code};

/// The stack each signer worker thread gets; fixed, so spawning reads no environment.
const WORKER_STACK_BYTES: usize = 256 * 1024;

/// Writes one greeting on lane 0 and exits; used before serving starts.
pub(crate) fn greet_and_exit(greeting: Greeting, code: i32) -> ! {
    let mut buffer = [0u8; 64];
    if let Ok(length) = encode_frame(&greeting, &mut buffer) {
        let _ = write_all(&buffer[..length], |bytes| {
            nix::unistd::write(Lane::FIRST.response_fd(), bytes).map_err(std::io::Error::from)
        });
    }
    sys::exit_immediately(code)
}

/// Says which hardening step failed, and exits.
pub(crate) fn report_failure(step: HardeningStep, errno: i32) -> ! {
    greet_and_exit(
        Greeting::HardeningFailed { step, errno },
        exit_code::HARDENING_FAILED,
    )
}

fn errno_of(error: &std::io::Error) -> i32 {
    error.raw_os_error().unwrap_or(0)
}

/// The hardening steps after descriptor layout, in order, then serving.
pub(crate) fn harden_and_serve(
    settings: &SignerSettings,
    filter: &[seccompiler::sock_filter],
) -> ! {
    let Some(lanes) = LaneCount::new(settings.workers) else {
        report_failure(HardeningStep::Workers, libc::EINVAL)
    };

    if let Err(error) = sys::reset_signal_handlers() {
        report_failure(HardeningStep::SignalHygiene, errno_of(&error));
    }

    // No core dumps before any secret exists. Not dumpable is what matters: the core limit alone
    // does not stop a piped core handler, and not dumpable also closes /proc/<pid>/mem to
    // processes of the same user.
    if let Err(errno) =
        setrlimit(Resource::RLIMIT_CORE, 0, 0).and_then(|()| nix::sys::prctl::set_dumpable(false))
    {
        report_failure(HardeningStep::NoCoreDumps, errno as i32);
    }

    // A sealed store is opened (its unlock secret and state file read, its key derived) here,
    // before the resource limits and the filter forbid opening files and growing memory.
    let opened = match &settings.store {
        None => {
            KeyStore::new(settings.key_limit, settings.secret_memory).map(|store| (store, None))
        }
        Some(store_settings) => {
            KeyStore::open_sealed(settings.key_limit, settings.secret_memory, store_settings)
                .map(|(store, summary)| (store, Some(summary)))
        }
    };
    // Opening moved the unlock secret, the key-encryption key and every key's secret through
    // stack frames that are gone now: overwrite them before anything else runs.
    scrub_stack();
    // The unlock secret has done its work: a passphrase handed over in memory is wiped now
    // (the key-encryption key derived from it lives in locked memory).
    if let Some(store_settings) = &settings.store
        && let UnlockSource::Passphrase(passphrase) = &store_settings.unlock
    {
        passphrase.wipe();
    }
    let (mut store, sealed) = match opened {
        Ok(opened) => opened,
        Err(StoreSetupError::Memory(error)) => {
            report_failure(HardeningStep::SecretMemory, errno_of(&error))
        }
        Err(StoreSetupError::Entropy(errno)) => report_failure(HardeningStep::Entropy, errno),
        Err(StoreSetupError::Store(problem)) => {
            greet_and_exit(Greeting::StoreRefused { problem }, exit_code::STORE_REFUSED)
        }
    };
    store.allow_blind_consensus_signing(settings.allow_blind_consensus);
    let store = Arc::new(RwLock::new(store));
    let spin = Duration::from_micros(u64::from(settings.signer_spin_micros));

    // Request pipes are read without blocking, so a worker can spin briefly before it sleeps.
    for lane in lanes.lanes() {
        if let Err(errno) = fcntl(lane.request_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)) {
            report_failure(HardeningStep::DescriptorHygiene, errno as i32);
        }
    }

    // Capabilities and no-new-privileges are per thread and inherited by threads created later,
    // so both are settled before the first worker exists: every worker starts with neither.
    if let Err(error) = sys::drop_all_capabilities() {
        report_failure(HardeningStep::Capabilities, errno_of(&error));
    }
    if let Err(errno) = nix::sys::prctl::set_no_new_privs() {
        report_failure(HardeningStep::NoNewPrivileges, errno as i32);
    }

    // Workers are started before the filter (thread creation needs clone, mmap and mprotect,
    // which the filter forbids) and wait until it covers them.
    // Every buffer a lane will use is allocated now: once sandboxed, the signer cannot grow its
    // heap (no brk, no mmap).
    let mut buffers: Vec<LaneBuffers> = lanes.lanes().map(|_| LaneBuffers::new()).collect();
    let started = Arc::new(Barrier::new(lanes.get()));
    let sandboxed = Arc::new(Barrier::new(lanes.get()));
    for lane in lanes.lanes().skip(1).rev() {
        let store = Arc::clone(&store);
        let started = Arc::clone(&started);
        let sandboxed = Arc::clone(&sandboxed);
        let sealed = sealed.clone();
        let Some(lane_buffers) = buffers.pop() else {
            report_failure(HardeningStep::Workers, 0);
        };
        let spawned = std::thread::Builder::new()
            .stack_size(WORKER_STACK_BYTES)
            .spawn(move || {
                started.wait();
                sandboxed.wait();
                serve_lane(lane, &store, spin, lane_buffers, sealed)
            });
        if let Err(error) = spawned {
            report_failure(HardeningStep::Workers, errno_of(&error));
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
        report_failure(HardeningStep::ResourceLimits, errno as i32);
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
            report_failure(HardeningStep::SeccompFilter, errno);
        }
    }
    sandboxed.wait();
    let Some(lane_buffers) = buffers.pop() else {
        report_failure(HardeningStep::Workers, 0);
    };
    serve_lane(Lane::FIRST, &store, spin, lane_buffers, sealed)
}
