//! The sealed store: keys, ids and public keys survive the service, in both spawn modes; a
//! purge sent under a pending rotation leaves the version the rotation would put back whole.
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

/// A host that sends `PurgeRetired` while a rotation waits for its write (the real host never
/// does: both run under the store's lock) purges only versions no rotation is waiting on: when
/// it then aborts the rotation, the previous version it puts back is the one it had, whole, not
/// a record whose secret the purge wiped (that record would sign with the all-zero seed).
#[test]
#[cfg(feature = "test-support")]
fn a_purge_never_wipes_the_version_a_pending_rotation_would_put_back() {
    use keyward::testing::{
        RawSigner, finish_rotation_frame, purge_retired_frame, rotate_key_frame, sign_frame,
    };
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let base = store_dir("purge-under-rotation");
    let config = Config::default().with_store(
        StoreConfig::new(base.join("store"), unlock_file(&base))
            .create_if_missing()
            .with_kdf(TEST_KDF),
    );
    let key = {
        let service = SecretService::spawn(config.clone()).unwrap();
        service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap()
    };
    let mut raw = RawSigner::spawn(config).unwrap();
    let timeout = std::time::Duration::from_secs(5);
    let mut ask = |frame: Vec<u8>| {
        raw.write(&frame).unwrap();
        raw.read_answer(timeout).unwrap().1
    };
    // Version 2, committed: version 1 retires one to two seconds later.
    let summary = ask(rotate_key_frame(1, key, 1));
    assert!(summary.starts_with("KeyRotated { version: 2,"), "{summary}");
    let start = summary.find("public_key: [").unwrap() + "public_key: [".len();
    let end = start + summary[start..].find(']').unwrap();
    let second: [u8; 32] = summary[start..end]
        .split(',')
        .map(|byte| byte.trim().parse::<u8>().unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    assert_eq!(ask(finish_rotation_frame(2, key, true)), "KeyDropped");
    // Version 3, not finished: version 2 waits, kept for a second, to be put back.
    let summary = ask(rotate_key_frame(3, key, 1));
    assert!(summary.starts_with("KeyRotated { version: 3,"), "{summary}");
    // A grace period ends at the second after the next one (never shorter than asked).
    let rotated = now();
    while now() <= rotated + 1 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Both grace periods are over; the purge erases version 1 only.
    let summary = ask(purge_retired_frame(4));
    assert!(summary.starts_with("Purged { key: Some("), "{summary}");
    let removed = summary.split("removed_slots: [").nth(1).unwrap();
    let removed = &removed[..removed.find(']').unwrap()];
    assert_eq!(removed.matches("Some(").count(), 1, "{summary}");
    // The write "failed": version 2 is current again, and signs as version 2.
    assert_eq!(ask(finish_rotation_frame(5, key, false)), "KeyDropped");
    let summary = ask(sign_frame(6, key, [6; 32]));
    let start = summary.find("r: [").unwrap();
    let bytes = |label: &str| -> [u8; 32] {
        let from = summary[start..].find(label).unwrap() + start + label.len();
        let to = from + summary[from..].find(']').unwrap();
        summary[from..to]
            .split(',')
            .map(|byte| byte.trim().parse::<u8>().unwrap())
            .collect::<Vec<_>>()
            .try_into()
            .unwrap()
    };
    let signature = ed25519_dalek::Signature::from_components(bytes("r: ["), bytes("s: ["));
    ed25519_dalek::VerifyingKey::from_bytes(&second)
        .unwrap()
        .verify_strict(&[6; 32], &signature)
        .unwrap_or_else(|e| panic!("version 2 put back does not sign as version 2: {e}"));
    drop(raw);
    std::fs::remove_dir_all(&base).unwrap();
}
