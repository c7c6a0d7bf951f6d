//! Property: keys leave and enter a signer only as age ciphertext that the stock `age` tool
//! reads and writes, and nothing a bad import brings is kept.
//!
//! - A backup, decrypted by the `age` binary with the recipient's identity, holds every key:
//!   each secret's public key (computed here with the dalek crates) is the one the service
//!   reports, consensus watermarks are carried, and the backup-signing key's signature over the
//!   text verifies under the key the service reports for the store.
//! - A key encrypted by the `age` binary (binary and armored) to the provisioning recipient is
//!   imported, signs (or agrees) as its public key says, and survives a restart.
//! - Each bad import is its own typed error, nothing is stored (the store file is unchanged),
//!   and the service carries on.
//!
//! These need `age` and `age-keygen` (Debian's `age` package; `.ci/run` installs it). Without
//! them each test says so loudly and passes, except under CI (`CI` set), where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod age_util;
mod common;
mod store_util;

use std::path::PathBuf;

use age_util::{age_decrypt, age_encrypt, age_is_installed, age_keygen};
use keyward::{
    AgeError, AgeRecipient, ChainId, ConsensusMessage, Error, KeyId, KeyService, KeySpec,
    PublicKey, Purpose, SecretService,
};
use store_util::{Scratch, create_config, open_config};

/// A fresh sealed store with an account, a consensus, a discovery and a handshake key; the
/// consensus key has signed a vote on one chain.
struct Fixture {
    scratch: Scratch,
    unlock: PathBuf,
    service: SecretService,
    keys: Vec<KeyId>,
}

const CHAIN: ChainId = ChainId([0x42; 32]);

fn fixture(name: &str) -> Fixture {
    let scratch = Scratch::new(name);
    let unlock = scratch.unlock_file("unlock", b"backup and import test\n");
    let service = SecretService::spawn(create_config(&scratch.store(), &unlock)).unwrap();
    let keys: Vec<KeyId> = Purpose::ALL
        .iter()
        .map(|purpose| service.generate_key(KeySpec::new(*purpose)).unwrap())
        .collect();
    let vote = ConsensusMessage::vote(CHAIN, 3, 17, [0xd1; 32]);
    service.sign_consensus(keys[1], &vote).unwrap();
    Fixture {
        scratch,
        unlock,
        service,
        keys,
    }
}

/// The lines of a decrypted backup, by their first word.
fn lines_of<'a>(text: &'a str, first: &str) -> Vec<Vec<&'a str>> {
    text.lines()
        .map(|line| line.split(' ').collect::<Vec<_>>())
        .filter(|fields| fields[0] == first)
        .collect()
}

fn bytes32(hex: &str) -> [u8; 32] {
    common::unhex(hex).try_into().unwrap()
}

#[test]
fn a_backup_read_by_the_age_tool_holds_every_key_its_watermarks_and_a_valid_signature() {
    if !age_is_installed() {
        return;
    }
    let fixture = fixture("backup");
    let identity = age_keygen(&fixture.scratch.base, "operator.txt");
    let recipient: AgeRecipient = identity.recipient.parse().unwrap();
    assert_eq!(
        recipient.to_string(),
        identity.recipient,
        "the recipient round trips"
    );
    let backup = fixture.service.backup(&recipient).unwrap();
    let file = fixture.scratch.base.join("backup.age");
    std::fs::write(&file, &backup).unwrap();

    let text = String::from_utf8(age_decrypt(&identity, &file).unwrap()).unwrap();
    assert!(text.starts_with("keyward-backup v1\n"));
    // Every key, with the secret that gives the public key the service reports.
    let keys = lines_of(&text, "key");
    assert_eq!(keys.len(), fixture.keys.len());
    for key in &fixture.keys {
        let info = fixture.service.key_info(*key).unwrap();
        let line = keys
            .iter()
            .find(|fields| fields[1] == format!("{key:#}"))
            .unwrap_or_else(|| panic!("no line for {key:#} in\n{}", text));
        let algorithm = match info.public_key {
            PublicKey::Ed25519(_) => ("ed25519", 0),
            PublicKey::X25519(_) => ("x25519", 1),
        };
        assert_eq!(line[3], algorithm.0);
        assert_eq!(line[6], "public");
        assert_eq!(bytes32(line[7]), info.public_key.to_bytes());
        assert_eq!(line[8], "secret");
        let secret = bytes32(line[9]);
        assert_eq!(
            store_util::public_of(algorithm.1, &secret),
            info.public_key.to_bytes(),
            "the backed-up secret of {key:#} is not its key's"
        );
    }
    // The consensus key's watermark.
    let marks = lines_of(&text, "watermark");
    assert_eq!(marks.len(), 1, "{text}");
    assert_eq!(marks[0][1], format!("{:#}", fixture.keys[1]));
    assert_eq!(
        &marks[0][2..],
        &[
            "chain",
            &common::hex(&CHAIN.0),
            "vote",
            "epoch",
            "3",
            "round",
            "17",
            "digest",
            &common::hex(&[0xd1; 32]),
        ]
    );
    // Signed by the store's backup-signing key, over everything before the signature line.
    let signing = fixture
        .service
        .provisioning_recipient()
        .unwrap()
        .signing_key;
    let at = text.find("signature ").unwrap();
    let signature_hex = text[at + "signature ".len()..].trim_end();
    let signature = ed25519_dalek::Signature::from_slice(&common::unhex(signature_hex)).unwrap();
    signing
        .verify_strict(&text.as_bytes()[..at], &signature)
        .expect("the backup's signature verifies under the store's backup-signing key");
    assert_eq!(
        lines_of(&text, "signing-key")[0][1],
        common::hex(signing.as_bytes())
    );
    // The signature covers the text: one changed byte and it no longer verifies.
    let mut altered = text.as_bytes()[..at].to_vec();
    altered[20] ^= 1;
    assert!(signing.verify_strict(&altered, &signature).is_err());

    // Another identity cannot read it.
    let stranger = age_keygen(&fixture.scratch.base, "stranger.txt");
    assert!(age_decrypt(&stranger, &file).is_err());
}

#[test]
fn a_key_encrypted_by_the_age_tool_to_the_provisioning_recipient_is_imported_and_kept() {
    if !age_is_installed() {
        return;
    }
    let fixture = fixture("import");
    let provisioning = fixture.service.provisioning_recipient().unwrap();
    assert!(provisioning.is_signed_by(&provisioning.signing_key));
    let recipient = provisioning.recipient.to_string();
    assert!(recipient.starts_with("age1"), "{recipient}");

    // An Ed25519 consensus seed, as 64 hex digits and a newline, in a binary age file.
    let seed = [0x5e; 32];
    let consensus_public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    let encrypted = age_encrypt(
        &recipient,
        false,
        format!("{}\n", common::hex(&seed)).as_bytes(),
    );
    let consensus = fixture
        .service
        .import_key(
            Purpose::Consensus,
            &PublicKey::Ed25519(consensus_public),
            &encrypted,
        )
        .unwrap();
    let vote = ConsensusMessage::vote(CHAIN, 9, 1, [7; 32]);
    let signature = fixture.service.sign_consensus(consensus, &vote).unwrap();
    consensus_public
        .verify_strict(&vote.signing_bytes(), &signature)
        .unwrap();

    // An X25519 handshake scalar, as 32 raw bytes, in an armored age file.
    let scalar = [0x17; 32];
    let handshake_secret = x25519_dalek::StaticSecret::from(scalar);
    let handshake_public = x25519_dalek::PublicKey::from(&handshake_secret);
    let armored = age_encrypt(&recipient, true, &scalar);
    assert!(armored.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----"));
    let handshake = fixture
        .service
        .import_key(
            Purpose::NetworkHandshake,
            &PublicKey::X25519(handshake_public),
            &armored,
        )
        .unwrap();
    let peer = x25519_dalek::StaticSecret::from([0x71; 32]);
    let ours = fixture
        .service
        .diffie_hellman(handshake, &x25519_dalek::PublicKey::from(&peer))
        .unwrap();
    assert_eq!(
        ours.expose_secret(),
        peer.diffie_hellman(&handshake_public).as_bytes()
    );

    // Durable: a restarted service on the store holds both, with the same recipient.
    let store = fixture.scratch.store();
    drop(fixture.service);
    let service = SecretService::spawn(open_config(&store, &fixture.unlock)).unwrap();
    assert_eq!(
        service.public_key(consensus).unwrap(),
        PublicKey::Ed25519(consensus_public)
    );
    assert_eq!(
        service.public_key(handshake).unwrap(),
        PublicKey::X25519(handshake_public)
    );
    // The vote's watermark survived too: the same round with another block is refused.
    let conflicting = ConsensusMessage::vote(CHAIN, 9, 1, [8; 32]);
    assert!(matches!(
        service.sign_consensus(consensus, &conflicting),
        Err(Error::WouldDoubleSign { .. })
    ));
    let again = service.provisioning_recipient().unwrap();
    assert_eq!(again.recipient, provisioning.recipient);
    assert_eq!(again.signing_key, provisioning.signing_key);
}

#[test]
fn each_bad_import_is_its_own_error_and_stores_nothing() {
    if !age_is_installed() {
        return;
    }
    let fixture = fixture("bad-import");
    let service = &fixture.service;
    let recipient = service
        .provisioning_recipient()
        .unwrap()
        .recipient
        .to_string();
    let seed = [0x3c; 32];
    let public = PublicKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key());
    let good = age_encrypt(&recipient, false, &seed);
    let state_before = fixture.scratch.state();
    let keys_before = service.list_keys().unwrap();

    let stranger = age_keygen(&fixture.scratch.base, "stranger.txt");
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 5);
    let mut tampered = good.clone();
    let last = tampered.len() - 20;
    tampered[last] ^= 0x01;
    let other_public =
        PublicKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[0x3d; 32]).verifying_key());

    let cases: Vec<(&str, Purpose, PublicKey, Vec<u8>)> = vec![
        (
            "another recipient",
            Purpose::Account,
            public,
            age_encrypt(&stranger.recipient, false, &seed),
        ),
        ("truncated", Purpose::Account, public, truncated),
        ("tampered", Purpose::Account, public, tampered),
        ("not age at all", Purpose::Account, public, seed.to_vec()),
        (
            "another public key",
            Purpose::Account,
            other_public,
            good.clone(),
        ),
        (
            "a purpose of another algorithm",
            Purpose::NetworkHandshake,
            public,
            good.clone(),
        ),
        (
            "an Ed25519 seed as a handshake key",
            Purpose::NetworkHandshake,
            PublicKey::X25519(x25519_dalek::PublicKey::from(public.to_bytes())),
            good.clone(),
        ),
        (
            "31 bytes",
            Purpose::Account,
            public,
            age_encrypt(&recipient, false, &seed[..31]),
        ),
        ("too large", Purpose::Account, public, vec![b'a'; 5000]),
    ];
    let mut seen = Vec::new();
    for (name, purpose, claimed, file) in cases {
        let error = service.import_key(purpose, &claimed, &file).unwrap_err();
        let kind = match &error {
            Error::ImportUndecryptable {
                error: AgeError::NoMatchingRecipient,
            } => "not for this recipient".to_owned(),
            Error::ImportUndecryptable { error } => format!("undecryptable: {error:?}"),
            Error::ImportPublicKeyMismatch { .. } => "public key mismatch".to_owned(),
            Error::PurposeAlgorithmMismatch { .. } => "purpose mismatch".to_owned(),
            Error::ImportMalformed => "malformed".to_owned(),
            Error::KeyAlreadyHeld { .. } => "already held".to_owned(),
            Error::ImportTooLarge { .. } => "too large".to_owned(),
            other => panic!("{name}: unexpected {other:?}"),
        };
        println!("{name}: {kind}: {error}");
        seen.push((name, kind));
        assert!(
            !error.to_string().contains(&common::hex(&seed)),
            "an error carries the secret"
        );
        assert_eq!(
            service.list_keys().unwrap(),
            keys_before,
            "{name} stored a key"
        );
        assert_eq!(
            fixture.scratch.state(),
            state_before,
            "{name} wrote the store"
        );
    }
    let expect = |name: &str, kind: &str| {
        let found = seen.iter().find(|(n, _)| *n == name).unwrap();
        assert!(found.1.starts_with(kind), "{name}: {}", found.1);
    };
    expect("another recipient", "not for this recipient");
    expect("truncated", "undecryptable");
    expect("tampered", "undecryptable");
    expect("not age at all", "undecryptable: NotAnAgeFile");
    expect("another public key", "public key mismatch");
    expect("a purpose of another algorithm", "purpose mismatch");
    expect("an Ed25519 seed as a handshake key", "public key mismatch");
    expect("31 bytes", "malformed");
    expect("too large", "too large");
    // A duplicate: the same key imported twice (the store's own keys' secrets are not known
    // here, so one is brought in first).
    let imported = service
        .import_key(Purpose::Account, &public, &good)
        .unwrap();
    match service.import_key(Purpose::Account, &public, &good) {
        Err(Error::KeyAlreadyHeld { key }) => assert_eq!(key, imported),
        other => panic!("a second import of one key: {other:?}"),
    }
    // The service carries on: every earlier key still works.
    for key in &fixture.keys {
        match service.public_key(*key).unwrap() {
            PublicKey::Ed25519(_) => common::assert_signs(service, *key, &[1; 32]),
            PublicKey::X25519(_) => {
                let peer = x25519_dalek::PublicKey::from([9; 32]);
                service.diffie_hellman(*key, &peer).unwrap();
            }
        }
    }
}

#[test]
fn a_recipient_that_is_not_one_is_refused_before_anything_is_encrypted() {
    for bad in [
        "",
        "age1",
        "Age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq",
        "AGE-SECRET-KEY-1QYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSQ6MVKK6",
        "npub1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq",
        "age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gx",
    ] {
        assert!(bad.parse::<AgeRecipient>().is_err(), "{bad:?} parsed");
    }
    // Bech32 is one case or the other; both name the same key.
    let lower: AgeRecipient = "age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq"
        .parse()
        .unwrap();
    let upper: AgeRecipient = "AGE1QYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQS3290GQ"
        .parse()
        .unwrap();
    assert_eq!(lower, upper);
    // A low-order point parses (it is 32 bytes) but the signer refuses to encrypt to it.
    let scratch = Scratch::new("low-order");
    let unlock = scratch.unlock_file("unlock", b"low order\n");
    let service = SecretService::spawn(create_config(&scratch.store(), &unlock)).unwrap();
    service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    let zero = AgeRecipient::from_x25519(&x25519_dalek::PublicKey::from([0u8; 32]));
    assert!(matches!(
        service.backup(&zero),
        Err(Error::BadRecipient { .. })
    ));
    common::serving_key(&service);
}

/// docs/backup-format.md's derivation, computed here from the unlock secret alone: the
/// provisioning and backup-signing keys are HKDF-SHA256 of the key-encryption key, salted with
/// the store id, and they are the same after a restart.
#[test]
fn the_store_keys_are_derived_as_documented_and_survive_a_restart() {
    let scratch = Scratch::new("derivation");
    let secret = b"derivation test\n";
    let unlock = scratch.unlock_file("unlock", secret);
    let service = SecretService::spawn(create_config(&scratch.store(), &unlock)).unwrap();
    let provisioning = service.provisioning_recipient().unwrap();
    drop(service);
    let state = scratch.state();
    // The reader strips one trailing newline from an unlock file.
    let kek = store_util::derive_kek(&secret[..secret.len() - 1], &state);
    let store_id = &state[10..18];
    assert_eq!(store_id, provisioning.store);
    let derive = |info: &[u8]| {
        let mut seed = [0u8; 32];
        hkdf::Hkdf::<sha2::Sha256>::new(Some(store_id), kek.as_slice())
            .expand(info, &mut seed)
            .unwrap();
        seed
    };
    let scalar = derive(b"keyward/v1 provisioning x25519");
    assert_eq!(
        provisioning.recipient,
        AgeRecipient::from_x25519(&x25519_dalek::PublicKey::from(
            &x25519_dalek::StaticSecret::from(scalar)
        ))
    );
    let signing =
        ed25519_dalek::SigningKey::from_bytes(&derive(b"keyward/v1 backup signing ed25519"));
    assert_eq!(provisioning.signing_key, signing.verifying_key());
    assert!(provisioning.is_signed_by(&signing.verifying_key()));
    // A restart gives the same keys; another store gives others.
    let service = SecretService::spawn(open_config(&scratch.store(), &unlock)).unwrap();
    assert_eq!(service.provisioning_recipient().unwrap(), provisioning);
    let other = Scratch::new("derivation-other");
    let other_unlock = other.unlock_file("unlock", secret);
    let other_service = SecretService::spawn(create_config(&other.store(), &other_unlock)).unwrap();
    let theirs = other_service.provisioning_recipient().unwrap();
    assert_ne!(theirs.recipient, provisioning.recipient);
    assert!(!theirs.is_signed_by(&provisioning.signing_key));
}
