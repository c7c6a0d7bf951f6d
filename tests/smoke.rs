//! The smallest end-to-end check: both spawn modes start, sign, verify and are sandboxed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use keyward::SecretService;

#[test]
fn every_spawn_mode_signs_and_verifies() {
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config).unwrap_or_else(|e| panic!("{mode}: {e}"));
        common::serving_key(&service);
        let status = service.status().unwrap();
        assert_eq!(status.seccomp_mode, Some(2), "{mode}");
    }
}
