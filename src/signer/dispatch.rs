//! Runs in the signer: request handling, one exhaustive `match` over [`Request`], in one place.
//!
//! A well-framed request that does not decode, or that reuses an id, is answered with a refusal
//! and the signer carries on. A frame whose id cannot even be read means the stream can no
//! longer be trusted, and the signer stops. Nothing here allocates: requests are decoded from the
//! frame buffer (a message to sign is signed where it lies) and answers are encoded into a
//! buffer made before the sandbox was applied.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::Serialize;

use crate::signer::key_store::{ConsensusStep, KeyStore, scrub_stack};
use crate::wire::MAX_BATCH;
use crate::wire::framing::encode_frame;
use crate::wire::messages::{
    Answer, AnswerFrame, BATCH_CAP, ListingView, Refusal, Request, RequestDecodeError,
    SMALL_ANSWER_FRAME, SignaturesView, WireSignature, decode_request,
};

/// What one lane remembers between requests.
#[derive(Debug, Default)]
pub(crate) struct LaneState {
    last_id: Option<u64>,
    /// Whether a test-hook request may really make its system call: true only in a signer
    /// process, never in the in-process dispatcher the fuzzers and property tests drive.
    test_hooks_live: bool,
}

impl LaneState {
    /// The state of a lane in a real signer process.
    pub(crate) fn in_signer() -> Self {
        Self {
            test_hooks_live: cfg!(feature = "test-support"),
            ..Self::default()
        }
    }
}

/// What to do after handling one frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Write the first `n` bytes of the answer buffer, then wipe them.
    Answer(usize),
    /// The answer might not fit in the buffer given: nothing was done and the lane's state is
    /// unchanged. Write the answers before it, then hand the same frame over with more room.
    NoRoom,
    /// The stream cannot be trusted any more: stop serving.
    CorruptStream,
}

/// The store, for reading. A poisoned lock means another worker panicked, and a panic ends the
/// whole process through the panic hook before anyone could observe the poison; so the inner
/// value is always sound.
pub(crate) fn read_store(store: &RwLock<KeyStore>) -> RwLockReadGuard<'_, KeyStore> {
    store
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The store, for writing (see [`read_store`] on poison).
fn write_store(store: &RwLock<KeyStore>) -> RwLockWriteGuard<'_, KeyStore> {
    store
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Handles one request frame payload and encodes the answer into `answer`, which may be what is
/// left of a buffer already holding earlier answers (see [`Outcome::NoRoom`]).
pub(crate) fn handle_frame(
    store: &RwLock<KeyStore>,
    lane: &mut LaneState,
    payload: &[u8],
    answer: &mut [u8],
) -> Outcome {
    // Enough for any refusal, before even the id is known.
    if answer.len() < SMALL_ANSWER_FRAME {
        return Outcome::NoRoom;
    }
    let frame = match decode_request(payload) {
        Ok(frame) => frame,
        Err(RequestDecodeError::NoId) => return Outcome::CorruptStream,
        Err(RequestDecodeError::Body { id }) => {
            return reply(id, Answer::Refused(Refusal::MalformedRequest), answer);
        }
    };
    if answer.len() < frame.request.largest_answer_frame() {
        return Outcome::NoRoom;
    }
    let id = frame.id;
    if lane.last_id.is_some_and(|last| id <= last) {
        return reply(id, Answer::Refused(Refusal::RequestIdNotIncreasing), answer);
    }
    lane.last_id = Some(id);
    let result = match frame.request {
        Request::GenerateKey { spec } => {
            let generated = write_store(store).generate(spec);
            scrub_stack();
            generated.map(|(key, public_key, change)| match change {
                Some(change) => Answer::KeyGeneratedSealed {
                    key,
                    public_key,
                    change,
                },
                None => Answer::KeyGenerated { key, public_key },
            })
        }
        Request::PublicKey { key } => {
            read_store(store)
                .public_key(&key)
                .map(|(algorithm, purpose, public_key)| Answer::PublicKey {
                    algorithm,
                    purpose,
                    public_key,
                })
        }
        Request::SignDigest { key, digest } => read_store(store)
            .sign(&key, &digest)
            .map(|(r, s)| Answer::Signature { r, s }),
        Request::SignMessage { key, message } => read_store(store)
            .sign(&key, message)
            .map(|(r, s)| Answer::Signature { r, s }),
        Request::DiffieHellman { key, peer_public } => {
            let shared = read_store(store).diffie_hellman(&key, &peer_public);
            // Encoded from where it lies (`Zeroizing`, wiped when this arm ends); the answer
            // buffer is wiped once written.
            return match shared {
                Ok(shared) => encode(id, Answer::<(), &[u8; 32]>::SharedSecret(&shared), answer),
                Err(refusal) => reply(id, Answer::Refused(refusal), answer),
            };
        }
        Request::ListKeys => {
            let store = read_store(store);
            let listing = Answer::<_, &[u8; 32]>::KeyList(ListingView(store.listings()));
            return encode(id, listing, answer);
        }
        Request::DropKey { key } => {
            let dropped = write_store(store).drop_key(&key);
            scrub_stack();
            dropped.map(|change| match change {
                Some(change) => Answer::KeyDroppedSealed { change },
                None => Answer::KeyDropped,
            })
        }
        Request::AttemptForbiddenSyscall { call } => attempt_forbidden_syscall(lane, call),
        Request::SignConsensus { key, message } => {
            let step = write_store(store).sign_consensus(&key, &message);
            scrub_stack();
            step.map(|step| match step {
                ConsensusStep::Signed(r, s) => Answer::Signature { r, s },
                ConsensusStep::Persist(change) => Answer::ConsensusSealed { change },
            })
        }
        Request::ReleaseConsensus {
            key,
            message,
            sequence,
        } => {
            let signed = write_store(store).release_consensus(&key, &message, sequence);
            scrub_stack();
            signed.map(|(r, s)| Answer::Signature { r, s })
        }
        Request::FinishDrop { key, erase } => {
            let finished = write_store(store).finish_drop(&key, erase);
            scrub_stack();
            finished.map(|()| Answer::KeyDropped)
        }
        Request::Watermarks { key } => read_store(store).watermarks(&key).map(Answer::Watermarks),
        Request::Provisioning => {
            let (recipient, signing_key, (r, s)) = read_store(store).provisioning();
            scrub_stack();
            Ok(Answer::Provisioning {
                recipient,
                signing_key,
                r,
                s,
            })
        }
        Request::ImportKey {
            purpose,
            claimed_public,
            encrypted,
        } => {
            let imported = write_store(store).import(purpose, &claimed_public, encrypted);
            scrub_stack();
            imported.map(|(key, public_key, change)| match change {
                Some(change) => Answer::KeyGeneratedSealed {
                    key,
                    public_key,
                    change,
                },
                None => Answer::KeyGenerated { key, public_key },
            })
        }
        Request::RestoreStep {
            signed_by,
            encrypted,
        } => {
            let step = write_store(store).restore_step(&signed_by, encrypted);
            scrub_stack();
            step.map(Answer::Restored)
        }
        Request::RotateKey { key, grace_seconds } => {
            let rotated = write_store(store).rotate(&key, grace_seconds);
            scrub_stack();
            rotated.map(|(version, public_key, change)| Answer::KeyRotated {
                version,
                public_key,
                change,
            })
        }
        Request::FinishRotation { key, commit } => {
            let finished = write_store(store).finish_rotation(&key, commit);
            scrub_stack();
            finished.map(|()| Answer::KeyDropped)
        }
        Request::PurgeRetired => {
            let purged = write_store(store).purge_retired();
            scrub_stack();
            Ok(match purged {
                Some((key, change)) => Answer::Purged {
                    key: Some(key),
                    change,
                },
                None => Answer::Purged {
                    key: None,
                    change: None,
                },
            })
        }
        Request::KeyVersions { key } => read_store(store).versions(&key).map(Answer::KeyVersions),
        Request::SignWithVersion {
            key,
            version,
            digest,
        } => read_store(store)
            .sign_with_version(&key, version, &digest)
            .map(|(r, s)| Answer::Signature { r, s }),
        Request::DiffieHellmanWithVersion {
            key,
            version,
            peer_public,
        } => {
            let shared = read_store(store).diffie_hellman_with_version(&key, version, &peer_public);
            return match shared {
                Ok(shared) => encode(id, Answer::<(), &[u8; 32]>::SharedSecret(&shared), answer),
                Err(refusal) => reply(id, Answer::Refused(refusal), answer),
            };
        }
        Request::Backup { recipient } => {
            let mut guard = write_store(store);
            let backed_up = guard.backup(&recipient);
            scrub_stack();
            return match backed_up {
                Ok(len) => encode(
                    id,
                    Answer::<(), &[u8; 32], (), &[u8]>::Backup(guard.backup_bytes(len)),
                    answer,
                ),
                Err(refusal) => reply(id, Answer::Refused(refusal), answer),
            };
        }
        Request::RaiseWatermarks { key, marks } => write_store(store)
            .raise_watermarks(&key, &marks)
            .map(|change| Answer::WatermarksRaised { change }),
        Request::SignMany { key, digests } => {
            if digests.is_empty() || digests.len() > MAX_BATCH {
                return reply(
                    id,
                    Answer::Refused(Refusal::BatchSize { cap: BATCH_CAP }),
                    answer,
                );
            }
            // The read lock is taken once for the whole batch, which is signed as it is encoded.
            let store = read_store(store);
            return match store.ed25519_signer(&key) {
                Ok(signer) => {
                    let sign = |digest: &[u8; 32]| {
                        let (r, s) = signer.sign(digest);
                        WireSignature { r, s }
                    };
                    let signatures = SignaturesView { digests, sign };
                    encode(
                        id,
                        Answer::<(), &[u8; 32], _>::Signatures(signatures),
                        answer,
                    )
                }
                Err(refusal) => reply(id, Answer::Refused(refusal), answer),
            };
        }
    };
    match result {
        Ok(response) => reply(id, response, answer),
        Err(refusal) => reply(id, Answer::Refused(refusal), answer),
    }
}

/// The sandbox tests' hook. Under the sandbox the kernel ends the process inside the call;
/// without it the call returns, and the caller is told so explicitly. Refused in-process (never
/// make the call in the host) and in builds without `test-support`.
fn attempt_forbidden_syscall(
    lane: &LaneState,
    call: crate::wire::messages::ForbiddenSyscall,
) -> Result<Answer<(), &'static [u8; 32]>, Refusal> {
    if !lane.test_hooks_live {
        return Err(Refusal::NotInThisBuild);
    }
    #[cfg(feature = "test-support")]
    {
        let result = crate::sys::attempt_forbidden_syscall(call);
        Ok(Answer::SurvivedForbiddenSyscall { result })
    }
    #[cfg(not(feature = "test-support"))]
    {
        let _ = call;
        Err(Refusal::NotInThisBuild)
    }
}

/// Encodes an answer that carries no key listing, no secret and no batch.
fn reply(id: u64, answer_value: Answer<(), &[u8; 32]>, answer: &mut [u8]) -> Outcome {
    encode(id, answer_value, answer)
}

/// Encodes an answer. Every answer fits: `handle_frame` checked the room its request can need
/// (the largest answer, a listing at `MAX_KEY_LIMIT` keys, is under the frame cap); if one ever
/// did not, the stream stops rather than lie.
fn encode<L: Serialize, S: Serialize, B: Serialize, E: Serialize>(
    id: u64,
    answer_value: Answer<L, S, B, E>,
    answer: &mut [u8],
) -> Outcome {
    match encode_frame(
        &AnswerFrame {
            id,
            answer: answer_value,
        },
        answer,
    ) {
        Ok(length) => Outcome::Answer(length),
        Err(_) => Outcome::CorruptStream,
    }
}
