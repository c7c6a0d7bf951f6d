//! `sign_many`: a batch of digests signed with one key in one round trip. Every signature
//! verifies and is exactly what `sign` gives for its digest, in the order of the digests, at
//! every batch size up to the cap; a batch of none or over the cap, and a key that cannot sign,
//! are refused with typed errors and the service carries on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ed25519_dalek::VerifyingKey;
use keyward::{Error, KeyId, KeyService, KeySpec, MAX_BATCH, Purpose, SecretService};

fn ed25519_key(service: &SecretService, purpose: Purpose) -> (KeyId, VerifyingKey) {
    let key = service.generate_key(KeySpec::new(purpose)).unwrap();
    (key, *service.public_key(key).unwrap().as_ed25519().unwrap())
}

#[test]
fn a_batch_is_signed_as_sign_signs_each_digest_at_every_size_up_to_the_cap() {
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config).unwrap();
        let (key, public) = ed25519_key(&service, Purpose::NetworkDiscovery);
        for (salt, count) in [1, 2, 9, 100, MAX_BATCH].into_iter().enumerate() {
            let batch = common::numbered_digests(count, u8::try_from(salt).unwrap());
            let signatures = service
                .sign_many(key, &batch)
                .unwrap_or_else(|e| panic!("{mode}: {count} digests: {e}"));
            assert_eq!(signatures.len(), count, "{mode}");
            for (at, (digest, signature)) in batch.iter().zip(&signatures).enumerate() {
                public
                    .verify_strict(digest, signature)
                    .unwrap_or_else(|e| panic!("{mode}: {count} digests, #{at}: {e}"));
            }
            // Ed25519 is deterministic: each is the signature `sign` makes, in its place. (All
            // of them for the small batches, a spread of them at the cap.)
            let step = if count > 100 { 37 } else { 1 };
            for at in (0..count).step_by(step).chain([count - 1]) {
                assert_eq!(
                    signatures[at],
                    service.sign(key, &batch[at]).unwrap(),
                    "{mode}: {count} digests, #{at}"
                );
            }
        }
        // The same digest twice is signed twice, alike.
        let twice = service.sign_many(key, &[[9; 32], [9; 32]]).unwrap();
        assert_eq!(twice[0], twice[1], "{mode}");
        assert!(service.is_running(), "{mode}");
    }
}

#[test]
fn an_empty_or_over_cap_batch_is_refused_before_sending_and_the_service_carries_on() {
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config).unwrap();
        let pid = service.pid();
        let (key, public) = ed25519_key(&service, Purpose::Account);
        for length in [0, MAX_BATCH + 1, 4 * MAX_BATCH] {
            let error = service
                .sign_many(key, &common::numbered_digests(length, 1))
                .expect_err("refused");
            assert!(
                matches!(error, Error::BatchSize { length: l, cap } if l == length && cap == MAX_BATCH),
                "{mode}: {length} digests: {error:?}"
            );
            let said = error.to_string();
            assert!(
                said.contains(&format!("{length} digests")) && said.contains("split"),
                "{said}"
            );
        }
        // The refusals were the host's: the same signer serves on.
        assert!(service.is_running() && service.pid() == pid, "{mode}");
        let batch = common::numbered_digests(3, 2);
        let signatures = service.sign_many(key, &batch).unwrap();
        for (digest, signature) in batch.iter().zip(&signatures) {
            public.verify_strict(digest, signature).unwrap();
        }
    }
}

#[test]
fn a_batch_for_a_key_that_cannot_sign_is_refused_by_type() {
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config).unwrap();
        let pid = service.pid();
        let handshake = service
            .generate_key(KeySpec::new(Purpose::NetworkHandshake))
            .unwrap();
        let error = service
            .sign_many(handshake, &common::numbered_digests(4, 3))
            .unwrap_err();
        assert!(
            matches!(
                error,
                Error::WrongKeyType {
                    key,
                    algorithm: keyward::Algorithm::X25519,
                    operation: "sign_many",
                    needed: keyward::Algorithm::Ed25519,
                } if key == handshake
            ),
            "{mode}: {error:?}"
        );
        // A dropped key, and a key of another service, are unknown.
        let (dropped, _) = ed25519_key(&service, Purpose::NetworkDiscovery);
        service.drop_key(dropped).unwrap();
        assert!(
            matches!(service.sign_many(dropped, &common::numbered_digests(2, 4)), Err(Error::UnknownKey(k)) if k == dropped),
            "{mode}"
        );
        let unknown: KeyId = "ee".repeat(24).parse().unwrap();
        assert!(matches!(
            service.sign_many(unknown, &common::numbered_digests(2, 5)),
            Err(Error::UnknownKey(_))
        ));
        assert!(service.is_running() && service.pid() == pid, "{mode}");
        let (key, public) = ed25519_key(&service, Purpose::NetworkDiscovery);
        let signatures = service.sign_many(key, &[[6; 32]]).unwrap();
        public.verify_strict(&[6; 32], &signatures[0]).unwrap();
    }
}
