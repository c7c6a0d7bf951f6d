//! Runs in the host: the sealed key store, seen from the host, which can write it but never read
//! a key in it. The signer seals; the host keeps a copy of the store file's (sealed) records,
//! applies each sealed change the signer hands it, checks the result against the digest the
//! signer sealed, and writes it durably (`directory`) before the answer that depends on it is
//! released. One change at a time: the copy's lock is held from the request to the write.

pub(crate) mod directory;
pub(crate) mod error;
pub(crate) mod listing;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use zeroize::Zeroizing;

use crate::wire::messages::StoreChange;
use crate::wire::startup::{
    PassphraseBytes, SealedSummary, SignerStoreSettings, StoreProblem, UnlockSource,
};
use crate::wire::store_format::{
    BODY_LEN, HEADER_LEN, KdfParameters, MAX_CHAINS_PER_KEY, RECORD_LEN, StoreFile, WATERMARK_LEN,
};
use directory::{PREVIOUS_FILE, STATE_FILE, STORE_ID_FILE, StoreDirectory};
pub use error::{StoreError, WriteStep};
pub use listing::{ListedKey, StoreListing};

/// Where the unlock secret, from which the signer derives the store's key-encryption key, comes
/// from. The host never reads a file-based secret; an in-memory passphrase is wiped from the
/// host as soon as the first signer has it.
#[derive(Clone)]
pub struct UnlockSecret(UnlockKind);

#[derive(Clone)]
enum UnlockKind {
    File(PathBuf),
    /// Shared by clones of the config, so that wiping it wipes it for all of them.
    Passphrase(Arc<Mutex<Option<PassphraseBytes>>>),
}

impl UnlockSecret {
    /// A file the signer reads itself, before its sandbox is applied: a passphrase file (mode
    /// 0600, one trailing newline ignored) or a systemd credential
    /// (`$CREDENTIALS_DIRECTORY/<name>`). The host process never opens it.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self(UnlockKind::File(path.into()))
    }

    /// A passphrase in memory, for tests and interactive use. It is moved into the first signer
    /// started with it and wiped from the host right after the fork; a later signer (a respawn)
    /// cannot use it ([`StoreError::UnlockSecretSpent`]).
    pub fn passphrase(passphrase: Zeroizing<Vec<u8>>) -> Self {
        let bytes = PassphraseBytes::new(passphrase.to_vec());
        Self(UnlockKind::Passphrase(Arc::new(Mutex::new(Some(bytes)))))
    }

    fn source(&self) -> Result<UnlockSource, StoreError> {
        match &self.0 {
            UnlockKind::File(path) => Ok(UnlockSource::File(path_bytes(path))),
            UnlockKind::Passphrase(passphrase) => passphrase
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take()
                .map(UnlockSource::Passphrase)
                .ok_or(StoreError::UnlockSecretSpent),
        }
    }

    fn file_path(&self) -> Option<&Path> {
        match &self.0 {
            UnlockKind::File(path) => Some(path),
            UnlockKind::Passphrase(_) => None,
        }
    }
}

impl std::fmt::Debug for UnlockSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            UnlockKind::File(path) => f.debug_tuple("UnlockSecret::File").field(path).finish(),
            UnlockKind::Passphrase(_) => f.write_str("UnlockSecret::Passphrase([REDACTED])"),
        }
    }
}

/// Whether spawning may create the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreCreation {
    /// Open an existing store; a missing one is an error ([`StoreError::NotInitialised`]).
    #[default]
    OpenExisting,
    /// Create the store if the directory holds none (the directory too, if its parent exists).
    CreateIfMissing,
    /// Create the store; an existing one is an error ([`StoreError::AlreadyInitialised`]).
    CreateNew,
}

/// A sealed key store: where it lives and how it is unlocked. Given to
/// [`Config::with_store`](crate::Config::with_store).
#[derive(Clone, Debug)]
pub struct StoreConfig {
    directory: PathBuf,
    unlock: UnlockSecret,
    creation: StoreCreation,
    kdf: KdfParameters,
}

impl StoreConfig {
    /// The store in `directory` (mode 0700), unlocked by `unlock`. Opens an existing store only;
    /// see [`create_if_missing`](Self::create_if_missing).
    pub fn new(directory: impl Into<PathBuf>, unlock: UnlockSecret) -> Self {
        Self {
            directory: directory.into(),
            unlock,
            creation: StoreCreation::OpenExisting,
            kdf: KdfParameters::default(),
        }
    }

    /// Whether spawning may create the store.
    pub fn with_creation(mut self, creation: StoreCreation) -> Self {
        self.creation = creation;
        self
    }

    /// Shorthand for [`StoreCreation::CreateIfMissing`].
    pub fn create_if_missing(self) -> Self {
        self.with_creation(StoreCreation::CreateIfMissing)
    }

    /// The Argon2id costs of a store created with this config (an existing store keeps those in
    /// its header). Default: [`KdfParameters::RFC_9106_LOW_MEMORY`].
    pub fn with_kdf(mut self, kdf: KdfParameters) -> Self {
        self.kdf = kdf;
        self
    }

    /// The store directory.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        self.kdf.check().map_err(StoreError::InvalidKdf)
    }
}

/// The largest state file keyward writes.
const MAX_STATE_LEN: usize = HEADER_LEN
    + BODY_LEN
    + (RECORD_LEN + MAX_CHAINS_PER_KEY * WATERMARK_LEN) * crate::wire::MAX_KEY_LIMIT as usize;

/// An open store: its locked directory and the host's copy of its file.
#[derive(Debug)]
pub(crate) struct HostStore {
    directory: StoreDirectory,
    unlock: UnlockSecret,
    /// The file as the current signer holds it (which may be ahead of the disk after a failed
    /// write); `None` until the first signer is ready. Locked from a change's request to its
    /// write.
    file: Mutex<Option<(u32, StoreFile)>>,
}

/// What a signer is started with, and what the host expects it to report.
pub(crate) struct SignerLaunch {
    pub(crate) settings: SignerStoreSettings,
    /// The file the host read; `None` when the signer creates the store.
    expected: Option<StoreFile>,
}

impl SignerLaunch {
    /// The signer's settings, and the file it is expected to open.
    pub(crate) fn into_parts(self) -> (SignerStoreSettings, Option<StoreFile>) {
        (self.settings, self.expected)
    }
}

impl HostStore {
    /// Opens the store's directory (creating it if allowed), takes its lock, and reads and
    /// checks what can be checked without the key: permissions, form, the store id.
    pub(crate) fn open(config: &StoreConfig) -> Result<(Self, SignerLaunch), StoreError> {
        config.validate()?;
        let may_create = config.creation != StoreCreation::OpenExisting;
        let directory = StoreDirectory::open(&config.directory, may_create)?;
        let exists = directory.has(STATE_FILE)? || directory.has(PREVIOUS_FILE)?;
        let store = Self {
            directory,
            unlock: config.unlock.clone(),
            file: Mutex::new(None),
        };
        let create = match (config.creation, exists) {
            (StoreCreation::CreateNew, true) => {
                let found = if store.directory.has(STATE_FILE)? {
                    STATE_FILE
                } else {
                    PREVIOUS_FILE
                };
                return Err(StoreError::AlreadyInitialised {
                    directory: store.directory.path().to_path_buf(),
                    found: store.directory.file(found),
                });
            }
            (StoreCreation::CreateNew | StoreCreation::CreateIfMissing, false) => Some(config.kdf),
            (_, true) => None,
            (StoreCreation::OpenExisting, false) => {
                return Err(StoreError::NotInitialised {
                    path: store.directory.path().to_path_buf(),
                });
            }
        };
        let launch = store.launch(create)?;
        Ok((store, launch))
    }

    /// The settings of the next signer: to create the store, or to open it as it is on disk.
    pub(crate) fn launch(&self, create: Option<KdfParameters>) -> Result<SignerLaunch, StoreError> {
        let expected = match create {
            Some(_) => None,
            None => Some(self.read_state()?),
        };
        Ok(SignerLaunch {
            settings: SignerStoreSettings {
                state_path: path_bytes(&self.directory.file(STATE_FILE)),
                unlock: self.unlock.source()?,
                create,
            },
            expected,
        })
    }

    /// The state file, parsed, and checked against the store id the directory was made for.
    fn read_state(&self) -> Result<StoreFile, StoreError> {
        read_state_in(self.directory.path())
    }

    /// Takes in a signer that has just become ready: checks it opened the file the host read,
    /// or writes the store it created (its id file, then its state) before anything else.
    pub(crate) fn adopt(
        &self,
        expected: Option<StoreFile>,
        summary: Option<&SealedSummary>,
    ) -> Result<StoreFile, AdoptError> {
        let summary = summary.ok_or(AdoptError::Signer("no sealed store in its greeting"))?;
        let file = match (expected, &summary.created) {
            (Some(expected), None) => {
                if expected.manifest != summary.manifest {
                    return Err(AdoptError::Signer(
                        "it opened another state than the host read",
                    ));
                }
                expected
            }
            (None, Some(created)) => {
                let file = StoreFile {
                    header: created.header,
                    manifest: summary.manifest,
                    manifest_seal: created.manifest_seal,
                    records: Vec::new(),
                    watermarks: Vec::new(),
                };
                if file.records_digest() != summary.manifest.summary() {
                    return Err(AdoptError::Signer("a new store that is not empty"));
                }
                let id = format!("{}\n", hex(&file.header.store));
                self.directory
                    .write_durably(STORE_ID_FILE, None, id.as_bytes())
                    .map_err(AdoptError::Store)?;
                self.directory
                    .write_durably(STATE_FILE, Some(PREVIOUS_FILE), &file.to_bytes())
                    .map_err(AdoptError::Store)?;
                file
            }
            _ => {
                return Err(AdoptError::Signer(
                    "a greeting that does not fit its settings",
                ));
            }
        };
        Ok(file)
    }

    /// The host's copy of the file, locked: hold it from a change's request to its write.
    pub(crate) fn lock_file(&self) -> MutexGuard<'_, Option<(u32, StoreFile)>> {
        self.file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies a sealed change to the host's copy; `Err` says why the change cannot be right
    /// (the copy is then unchanged).
    pub(crate) fn apply(file: &mut StoreFile, change: &StoreChange) -> Result<(), &'static str> {
        if change.manifest.sequence <= file.manifest.sequence {
            return Err("a sealed change that does not advance the sequence number");
        }
        let mut records = file.records.clone();
        let mut watermarks = file.watermarks.clone();
        for slot in change.removed_slots.iter().flatten() {
            let index = records
                .iter()
                .position(|record| record.slot == *slot)
                .ok_or("a sealed change that removes a record the store does not hold")?;
            records.remove(index);
            watermarks.retain(|record| record.slot != *slot);
        }
        if let Some(replaced) = change.replaced {
            let held = records
                .iter_mut()
                .find(|record| record.slot == replaced.slot)
                .ok_or("a sealed change that replaces a record the store does not hold")?;
            *held = replaced;
        }
        if let Some(watermark) = change.watermark {
            let index = watermarks.partition_point(|record| record.order() < watermark.order());
            match watermarks.get_mut(index) {
                Some(held) if held.order() == watermark.order() => *held = watermark,
                _ => watermarks.insert(index, watermark),
            }
        }
        if let Some(added) = change.added {
            let index = records.partition_point(|record| record.slot < added.slot);
            if records
                .get(index)
                .is_some_and(|record| record.slot == added.slot)
            {
                return Err("a sealed change that adds a record over another");
            }
            records.insert(index, added);
        }
        let changed = StoreFile {
            header: file.header,
            manifest: change.manifest,
            manifest_seal: change.manifest_seal,
            records,
            watermarks,
        };
        if changed.records_digest() != change.manifest.summary() {
            return Err("a sealed change whose manifest does not match the records");
        }
        *file = changed;
        Ok(())
    }

    /// Writes the host's copy durably as the new state.
    pub(crate) fn write(&self, file: &StoreFile) -> Result<(), StoreError> {
        self.directory
            .write_durably(STATE_FILE, Some(PREVIOUS_FILE), &file.to_bytes())
    }

    /// The error for a signer's refusal to open or create the store, with the paths.
    pub(crate) fn problem_error(&self, problem: StoreProblem) -> StoreError {
        let path = self.directory.file(STATE_FILE);
        match problem {
            StoreProblem::UnlockSecretUnreadable { errno } => StoreError::UnlockSecretUnreadable {
                path: self
                    .unlock
                    .file_path()
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
                errno,
            },
            StoreProblem::UnlockSecretEmpty => StoreError::UnlockSecretEmpty,
            StoreProblem::UnlockSecretPermissions { mode } => StoreError::Permissions {
                path: self
                    .unlock
                    .file_path()
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
                mode,
                expected: "0600",
            },
            StoreProblem::UnlockSecretTooLong { cap } => StoreError::UnlockSecretTooLong { cap },
            StoreProblem::StateUnreadable { errno } => StoreError::Io {
                path,
                operation: "the signer reading",
                errno,
            },
            StoreProblem::Malformed(error) => StoreError::Format { path, error },
            StoreProblem::WrongUnlockSecret => StoreError::WrongUnlockSecret { path },
            StoreProblem::Tampered(part) => StoreError::Tampered { path, part },
            StoreProblem::KeyLimitTooSmall { needed, limit } => StoreError::KeyLimitTooSmall {
                path,
                needed,
                limit,
            },
            StoreProblem::KdfFailed => StoreError::KdfFailed,
            StoreProblem::Memory { errno } => StoreError::Io {
                path,
                operation: "mapping locked memory for the key-encryption key of",
                errno,
            },
        }
    }
}

/// The state file of the store in `directory`, parsed, and checked against the store id the
/// directory was made for. Takes no lock (a reader sees one whole state: the file is only ever
/// replaced by rename) and opens no seal: well-formed, not authentic.
pub(crate) fn read_state_in(directory: &Path) -> Result<StoreFile, StoreError> {
    let path = directory.join(STATE_FILE);
    if !directory::has_in(directory, STATE_FILE)? {
        return Err(StoreError::StateMissing {
            path,
            previous: directory.join(PREVIOUS_FILE),
        });
    }
    let bytes = directory::read_in(directory, STATE_FILE, MAX_STATE_LEN + 1)?;
    let file = StoreFile::parse(&bytes).map_err(|error| StoreError::Format {
        path: path.clone(),
        error,
    })?;
    let expected = directory::read_in(directory, STORE_ID_FILE, 64)?;
    let expected = String::from_utf8_lossy(&expected).trim().to_owned();
    let found = hex(&file.header.store);
    if expected != found {
        return Err(StoreError::ForeignStore {
            path,
            expected,
            found,
        });
    }
    // Every write keeps the state before it as the previous copy, so the previous copy is never
    // newer than the current state. If it is, the current state was replaced by an older one (a
    // restored backup, a copy put back): refused, since opening it would roll back keys and
    // watermarks. (A whole directory put back is not detected: see SECURITY.md.)
    if directory::has_in(directory, PREVIOUS_FILE)? {
        let previous = directory::read_in(directory, PREVIOUS_FILE, MAX_STATE_LEN + 1)?;
        if let Ok(previous) = StoreFile::parse(&previous)
            && previous.header.store == file.header.store
            && previous.manifest.sequence > file.manifest.sequence
        {
            return Err(StoreError::RolledBack {
                path,
                sequence: file.manifest.sequence,
                previous: previous.manifest.sequence,
            });
        }
    }
    Ok(file)
}

/// Why a signer could not be adopted.
#[derive(Debug)]
pub(crate) enum AdoptError {
    /// The signer's greeting does not fit (it is not to be trusted).
    Signer(&'static str),
    /// Writing the created store failed.
    Store(StoreError),
}

fn path_bytes(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().to_vec()
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
