//! A host that closed its standard streams before spawning (daemons do) keeps them: keyward's
//! pipes, pidfd and the rest never land on 0, 1 or 2, so the host's later `println!` and
//! `eprintln!` cannot reach the signer's request pipe, and the signer serves on, in both spawn
//! modes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward::{KeyService, KeySpec, Purpose, SecretService};

const TEST: &str = "a_host_with_its_standard_streams_closed_keeps_them_and_its_signer";
const SIGNATURES: u64 = 100;

/// Which of 0, 1, 2 are open in this process (read through /proc, which opens no descriptor).
fn open_standard_streams() -> Vec<(i32, String)> {
    (0..=2)
        .filter_map(|fd| {
            std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .ok()
                .map(|target| (fd, target.to_string_lossy().into_owned()))
        })
        .collect()
}

/// Played in a subprocess: closes 0, 1 and 2, then spawns, prints, and signs. It reports on a
/// copy of its stdout made before, at 3 or above.
fn play_host_with_closed_standard_streams() {
    let report = Arc::new(Mutex::new(File::from(
        nix::unistd::dup(std::io::stdout()).unwrap(),
    )));
    {
        // Panics would go to the closed stderr: send them to the report as well.
        let report = Arc::clone(&report);
        std::panic::set_hook(Box::new(move |info| {
            let _ = writeln!(report.lock().unwrap(), "HOST PANICKED: {info}");
        }));
    }
    let say = |text: String| {
        let _ = writeln!(report.lock().unwrap(), "{text}");
    };
    for fd in 0..=2 {
        nix::unistd::close(fd).unwrap();
    }
    assert_eq!(open_standard_streams(), []);
    let mut failures = Vec::new();
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config).unwrap();
        let held = open_standard_streams();
        // What a daemon's logging does with its closed streams: the writes fail, and are ignored.
        let _ = writeln!(
            std::io::stdout(),
            "{mode}: a line on the host's closed stdout"
        );
        let _ = writeln!(
            std::io::stderr(),
            "{mode}: a line on the host's closed stderr"
        );
        let _ = std::io::stdout().flush();
        let signed = (|| {
            let key = service
                .generate_key(KeySpec::new(Purpose::Account))
                .map_err(|error| format!("generate_key: {error}"))?;
            let public = *service.public_key(key).unwrap().as_ed25519().unwrap();
            for n in 0..SIGNATURES {
                let mut digest = [0u8; 32];
                digest[..8].copy_from_slice(&n.to_le_bytes());
                let signature = service
                    .sign(key, &digest)
                    .map_err(|error| format!("signature {n}: {error}"))?;
                public.verify_strict(&digest, &signature).unwrap();
            }
            Ok::<(), String>(())
        })();
        say(format!(
            "{mode}: descriptors on the standard streams after spawn: {held:?}; signing: {}",
            match &signed {
                Ok(()) => format!("{SIGNATURES} of {SIGNATURES} verified"),
                Err(error) => format!("FAILED at {error}"),
            }
        ));
        if !held.is_empty() || signed.is_err() {
            failures.push(mode);
        }
        drop(service);
    }
    assert_eq!(failures, [] as [&str; 0], "modes that failed");
    say("HOST DONE".to_owned());
}

#[test]
fn a_host_with_its_standard_streams_closed_keeps_them_and_its_signer() {
    if common::role().as_deref() == Some("closed-stdio") {
        return play_host_with_closed_standard_streams();
    }
    common::run_host_role(TEST, "closed-stdio", Duration::from_secs(60));
}
