//! The unlock secret over a service's life: a respawned signer reads a file-based secret again
//! and serves the same keys; an in-memory passphrase serves the first signer only, and a respawn
//! is refused by name; a passphrase follows the file's rule for one trailing line ending.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use keyward::{
    Config, KdfParameters, KeyService, KeySpec, Purpose, SecretService, StoreConfig, StoreCreation,
    StoreError, UnlockSecret,
};
use zeroize::Zeroizing;

/// Argon2id at its smallest: these tests are about the secret, not the cost.
const TEST_KDF: KdfParameters = KdfParameters {
    memory_kib: 64,
    passes: 1,
    lanes: 1,
};

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("keyward-test-{}-unlock-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        Self(path)
    }

    fn config(&self, unlock: UnlockSecret, creation: StoreCreation) -> Config {
        Config::default().with_store(
            StoreConfig::new(self.0.join("store"), unlock)
                .with_creation(creation)
                .with_kdf(TEST_KDF),
        )
    }

    fn file(&self, bytes: &[u8]) -> UnlockSecret {
        let path = self.0.join("unlock");
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        UnlockSecret::file(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn passphrase(bytes: &[u8]) -> UnlockSecret {
    UnlockSecret::passphrase(Zeroizing::new(bytes.to_vec()))
}

#[test]
fn a_respawned_signer_reads_the_unlock_file_again_and_serves_the_same_keys() {
    let scratch = Scratch::new("respawn");
    let unlock = scratch.file(b"hunter2\n");
    let service = SecretService::spawn(scratch.config(unlock, StoreCreation::CreateNew)).unwrap();
    let key = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    let public = service.public_key(key).unwrap();
    let pid = service.pid();
    assert_eq!(service.respawn().unwrap(), 2);
    assert_ne!(service.pid(), pid, "a new signer");
    assert_eq!(service.public_key(key).unwrap(), public);
    let signature = service.sign(key, &[3; 32]).unwrap();
    public
        .as_ed25519()
        .unwrap()
        .verify_strict(&[3; 32], &signature)
        .unwrap();
}

#[test]
fn an_in_memory_passphrase_serves_the_first_signer_only_and_a_respawn_is_refused_by_name() {
    let scratch = Scratch::new("spent");
    let service =
        SecretService::spawn(scratch.config(passphrase(b"hunter2"), StoreCreation::CreateNew))
            .unwrap();
    let key = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    let error = service.respawn().unwrap_err();
    assert!(
        matches!(error, keyward::Error::Store(StoreError::UnlockSecretSpent)),
        "{error}"
    );
    drop(service);
    // The store itself is whole: a new service with the passphrase opens it, key and all.
    let service =
        SecretService::spawn(scratch.config(passphrase(b"hunter2"), StoreCreation::OpenExisting))
            .unwrap();
    service.public_key(key).unwrap();
}

#[test]
fn a_passphrase_follows_the_files_rule_for_one_trailing_line_ending() {
    let scratch = Scratch::new("passphrase");
    let created = scratch.file(b"hunter2");
    drop(SecretService::spawn(scratch.config(created, StoreCreation::CreateNew)).unwrap());
    for same in [&b"hunter2"[..], b"hunter2\n", b"hunter2\r\n"] {
        let opened =
            SecretService::spawn(scratch.config(passphrase(same), StoreCreation::OpenExisting));
        assert!(
            opened.is_ok(),
            "{:?}: {:?}",
            String::from_utf8_lossy(same),
            opened.err()
        );
    }
    let error = SecretService::spawn(
        scratch.config(passphrase(b"hunter2\n\n"), StoreCreation::OpenExisting),
    )
    .unwrap_err();
    assert!(
        matches!(
            error,
            keyward::Error::Store(StoreError::WrongUnlockSecret { .. })
        ),
        "{error}"
    );
}
