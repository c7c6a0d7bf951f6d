//! Shared by both sides: how a signer starts. The settings a signer is started with, the first
//! frame an exec'd signer reads, the greeting each worker sends before serving (ready, or why
//! not), the hardening steps a greeting can name, and the exit codes by which a signer that could
//! not speak says why it stopped.
//!
//! Start-up messages have their own types, apart from requests and answers: a greeting can
//! never be taken for an answer, nor an answer for a greeting.

use serde::{Deserialize, Serialize};

use crate::wire::key_types::{KeyMemory, SecretMemory, StoreId};
use crate::wire::store_format::{FormatError, KdfParameters, ManifestFields, Seal, StoreHeader};

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
    /// The sealed store could not be opened or created; the greeting said why.
    pub(crate) const STORE_REFUSED: i32 = 76;
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
    /// Whether consensus keys may sign blind digests and arbitrary messages (unsafe).
    pub(crate) allow_blind_consensus: bool,
    /// The sealed store to open or create; `None` keeps keys in memory only.
    pub(crate) store: Option<SignerStoreSettings>,
}

/// Where a signer's sealed store is and how to unlock it. The signer reads both files itself,
/// before its sandbox is applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SignerStoreSettings {
    /// The current state file's path, as bytes.
    pub(crate) state_path: Vec<u8>,
    pub(crate) unlock: UnlockSource,
    /// Set to create a new store with these costs (the host checked that none exists).
    pub(crate) create: Option<KdfParameters>,
}

/// Where the unlock secret comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum UnlockSource {
    /// A file the signer reads itself (a path, as bytes): the host never opens it.
    File(Vec<u8>),
    /// A passphrase handed over in memory (tests and interactive use); wiped when dropped.
    Passphrase(PassphraseBytes),
}

/// A passphrase in transit to the signer: wiped when dropped, and wiped in place by the signer
/// as soon as it has derived the store's key (through a shared reference: a forked signer reads
/// its settings where the fork left them). Redacted when printed. On the wire: postcard bytes.
pub(crate) struct PassphraseBytes(std::sync::Mutex<Vec<u8>>);

impl PassphraseBytes {
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        Self(std::sync::Mutex::new(bytes))
    }

    /// Runs `read` on the passphrase's bytes (empty once wiped).
    pub(crate) fn with<R>(&self, read: impl FnOnce(&[u8]) -> R) -> R {
        read(
            &self
                .0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Overwrites the passphrase and empties it.
    pub(crate) fn wipe(&self) {
        let mut bytes = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        zeroize::Zeroize::zeroize(&mut *bytes);
    }
}

impl Drop for PassphraseBytes {
    fn drop(&mut self) {
        self.wipe();
    }
}

impl Clone for PassphraseBytes {
    fn clone(&self) -> Self {
        Self::new(self.with(<[u8]>::to_vec))
    }
}

impl PartialEq for PassphraseBytes {
    fn eq(&self, other: &Self) -> bool {
        self.with(|mine| other.with(|theirs| mine == theirs))
    }
}

impl Eq for PassphraseBytes {}

impl std::fmt::Debug for PassphraseBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PassphraseBytes([REDACTED])")
    }
}

impl Serialize for PassphraseBytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.with(|bytes| serializer.serialize_bytes(bytes))
    }
}

impl<'de> Deserialize<'de> for PassphraseBytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <&'de [u8]>::deserialize(deserializer).map(|bytes| Self::new(bytes.to_vec()))
    }
}

/// What a signer with a sealed store reports when it is ready: which write it opened, and the
/// records it holds (by digest), so the host can check it read the same file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SealedSummary {
    pub(crate) manifest: ManifestFields,
    /// Set when the signer created the store: its header and the seal of the empty store's
    /// manifest, for the host to write before anything else happens.
    pub(crate) created: Option<CreatedStore>,
}

/// A store the signer has just created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CreatedStore {
    pub(crate) header: StoreHeader,
    pub(crate) manifest_seal: Seal,
}

/// Why a signer could not open or create its sealed store. It says so, then exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum StoreProblem {
    /// The unlock secret's file could not be opened or read (the errno).
    UnlockSecretUnreadable { errno: i32 },
    /// The unlock secret is empty.
    UnlockSecretEmpty,
    /// The unlock secret's file is open to group or others (its mode).
    UnlockSecretPermissions { mode: u32 },
    /// The unlock secret is longer than the signer reads.
    UnlockSecretTooLong { cap: u32 },
    /// The state file could not be opened or read (the errno).
    StateUnreadable { errno: i32 },
    /// The state file is not well-formed.
    Malformed(FormatError),
    /// The header's verifier does not open: the unlock secret is not this store's.
    WrongUnlockSecret,
    /// A seal opened by the right key does not match what it covers.
    Tampered(TamperedPart),
    /// The store holds a key in a slot at or above the signer's key limit.
    KeyLimitTooSmall { needed: u32, limit: u32 },
    /// The key derivation failed (its parameters were refused).
    KdfFailed,
    /// Locked memory for the key-encryption key could not be mapped (the errno).
    Memory { errno: i32 },
}

/// Which part of an authenticated store did not check out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TamperedPart {
    /// The manifest seal: the sequence number, the record count or the set of records is not
    /// what the signer sealed.
    Manifest,
    /// A record's seal (the record in this slot).
    Record {
        /// The record's slot.
        slot: u16,
    },
    /// A record's public key does not belong to its (authentic) secret.
    PublicKey {
        /// The record's slot.
        slot: u16,
    },
    /// Two records name the same key.
    DuplicateKey,
    /// A watermark record for a slot that holds no consensus key, or one too many for its key.
    Watermark {
        /// The record's slot.
        slot: u16,
    },
}

impl std::fmt::Display for TamperedPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TamperedPart::Manifest => f.write_str(
                "the manifest (its sequence number, record count or set of records) is not one the signer sealed",
            ),
            TamperedPart::Record { slot } => write!(f, "the record in slot {slot} does not open"),
            TamperedPart::PublicKey { slot } => write!(
                f,
                "the public key of the record in slot {slot} does not belong to its secret"
            ),
            TamperedPart::DuplicateKey => f.write_str("two records name the same key"),
            TamperedPart::Watermark { slot } => write!(
                f,
                "a watermark record for slot {slot} names no consensus key, or one chain too many"
            ),
        }
    }
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
        /// Set when the signer opened or created a sealed store.
        sealed: Option<SealedSummary>,
    },
    /// A hardening step failed; the signer then exits.
    HardeningFailed { step: HardeningStep, errno: i32 },
    /// An exec'd signer whose bootstrap had another protocol version.
    VersionMismatch { protocol_version: u32 },
    /// The sealed store could not be opened or created; the signer then exits.
    StoreRefused { problem: StoreProblem },
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
    /// Opening or creating the sealed key store (before the sandbox).
    SealedStore,
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
            HardeningStep::SealedStore => "opening the sealed key store",
        })
    }
}
