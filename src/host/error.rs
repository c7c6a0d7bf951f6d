//! Runs in the host: every error a caller can get, each saying what happened and what to do, and
//! whose fault it is (bad input, a signer that misbehaved, keyward's own bug). None carries key
//! bytes: keys are named by their id's short form only.

use std::time::Duration;

use crate::host::keys::{KeyId, PublicKey};
use crate::wire::key_types::{Algorithm, KeySpec, Purpose};
use crate::wire::startup::HardeningStep;

/// The result type of every keyward operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, by area.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The signer could not be started.
    #[error("could not start the signer: {0}")]
    Spawn(#[from] SpawnError),

    /// The sealed key store could not be opened, created or written.
    #[error("sealed key store: {0}")]
    Store(#[from] crate::host::store::StoreError),

    /// A watermark interchange document was refused; nothing was imported.
    #[error("watermark interchange: {0}")]
    Interchange(#[from] crate::host::interchange::InterchangeError),

    /// The configuration was refused before anything was started.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// The signer process has ended; this and every later call fails until a respawn.
    #[error(
        "the signer (generation {generation}) has ended: {end}; call respawn() for a new one (its keys are gone)"
    )]
    SignerEnded {
        /// Which signer of the service ended.
        generation: u32,
        /// How it ended.
        end: SignerEnd,
    },

    /// The signer did not answer within the request deadline while running (or a request could
    /// not even be written whole): it is hung, and has been killed.
    #[error(
        "the signer did not answer within {0:?}; it was killed as hung, call respawn() for a new one"
    )]
    Timeout(Duration),

    /// The signer did not answer within the request deadline because the kernel shows it
    /// stopped (SIGSTOP, a debugger, job control). A stop is not a hang: it was left running with
    /// its keys, and serves again once continued. Calls meanwhile fail with this error.
    #[error(
        "the signer is stopped (SIGSTOP, a debugger or job control) and did not answer within {0:?}; it keeps its keys and serves again once continued (SIGCONT)"
    )]
    SignerStopped(Duration),

    /// The service was used from a process forked from the one that spawned it. Its pipes and
    /// request ids belong to the original process, which goes on using them; this copy refuses
    /// every call, before touching them. Spawn a service in this process instead.
    #[error(
        "this service was spawned by process {creator} and cannot be used from process {this} (a fork of it): spawn a new service here"
    )]
    ForkedProcess {
        /// The process that spawned the service.
        creator: u32,
        /// This process.
        this: u32,
    },

    /// The key is not held by this service's current signer.
    #[error(
        "key {0} is not held by this signer: it was dropped, or made by another service; \
         list_keys() shows the keys this service holds"
    )]
    UnknownKey(KeyId),

    /// The key was made by a signer of this service that has since ended, and its store (memory
    /// only) ended with it.
    #[error(
        "key {key} belonged to signer generation {ended}, which has ended; its keys are gone (the current signer is generation {current})"
    )]
    KeyFromEndedSigner {
        /// The key asked for.
        key: KeyId,
        /// The generation of the signer that held it.
        ended: u32,
        /// The generation of the signer now serving.
        current: u32,
    },

    /// The key's algorithm does not fit the operation.
    #[error("key {key} is {algorithm}; {operation} needs an {needed} key")]
    WrongKeyType {
        /// The key asked for.
        key: KeyId,
        /// Its algorithm.
        algorithm: Algorithm,
        /// The operation that was refused.
        operation: &'static str,
        /// The algorithm the operation needs.
        needed: Algorithm,
    },

    /// A key spec named an algorithm that its purpose does not use.
    #[error("a {} key uses {}, not {}: use KeySpec::new({:?})", spec.purpose, spec.purpose.algorithm(), spec.algorithm, spec.purpose)]
    PurposeAlgorithmMismatch {
        /// The refused spec.
        spec: KeySpec,
    },

    /// The double-sign guard in the signer refused a consensus message: signing it could make
    /// the validator sign two conflicting messages. Nothing was signed.
    #[error(
        "key {key} will not sign this {kind} at epoch {epoch}, round {round}: {rule} (the watermark it meets: {})",
        watermark.map_or_else(|| "none".to_owned(), |w| format!("epoch {}, round {}", w.epoch, w.round))
    )]
    WouldDoubleSign {
        /// The consensus key.
        key: KeyId,
        /// The refused message's kind.
        kind: crate::wire::consensus::ConsensusKind,
        /// Its epoch.
        epoch: u64,
        /// Its round.
        round: u64,
        /// The rule that refused it.
        rule: crate::wire::consensus::GuardRule,
        /// The watermark the message met on its chain: its own kind's, or for a rule between
        /// kinds (a vote after a timeout, a timeout below a vote) the other kind's.
        watermark: Option<crate::wire::consensus::Watermark>,
    },

    /// A typed consensus call for a key of another purpose.
    #[error("key {key} is a {purpose} key; only consensus keys sign consensus messages")]
    NotAConsensusKey {
        /// The key.
        key: KeyId,
        /// Its purpose.
        purpose: Purpose,
    },

    /// Blind signing (a digest, a message, a batch) with a consensus key, which signs only
    /// typed consensus messages unless the service was configured otherwise.
    #[error(
        "key {key} is a {purpose} key: it signs only typed consensus messages (sign_consensus), which its double-sign guard checks; {operation} is refused (Config::allow_blind_consensus_signing_unsafe allows it, without the guard)"
    )]
    BlindSigningRefused {
        /// The key.
        key: KeyId,
        /// Its purpose.
        purpose: Purpose,
        /// The refused operation.
        operation: &'static str,
    },

    /// The consensus key keeps watermarks for as many chains as it can.
    #[error(
        "key {key} already keeps watermarks for {cap} chains; use another key for another chain"
    )]
    ChainLimit {
        /// The key.
        key: KeyId,
        /// The most chains per key.
        cap: u32,
    },

    /// The peer's X25519 public key is a low-order point: the shared secret would be all zeros.
    #[error(
        "the peer's X25519 public key is a low-order point (RFC 7748): the shared secret would be all zeros; refuse this peer"
    )]
    LowOrderPoint,

    /// The signer holds as many keys as it was configured for.
    #[error(
        "the signer holds its limit of {limit} keys; drop one or spawn with a larger key_limit"
    )]
    KeyLimitReached {
        /// The configured limit.
        limit: u32,
    },

    /// An import that did not decrypt with this signer's provisioning key (or is not an age
    /// file); nothing was stored.
    #[error(
        "the import did not decrypt with this signer's provisioning key: {error}; encrypt the \
         key to the recipient `keyward provision-key` prints for this store. Nothing was stored"
    )]
    ImportUndecryptable {
        /// What was wrong with the age file.
        error: crate::AgeError,
    },

    /// An import file larger than any one key's age file; nothing was stored.
    #[error(
        "the import is {len} bytes, more than one key's age file takes (at most {cap}): encrypt \
         one key, as 32 raw bytes or 64 hex digits, per file. Nothing was stored"
    )]
    ImportTooLarge {
        /// The file's length.
        len: usize,
        /// The most bytes an import takes.
        cap: usize,
    },

    /// An import that decrypted but does not hold a 32-byte secret key; nothing was stored.
    #[error(
        "the decrypted import is not a 32-byte secret key: encrypt 32 raw bytes, or 64 hex \
         digits and an optional newline. Nothing was stored"
    )]
    ImportMalformed,

    /// The imported secret's public key is not the one claimed; nothing was stored.
    #[error(
        "the imported secret's public key is not {claimed}, the one claimed: check the key, \
         its algorithm and the purpose. Nothing was stored"
    )]
    ImportPublicKeyMismatch {
        /// The public key the caller claimed (boxed: an Ed25519 key holds its decompressed
        /// point, and errors stay small).
        claimed: Box<PublicKey>,
    },

    /// The imported key is already held; nothing was stored.
    #[error("the imported key is already held, as {key:#}; nothing was stored")]
    KeyAlreadyHeld {
        /// The key that holds it.
        key: KeyId,
    },

    /// A restore's backup was refused before anything was stored: its signature, a key's
    /// secret, or its shape.
    #[error("the backup was refused; nothing was stored: {problem}")]
    RestoreRefused {
        /// What was wrong.
        problem: crate::BackupProblem,
    },

    /// No version of the key has that number.
    #[error("key {key} has no version {version}; key_versions lists those it holds")]
    UnknownVersion {
        /// The key.
        key: KeyId,
        /// The version asked for.
        version: u32,
    },

    /// The version's grace period after a rotation is over: it is erased (or about to be).
    #[error(
        "version {version} of key {key} was retired when its grace period after a rotation \
         ended; use the current version"
    )]
    VersionRetired {
        /// The key.
        key: KeyId,
        /// The retired version.
        version: u32,
    },

    /// A rotation's grace period longer than keyward keeps a previous version.
    #[error(
        "a grace period longer than {} days: keep a second key instead",
        max.as_secs() / 86_400
    )]
    GraceTooLong {
        /// The longest grace period.
        max: std::time::Duration,
    },

    /// The key was rotated after this handle read its public key: a signature from it would
    /// not verify under the public key the handle reports.
    #[error(
        "key {key} was rotated after this signer was made: make a new one (its public key is \
         the new version's)"
    )]
    KeyRotated {
        /// The key.
        key: KeyId,
    },

    /// The key has as many previous versions in their grace period as a key may keep.
    #[error(
        "key {key} already keeps {cap} previous versions in their grace period; rotate it \
         again once one has retired, or with no grace period"
    )]
    VersionLimit {
        /// The key.
        key: KeyId,
        /// The most previous versions kept at once.
        cap: u32,
    },

    /// The keys do not fit in one backup.
    #[error(
        "{keys} keys do not fit in one backup (at most {cap} bytes of text, about 250 keys \
         without watermarks); nothing was written"
    )]
    BackupTooLarge {
        /// The keys held.
        keys: u32,
        /// The most bytes of backup text.
        cap: u32,
    },

    /// A backup recipient that is not a usable age X25519 recipient.
    #[error("not a usable age X25519 recipient: {error}")]
    BadRecipient {
        /// What is wrong with it.
        error: crate::RecipientError,
    },

    /// The signer mixes fresh entropy from the kernel into its generator before it makes a
    /// key, and the kernel gave none; no key was made. Retry; if it persists, the machine's
    /// entropy source is broken.
    #[error(
        "the signer could not read fresh entropy from the kernel (getrandom: {}); no key was \
         made: retry, and check the machine's random number source if it persists",
        std::io::Error::from_raw_os_error(*errno)
    )]
    NoFreshEntropy {
        /// The `getrandom` errno.
        errno: i32,
    },

    /// A message to sign is longer than keyward signs in one request.
    #[error(
        "this message is {length} bytes; keyward signs messages of up to {cap} bytes (hash a longer one and sign the digest)"
    )]
    MessageTooLong {
        /// The message's length.
        length: usize,
        /// [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN).
        cap: usize,
    },

    /// A batch given to [`sign_many`](crate::KeyService::sign_many) is empty or longer than it
    /// signs in one call. Nothing was sent.
    #[error(
        "sign_many was given {length} digests; it signs 1 to {cap} in one call (split a larger batch into calls of at most {cap}; make no call for none)"
    )]
    BatchSize {
        /// How many digests the batch had.
        length: usize,
        /// [`MAX_BATCH`](crate::MAX_BATCH).
        cap: usize,
    },

    /// The signer sent something the protocol does not allow; it can no longer be trusted and
    /// was killed.
    #[error(
        "the signer (generation {generation}) broke the protocol ({what}); it was killed, call respawn() for a new one"
    )]
    SignerMisbehaved {
        /// Which signer of the service misbehaved.
        generation: u32,
        /// What it did.
        what: &'static str,
    },

    /// keyward broke one of its own invariants: a bug in this library, not in the caller's
    /// input nor in the signer. The signer was left running.
    #[error("a bug in keyward: {0}; please report it")]
    Internal(&'static str),

    /// The host's pipe to the signer failed in a way that does not mean the signer ended; the
    /// signer was killed, since its stream can no longer be trusted.
    #[error(
        "the pipe to the signer failed: {0}; the signer was killed, call respawn() for a new one"
    )]
    Io(std::io::Error),

    /// The signer's status could not be read from `/proc` (is `/proc` mounted?).
    #[error("could not read the signer's status from /proc: {0}")]
    Status(std::io::Error),
}

/// Why the signer could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// A hardening step failed in the signer; it never served.
    #[error("hardening step failed: {step}{}", errno_suffix(*errno))]
    Hardening {
        /// The step that failed.
        step: HardeningStep,
        /// The errno of the failure (0 if none).
        errno: i32,
    },

    /// This architecture has no sandbox policy; only an explicitly unsandboxed spawn can run.
    #[error(
        "there is no seccomp policy for the {0} architecture; the signer cannot be sandboxed here (Sandbox::UnsandboxedInsecure runs it without one, not for production)"
    )]
    UnsupportedArchitecture(&'static str),

    /// The embedded policy could not be read for display ([`crate::policy`]). It compiled: a
    /// policy that does not compile fails the build.
    #[error("the sandbox policy could not be read: {0}")]
    Policy(String),

    /// An operating system call in the supervisor failed.
    #[error("{what}: {source}")]
    System {
        /// What was being done.
        what: &'static str,
        /// The failure.
        source: std::io::Error,
    },

    /// The signer ended before saying it was ready.
    #[error("the signer ended before it was ready: {0}")]
    Ended(SignerEnd),

    /// The signer could not open or create its sealed store. [`SecretService::spawn`] and
    /// `respawn` return this as [`Error::Store`].
    ///
    /// [`SecretService::spawn`]: crate::SecretService::spawn
    #[error("the signer could not open its sealed store: {0}")]
    Store(crate::host::store::StoreError),

    /// The signer did not say it was ready within the spawn deadline; it was killed.
    #[error("the signer was not ready within {0:?}; it was killed")]
    NotReady(Duration),

    /// The exec'd signer speaks another protocol version.
    #[error(
        "the signer program speaks protocol version {theirs}, this library speaks {ours}: rebuild them together"
    )]
    VersionMismatch {
        /// This library's version.
        ours: u32,
        /// The signer program's version.
        theirs: u32,
    },

    /// The signer said it was ready, but the kernel does not show it hardened (under
    /// `Sandbox::Enforced`: every thread filtered, no-new-privileges, no capabilities). It was
    /// killed before serving.
    #[error(
        "the signer said it was ready, but the kernel shows it is not hardened: {0}; it was killed"
    )]
    NotHardened(String),

    /// The fork-exec signer program cannot be used: it could not be opened, or it is not a
    /// regular, executable file. Checked once, when the service is spawned; every signer of the
    /// service runs the file found then.
    #[error(
        "cannot use {} as the signer program: {source}; it must be a regular, executable file: the keyward binary, or a program that calls keyward::run_signer_if_requested() first in main",
        path.display()
    )]
    SignerProgram {
        /// The program's path, as configured.
        path: std::path::PathBuf,
        /// What was wrong.
        source: std::io::Error,
    },

    /// The signer said something other than "ready" first.
    #[error("the signer's first message was not a ready message")]
    UnexpectedGreeting,
}

/// " (the error)" for a known errno; nothing when the step could only report by exit code.
fn errno_suffix(errno: i32) -> String {
    if errno == 0 {
        String::new()
    } else {
        format!(" ({})", std::io::Error::from_raw_os_error(errno))
    }
}

/// How a signer process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignerEnd {
    /// The kernel killed it for a system call outside its seccomp allowlist (SIGSYS).
    #[error("killed by the sandbox (SIGSYS): it attempted a system call outside its allowlist")]
    SandboxViolation,
    /// A signal other than SIGSYS ended it.
    #[error("killed by signal {signal}")]
    Killed {
        /// The signal number.
        signal: i32,
    },
    /// It panicked (an internal bug); its panic hook ended it.
    #[error("the signer panicked (an internal bug; please report it)")]
    Panicked,
    /// It stopped because the request stream was corrupt (over-long or truncated frame).
    #[error("it stopped on a corrupt request stream")]
    CorruptRequestStream,
    /// It exited with this code.
    #[error("exited with code {code}")]
    Exited {
        /// The exit code.
        code: i32,
    },
    /// It was killed because a request timed out.
    #[error("killed after a request timed out")]
    TimedOut,
    /// It was killed because it broke the protocol.
    #[error("killed after it broke the protocol")]
    ProtocolViolation,
    /// It was ended by `respawn` or by dropping the service.
    #[error("replaced or shut down by its supervisor")]
    ShutDown,
    /// It ended, but another part of the host collected its exit status before keyward could
    /// (SIGCHLD set to SIG_IGN, or a loop that waits for any child with `__WALL`), and this
    /// kernel keeps no copy of it (Linux 6.15 and later do, and keyward reads it there): how it
    /// ended is unknown.
    #[error(
        "it ended, but the host reaped it before keyward could learn how (SIGCHLD ignored, or a wait for any child); on Linux 6.15 or later keyward reads the exit status from the kernel"
    )]
    ReapedElsewhere,
}
