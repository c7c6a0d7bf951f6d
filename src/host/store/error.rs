//! Runs in the host: every way opening, creating or writing a sealed store can fail, each naming
//! the path and what to do. None carries a secret: not the unlock secret, not a key byte.

use std::path::PathBuf;

use crate::wire::startup::TamperedPart;
use crate::wire::store_format::FormatError;

/// The operating system's words for an errno.
fn os(errno: &i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(*errno)
}

/// Why a sealed store could not be opened, created or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store directory does not exist. Only an explicit creation makes a store.
    #[error(
        "the store directory {} does not exist: create the store with `keyward init --store {} --unlock-file FILE` (or StoreConfig::create_if_missing)",
        path.display(), path.display()
    )]
    DirectoryMissing {
        /// The directory.
        path: PathBuf,
    },

    /// The store path is not a directory.
    #[error("{} is not a directory", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },

    /// The directory holds no store (no state file and no previous copy). Only an explicit
    /// creation makes one: a missing store is never silently replaced by an empty one.
    #[error(
        "{} holds no keyward store (no state file): create one with `keyward init --store {} --unlock-file FILE` (or StoreConfig::create_if_missing)",
        path.display(), path.display()
    )]
    NotInitialised {
        /// The directory.
        path: PathBuf,
    },

    /// Creation was asked for where a store (or a trace of one) already exists.
    #[error("{} already holds a keyward store ({}); refusing to create another over it", directory.display(), found.display())]
    AlreadyInitialised {
        /// The directory.
        directory: PathBuf,
        /// The file found.
        found: PathBuf,
    },

    /// The state file is missing but its previous copy is there: a store whose current state
    /// was removed. It is not opened from the older copy silently (that would roll it back).
    #[error(
        "the state file {} is missing but its previous copy {} exists; if the current state was lost, restore the previous copy by renaming it (this rolls the store back to its previous write)",
        path.display(), previous.display()
    )]
    StateMissing {
        /// The missing state file.
        path: PathBuf,
        /// The previous copy that exists.
        previous: PathBuf,
    },

    /// The state file is older than its previous copy: it was replaced by an older state (a
    /// restored backup, a copy put back). Opening it would roll keys and watermarks back.
    #[error(
        "{} is at write {sequence} but its previous copy is at write {previous}: the state was rolled back to an older copy; refusing to open it (restore the newest state)",
        path.display()
    )]
    RolledBack {
        /// The state file.
        path: PathBuf,
        /// Its sequence number.
        sequence: u64,
        /// The previous copy's sequence number.
        previous: u64,
    },

    /// The directory or a store file is open to group or others.
    #[error(
        "{} has mode {mode:04o}, readable or writable by group or others; keyward expects {expected} (chmod {expected} {})",
        path.display(), path.display()
    )]
    Permissions {
        /// The directory or file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The mode keyward expects.
        expected: &'static str,
    },

    /// Another service holds the store's lock.
    #[error("the store {} is in use by another keyward service (its lock {} is held); one store serves one service", directory.display(), lock.display())]
    Locked {
        /// The store directory.
        directory: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },

    /// The state file is not a store file this build can read (not a store, another format
    /// version, truncated, or a field corrupt).
    #[error("{} cannot be read as a keyward store: {error}", path.display())]
    Format {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        error: FormatError,
    },

    /// The state file belongs to another store than the one this directory was created for.
    #[error(
        "{} belongs to store {found}, but this directory was created for store {expected}: a state file copied from another store is refused",
        path.display()
    )]
    ForeignStore {
        /// The state file.
        path: PathBuf,
        /// The store id the directory was created for.
        expected: String,
        /// The store id in the file.
        found: String,
    },

    /// The unlock secret is not this store's (the header's verifier does not open).
    #[error("the unlock secret does not open {}: it is not this store's unlock secret", path.display())]
    WrongUnlockSecret {
        /// The state file.
        path: PathBuf,
    },

    /// The signer could not read the unlock secret's file.
    #[error("the signer could not read the unlock secret {}: {}", path.display(), os(errno))]
    UnlockSecretUnreadable {
        /// The unlock secret's file.
        path: PathBuf,
        /// The errno.
        errno: i32,
    },

    /// The unlock secret is empty (after one trailing newline is removed).
    #[error("the unlock secret is empty")]
    UnlockSecretEmpty,

    /// The unlock secret is longer than keyward reads.
    #[error("the unlock secret is longer than {cap} bytes")]
    UnlockSecretTooLong {
        /// The most bytes read.
        cap: u32,
    },

    /// The in-memory passphrase was wiped after the first signer read it; a later signer (a
    /// respawn) cannot unlock the store with it. Use an unlock file for services that respawn.
    #[error(
        "the store's in-memory passphrase was wiped after the first signer read it; a respawned signer needs UnlockSecret::file"
    )]
    UnlockSecretSpent,

    /// The file opened with the right unlock secret, but a seal does not match what it covers.
    #[error("{} has been tampered with or damaged: {part}", path.display())]
    Tampered {
        /// The state file.
        path: PathBuf,
        /// What did not check out.
        part: TamperedPart,
    },

    /// The store holds a key in a slot the configured key limit does not reach.
    #[error("{} needs a key_limit of at least {needed}; the service is configured for {limit}", path.display())]
    KeyLimitTooSmall {
        /// The state file.
        path: PathBuf,
        /// The smallest key limit that holds every key.
        needed: u32,
        /// The configured key limit.
        limit: u32,
    },

    /// Reading or opening a store file failed.
    #[error("{operation} {} failed: {}", path.display(), os(errno))]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// The errno.
        errno: i32,
    },

    /// Writing a new state durably failed. The operation that needed it failed too; the state
    /// on disk is the one before it (see [`WriteStep`] for the one exception).
    #[error("writing the store failed at {step} ({}): {}; the operation was not done", path.display(), os(errno))]
    WriteFailed {
        /// The file or directory the failed step acted on.
        path: PathBuf,
        /// The step that failed.
        step: WriteStep,
        /// The errno.
        errno: i32,
    },

    /// The key derivation's parameters were refused.
    #[error("invalid key derivation parameters: {0}")]
    InvalidKdf(&'static str),

    /// The key derivation failed inside the signer.
    #[error("the key derivation failed inside the signer")]
    KdfFailed,
}

/// A step of a durable write, named when it fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WriteStep {
    /// Creating and writing the temporary file.
    WriteTemporary,
    /// `fsync` of the temporary file.
    SyncTemporary,
    /// Keeping the current state as the previous copy (a hard link, renamed into place).
    KeepPrevious,
    /// Renaming the temporary file over the current state.
    Rename,
    /// `fsync` of the directory. When this fails the rename may or may not be durable: the
    /// store holds the state before or after, and the operation is reported failed either way.
    SyncDirectory,
}

impl std::fmt::Display for WriteStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WriteStep::WriteTemporary => "writing the temporary file",
            WriteStep::SyncTemporary => "syncing the temporary file",
            WriteStep::KeepPrevious => "keeping the previous state",
            WriteStep::Rename => "renaming the new state into place",
            WriteStep::SyncDirectory => "syncing the directory",
        })
    }
}
