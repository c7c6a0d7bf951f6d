//! The signer's request dispatch (`keyward::testing::Dispatcher::handle`) on a sequence of
//! requests, as one lane would see them: raw frame payloads, and requests drawn through the real
//! request type's `arbitrary` derive (`keyward::testing::arbitrary_request_frame`), so every
//! request kind is reached whole, including a kind added later, without a copy of the type here.
//!
//! The input is a sequence of chunks, each framed as the signer frames requests (a little-endian
//! u32 length of at most the frame cap, then that many bytes; a chunk over the cap or cut short
//! ends the input, as the signer would stop). A chunk's first byte, its tag, says what the rest
//! of it is:
//!
//! - tag even: a frame payload, handed to the dispatcher as it is;
//! - tag odd: bytes to draw one request from, sent with the id `last + (tag >> 1)`, where `last`
//!   is the last id the lane accepted (a gap of 0 repeats it, so the refusal of an id that does
//!   not increase is reached too). Bytes that draw nothing, or a request too long for one frame,
//!   are skipped.
//!
//! Checks, for each request: no panic; an answer exactly when an id decodes, carrying that id;
//! `MalformedRequest` exactly when the body is not a whole request (`is_valid_request`, the
//! signer's own decoder); a drawn request always decodes; a valid request whose id does not
//! increase is refused as such; a test-hook request is refused (`NotInThisBuild`), never made;
//! and the dispatcher's own check that every answer decodes.
//!
//! Three keys are generated first (ids 0, 1 and 2): an account key (Ed25519), a handshake key
//! (X25519) and a consensus key (Ed25519). Any 24 bytes `K` in a chunk stand for the account
//! key's id, 24 bytes `X` for the handshake key's and 24 bytes `C` for the consensus key's (the
//! ids, store and key, are random, so the fuzzer could never guess them), so blind signing,
//! Diffie-Hellman and the consensus requests (typed signing and its guard, watermarks, their
//! import) are reached too. A consensus key signs typed messages only: blind signing is reached
//! through the account key, and refused for the consensus key.
#![no_main]

use keyward::testing::{
    DispatchResult, Dispatcher, FRAME_CAP, arbitrary_request_frame, generate_key_frame,
    generated_key_from_summary, is_test_hook_request, is_valid_request, key_id_bytes,
};
use keyward::{KeySpec, Purpose};
use libfuzzer_sys::fuzz_target;

const ED25519_PLACEHOLDER: [u8; 24] = [b'K'; 24];
const X25519_PLACEHOLDER: [u8; 24] = [b'X'; 24];
const CONSENSUS_PLACEHOLDER: [u8; 24] = [b'C'; 24];

/// Generates a key; returns its id as a request frame carries it.
fn generate(dispatcher: &mut Dispatcher, id: u64, purpose: Purpose) -> Vec<u8> {
    let frame = generate_key_frame(id, KeySpec::new(purpose));
    match dispatcher.handle(&frame[4..]) {
        DispatchResult::Answered { summary, .. } => {
            key_id_bytes(generated_key_from_summary(&summary).expect("a generated key"))
        }
        DispatchResult::Stopped => panic!("the dispatcher stopped on a valid request"),
    }
}

fn substitute(bytes: &mut [u8], placeholder: &[u8], key: &[u8]) {
    let mut at = 0;
    while at + placeholder.len() <= bytes.len() {
        if &bytes[at..at + placeholder.len()] == placeholder {
            bytes[at..at + placeholder.len()].copy_from_slice(key);
            at += placeholder.len();
        } else {
            at += 1;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut dispatcher = Dispatcher::new(8).expect("locked memory for the key store");
    let ed25519 = generate(&mut dispatcher, 0, Purpose::Account);
    let x25519 = generate(&mut dispatcher, 1, Purpose::NetworkHandshake);
    let consensus = generate(&mut dispatcher, 2, Purpose::Consensus);
    let mut last = 2u64;
    let mut rest = data;
    while let Some(header) = rest.first_chunk::<4>() {
        let length = usize::try_from(u32::from_le_bytes(*header)).expect("a u32 fits");
        if length > FRAME_CAP || rest.len() - 4 < length {
            break; // The signer stops here (over-long or truncated frame).
        }
        let mut chunk = rest[4..4 + length].to_vec();
        rest = &rest[4 + length..];
        substitute(&mut chunk, &ED25519_PLACEHOLDER, &ed25519);
        substitute(&mut chunk, &X25519_PLACEHOLDER, &x25519);
        substitute(&mut chunk, &CONSENSUS_PLACEHOLDER, &consensus);
        let Some((&tag, body)) = chunk.split_first() else {
            continue;
        };
        let payload = if tag & 1 == 1 {
            let id = last.saturating_add(u64::from(tag >> 1));
            let Some(frame) = arbitrary_request_frame(id, body) else {
                continue;
            };
            let payload = frame[4..].to_vec();
            assert!(
                is_valid_request(&payload),
                "a drawn request does not decode: {payload:?}"
            );
            payload
        } else {
            body.to_vec()
        };
        let id = postcard::take_from_bytes::<u64>(&payload)
            .ok()
            .map(|(id, _)| id);
        let valid = is_valid_request(&payload);
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
                if !valid {
                    continue;
                }
                if id <= last {
                    assert_eq!(
                        summary, "Refused(RequestIdNotIncreasing)",
                        "id {id} after {last}"
                    );
                    continue;
                }
                last = id;
                if is_test_hook_request(&payload) {
                    assert_eq!(summary, "Refused(NotInThisBuild)", "a test hook was served");
                }
            }
            (id, result) => panic!("id {id:?} gave {result:?}"),
        }
    }
});
