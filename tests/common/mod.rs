//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use keyward::{Config, SpawnMode};

/// The keyward binary cargo built for these tests: the signer program for fork-exec mode.
pub(crate) fn signer_program() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keyward"))
}

/// The two spawn modes, each with a name for assertion messages. Every API test runs against
/// both.
pub(crate) fn spawn_modes() -> Vec<(&'static str, Config)> {
    vec![
        ("fork", Config::default().with_spawn_mode(SpawnMode::Fork)),
        (
            "fork-exec",
            Config::default().with_spawn_mode(SpawnMode::ForkExec {
                program: signer_program(),
            }),
        ),
    ]
}
