//! Every refusal is the exact `keyward::Error` variant, its message names the key and says what
//! to do, and the service keeps working for every other key afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use keyward::{
    Algorithm, Config, Error, KeyId, KeyService, KeySpec, Latency, MAX_KEY_LIMIT, MAX_WORKERS,
    PublicKey, Purpose, SecretService,
};

fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).unwrap();
    bytes
}

fn random_peer() -> x25519_dalek::PublicKey {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(random_bytes()))
}

/// A service in one spawn mode holding one key of every purpose.
struct Fixture {
    mode: &'static str,
    service: SecretService,
    keys: Vec<(Purpose, KeyId)>,
}

impl Fixture {
    fn key(&self, purpose: Purpose) -> KeyId {
        self.keys
            .iter()
            .find(|(p, _)| *p == purpose)
            .map(|&(_, key)| key)
            .unwrap()
    }

    fn keys_using(&self, algorithm: Algorithm) -> Vec<KeyId> {
        let keys: Vec<KeyId> = self
            .keys
            .iter()
            .filter(|(purpose, _)| purpose.algorithm() == algorithm)
            .map(|&(_, key)| key)
            .collect();
        assert!(!keys.is_empty(), "the fixture has no {algorithm} key");
        keys
    }

    /// Asserts that the service holds exactly `self.keys`, that each still does its job, and
    /// that a new key can be generated and dropped.
    fn assert_every_key_works(&self) {
        assert_keys_work(self.mode, &self.service, &self.keys);
        let fresh = self
            .service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        self.service.sign(fresh, &[1; 32]).unwrap();
        self.service.drop_key(fresh).unwrap();
    }
}

/// Both spawn modes, each with one key of every purpose.
fn fixtures() -> Vec<Fixture> {
    common::spawn_modes()
        .into_iter()
        .map(|(mode, config)| fixture(mode, config))
        .collect()
}

fn fixture(mode: &'static str, config: Config) -> Fixture {
    let service = SecretService::spawn(config).unwrap_or_else(|e| panic!("{mode}: {e}"));
    let keys = Purpose::ALL
        .into_iter()
        .map(|purpose| {
            (
                purpose,
                service.generate_key(KeySpec::new(purpose)).unwrap(),
            )
        })
        .collect();
    let fixture = Fixture {
        mode,
        service,
        keys,
    };
    fixture.assert_every_key_works();
    fixture
}

/// The service holds exactly `keys`; each reports its purpose, and signs (verifying strictly)
/// or agrees on a secret with an in-test peer.
fn assert_keys_work(mode: &str, service: &SecretService, keys: &[(Purpose, KeyId)]) {
    assert!(service.is_running(), "{mode}");
    let listed: HashSet<KeyId> = service.list_keys().unwrap().iter().map(|i| i.id).collect();
    let expected: HashSet<KeyId> = keys.iter().map(|&(_, key)| key).collect();
    assert_eq!(listed, expected, "{mode}");
    for &(purpose, key) in keys {
        let info = service.key_info(key).unwrap();
        assert_eq!(info.purpose, purpose, "{mode}");
        match info.public_key {
            // A consensus key signs typed messages only; each check signs a later round.
            PublicKey::Ed25519(public) if purpose == Purpose::Consensus => {
                static ROUND: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                let round = ROUND.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let vote = keyward::ConsensusMessage::vote(
                    keyward::ChainId([1; 32]),
                    1,
                    round,
                    random_bytes(),
                );
                let signature = service.sign_consensus(key, &vote).unwrap();
                public
                    .verify_strict(&vote.signing_bytes(), &signature)
                    .unwrap();
            }
            PublicKey::Ed25519(public) => {
                let digest = random_bytes();
                let signature = service.sign(key, &digest).unwrap();
                public.verify_strict(&digest, &signature).unwrap();
                let signer = service.signing_key(key).unwrap();
                let signature = signature::Signer::try_sign(&signer, &digest).unwrap();
                public.verify_strict(&digest, &signature).unwrap();
            }
            PublicKey::X25519(public) => {
                let peer = x25519_dalek::StaticSecret::from(random_bytes());
                let shared = service
                    .diffie_hellman(key, &x25519_dalek::PublicKey::from(&peer))
                    .unwrap();
                assert_eq!(
                    shared.expose_secret(),
                    peer.diffie_hellman(&public).as_bytes()
                );
            }
        }
    }
}

/// The key's short id as messages show it; checked to be non-empty so `contains` can fail.
fn short_id(key: KeyId) -> String {
    let short = key.to_string();
    assert_eq!(short.chars().count(), 9, "short id {short:?}");
    assert!(short.chars().take(8).all(|c| c.is_ascii_hexdigit()));
    short
}

fn assert_mentions(error: &Error, needles: &[&str]) {
    let text = error.to_string();
    for needle in needles {
        assert!(!needle.is_empty());
        assert!(
            text.contains(needle),
            "{text:?} does not mention {needle:?}"
        );
    }
}

#[test]
fn signing_with_a_handshake_key_is_wrong_key_type() {
    for fixture in fixtures() {
        let mode = fixture.mode;
        for key in fixture.keys_using(Algorithm::X25519) {
            let error = fixture.service.sign(key, &[2; 32]).unwrap_err();
            assert!(
                matches!(
                    error,
                    Error::WrongKeyType {
                        key: k,
                        algorithm: Algorithm::X25519,
                        operation: "sign",
                        needed: Algorithm::Ed25519,
                    } if k == key
                ),
                "{mode}: {error:?}"
            );
            assert_mentions(&error, &[&short_id(key), "needs an Ed25519 key"]);

            let error = fixture.service.signing_key(key).unwrap_err();
            assert!(
                matches!(
                    error,
                    Error::WrongKeyType {
                        key: k,
                        algorithm: Algorithm::X25519,
                        operation: "signing_key",
                        needed: Algorithm::Ed25519,
                    } if k == key
                ),
                "{mode}: {error:?}"
            );
            fixture.assert_every_key_works();
        }
    }
}

#[test]
fn diffie_hellman_with_a_signing_key_is_wrong_key_type() {
    for fixture in fixtures() {
        let mode = fixture.mode;
        for key in fixture.keys_using(Algorithm::Ed25519) {
            let error = fixture
                .service
                .diffie_hellman(key, &random_peer())
                .unwrap_err();
            assert!(
                matches!(
                    error,
                    Error::WrongKeyType {
                        key: k,
                        algorithm: Algorithm::Ed25519,
                        operation: "diffie_hellman",
                        needed: Algorithm::X25519,
                    } if k == key
                ),
                "{mode}: {error:?}"
            );
            assert_mentions(&error, &[&short_id(key), "needs an X25519 key"]);
            fixture.assert_every_key_works();
        }
    }
}

/// Runs every operation that takes a key id on `key` and returns each error.
fn every_keyed_operation(service: &SecretService, key: KeyId) -> Vec<(&'static str, Error)> {
    vec![
        ("public_key", service.public_key(key).unwrap_err()),
        ("key_info", service.key_info(key).unwrap_err()),
        ("sign", service.sign(key, &[4; 32]).unwrap_err()),
        (
            "diffie_hellman",
            service.diffie_hellman(key, &random_peer()).unwrap_err(),
        ),
        ("signing_key", service.signing_key(key).unwrap_err()),
        ("drop_key", service.drop_key(key).unwrap_err()),
    ]
}

fn assert_unknown_key(mode: &str, errors: Vec<(&'static str, Error)>, key: KeyId) {
    assert_eq!(errors.len(), 6);
    for (operation, error) in errors {
        assert!(
            matches!(error, Error::UnknownKey(k) if k == key),
            "{mode} {operation}: {error:?}"
        );
        assert_mentions(&error, &[&short_id(key), "not held by this signer"]);
    }
}

#[test]
fn a_key_of_another_service_is_unknown_key() {
    for fixture in fixtures() {
        let mode = fixture.mode;
        let (_, config) = common::spawn_modes()
            .into_iter()
            .find(|(m, _)| *m == mode)
            .unwrap();
        let other = SecretService::spawn(config).unwrap();
        for purpose in Purpose::ALL {
            let foreign = other.generate_key(KeySpec::new(purpose)).unwrap();
            assert_unknown_key(
                mode,
                every_keyed_operation(&fixture.service, foreign),
                foreign,
            );
            // The refusals (drop_key included) left the other service's key alone.
            assert_eq!(other.key_info(foreign).unwrap().purpose, purpose);
            fixture.assert_every_key_works();
        }
        let other_keys: Vec<(Purpose, KeyId)> = other
            .list_keys()
            .unwrap()
            .iter()
            .map(|i| (i.purpose, i.id))
            .collect();
        assert_eq!(other_keys.len(), Purpose::ALL.len());
        assert_keys_work(mode, &other, &other_keys);
        // And the other way round.
        for &(_, key) in &fixture.keys {
            assert_unknown_key(mode, every_keyed_operation(&other, key), key);
        }
        fixture.assert_every_key_works();
    }
}

#[test]
fn a_dropped_key_is_unknown_key_for_every_operation() {
    for mut fixture in fixtures() {
        let mode = fixture.mode;
        for purpose in Purpose::ALL {
            let key = fixture.key(purpose);
            fixture.service.drop_key(key).unwrap();
            fixture.keys.retain(|&(_, k)| k != key);
            // Gone means gone: even the wrong-algorithm operation reports the missing key.
            assert_unknown_key(mode, every_keyed_operation(&fixture.service, key), key);
            fixture.assert_every_key_works();
        }
        assert!(fixture.keys.is_empty());
        assert!(fixture.service.list_keys().unwrap().is_empty(), "{mode}");
    }
}

#[test]
fn dropping_a_key_twice_is_unknown_key() {
    for mut fixture in fixtures() {
        let mode = fixture.mode;
        let key = fixture
            .service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        fixture.service.drop_key(key).unwrap();
        let error = fixture.service.drop_key(key).unwrap_err();
        assert!(
            matches!(error, Error::UnknownKey(k) if k == key),
            "{mode}: {error:?}"
        );
        assert_mentions(&error, &[&short_id(key), "dropped"]);
        fixture.assert_every_key_works();
        // The same for a key of the fixture.
        let (purpose, key) = fixture.keys.remove(0);
        fixture.service.drop_key(key).unwrap();
        let error = fixture.service.drop_key(key).unwrap_err();
        assert!(
            matches!(error, Error::UnknownKey(k) if k == key),
            "{mode} {purpose}: {error:?}"
        );
        fixture.assert_every_key_works();
    }
}

#[test]
fn a_spec_whose_algorithm_does_not_fit_its_purpose_is_refused() {
    for fixture in fixtures() {
        let mode = fixture.mode;
        for purpose in Purpose::ALL {
            let wrong = match purpose.algorithm() {
                Algorithm::Ed25519 => Algorithm::X25519,
                _ => Algorithm::Ed25519,
            };
            assert_ne!(wrong, purpose.algorithm());
            let spec = KeySpec::with_algorithm(purpose, wrong);
            let error = fixture.service.generate_key(spec).unwrap_err();
            assert!(
                matches!(error, Error::PurposeAlgorithmMismatch { spec: s } if s == spec),
                "{mode}: {error:?}"
            );
            assert_mentions(
                &error,
                &[
                    &format!("uses {}, not {wrong}", purpose.algorithm()),
                    &format!("use KeySpec::new({purpose:?})"),
                ],
            );
            // Nothing was generated.
            fixture.assert_every_key_works();
        }
    }
}

#[test]
fn the_key_limit_is_enforced_and_a_drop_frees_a_slot() {
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config.with_key_limit(3)).unwrap();
        let mut keys: Vec<(Purpose, KeyId)> = [
            Purpose::NetworkDiscovery,
            Purpose::Account,
            Purpose::NetworkHandshake,
        ]
        .into_iter()
        .map(|purpose| {
            (
                purpose,
                service.generate_key(KeySpec::new(purpose)).unwrap(),
            )
        })
        .collect();
        for purpose in Purpose::ALL {
            let error = service.generate_key(KeySpec::new(purpose)).unwrap_err();
            assert!(
                matches!(error, Error::KeyLimitReached { limit: 3 }),
                "{mode}: {error:?}"
            );
            assert_mentions(&error, &["limit of 3 keys", "drop one", "larger key_limit"]);
            assert_keys_work(mode, &service, &keys);
        }
        // A drop frees exactly one slot.
        let (_, dropped) = keys.remove(0);
        service.drop_key(dropped).unwrap();
        assert_keys_work(mode, &service, &keys);
        let purpose = Purpose::NetworkDiscovery;
        keys.push((
            purpose,
            service.generate_key(KeySpec::new(purpose)).unwrap(),
        ));
        assert!(matches!(
            service.generate_key(KeySpec::new(purpose)),
            Err(Error::KeyLimitReached { limit: 3 })
        ));
        assert_keys_work(mode, &service, &keys);
    }
}

#[test]
fn invalid_configurations_are_refused_before_anything_starts() {
    for (mode, base) in common::spawn_modes() {
        let too_long = Duration::from_millis(101);
        let cases: Vec<(Config, &str)> = vec![
            (base.clone().with_key_limit(0), "key_limit"),
            (base.clone().with_key_limit(MAX_KEY_LIMIT + 1), "key_limit"),
            (base.clone().with_workers(0), "workers"),
            (base.clone().with_workers(MAX_WORKERS + 1), "workers"),
            (
                base.clone().with_request_timeout(Duration::ZERO),
                "request_timeout",
            ),
            (
                base.clone().with_spawn_timeout(Duration::ZERO),
                "spawn_timeout",
            ),
            (
                base.clone().with_latency(Latency {
                    caller_spin: too_long,
                    signer_spin: Duration::ZERO,
                }),
                "spin times",
            ),
            (
                base.clone().with_latency(Latency {
                    caller_spin: Duration::ZERO,
                    signer_spin: too_long,
                }),
                "spin times",
            ),
        ];
        assert_eq!(MAX_KEY_LIMIT, 1024);
        assert_eq!(MAX_WORKERS, 16);
        for (config, field) in cases {
            let error = SecretService::spawn(config).unwrap_err();
            assert!(
                matches!(&error, Error::InvalidConfig(message) if message.contains(field)),
                "{mode} {field}: {error:?}"
            );
            assert_mentions(&error, &["invalid configuration", field]);
        }
    }
}

#[test]
fn the_configuration_bounds_themselves_are_accepted() {
    for (mode, base) in common::spawn_modes() {
        for config in [
            base.clone().with_key_limit(1),
            base.clone().with_key_limit(MAX_KEY_LIMIT),
            base.clone().with_workers(1),
            base.clone().with_workers(MAX_WORKERS),
            base.clone().with_latency(Latency::LOW_CPU),
        ] {
            let service = SecretService::spawn(config.clone())
                .unwrap_or_else(|e| panic!("{mode} {config:?}: {e}"));
            let key = service
                .generate_key(KeySpec::new(Purpose::Account))
                .unwrap();
            assert_keys_work(mode, &service, &[(Purpose::Account, key)]);
        }
        // A limit of one means one.
        let service = SecretService::spawn(base.clone().with_key_limit(1)).unwrap();
        let key = service
            .generate_key(KeySpec::new(Purpose::NetworkHandshake))
            .unwrap();
        assert!(matches!(
            service.generate_key(KeySpec::new(Purpose::Account)),
            Err(Error::KeyLimitReached { limit: 1 })
        ));
        assert_keys_work(mode, &service, &[(Purpose::NetworkHandshake, key)]);
    }
}

/// `bytes` with bit 255 set: RFC 7748 decoders ignore it, so it names the same point.
fn with_high_bit(mut bytes: [u8; 32]) -> [u8; 32] {
    bytes[31] |= 0x80;
    bytes
}

fn hex32(hex: &str) -> [u8; 32] {
    assert_eq!(hex.len(), 64);
    let mut bytes = [0u8; 32];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * index..2 * index + 2], 16).unwrap();
    }
    bytes
}

/// Every 32-byte encoding of a point of small order on Curve25519 or its twist under RFC 7748
/// decoding (bit 255 ignored, then reduced mod p = 2^255 - 19), as on libsodium's blocklist:
/// 0, 1, the two points of order 8, p-1, and the non-canonical p (= 0) and p+1 (= 1), each also
/// with bit 255 set.
fn low_order_points() -> Vec<[u8; 32]> {
    let canonical_and_plus_p = [
        // 0
        "0000000000000000000000000000000000000000000000000000000000000000",
        // 1
        "0100000000000000000000000000000000000000000000000000000000000000",
        // order 8
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        // order 8
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        // p - 1
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        // p (0 + p)
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        // p + 1 (1 + p)
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ];
    let mut points: Vec<[u8; 32]> = canonical_and_plus_p.into_iter().map(hex32).collect();
    let high: Vec<[u8; 32]> = points.iter().copied().map(with_high_bit).collect();
    points.extend(high);
    assert_eq!(points.len(), 14);
    points
}

#[test]
fn low_order_peer_points_are_refused() {
    let points = low_order_points();
    // The list is right: the reference X25519 gives an all-zero, non-contributory secret for
    // each point.
    for point in &points {
        let reference = x25519_dalek::StaticSecret::from(random_bytes())
            .diffie_hellman(&x25519_dalek::PublicKey::from(*point));
        assert!(!reference.was_contributory(), "{point:02x?}");
        assert_eq!(reference.as_bytes(), &[0u8; 32]);
    }
    for fixture in fixtures() {
        let mode = fixture.mode;
        for key in fixture.keys_using(Algorithm::X25519) {
            for point in &points {
                let error = fixture
                    .service
                    .diffie_hellman(key, &x25519_dalek::PublicKey::from(*point))
                    .unwrap_err();
                assert!(
                    matches!(error, Error::LowOrderPoint),
                    "{mode} {point:02x?}: {error:?}"
                );
                assert_mentions(&error, &["low-order point", "refuse this peer"]);
            }
            fixture.assert_every_key_works();
        }
    }
}

/// The remaining values of D. J. Bernstein's list of 256-bit integers that reduce to low-order
/// points mod p (p + the order-8 points, 2p - 1, 2p, 2p + 1) all have bit 255 set, so under
/// RFC 7748 decoding they are ordinary points: keyward must not refuse them, and must agree with
/// the reference implementation on the secret.
#[test]
fn encodings_that_are_not_low_order_under_rfc_7748_are_served() {
    let points: Vec<[u8; 32]> = [
        "cdeb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
        "4c9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",
        "d9ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "daffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "dbffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    ]
    .into_iter()
    .map(hex32)
    .chain((0..3).map(|_| with_high_bit(random_bytes())))
    .collect();
    for fixture in fixtures() {
        let mode = fixture.mode;
        for key in fixture.keys_using(Algorithm::X25519) {
            for point in &points {
                let peer = x25519_dalek::PublicKey::from(*point);
                let shared = fixture
                    .service
                    .diffie_hellman(key, &peer)
                    .unwrap_or_else(|e| panic!("{mode} {point:02x?}: {e}"));
                assert_ne!(shared.expose_secret(), &[0u8; 32]);
                // Bit 255 is ignored: the secret is the one for the same point without it.
                let mut cleared = *point;
                cleared[31] &= 0x7f;
                let again = fixture
                    .service
                    .diffie_hellman(key, &x25519_dalek::PublicKey::from(cleared))
                    .unwrap();
                assert_eq!(shared, again, "{mode}: bit 255 changed the secret");
            }
            fixture.assert_every_key_works();
        }
    }
}

#[test]
fn a_key_of_a_replaced_signer_is_key_from_ended_signer() {
    for mut fixture in fixtures() {
        let mode = fixture.mode;
        let old_keys = std::mem::take(&mut fixture.keys);
        assert_eq!(fixture.service.respawn().unwrap(), 2, "{mode}");
        for &(purpose, key) in &old_keys {
            for (operation, error) in every_keyed_operation(&fixture.service, key) {
                assert!(
                    matches!(error, Error::KeyFromEndedSigner { key: k, ended: 1, current: 2 } if k == key),
                    "{mode} {purpose} {operation}: {error:?}"
                );
                assert_mentions(
                    &error,
                    &[&short_id(key), "generation 1", "has ended", "keys are gone"],
                );
            }
        }
        assert!(fixture.service.list_keys().unwrap().is_empty(), "{mode}");
        fixture.keys = Purpose::ALL
            .into_iter()
            .map(|purpose| {
                let key = fixture.service.generate_key(KeySpec::new(purpose)).unwrap();
                assert!(
                    old_keys.iter().all(|&(_, old)| old != key),
                    "{mode}: a new signer's key id repeats an ended one's"
                );
                (purpose, key)
            })
            .collect();
        fixture.assert_every_key_works();
    }
}
