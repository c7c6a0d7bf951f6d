//! Runs in the host: how a [`SecretService`](crate::SecretService) is started: spawn mode, sandbox, limits,
//! deadlines, restart policy and the latency/CPU trade-off.

use std::path::PathBuf;
use std::time::Duration;

use crate::host::error::{Error, Result};
use crate::host::sandbox_policy::Sandbox;
use crate::host::store::StoreConfig;
use crate::wire::key_types::SecretMemory;
use crate::wire::{MAX_KEY_LIMIT, MAX_WORKERS};

/// How the signer process is started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpawnMode {
    /// `fork()` only. Fast to start; the signer is a copy of the host's address space (same
    /// layout, a copy of its memory until the signer's own pages replace it).
    #[default]
    Fork,
    /// `fork()` then `execve()` of a program that calls
    /// [`run_signer_if_requested`](crate::run_signer_if_requested) first thing in `main` (the
    /// keyward binary does), with an empty environment: fresh ASLR, no copy of the host's memory,
    /// no inherited locks or RNG state.
    ForkExec {
        /// The signer program.
        program: PathBuf,
    },
}

/// What happens when the signer process ends unexpectedly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestartPolicy {
    /// Every call fails with [`Error::SignerEnded`] until [`respawn`](crate::SecretService::respawn).
    #[default]
    Manual,
    /// The first call to see the signer ended starts a new one (and still fails: the keys of the
    /// ended signer are gone). Later calls go to the new signer.
    Automatic,
}

/// How long each side spins before sleeping: the latency/CPU trade-off.
///
/// Spinning saves the scheduler wake-ups that dominate a cross-process round trip (17 to 35 µs
/// each on a 2-vCPU VM, against a signature of about 30 µs). Nothing spins without a request in
/// flight or just answered: an idle service costs no CPU either way. Either side whose spin runs
/// out before what it waits for comes sleeps at once for the next few waits (1, 2, 4, ... up to
/// 64 after runs of such spins) before it tries spinning again, so a spin that does not pay
/// (caller and worker sharing one busy core, say) is not paid on every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latency {
    /// How long a caller spins waiting for its answer before sleeping. A caller queued behind
    /// another request on its lane, or waiting for a batch of several signatures
    /// ([`sign_many`](crate::KeyService::sign_many)), sleeps at once: its answer is at least a
    /// signature away, and spinning would take CPU from the signer.
    pub caller_spin: Duration,
    /// How long a signer worker spins after an answer, waiting for the next request; only while
    /// requests are flowing (the last one came within this long of the answer before it).
    pub signer_spin: Duration,
}

impl Latency {
    /// The default. The caller's spin covers a signer's wake-up plus a signature or a
    /// Diffie-Hellman, so a lone caller is not put to sleep and woken again; the signer's covers
    /// the caller's turn-around between back-to-back requests.
    pub const BALANCED: Latency = Latency {
        caller_spin: Duration::from_micros(150),
        signer_spin: Duration::from_micros(100),
    };
    /// Never spin: lowest CPU, every round trip pays the scheduler's wake-ups.
    pub const LOW_CPU: Latency = Latency {
        caller_spin: Duration::ZERO,
        signer_spin: Duration::ZERO,
    };
}

impl Default for Latency {
    fn default() -> Self {
        Latency::BALANCED
    }
}

/// Configuration for [`SecretService::spawn`](crate::SecretService::spawn). Built from
/// [`Config::default`] with the `with_*` methods; checked when the service is spawned.
#[derive(Clone, Debug)]
pub struct Config {
    pub(crate) spawn_mode: SpawnMode,
    pub(crate) sandbox: Sandbox,
    pub(crate) key_limit: u32,
    pub(crate) workers: usize,
    pub(crate) secret_memory: SecretMemory,
    pub(crate) request_timeout: Duration,
    pub(crate) spawn_timeout: Duration,
    pub(crate) restart: RestartPolicy,
    pub(crate) latency: Latency,
    pub(crate) store: Option<StoreConfig>,
    pub(crate) blind_consensus_signing: bool,
}

impl Default for Config {
    /// Fork mode, sandbox enforced, 64 keys, one worker per core (at most two), memfd_secret where
    /// available, 5 s request deadline, 10 s spawn deadline, manual restart, balanced latency,
    /// keys in memory only (no store).
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            spawn_mode: SpawnMode::Fork,
            sandbox: Sandbox::Enforced,
            key_limit: 64,
            workers: cores.clamp(1, 2),
            secret_memory: SecretMemory::Auto,
            request_timeout: Duration::from_secs(5),
            spawn_timeout: Duration::from_secs(10),
            restart: RestartPolicy::Manual,
            latency: Latency::BALANCED,
            store: None,
            blind_consensus_signing: false,
        }
    }
}

impl Config {
    /// How the signer is started.
    pub fn with_spawn_mode(mut self, mode: SpawnMode) -> Self {
        self.spawn_mode = mode;
        self
    }

    /// Whether the seccomp filter is applied.
    pub fn with_sandbox(mut self, sandbox: Sandbox) -> Self {
        self.sandbox = sandbox;
        self
    }

    /// The most keys the signer holds at once (1 to [`MAX_KEY_LIMIT`]); its locked memory is
    /// sized for this many at start.
    pub fn with_key_limit(mut self, limit: u32) -> Self {
        self.key_limit = limit;
        self
    }

    /// Signer worker threads, each serving its own pipe pair (1 to [`MAX_WORKERS`]).
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Which memory holds the keys.
    pub fn with_secret_memory(mut self, memory: SecretMemory) -> Self {
        self.secret_memory = memory;
        self
    }

    /// How long a call waits for its answer before the signer is declared hung and killed.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long spawning waits for the signer to be hardened and ready.
    pub fn with_spawn_timeout(mut self, timeout: Duration) -> Self {
        self.spawn_timeout = timeout;
        self
    }

    /// What happens after the signer ends.
    pub fn with_restart(mut self, restart: RestartPolicy) -> Self {
        self.restart = restart;
        self
    }

    /// The latency/CPU trade-off.
    pub fn with_latency(mut self, latency: Latency) -> Self {
        self.latency = latency;
        self
    }

    /// Keeps the keys in a sealed store on disk, so they survive restarts (see [`StoreConfig`]).
    /// Without one, keys live in the signer's memory only and end with it.
    pub fn with_store(mut self, store: StoreConfig) -> Self {
        self.store = Some(store);
        self
    }

    /// UNSAFE: lets consensus keys sign blind digests and arbitrary messages, as other keys do.
    ///
    /// By default a consensus key signs only typed messages
    /// ([`sign_consensus`](crate::KeyService::sign_consensus)), which the signer's double-sign
    /// guard checks; `sign`, `sign_message` and `sign_many` with it are refused
    /// ([`Error::BlindSigningRefused`]). A chain whose consensus signs bytes keyward cannot type
    /// may need this; the guard then protects nothing those calls sign.
    pub fn allow_blind_consensus_signing_unsafe(mut self) -> Self {
        self.blind_consensus_signing = true;
        self
    }

    /// The configured number of workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !(1..=MAX_KEY_LIMIT).contains(&self.key_limit) {
            return Err(Error::InvalidConfig(format!(
                "key_limit must be between 1 and {MAX_KEY_LIMIT}, got {}",
                self.key_limit
            )));
        }
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return Err(Error::InvalidConfig(format!(
                "workers must be between 1 and {MAX_WORKERS}, got {}",
                self.workers
            )));
        }
        for (name, value) in [
            ("request_timeout", self.request_timeout),
            ("spawn_timeout", self.spawn_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::InvalidConfig(format!("{name} must be above zero")));
            }
        }
        if let Some(store) = &self.store {
            store.validate()?;
        }
        let spin_limit = Duration::from_millis(100);
        if self.latency.caller_spin > spin_limit || self.latency.signer_spin > spin_limit {
            return Err(Error::InvalidConfig(format!(
                "spin times must be at most {spin_limit:?}: longer spins burn CPU for no gain"
            )));
        }
        Ok(())
    }
}
