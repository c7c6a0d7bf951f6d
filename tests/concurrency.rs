//! One `SecretService` serves many threads at once, correctly: every answer reaches its caller,
//! key management runs alongside signing, services are independent, and every spawn makes
//! fresh keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ed25519_dalek::VerifyingKey;
use keyward::{Error, KeyId, KeyService, KeySpec, Purpose, SecretService};

/// `SecretService` (and its `Signer` handle) can be shared across threads: checked by the
/// compiler.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SecretService>();
    assert_send_sync::<keyward::KeySigner>();
};

/// A digest unique to (thread, iteration, salt).
fn digest(thread: usize, iteration: usize, salt: &[u8; 16]) -> [u8; 32] {
    let mut digest = [0u8; 32];
    digest[..8].copy_from_slice(&(thread as u64).to_le_bytes());
    digest[8..16].copy_from_slice(&(iteration as u64).to_le_bytes());
    digest[16..].copy_from_slice(salt);
    digest
}

fn salt() -> [u8; 16] {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).unwrap();
    salt
}

const THREADS: usize = 8;
const SIGNATURES_PER_THREAD: usize = 1_000;

#[test]
fn eight_threads_sign_a_thousand_digests_each_over_four_keys() {
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config).unwrap();
        let signing_purposes = [
            Purpose::NetworkDiscovery,
            Purpose::Account,
            Purpose::NetworkDiscovery,
            Purpose::NetworkDiscovery,
        ];
        let keys: Vec<(KeyId, VerifyingKey)> = signing_purposes
            .into_iter()
            .map(|purpose| {
                let key = service.generate_key(KeySpec::new(purpose)).unwrap();
                (key, *service.public_key(key).unwrap().as_ed25519().unwrap())
            })
            .collect();
        assert!(keys.len() >= 4);
        let salt = salt();
        let verified = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let (service, keys, verified) = (&service, &keys, &verified);
                scope.spawn(move || {
                    for iteration in 0..SIGNATURES_PER_THREAD {
                        let (key, public) = keys[(thread + iteration) % keys.len()];
                        let digest = digest(thread, iteration, &salt);
                        let signature = service
                            .sign(key, &digest)
                            .unwrap_or_else(|e| panic!("{mode} thread {thread}: {e}"));
                        // A signature over another caller's digest, or by another key, fails
                        // here: answers reach the caller that asked.
                        public
                            .verify_strict(&digest, &signature)
                            .unwrap_or_else(|e| panic!("{mode} thread {thread} #{iteration}: {e}"));
                        verified.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(
            verified.load(Ordering::Relaxed),
            THREADS * SIGNATURES_PER_THREAD,
            "{mode}"
        );
        assert!(service.is_running(), "{mode}");
        assert_eq!(service.list_keys().unwrap().len(), keys.len());
    }
}

/// Callers queued on one worker: the worker answers what one read brought in back to back, in
/// one write, while the answers fit (a batch at the cap takes half of its buffer). Whatever mix
/// of answer kinds and sizes shares a write, every caller gets its own answer: every signature
/// of digests, batches and messages verifies, and every Diffie-Hellman result agrees with the
/// peer's.
#[test]
fn callers_queued_on_one_worker_each_get_their_own_answer_from_a_burst() {
    const ITERATIONS: usize = 300;
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config.with_workers(1)).unwrap();
        let keys: Vec<(KeyId, VerifyingKey)> = [Purpose::NetworkDiscovery, Purpose::Account]
            .into_iter()
            .map(|purpose| {
                let key = service.generate_key(KeySpec::new(purpose)).unwrap();
                (key, *service.public_key(key).unwrap().as_ed25519().unwrap())
            })
            .collect();
        let handshake = service
            .generate_key(KeySpec::new(Purpose::NetworkHandshake))
            .unwrap();
        let handshake_public = *service.public_key(handshake).unwrap().as_x25519().unwrap();
        let salt = salt();
        let signatures = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let (service, keys, signatures) = (&service, &keys, &signatures);
                scope.spawn(move || {
                    for iteration in 0..ITERATIONS {
                        let (key, public) = keys[(thread + iteration) % keys.len()];
                        let own = digest(thread, iteration, &salt);
                        let at = format!("{mode} thread {thread} #{iteration}");
                        match iteration % 5 {
                            0 | 1 => {
                                let signature = service
                                    .sign(key, &own)
                                    .unwrap_or_else(|e| panic!("{at}: {e}"));
                                public.verify_strict(&own, &signature).unwrap();
                                signatures.fetch_add(1, Ordering::Relaxed);
                            }
                            2 => {
                                // Mostly small batches, and now and then one at the cap.
                                let count = if iteration % 50 == 2 {
                                    keyward::MAX_BATCH
                                } else {
                                    1 + (thread + iteration) % 24
                                };
                                let batch: Vec<[u8; 32]> = (0..count)
                                    .map(|index| digest(thread, iteration * 1000 + index, &salt))
                                    .collect();
                                let signed = service
                                    .sign_many(key, &batch)
                                    .unwrap_or_else(|e| panic!("{at}: {e}"));
                                assert_eq!(signed.len(), count);
                                for (digest, signature) in batch.iter().zip(&signed) {
                                    public.verify_strict(digest, signature).unwrap();
                                }
                                signatures.fetch_add(count, Ordering::Relaxed);
                            }
                            3 => {
                                let message = [&own[..], &own[..(iteration % 32)]].concat();
                                let signature = service
                                    .sign_message(key, &message)
                                    .unwrap_or_else(|e| panic!("{at}: {e}"));
                                public.verify_strict(&message, &signature).unwrap();
                                signatures.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                let peer = x25519_dalek::StaticSecret::from(own);
                                let shared = service
                                    .diffie_hellman(
                                        handshake,
                                        &x25519_dalek::PublicKey::from(&peer),
                                    )
                                    .unwrap_or_else(|e| panic!("{at}: {e}"));
                                assert_eq!(
                                    shared.expose_secret(),
                                    peer.diffie_hellman(&handshake_public).as_bytes()
                                );
                            }
                        }
                    }
                });
            }
        });
        assert!(
            signatures.load(Ordering::Relaxed) > THREADS * ITERATIONS * 3 / 5,
            "{mode}"
        );
        assert!(service.is_running(), "{mode}");
    }
}

#[test]
fn generate_list_and_drop_run_alongside_signing() {
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config).unwrap();
        let fixed: Vec<(KeyId, VerifyingKey)> = (0..4)
            .map(|_| {
                let key = service
                    .generate_key(KeySpec::new(Purpose::Account))
                    .unwrap();
                (key, *service.public_key(key).unwrap().as_ed25519().unwrap())
            })
            .collect();
        let fixed_ids: HashSet<KeyId> = fixed.iter().map(|&(key, _)| key).collect();
        let salt = salt();
        let churning = AtomicBool::new(true);
        let signatures = AtomicUsize::new(0);
        let churned = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            let mut churners = Vec::new();
            for thread in 0..3 {
                let (service, fixed_ids, churned) = (&service, &fixed_ids, &churned);
                churners.push(scope.spawn(move || {
                    for round in 0..40 {
                        let purpose = Purpose::ALL[(thread + round) % Purpose::ALL.len()];
                        let mine: Vec<KeyId> = (0..2)
                            .map(|_| service.generate_key(KeySpec::new(purpose)).unwrap())
                            .collect();
                        let listed: HashSet<KeyId> =
                            service.list_keys().unwrap().iter().map(|i| i.id).collect();
                        assert!(
                            listed.is_superset(fixed_ids),
                            "{mode}: a fixed key vanished"
                        );
                        for key in &mine {
                            assert!(listed.contains(key), "{mode}: a new key is not listed");
                            assert_eq!(service.key_info(*key).unwrap().purpose, purpose);
                        }
                        for key in &mine {
                            service.drop_key(*key).unwrap();
                            assert!(matches!(
                                service.public_key(*key),
                                Err(Error::UnknownKey(k)) if k == *key
                            ));
                        }
                        let listed: HashSet<KeyId> =
                            service.list_keys().unwrap().iter().map(|i| i.id).collect();
                        assert!(mine.iter().all(|key| !listed.contains(key)), "{mode}");
                        churned.fetch_add(mine.len(), Ordering::Relaxed);
                    }
                }));
            }
            for thread in 0..4 {
                let (service, fixed, churning, signatures) =
                    (&service, &fixed, &churning, &signatures);
                scope.spawn(move || {
                    let mut iteration = 0;
                    // Sign until the churners finish, and at least a few hundred times.
                    while churning.load(Ordering::Relaxed) || iteration < 200 {
                        let (key, public) = fixed[(thread + iteration) % fixed.len()];
                        let digest = digest(thread, iteration, &salt);
                        let signature = service.sign(key, &digest).unwrap();
                        public.verify_strict(&digest, &signature).unwrap();
                        signatures.fetch_add(1, Ordering::Relaxed);
                        iteration += 1;
                    }
                });
            }
            for churner in churners {
                churner.join().unwrap();
            }
            churning.store(false, Ordering::Relaxed);
        });
        assert_eq!(churned.load(Ordering::Relaxed), 3 * 40 * 2, "{mode}");
        assert!(signatures.load(Ordering::Relaxed) >= 4 * 200, "{mode}");
        let listed: HashSet<KeyId> = service.list_keys().unwrap().iter().map(|i| i.id).collect();
        assert_eq!(listed, fixed_ids, "{mode}: exactly the fixed keys remain");
    }
}

#[test]
fn two_services_in_one_process_are_independent() {
    for (mode, config) in common::spawn_modes() {
        let first = SecretService::spawn(config.clone()).unwrap();
        let second = SecretService::spawn(config).unwrap();
        assert_ne!(first.pid(), second.pid(), "{mode}");
        let salt = salt();
        // Each service generates, signs and drops from its own threads, at the same time.
        let run = |service: &SecretService, thread: usize| {
            let keys: Vec<KeyId> = Purpose::ALL
                .into_iter()
                .map(|purpose| service.generate_key(KeySpec::new(purpose)).unwrap())
                .collect();
            let account = keys[0];
            let public = *service.public_key(account).unwrap().as_ed25519().unwrap();
            for iteration in 0..300 {
                let digest = digest(thread, iteration, &salt);
                let signature = service.sign(account, &digest).unwrap();
                public.verify_strict(&digest, &signature).unwrap();
            }
            keys
        };
        let (first_keys, second_keys) = std::thread::scope(|scope| {
            let a = scope.spawn(|| run(&first, 0));
            let b = scope.spawn(|| run(&second, 1));
            (a.join().unwrap(), b.join().unwrap())
        });
        for (owner, other, keys) in [
            (&first, &second, &first_keys),
            (&second, &first, &second_keys),
        ] {
            let listed: HashSet<KeyId> = owner.list_keys().unwrap().iter().map(|i| i.id).collect();
            assert_eq!(listed, keys.iter().copied().collect(), "{mode}");
            for &key in keys {
                assert!(
                    matches!(other.public_key(key), Err(Error::UnknownKey(k)) if k == key),
                    "{mode}"
                );
                assert!(matches!(
                    other.sign(key, &[0; 32]),
                    Err(Error::UnknownKey(_))
                ));
                assert!(matches!(other.drop_key(key), Err(Error::UnknownKey(_))));
                // Still held by its owner after the other service refused to drop it.
                owner.key_info(key).unwrap();
            }
        }
        // Their keys differ.
        let publics = |service: &SecretService| -> HashSet<[u8; 32]> {
            service
                .list_keys()
                .unwrap()
                .iter()
                .map(|info| info.public_key.to_bytes())
                .collect()
        };
        let (first_publics, second_publics) = (publics(&first), publics(&second));
        assert_eq!(first_publics.len(), Purpose::ALL.len());
        assert_eq!(second_publics.len(), Purpose::ALL.len());
        assert!(first_publics.is_disjoint(&second_publics), "{mode}");
        // Dropping a service's keys leaves the other's alone.
        for &key in &first_keys {
            first.drop_key(key).unwrap();
        }
        assert!(first.list_keys().unwrap().is_empty());
        assert_eq!(publics(&second), second_publics, "{mode}");
    }
}

/// A key for every purpose, by public key bytes, from one fresh service.
fn fresh_public_keys(config: keyward::Config) -> Vec<[u8; 32]> {
    let service = SecretService::spawn(config).unwrap();
    Purpose::ALL
        .into_iter()
        .map(|purpose| {
            let key = service.generate_key(KeySpec::new(purpose)).unwrap();
            service.public_key(key).unwrap().to_bytes()
        })
        .collect()
}

#[test]
fn every_spawn_generates_different_keys() {
    for (mode, config) in common::spawn_modes() {
        // Two services alive at once.
        let first = SecretService::spawn(config.clone()).unwrap();
        let second = SecretService::spawn(config.clone()).unwrap();
        for purpose in Purpose::ALL {
            let a = first.generate_key(KeySpec::new(purpose)).unwrap();
            let b = second.generate_key(KeySpec::new(purpose)).unwrap();
            assert_ne!(
                first.public_key(a).unwrap(),
                second.public_key(b).unwrap(),
                "{mode} {purpose}"
            );
        }
        drop((first, second));
        // Twenty spawns one after the other, from the same parent state (a forked signer starts
        // as a copy of this process): no public key repeats.
        let mut seen = HashSet::new();
        let mut total = 0;
        for spawn in 0..20 {
            for public in fresh_public_keys(config.clone()) {
                total += 1;
                assert!(seen.insert(public), "{mode}: spawn {spawn} repeated a key");
            }
        }
        assert_eq!(total, 20 * Purpose::ALL.len());
        assert_eq!(seen.len(), total);
        // And a respawned signer does not repeat its predecessor.
        let service = SecretService::spawn(config).unwrap();
        let before = service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        let before = service.public_key(before).unwrap();
        service.respawn().unwrap();
        let after = service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        assert_ne!(service.public_key(after).unwrap(), before, "{mode}");
    }
}
