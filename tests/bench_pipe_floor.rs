//! `keyward bench`'s pipe floor, the plain child each latency target is shown beside, does the
//! work it is timed for: it says a public key, signs every digest it is sent with that key (each
//! signature verifies, over the digest sent), and ends cleanly when its input closes. A floor
//! that answered without signing would make keyward look slower than the machine allows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use ed25519_dalek::{Signature, VerifyingKey};

#[test]
fn the_pipe_floor_child_signs_each_digest_it_is_sent_and_ends_at_end_of_input() {
    for spin in ["0", "100"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keyward"))
            .args(["bench-pipe-floor-child", "--signer-spin-us", spin])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the keyward binary runs");
        let mut to_child = child.stdin.take().unwrap();
        let mut from_child = child.stdout.take().unwrap();
        let mut public = [0u8; 32];
        from_child.read_exact(&mut public).unwrap();
        let public = VerifyingKey::from_bytes(&public).expect("a public key on the curve");
        let mut signatures = Vec::new();
        for round in 0u8..5 {
            let digest = [round.wrapping_mul(37).wrapping_add(1); 32];
            to_child.write_all(&digest).unwrap();
            let mut signature = [0u8; 64];
            from_child.read_exact(&mut signature).unwrap();
            let signature = Signature::from_bytes(&signature);
            public
                .verify_strict(&digest, &signature)
                .unwrap_or_else(|error| panic!("spin {spin}, digest {round}: {error}"));
            signatures.push(signature);
        }
        // A signature over one digest does not verify over another: real signatures, not
        // echoes of something fixed.
        assert!(public.verify_strict(&[0xff; 32], &signatures[0]).is_err());
        drop(to_child);
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "spin {spin}: the child ended with {status}"
        );
        let mut rest = Vec::new();
        from_child.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "spin {spin}: {} stray bytes", rest.len());
    }
}
