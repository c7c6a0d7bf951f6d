//! The consensus key's double-sign guard, as behaviour: each rule through the real signer, in
//! both spawn modes, with and without a sealed store; the guard surviving restarts; the purpose
//! policy; the bytes signed; and a host that lies about a write.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ed25519_dalek::VerifyingKey;
use keyward::{
    ChainId, ChainWatermarks, Config, ConsensusMessage, Error, GuardRule, KdfParameters, KeyId,
    KeyService, KeySpec, Purpose, SecretService, StoreConfig, UnlockSecret, Watermark,
};

const TEST_KDF: KdfParameters = KdfParameters {
    memory_kib: 64,
    passes: 1,
    lanes: 1,
};
const CHAIN: ChainId = ChainId([0xc1; 32]);
const OTHER_CHAIN: ChainId = ChainId([0xc2; 32]);

/// A 0700 directory with an unlock file, removed on drop.
struct StoreDir {
    base: std::path::PathBuf,
}

impl StoreDir {
    fn new(name: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let base =
            std::env::temp_dir().join(format!("keyward-consensus-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(base.join("unlock"), b"consensus tests\n").unwrap();
        std::fs::set_permissions(base.join("unlock"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        Self { base }
    }

    fn config(&self, config: Config) -> Config {
        config.with_store(
            StoreConfig::new(
                self.base.join("store"),
                UnlockSecret::file(self.base.join("unlock")),
            )
            .create_if_missing()
            .with_kdf(TEST_KDF),
        )
    }

    /// The sequence number of the state on disk (bytes 119..127 of the state file).
    fn sequence(&self) -> u64 {
        let bytes = std::fs::read(self.base.join("store").join("keyward-store")).unwrap();
        u64::from_le_bytes(bytes[119..127].try_into().unwrap())
    }
}

impl Drop for StoreDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// Every configuration the rules are checked in: both spawn modes, memory only and sealed.
fn configurations(name: &str) -> Vec<(String, Config, Option<StoreDir>)> {
    let mut all = Vec::new();
    for (mode, config) in common::spawn_modes() {
        all.push((format!("{mode}, memory"), config.clone(), None));
        let store = StoreDir::new(&format!("{name}-{mode}"));
        all.push((format!("{mode}, sealed"), store.config(config), Some(store)));
    }
    all
}

fn consensus_key(service: &SecretService) -> (KeyId, VerifyingKey) {
    let key = service
        .generate_key(KeySpec::new(Purpose::Consensus))
        .unwrap();
    let public = *service.public_key(key).unwrap().as_ed25519().unwrap();
    (key, public)
}

fn refused_by(result: keyward::Result<ed25519_dalek::Signature>) -> (GuardRule, Option<Watermark>) {
    match result {
        Err(Error::WouldDoubleSign {
            rule, watermark, ..
        }) => (rule, watermark),
        other => panic!("expected a double-sign refusal, got {other:?}"),
    }
}

#[test]
fn each_rule_of_the_guard_in_every_configuration() {
    for (what, config, _store) in configurations("rules") {
        let service = SecretService::spawn(config).unwrap();
        let (key, public) = consensus_key(&service);
        let vote = |round, digest| ConsensusMessage::vote(CHAIN, 1, round, [digest; 32]);

        // Above: signed, over the typed bytes.
        let signature = service.sign_consensus(key, &vote(5, 0xa)).unwrap();
        public
            .verify_strict(&vote(5, 0xa).signing_bytes(), &signature)
            .unwrap();
        // The same message again: the same signature.
        assert_eq!(
            service.sign_consensus(key, &vote(5, 0xa)).unwrap(),
            signature,
            "{what}"
        );
        // Equal with another digest: refused, naming the watermark.
        let (rule, watermark) = refused_by(service.sign_consensus(key, &vote(5, 0xb)));
        assert_eq!(rule, GuardRule::ConflictingDigest, "{what}");
        assert_eq!(
            watermark,
            Some(Watermark {
                epoch: 1,
                round: 5,
                digest: [0xa; 32]
            }),
            "{what}"
        );
        // Below: refused, whatever the digest.
        for digest in [0xa, 0xb] {
            let (rule, _) = refused_by(service.sign_consensus(key, &vote(4, digest)));
            assert_eq!(rule, GuardRule::BelowWatermark, "{what}");
        }
        let earlier_epoch = ConsensusMessage::vote(CHAIN, 0, 99, [0xa; 32]);
        let (rule, _) = refused_by(service.sign_consensus(key, &earlier_epoch));
        assert_eq!(rule, GuardRule::BelowWatermark, "{what}: an earlier epoch");
        // Above again, and a new epoch starting at round 0.
        service.sign_consensus(key, &vote(6, 0xc)).unwrap();
        service
            .sign_consensus(key, &ConsensusMessage::vote(CHAIN, 2, 0, [0xd; 32]))
            .unwrap();

        // Across kinds: a timeout of a round voted in is allowed; a vote in a round timed out is
        // not; a timeout below the last vote is not; proposals are apart.
        let timeout = |round| ConsensusMessage::timeout(CHAIN, 2, round, [0xe; 32]);
        let (rule, met) = refused_by(
            service.sign_consensus(key, &ConsensusMessage::timeout(CHAIN, 1, 9, [0xe; 32])),
        );
        assert_eq!(rule, GuardRule::TimeoutBelowVote, "{what}");
        // The refusal names the watermark it met: the vote's.
        assert_eq!(met.map(|w| (w.epoch, w.round)), Some((2, 0)), "{what}");
        service.sign_consensus(key, &timeout(0)).unwrap();
        service.sign_consensus(key, &timeout(3)).unwrap();
        let (rule, met) = refused_by(
            service.sign_consensus(key, &ConsensusMessage::vote(CHAIN, 2, 3, [0xf; 32])),
        );
        assert_eq!(rule, GuardRule::VoteAfterTimeout, "{what}");
        assert_eq!(
            met.map(|w| (w.epoch, w.round)),
            Some((2, 3)),
            "{what}: the timeout's"
        );
        service
            .sign_consensus(key, &ConsensusMessage::vote(CHAIN, 2, 4, [0xf; 32]))
            .unwrap();
        service
            .sign_consensus(key, &ConsensusMessage::proposal(CHAIN, 2, 1, [0x1; 32]))
            .unwrap();

        // Another chain and another key start from nothing.
        service
            .sign_consensus(key, &ConsensusMessage::vote(OTHER_CHAIN, 1, 5, [0xb; 32]))
            .unwrap();
        let (other_key, _) = consensus_key(&service);
        service.sign_consensus(other_key, &vote(5, 0xb)).unwrap();

        // The listing shows where each chain stands.
        let marks = service.watermarks(key).unwrap();
        let on_chain = marks.iter().find(|marks| marks.chain == CHAIN).unwrap();
        assert_eq!(
            on_chain.vote.map(|w| (w.epoch, w.round)),
            Some((2, 4)),
            "{what}"
        );
        assert_eq!(
            on_chain.timeout.map(|w| (w.epoch, w.round)),
            Some((2, 3)),
            "{what}"
        );
        assert_eq!(
            on_chain.proposal.map(|w| (w.epoch, w.round)),
            Some((2, 1)),
            "{what}"
        );
        assert_eq!(marks.len(), 2, "{what}");
    }
}

#[test]
fn a_signature_covers_the_kind_the_chain_and_the_round() {
    let service = SecretService::spawn(Config::default()).unwrap();
    let (key, public) = consensus_key(&service);
    let vote = ConsensusMessage::vote(CHAIN, 3, 7, [0x42; 32]);
    let signature = service.sign_consensus(key, &vote).unwrap();
    public
        .verify_strict(&vote.signing_bytes(), &signature)
        .unwrap();
    for other in [
        ConsensusMessage::proposal(CHAIN, 3, 7, [0x42; 32]),
        ConsensusMessage::timeout(CHAIN, 3, 7, [0x42; 32]),
        ConsensusMessage::vote(OTHER_CHAIN, 3, 7, [0x42; 32]),
        ConsensusMessage::vote(CHAIN, 3, 8, [0x42; 32]),
        ConsensusMessage::vote(CHAIN, 4, 7, [0x42; 32]),
    ] {
        assert!(
            public
                .verify_strict(&other.signing_bytes(), &signature)
                .is_err(),
            "a vote's signature verified as {other:?}"
        );
    }
    // The bytes are what docs/consensus-format.md says: the domain, the kind, the chain, the
    // epoch and round big-endian, the digest.
    let mut expected = b"keyward-consensus/v1".to_vec();
    expected.push(2);
    expected.extend([0xc1; 32]);
    expected.extend(3u64.to_be_bytes());
    expected.extend(7u64.to_be_bytes());
    expected.extend([0x42; 32]);
    assert_eq!(vote.signing_bytes().to_vec(), expected);
}

#[test]
fn consensus_keys_refuse_blind_signing_unless_configured_and_others_refuse_typed_messages() {
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config.clone()).unwrap();
        let (consensus, _) = consensus_key(&service);
        for refused in [
            service.sign(consensus, &[1; 32]),
            service.sign_message(consensus, b"any bytes"),
            service
                .sign_many(consensus, &[[1; 32]; 2])
                .map(|mut all| all.remove(0)),
        ] {
            assert!(
                matches!(
                    refused,
                    Err(Error::BlindSigningRefused {
                        purpose: Purpose::Consensus,
                        ..
                    })
                ),
                "{mode}: {refused:?}"
            );
        }
        let account = service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        assert!(matches!(
            service.sign_consensus(account, &ConsensusMessage::vote(CHAIN, 1, 1, [0; 32])),
            Err(Error::NotAConsensusKey {
                purpose: Purpose::Account,
                ..
            })
        ));
        // The service carries on, and other purposes still sign blind.
        common::assert_signs(&service, account, &[2; 32]);
        service
            .sign_consensus(consensus, &ConsensusMessage::vote(CHAIN, 1, 1, [0; 32]))
            .unwrap();

        let unsafe_service =
            SecretService::spawn(config.allow_blind_consensus_signing_unsafe()).unwrap();
        let (consensus, _) = consensus_key(&unsafe_service);
        common::assert_signs(&unsafe_service, consensus, &[3; 32]);
    }
}

#[test]
fn a_key_keeps_watermarks_for_at_most_four_chains() {
    let service = SecretService::spawn(Config::default()).unwrap();
    let (key, _) = consensus_key(&service);
    for chain in 0..4u8 {
        service
            .sign_consensus(
                key,
                &ConsensusMessage::vote(ChainId([chain; 32]), 1, 1, [0; 32]),
            )
            .unwrap();
    }
    assert!(matches!(
        service.sign_consensus(
            key,
            &ConsensusMessage::vote(ChainId([9; 32]), 1, 1, [0; 32])
        ),
        Err(Error::ChainLimit { cap: 4, .. })
    ));
    // The four chains still sign.
    service
        .sign_consensus(
            key,
            &ConsensusMessage::vote(ChainId([0; 32]), 1, 2, [0; 32]),
        )
        .unwrap();
}

#[test]
fn the_guard_survives_a_restart_and_a_respawn() {
    for (mode, config) in common::spawn_modes() {
        let store = StoreDir::new(&format!("restart-{mode}"));
        let config = store.config(config);
        let (key, signature) = {
            let service = SecretService::spawn(config.clone()).unwrap();
            let (key, _) = consensus_key(&service);
            let signature = service
                .sign_consensus(key, &ConsensusMessage::vote(CHAIN, 1, 10, [0xa; 32]))
                .unwrap();
            (key, signature)
        };
        let service = SecretService::spawn(config).unwrap();
        let (rule, _) = refused_by(
            service.sign_consensus(key, &ConsensusMessage::vote(CHAIN, 1, 10, [0xb; 32])),
        );
        assert_eq!(rule, GuardRule::ConflictingDigest, "{mode}");
        // The repeat after the restart is the same signature.
        assert_eq!(
            service
                .sign_consensus(key, &ConsensusMessage::vote(CHAIN, 1, 10, [0xa; 32]))
                .unwrap(),
            signature,
            "{mode}"
        );
        service
            .sign_consensus(key, &ConsensusMessage::vote(CHAIN, 1, 11, [0xa; 32]))
            .unwrap();
        service.respawn().unwrap();
        let (rule, _) = refused_by(
            service.sign_consensus(key, &ConsensusMessage::vote(CHAIN, 1, 11, [0xb; 32])),
        );
        assert_eq!(rule, GuardRule::ConflictingDigest, "{mode}: after respawn");
    }
}

#[test]
fn a_new_round_costs_one_write_and_a_repeat_costs_none() {
    let store = StoreDir::new("writes");
    let service = SecretService::spawn(store.config(Config::default())).unwrap();
    let (key, _) = consensus_key(&service);
    let before = store.sequence();
    let vote = ConsensusMessage::vote(CHAIN, 1, 1, [1; 32]);
    service.sign_consensus(key, &vote).unwrap();
    assert_eq!(store.sequence(), before + 1, "a new round is one write");
    for _ in 0..3 {
        service.sign_consensus(key, &vote).unwrap();
    }
    assert_eq!(store.sequence(), before + 1, "a repeat writes nothing");
    let _ = refused_by(service.sign_consensus(key, &ConsensusMessage::vote(CHAIN, 1, 1, [2; 32])));
    assert_eq!(store.sequence(), before + 1, "a refusal writes nothing");
}

#[test]
fn an_import_only_ever_raises_a_watermark_and_is_durable() {
    let store = StoreDir::new("import");
    let config = store.config(Config::default());
    let key = {
        let service = SecretService::spawn(config.clone()).unwrap();
        let (key, _) = consensus_key(&service);
        service
            .sign_consensus(key, &ConsensusMessage::vote(CHAIN, 1, 20, [1; 32]))
            .unwrap();
        let mark = |round| {
            Some(Watermark {
                epoch: 1,
                round,
                digest: [9; 32],
            })
        };
        // Lower: nothing changes. Higher: raised.
        service
            .raise_watermarks(
                key,
                &ChainWatermarks {
                    chain: CHAIN,
                    proposal: mark(30),
                    vote: mark(10),
                    timeout: None,
                },
            )
            .unwrap();
        let marks = service.watermarks(key).unwrap();
        assert_eq!(
            marks[0].vote.unwrap().round,
            20,
            "a lower vote did not lower it"
        );
        assert_eq!(
            marks[0].proposal.unwrap().round,
            30,
            "a higher proposal raised it"
        );
        key
    };
    let service = SecretService::spawn(config).unwrap();
    let (rule, _) =
        refused_by(service.sign_consensus(key, &ConsensusMessage::proposal(CHAIN, 1, 25, [1; 32])));
    assert_eq!(
        rule,
        GuardRule::BelowWatermark,
        "the import survived the restart"
    );
}

/// A hostile host acknowledges a write it never made: within the signer's life nothing is
/// gained (the watermark is in the signer's memory); across a restart the store holds the older
/// watermark, which SECURITY.md states as the limit of what keyward can enforce alone.
#[test]
#[cfg(feature = "test-support")]
fn a_host_that_lies_about_a_write_gains_nothing_within_the_signers_life() {
    use keyward::testing::{
        RawSigner, release_consensus_frame, sealed_sequence, sign_consensus_frame,
    };
    let store = StoreDir::new("liar");
    let config = store.config(Config::default());
    let key = {
        let service = SecretService::spawn(config.clone()).unwrap();
        consensus_key(&service).0
    };
    let written = store.sequence();
    let mut raw = RawSigner::spawn(config.clone()).unwrap();
    let timeout = std::time::Duration::from_secs(5);
    let vote_a = ConsensusMessage::vote(CHAIN, 1, 7, [0xa; 32]);
    let vote_b = ConsensusMessage::vote(CHAIN, 1, 7, [0xb; 32]);
    raw.write(&sign_consensus_frame(1, key, vote_a)).unwrap();
    let (_, sealed) = raw.read_answer(timeout).unwrap();
    assert!(sealed.starts_with("ConsensusSealed"), "{sealed}");
    let sequence = sealed_sequence(&sealed).unwrap();
    // A release for a sequence number never sealed is refused.
    raw.write(&release_consensus_frame(2, key, vote_a, sequence + 1))
        .unwrap();
    let (_, answer) = raw.read_answer(timeout).unwrap();
    assert!(answer.contains("NotReleasable"), "{answer}");
    // The lie: "written", though nothing was.
    raw.write(&release_consensus_frame(3, key, vote_a, sequence))
        .unwrap();
    let (_, answer) = raw.read_answer(timeout).unwrap();
    assert!(answer.starts_with("Signature"), "{answer}");
    // The conflicting vote is refused all the same: the guard lives in the signer.
    raw.write(&sign_consensus_frame(4, key, vote_b)).unwrap();
    let (_, answer) = raw.read_answer(timeout).unwrap();
    assert!(answer.contains("WouldDoubleSign"), "{answer}");
    // A release of the conflicting vote is refused too: it is not the watermark.
    raw.write(&release_consensus_frame(5, key, vote_b, sequence))
        .unwrap();
    let (_, answer) = raw.read_answer(timeout).unwrap();
    assert!(answer.contains("NotReleasable"), "{answer}");
    drop(raw);
    // Across a restart, the disk is what the liar left: the watermark was never written.
    assert_eq!(store.sequence(), written);
    let service = SecretService::spawn(config).unwrap();
    assert!(
        service.watermarks(key).unwrap().is_empty(),
        "the unwritten watermark is not on disk: the documented limit of a lying host"
    );
}

/// A state file put back over a newer one is refused (its previous copy is newer); a forged
/// one is refused as tampered.
#[test]
fn a_replayed_or_forged_state_is_refused() {
    let store = StoreDir::new("replay");
    let config = store.config(Config::default());
    let state = store.base.join("store").join("keyward-store");
    let (key, old) = {
        let service = SecretService::spawn(config.clone()).unwrap();
        let (key, _) = consensus_key(&service);
        service
            .sign_consensus(key, &ConsensusMessage::vote(CHAIN, 1, 1, [1; 32]))
            .unwrap();
        let old = std::fs::read(&state).unwrap();
        service
            .sign_consensus(key, &ConsensusMessage::vote(CHAIN, 1, 2, [1; 32]))
            .unwrap();
        service
            .sign_consensus(key, &ConsensusMessage::vote(CHAIN, 1, 3, [1; 32]))
            .unwrap();
        (key, old)
    };
    let newest = std::fs::read(&state).unwrap();
    std::fs::write(&state, &old).unwrap();
    match SecretService::spawn(config.clone()) {
        Err(Error::Store(keyward::StoreError::RolledBack {
            sequence, previous, ..
        })) => assert!(previous > sequence),
        other => panic!("a replayed state opened: {:?}", other.map(|s| s.pid())),
    }
    // A forged watermark (the round lowered in the clear) does not match the manifest.
    let mut forged = newest.clone();
    let watermarks_start = forged.len() - 181;
    // The vote's round, little-endian, after slot (2), chain (32), the proposal (49) and the
    // vote's flag (1) and epoch (8).
    let round_at = watermarks_start + 2 + 32 + 49 + 1 + 8;
    assert_eq!(forged[round_at], 3);
    forged[round_at] = 1;
    std::fs::write(&state, &forged).unwrap();
    match SecretService::spawn(config.clone()) {
        Err(Error::Store(keyward::StoreError::Tampered { .. })) => {}
        other => panic!("a forged state opened: {:?}", other.map(|s| s.pid())),
    }
    std::fs::write(&state, &newest).unwrap();
    let service = SecretService::spawn(config).unwrap();
    let (rule, _) =
        refused_by(service.sign_consensus(key, &ConsensusMessage::vote(CHAIN, 1, 2, [2; 32])));
    assert_eq!(rule, GuardRule::BelowWatermark);
}
