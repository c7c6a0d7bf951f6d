//! A `KeySigner` owns what it needs: it is `Clone + Send + Sync + 'static`, can be stored in a
//! struct and moved into a thread, keeps working after the `SecretService` that made it has been
//! moved, keeps the signer alive while it exists, and after a respawn fails as the service does
//! for a key of an ended signer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use ed25519_dalek::{Signature, VerifyingKey};
use keyward::{Error, KeyService, KeySigner, KeySpec, Purpose, SecretService};
use signature::{Keypair, Signer};

fn assert_owned<T: Clone + Send + Sync + 'static>() {}

/// A struct holding a handle, as a validator's consensus component would.
#[derive(Clone)]
struct Consensus {
    signer: KeySigner,
}

impl Consensus {
    fn vote(&self, round: u64) -> (Vec<u8>, Signature) {
        let message = format!("vote for round {round}").into_bytes();
        let signature = self.signer.sign(&message);
        (message, signature)
    }
}

fn is_gone(pid: i32) -> bool {
    let status = format!("/proc/{pid}/status");
    for _ in 0..200 {
        match std::fs::read_to_string(&status) {
            Err(_) => return true,
            Ok(text) if text.contains("State:\tZ") => return true,
            Ok(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    false
}

#[test]
fn a_key_signer_is_owned() {
    assert_owned::<KeySigner>();
}

#[test]
fn a_handle_in_a_struct_signs_from_another_thread_after_the_service_moved() {
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config).unwrap();
        let key = service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        let consensus = Consensus {
            signer: service.signing_key(key).unwrap(),
        };
        let verifying: VerifyingKey = consensus.signer.verifying_key();
        // Move the service somewhere else entirely (into a Box, then into another thread).
        let moved = Box::new(service);
        let keeper = std::thread::spawn(move || {
            let service = moved;
            service.list_keys().unwrap().len()
        });
        let handles: Vec<_> = (0..3u64)
            .map(|thread| {
                let consensus = consensus.clone();
                std::thread::spawn(move || {
                    (0..20)
                        .map(|round| consensus.vote(thread * 100 + round))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            for (message, signature) in handle.join().unwrap() {
                verifying
                    .verify_strict(&message, &signature)
                    .unwrap_or_else(|e| panic!("{mode}: {e}"));
            }
        }
        assert_eq!(keeper.join().unwrap(), 1, "{mode}");
        // The service has been dropped by now, in the keeper thread; the handle holds the
        // signer, so it still signs.
        let (message, signature) = consensus.vote(7);
        verifying.verify_strict(&message, &signature).unwrap();
    }
}

#[test]
fn the_signer_ends_when_the_last_handle_is_dropped() {
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config).unwrap();
        let pid = service.pid();
        let key = service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        let signer = service.signing_key(key).unwrap();
        let copy = signer.clone();
        drop(service);
        assert!(
            !is_gone(pid),
            "{mode}: the signer ended while handles remain"
        );
        drop(signer);
        copy.try_sign(b"still here").unwrap();
        drop(copy);
        assert!(is_gone(pid), "{mode}: the signer outlived its last handle");
    }
}

#[test]
fn after_a_respawn_a_handle_fails_as_the_service_does() {
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config).unwrap();
        let key = service
            .generate_key(KeySpec::new(Purpose::NetworkDiscovery))
            .unwrap();
        let signer = service.signing_key(key).unwrap();
        signer.try_sign(b"before").unwrap();
        assert_eq!(service.respawn().unwrap(), 2, "{mode}");
        let error = signer.try_sign(b"after").unwrap_err();
        let source = std::error::Error::source(&error)
            .and_then(|source| source.downcast_ref::<Error>())
            .unwrap_or_else(|| panic!("{mode}: no keyward::Error behind {error:?}"));
        assert!(
            matches!(source, Error::KeyFromEndedSigner { key: k, ended: 1, current: 2 } if *k == key),
            "{mode}: {source:?}"
        );
        // A key of the new signer gets a working handle again.
        let fresh = service
            .generate_key(KeySpec::new(Purpose::NetworkDiscovery))
            .unwrap();
        service
            .signing_key(fresh)
            .unwrap()
            .try_sign(b"new")
            .unwrap();
    }
}
