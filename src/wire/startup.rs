//! Shared by both sides: how a signer starts. The settings a signer is started with, the first
//! frame an exec'd signer reads, the greeting each worker sends before serving (ready, or why
//! not), the hardening steps a greeting can name, and the exit codes by which a signer that could
//! not speak says why it stopped.
//!
//! Start-up messages have their own types, apart from requests and answers: a greeting can
//! never be taken for an answer, nor an answer for a greeting.

use serde::{Deserialize, Serialize};

use crate::wire::key_types::{KeyMemory, SecretMemory, StoreId};

/// Exit codes a signer uses, so the supervisor can say why it stopped.
pub(crate) mod exit_code {
    /// The request pipe reached end of file: the supervisor closed it. A normal shutdown.
    pub(crate) const SHUTDOWN: i32 = 0;
    /// The request stream can no longer be trusted (frame over the cap, undecodable frame
    /// header, truncated frame).
    pub(crate) const CORRUPT_REQUEST_STREAM: i32 = 65;
    /// The signer panicked; its panic hook ends the process with this code.
    pub(crate) const PANICKED: i32 = 70;
    /// A hardening step failed before a message could be sent about it.
    pub(crate) const HARDENING_FAILED: i32 = 71;
    /// `execve` of the signer program failed (fork-exec mode).
    pub(crate) const EXEC_FAILED: i32 = 72;
    /// The process that forked the signer was gone before the death signal was armed.
    pub(crate) const PARENT_CHANGED: i32 = 73;
    /// Reading requests or writing answers failed.
    pub(crate) const PIPE_FAILED: i32 = 74;
    /// The bootstrap message of an exec'd signer was missing or malformed.
    pub(crate) const BAD_BOOTSTRAP: i32 = 75;
}

/// What the exec'd signer needs to know, sent as the first frame on lane 0. A forked signer gets
/// the same values in memory. `workers` is checked against
/// [`MAX_WORKERS`](crate::MAX_WORKERS) by both sides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SignerSettings {
    pub(crate) workers: u8,
    pub(crate) key_limit: u32,
    pub(crate) secret_memory: SecretMemory,
    pub(crate) signer_spin_micros: u32,
    pub(crate) parent_pid: i32,
    pub(crate) sandboxed: bool,
}

/// The first frame an exec'd signer reads: the version, then the settings and the seccomp
/// program the supervisor compiled (each instruction as code, jt, jf, k).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Bootstrap {
    pub(crate) protocol_version: u32,
    pub(crate) settings: SignerSettings,
    pub(crate) filter: Vec<(u16, u8, u8, u32)>,
}

/// What each signer worker says first on its lane, before any answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Greeting {
    /// Hardened and serving. Every lane reports the same store.
    Ready {
        protocol_version: u32,
        key_memory: KeyMemory,
        store: StoreId,
    },
    /// A hardening step failed; the signer then exits.
    HardeningFailed { step: HardeningStep, errno: i32 },
    /// An exec'd signer whose bootstrap had another protocol version.
    VersionMismatch { protocol_version: u32 },
}

/// A step of the signer's hardening; named in the error when that step fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HardeningStep {
    /// Arming the parent-death signal and checking the parent is still the one that forked.
    ParentDeathSignal,
    /// Moving the pipes to fixed descriptors and closing every other inherited descriptor.
    DescriptorHygiene,
    /// Restoring default signal handlers and an empty signal mask.
    SignalHygiene,
    /// Core limit 0 and not dumpable.
    NoCoreDumps,
    /// Mapping locked, don't-dump memory for keys.
    SecretMemory,
    /// Seeding the key generator from the operating system.
    Entropy,
    /// Starting the signer's worker threads.
    Workers,
    /// Dropping every capability.
    Capabilities,
    /// Setting no-new-privileges.
    NoNewPrivileges,
    /// Limiting new files, processes and file size to zero.
    ResourceLimits,
    /// Loading the seccomp filter.
    SeccompFilter,
}

impl std::fmt::Display for HardeningStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HardeningStep::ParentDeathSignal => "arming the parent-death signal",
            HardeningStep::DescriptorHygiene => "closing inherited file descriptors",
            HardeningStep::SignalHygiene => "resetting signal handlers",
            HardeningStep::NoCoreDumps => "disabling core dumps",
            HardeningStep::SecretMemory => "mapping locked memory for keys",
            HardeningStep::Entropy => "seeding the key generator from the OS",
            HardeningStep::Workers => "starting signer workers",
            HardeningStep::Capabilities => "dropping capabilities",
            HardeningStep::NoNewPrivileges => "setting no-new-privileges",
            HardeningStep::ResourceLimits => "setting resource limits",
            HardeningStep::SeccompFilter => "loading the seccomp filter",
        })
    }
}
