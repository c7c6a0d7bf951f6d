//! Property: the seccomp allowlist kills nothing legitimate. The whole public API (every purpose,
//! public keys, signing one digest, a message or a batch, Diffie-Hellman, a full 1024-key listing, dropping, every refusal) works
//! under the filter, in both spawn modes, with one and with four workers, busy and idle, and a
//! signer shuts down cleanly (exit code 0) under it.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::time::Duration;

use ed25519_dalek::Signature;
#[cfg(feature = "test-support")]
use keyward::testing::RawSigner;
use keyward::{
    Algorithm, Config, Error, KeyService, KeySpec, Latency, MAX_BATCH, MAX_KEY_LIMIT, Purpose,
    SecretService,
};
use signature::{Keypair, Signer};

/// The signer must still be the first one, sandboxed and alive: nothing was killed.
fn assert_untouched(service: &SecretService, pid: i32, what: &str) {
    assert!(service.is_running(), "{what}: the signer ended");
    assert_eq!(service.pid(), pid, "{what}: the signer was replaced");
    assert_eq!(service.generation(), 1, "{what}: the signer was respawned");
    let seccomp = common::status_field(&pid.to_string(), "Seccomp");
    assert_eq!(
        seccomp.as_deref(),
        Some("2"),
        "{what}: not under the filter"
    );
}

fn exercise_whole_api(what: &str, config: Config, workers: usize) {
    let service = SecretService::spawn(config.with_workers(workers).with_key_limit(MAX_KEY_LIMIT))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let pid = service.pid();
    assert_untouched(&service, pid, what);

    // One key of every purpose, with public_key and key_info.
    let mut by_purpose = Vec::new();
    for purpose in Purpose::ALL {
        let key = service.generate_key(KeySpec::new(purpose)).unwrap();
        let info = service.key_info(key).unwrap();
        assert_eq!(info.id, key);
        assert_eq!(info.purpose, purpose);
        assert_eq!(info.public_key.algorithm(), purpose.algorithm());
        assert_eq!(service.public_key(key).unwrap(), info.public_key);
        by_purpose.push((purpose, key, info.public_key));
    }

    // The consensus key signs typed messages, through its double-sign guard; blind signing
    // with it is refused.
    let &(_, consensus, consensus_public) = &by_purpose[1];
    let chain = keyward::ChainId([7; 32]);
    for round in 1..4 {
        let vote =
            keyward::ConsensusMessage::vote(chain, 1, round, [u8::try_from(round).unwrap(); 32]);
        let signature = service.sign_consensus(consensus, &vote).unwrap();
        consensus_public
            .as_ed25519()
            .unwrap()
            .verify_strict(&vote.signing_bytes(), &signature)
            .unwrap();
        assert_eq!(service.sign_consensus(consensus, &vote).unwrap(), signature);
    }
    assert!(matches!(
        service.sign_consensus(
            consensus,
            &keyward::ConsensusMessage::vote(chain, 1, 3, [0; 32])
        ),
        Err(Error::WouldDoubleSign { .. })
    ));
    assert!(matches!(
        service.sign(consensus, &[1; 32]),
        Err(Error::BlindSigningRefused { .. })
    ));

    // Signing with each other Ed25519 key, directly and through signature::Signer.
    for &(purpose, key, public) in &by_purpose {
        if purpose.algorithm() != Algorithm::Ed25519 || purpose == Purpose::Consensus {
            continue;
        }
        let verifying = *public.as_ed25519().unwrap();
        for digest in [[0u8; 32], [0xff; 32], [7; 32]] {
            let signature = service.sign(key, &digest).unwrap();
            verifying.verify_strict(&digest, &signature).unwrap();
        }
        let signer = service.signing_key(key).unwrap();
        assert_eq!(signer.verifying_key(), verifying);
        let signature: Signature = signer.try_sign(&[9; 32]).unwrap();
        verifying.verify_strict(&[9; 32], &signature).unwrap();
        // Messages of any length up to the cap are signed where they lie in the sandboxed
        // signer's frame buffer: no allocation, no system call beyond the allowlist.
        for length in [0, 9, 1024, keyward::MAX_MESSAGE_LEN] {
            let message = vec![0x3c; length];
            let signature: Signature = signer.try_sign(&message).unwrap();
            verifying.verify_strict(&message, &signature).unwrap();
        }
        let over_the_cap = signer.try_sign(&vec![0; keyward::MAX_MESSAGE_LEN + 1]);
        assert!(
            over_the_cap.is_err(),
            "{what}: a message over the cap was signed"
        );
        // Batches are signed where they lie and their signatures encoded as they are made,
        // straight into the answer buffer: up to the cap, with no allocation.
        for count in [1, 2, 100, MAX_BATCH] {
            let batch: Vec<[u8; 32]> = (0..count)
                .map(|at| [u8::try_from(at % 251).unwrap(); 32])
                .collect();
            let signatures = service.sign_many(key, &batch).unwrap();
            assert_eq!(signatures.len(), count, "{what}");
            for (digest, signature) in batch.iter().zip(&signatures) {
                verifying.verify_strict(digest, signature).unwrap();
            }
            assert_eq!(signatures[0], service.sign(key, &batch[0]).unwrap());
        }
        assert!(matches!(
            service.sign_many(key, &[]),
            Err(Error::BatchSize { .. })
        ));
    }

    // Diffie-Hellman with the handshake key, checked against the peer's side.
    let &(_, handshake, handshake_public) = by_purpose
        .iter()
        .find(|(purpose, ..)| *purpose == Purpose::NetworkHandshake)
        .unwrap();
    for seed in [[1u8; 32], [2; 32], [200; 32]] {
        let peer = x25519_dalek::StaticSecret::from(seed);
        let shared = service
            .diffie_hellman(handshake, &x25519_dalek::PublicKey::from(&peer))
            .unwrap();
        let theirs = peer.diffie_hellman(handshake_public.as_x25519().unwrap());
        assert_eq!(shared.expose_secret(), theirs.as_bytes(), "{what}");
    }

    // Every refusal: each is an answer from the sandboxed signer, not a kill.
    let &(_, account, _) = &by_purpose[0];
    assert!(matches!(
        service.sign(handshake, &[1; 32]),
        Err(Error::WrongKeyType { .. })
    ));
    assert!(matches!(
        service.sign_many(handshake, &[[1; 32], [2; 32]]),
        Err(Error::WrongKeyType { .. })
    ));
    assert!(matches!(
        service.diffie_hellman(account, &x25519_dalek::PublicKey::from([9u8; 32])),
        Err(Error::WrongKeyType { .. })
    ));
    assert!(matches!(
        service.signing_key(handshake),
        Err(Error::WrongKeyType { .. })
    ));
    assert!(matches!(
        service.generate_key(KeySpec::with_algorithm(
            Purpose::Consensus,
            Algorithm::X25519
        )),
        Err(Error::PurposeAlgorithmMismatch { .. })
    ));
    assert!(matches!(
        service.diffie_hellman(handshake, &x25519_dalek::PublicKey::from([0u8; 32])),
        Err(Error::LowOrderPoint)
    ));
    assert_untouched(&service, pid, what);

    // Fill the store to its limit, concurrently when there are several workers (so workers
    // contend on the key store's lock: futex wait and wake), signing while generating.
    let threads = workers;
    let remaining = MAX_KEY_LIMIT as usize - by_purpose.len();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let service = &service;
            scope.spawn(move || {
                let share = remaining / threads + usize::from(thread < remaining % threads);
                for index in 0..share {
                    let purpose = Purpose::ALL[index % Purpose::ALL.len()];
                    let key = service.generate_key(KeySpec::new(purpose)).unwrap();
                    if purpose == Purpose::Consensus {
                        service
                            .sign(account, &[u8::try_from(thread).unwrap(); 32])
                            .unwrap();
                        service.public_key(key).unwrap();
                    } else if purpose == Purpose::Account {
                        service
                            .sign_many(account, &[[u8::try_from(index % 251).unwrap(); 32]; 16])
                            .unwrap();
                    }
                }
            });
        }
    });
    assert!(matches!(
        service.generate_key(KeySpec::new(Purpose::Account)),
        Err(Error::KeyLimitReached {
            limit: MAX_KEY_LIMIT
        })
    ));

    // A full listing: the largest answer the protocol has.
    let listing = service.list_keys().unwrap();
    assert_eq!(listing.len(), MAX_KEY_LIMIT as usize, "{what}");
    for &(purpose, key, public) in &by_purpose {
        let entry = listing.iter().find(|info| info.id == key).unwrap();
        assert_eq!(entry.purpose, purpose);
        assert_eq!(entry.public_key, public);
    }

    // Idle long enough for every worker to stop spinning and sleep in poll, then serve again.
    std::thread::sleep(Duration::from_millis(100));
    service.sign(account, &[8; 32]).unwrap();

    // Drop: the key is erased, later use is refused, its slot is free again.
    service.drop_key(account).unwrap();
    assert!(matches!(
        service.sign(account, &[1; 32]),
        Err(Error::UnknownKey(_))
    ));
    assert!(matches!(
        service.public_key(account),
        Err(Error::UnknownKey(_))
    ));
    assert!(matches!(
        service.drop_key(account),
        Err(Error::UnknownKey(_))
    ));
    let replacement = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    service.sign(replacement, &[1; 32]).unwrap();
    assert_eq!(service.list_keys().unwrap().len(), MAX_KEY_LIMIT as usize);

    assert_untouched(&service, pid, what);
}

#[test]
fn whole_api_works_under_the_filter_with_one_worker() {
    for (mode, config) in common::spawn_modes() {
        exercise_whole_api(&format!("{mode}, 1 worker"), config, 1);
    }
}

#[test]
fn whole_api_works_under_the_filter_with_four_workers() {
    for (mode, config) in common::spawn_modes() {
        exercise_whole_api(&format!("{mode}, 4 workers"), config, 4);
    }
}

/// With no spinning at all every wait goes straight to poll; with a long spin the workers spin on
/// the clock between requests. Both are allowed.
#[test]
fn whole_api_works_under_the_filter_without_spinning_and_with_long_spins() {
    let long_spin = Latency {
        caller_spin: Duration::from_millis(2),
        signer_spin: Duration::from_millis(50),
    };
    for (mode, config) in common::spawn_modes() {
        for (name, latency) in [("low-cpu", Latency::LOW_CPU), ("long spin", long_spin)] {
            let service =
                SecretService::spawn(config.clone().with_workers(2).with_latency(latency))
                    .unwrap_or_else(|e| panic!("{mode} {name}: {e}"));
            let pid = service.pid();
            let key = service
                .generate_key(KeySpec::new(Purpose::Account))
                .unwrap();
            for round in 0..20u8 {
                service.sign(key, &[round; 32]).unwrap();
                if round % 5 == 0 {
                    std::thread::sleep(Duration::from_millis(60));
                }
            }
            assert_untouched(&service, pid, &format!("{mode} {name}"));
        }
    }
}

/// The shutdown path (end of file on the request pipe, then `_exit(0)`) is allowed: the signer
/// exits with code 0 rather than being killed by SIGSYS.
#[test]
#[cfg(feature = "test-support")]
fn a_sandboxed_signer_shuts_down_cleanly() {
    for (mode, config) in common::spawn_modes() {
        let mut raw = RawSigner::spawn(config).unwrap_or_else(|e| panic!("{mode}: {e}"));
        let pid = raw.pid();
        assert_eq!(
            common::status_field(&pid.to_string(), "Seccomp").as_deref(),
            Some("2"),
            "{mode}"
        );
        raw.close_requests();
        assert_eq!(
            raw.wait_end(),
            keyward::SignerEnd::Exited { code: 0 },
            "{mode}"
        );
    }
}
