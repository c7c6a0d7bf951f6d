//! Property: a rotated-out version is erased from the signer's memory once its grace is over,
//! as behaviour. The test imports an Ed25519 seed it drew itself (encrypted by the stock `age`
//! tool to the store's provisioning recipient), so it knows a secret the signer holds; the
//! signer keeps its keys in locked anonymous memory, which root reads through
//! `/proc/<pid>/mem`. Controls: before the rotation the same scan of the signer's whole memory
//! finds the seed, and during the grace a scan of its locked key pages still does. After the
//! grace (and `key_versions`, which purges), neither the seed nor any half of its SHA-512
//! expansion (the scalar, clamped or not, and the nonce prefix) is anywhere in the signer's
//! readable memory.
//!
//! Needs root (CI runs as root) and `age` (Debian's `age` package): without `age` the test says
//! so loudly and passes, except under CI (`CI` set), where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod age_util;
mod common;
mod store_util;

use std::time::{Duration, Instant, SystemTime};

use age_util::{age_encrypt, age_is_installed};
use keyward::{KeyService, PublicKey, Purpose, SecretMemory, SecretService, SpawnMode};
use sha2::{Digest, Sha512};
use store_util::{Scratch, create_config, record_count};

/// Two seconds, not one: the control during the grace must end before the grace does, and on
/// a loaded machine (two shared cores) a second was seen not to be enough.
const GRACE: Duration = Duration::from_secs(2);

/// The seed and every 32-byte value its SHA-512 expansion gives that would betray it, named.
fn secret_forms(seed: &[u8; 32]) -> Vec<([u8; 32], &'static str)> {
    let expanded = Sha512::digest(seed);
    let scalar: [u8; 32] = expanded[..32].try_into().unwrap();
    let mut clamped = scalar;
    clamped[0] &= 248;
    clamped[31] &= 127;
    clamped[31] |= 64;
    let prefix: [u8; 32] = expanded[32..].try_into().unwrap();
    vec![
        (*seed, "the seed"),
        (scalar, "the expanded scalar"),
        (clamped, "the clamped scalar"),
        (prefix, "the nonce prefix"),
    ]
}

#[test]
fn a_retired_version_leaves_no_copy_of_its_secret_in_the_signer() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test reads the signer's memory, which needs root (CI runs as root)"
    );
    if !age_is_installed() {
        return;
    }
    for (mode, spawn_mode) in [
        ("fork", SpawnMode::Fork),
        (
            "fork-exec",
            SpawnMode::ForkExec {
                program: common::signer_program(),
            },
        ),
    ] {
        let scratch = Scratch::new(&format!("rotation-memory-{mode}"));
        let unlock = scratch.unlock_file("unlock", b"rotation memory\n");
        let service = SecretService::spawn(
            create_config(&scratch.store(), &unlock)
                .with_spawn_mode(spawn_mode)
                .with_secret_memory(SecretMemory::LockedAnonymous),
        )
        .unwrap();
        // Drawn only now that the signer exists: a fork-mode signer, a copy of this process,
        // holds nothing of it but what it is sent.
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).unwrap();
        let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
        let recipient = service
            .provisioning_recipient()
            .unwrap()
            .recipient
            .to_string();
        // Raw bytes, not hex: the seed has no other form to look for.
        let encrypted = age_encrypt(&recipient, false, &seed);
        let key = service
            .import_key(Purpose::Account, &PublicKey::Ed25519(public), &encrypted)
            .unwrap();
        let digest = [0x3e; 32];
        public
            .verify_strict(&digest, &service.sign(key, &digest).unwrap())
            .unwrap();

        let forms = secret_forms(&seed);
        let needles: Vec<[u8; 32]> = forms.iter().map(|(form, _)| *form).collect();
        let signer = u32::try_from(service.pid()).unwrap();
        let report = |when: &str, hits: &[(usize, String)], searched: usize| {
            println!(
                "{mode}: {when}: searched {} KiB of the signer",
                searched >> 10
            );
            for (index, place) in hits {
                println!("{mode}: {when}: {} at {place}", forms[*index].1);
            }
        };

        // Control: the scan finds the seed the signer holds.
        let (hits, searched) = common::scan_memory(signer, &needles, |_| true);
        report("before the rotation", &hits, searched);
        assert!(
            hits.iter().any(|(index, _)| *index == 0),
            "{mode}: control failed: the imported seed was not found in the signer"
        );

        // At the start of a second: the signer keeps whole seconds and rounds a retirement
        // time down, so a grace begun late in a second could end before the control's scan.
        common::sleep_to_the_start_of_a_second();
        let rotated = SystemTime::now();
        let new = service.rotate_key(key, GRACE).unwrap();
        assert_eq!(new.version, 2);
        assert_ne!(new.public_key, PublicKey::Ed25519(public));
        assert_eq!(
            service.pid(),
            i32::try_from(signer).unwrap(),
            "{mode}: the rotation replaced the signer"
        );

        // Control during the grace: version 1 signs as the imported key, and the scan still
        // finds the seed (checked to be held through the whole scan). Only the locked key
        // pages, where the scan before found it: the whole memory takes seconds under load.
        let started = Instant::now();
        let (hits, searched) =
            common::scan_memory(signer, &needles, |mapping| mapping.has_flag("lo"));
        let took = started.elapsed();
        report("during the grace", &hits, searched);
        let still_held = service.sign_with_version(key, 1, &digest);
        assert!(
            still_held.is_ok(),
            "{mode}: control failed: version 1 was retired before the scan ended ({took:?}): \
             {still_held:?}"
        );
        public.verify_strict(&digest, &still_held.unwrap()).unwrap();
        assert!(
            hits.iter().any(|(index, _)| *index == 0),
            "{mode}: control failed: the seed was not found in the signer during the grace"
        );

        // After the grace: key_versions purges, and version 1 is gone.
        let retires = service.key_versions(key).unwrap()[0]
            .retires
            .expect("version 1 retires");
        let until = (rotated + GRACE + Duration::from_millis(500))
            .max(retires + Duration::from_millis(500));
        if let Ok(left) = until.duration_since(SystemTime::now()) {
            std::thread::sleep(left);
        }
        let versions = service.key_versions(key).unwrap();
        assert_eq!(
            versions.iter().map(|v| v.version).collect::<Vec<_>>(),
            [2],
            "{mode}: the versions after the grace"
        );
        assert_eq!(
            record_count(&scratch.state()),
            1,
            "{mode}: version 1's record is still in the store file"
        );
        let (hits, searched) = common::scan_memory(signer, &needles, |_| true);
        report("after the grace", &hits, searched);
        let found: Vec<String> = hits
            .iter()
            .map(|(index, place)| format!("{} at {place}", forms[*index].1))
            .collect();
        assert!(
            found.is_empty(),
            "{mode}: the retired version's secret is still in the signer: {found:#?}"
        );
        // The signer that was scanned is the one serving, and the current version signs.
        assert_eq!(service.pid(), i32::try_from(signer).unwrap());
        common::assert_signs(&service, key, &[0x3f; 32]);
        zeroize::Zeroize::zeroize(&mut seed);
    }
}
