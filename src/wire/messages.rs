//! Shared by both sides: every request the host sends and every answer the signer gives, once
//! the signer is serving. (Start-up messages are in `startup`.)
//!
//! Messages are postcard-encoded and carried in length-prefixed frames (see `framing`). A
//! request carries an id; its answer carries the same id, so answers are matched to callers
//! whatever order they arrive in. Within one lane the host sends ids in increasing order, and
//! the signer refuses an id that does not increase. `docs/wire-protocol.md` gives the bytes.
//!
//! The encoding of every message is the same in every build: the test-hook request exists in
//! every build and is refused by signers built without the `test-support` feature.

use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};

use crate::wire::MAX_MESSAGE_LEN;
use crate::wire::key_types::{Algorithm, KeySpec, Purpose, WireKeyId};

/// A request from the host to the signer. One variant per operation; the signer handles them in
/// one exhaustive `match` (see `signer::dispatch`). New operations are new variants, added at
/// the end so earlier variants keep their encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "test-support", derive(arbitrary::Arbitrary))]
pub(crate) enum Request<'a> {
    /// Generate a key for a purpose; answered with `KeyGenerated`.
    GenerateKey { spec: KeySpec },
    /// The public half of a key; answered with `PublicKey`.
    PublicKey { key: WireKeyId },
    /// Sign a 32-byte prehashed digest with an Ed25519 key; answered with `Signature`.
    SignDigest { key: WireKeyId, digest: [u8; 32] },
    /// Sign a message of up to [`MAX_MESSAGE_LEN`] bytes with an Ed25519 key (pure Ed25519 over
    /// the message); answered with `Signature`. The signer signs it where it lies, in the frame
    /// buffer.
    SignMessage {
        key: WireKeyId,
        #[serde(borrow, serialize_with = "as_bytes")]
        message: &'a [u8],
    },
    /// X25519 with a handshake key and a peer's public key; answered with `SharedSecret`.
    DiffieHellman {
        key: WireKeyId,
        peer_public: [u8; 32],
    },
    /// Every key held; answered with `KeyList`.
    ListKeys,
    /// Erase a key; answered with `KeyDropped`.
    DropKey { key: WireKeyId },
    /// Make the signer attempt a forbidden system call, so a test can watch the kernel kill it.
    /// Refused (`NotInThisBuild`) by a signer built without the `test-support` feature, and
    /// never made by the in-process dispatcher.
    AttemptForbiddenSyscall { call: ForbiddenSyscall },
}

/// Writes a byte slice as postcard bytes (a length, then the bytes) in one call rather than one
/// call per byte; the encoding is the same.
fn as_bytes<S: Serializer>(bytes: &&[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// A system call the sandbox must forbid; used only by the sandbox tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "test-support", derive(arbitrary::Arbitrary))]
#[allow(missing_docs)]
pub enum ForbiddenSyscall {
    Open,
    OpenAt,
    Socket,
    Execve,
    Ptrace,
    Fork,
    Clone,
    MmapExecutable,
    Mprotect,
    X32Write,
    I386IntX80,
}

/// A request with its id, as it travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RequestFrame<'a> {
    pub(crate) id: u64,
    #[serde(borrow)]
    pub(crate) request: Request<'a>,
}

/// One key in a `KeyList` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyListing {
    pub(crate) key: WireKeyId,
    pub(crate) purpose: Purpose,
    pub(crate) algorithm: Algorithm,
    pub(crate) public_key: [u8; 32],
}

/// An answer from the signer. `L` is the key listing: a `Vec` when decoded by the host, a
/// borrowed view of the key store when encoded by the signer (which allocates nothing once
/// sandboxed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Answer<L = Vec<KeyListing>> {
    KeyGenerated {
        key: WireKeyId,
        public_key: [u8; 32],
    },
    PublicKey {
        algorithm: Algorithm,
        purpose: Purpose,
        public_key: [u8; 32],
    },
    /// An Ed25519 signature as its two halves (serde has no 64-byte arrays).
    Signature {
        r: [u8; 32],
        s: [u8; 32],
    },
    SharedSecret(WireSecret),
    KeyList(L),
    KeyDropped,
    /// The request was understood and refused; the signer carries on.
    Refused(Refusal),
    /// The signer made the forbidden call of a test hook and lived to report what the kernel
    /// returned, which means no filter covers it.
    SurvivedForbiddenSyscall {
        result: i64,
    },
}

/// A Diffie-Hellman result on its way to the caller: wiped when dropped (an answer waiting for
/// another caller, a decoded frame) and redacted when a response is printed.
#[derive(
    Clone, PartialEq, Eq, Serialize, Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop,
)]
#[serde(transparent)]
pub(crate) struct WireSecret(pub(crate) [u8; 32]);

impl std::fmt::Debug for WireSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WireSecret([REDACTED])")
    }
}

/// An answer with the id of the request it answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AnswerFrame<L = Vec<KeyListing>> {
    pub(crate) id: u64,
    pub(crate) answer: Answer<L>,
}

/// Why the signer refused a request. None of these ends the signer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Refusal {
    UnknownKey,
    /// The key exists but has the wrong algorithm for the operation.
    WrongAlgorithm {
        algorithm: Algorithm,
        needed: Algorithm,
    },
    PurposeAlgorithmMismatch,
    /// The peer's X25519 point gives an all-zero shared secret.
    LowOrderPoint,
    KeyLimitReached {
        limit: u32,
    },
    /// A well-framed request whose body did not decode.
    MalformedRequest,
    /// A request id not greater than the previous one on this lane.
    RequestIdNotIncreasing,
    /// A message to sign longer than the cap.
    MessageTooLong {
        cap: u32,
    },
    /// A request this build of the signer does not serve (a test hook without `test-support`).
    NotInThisBuild,
}

/// Serializes a key listing from anything that can iterate it twice (once to count: postcard
/// needs the length first), without allocating.
pub(crate) struct ListingView<I>(pub(crate) I);

impl<I> Serialize for ListingView<I>
where
    I: Iterator<Item = KeyListing> + Clone,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let count = self.0.clone().count();
        let mut sequence = serializer.serialize_seq(Some(count))?;
        for listing in self.0.clone() {
            sequence.serialize_element(&listing)?;
        }
        sequence.end()
    }
}

/// Why a frame payload could not be decoded as a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestDecodeError {
    /// Not even the id could be read: the stream cannot be trusted.
    NoId,
    /// The id was read but the body was not a valid request (unknown variant, short or
    /// trailing bytes): answer a refusal to this id.
    Body { id: u64 },
}

/// Decodes a request frame payload, borrowing from it and allocating nothing.
pub(crate) fn decode_request(payload: &[u8]) -> Result<RequestFrame<'_>, RequestDecodeError> {
    let (id, body) =
        postcard::take_from_bytes::<u64>(payload).map_err(|_| RequestDecodeError::NoId)?;
    match postcard::take_from_bytes::<Request<'_>>(body) {
        Ok((request, [])) => Ok(RequestFrame { id, request }),
        _ => Err(RequestDecodeError::Body { id }),
    }
}

/// The cap on a message to sign, as the wire carries it.
pub(crate) const MESSAGE_CAP: u32 = {
    assert!(MAX_MESSAGE_LEN <= u32::MAX as usize);
    // Checked just above: the value fits.
    #[allow(clippy::cast_possible_truncation)]
    let cap = MAX_MESSAGE_LEN as u32;
    cap
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diffie_hellman_answer_prints_without_its_secret() {
        let secret = [0xab_u8; 32];
        let frame = AnswerFrame::<()> {
            id: 7,
            answer: Answer::SharedSecret(WireSecret(secret)),
        };
        let printed = format!("{frame:?}");
        assert!(printed.contains("REDACTED"), "{printed}");
        assert!(
            !printed.contains("171"),
            "the secret's bytes are printed: {printed}"
        );
        // Redaction changes only the printing: the bytes still travel.
        let mut buffer = [0u8; 64];
        let length = postcard::to_slice(&frame, &mut buffer).map(|bytes| bytes.len());
        let encoded = &buffer[..length.unwrap_or(0)];
        assert!(encoded.windows(32).any(|window| window == secret));
    }
}
