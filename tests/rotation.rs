//! Property: a key rotates in place. `rotate_key` gives the same `KeyId` a new version with a
//! fresh secret, durable in the sealed store before it returns; the plain calls use the new
//! version at once; the previous version still signs and agrees (through `*_with_version`) as
//! its old public key says for exactly its grace period, then is refused and erased, on disk
//! too; a consensus key keeps its watermarks across the rotation; at most two previous versions
//! are held in their grace; and a rotation whose write fails changes nothing.
//!
//! And what a rotation must not break elsewhere: a `KeySigner` signs as the key it reports; a
//! backup made during the grace restores each key once, as its current version (never the
//! previous one as a key of its own, with no watermarks); a store with a version to purge
//! still opens on a full disk, and a backup made after a purge that could not be written
//! restores; an absurd grace is no panic and leaves a store that opens.
//!
//! Each test runs in both spawn modes where that is cheap (the grace waits are a second or two
//! per mode). Times in the store are whole seconds, so a time is checked to within a second.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod age_util;
mod common;
mod store_util;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use ed25519_dalek::{Signature, VerifyingKey};
use keyward::{
    ChainId, ConsensusMessage, Error, KeyId, KeyService, KeySpec, KeyVersion, PublicKey, Purpose,
    SecretService, SpawnMode, StoreCreation,
};
use store_util::{Scratch, StoreBase, create_config, open_config, record_count};

const CHAIN: ChainId = ChainId([0xc7; 32]);
/// A grace period no test outlives.
const LONG: Duration = Duration::from_secs(3600);
/// The shortest grace that still leaves the old version held for a moment.
const SHORT: Duration = Duration::from_secs(1);
/// How far a time the store kept may be from the instant it stands for: it keeps whole seconds.
const SLACK: Duration = Duration::from_millis(1100);

fn modes() -> Vec<(&'static str, SpawnMode)> {
    vec![
        ("fork", SpawnMode::Fork),
        (
            "fork-exec",
            SpawnMode::ForkExec {
                program: common::signer_program(),
            },
        ),
    ]
}

/// A sealed store in a scratch directory, and a service on it in one spawn mode.
struct Fixture {
    what: String,
    scratch: Scratch,
    unlock: PathBuf,
    mode: SpawnMode,
    /// `None` while the store is closed.
    running: Option<SecretService>,
}

impl Fixture {
    fn new(name: &str, mode: &str, spawn_mode: SpawnMode) -> Self {
        let what = format!("{name} ({mode})");
        let scratch = Scratch::new(&format!("rotation-{name}-{mode}"));
        let unlock = scratch.unlock_file("unlock", b"rotation tests\n");
        let service = SecretService::spawn(
            create_config(&scratch.store(), &unlock).with_spawn_mode(spawn_mode.clone()),
        )
        .unwrap_or_else(|error| panic!("{what}: spawn: {error}"));
        Fixture {
            what,
            scratch,
            unlock,
            mode: spawn_mode,
            running: Some(service),
        }
    }

    fn service(&self) -> &SecretService {
        self.running.as_ref().expect("the store is open")
    }

    /// Drops the service: its signer ends and the store is closed.
    fn close(&mut self) {
        drop(self.running.take());
    }

    /// Opens the (closed) store with a new service.
    fn open(&mut self) {
        assert!(self.running.is_none(), "the store is open");
        let config =
            open_config(&self.scratch.store(), &self.unlock).with_spawn_mode(self.mode.clone());
        self.running = Some(
            SecretService::spawn(config)
                .unwrap_or_else(|error| panic!("{}: reopening the store: {error}", self.what)),
        );
    }

    fn reopen(&mut self) {
        self.close();
        self.open();
    }

    /// The number of key records in the store file on disk.
    fn records_on_disk(&self) -> usize {
        record_count(&self.scratch.state())
    }
}

/// A version as a comparable tuple.
fn fields(version: &KeyVersion) -> (u32, PublicKey, SystemTime, Option<SystemTime>) {
    (
        version.version,
        version.public_key,
        version.created,
        version.retires,
    )
}

fn describe(versions: &[KeyVersion]) -> String {
    versions
        .iter()
        .map(|v| {
            format!(
                "version {} {} created {:?} retires {:?}",
                v.version, v.public_key, v.created, v.retires
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Asserts `time` is within the store's second of `from..=to`.
fn assert_between(what: &str, time: SystemTime, from: SystemTime, to: SystemTime) {
    assert!(
        time + SLACK >= from && time <= to + SLACK,
        "{what}: {time:?} is not between {from:?} and {to:?} (to the second)"
    );
}

fn ed25519(public: PublicKey) -> VerifyingKey {
    *public.as_ed25519().unwrap()
}

/// Whether `signature` over `message` verifies under `public`.
fn verifies(public: PublicKey, message: &[u8], signature: &Signature) -> bool {
    ed25519(public).verify_strict(message, signature).is_ok()
}

/// Sleeps until the rotation's grace is over: at least `grace` and a half from `rotated`, and
/// half a second past the retirement time the service reported (whole seconds).
fn wait_past_grace(rotated: SystemTime, grace: Duration, retires: SystemTime) {
    let until =
        (rotated + grace + Duration::from_millis(500)).max(retires + Duration::from_millis(500));
    if let Ok(left) = until.duration_since(SystemTime::now()) {
        std::thread::sleep(left);
    }
}

/// Waits for the start of the next second (see `a_grace_is_never_shorter_than_asked` for why).
fn start_of_a_second() {
    common::sleep_to_the_start_of_a_second();
}

/// The error of a call that must fail, or a panic naming `what`.
fn refused<T>(result: keyward::Result<T>, what: &str) -> Error {
    match result {
        Ok(_) => panic!("{what}: it succeeded"),
        Err(error) => {
            println!("{what}: {error}");
            error
        }
    }
}

/// Whether `error` says version `version` of `key` is retired or no longer held.
fn is_retired_or_unknown(error: &Error, key: KeyId, version: u32) -> bool {
    matches!(error,
        Error::VersionRetired { key: k, version: v } | Error::UnknownVersion { key: k, version: v }
            if *k == key && *v == version)
}

#[test]
fn a_rotation_keeps_the_id_and_makes_version_2_with_a_new_public_key() {
    for (mode, spawn_mode) in modes() {
        let fixture = Fixture::new("new-version", mode, spawn_mode);
        let (what, service) = (&fixture.what, fixture.service());
        let made = SystemTime::now();
        let key = service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        let old = service.public_key(key).unwrap();
        // A signature the caller made and kept before the rotation.
        let before = service.sign(key, &[0x01; 32]).unwrap();
        assert!(verifies(old, &[0x01; 32], &before), "{what}: control");
        let versions = service.key_versions(key).unwrap();
        assert_eq!(versions.len(), 1, "{what}: {}", describe(&versions));
        assert_eq!(
            (versions[0].version, versions[0].public_key),
            (1, old),
            "{what}"
        );
        assert_eq!(
            versions[0].retires, None,
            "{what}: a fresh key's version retires"
        );

        let rotated = SystemTime::now();
        let new = service.rotate_key(key, LONG).unwrap();
        let returned = SystemTime::now();
        assert_eq!(new.version, 2, "{what}");
        assert_ne!(
            new.public_key, old,
            "{what}: the rotation kept the public key"
        );
        assert_eq!(new.public_key.algorithm(), old.algorithm(), "{what}");
        assert_eq!(new.retires, None, "{what}: the new version retires");
        assert_between(
            &format!("{what}: version 2 created"),
            new.created,
            rotated,
            returned,
        );

        // The same id, now with the new public key, everywhere a caller looks.
        assert_eq!(service.public_key(key).unwrap(), new.public_key, "{what}");
        let info = service.key_info(key).unwrap();
        assert_eq!(
            (info.id, info.purpose, info.public_key),
            (key, Purpose::Account, new.public_key)
        );
        let listed = service.list_keys().unwrap();
        assert_eq!(listed, vec![info], "{what}: list_keys");
        // The signature made before still verifies under the public key the caller kept, and
        // not under the new one.
        assert!(verifies(old, &[0x01; 32], &before), "{what}");
        assert!(!verifies(new.public_key, &[0x01; 32], &before), "{what}");

        let versions = service.key_versions(key).unwrap();
        let shown = describe(&versions);
        assert_eq!(versions.len(), 2, "{what}: {shown}");
        assert_eq!(
            (versions[0].version, versions[0].public_key),
            (1, old),
            "{what}: {shown}"
        );
        assert_between(
            &format!("{what}: version 1 created"),
            versions[0].created,
            made,
            rotated,
        );
        let retires = versions[0]
            .retires
            .unwrap_or_else(|| panic!("{what}: version 1 does not retire: {shown}"));
        assert_between(
            &format!("{what}: version 1 retires"),
            retires,
            rotated + LONG,
            returned + LONG,
        );
        assert_eq!(fields(&versions[1]), fields(&new), "{what}: {shown}");
    }
}

#[test]
fn during_the_grace_the_old_version_signs_and_agrees_as_the_old_public_key() {
    for (mode, spawn_mode) in modes() {
        let fixture = Fixture::new("grace", mode, spawn_mode);
        let (what, service) = (&fixture.what, fixture.service());

        // Ed25519: version 1 by number, the plain calls with version 2.
        let key = service
            .generate_key(KeySpec::new(Purpose::NetworkDiscovery))
            .unwrap();
        let old = service.public_key(key).unwrap();
        let new = service.rotate_key(key, LONG).unwrap().public_key;
        let digest = [0x02; 32];
        let by_old = service.sign_with_version(key, 1, &digest).unwrap();
        assert!(
            verifies(old, &digest, &by_old),
            "{what}: version 1 signs as the old key"
        );
        assert!(
            !verifies(new, &digest, &by_old),
            "{what}: version 1 signs as the new key"
        );
        let by_new = service.sign_with_version(key, 2, &digest).unwrap();
        assert!(
            verifies(new, &digest, &by_new),
            "{what}: version 2 signs as the new key"
        );
        let plain = service.sign(key, &digest).unwrap();
        assert!(
            verifies(new, &digest, &plain),
            "{what}: sign uses the new version"
        );
        assert!(
            !verifies(old, &digest, &plain),
            "{what}: sign uses the old version"
        );
        let message = b"a message, not a digest";
        let signed = service.sign_message(key, message).unwrap();
        assert!(
            verifies(new, message, &signed),
            "{what}: sign_message uses the new version"
        );
        let digests = common::numbered_digests(3, 0x5b);
        for (digest, signature) in digests
            .iter()
            .zip(service.sign_many(key, &digests).unwrap())
        {
            assert!(
                verifies(new, digest, &signature),
                "{what}: sign_many uses the new version"
            );
        }

        // X25519: the peer computes the same secret with the old public key as version 1 does.
        let handshake = service
            .generate_key(KeySpec::new(Purpose::NetworkHandshake))
            .unwrap();
        let old = *service.public_key(handshake).unwrap().as_x25519().unwrap();
        let new = *service
            .rotate_key(handshake, LONG)
            .unwrap()
            .public_key
            .as_x25519()
            .unwrap();
        assert_ne!(old, new, "{what}");
        let peer = x25519_dalek::StaticSecret::from([0x6d; 32]);
        let peer_public = x25519_dalek::PublicKey::from(&peer);
        let with_old = service
            .diffie_hellman_with_version(handshake, 1, &peer_public)
            .unwrap();
        assert_eq!(
            with_old.expose_secret(),
            peer.diffie_hellman(&old).as_bytes(),
            "{what}: version 1 agrees as the old public key"
        );
        let plain = service.diffie_hellman(handshake, &peer_public).unwrap();
        assert_eq!(
            plain.expose_secret(),
            peer.diffie_hellman(&new).as_bytes(),
            "{what}: diffie_hellman uses the new version"
        );
        let with_new = service
            .diffie_hellman_with_version(handshake, 2, &peer_public)
            .unwrap();
        assert_eq!(with_new, plain, "{what}");
        assert_ne!(with_old, plain, "{what}: both versions agree on one secret");
    }
}

#[test]
fn after_the_grace_the_old_version_is_refused_and_then_gone() {
    for (mode, spawn_mode) in modes() {
        let fixture = Fixture::new("after-grace", mode, spawn_mode);
        let (what, service) = (&fixture.what, fixture.service());
        let key = service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        let old = service.public_key(key).unwrap();
        start_of_a_second();
        let rotated = SystemTime::now();
        let new = service.rotate_key(key, SHORT).unwrap();
        // Control: within the grace, version 1 signs.
        let signature = service.sign_with_version(key, 1, &[0x03; 32]).unwrap();
        assert!(verifies(old, &[0x03; 32], &signature), "{what}: control");
        let retires = service.key_versions(key).unwrap()[0].retires.unwrap();
        assert_between(
            &format!("{what}: retires"),
            retires,
            rotated + SHORT,
            SystemTime::now() + SHORT,
        );

        wait_past_grace(rotated, SHORT, retires);
        let error = refused(
            service.sign_with_version(key, 1, &[0x04; 32]),
            &format!("{what}: version 1 after its grace"),
        );
        assert!(is_retired_or_unknown(&error, key, 1), "{what}: {error:?}");
        let versions = service.key_versions(key).unwrap();
        assert_eq!(versions.len(), 1, "{what}: {}", describe(&versions));
        assert_eq!(fields(&versions[0]), fields(&new), "{what}");
        let error = refused(
            service.sign_with_version(key, 1, &[0x05; 32]),
            &format!("{what}: version 1 purged"),
        );
        assert!(is_retired_or_unknown(&error, key, 1), "{what}: {error:?}");

        // The current version still signs, by number and plainly.
        for signature in [
            service.sign(key, &[0x06; 32]).unwrap(),
            service.sign_with_version(key, 2, &[0x06; 32]).unwrap(),
        ] {
            assert!(verifies(new.public_key, &[0x06; 32], &signature), "{what}");
        }
        // On disk too: one record left.
        assert_eq!(fixture.records_on_disk(), 1, "{what}: records on disk");
    }
}

/// The purge at the end of a grace period runs by itself: with no call made after the
/// rotation, the previous version's record leaves the store file soon after it retires (the
/// service's timer; every other purge is triggered by a call, so none of them can be the one
/// that did it here).
#[test]
fn a_retired_version_is_purged_on_time_with_no_call() {
    let fixture = Fixture::new("timer", "fork", SpawnMode::Fork);
    let service = fixture.service();
    let key = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    service.rotate_key(key, SHORT).unwrap();
    assert_eq!(
        fixture.records_on_disk(),
        2,
        "control: version 1 is on disk"
    );
    // Retired within two seconds (rounded up); the timer wakes a second after that.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fixture.records_on_disk() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "version 1's record is still in the store file 10 s after its grace"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn with_no_grace_the_old_version_is_gone_at_once() {
    for (mode, spawn_mode) in modes() {
        let mut fixture = Fixture::new("no-grace", mode, spawn_mode);
        let what = fixture.what.clone();
        let service = fixture.service();
        let key = service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        let handshake = service
            .generate_key(KeySpec::new(Purpose::NetworkHandshake))
            .unwrap();
        assert_eq!(
            fixture.records_on_disk(),
            2,
            "{what}: control: records before"
        );
        let new = service.rotate_key(key, Duration::ZERO).unwrap();
        assert_eq!(new.version, 2, "{what}");
        // Asked at once, before anything else could purge it.
        let error = refused(
            service.sign_with_version(key, 1, &[0x07; 32]),
            &format!("{what}: version 1"),
        );
        assert!(is_retired_or_unknown(&error, key, 1), "{what}: {error:?}");
        service.rotate_key(handshake, Duration::ZERO).unwrap();
        let peer = x25519_dalek::PublicKey::from([0x09; 32]);
        let error = refused(
            service.diffie_hellman_with_version(handshake, 1, &peer),
            &format!("{what}: handshake version 1"),
        );
        assert!(
            is_retired_or_unknown(&error, handshake, 1),
            "{what}: {error:?}"
        );
        // Not on disk either: still one record per key.
        assert_eq!(fixture.records_on_disk(), 2, "{what}: records after");
        let versions = service.key_versions(key).unwrap();
        assert_eq!(versions.len(), 1, "{what}: {}", describe(&versions));
        assert_eq!(fields(&versions[0]), fields(&new), "{what}");
        assert!(verifies(
            new.public_key,
            &[0x08; 32],
            &service.sign(key, &[0x08; 32]).unwrap()
        ));

        fixture.reopen();
        let service = fixture.service();
        let versions = service.key_versions(key).unwrap();
        assert_eq!(
            versions.len(),
            1,
            "{what}: reopened: {}",
            describe(&versions)
        );
        assert_eq!(versions[0].version, 2, "{what}: reopened");
        assert_eq!(
            service.public_key(key).unwrap(),
            new.public_key,
            "{what}: reopened"
        );
    }
}

#[test]
fn a_third_version_in_grace_is_refused_and_changes_nothing() {
    let fixture = Fixture::new("limit", "fork", SpawnMode::Fork);
    let (what, service) = (&fixture.what, fixture.service());
    let key = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    assert_eq!(service.rotate_key(key, LONG).unwrap().version, 2);
    let current = service.rotate_key(key, LONG).unwrap();
    assert_eq!(current.version, 3);
    let versions = service.key_versions(key).unwrap();
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1, 2, 3],
        "{what}"
    );
    let state = fixture.scratch.state();

    let error = refused(
        service.rotate_key(key, LONG),
        &format!("{what}: a third rotation"),
    );
    assert!(
        matches!(error, Error::VersionLimit { key: k, cap: 2 } if k == key),
        "{what}: {error:?}"
    );
    // Nothing changed: the versions, the public key, the file.
    let after = service.key_versions(key).unwrap();
    assert_eq!(
        after.iter().map(fields).collect::<Vec<_>>(),
        versions.iter().map(fields).collect::<Vec<_>>(),
        "{what}"
    );
    assert_eq!(
        service.public_key(key).unwrap(),
        current.public_key,
        "{what}"
    );
    assert!(
        fixture.scratch.state() == state,
        "{what}: the refused rotation wrote the store"
    );
    // Every held version still signs as its own public key.
    for version in &versions {
        let signature = service
            .sign_with_version(key, version.version, &[0x0a; 32])
            .unwrap();
        assert!(
            verifies(version.public_key, &[0x0a; 32], &signature),
            "{what}: version {}",
            version.version
        );
    }
    // A rotation with no grace adds no version in grace, so the limit allows it (as the
    // error's message says): version 3 is erased at once, 1 and 2 stay in their grace.
    let fourth = service.rotate_key(key, Duration::ZERO).unwrap();
    assert_eq!(fourth.version, 4, "{what}");
    let after = service.key_versions(key).unwrap();
    assert_eq!(
        after.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1, 2, 4],
        "{what}: {}",
        describe(&after)
    );
    let error = refused(
        service.sign_with_version(key, 3, &[0x0a; 32]),
        &format!("{what}: version 3 after a rotation with no grace"),
    );
    assert!(is_retired_or_unknown(&error, key, 3), "{what}: {error:?}");
    assert_eq!(fixture.records_on_disk(), 3, "{what}: records on disk");
}

/// The limit counts versions in grace: once one retires, the next rotation (which purges
/// first) is allowed.
#[test]
fn the_limit_frees_up_when_a_previous_version_retires() {
    let fixture = Fixture::new("limit-frees", "fork", SpawnMode::Fork);
    let (what, service) = (&fixture.what, fixture.service());
    let key = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    start_of_a_second();
    let rotated = SystemTime::now();
    service.rotate_key(key, SHORT).unwrap();
    let retires = service.key_versions(key).unwrap()[0].retires.unwrap();
    service.rotate_key(key, LONG).unwrap();
    // Control: now the limit holds.
    let error = refused(service.rotate_key(key, LONG), &format!("{what}: control"));
    assert!(
        matches!(error, Error::VersionLimit { .. }),
        "{what}: {error:?}"
    );
    wait_past_grace(rotated, SHORT, retires);
    let fourth = service
        .rotate_key(key, LONG)
        .unwrap_or_else(|error| panic!("{what}: a rotation after version 1 retired: {error}"));
    assert_eq!(fourth.version, 4, "{what}");
    let versions = service.key_versions(key).unwrap();
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [2, 3, 4],
        "{what}: {}",
        describe(&versions)
    );
}

#[test]
fn unknown_versions_and_unknown_keys_are_refused() {
    let fixture = Fixture::new("unknown", "fork", SpawnMode::Fork);
    let (what, service) = (&fixture.what, fixture.service());
    let key = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    let handshake = service
        .generate_key(KeySpec::new(Purpose::NetworkHandshake))
        .unwrap();
    service.rotate_key(key, LONG).unwrap();
    let peer = x25519_dalek::PublicKey::from([0x0b; 32]);
    // The brief's 7, and the edges: 0 (never a version), 3 (one past the last), u32::MAX;
    // the handshake key, not rotated, has only version 1.
    for version in [0, 3, 7, u32::MAX] {
        let error = refused(
            service.sign_with_version(key, version, &[0x0c; 32]),
            &format!("{what}: version {version}"),
        );
        assert!(
            matches!(error, Error::UnknownVersion { key: k, version: v } if k == key && v == version),
            "{what}: version {version}: {error:?}"
        );
        let error = refused(
            service.diffie_hellman_with_version(handshake, version, &peer),
            &format!("{what}: handshake version {version}"),
        );
        assert!(
            matches!(error, Error::UnknownVersion { key: k, version: v } if k == handshake && v == version),
            "{what}: handshake version {version}: {error:?}"
        );
    }
    // Control: the versions held answer.
    service.sign_with_version(key, 1, &[0x0c; 32]).unwrap();
    service.sign_with_version(key, 2, &[0x0c; 32]).unwrap();
    service
        .diffie_hellman_with_version(handshake, 1, &peer)
        .unwrap();

    // A key that does not exist: one dropped, and one id never made (another local id in the
    // same store).
    let dropped = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    service.drop_key(dropped).unwrap();
    let mut text = format!("{key:#}");
    let last = if text.ends_with('0') { "1" } else { "0" };
    text.replace_range(47.., last);
    let never: KeyId = text.parse().unwrap();
    assert_ne!(never, key);
    for missing in [dropped, never] {
        let unknown = |error: Error, call: &str| {
            assert!(
                matches!(error, Error::UnknownKey(k) if k == missing),
                "{what}: {call}: {error:?}"
            );
        };
        let state = fixture.scratch.state();
        unknown(
            refused(
                service.rotate_key(missing, LONG),
                &format!("{what}: rotate_key of a missing key"),
            ),
            "rotate_key",
        );
        assert!(
            fixture.scratch.state() == state,
            "{what}: a refused rotation wrote the store"
        );
        unknown(
            refused(
                service.key_versions(missing),
                &format!("{what}: key_versions of a missing key"),
            ),
            "key_versions",
        );
        unknown(
            refused(
                service.sign_with_version(missing, 1, &[0x0d; 32]),
                &format!("{what}: sign_with_version of a missing key"),
            ),
            "sign_with_version",
        );
        unknown(
            refused(
                service.diffie_hellman_with_version(missing, 1, &peer),
                &format!("{what}: diffie_hellman_with_version of a missing key"),
            ),
            "diffie_hellman_with_version",
        );
    }
    // A version call of the wrong kind for the key's algorithm is refused as such.
    let error = refused(
        service.sign_with_version(handshake, 1, &[0x0e; 32]),
        &format!("{what}: sign with X25519"),
    );
    assert!(
        matches!(error, Error::WrongKeyType { .. }),
        "{what}: {error:?}"
    );
    let error = refused(
        service.diffie_hellman_with_version(key, 1, &peer),
        &format!("{what}: DH with Ed25519"),
    );
    assert!(
        matches!(error, Error::WrongKeyType { .. }),
        "{what}: {error:?}"
    );
}

#[test]
fn a_rotated_consensus_key_keeps_its_watermarks() {
    for (mode, spawn_mode) in modes() {
        let mut fixture = Fixture::new("consensus", mode, spawn_mode);
        let what = fixture.what.clone();
        let service = fixture.service();
        let key = service
            .generate_key(KeySpec::new(Purpose::Consensus))
            .unwrap();
        let old = service.public_key(key).unwrap();
        let (a, b) = ([0xaa; 32], [0xbb; 32]);
        service
            .sign_consensus(key, &ConsensusMessage::vote(CHAIN, 1, 10, a))
            .unwrap();
        let marks = service.watermarks(key).unwrap();
        let new = service.rotate_key(key, LONG).unwrap();
        assert_eq!(
            service.watermarks(key).unwrap(),
            marks,
            "{what}: the watermarks changed"
        );

        // The same round with another block: refused, with either version's key.
        let conflicting = ConsensusMessage::vote(CHAIN, 1, 10, b);
        let error = refused(
            service.sign_consensus(key, &conflicting),
            &format!("{what}: round 10, digest B"),
        );
        assert!(
            matches!(error, Error::WouldDoubleSign { key: k, .. } if k == key),
            "{what}: {error:?}"
        );
        let lower = ConsensusMessage::vote(CHAIN, 1, 9, b);
        assert!(
            matches!(
                service.sign_consensus(key, &lower),
                Err(Error::WouldDoubleSign { .. })
            ),
            "{what}: round 9"
        );
        // The next round signs, as the new public key.
        let next = ConsensusMessage::vote(CHAIN, 1, 11, b);
        let signature = service.sign_consensus(key, &next).unwrap();
        assert!(
            verifies(new.public_key, &next.signing_bytes(), &signature),
            "{what}: round 11 under the new key"
        );
        assert!(
            !verifies(old, &next.signing_bytes(), &signature),
            "{what}: round 11 under the old key"
        );
        // No way around the guard through the old version: it signs digests only, and a
        // consensus key signs no digest.
        let blind =
            service.sign_with_version(key, 1, &next.signing_bytes()[..32].try_into().unwrap());
        assert!(
            blind.is_err(),
            "{what}: the old version of a consensus key signed a raw digest"
        );
        println!(
            "{what}: version 1 of a consensus key, asked to sign a digest: {}",
            blind.unwrap_err()
        );

        // After a restart, the lineage's watermark (round 11) holds.
        fixture.reopen();
        let service = fixture.service();
        let again = ConsensusMessage::vote(CHAIN, 1, 11, a);
        assert!(
            matches!(
                service.sign_consensus(key, &again),
                Err(Error::WouldDoubleSign { .. })
            ),
            "{what}: reopened, round 11"
        );
        let later = ConsensusMessage::vote(CHAIN, 1, 12, a);
        let signature = service.sign_consensus(key, &later).unwrap();
        assert!(
            verifies(new.public_key, &later.signing_bytes(), &signature),
            "{what}: reopened, round 12"
        );
    }
}

#[test]
fn a_rotation_is_durable_with_its_grace() {
    for (mode, spawn_mode) in modes() {
        let mut fixture = Fixture::new("durable", mode, spawn_mode);
        let what = fixture.what.clone();
        let service = fixture.service();
        let key = service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        let old = service.public_key(key).unwrap();
        let new = service.rotate_key(key, LONG).unwrap();
        let versions = service.key_versions(key).unwrap();
        assert_eq!(
            fixture.records_on_disk(),
            2,
            "{what}: records after the rotation"
        );
        // A respawned signer (same service) holds both versions too.
        service.respawn().unwrap();
        let respawned = service.key_versions(key).unwrap();
        assert_eq!(
            respawned.iter().map(fields).collect::<Vec<_>>(),
            versions.iter().map(fields).collect::<Vec<_>>(),
            "{what}: respawned"
        );

        fixture.reopen();
        let service = fixture.service();
        assert_eq!(
            service.public_key(key).unwrap(),
            new.public_key,
            "{what}: reopened"
        );
        let reopened = service.key_versions(key).unwrap();
        assert_eq!(
            reopened.iter().map(fields).collect::<Vec<_>>(),
            versions.iter().map(fields).collect::<Vec<_>>(),
            "{what}: reopened: {}",
            describe(&reopened)
        );
        let signature = service.sign_with_version(key, 1, &[0x0f; 32]).unwrap();
        assert!(
            verifies(old, &[0x0f; 32], &signature),
            "{what}: reopened, version 1"
        );
        let signature = service.sign(key, &[0x0f; 32]).unwrap();
        assert!(
            verifies(new.public_key, &[0x0f; 32], &signature),
            "{what}: reopened, current"
        );
    }
}

#[test]
fn a_version_whose_grace_ended_while_the_store_was_closed_is_gone_after_a_reopen() {
    for (mode, spawn_mode) in modes() {
        let mut fixture = Fixture::new("closed-grace", mode, spawn_mode);
        let what = fixture.what.clone();
        let service = fixture.service();
        let key = service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        start_of_a_second();
        let rotated = SystemTime::now();
        let new = service.rotate_key(key, SHORT).unwrap();
        let retires = service.key_versions(key).unwrap()[0].retires.unwrap();
        fixture.close();
        // Control: the closed store holds both versions.
        assert_eq!(fixture.records_on_disk(), 2, "{what}: records when closed");
        wait_past_grace(rotated, SHORT, retires);

        fixture.open();
        let service = fixture.service();
        // Purged as the store opened, before any call.
        assert_eq!(
            fixture.records_on_disk(),
            1,
            "{what}: records after the reopen"
        );
        let versions = service.key_versions(key).unwrap();
        assert_eq!(versions.len(), 1, "{what}: {}", describe(&versions));
        assert_eq!(fields(&versions[0]), fields(&new), "{what}");
        let error = refused(
            service.sign_with_version(key, 1, &[0x10; 32]),
            &format!("{what}: version 1"),
        );
        assert!(is_retired_or_unknown(&error, key, 1), "{what}: {error:?}");
        assert!(
            verifies(
                new.public_key,
                &[0x11; 32],
                &service.sign(key, &[0x11; 32]).unwrap()
            ),
            "{what}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A rotation whose write fails: a small tmpfs as the store directory, filled (as
// tests/store_full_disk.rs does; root, as CI runs).

use store_util::tmpfs::{Tmpfs, fill};

#[test]
fn a_rotation_whose_write_fails_changes_nothing() {
    let base = StoreBase::new("rotation-full-disk");
    let Some(disk) = Tmpfs::mount(&base, "64k") else {
        return;
    };
    let spawn = |creation| {
        SecretService::spawn(base.config_at(&disk.path, creation))
            .unwrap_or_else(|error| panic!("opening the store on the tmpfs: {error}"))
    };
    let service = spawn(StoreCreation::CreateNew);
    let key = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    let old = service.public_key(key).unwrap();
    let versions = service.key_versions(key).unwrap();
    let filler = fill(&disk.path);

    let error = refused(service.rotate_key(key, LONG), "a rotation on a full disk");
    match &error {
        Error::Store(keyward::StoreError::WriteFailed { errno, .. }) => {
            assert_eq!(*errno, libc::ENOSPC, "{error}");
        }
        Error::Store(other) => panic!("a store error, but not a failed write: {other:?}"),
        other => panic!("not a store error: {other:?}"),
    }
    let check = |service: &SecretService, what: &str| {
        let now = service.key_versions(key).unwrap();
        assert_eq!(
            now.iter().map(fields).collect::<Vec<_>>(),
            versions.iter().map(fields).collect::<Vec<_>>(),
            "{what}: {}",
            describe(&now)
        );
        assert_eq!(service.public_key(key).unwrap(), old, "{what}");
        let signature = service.sign(key, &[0x12; 32]).unwrap();
        assert!(
            verifies(old, &[0x12; 32], &signature),
            "{what}: signs as the old key"
        );
        let error = refused(
            service.sign_with_version(key, 2, &[0x12; 32]),
            &format!("{what}: version 2"),
        );
        assert!(
            matches!(error, Error::UnknownVersion { .. }),
            "{what}: {error:?}"
        );
    };
    check(&service, "the running service after the failed rotation");
    drop(service);
    // The disk still full: reopening reads only.
    let service = spawn(StoreCreation::OpenExisting);
    check(&service, "the store reopened");

    // Room again: the next rotation makes version 2, and it lasts.
    std::fs::remove_file(filler).unwrap();
    let new = service.rotate_key(key, LONG).unwrap();
    assert_eq!(new.version, 2);
    assert_ne!(new.public_key, old);
    drop(service);
    let service = spawn(StoreCreation::OpenExisting);
    assert_eq!(service.public_key(key).unwrap(), new.public_key);
    assert_eq!(service.key_versions(key).unwrap().len(), 2);
}

#[test]
fn dropping_a_rotated_key_drops_every_version() {
    let mut fixture = Fixture::new("drop", "fork", SpawnMode::Fork);
    let what = fixture.what.clone();
    let service = fixture.service();
    let key = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    let other = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    service.rotate_key(key, LONG).unwrap();
    service.rotate_key(key, LONG).unwrap();
    assert_eq!(fixture.records_on_disk(), 4, "{what}: control: records");
    service.drop_key(key).unwrap();
    for version in 1..=3 {
        let error = refused(
            service.sign_with_version(key, version, &[0x13; 32]),
            &format!("{what}: version {version} of a dropped key"),
        );
        assert!(
            matches!(error, Error::UnknownKey(k) if k == key),
            "{what}: {error:?}"
        );
    }
    assert!(matches!(
        service.key_versions(key),
        Err(Error::UnknownKey(_))
    ));
    assert_eq!(
        fixture.records_on_disk(),
        1,
        "{what}: records after the drop"
    );
    fixture.reopen();
    let service = fixture.service();
    assert_eq!(
        service
            .list_keys()
            .unwrap()
            .iter()
            .map(|info| info.id)
            .collect::<Vec<_>>(),
        [other],
        "{what}: reopened"
    );
    assert!(matches!(
        service.sign_with_version(key, 1, &[0x14; 32]),
        Err(Error::UnknownKey(_))
    ));
}

/// A memory-only service (no store) rotates the same way, and erases on time.
#[test]
fn without_a_store_a_rotation_works_the_same() {
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config).unwrap();
        let key = service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        let old = service.public_key(key).unwrap();
        start_of_a_second();
        let rotated = SystemTime::now();
        let new = service.rotate_key(key, SHORT).unwrap();
        assert_eq!(new.version, 2, "{mode}");
        assert_eq!(service.public_key(key).unwrap(), new.public_key, "{mode}");
        let signature = service.sign_with_version(key, 1, &[0x15; 32]).unwrap();
        assert!(verifies(old, &[0x15; 32], &signature), "{mode}");
        let retires = service.key_versions(key).unwrap()[0].retires.unwrap();
        wait_past_grace(rotated, SHORT, retires);
        let error = refused(
            service.sign_with_version(key, 1, &[0x16; 32]),
            &format!("{mode}, no store: version 1 after its grace"),
        );
        assert!(is_retired_or_unknown(&error, key, 1), "{mode}: {error:?}");
        assert_eq!(
            service
                .key_versions(key)
                .unwrap()
                .iter()
                .map(|v| v.version)
                .collect::<Vec<_>>(),
            [2],
            "{mode}"
        );
        // With no grace, at once.
        service.rotate_key(key, Duration::ZERO).unwrap();
        let error = refused(
            service.sign_with_version(key, 2, &[0x17; 32]),
            &format!("{mode}, no store: version 2 after a rotation with no grace"),
        );
        assert!(is_retired_or_unknown(&error, key, 2), "{mode}: {error:?}");
    }
}

/// A `KeySigner` (RustCrypto's `Signer` + `Keypair`) made before a rotation: what it signs must
/// verify under the verifying key it reports, whichever version it uses.
#[test]
fn a_key_signer_made_before_a_rotation_signs_as_the_key_it_reports() {
    use signature::{Keypair, Signer};
    let fixture = Fixture::new("key-signer", "fork", SpawnMode::Fork);
    let service = fixture.service();
    let key = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    let signer = service.signing_key(key).unwrap();
    let message = b"signed through a KeySigner";
    // Control: before the rotation they agree.
    signer
        .verifying_key()
        .verify_strict(message, &signer.sign(message))
        .unwrap();
    service.rotate_key(key, LONG).unwrap();
    // After the rotation it signs as the key it reports, or not at all: it fails, saying the
    // key was rotated, and never hands out a signature its own verifying key rejects.
    match signer.try_sign(message) {
        Ok(signature) => signer
            .verifying_key()
            .verify_strict(message, &signature)
            .expect("a KeySigner's signature verifies under its own verifying_key()"),
        Err(error) => {
            let source = std::error::Error::source(&error)
                .and_then(|source| source.downcast_ref::<keyward::Error>());
            assert!(
                matches!(source, Some(keyward::Error::KeyRotated { key: rotated }) if *rotated == key),
                "{error:?}"
            );
        }
    }
    // A new KeySigner signs as the new version.
    let fresh = service.signing_key(key).unwrap();
    let signature = fresh.try_sign(message).unwrap();
    fresh
        .verifying_key()
        .verify_strict(message, &signature)
        .unwrap();
    assert_eq!(
        PublicKey::Ed25519(fresh.verifying_key()),
        service.public_key(key).unwrap()
    );
}

/// A backup made while a rotated key's previous version is in its grace period, restored into
/// a new store: each key comes back once, as its current version (with a consensus key's
/// watermarks); the previous version, which the source erases when its grace ends, does not
/// come back as a key of its own (a consensus one would have no watermarks).
#[test]
fn a_backup_made_during_the_grace_restores_each_key_once_as_its_current_version() {
    if !age_util::age_is_installed() {
        return;
    }
    let fixture = Fixture::new("backup", "fork", SpawnMode::Fork);
    let what = fixture.what.clone();
    let source = fixture.service();
    let consensus = source
        .generate_key(KeySpec::new(Purpose::Consensus))
        .unwrap();
    let account = source.generate_key(KeySpec::new(Purpose::Account)).unwrap();
    source
        .sign_consensus(consensus, &ConsensusMessage::vote(CHAIN, 1, 10, [0xaa; 32]))
        .unwrap();
    let old_publics = [
        source.public_key(consensus).unwrap(),
        source.public_key(account).unwrap(),
    ];
    let new_publics = [
        source.rotate_key(consensus, LONG).unwrap().public_key,
        source.rotate_key(account, LONG).unwrap().public_key,
    ];
    let operator = age_util::age_keygen(&fixture.scratch.base, "operator.txt");
    let backup_file = fixture.scratch.base.join("backup.age");
    std::fs::write(
        &backup_file,
        source.backup(&operator.recipient.parse().unwrap()).unwrap(),
    )
    .unwrap();
    let pinned = source.provisioning_recipient().unwrap().signing_key;
    let text = String::from_utf8(age_util::age_decrypt(&operator, &backup_file).unwrap()).unwrap();
    // What the backup lists (ids and public keys only: the text holds secrets).
    for line in text.lines().filter(|line| line.starts_with("key ")) {
        let fields: Vec<&str> = line.split(' ').collect();
        println!("{what}: backup: key {} public {}", fields[1], fields[7]);
    }

    let target_dir = Scratch::new("rotation-backup-target");
    let unlock = target_dir.unlock_file("unlock", b"restore target\n");
    let target = SecretService::spawn(
        create_config(&target_dir.store(), &unlock).with_spawn_mode(SpawnMode::Fork),
    )
    .unwrap();
    let recipient = target
        .provisioning_recipient()
        .unwrap()
        .recipient
        .to_string();
    let file = age_util::age_reencrypt(&operator, &backup_file, &recipient);
    let report = target.restore(&file, &pinned).unwrap();
    let restored: Vec<PublicKey> = target
        .list_keys()
        .unwrap()
        .iter()
        .map(|info| info.public_key)
        .collect();
    // What a previous version restored as a key of its own can do: the old consensus key,
    // which signed round 10 with block A, sign round 10 with block B.
    let equivocation = target
        .list_keys()
        .unwrap()
        .iter()
        .find(|info| info.public_key == old_publics[0])
        .map(|info| {
            let conflicting = ConsensusMessage::vote(CHAIN, 1, 10, [0xbb; 32]);
            match target.sign_consensus(info.id, &conflicting) {
                Ok(signature)
                    if verifies(old_publics[0], &conflicting.signing_bytes(), &signature) =>
                {
                    "; the restored old consensus version signed round 10 with another block, \
                     under the old public key (a double sign)"
                        .to_owned()
                }
                other => {
                    format!("; the restored old consensus version, round 10 block B: {other:?}")
                }
            }
        })
        .unwrap_or_default();
    let resurrected: Vec<&PublicKey> = old_publics
        .iter()
        .filter(|public| restored.contains(public))
        .collect();
    assert!(
        resurrected.is_empty(),
        "{what}: the restore brought back previous versions as keys of their own: {resurrected:?} \
         (restored {restored:?}; report {report:?}){equivocation}"
    );
    assert_eq!(restored, new_publics, "{what}: the keys restored");
    let restored_consensus = target.list_keys().unwrap()[0].id;
    assert!(
        matches!(
            target.sign_consensus(
                restored_consensus,
                &ConsensusMessage::vote(CHAIN, 1, 10, [0xbb; 32])
            ),
            Err(Error::WouldDoubleSign { .. })
        ),
        "{what}: the restored consensus key lost its watermark"
    );
}

/// A store whose previous version's grace ended while it was closed, reopened on a full disk
/// (the purge at spawn cannot be written): it still opens, as a store on a full or read-only
/// disk does, its current version signs, and the previous one is refused.
#[test]
fn a_store_with_a_version_to_purge_still_opens_on_a_full_disk() {
    let base = StoreBase::new("rotation-full-reopen");
    let Some(disk) = Tmpfs::mount(&base, "64k") else {
        return;
    };
    let spawn = |creation| SecretService::spawn(base.config_at(&disk.path, creation));
    let service = spawn(StoreCreation::CreateNew).unwrap();
    let key = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    start_of_a_second();
    let rotated = SystemTime::now();
    let new = service.rotate_key(key, SHORT).unwrap();
    let retires = service.key_versions(key).unwrap()[0].retires.unwrap();
    drop(service);
    let filler = fill(&disk.path);
    wait_past_grace(rotated, SHORT, retires);
    let service = spawn(StoreCreation::OpenExisting).unwrap_or_else(|error| {
        panic!(
            "a store whose previous version retired while it was closed does not open on a \
             full disk: {error}"
        )
    });
    assert_eq!(service.public_key(key).unwrap(), new.public_key);
    let signature = service.sign(key, &[0x18; 32]).unwrap();
    assert!(verifies(new.public_key, &[0x18; 32], &signature));
    let error = refused(
        service.sign_with_version(key, 1, &[0x18; 32]),
        "version 1 on a full disk",
    );
    assert!(is_retired_or_unknown(&error, key, 1), "{error:?}");
    // Room again: the purge is done at the next chance, and lasts.
    std::fs::remove_file(filler).unwrap();
    assert_eq!(service.key_versions(key).unwrap().len(), 1);
    drop(service);
    assert_eq!(
        record_count(&std::fs::read(disk.path.join("keyward-store")).unwrap()),
        1
    );
}

/// A previous version retired while the disk is full (its purge cannot be written): a backup
/// made then still restores, bringing the key back as its current version.
#[test]
fn a_backup_made_after_a_purge_that_could_not_be_written_restores() {
    if !age_util::age_is_installed() {
        return;
    }
    let base = StoreBase::new("rotation-full-backup");
    let Some(disk) = Tmpfs::mount(&base, "64k") else {
        return;
    };
    let service =
        SecretService::spawn(base.config_at(&disk.path, StoreCreation::CreateNew)).unwrap();
    let key = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    start_of_a_second();
    let rotated = SystemTime::now();
    let new = service.rotate_key(key, SHORT).unwrap();
    let retires = service.key_versions(key).unwrap()[0].retires.unwrap();
    let _filler = fill(&disk.path);
    wait_past_grace(rotated, SHORT, retires);
    // The purge, which cannot be written (key_versions purges first).
    match service.key_versions(key) {
        Ok(versions) => println!("key_versions on a full disk: {}", describe(&versions)),
        Err(error) => println!("key_versions on a full disk: {error}"),
    }
    let operator = age_util::age_keygen(&base.base, "operator.txt");
    let backup_file = base.base.join("backup.age");
    std::fs::write(
        &backup_file,
        service
            .backup(&operator.recipient.parse().unwrap())
            .unwrap(),
    )
    .unwrap();
    let pinned = service.provisioning_recipient().unwrap().signing_key;

    let target_dir = Scratch::new("rotation-full-backup-target");
    let unlock = target_dir.unlock_file("unlock", b"restore target\n");
    let target = SecretService::spawn(
        create_config(&target_dir.store(), &unlock).with_spawn_mode(SpawnMode::Fork),
    )
    .unwrap();
    let recipient = target
        .provisioning_recipient()
        .unwrap()
        .recipient
        .to_string();
    let file = age_util::age_reencrypt(&operator, &backup_file, &recipient);
    let report = target
        .restore(&file, &pinned)
        .unwrap_or_else(|error| panic!("the backup does not restore: {error}"));
    assert!(
        report
            .added
            .iter()
            .any(|(_, public)| *public == new.public_key),
        "{report:?}"
    );
}

/// The grace is the caller's number: an absurd one (longer than any clock can count) is
/// refused or clamped with no panic in the caller's thread, and never leaves a store that no
/// service can open.
#[test]
fn an_absurd_grace_is_no_panic_and_the_store_still_opens() {
    let mut fixture = Fixture::new("absurd-grace", "fork", SpawnMode::Fork);
    let what = fixture.what.clone();
    let key = fixture
        .service()
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    for grace in [Duration::from_secs(u64::MAX), Duration::MAX] {
        let rotated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fixture.service().rotate_key(key, grace)
        }));
        match rotated {
            Ok(result) => println!(
                "{what}: a grace of {grace:?}: {:?}",
                result.map(|v| v.version)
            ),
            Err(_) => panic!("{what}: rotate_key with a grace of {grace:?} panicked"),
        }
        let listed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fixture.service().key_versions(key)
        }));
        assert!(
            listed.is_ok(),
            "{what}: key_versions after a rotation with a grace of {grace:?} panicked"
        );
    }
    fixture.close();
    let reopened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fixture.open()));
    assert!(reopened.is_ok(), "{what}: the store no longer opens");
}

/// A grace is a promise to the caller: the previous version stays usable for at least that
/// long. A rotation made late in a second (here, 0.9 s into it) with a grace of 1 s: version 1
/// still signs right after `rotate_key` returns, and its retirement time is no earlier than the
/// call plus the grace.
#[test]
fn a_grace_is_never_shorter_than_asked() {
    let fixture = Fixture::new("grace-rounding", "fork", SpawnMode::Fork);
    let (what, service) = (&fixture.what, fixture.service());
    let key = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    start_of_a_second();
    std::thread::sleep(Duration::from_millis(900));
    let rotated = SystemTime::now();
    service.rotate_key(key, SHORT).unwrap();
    let signed = service.sign_with_version(key, 1, &[0x19; 32]);
    let returned = SystemTime::now();
    let versions = service.key_versions(key).unwrap();
    let retires = versions
        .iter()
        .find(|v| v.version == 1)
        .and_then(|v| v.retires);
    assert!(
        signed.is_ok() && retires.is_some_and(|retires| retires >= rotated + SHORT),
        "{what}: a rotation at {rotated:?} with a grace of {SHORT:?}: {:?} after it returned \
         (at {returned:?}), and version 1 retires at {retires:?}: the grace was cut short \
         (the retirement second is rounded down)",
        signed.map(|_| "version 1 signed")
    );
}
