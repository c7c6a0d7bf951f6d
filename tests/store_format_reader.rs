//! docs/store-format.md read by a second implementation: a store file keyward wrote, read with
//! nothing but that page's layout and the RustCrypto and dalek primitives it names (not
//! keyward's parser or its seals): the key derivation, the three seals and their associated
//! data, the public keys, the watermark records. And what the page says about rollback and
//! about the unlock secret's line ending, as behaviour: an older state put back alone is
//! refused, an older whole directory opens without error, a mix of two states does not, and
//! one trailing newline is removed before the cap applies.
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

/// One key record as the page's reader finds it, its seal opened.
#[derive(Debug, PartialEq, Eq)]
struct Found {
    slot: u16,
    id: String,
    purpose: u8,
    algorithm: u8,
    created: u64,
    public_key: [u8; 32],
}

/// One watermark: epoch, round, digest.
type Mark = (u64, u64, [u8; 32]);

/// One watermark record as the page's reader finds it: the key's slot, the chain, and the
/// proposal, vote and timeout watermarks.
#[derive(Debug, PartialEq, Eq)]
struct FoundMarks {
    slot: u16,
    chain: [u8; 32],
    marks: [Option<Mark>; 3],
}

/// What the page's reader finds in a state file.
struct Read {
    sequence: u64,
    keys: Vec<Found>,
    watermarks: Vec<FoundMarks>,
}

/// The key-encryption key, by the page's key derivation, with the header's costs and salt.
fn kek_of(file: &[u8], unlock_secret: &[u8]) -> [u8; 32] {
    let (memory, passes, lanes) = (u32_at(file, 19), u32_at(file, 23), u32_at(file, 27));
    let mut kek = [0u8; 32];
    argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(memory, passes, lanes, Some(32)).unwrap(),
    )
    .hash_password_into(unlock_secret, &file[31..47], &mut kek)
    .unwrap();
    kek
}

/// Whether the manifest seal opens over the file as it stands (checklist step 5).
fn manifest_opens(kek: &[u8; 32], file: &[u8]) -> bool {
    let manifest_data = [
        &b"keyward-store/v1 manifest"[..],
        &file[87..119],
        &file[119..135],
        &Sha256::digest(&file[175..])[..],
    ]
    .concat();
    assert_eq!(manifest_data.len(), 105);
    opens(
        kek,
        &file[135..159],
        &manifest_data,
        &mut [],
        &file[159..175],
    )
}

/// The state file read by docs/store-format.md alone ("Reading a store file by hand"), every
/// check of the page asserted.
fn read_as_documented(file: &[u8], unlock_secret: &[u8]) -> Read {
    // Step 1: the header.
    assert!(file.len() >= 175);
    assert_eq!(&file[0..8], b"KWSTORE\0");
    assert_eq!(u16_at(file, 8), 1, "format version");
    let store_id = &file[10..18];
    assert_eq!(file[18], 1, "Argon2id");
    let (memory, passes, lanes) = (u32_at(file, 19), u32_at(file, 23), u32_at(file, 27));
    assert_eq!(
        (memory, passes, lanes),
        (TEST_KDF.memory_kib, TEST_KDF.passes, TEST_KDF.lanes)
    );
    assert_eq!(Sha256::digest(&file[0..87])[..], file[87..119], "checksum");
    // Step 2: the body and the records' places.
    let sequence = u64_at(file, 119);
    let count = u32_at(file, 127) as usize;
    let watermark_count = u32_at(file, 131) as usize;
    assert_eq!(file.len(), 175 + 144 * count + 181 * watermark_count);
    let (key_records, watermark_records) = file[175..].split_at(144 * count);
    // Step 3: the key-encryption key.
    let kek = kek_of(file, unlock_secret);
    // Step 4: the verifier.
    let verifier_data = [&b"keyward-store/v1 verifier"[..], &file[0..47]].concat();
    assert!(
        opens(&kek, &file[47..71], &verifier_data, &mut [], &file[71..87]),
        "verifier"
    );
    // Step 5: the manifest, over the key records and the watermark records.
    assert!(manifest_opens(&kek, file), "manifest");
    // Step 6: each key record.
    let mut keys: Vec<Found> = Vec::new();
    for record in key_records.chunks_exact(144) {
        let slot = u16_at(record, 0);
        assert!(
            keys.last().is_none_or(|last| last.slot < slot),
            "slots increase"
        );
        let record_data = [
            &b"keyward-store/v1 record"[..],
            store_id,
            &[1, 0],
            &record[0..72],
        ]
        .concat();
        assert_eq!(record_data.len(), 105);
        let mut secret: [u8; 32] = record[96..128].try_into().unwrap();
        assert!(
            opens(
                &kek,
                &record[72..96],
                &record_data,
                &mut secret,
                &record[128..144]
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
        assert_eq!(public_key[..], record[40..72], "public key of slot {slot}");
        assert!(
            !file.windows(32).any(|window| window == secret),
            "the secret of slot {slot} is in the file in the clear"
        );
        assert_eq!(
            algorithm,
            u8::from(purpose == 3),
            "algorithm of slot {slot}"
        );
        let id = hex(&[store_id, &record[2..18]].concat());
        assert!(keys.iter().all(|key| key.id != id), "key ids are unique");
        keys.push(Found {
            slot,
            id,
            purpose,
            algorithm,
            created: u64_at(record, 20),
            public_key,
        });
    }
    // Step 7: each watermark record.
    let mut watermarks: Vec<FoundMarks> = Vec::new();
    for record in watermark_records.chunks_exact(181) {
        let slot = u16_at(record, 0);
        let chain: [u8; 32] = record[2..34].try_into().unwrap();
        assert!(
            watermarks
                .last()
                .is_none_or(|last| (last.slot, last.chain) < (slot, chain)),
            "(slot, chain) increases"
        );
        assert!(
            keys.iter().any(|key| key.slot == slot && key.purpose == 1),
            "the watermark record of slot {slot} belongs to a consensus key"
        );
        assert!(
            watermarks.iter().filter(|found| found.slot == slot).count() < 4,
            "at most four chains for slot {slot}"
        );
        let mut marks = [None; 3];
        for (kind, mark) in record[34..].chunks_exact(49).enumerate() {
            marks[kind] = match mark[0] {
                0 => {
                    assert!(mark[1..].iter().all(|&byte| byte == 0), "an unset mark");
                    None
                }
                1 => Some((
                    u64_at(mark, 1),
                    u64_at(mark, 9),
                    mark[17..49].try_into().unwrap(),
                )),
                flag => panic!("watermark flag {flag}"),
            };
        }
        watermarks.push(FoundMarks { slot, chain, marks });
    }
    Read {
        sequence,
        keys,
        watermarks,
    }
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
        .enumerate()
        .map(|(slot, &purpose)| {
            let id = service.generate_key(KeySpec::new(purpose)).unwrap();
            let public = service.public_key(id).unwrap();
            Found {
                slot: u16::try_from(slot).unwrap(),
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
    let read = read_as_documented(&state, secret);
    assert!(
        !state.windows(secret.len()).any(|window| window == secret),
        "the unlock secret is in the file"
    );
    // Created at 0, then one sealed change for each of five generates and one drop.
    assert_eq!(read.sequence, 6);
    assert_eq!(read.watermarks, [], "no consensus message was signed");
    let now = started + 60;
    for (found, expected) in read.keys.iter().zip(expected.iter_mut()) {
        assert!((started..now).contains(&found.created), "{found:?}");
        expected.created = found.created;
    }
    assert_eq!(read.keys, expected);
    let id_file = std::fs::read_to_string(scratch.store().join("keyward-store.id")).unwrap();
    assert_eq!(id_file, format!("{}\n", &expected[0].id[..16]));

    // The previous copy is the whole state before the drop: the dropped key is still in it.
    let previous = std::fs::read(scratch.store().join("keyward-store.previous")).unwrap();
    let previous = read_as_documented(&previous, secret);
    assert_eq!(previous.sequence, 5);
    assert_eq!(previous.keys.len(), 5);
    assert_eq!(previous.keys[4].id, format!("{dropped:#}"));
    assert_eq!(previous.keys[4].public_key, dropped_public.to_bytes());
}

#[test]
fn watermark_records_follow_the_key_records_and_the_manifest_covers_them() {
    let scratch = Scratch::new("watermarks");
    let secret = b"hunter2";
    let unlock = scratch.unlock("unlock", secret);
    let config = scratch.config(unlock.clone(), StoreCreation::CreateNew);
    let service = SecretService::spawn(config).unwrap();
    let first = service
        .generate_key(KeySpec::new(Purpose::Consensus))
        .unwrap();
    service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    let second = service
        .generate_key(KeySpec::new(Purpose::Consensus))
        .unwrap();
    let vote = |key, chain: u8, round, digest: u8| {
        service
            .sign_consensus(
                key,
                &keyward::ConsensusMessage::vote(
                    keyward::ChainId([chain; 32]),
                    1,
                    round,
                    [digest; 32],
                ),
            )
            .unwrap();
    };
    // Signed out of file order: the file holds them by (slot, chain).
    vote(second, 1, 4, 0x44);
    vote(first, 2, 7, 0x77);
    vote(first, 1, 1, 0x11);
    vote(first, 1, 2, 0x22);
    let held = service.watermarks(first).unwrap();
    drop(service);

    let state = std::fs::read(scratch.store().join("keyward-store")).unwrap();
    let read = read_as_documented(&state, secret);
    // Created at 0, three generates, four votes each in a new round.
    assert_eq!(read.sequence, 7);
    assert_eq!(read.keys.len(), 3);
    assert_eq!(state.len(), 175 + 3 * 144 + 3 * 181);
    let vote_mark = |round, digest: u8| [None, Some((1, round, [digest; 32])), None];
    assert_eq!(
        read.watermarks,
        [
            FoundMarks {
                slot: 0,
                chain: [1; 32],
                marks: vote_mark(2, 0x22),
            },
            FoundMarks {
                slot: 0,
                chain: [2; 32],
                marks: vote_mark(7, 0x77),
            },
            FoundMarks {
                slot: 2,
                chain: [1; 32],
                marks: vote_mark(4, 0x44),
            },
        ]
    );
    let mut held: Vec<_> = held
        .iter()
        .map(|marks| {
            let vote = marks.vote.unwrap();
            (marks.chain.0, vote.epoch, vote.round, vote.digest)
        })
        .collect();
    held.sort();
    assert_eq!(
        held,
        [([1; 32], 1, 2, [0x22; 32]), ([2; 32], 1, 7, [0x77; 32])],
        "what the service reports is what the file holds"
    );

    // The watermarks are in the clear but under the manifest: a lowered round does not open it,
    // for this reader and for keyward.
    let kek = kek_of(&state, secret);
    let mut forged = state.clone();
    // The first watermark record's vote round: after slot, chain, the proposal, flag and epoch.
    let round_at = 175 + 3 * 144 + 2 + 32 + 49 + 1 + 8;
    assert_eq!(forged[round_at], 2);
    forged[round_at] = 1;
    assert!(!manifest_opens(&kek, &forged));
    // Nor does a file without its last watermark record (its count fixed up).
    let mut shorter = state[..state.len() - 181].to_vec();
    shorter[131..135].copy_from_slice(&2u32.to_le_bytes());
    assert!(!manifest_opens(&kek, &shorter));
    let state_path = scratch.store().join("keyward-store");
    std::fs::write(&state_path, &forged).unwrap();
    let error =
        SecretService::spawn(scratch.config(unlock, StoreCreation::OpenExisting)).unwrap_err();
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
}

#[test]
fn an_older_state_alone_is_refused_a_whole_older_directory_opens_and_a_mix_does_not() {
    let scratch = Scratch::new("rollback");
    let unlock = scratch.unlock("unlock", b"hunter2\n");
    let config = scratch.config(unlock.clone(), StoreCreation::CreateNew);
    let state_path = scratch.store().join("keyward-store");
    let previous_path = scratch.store().join("keyward-store.previous");
    let service = SecretService::spawn(config).unwrap();
    let kept = service
        .generate_key(KeySpec::new(Purpose::Consensus))
        .unwrap();
    let oldest = std::fs::read(&state_path).unwrap();
    let dropped = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    let directory_before_drop = (
        std::fs::read(&state_path).unwrap(),
        std::fs::read(&previous_path).unwrap(),
    );
    service.drop_key(dropped).unwrap();
    drop(service);
    let current = std::fs::read(&state_path).unwrap();
    let previous = std::fs::read(&previous_path).unwrap();
    assert_eq!(u64_at(&current, 119), 3);
    assert_eq!(u64_at(&previous, 119), 2);
    let reopen =
        || SecretService::spawn(scratch.config(unlock.clone(), StoreCreation::OpenExisting));

    // The current state's header and body (its sequence number) with the previous state's
    // records (counts fixed up): each part was sealed, the combination never was.
    let mut mixed = current[..175].to_vec();
    mixed[127..135].copy_from_slice(&previous[127..135]);
    mixed.extend_from_slice(&previous[175..]);
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

    // An older copy (sequence 1) put back over the state alone: the previous copy (sequence 2)
    // is newer than it, so the host refuses it.
    std::fs::write(&state_path, &oldest).unwrap();
    match reopen() {
        Err(keyward::Error::Store(StoreError::RolledBack {
            sequence: 1,
            previous: 2,
            ..
        })) => {}
        other => panic!("an older state opened: {:?}", other.map(|s| s.pid())),
    }
    assert_eq!(std::fs::read(&state_path).unwrap(), oldest);

    // The whole directory as it was before the drop put back: it opens without error, and the
    // dropped key is back.
    std::fs::write(&state_path, &directory_before_drop.0).unwrap();
    std::fs::write(&previous_path, &directory_before_drop.1).unwrap();
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
fn the_unlock_secret_cap_applies_after_its_line_ending_is_removed() {
    let scratch = Scratch::new("cap");
    let full = vec![b'k'; 4096];
    let created = scratch.unlock("created", &full);
    drop(SecretService::spawn(scratch.config(created, StoreCreation::CreateNew)).unwrap());
    for ending in [&b"\n"[..], b"\r\n"] {
        let unlock = scratch.unlock("ending", &[&full[..], ending].concat());
        let opened = SecretService::spawn(scratch.config(unlock, StoreCreation::OpenExisting));
        assert!(opened.is_ok(), "{:?}", opened.err());
    }
    for over in [vec![b'k'; 4097], [&[b'k'; 4097][..], b"\n"].concat()] {
        let unlock = scratch.unlock("over", &over);
        let error =
            SecretService::spawn(scratch.config(unlock, StoreCreation::OpenExisting)).unwrap_err();
        assert!(
            matches!(
                error,
                keyward::Error::Store(StoreError::UnlockSecretTooLong { cap: 4096 })
            ),
            "{} bytes: {error}",
            over.len()
        );
    }
}
