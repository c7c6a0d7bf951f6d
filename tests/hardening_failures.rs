//! A hardening step that fails makes `spawn` fail with an error naming the step, and nothing is
//! served. Shown with a real signer on a host whose descriptor limit is too low for the signer
//! to lay out its pipes (the first step after the parent-death signal). The reporting of every
//! later step is shown with a scripted signer in hostile_signer.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use keyward::{Error, HardeningStep, SecretService, SpawnError};
use nix::sys::resource::{Resource, setrlimit};

const TEST: &str = "a_host_with_too_few_descriptors_gets_the_failed_step_named";

/// Played in a subprocess, so that the lowered limit touches nothing else.
fn play_host_with_a_low_descriptor_limit() {
    // The pipes and this process's own descriptors fit under 32; the signer parks its pipes
    // above its fixed range (51 and up) while laying them out, which this limit forbids.
    setrlimit(Resource::RLIMIT_NOFILE, 32, 32).unwrap();
    for (mode, config) in common::spawn_modes() {
        match SecretService::spawn(config) {
            Err(Error::Spawn(error @ SpawnError::Hardening { step, .. })) => {
                assert_eq!(step, HardeningStep::DescriptorHygiene, "{mode}: {error}");
                println!("{mode}: {error}");
            }
            Ok(service) => panic!("{mode}: the signer {} started", service.pid()),
            Err(other) => panic!("{mode}: expected a hardening failure, got {other}"),
        }
    }
    println!("HOST DONE");
}

#[test]
fn a_host_with_too_few_descriptors_gets_the_failed_step_named() {
    if common::role().as_deref() == Some("host") {
        return play_host_with_a_low_descriptor_limit();
    }
    let output = common::rerun_self(TEST, "host").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the host role failed");
    assert!(
        stdout.contains("HOST DONE"),
        "the host's checks did not all run"
    );
    // Control: with the limit this process has, the same spawns work.
    for (mode, config) in common::spawn_modes() {
        SecretService::spawn(config).unwrap_or_else(|e| panic!("{mode}: {e}"));
    }
}
