//! docs/store-format.md read by a second implementation: a store file keyward wrote, read with
//! nothing but that page's layout and the RustCrypto and dalek primitives it names (not
//! keyward's parser or its seals): the key derivation, the three seals and their associated
//! data, the public keys. And what the page says about rollback and about the unlock secret's
//! line ending, as behaviour: an older whole state opens without error, a mix of two states
//! does not, and one trailing newline is ignored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::{AeadInOut, KeyInit, XChaCha20Poly1305};
use keyward::{
    Config, KdfParameters, KeyService, KeySpec, Purpose, SecretService, StoreConfig, StoreCreation,
    StoreError, TamperedPart, UnlockSecret,
};
use sha2::{Digest, Sha256};

/// Argon2id at small costs that are not the defaults, so the header's values are the ones used.
const TEST_KDF: KdfParameters = KdfParameters {
    memory_kib: 256,
    passes: 2,
    lanes: 2,
};

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("keyward-test-{}-format-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        Self(path)
    }

    fn store(&self) -> PathBuf {
        self.0.join("store")
    }

    /// An unlock secret file with these bytes.
    fn unlock(&self, name: &str, bytes: &[u8]) -> UnlockSecret {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        UnlockSecret::file(path)
    }

    fn config(&self, unlock: UnlockSecret, creation: StoreCreation) -> Config {
        Config::default().with_store(
            StoreConfig::new(self.store(), unlock)
                .with_creation(creation)
                .with_kdf(TEST_KDF),
        )
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap())
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Opens an XChaCha20-Poly1305 seal in place; false if it does not open.
fn opens(key: &[u8; 32], nonce: &[u8], associated: &[u8], sealed: &mut [u8], tag: &[u8]) -> bool {
    XChaCha20Poly1305::new(key.into())
        .decrypt_inout_detached(
            nonce.try_into().unwrap(),
            associated,
            InOutBuf::from(sealed),
            tag.try_into().unwrap(),
        )
        .is_ok()
}

/// One record as the page's reader finds it, its seal opened.
#[derive(Debug, PartialEq, Eq)]
struct Found {
    id: String,
    purpose: u8,
    algorithm: u8,
    created: u64,
    public_key: [u8; 32],
}

/// The state file read by docs/store-format.md alone ("Reading a store file by hand"), every
/// check of the page asserted; returns the sequence number and the records.
fn read_as_documented(file: &[u8], unlock_secret: &[u8]) -> (u64, Vec<Found>) {
    // Step 1: the header.
    assert!(file.len() >= 171);
    assert_eq!(&file[0..8], b"KWSTORE\0");
    assert_eq!(u16_at(file, 8), 1, "format version");
    let store_id = &file[10..18];
    assert_eq!(file[18], 1, "Argon2id");
    let (memory, passes, lanes) = (u32_at(file, 19), u32_at(file, 23), u32_at(file, 27));
    assert_eq!(
        (memory, passes, lanes),
        (TEST_KDF.memory_kib, TEST_KDF.passes, TEST_KDF.lanes)
    );
    let salt = &file[31..47];
    assert_eq!(Sha256::digest(&file[0..87])[..], file[87..119], "checksum");
    // Step 2: the body and the records' places.
    let sequence = u64_at(file, 119);
    let count = u32_at(file, 127) as usize;
    assert_eq!(file.len(), 171 + 132 * count);
    // Step 3: the key-encryption key.
    let mut kek = [0u8; 32];
    argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(memory, passes, lanes, Some(32)).unwrap(),
    )
    .hash_password_into(unlock_secret, salt, &mut kek)
    .unwrap();
    // Step 4: the verifier.
    let verifier_data = [&b"keyward-store/v1 verifier"[..], &file[0..47]].concat();
    assert!(
        opens(&kek, &file[47..71], &verifier_data, &mut [], &file[71..87]),
        "verifier"
    );
    // Step 5: the manifest.
    let records = &file[171..];
    let manifest_data = [
        &b"keyward-store/v1 manifest"[..],
        &file[87..119],
        &file[119..131],
        &Sha256::digest(records)[..],
    ]
    .concat();
    assert_eq!(manifest_data.len(), 101);
    assert!(
        opens(
            &kek,
            &file[131..155],
            &manifest_data,
            &mut [],
            &file[155..171]
        ),
        "manifest"
    );
    // Step 6: each record.
    let mut found = Vec::new();
    let mut last_slot = None;
    for record in records.chunks_exact(132) {
        let slot = u16_at(record, 0);
        assert!(last_slot < Some(slot), "slots increase");
        last_slot = Some(slot);
        let record_data = [
            &b"keyward-store/v1 record"[..],
            store_id,
            &[1, 0],
            &record[0..60],
        ]
        .concat();
        assert_eq!(record_data.len(), 93);
        let mut secret: [u8; 32] = record[84..116].try_into().unwrap();
        assert!(
            opens(
                &kek,
                &record[60..84],
                &record_data,
                &mut secret,
                &record[116..132]
            ),
            "record in slot {slot}"
        );
        let (purpose, algorithm) = (record[18], record[19]);
        let public_key = match algorithm {
            0 => ed25519_dalek::SigningKey::from_bytes(&secret)
                .verifying_key()
                .to_bytes(),
            1 => {
                x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(secret)).to_bytes()
            }
            other => panic!("algorithm {other}"),
        };
        assert_eq!(public_key[..], record[28..60], "public key of slot {slot}");
        assert!(
            !file.windows(32).any(|window| window == secret),
            "the secret of slot {slot} is in the file in the clear"
        );
        assert_eq!(
            algorithm,
            u8::from(purpose == 3),
            "algorithm of slot {slot}"
        );
        found.push(Found {
            id: hex(&[store_id, &record[2..18]].concat()),
            purpose,
            algorithm,
            created: u64_at(record, 20),
            public_key,
        });
    }
    (sequence, found)
}

fn purpose_code(purpose: Purpose) -> u8 {
    u8::try_from(Purpose::ALL.iter().position(|&p| p == purpose).unwrap()).unwrap()
}

#[test]
fn a_store_keyward_wrote_opens_by_the_documented_layout_alone() {
    let scratch = Scratch::new("reader");
    let secret = b"correct horse battery staple";
    let unlock = scratch.unlock("unlock", &[&secret[..], b"\r\n"].concat());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let service = SecretService::spawn(scratch.config(unlock, StoreCreation::CreateNew)).unwrap();
    let mut expected: Vec<Found> = Purpose::ALL
        .iter()
        .map(|&purpose| {
            let id = service.generate_key(KeySpec::new(purpose)).unwrap();
            let public = service.public_key(id).unwrap();
            Found {
                id: format!("{id:#}"),
                purpose: purpose_code(purpose),
                algorithm: u8::from(purpose == Purpose::NetworkHandshake),
                created: 0,
                public_key: public.to_bytes(),
            }
        })
        .collect();
    let dropped = service
        .generate_key(KeySpec::new(Purpose::Consensus))
        .unwrap();
    let dropped_public = service.public_key(dropped).unwrap();
    service.drop_key(dropped).unwrap();
    drop(service);

    let state = std::fs::read(scratch.store().join("keyward-store")).unwrap();
    let (sequence, found) = read_as_documented(&state, secret);
    assert!(
        !state.windows(secret.len()).any(|window| window == secret),
        "the unlock secret is in the file"
    );
    // Created at 0, then one sealed change for each of five generates and one drop.
    assert_eq!(sequence, 6);
    let now = started + 60;
    for (found, expected) in found.iter().zip(expected.iter_mut()) {
        assert!((started..now).contains(&found.created), "{found:?}");
        expected.created = found.created;
    }
    assert_eq!(found, expected);
    let id_file = std::fs::read_to_string(scratch.store().join("keyward-store.id")).unwrap();
    assert_eq!(id_file, format!("{}\n", &expected[0].id[..16]));

    // The previous copy is the whole state before the drop: the dropped key is still in it.
    let previous = std::fs::read(scratch.store().join("keyward-store.previous")).unwrap();
    let (previous_sequence, previous_found) = read_as_documented(&previous, secret);
    assert_eq!(previous_sequence, 5);
    assert_eq!(previous_found.len(), 5);
    assert_eq!(previous_found[4].id, format!("{dropped:#}"));
    assert_eq!(previous_found[4].public_key, dropped_public.to_bytes());
}

#[test]
fn an_older_whole_state_opens_without_error_but_a_mix_of_two_states_does_not() {
    let scratch = Scratch::new("rollback");
    let unlock = scratch.unlock("unlock", b"hunter2\n");
    let config = scratch.config(unlock.clone(), StoreCreation::CreateNew);
    let service = SecretService::spawn(config).unwrap();
    let kept = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    let dropped = service
        .generate_key(KeySpec::new(Purpose::Consensus))
        .unwrap();
    service.drop_key(dropped).unwrap();
    drop(service);
    let state_path = scratch.store().join("keyward-store");
    let current = std::fs::read(&state_path).unwrap();
    let previous = std::fs::read(scratch.store().join("keyward-store.previous")).unwrap();
    let reopen =
        || SecretService::spawn(scratch.config(unlock.clone(), StoreCreation::OpenExisting));

    // The current state's header and body (its sequence number) with the previous state's
    // records (count fixed up): each part was sealed, the combination never was.
    let mut mixed = current[..171].to_vec();
    mixed[127..131].copy_from_slice(&previous[127..131]);
    mixed.extend_from_slice(&previous[171..]);
    std::fs::write(&state_path, &mixed).unwrap();
    let error = reopen().unwrap_err();
    assert!(
        matches!(
            error,
            keyward::Error::Store(StoreError::Tampered {
                part: TamperedPart::Manifest,
                ..
            })
        ),
        "{error}"
    );
    assert_eq!(
        std::fs::read(&state_path).unwrap(),
        mixed,
        "nothing is overwritten"
    );

    // The previous state, whole, put back: it opens without error, and the dropped key is back.
    std::fs::write(&state_path, &previous).unwrap();
    let service = reopen().unwrap();
    let mut held: Vec<_> = service
        .list_keys()
        .unwrap()
        .iter()
        .map(|key| key.id)
        .collect();
    held.sort_by_key(|id| format!("{id:#}"));
    let mut both = vec![kept, dropped];
    both.sort_by_key(|id| format!("{id:#}"));
    assert_eq!(
        held, both,
        "the rolled-back store holds the dropped key again"
    );
    service.sign(dropped, &[1; 32]).unwrap();
}

#[test]
fn one_trailing_line_ending_of_the_unlock_secret_is_ignored_and_nothing_more() {
    let scratch = Scratch::new("newline");
    let created = scratch.unlock("created", b"hunter2\n");
    drop(SecretService::spawn(scratch.config(created, StoreCreation::CreateNew)).unwrap());
    for same in [&b"hunter2"[..], b"hunter2\n", b"hunter2\r\n"] {
        let unlock = scratch.unlock("same", same);
        let opened = SecretService::spawn(scratch.config(unlock, StoreCreation::OpenExisting));
        assert!(
            opened.is_ok(),
            "{:?}: {:?}",
            String::from_utf8_lossy(same),
            opened.err()
        );
    }
    for other in [&b"hunter2\n\n"[..], b"hunter2\r", b"hunter2 ", b" hunter2"] {
        let unlock = scratch.unlock("other", other);
        let error =
            SecretService::spawn(scratch.config(unlock, StoreCreation::OpenExisting)).unwrap_err();
        assert!(
            matches!(
                error,
                keyward::Error::Store(StoreError::WrongUnlockSecret { .. })
            ),
            "{:?}: {error}",
            String::from_utf8_lossy(other)
        );
    }
    let unlock = scratch.unlock("empty", b"\r\n");
    let error =
        SecretService::spawn(scratch.config(unlock, StoreCreation::OpenExisting)).unwrap_err();
    assert!(
        matches!(error, keyward::Error::Store(StoreError::UnlockSecretEmpty)),
        "{error}"
    );
}

#[test]
fn the_unlock_secret_cap_counts_its_line_ending() {
    let scratch = Scratch::new("cap");
    let full = vec![b'k'; 4096];
    let created = scratch.unlock("created", &full);
    drop(SecretService::spawn(scratch.config(created, StoreCreation::CreateNew)).unwrap());
    let with_newline = scratch.unlock("newline", &[&full[..], b"\n"].concat());
    let error = SecretService::spawn(scratch.config(with_newline, StoreCreation::OpenExisting))
        .unwrap_err();
    assert!(
        matches!(
            error,
            keyward::Error::Store(StoreError::UnlockSecretTooLong { cap: 4096 })
        ),
        "{error}"
    );
}
