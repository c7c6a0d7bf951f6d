//! Property: a restore killed at any step of any of its durable writes never leaves a restored
//! consensus key without the watermarks it came with, and running the restore again finishes
//! it. A subprocess host restores a backup of four keys (two of them consensus keys that signed)
//! and asks its store's crash hook to SIGKILL it at each point of each write; after every kill
//! the store is reopened and every consensus key present must refuse to sign below or against
//! its backed-up watermark.
//!
//! Needs the `test-support` feature (the crash hook); `cargo test --all-features` has it.
#![cfg(feature = "test-support")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod age_util;
mod common;
mod store_util;

use std::time::Duration;

use age_util::{age_is_installed, age_keygen, age_reencrypt};
use keyward::testing::{StoreWritePoint, crash_at_store_write};
use keyward::{
    AgeRecipient, ChainId, ConsensusMessage, Error, KeyService, KeySpec, PublicKey, Purpose,
    SecretService,
};
use store_util::{Scratch, create_config, open_config};

const CHAIN: ChainId = ChainId([0x31; 32]);

/// Every point of a durable write, in the order the write reaches them.
const POINTS: [StoreWritePoint; 5] = StoreWritePoint::ALL;

/// The host: opens the target store, arms the crash hook, restores.
#[test]
#[ignore = "a subprocess role of the restore crash test: a host killed during a restore"]
fn role_restore_host() {
    if common::role().as_deref() != Some("restore-host") {
        return;
    }
    let service = SecretService::spawn(open_config(
        common::role_parameter("store").as_ref(),
        common::role_parameter("unlock").as_ref(),
    ))
    .unwrap();
    let file = std::fs::read(common::role_parameter("file")).unwrap();
    let signed_by = ed25519_dalek::VerifyingKey::from_bytes(
        &common::unhex(&common::role_parameter("signed-by"))
            .try_into()
            .unwrap(),
    )
    .unwrap();
    let point = POINTS[common::role_parameter("point").parse::<usize>().unwrap()];
    crash_at_store_write(point, common::role_parameter("skip").parse().unwrap());
    let report = service.restore(&file, &signed_by).unwrap();
    println!("NO CRASH {}", report.added.len());
}

#[test]
fn a_restore_killed_at_any_write_never_leaves_a_consensus_key_without_its_watermark() {
    if !age_is_installed() {
        return;
    }
    let scratch = Scratch::new("restore-crash");
    // The source: an account key, two consensus keys that signed, a handshake key.
    let source_unlock = scratch.unlock_file("source-unlock", b"source\n");
    let source =
        SecretService::spawn(create_config(&scratch.base.join("source"), &source_unlock)).unwrap();
    let mut consensus = Vec::new();
    for purpose in [
        Purpose::Account,
        Purpose::Consensus,
        Purpose::Consensus,
        Purpose::NetworkHandshake,
    ] {
        let key = source.generate_key(KeySpec::new(purpose)).unwrap();
        if purpose == Purpose::Consensus {
            let round = 40 + consensus.len() as u64;
            source
                .sign_consensus(key, &ConsensusMessage::vote(CHAIN, 5, round, [0xee; 32]))
                .unwrap();
            consensus.push((source.public_key(key).unwrap(), round));
        }
    }
    let operator = age_keygen(&scratch.base, "operator.txt");
    let backup = scratch.base.join("backup.age");
    std::fs::write(
        &backup,
        source
            .backup(&operator.recipient.parse::<AgeRecipient>().unwrap())
            .unwrap(),
    )
    .unwrap();
    let signed_by = common::hex(
        source
            .provisioning_recipient()
            .unwrap()
            .signing_key
            .as_bytes(),
    );
    drop(source);

    let mut kills = 0;
    for (point_index, point) in POINTS.iter().enumerate() {
        // Four keys, one write each: kill at the first, second, third and fourth.
        for skip in 0..4u32 {
            let case = format!("killed at {point:?} of write {}", skip + 1);
            let target = Scratch::new("restore-crash-target");
            let unlock = target.unlock_file("unlock", b"target\n");
            let service = SecretService::spawn(create_config(&target.store(), &unlock)).unwrap();
            let recipient = service
                .provisioning_recipient()
                .unwrap()
                .recipient
                .to_string();
            drop(service);
            let file = target.base.join("restore.age");
            std::fs::write(&file, age_reencrypt(&operator, &backup, &recipient)).unwrap();
            let store = target.store().display().to_string();
            let unlock_text = unlock.display().to_string();
            let file_text = file.display().to_string();
            let point_text = point_index.to_string();
            let skip_text = skip.to_string();
            let run = common::run_role(
                "role_restore_host",
                "restore-host",
                &[
                    ("store", &store),
                    ("unlock", &unlock_text),
                    ("file", &file_text),
                    ("signed-by", &signed_by),
                    ("point", &point_text),
                    ("skip", &skip_text),
                ],
                Duration::from_secs(60),
            );
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                run.status.and_then(|status| status.signal()),
                Some(libc::SIGKILL),
                "{case}: the host was not killed by its crash hook: {run:?}"
            );
            kills += 1;

            // Reopened: every consensus key present keeps its watermark.
            let service = SecretService::spawn(open_config(&target.store(), &unlock))
                .unwrap_or_else(|error| panic!("{case}: the store does not reopen: {error}"));
            let held = service.list_keys().unwrap();
            for (public, round) in &consensus {
                let Some(info) = held.iter().find(|info| info.public_key == *public) else {
                    continue;
                };
                for (epoch, at) in [(5, *round), (5, round - 1), (4, 100)] {
                    let vote = ConsensusMessage::vote(CHAIN, epoch, at, [0x0f; 32]);
                    assert!(
                        matches!(
                            service.sign_consensus(info.id, &vote),
                            Err(Error::WouldDoubleSign { .. })
                        ),
                        "{case}: a restored consensus key signed ({epoch}, {at}): its \
                         watermark was lost"
                    );
                }
            }
            // Again: the restore finishes, with every key.
            let file = std::fs::read(&file).unwrap();
            let verifying = ed25519_dalek::VerifyingKey::from_bytes(
                &common::unhex(&signed_by).try_into().unwrap(),
            )
            .unwrap();
            service.restore(&file, &verifying).unwrap();
            let held = service.list_keys().unwrap();
            assert_eq!(held.len(), 4, "{case}: the second restore did not finish");
            for (public, _) in &consensus {
                assert!(
                    held.iter().any(|info| info.public_key == *public
                        && matches!(info.public_key, PublicKey::Ed25519(_))),
                    "{case}: a consensus key is missing after the second restore"
                );
            }
        }
    }
    println!("{kills} kills, each store reopened with every restored consensus key guarded");
}
