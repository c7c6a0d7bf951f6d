//! Every operation round-trips for every key purpose in both spawn modes: signatures verify
//! strictly, Diffie-Hellman agrees with an in-test peer, listings and drops are exact, and the
//! `signature::Signer` handle signs digests and refuses anything else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::error::Error as _;

use ed25519_dalek::{Signature, VerifyingKey};
use keyward::{Algorithm, Error, KeyId, KeyService, KeySpec, PublicKey, Purpose, SecretService};
use signature::{Keypair, Signer};

fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).unwrap();
    bytes
}

/// Digests worth signing: the edges and a few random ones.
fn digests() -> Vec<[u8; 32]> {
    let mut digests = vec![[0u8; 32], [0xff; 32]];
    digests.extend((0..8).map(|_| random_bytes()));
    digests
}

/// One service per spawn mode.
fn services() -> Vec<(&'static str, SecretService)> {
    common::spawn_modes()
        .into_iter()
        .map(|(mode, config)| {
            let service = SecretService::spawn(config).unwrap_or_else(|e| panic!("{mode}: {e}"));
            (mode, service)
        })
        .collect()
}

/// The purposes whose keys use `algorithm` and sign blind (consensus keys sign typed messages
/// only: tests/consensus_guard.rs), checked to be non-empty so no loop over them is vacuous.
fn purposes_using(algorithm: Algorithm) -> Vec<Purpose> {
    let purposes: Vec<Purpose> = Purpose::ALL
        .into_iter()
        .filter(|purpose| purpose.algorithm() == algorithm && *purpose != Purpose::Consensus)
        .collect();
    assert!(!purposes.is_empty(), "no purpose uses {algorithm}");
    purposes
}

fn ed25519(service: &SecretService, key: KeyId) -> VerifyingKey {
    *service.public_key(key).unwrap().as_ed25519().unwrap()
}

fn x25519(service: &SecretService, key: KeyId) -> x25519_dalek::PublicKey {
    *service.public_key(key).unwrap().as_x25519().unwrap()
}

#[test]
fn every_purpose_reports_its_id_purpose_and_algorithm() {
    for (mode, service) in services() {
        assert_eq!(service.generation(), 1, "{mode}");
        let mut seen = Vec::new();
        for purpose in Purpose::ALL {
            let key = service.generate_key(KeySpec::new(purpose)).unwrap();
            let info = service.key_info(key).unwrap();
            assert_eq!(info.id, key, "{mode} {purpose}");
            assert_eq!(info.purpose, purpose, "{mode} {purpose}");
            assert_eq!(
                info.public_key.algorithm(),
                purpose.algorithm(),
                "{mode} {purpose}"
            );
            assert_eq!(service.public_key(key).unwrap(), info.public_key);
            // An explicit spec naming the purpose's own algorithm is the same as `new`.
            let explicit = service
                .generate_key(KeySpec::with_algorithm(purpose, purpose.algorithm()))
                .unwrap();
            assert_eq!(service.key_info(explicit).unwrap().purpose, purpose);
            seen.push(info.public_key.to_bytes());
            seen.push(service.public_key(explicit).unwrap().to_bytes());
        }
        let distinct: HashSet<_> = seen.iter().collect();
        assert_eq!(
            distinct.len(),
            2 * Purpose::ALL.len(),
            "{mode}: a repeated key"
        );
    }
}

#[test]
fn every_signing_purpose_signs_digests_that_verify_strictly() {
    for (mode, service) in services() {
        let purposes = purposes_using(Algorithm::Ed25519);
        let keys: Vec<KeyId> = purposes
            .iter()
            .map(|&purpose| service.generate_key(KeySpec::new(purpose)).unwrap())
            .collect();
        assert!(
            keys.len() > 1,
            "no second key to check verification fails against"
        );
        for (index, (&purpose, &key)) in purposes.iter().zip(&keys).enumerate() {
            let public = ed25519(&service, key);
            let other = ed25519(&service, keys[(index + 1) % keys.len()]);
            for digest in digests() {
                let signature = service.sign(key, &digest).unwrap();
                public
                    .verify_strict(&digest, &signature)
                    .unwrap_or_else(|e| panic!("{mode} {purpose}: {e}"));
                // Pure Ed25519 is deterministic.
                assert_eq!(service.sign(key, &digest).unwrap(), signature);
                // The verification can fail: another digest, another key.
                let mut altered = digest;
                altered[31] ^= 1;
                assert!(public.verify_strict(&altered, &signature).is_err());
                assert!(other.verify_strict(&digest, &signature).is_err());
            }
        }
    }
}

#[test]
fn handshake_key_agrees_with_an_in_test_x25519_peer() {
    for (mode, service) in services() {
        for purpose in purposes_using(Algorithm::X25519) {
            let key = service.generate_key(KeySpec::new(purpose)).unwrap();
            let ours = x25519(&service, key);
            let mut secrets = Vec::new();
            for _ in 0..8 {
                let peer = x25519_dalek::StaticSecret::from(random_bytes());
                let peer_public = x25519_dalek::PublicKey::from(&peer);
                let shared = service.diffie_hellman(key, &peer_public).unwrap();
                let expected = peer.diffie_hellman(&ours);
                assert_eq!(
                    shared.expose_secret(),
                    expected.as_bytes(),
                    "{mode} {purpose}"
                );
                assert_ne!(shared.expose_secret(), &[0u8; 32]);
                secrets.push(*shared.expose_secret());
            }
            secrets.sort_unstable();
            secrets.dedup();
            assert_eq!(secrets.len(), 8, "{mode}: two peers, one secret");

            // Two keys of the service agree with each other.
            let second = service.generate_key(KeySpec::new(purpose)).unwrap();
            let one_way = service
                .diffie_hellman(key, &x25519(&service, second))
                .unwrap();
            let other_way = service.diffie_hellman(second, &ours).unwrap();
            assert_eq!(one_way, other_way, "{mode}");
        }
    }
}

#[test]
fn list_keys_reports_exactly_the_generated_keys() {
    for (mode, service) in services() {
        assert!(service.list_keys().unwrap().is_empty(), "{mode}");
        let mut expected: HashMap<KeyId, (Purpose, PublicKey)> = HashMap::new();
        for purpose in Purpose::ALL.into_iter().chain(Purpose::ALL) {
            let key = service.generate_key(KeySpec::new(purpose)).unwrap();
            expected.insert(key, (purpose, service.public_key(key).unwrap()));
            let listed = service.list_keys().unwrap();
            assert_eq!(listed.len(), expected.len(), "{mode}");
        }
        assert_eq!(expected.len(), 2 * Purpose::ALL.len());
        let listed = service.list_keys().unwrap();
        let actual: HashMap<KeyId, (Purpose, PublicKey)> = listed
            .iter()
            .map(|info| (info.id, (info.purpose, info.public_key)))
            .collect();
        assert_eq!(actual.len(), listed.len(), "{mode}: an id listed twice");
        assert_eq!(actual, expected, "{mode}");
        // A listed id is a working handle.
        for info in &listed {
            assert_eq!(service.key_info(info.id).unwrap(), *info);
        }
    }
}

#[test]
fn drop_key_removes_exactly_that_key() {
    for (mode, service) in services() {
        let mut held: Vec<(Purpose, KeyId)> = Purpose::ALL
            .into_iter()
            .map(|purpose| {
                (
                    purpose,
                    service.generate_key(KeySpec::new(purpose)).unwrap(),
                )
            })
            .collect();
        while let Some((purpose, dropped)) = held.pop() {
            service.drop_key(dropped).unwrap();
            assert!(
                matches!(service.public_key(dropped), Err(Error::UnknownKey(k)) if k == dropped),
                "{mode} {purpose}"
            );
            let operation = match purpose.algorithm() {
                Algorithm::Ed25519 => service.sign(dropped, &[3; 32]).map(drop),
                _ => {
                    let peer = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(
                        random_bytes(),
                    ));
                    service.diffie_hellman(dropped, &peer).map(drop)
                }
            };
            assert!(
                matches!(operation, Err(Error::UnknownKey(k)) if k == dropped),
                "{mode} {purpose}"
            );
            let listed = service.list_keys().unwrap();
            let listed_ids: HashSet<KeyId> = listed.iter().map(|info| info.id).collect();
            let remaining: HashSet<KeyId> = held.iter().map(|&(_, key)| key).collect();
            assert_eq!(listed.len(), held.len(), "{mode}");
            assert_eq!(listed_ids, remaining, "{mode}");
            for &(purpose, key) in &held {
                assert_eq!(service.key_info(key).unwrap().purpose, purpose);
            }
        }
        assert!(service.list_keys().unwrap().is_empty(), "{mode}");
    }
}

/// Signs through nothing but the `signature` traits, as generic code would.
fn sign_generically<S>(signer: &S, message: &[u8]) -> (Signature, VerifyingKey)
where
    S: Signer<Signature> + Keypair<VerifyingKey = VerifyingKey>,
{
    (signer.sign(message), signer.verifying_key())
}

/// Message lengths around every boundary: empty, one byte, around a digest, 1 KiB, the cap.
fn message_lengths() -> [usize; 7] {
    [0, 1, 31, 32, 33, 1024, keyward::MAX_MESSAGE_LEN]
}

#[test]
fn signer_handle_signs_messages_of_any_length_up_to_the_cap() {
    for (mode, service) in services() {
        for purpose in purposes_using(Algorithm::Ed25519) {
            let key = service.generate_key(KeySpec::new(purpose)).unwrap();
            let signer = service.signing_key(key).unwrap();
            assert_eq!(signer.key_id(), key);
            let verifying = ed25519(&service, key);
            assert_eq!(signer.verifying_key(), verifying, "{mode}");
            for length in message_lengths() {
                let message: Vec<u8> = (0..length)
                    .map(|i| u8::try_from((i * 7 + length) % 251).unwrap())
                    .collect();
                let (signature, verifying_key) = sign_generically(&signer, &message);
                verifying_key
                    .verify_strict(&message, &signature)
                    .unwrap_or_else(|e| panic!("{mode} {purpose}: {length} bytes: {e}"));
                // Pure Ed25519 is deterministic: the trait, the service call and the plain
                // library agree byte for byte.
                assert_eq!(signature, service.sign_message(key, &message).unwrap());
            }
            // A 32-byte message signed as a message is the same signature as the digest.
            for digest in digests() {
                assert_eq!(
                    service.sign(key, &digest).unwrap(),
                    service.sign_message(key, &digest).unwrap(),
                    "{mode}"
                );
            }
        }
    }
}

#[test]
fn a_message_over_the_cap_is_refused_by_name_and_the_service_carries_on() {
    for (mode, service) in services() {
        let key = service
            .generate_key(KeySpec::new(Purpose::NetworkDiscovery))
            .unwrap();
        let signer = service.signing_key(key).unwrap();
        let too_long = vec![0x5a; keyward::MAX_MESSAGE_LEN + 1];
        let error = signer.try_sign(&too_long).unwrap_err();
        let source = error
            .source()
            .unwrap_or_else(|| panic!("{mode}: the refusal has no source"));
        let keyward_error = source
            .downcast_ref::<Error>()
            .unwrap_or_else(|| panic!("{mode}: the source is not a keyward::Error"));
        assert!(
            matches!(
                keyward_error,
                Error::MessageTooLong { length, cap }
                    if *length == keyward::MAX_MESSAGE_LEN + 1 && *cap == keyward::MAX_MESSAGE_LEN
            ),
            "{mode}: {keyward_error:?}"
        );
        let text = keyward_error.to_string();
        assert!(
            text.contains(&format!("up to {} bytes", keyward::MAX_MESSAGE_LEN)),
            "{text}"
        );
        assert!(matches!(
            service.sign_message(key, &too_long),
            Err(Error::MessageTooLong { .. })
        ));
        // Nothing was lost: the same key, the same service, still sign.
        let message = b"still serving";
        let signature = service.sign_message(key, message).unwrap();
        ed25519(&service, key)
            .verify_strict(message, &signature)
            .unwrap();
        assert_eq!(service.generation(), 1, "{mode}: the signer was replaced");
    }
}
