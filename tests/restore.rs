//! Property: a backup restored into a new store (after the operator re-encrypted it offline to
//! the new store's provisioning recipient with the stock `age` tool) brings every key back with
//! its public key and its watermarks, so a restored consensus key never signs below a round it
//! signed before; a restore is checked whole before anything is stored, refused unless the
//! pinned backup-signing key signed it, and safe to run twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod age_util;
mod common;
mod store_util;

use age_util::{age_decrypt, age_encrypt, age_is_installed, age_keygen, age_reencrypt};
use keyward::{
    AgeRecipient, BackupProblem, ChainId, ConsensusMessage, Error, KeyId, KeyService, KeySpec,
    PublicKey, Purpose, SecretService,
};
use store_util::{Scratch, create_config, open_config};

const CHAIN: ChainId = ChainId([0x24; 32]);

/// A store with a key of every purpose; its consensus key signed a vote at epoch 2, round 30.
fn source(scratch: &Scratch) -> (SecretService, Vec<KeyId>) {
    let unlock = scratch.unlock_file("source-unlock", b"source store\n");
    let service =
        SecretService::spawn(create_config(&scratch.base.join("source"), &unlock)).unwrap();
    let keys: Vec<KeyId> = Purpose::ALL
        .iter()
        .map(|purpose| service.generate_key(KeySpec::new(*purpose)).unwrap())
        .collect();
    service
        .sign_consensus(keys[1], &ConsensusMessage::vote(CHAIN, 2, 30, [0xaa; 32]))
        .unwrap();
    (service, keys)
}

/// A backup of `source` to a fresh operator identity: the identity, the file, and the
/// backup-signing key the operator pins.
fn backed_up(
    source: &SecretService,
    scratch: &Scratch,
) -> (
    age_util::Identity,
    std::path::PathBuf,
    ed25519_dalek::VerifyingKey,
) {
    let operator = age_keygen(&scratch.base, "operator.txt");
    let backup_file = scratch.base.join("backup.age");
    std::fs::write(
        &backup_file,
        source
            .backup(&operator.recipient.parse::<AgeRecipient>().unwrap())
            .unwrap(),
    )
    .unwrap();
    let pinned = source.provisioning_recipient().unwrap().signing_key;
    (operator, backup_file, pinned)
}

/// An empty target store.
fn target(scratch: &Scratch) -> (SecretService, std::path::PathBuf) {
    let unlock = scratch.unlock_file("target-unlock", b"target store\n");
    let service = SecretService::spawn(create_config(&scratch.store(), &unlock)).unwrap();
    (service, unlock)
}

#[test]
fn a_backup_restored_into_a_new_store_brings_keys_and_watermarks() {
    if !age_is_installed() {
        return;
    }
    let scratch = Scratch::new("restore");
    let (source, source_keys) = source(&scratch);
    let (operator, backup_file, pinned) = backed_up(&source, &scratch);
    let publics: Vec<PublicKey> = source_keys
        .iter()
        .map(|key| source.public_key(*key).unwrap())
        .collect();
    drop(source);

    let (target, unlock) = target(&scratch);
    let recipient = target
        .provisioning_recipient()
        .unwrap()
        .recipient
        .to_string();
    let restore_file = age_reencrypt(&operator, &backup_file, &recipient);
    let report = target.restore(&restore_file, &pinned).unwrap();
    assert_eq!(report.added.len(), 4);
    assert_eq!((report.keys_in_backup, report.marks_in_backup), (4, 1));
    let restored: Vec<PublicKey> = report.added.iter().map(|(_, public)| *public).collect();
    assert_eq!(restored, publics, "the same keys, in the backup's order");
    let consensus = report.added[1].0;

    // The watermark came with the key: round 30 with another block, and anything below, are
    // refused; the next round signs, under the old public key.
    for (epoch, round) in [(2, 30), (2, 29), (1, 99)] {
        let vote = ConsensusMessage::vote(CHAIN, epoch, round, [0xbb; 32]);
        assert!(
            matches!(
                target.sign_consensus(consensus, &vote),
                Err(Error::WouldDoubleSign { .. })
            ),
            "a restored key signed ({epoch}, {round})"
        );
    }
    let next = ConsensusMessage::vote(CHAIN, 2, 31, [0xbb; 32]);
    let signature = target.sign_consensus(consensus, &next).unwrap();
    publics[1]
        .as_ed25519()
        .unwrap()
        .verify_strict(&next.signing_bytes(), &signature)
        .unwrap();
    common::assert_signs(&target, report.added[0].0, &[5; 32]);

    // Again: nothing to add, nothing lost.
    let again = target.restore(&restore_file, &pinned).unwrap();
    assert!(again.added.is_empty() && again.raised == 0, "{again:?}");
    assert_eq!(target.list_keys().unwrap().len(), 4);

    // Durable: a restarted service holds the keys and the watermark (now round 31).
    drop(target);
    let reopened = SecretService::spawn(open_config(&scratch.store(), &unlock)).unwrap();
    assert_eq!(reopened.list_keys().unwrap().len(), 4);
    assert!(matches!(
        reopened.sign_consensus(consensus, &ConsensusMessage::vote(CHAIN, 2, 31, [0xcc; 32])),
        Err(Error::WouldDoubleSign { .. })
    ));
}

#[test]
fn a_restore_is_refused_whole_unless_the_pinned_key_signed_it() {
    if !age_is_installed() {
        return;
    }
    let scratch = Scratch::new("restore-refused");
    let (source, _) = source(&scratch);
    let (operator, backup_file, pinned) = backed_up(&source, &scratch);
    let (target, _) = target(&scratch);
    let recipient = target
        .provisioning_recipient()
        .unwrap()
        .recipient
        .to_string();
    let state_before = scratch.state();
    let refused = |file: &[u8], signed_by: &ed25519_dalek::VerifyingKey| {
        let error = target.restore(file, signed_by).unwrap_err();
        assert!(
            target.list_keys().unwrap().is_empty(),
            "{error}: a key was stored"
        );
        assert_eq!(
            scratch.state(),
            state_before,
            "{error}: the store was written"
        );
        error
    };

    // Signed by another key than the one pinned.
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[0x99; 32]).verifying_key();
    let good = age_reencrypt(&operator, &backup_file, &recipient);
    assert!(matches!(
        refused(&good, &stranger),
        Error::RestoreRefused {
            problem: BackupProblem::SignatureInvalid
        }
    ));
    // Altered by whoever re-encrypted it: a round lowered in the watermark line.
    let text = String::from_utf8(age_decrypt(&operator, &backup_file).unwrap()).unwrap();
    let lowered = text.replace(" round 30 ", " round 3 ");
    assert_ne!(lowered, text);
    assert!(matches!(
        refused(&age_encrypt(&recipient, false, lowered.as_bytes()), &pinned),
        Error::RestoreRefused {
            problem: BackupProblem::SignatureInvalid
        }
    ));
    // Truncated, or with one ciphertext byte flipped.
    assert!(matches!(
        refused(&good[..good.len() - 10], &pinned),
        Error::ImportUndecryptable { .. }
    ));
    let mut flipped = good.clone();
    let at = flipped.len() - 40;
    flipped[at] ^= 0x20;
    assert!(matches!(
        refused(&flipped, &pinned),
        Error::ImportUndecryptable { .. }
    ));
    // Not re-encrypted: still for the operator's recipient.
    assert!(matches!(
        refused(&std::fs::read(&backup_file).unwrap(), &pinned),
        Error::ImportUndecryptable { .. }
    ));
    // Not a backup at all, though encrypted to the right recipient.
    assert!(matches!(
        refused(&age_encrypt(&recipient, false, b"hello"), &pinned),
        Error::RestoreRefused {
            problem: BackupProblem::NotABackup
        }
    ));
    // The service carries on, and the good file then restores.
    common::serving_key(&target);
    assert_eq!(target.restore(&good, &pinned).unwrap().added.len(), 4);
}

#[test]
fn a_consensus_key_on_two_chains_is_refused_rather_than_restored_without_its_watermarks() {
    if !age_is_installed() {
        return;
    }
    let scratch = Scratch::new("restore-two-chains");
    let (source, keys) = source(&scratch);
    source
        .sign_consensus(
            keys[1],
            &ConsensusMessage::vote(ChainId([0x25; 32]), 1, 1, [1; 32]),
        )
        .unwrap();
    let (operator, backup_file, pinned) = backed_up(&source, &scratch);
    let (target, _) = target(&scratch);
    let recipient = target
        .provisioning_recipient()
        .unwrap()
        .recipient
        .to_string();
    let file = age_reencrypt(&operator, &backup_file, &recipient);
    assert!(matches!(
        target.restore(&file, &pinned),
        Err(Error::RestoreRefused {
            problem: BackupProblem::TooManyChains
        })
    ));
    assert!(target.list_keys().unwrap().is_empty());
}
