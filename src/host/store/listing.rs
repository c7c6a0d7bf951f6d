//! Runs in the host: a store's keys as its state file lists them in the clear, read without the
//! unlock secret and without the store's lock, for `keyward status` and for a validator that
//! wants to show its keys without starting a signer. Nothing read here is authenticated: only a
//! signer that opens the store with its unlock secret checks the seals. No secret is read here:
//! in the file every secret is sealed, and the sealed bytes are not even kept.

use std::path::{Path, PathBuf};

use crate::host::keys::KeyId;
use crate::host::store::directory::{self, PREVIOUS_FILE, STATE_FILE};
use crate::host::store::{StoreError, hex, read_state_in};
use crate::wire::key_types::{Algorithm, Purpose, WireKeyId};
use crate::wire::store_format::{FORMAT_VERSION, KdfParameters};

/// A store's state file as it is on disk, read without unlocking it: its clear fields only, and
/// **not authenticated**. Anyone who can write the store directory can change what this shows
/// (a signer opening the store would then refuse it). The seals are checked only when a signer
/// opens the store with its unlock secret.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreListing {
    /// The state file read.
    pub state_file: PathBuf,
    /// The store id, 16 lower-case hex digits (the first 16 of every key id's 48).
    pub store_id: String,
    /// The file's format version (this build reads only its own, 1).
    pub format_version: u16,
    /// The sequence number of the state: 0 when the store was created, larger after every
    /// change written since.
    pub sequence: u64,
    /// The Argon2id costs the store's key-encryption key is derived with.
    pub kdf: KdfParameters,
    /// The keys, in the file's order.
    pub keys: Vec<ListedKey>,
}

/// One key of a [`StoreListing`]: its clear fields, as the file has them. No secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListedKey {
    /// The key's id, as the service names it.
    pub id: KeyId,
    /// What the key is for.
    pub purpose: Purpose,
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// Its public key's 32 bytes, as the file has them (not checked against the secret).
    pub public_key: [u8; 32],
    /// When this version was made: seconds since the Unix epoch, by the signer's clock.
    pub created: u64,
    /// Its version: 1 when made, one more at each rotation. A rotated key has one entry per
    /// version kept.
    pub version: u32,
    /// 0 for the current version; for a previous one, when its grace period ends (seconds
    /// since the Unix epoch).
    pub retires: u64,
}

impl StoreListing {
    /// Reads the store in `directory` without its unlock secret and without its lock (so it
    /// works while a service holds the store). Refuses what opening would refuse before a
    /// signer starts: a missing or open directory or state file, a malformed file, a file of
    /// another store.
    pub fn read(directory: impl AsRef<Path>) -> Result<Self, StoreError> {
        let directory = directory.as_ref();
        directory::check_unlocked(directory)?;
        if !directory::has_in(directory, STATE_FILE)?
            && !directory::has_in(directory, PREVIOUS_FILE)?
        {
            return Err(StoreError::NotInitialised {
                path: directory.to_path_buf(),
            });
        }
        let file = read_state_in(directory)?;
        let store = file.header.store;
        Ok(Self {
            state_file: directory.join(STATE_FILE),
            store_id: hex(&store),
            format_version: FORMAT_VERSION,
            sequence: file.manifest.sequence,
            kdf: file.header.kdf,
            keys: file
                .records
                .iter()
                .map(|record| ListedKey {
                    id: KeyId(WireKeyId {
                        store,
                        local: record.local,
                    }),
                    purpose: record.purpose,
                    algorithm: record.algorithm,
                    public_key: record.public_key,
                    created: record.created,
                    version: record.version,
                    retires: record.retires,
                })
                .collect(),
        })
    }
}
