//! Helpers shared by the sealed-store tests: a store directory with its unlock file, the config
//! that opens it, and the key set a service holds, in a form a test can compare and print.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use keyward::{
    Config, KdfParameters, KeyId, KeyService, Purpose, SpawnMode, StoreConfig, StoreCreation,
    UnlockSecret,
};

/// Argon2id at its smallest: the tests exercise the store, not the cost of unlocking it.
pub(crate) const TEST_KDF: KdfParameters = KdfParameters {
    memory_kib: 64,
    passes: 1,
    lanes: 1,
};

/// A fresh directory (mode 0700, as the store requires of its own directory and expects of its
/// parent's neighbourhood) holding an unlock file; the store lives in its `store` subdirectory
/// unless a test puts it elsewhere. Removed with its contents on drop.
pub(crate) struct StoreBase {
    pub(crate) base: PathBuf,
}

impl StoreBase {
    pub(crate) fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let base =
            std::env::temp_dir().join(format!("keyward-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        // The store refuses a directory open to group or others; the temp dir's own mode
        // depends on the umask, so the test sets it.
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(base.join("unlock"), b"correct horse battery staple\n").unwrap();
        std::fs::set_permissions(base.join("unlock"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        Self { base }
    }

    /// A base that already exists (a role's view of its test's base): not removed on drop.
    pub(crate) fn existing(base: impl Into<PathBuf>) -> std::mem::ManuallyDrop<Self> {
        std::mem::ManuallyDrop::new(Self { base: base.into() })
    }

    /// The default store directory.
    pub(crate) fn store(&self) -> PathBuf {
        self.base.join("store")
    }

    pub(crate) fn unlock(&self) -> UnlockSecret {
        UnlockSecret::file(self.base.join("unlock"))
    }

    /// A fork-mode service's config for the store in `directory`, created if `creation` says so.
    pub(crate) fn config_at(&self, directory: &Path, creation: StoreCreation) -> Config {
        Config::default()
            .with_spawn_mode(SpawnMode::Fork)
            .with_store(
                StoreConfig::new(directory, self.unlock())
                    .with_creation(creation)
                    .with_kdf(TEST_KDF),
            )
    }

    /// The config that creates the default store if it is missing.
    pub(crate) fn create_config(&self) -> Config {
        self.config_at(&self.store(), StoreCreation::CreateIfMissing)
    }

    /// The config that only opens the default store: a missing or unreadable store is an
    /// error, never silently a new one.
    pub(crate) fn open_config(&self) -> Config {
        self.config_at(&self.store(), StoreCreation::OpenExisting)
    }
}

impl Drop for StoreBase {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// A key as a test tracks it: its purpose and its public key in hex.
pub(crate) type Held = (Purpose, String);

/// Keys by their full id (`{:#}`), sorted, so that two sets print and compare readably.
pub(crate) type KeySet = BTreeMap<String, Held>;

/// What `service` holds, from `list_keys`, each key checked against `key_info` too.
pub(crate) fn key_set(service: &dyn KeyService) -> KeySet {
    let mut set = KeySet::new();
    for info in service.list_keys().unwrap() {
        let again = service.key_info(info.id).unwrap();
        assert_eq!(again, info, "key_info disagrees with list_keys");
        let previous = set.insert(
            format!("{:#}", info.id),
            (info.purpose, info.public_key.to_string()),
        );
        assert!(previous.is_none(), "{:#} listed twice", info.id);
    }
    set
}

/// The purpose `Debug` prints, read back.
pub(crate) fn purpose_named(name: &str) -> Purpose {
    *Purpose::ALL
        .iter()
        .find(|purpose| format!("{purpose:?}") == name)
        .unwrap_or_else(|| panic!("no purpose {name}"))
}

/// Signs a digest with the Ed25519 key `id` and verifies it under `public_hex`, the public key
/// the test recorded when the key was made (not what the service says now).
pub(crate) fn assert_signs_as(service: &dyn KeyService, id: &str, public_hex: &str, digest: u8) {
    let key: KeyId = id.parse().unwrap();
    let public: [u8; 32] = crate::common::unhex(public_hex).try_into().unwrap();
    let verifying = ed25519_dalek::VerifyingKey::from_bytes(&public).unwrap();
    let message = [digest; 32];
    let signature = service
        .sign(key, &message)
        .unwrap_or_else(|error| panic!("{id} no longer signs: {error}"));
    verifying
        .verify_strict(&message, &signature)
        .unwrap_or_else(|error| panic!("{id}'s signature does not verify: {error}"));
}

/// Signs with every Ed25519 key of `keys`, each verified under its recorded public key.
pub(crate) fn assert_all_sign(service: &dyn KeyService, keys: &KeySet, digest: u8) {
    for (id, (purpose, public)) in keys {
        if purpose.algorithm() == keyward::Algorithm::Ed25519 {
            assert_signs_as(service, id, public, digest);
        }
    }
}

/// A readable line per key, for assertion messages.
pub(crate) fn describe(keys: &KeySet) -> String {
    if keys.is_empty() {
        return "(none)".to_owned();
    }
    keys.iter()
        .map(|(id, (purpose, public))| format!("{id} {purpose:?} {public}"))
        .collect::<Vec<_>>()
        .join("\n  ")
}
