//! The signer's request dispatch (`keyward::testing::Dispatcher::handle`) on every frame of the
//! input, as one lane would see them. Checks, for each frame: no panic; an answer exactly when an
//! id decodes, carrying that id; `MalformedRequest` exactly when the body is not a whole request;
//! and the dispatcher's own check that every answer decodes.
//!
//! Two keys are generated first. Any 16 bytes `KKKKKKKKKKKKKKKK` in a frame stand for the Ed25519
//! key's id and `XXXXXXXXXXXXXXXX` for the X25519 key's (the ids are random, so the fuzzer could
//! never guess them), so signing and Diffie-Hellman are reached too.
#![no_main]

use keyward::testing::{DispatchResult, Dispatcher, FRAME_CAP, generated_key_from_summary};
use keyward::{KeySpec, Purpose};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

/// The request wire format, mirrored (keyward's default features: no test-hook variant).
#[derive(Deserialize)]
#[allow(dead_code)]
enum WireRequest {
    GenerateKey {
        spec: KeySpec,
    },
    PublicKey {
        key: [u8; 16],
    },
    Sign {
        key: [u8; 16],
        digest: [u8; 32],
    },
    DiffieHellman {
        key: [u8; 16],
        peer_public: [u8; 32],
    },
    ListKeys,
    DropKey {
        key: [u8; 16],
    },
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct WireFrame {
    id: u64,
    request: WireRequest,
}

const ED25519_PLACEHOLDER: [u8; 16] = *b"KKKKKKKKKKKKKKKK";
const X25519_PLACEHOLDER: [u8; 16] = *b"XXXXXXXXXXXXXXXX";

fn generate(dispatcher: &mut Dispatcher, id: u64, purpose: Purpose) -> [u8; 16] {
    let frame = keyward::testing::generate_key_frame(id, KeySpec::new(purpose));
    match dispatcher.handle(&frame[4..]) {
        DispatchResult::Answered { summary, .. } => {
            generated_key_from_summary(&summary).expect("a generated key")
        }
        DispatchResult::Stopped => panic!("the dispatcher stopped on a valid request"),
    }
}

fn substitute(payload: &mut [u8], placeholder: &[u8; 16], key: &[u8; 16]) {
    let mut at = 0;
    while at + 16 <= payload.len() {
        if &payload[at..at + 16] == placeholder {
            payload[at..at + 16].copy_from_slice(key);
            at += 16;
        } else {
            at += 1;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut dispatcher = Dispatcher::new(8).expect("locked memory for the key store");
    let ed25519 = generate(&mut dispatcher, 0, Purpose::Consensus);
    let x25519 = generate(&mut dispatcher, 1, Purpose::NetworkHandshake);
    let mut rest = data;
    while let Some(header) = rest.first_chunk::<4>() {
        let length = u32::from_le_bytes(*header) as usize;
        if length > FRAME_CAP || rest.len() - 4 < length {
            break; // The signer stops here (over-long or truncated frame).
        }
        let mut payload = rest[4..4 + length].to_vec();
        rest = &rest[4 + length..];
        substitute(&mut payload, &ED25519_PLACEHOLDER, &ed25519);
        substitute(&mut payload, &X25519_PLACEHOLDER, &x25519);
        let id = postcard::take_from_bytes::<u64>(&payload)
            .ok()
            .map(|(id, _)| id);
        let valid = matches!(
            postcard::take_from_bytes::<WireFrame>(&payload),
            Ok((_, []))
        );
        match (id, dispatcher.handle(&payload)) {
            (None, DispatchResult::Stopped) => break,
            (
                Some(id),
                DispatchResult::Answered {
                    id: answered,
                    summary,
                },
            ) => {
                assert_eq!(answered, id, "an answer with another request's id");
                assert_eq!(
                    summary.contains("MalformedRequest"),
                    !valid,
                    "validity misjudged: {summary}"
                );
            }
            (id, result) => panic!("id {id:?} gave {result:?}"),
        }
    }
});
