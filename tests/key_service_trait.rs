//! The service API is one object-safe trait, `KeyService`: a validator can hold an
//! `Arc<dyn KeyService>` and use every operation without knowing which implementation it has.
//! These tests touch the service only through the trait object.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use keyward::{Error, KeyService, KeySpec, Purpose, SecretService};

/// Everything a validator does with its four keys, through nothing but the trait.
fn validator_setup(service: &dyn KeyService) {
    let keys: Vec<_> = Purpose::ALL
        .into_iter()
        .map(|purpose| {
            (
                purpose,
                service.generate_key(KeySpec::new(purpose)).unwrap(),
            )
        })
        .collect();
    let listed = service.list_keys().unwrap();
    assert_eq!(listed.len(), 4);
    for &(purpose, key) in &keys {
        let info = service.key_info(key).unwrap();
        assert_eq!((info.id, info.purpose), (key, purpose));
        assert!(listed.contains(&info));
        assert_eq!(service.public_key(key).unwrap(), info.public_key);
    }
    let account = keys[0].1;
    let verifying = *service.public_key(account).unwrap().as_ed25519().unwrap();
    let digest = [0x42; 32];
    let signature = service.sign(account, &digest).unwrap();
    verifying.verify_strict(&digest, &signature).unwrap();
    let message = b"a handshake transcript of some length that is not 32 bytes";
    let signature = service.sign_message(account, message).unwrap();
    verifying.verify_strict(message, &signature).unwrap();
    let votes: Vec<[u8; 32]> = (0..16u8).map(|vote| [vote; 32]).collect();
    let signatures = service.sign_many(account, &votes).unwrap();
    assert_eq!(signatures.len(), votes.len());
    for (vote, signature) in votes.iter().zip(&signatures) {
        verifying.verify_strict(vote, signature).unwrap();
    }
    assert_eq!(signatures[0], service.sign(account, &votes[0]).unwrap());
    assert!(matches!(
        service.sign_many(account, &vec![[0; 32]; keyward::MAX_BATCH + 1]),
        Err(Error::BatchSize { .. })
    ));

    // The consensus key signs typed messages through the trait, guarded.
    let consensus = keys[1].1;
    let vote = keyward::ConsensusMessage::vote(keyward::ChainId([2; 32]), 1, 1, [3; 32]);
    let signature = service.sign_consensus(consensus, &vote).unwrap();
    service
        .public_key(consensus)
        .unwrap()
        .as_ed25519()
        .unwrap()
        .verify_strict(&vote.signing_bytes(), &signature)
        .unwrap();
    assert!(matches!(
        service.sign_consensus(
            consensus,
            &keyward::ConsensusMessage::vote(keyward::ChainId([2; 32]), 1, 1, [4; 32])
        ),
        Err(Error::WouldDoubleSign { .. })
    ));

    let handshake = keys[3].1;
    let peer = x25519_dalek::StaticSecret::from([5u8; 32]);
    let shared = service
        .diffie_hellman(handshake, &x25519_dalek::PublicKey::from(&peer))
        .unwrap();
    let ours = service.public_key(handshake).unwrap();
    assert_eq!(
        shared.expose_secret(),
        peer.diffie_hellman(ours.as_x25519().unwrap()).as_bytes()
    );

    service.drop_key(account).unwrap();
    assert!(matches!(
        service.sign(account, &digest),
        Err(Error::UnknownKey(key)) if key == account
    ));
    assert_eq!(service.list_keys().unwrap().len(), 3);
}

#[test]
fn every_operation_works_through_an_arc_dyn_key_service() {
    for (mode, config) in common::spawn_modes() {
        let service: Arc<dyn KeyService> = Arc::new(SecretService::spawn(config).unwrap());
        validator_setup(service.as_ref());
        // The same object, shared with other threads through the trait.
        let threads: Vec<_> = (0..4u8)
            .map(|thread| {
                let service = Arc::clone(&service);
                std::thread::spawn(move || {
                    let key = service
                        .generate_key(KeySpec::new(Purpose::NetworkDiscovery))
                        .unwrap();
                    let message = [thread; 100];
                    let signature = service.sign_message(key, &message).unwrap();
                    let public = service.public_key(key).unwrap();
                    let public = public.as_ed25519().unwrap();
                    public.verify_strict(&message, &signature).unwrap();
                    let batch = [[thread; 32], [thread ^ 0xff; 32]];
                    let signatures = service.sign_many(key, &batch).unwrap();
                    for (digest, signature) in batch.iter().zip(&signatures) {
                        public.verify_strict(digest, signature).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread
                .join()
                .unwrap_or_else(|_| panic!("{mode}: a thread failed"));
        }
    }
}
