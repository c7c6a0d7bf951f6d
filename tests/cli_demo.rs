//! README's main command, `keyward demo`, run as the built binary: it exits zero and shows each
//! thing README says it shows. (A demo that signed a consensus key blindly once failed CI after
//! the guard landed; this test is what would have caught it.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn the_demo_runs_to_the_end_and_shows_what_readme_promises() {
    let output = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("demo")
        .output()
        .expect("the keyward binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "keyward demo failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    for expected in [
        "verify_strict: ok",
        "the same vote again (a retry): the same signature",
        "another block at round 3 is refused",
        "a blind digest is refused",
        "both sides derived the same 32-byte secret: yes",
        "a low-order peer point is refused",
        "Seccomp           2",
        "NoNewPrivs        1",
        "same id, same public key",
        "a second vote for round 41 is still refused",
        "the vote signed before the restart verifies: yes",
        "verifies under the same public key: yes",
    ] {
        assert!(
            stdout.contains(expected),
            "the demo's output lacks {expected:?}:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("FAILED") && !stdout.contains(": NO"),
        "the demo reported a failure:\n{stdout}"
    );
}
