//! The smallest end-to-end check: both spawn modes start, sign, verify and are sandboxed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use keyward::{KeyService, KeySpec, Purpose, SecretService};

#[test]
fn every_spawn_mode_signs_and_verifies() {
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config).unwrap_or_else(|e| panic!("{mode}: {e}"));
        let key = service
            .generate_key(KeySpec::new(Purpose::Consensus))
            .unwrap();
        let public = service.public_key(key).unwrap();
        let signature = service.sign(key, &[1; 32]).unwrap();
        public
            .as_ed25519()
            .unwrap()
            .verify_strict(&[1; 32], &signature)
            .unwrap();
        let status = service.status().unwrap();
        assert_eq!(status.seccomp_mode, Some(2), "{mode}");
    }
}
