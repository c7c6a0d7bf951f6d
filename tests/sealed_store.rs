//! The sealed store: keys, ids and public keys survive the service, in both spawn modes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ed25519_dalek::Verifier;
use keyward::{
    Config, KdfParameters, KeyService, KeySpec, Purpose, SecretService, SpawnMode, StoreConfig,
    UnlockSecret,
};

/// Argon2id at its smallest: the tests exercise the format, not the cost.
const TEST_KDF: KdfParameters = KdfParameters {
    memory_kib: 64,
    passes: 1,
    lanes: 1,
};

fn store_dir(name: &str) -> std::path::PathBuf {
    let base = std::env::temp_dir().join(format!("keyward-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
    base
}

fn unlock_file(dir: &std::path::Path) -> UnlockSecret {
    let path = dir.join("unlock");
    std::fs::write(&path, b"correct horse battery staple\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    UnlockSecret::file(path)
}

#[test]
fn keys_survive_a_restart_in_both_spawn_modes() {
    for (name, mode) in [
        ("fork", SpawnMode::Fork),
        (
            "fork-exec",
            SpawnMode::ForkExec {
                program: env!("CARGO_BIN_EXE_keyward").into(),
            },
        ),
    ] {
        let base = store_dir(name);
        let unlock = unlock_file(&base);
        let store_path = base.join("store");
        let config = Config::default().with_spawn_mode(mode).with_store(
            StoreConfig::new(&store_path, unlock)
                .create_if_missing()
                .with_kdf(TEST_KDF),
        );
        let digest = [7u8; 32];
        let (ids, before, signature) = {
            let service = SecretService::spawn(config.clone()).unwrap();
            let ids: Vec<_> = Purpose::ALL
                .iter()
                .map(|&purpose| service.generate_key(KeySpec::new(purpose)).unwrap())
                .collect();
            let before: Vec<_> = ids
                .iter()
                .map(|&id| service.public_key(id).unwrap())
                .collect();
            let signature = service.sign(ids[0], &digest).unwrap();
            (ids, before, signature)
        };
        let service = SecretService::spawn(config).unwrap();
        let mut listed: Vec<_> = service
            .list_keys()
            .unwrap()
            .into_iter()
            .map(|k| k.id)
            .collect();
        let mut expected = ids.clone();
        listed.sort_by_key(|id| format!("{id:#}"));
        expected.sort_by_key(|id| format!("{id:#}"));
        assert_eq!(listed, expected, "{name}");
        for (id, public) in ids.iter().zip(&before) {
            assert_eq!(&service.public_key(*id).unwrap(), public, "{name}");
        }
        let verifying = before[0].as_ed25519().unwrap();
        verifying.verify(&digest, &signature).unwrap();
        let again = service.sign(ids[0], &[8u8; 32]).unwrap();
        verifying.verify(&[8u8; 32], &again).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }
}
