//! The signer's request handling: one exhaustive `match` over [`Request`], in one place.
//!
//! A well-framed request that does not decode, or that reuses an id, is answered with a refusal
//! and the signer carries on. A frame whose id cannot even be read means the stream can no
//! longer be trusted, and the signer stops. Nothing here allocates: requests are decoded from the
//! frame buffer and answers are encoded into a buffer made before the sandbox was applied.

use std::sync::RwLock;

use serde::Serialize;

use crate::key_store::{KeyStore, scrub_stack};
use crate::protocol::{
    ListingView, Refusal, Request, RequestDecodeError, Response, ResponseFrame, WireSecret,
    decode_request,
};
use crate::transport::encode_frame;

/// What one lane remembers between requests.
#[derive(Debug, Default)]
pub(crate) struct LaneState {
    last_id: Option<u64>,
    /// Whether a test-hook request may really make its system call: true only in a signer
    /// process, never in the in-process dispatcher the fuzzers and property tests drive.
    #[cfg(feature = "sandbox-test-hooks")]
    test_hooks_live: bool,
}

impl LaneState {
    /// The state of a lane in a real signer process.
    pub(crate) fn in_signer() -> Self {
        Self {
            #[cfg(feature = "sandbox-test-hooks")]
            test_hooks_live: true,
            ..Self::default()
        }
    }
}

/// What to do after handling one frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Write the first `n` bytes of the answer buffer, then wipe them.
    Answer(usize),
    /// The stream cannot be trusted any more: stop serving.
    CorruptStream,
}

/// Handles one request frame payload and encodes the answer into `answer`.
pub(crate) fn handle_frame(
    store: &RwLock<KeyStore>,
    lane: &mut LaneState,
    payload: &[u8],
    answer: &mut [u8],
) -> Outcome {
    let frame = match decode_request(payload) {
        Ok(frame) => frame,
        Err(RequestDecodeError::NoId) => return Outcome::CorruptStream,
        Err(RequestDecodeError::Body { id }) => {
            return reply(id, Response::Refused(Refusal::MalformedRequest), answer);
        }
    };
    let id = frame.id;
    if lane.last_id.is_some_and(|last| id <= last) {
        return reply(
            id,
            Response::Refused(Refusal::RequestIdNotIncreasing),
            answer,
        );
    }
    lane.last_id = Some(id);
    // A poisoned lock means another worker panicked, and a panic ends the whole process through
    // the panic hook before anyone could observe the poison; so the inner value is always sound.
    let read = || {
        store
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    let write = || {
        store
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    match frame.request {
        Request::GenerateKey { spec } => {
            let generated = write().generate(spec);
            scrub_stack();
            match generated {
                Ok((key, public_key)) => {
                    reply(id, Response::KeyGenerated { key, public_key }, answer)
                }
                Err(refusal) => reply(id, Response::Refused(refusal), answer),
            }
        }
        Request::PublicKey { key } => match read().public_key(&key) {
            Ok((algorithm, purpose, public_key)) => reply(
                id,
                Response::PublicKey {
                    algorithm,
                    purpose,
                    public_key,
                },
                answer,
            ),
            Err(refusal) => reply(id, Response::Refused(refusal), answer),
        },
        Request::Sign { key, digest } => match read().sign(&key, &digest) {
            Ok((r, s)) => reply(id, Response::Signature { r, s }, answer),
            Err(refusal) => reply(id, Response::Refused(refusal), answer),
        },
        Request::DiffieHellman { key, peer_public } => {
            match read().diffie_hellman(&key, &peer_public) {
                Ok(shared) => reply(id, Response::SharedSecret(WireSecret(*shared)), answer),
                Err(refusal) => reply(id, Response::Refused(refusal), answer),
            }
        }
        Request::ListKeys => {
            let store = read();
            encode(id, Response::KeyList(ListingView(store.listings())), answer)
        }
        Request::DropKey { key } => {
            let dropped = write().drop_key(&key);
            match dropped {
                Ok(()) => reply(id, Response::KeyDropped, answer),
                Err(refusal) => reply(id, Response::Refused(refusal), answer),
            }
        }
        #[cfg(feature = "sandbox-test-hooks")]
        Request::AttemptForbiddenSyscall { call } => {
            if !lane.test_hooks_live {
                // In-process (fuzzers, property tests): never make the call in the host.
                return reply(id, Response::Refused(Refusal::MalformedRequest), answer);
            }
            // Under the sandbox the kernel ends the process inside this call. Without it the call
            // returns, and the caller is told so explicitly.
            let result = crate::sys::attempt_forbidden_syscall(call);
            reply(id, Response::SurvivedForbiddenSyscall { result }, answer)
        }
    }
}

/// Encodes an answer that carries no key listing.
fn reply(id: u64, response: Response<()>, answer: &mut [u8]) -> Outcome {
    encode(id, response, answer)
}

/// Encodes an answer. Every answer fits: the largest is a listing at `MAX_KEY_LIMIT` keys,
/// well under the frame cap; if one ever did not, the stream stops rather than lie.
fn encode<L: Serialize>(id: u64, response: Response<L>, answer: &mut [u8]) -> Outcome {
    match encode_frame(&ResponseFrame { id, response }, answer) {
        Ok(length) => Outcome::Answer(length),
        Err(_) => Outcome::CorruptStream,
    }
}
