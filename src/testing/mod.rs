//! Test support, compiled only with the `test-support` feature: entry points for the fuzzers and
//! the property tests (the same decode and dispatch code the signer runs, driven in-process), a
//! raw-pipe harness to a real signer, and request frames built from the real request type. Not
//! part of the API, never in a build that holds real keys.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::host::config::{Config, SpawnMode};
use crate::host::error::{Error, SignerEnd};
use crate::host::keys::KeyId;
use crate::host::signer_process::SignerProcess;
use crate::host::signer_program::SignerProgram;
use crate::signer::dispatch::{LaneState, Outcome, handle_frame};
use crate::signer::key_store::KeyStore;
use crate::wire::framing::{FrameReader, ReadError, encode_frame, frame_buffer, write_all};
use crate::wire::key_types::{KeySpec, LocalKeyId, Purpose, SecretMemory, WireKeyId};
use crate::wire::messages::{
    Answer, AnswerFrame, ForbiddenSyscall, Request, RequestFrame, decode_request,
};

/// A signer's request handling without the process around it: a key store in locked memory and
/// one lane's state.
pub struct Dispatcher {
    store: RwLock<KeyStore>,
    lane: LaneState,
    answer: Box<[u8]>,
}

/// What the dispatcher did with one frame.
#[derive(Debug, PartialEq, Eq)]
pub enum DispatchResult {
    /// It answered; the answer decoded as a response frame with this id.
    Answered {
        /// The id the answer carries.
        id: u64,
        /// The answer's `Debug` form, except that a Diffie-Hellman result is shown as
        /// `SharedSecret([bytes])` (the response type redacts it) so a test can check it against
        /// the peer's side. This store holds only keys its tests made.
        summary: String,
    },
    /// It would stop serving: the stream cannot be trusted.
    Stopped,
}

impl Dispatcher {
    /// A dispatcher holding up to `key_limit` keys in locked anonymous memory.
    pub fn new(key_limit: u32) -> std::io::Result<Self> {
        let store = KeyStore::new(key_limit, SecretMemory::LockedAnonymous)
            .map_err(|error| std::io::Error::other(format!("{error:?}")))?;
        Ok(Self {
            store: RwLock::new(store),
            lane: LaneState::default(),
            answer: frame_buffer(),
        })
    }

    /// Handles one frame payload exactly as a signer worker would.
    ///
    /// # Panics
    /// If the dispatcher produced an answer that does not decode: that is the bug a fuzzer
    /// looks for.
    pub fn handle(&mut self, payload: &[u8]) -> DispatchResult {
        match handle_frame(&self.store, &mut self.lane, payload, &mut self.answer) {
            Outcome::Answer(length) => {
                let frame = postcard::from_bytes::<AnswerFrame>(&self.answer[4..length]);
                match frame {
                    Ok(frame) => DispatchResult::Answered {
                        id: frame.id,
                        summary: match &frame.answer {
                            Answer::SharedSecret(secret) => {
                                format!("SharedSecret({:?})", *secret.0)
                            }
                            answer => format!("{answer:?}"),
                        },
                    },
                    Err(error) => panic!("the dispatcher wrote an undecodable answer: {error}"),
                }
            }
            Outcome::CorruptStream => DispatchResult::Stopped,
            Outcome::NoRoom => panic!("the dispatcher found no room in a whole frame's buffer"),
        }
    }
}

/// Splits a byte stream into frames as a signer would, returning each payload's length, and
/// why it stopped (`None` if the bytes ran out cleanly at a frame boundary).
pub fn split_frames(stream: &[u8]) -> (Vec<usize>, Option<String>) {
    let mut reader = FrameReader::new();
    let mut rest = stream;
    let mut lengths = Vec::new();
    loop {
        let taken = reader
            .take_buffered()
            .map(|payload| payload.map(|payload| payload.len()));
        match taken {
            Ok(Some(length)) => lengths.push(length),
            Ok(None) if !rest.is_empty() => {
                let pushed = reader.push(rest);
                rest = &rest[pushed..];
            }
            Ok(None) if reader.has_partial_frame() => {
                return (lengths, Some("truncated frame".to_owned()));
            }
            Ok(None) => return (lengths, None),
            Err(error) => return (lengths, Some(format!("{error:?}"))),
        }
    }
}

/// A real, sandboxed signer whose lane 0 the caller drives with raw bytes: for tests of hostile
/// input through the real pipe. Dropping it shuts the signer down and reaps it.
pub struct RawSigner {
    // Declared first so the pipes close before the process is dropped (and reaped).
    request: Option<OwnedFd>,
    response: OwnedFd,
    frames: FrameReader,
    process: SignerProcess,
    /// With a sealed store: the store, locked; the caller plays the host and decides what is
    /// written (nothing is, unless it calls `write_store_change`).
    _store: Option<crate::host::store::HostStore>,
}

impl RawSigner {
    /// Spawns a signer with `config` (forced to one worker) and takes its pipe.
    pub fn spawn(config: Config) -> Result<Self, Error> {
        let config = config.with_workers(1);
        config.validate()?;
        let program = match &config.spawn_mode {
            SpawnMode::Fork => None,
            SpawnMode::ForkExec { program } => Some(SignerProgram::open(program)?),
        };
        let (mut process, store) = match &config.store {
            None => (
                SignerProcess::spawn(&config, program.as_ref(), 1, None)?,
                None,
            ),
            Some(store_config) => {
                let (store, launch) = crate::host::store::HostStore::open(store_config)?;
                let (settings, expected) = launch.into_parts();
                let process =
                    SignerProcess::spawn(&config, program.as_ref(), 1, Some((&store, settings)))
                        .map_err(|error| match error {
                            crate::host::error::SpawnError::Store(error) => Error::Store(error),
                            error => Error::Spawn(error),
                        })?;
                store
                    .adopt(expected, process.sealed_summary())
                    .map_err(|_| Error::Internal("the raw signer's store was not adopted"))?;
                (process, Some(store))
            }
        };
        let (request, response) = process
            .take_raw_lane()
            .ok_or(Error::Internal("the signer has no lane"))?;
        Ok(Self {
            request: Some(request),
            response,
            frames: FrameReader::new(),
            process,
            _store: store,
        })
    }

    /// The signer's pid.
    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// Writes raw bytes to the request pipe (never raising SIGPIPE).
    pub fn write(&self, bytes: &[u8]) -> std::io::Result<()> {
        let fd = self
            .request
            .as_ref()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        write_all(bytes, |chunk| {
            crate::sys::write_without_sigpipe(fd.as_fd(), chunk)
        })
    }

    /// Closes the request pipe, as the supervisor does at shutdown.
    pub fn close_requests(&mut self) {
        self.request = None;
    }

    /// The response pipe's read end (non-blocking).
    pub fn response_pipe(&self) -> BorrowedFd<'_> {
        self.response.as_fd()
    }

    /// Reads the next answer: its id and the `Debug` form of the response; or `Err` with why no
    /// answer came (closed, timed out, ...).
    pub fn read_answer(&mut self, timeout: Duration) -> Result<(u64, String), String> {
        let payload = self
            .frames
            .read_frame(
                self.response.as_fd(),
                None,
                Duration::ZERO,
                Some(Instant::now() + timeout),
            )
            .map_err(|error| match error {
                ReadError::Closed { .. } => "closed".to_owned(),
                ReadError::TimedOut => "timed out".to_owned(),
                other => format!("{other:?}"),
            })?;
        let frame = postcard::from_bytes::<AnswerFrame>(payload)
            .map_err(|error| format!("undecodable answer: {error}"))?;
        Ok((frame.id, format!("{:?}", frame.answer)))
    }

    /// How the signer ended (waits up to two seconds for the kernel to report it).
    pub fn wait_end(&self) -> SignerEnd {
        self.process.end_after_close()
    }
}

/// A frame asking to sign a typed consensus message with `key`.
pub fn sign_consensus_frame(id: u64, key: KeyId, message: crate::ConsensusMessage) -> Vec<u8> {
    request_frame(
        id,
        &Request::SignConsensus {
            key: key.wire(),
            message,
        },
    )
}

/// A frame telling the signer every sealed change up to `sequence` is durable, asking for the
/// signature of `message` (whether or not anything was written: a test plays a lying host).
pub fn release_consensus_frame(
    id: u64,
    key: KeyId,
    message: crate::ConsensusMessage,
    sequence: u64,
) -> Vec<u8> {
    request_frame(
        id,
        &Request::ReleaseConsensus {
            key: key.wire(),
            message,
            sequence,
        },
    )
}

/// A frame ending a drop from a sealed store (`erase`, or put the key back).
pub fn finish_drop_frame(id: u64, key: KeyId, erase: bool) -> Vec<u8> {
    request_frame(
        id,
        &Request::FinishDrop {
            key: key.wire(),
            erase,
        },
    )
}

/// A frame asking for a consensus key's watermarks.
pub fn watermarks_frame(id: u64, key: KeyId) -> Vec<u8> {
    request_frame(id, &Request::Watermarks { key: key.wire() })
}

/// A frame asking to raise a consensus key's watermarks on one chain.
pub fn raise_watermarks_frame(id: u64, key: KeyId, marks: crate::ChainWatermarks) -> Vec<u8> {
    request_frame(
        id,
        &Request::RaiseWatermarks {
            key: key.wire(),
            marks,
        },
    )
}

/// A frame asking for the signer's provisioning recipient and backup-signing key.
pub fn provisioning_frame(id: u64) -> Vec<u8> {
    request_frame(id, &Request::Provisioning)
}

/// A frame asking to import the key in `encrypted` (an age file, or any bytes: the signer
/// refuses what does not decrypt) for `purpose`, claiming its public key is `claimed_public`.
/// Any length: the frame may exceed the cap.
pub fn import_key_frame(
    id: u64,
    purpose: Purpose,
    claimed_public: [u8; 32],
    encrypted: &[u8],
) -> Vec<u8> {
    unbounded_frame(
        id,
        &Request::ImportKey {
            purpose,
            claimed_public,
            encrypted,
        },
    )
}

/// A frame asking for a backup of every key, encrypted to the X25519 public key `recipient`
/// (any 32 bytes: the signer refuses a low-order point).
pub fn backup_frame(id: u64, recipient: [u8; 32]) -> Vec<u8> {
    request_frame(id, &Request::Backup { recipient })
}

/// A frame asking for one step of restoring the backup in `encrypted` (an age file to the
/// provisioning recipient, or any bytes), signed by the Ed25519 key `signed_by` (any 32 bytes).
/// Any length: the frame may exceed the cap.
pub fn restore_step_frame(id: u64, signed_by: [u8; 32], encrypted: &[u8]) -> Vec<u8> {
    unbounded_frame(
        id,
        &Request::RestoreStep {
            signed_by,
            encrypted,
        },
    )
}

/// A frame asking to give `key` a new version, keeping the previous one for `grace_seconds`
/// (0: not kept).
pub fn rotate_key_frame(id: u64, key: KeyId, grace_seconds: u64) -> Vec<u8> {
    request_frame(
        id,
        &Request::RotateKey {
            key: key.wire(),
            grace_seconds,
        },
    )
}

/// A frame ending a rotation of a sealed store (`commit` once its change is durable, or put the
/// previous version back).
pub fn finish_rotation_frame(id: u64, key: KeyId, commit: bool) -> Vec<u8> {
    request_frame(
        id,
        &Request::FinishRotation {
            key: key.wire(),
            commit,
        },
    )
}

/// A frame asking to erase the previous versions of one key whose grace period is over.
pub fn purge_retired_frame(id: u64) -> Vec<u8> {
    request_frame(id, &Request::PurgeRetired)
}

/// A frame asking for the versions of `key` held.
pub fn key_versions_frame(id: u64, key: KeyId) -> Vec<u8> {
    request_frame(id, &Request::KeyVersions { key: key.wire() })
}

/// A frame asking to sign a 32-byte `digest` with version `version` of `key` (any number: the
/// signer refuses a version it does not hold).
pub fn sign_with_version_frame(id: u64, key: KeyId, version: u32, digest: [u8; 32]) -> Vec<u8> {
    request_frame(
        id,
        &Request::SignWithVersion {
            key: key.wire(),
            version,
            digest,
        },
    )
}

/// A frame asking for X25519 between version `version` of `key` and the peer's public key
/// `peer_public`.
pub fn diffie_hellman_with_version_frame(
    id: u64,
    key: KeyId,
    version: u32,
    peer_public: [u8; 32],
) -> Vec<u8> {
    request_frame(
        id,
        &Request::DiffieHellmanWithVersion {
            key: key.wire(),
            version,
            peer_public,
        },
    )
}

/// The sequence number of the sealed change in an answer's `Debug` form, if it carries one.
pub fn sealed_sequence(summary: &str) -> Option<u64> {
    let after = summary.split("sequence: ").nth(1)?;
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A valid frame asking to generate a key for `spec`.
pub fn generate_key_frame(id: u64, spec: KeySpec) -> Vec<u8> {
    request_frame(id, &Request::GenerateKey { spec })
}

/// A valid frame asking to sign a 32-byte `digest` with `key`.
pub fn sign_frame(id: u64, key: KeyId, digest: [u8; 32]) -> Vec<u8> {
    request_frame(
        id,
        &Request::SignDigest {
            key: key.wire(),
            digest,
        },
    )
}

/// A valid frame asking to sign `message` with `key` (any length: the frame may exceed the cap).
pub fn sign_message_frame(id: u64, key: KeyId, message: &[u8]) -> Vec<u8> {
    unbounded_frame(
        id,
        &Request::SignMessage {
            key: key.wire(),
            message,
        },
    )
}

/// A frame for `request` of whatever length it encodes to, over the cap included (for tests of
/// over-long frames; `request_frame` stops at the cap).
fn unbounded_frame(id: u64, request: &Request<'_>) -> Vec<u8> {
    let mut payload = postcard::to_allocvec(&id).unwrap_or_default();
    payload.extend(postcard::to_allocvec(request).unwrap_or_default());
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut frame = length.to_le_bytes().to_vec();
    frame.extend(payload);
    frame
}

/// A frame asking to sign each of `digests` with `key` (any count: over the cap, the frame may
/// exceed the frame cap).
pub fn sign_many_frame(id: u64, key: KeyId, digests: &[[u8; 32]]) -> Vec<u8> {
    unbounded_frame(
        id,
        &Request::SignMany {
            key: key.wire(),
            digests,
        },
    )
}

/// The signatures in a `Signatures` answer's `Debug` form, in order, if it is one.
pub fn signatures_from_summary(summary: &str) -> Option<Vec<ed25519_dalek::Signature>> {
    let mut rest = summary.strip_prefix("Signatures([")?;
    let mut signatures = Vec::new();
    let bytes_after = |text: &str, label: &str| -> Option<([u8; 32], usize)> {
        let start = text.find(label)? + label.len();
        let end = start + text[start..].find(']')?;
        let bytes: Vec<u8> = text[start..end]
            .split(',')
            .map(|byte| byte.trim().parse::<u8>().ok())
            .collect::<Option<_>>()?;
        Some((bytes.try_into().ok()?, end))
    };
    while let Some((r, end)) = bytes_after(rest, "r: [") {
        rest = &rest[end..];
        let (s, end) = bytes_after(rest, "s: [")?;
        rest = &rest[end..];
        signatures.push(ed25519_dalek::Signature::from_components(r, s));
    }
    Some(signatures)
}

/// A valid frame asking for the key listing.
pub fn list_keys_frame(id: u64) -> Vec<u8> {
    request_frame(id, &Request::ListKeys)
}

/// A valid frame asking for the public half of `key`.
pub fn public_key_frame(id: u64, key: KeyId) -> Vec<u8> {
    request_frame(id, &Request::PublicKey { key: key.wire() })
}

/// A valid frame asking for X25519 between `key` and the peer's public key `peer_public`.
pub fn diffie_hellman_frame(id: u64, key: KeyId, peer_public: [u8; 32]) -> Vec<u8> {
    request_frame(
        id,
        &Request::DiffieHellman {
            key: key.wire(),
            peer_public,
        },
    )
}

/// A valid frame asking to erase `key`.
pub fn drop_key_frame(id: u64, key: KeyId) -> Vec<u8> {
    request_frame(id, &Request::DropKey { key: key.wire() })
}

/// A valid frame holding the test hook: a signer with live test hooks attempts `call` (and, in
/// its sandbox, is killed for it); every other signer, and the in-process dispatcher, refuses it.
pub fn test_hook_frame(id: u64, call: ForbiddenSyscall) -> Vec<u8> {
    request_frame(id, &Request::AttemptForbiddenSyscall { call })
}

/// A key id as it is encoded inside a request frame (store, then the key's id in the store).
pub fn key_id_bytes(key: KeyId) -> Vec<u8> {
    postcard::to_allocvec(&key.wire()).unwrap_or_default()
}

/// The key id whose encoding inside a request frame is exactly `bytes`, if any.
pub fn key_id_from_bytes(bytes: &[u8]) -> Option<KeyId> {
    match postcard::take_from_bytes::<WireKeyId>(bytes) {
        Ok((key, [])) => Some(KeyId(key)),
        _ => None,
    }
}

/// A frame holding an arbitrary, well-formed request drawn from `bytes` (through the real
/// request type's `arbitrary` derive, so a new request kind is covered without a mirror), with
/// the given id. `None` when `bytes` ran out before a request was drawn, or when the request
/// does not fit in one frame.
pub fn arbitrary_request_frame(id: u64, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut unstructured = arbitrary::Unstructured::new(bytes);
    let request: Request<'_> = arbitrary::Arbitrary::arbitrary(&mut unstructured).ok()?;
    let mut buffer = frame_buffer();
    let length = encode_frame(&RequestFrame { id, request }, &mut buffer).ok()?;
    Some(buffer[..length].to_vec())
}

/// Whether a frame payload decodes as a request, exactly as the signer decides it.
pub fn is_valid_request(payload: &[u8]) -> bool {
    decode_request(payload).is_ok()
}

/// Whether a frame payload is a request that makes a signer with live test hooks attempt a
/// forbidden system call (the in-process dispatcher refuses it).
pub fn is_test_hook_request(payload: &[u8]) -> bool {
    matches!(
        decode_request(payload),
        Ok(RequestFrame {
            request: Request::AttemptForbiddenSyscall { .. },
            ..
        })
    )
}

/// The key id named in a `KeyGenerated` answer's `Debug` form, if any.
pub fn generated_key_from_summary(summary: &str) -> Option<KeyId> {
    let bytes_after = |label: &str| -> Option<Vec<u8>> {
        let start = summary.find(label)? + label.len();
        let end = start + summary[start..].find(']')?;
        summary[start..end]
            .split(',')
            .map(|byte| byte.trim().parse::<u8>().ok())
            .collect()
    };
    if !summary.starts_with("KeyGenerated") {
        return None;
    }
    let local: LocalKeyId = bytes_after("local: [")?.try_into().ok()?;
    let store = bytes_after("store: [")?.try_into().ok()?;
    Some(KeyId(WireKeyId { store, local }))
}

fn request_frame(id: u64, request: &Request<'_>) -> Vec<u8> {
    let mut buffer = frame_buffer();
    // Every request built here is a few dozen bytes; the buffer holds a frame at the cap.
    let length = encode_frame(
        &RequestFrame {
            id,
            request: request.clone(),
        },
        &mut buffer,
    )
    .unwrap_or(0);
    buffer[..length].to_vec()
}

/// The frame cap, re-exported for tests that build over-long frames.
pub const FRAME_CAP: usize = crate::wire::MAX_FRAME_LEN;

/// How the signer reports an end caused by a corrupt stream, for tests to compare against.
pub const CORRUPT_STREAM_END: SignerEnd = SignerEnd::CorruptRequestStream;

pub use crate::host::store::directory::WritePoint as StoreWritePoint;

/// Makes this process kill itself (SIGKILL) when a durable store write reaches `point`, after
/// `skip` writes have passed that point. For crash tests, in a subprocess host.
pub fn crash_at_store_write(point: StoreWritePoint, skip: u32) {
    use std::sync::atomic::Ordering;
    crate::host::store::directory::CRASH_AFTER_WRITES.store(skip, Ordering::SeqCst);
    crate::host::store::directory::CRASH_POINT.store(point as u8, Ordering::SeqCst);
}
