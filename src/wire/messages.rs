//! Shared by both sides: every request the host sends and every answer the signer gives, once
//! the signer is serving. (Start-up messages are in `startup`.)
//!
//! Messages are postcard-encoded and carried in length-prefixed frames (see `framing`). A
//! request carries an id; its answer carries the same id, so answers are matched to callers
//! whatever order they arrive in. Within one lane the host sends ids in increasing order, and
//! the signer refuses an id that does not increase. `docs/wire-protocol.md` gives the bytes.
//!
//! Over 400 lines only with its tests: the worked examples of `docs/wire-protocol.md` are
//! checked here, beside the types they encode.
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

/// A system call the sandbox must forbid; used only by the sandbox tests. Public (and exported)
/// only with `test-support`.
#[cfg_attr(
    not(feature = "test-support"),
    allow(unreachable_pub, reason = "exported only with test-support")
)]
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

/// An answer from the signer. `L` is the key listing and `S` a shared secret: a `Vec` and a
/// [`WireSecret`] when decoded by the host; a borrowed view of the key store and a borrowed
/// `&[u8; 32]` when encoded by the signer (which allocates nothing once sandboxed). Both encode
/// the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Answer<L = Vec<KeyListing>, S = WireSecret> {
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
    SharedSecret(S),
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

/// A Diffie-Hellman result as the host receives it: decoded straight into one heap buffer,
/// which is handed on by pointer (through the answer, the pending-call table and the result)
/// into the caller's `SharedSecret`, and wiped when dropped. No copy of the bytes is left on a
/// stack or in a moved-from enum. Redacted when printed.
///
/// On the wire it is 32 bytes (a postcard tuple, as `[u8; 32]` encodes), so the signer, which
/// cannot allocate once sandboxed, sends a borrowed `&[u8; 32]` in its place.
#[derive(Clone, PartialEq, Eq, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub(crate) struct WireSecret(pub(crate) Box<[u8; 32]>);

impl std::fmt::Debug for WireSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WireSecret([REDACTED])")
    }
}

impl Serialize for WireSecret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for WireSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Fills a zeroed heap buffer byte by byte, so the secret never exists as a value that
        /// moves.
        struct InPlace;

        impl<'de> serde::de::Visitor<'de> for InPlace {
            type Value = WireSecret;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("32 bytes")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut bytes: A,
            ) -> Result<WireSecret, A::Error> {
                let mut secret = WireSecret(Box::new([0u8; 32]));
                for (index, slot) in secret.0.iter_mut().enumerate() {
                    *slot = bytes
                        .next_element::<u8>()?
                        .ok_or_else(|| serde::de::Error::invalid_length(index, &self))?;
                }
                Ok(secret)
            }
        }

        deserializer.deserialize_tuple(32, InPlace)
    }
}

/// An answer with the id of the request it answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AnswerFrame<L = Vec<KeyListing>, S = WireSecret> {
    pub(crate) id: u64,
    pub(crate) answer: Answer<L, S>,
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
#[allow(
    clippy::cast_possible_truncation,
    reason = "checked by the assertion above it"
)]
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
            answer: Answer::SharedSecret(WireSecret(Box::new(secret))),
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

    #[test]
    fn the_signer_borrowed_secret_and_the_host_boxed_one_encode_alike_and_round_trip() {
        let secret = [0x5c_u8; 32];
        let mut sent = [0u8; 64];
        let signer_side = AnswerFrame::<(), &[u8; 32]> {
            id: 9,
            answer: Answer::SharedSecret(&secret),
        };
        let sent = postcard::to_slice(&signer_side, &mut sent).map(|bytes| bytes.to_vec());
        let host_side = AnswerFrame::<()> {
            id: 9,
            answer: Answer::SharedSecret(WireSecret(Box::new(secret))),
        };
        let mut boxed = [0u8; 64];
        let boxed = postcard::to_slice(&host_side, &mut boxed).map(|bytes| bytes.to_vec());
        assert_eq!(sent, boxed);
        let decoded = postcard::from_bytes::<AnswerFrame>(&sent.unwrap_or_default());
        assert!(matches!(
            &decoded,
            Ok(AnswerFrame { id: 9, answer: Answer::SharedSecret(WireSecret(bytes)) }) if **bytes == secret
        ));
        // A secret cut short is an error, never a padded secret.
        let mut short = vec![9u8, 3];
        short.extend([0x5c; 31]);
        assert!(postcard::from_bytes::<AnswerFrame>(&short).is_err());
    }

    /// The hex of the worked example named `name` in docs/wire-protocol.md.
    fn documented_frame(name: &str) -> Vec<u8> {
        let document = include_str!("../../docs/wire-protocol.md");
        let row = document
            .lines()
            .find(|line| line.starts_with(&format!("| {name}")))
            .unwrap_or_else(|| panic!("no worked example {name:?}"));
        let hex: String = row
            .rsplit('|')
            .nth(1)
            .unwrap_or_default()
            .chars()
            .filter(char::is_ascii_hexdigit)
            .collect();
        (0..hex.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).unwrap_or_default())
            .collect()
    }

    fn framed<T: Serialize>(message: &T) -> Vec<u8> {
        let mut buffer = crate::wire::framing::frame_buffer();
        let length = crate::wire::framing::encode_frame(message, &mut buffer).unwrap_or(0);
        buffer[..length].to_vec()
    }

    #[test]
    fn the_worked_examples_in_the_protocol_document_are_exact() {
        use crate::wire::key_types::KeyMemory;
        use crate::wire::startup::{Greeting, HardeningStep};
        let key = WireKeyId {
            store: [1; 8],
            local: [2; 16],
        };
        let examples: Vec<(&str, Vec<u8>)> = vec![
            (
                "request 1: `SignDigest`",
                framed(&RequestFrame {
                    id: 1,
                    request: Request::SignDigest {
                        key,
                        digest: [3; 32],
                    },
                }),
            ),
            (
                "request 300: `SignMessage`",
                framed(&RequestFrame {
                    id: 300,
                    request: Request::SignMessage {
                        key,
                        message: b"abc",
                    },
                }),
            ),
            (
                "greeting: `Ready`",
                framed(&Greeting::Ready {
                    protocol_version: 2,
                    key_memory: KeyMemory::LockedAnonymous,
                    store: [0xaa; 8],
                }),
            ),
            (
                "greeting: `HardeningFailed`",
                framed(&Greeting::HardeningFailed {
                    step: HardeningStep::SeccompFilter,
                    errno: 22,
                }),
            ),
            (
                "answer 7: `Refused(UnknownKey)`",
                framed(&AnswerFrame::<(), &[u8; 32]> {
                    id: 7,
                    answer: Answer::Refused(Refusal::UnknownKey),
                }),
            ),
            (
                "answer 1: `Signature`",
                framed(&AnswerFrame::<(), &[u8; 32]> {
                    id: 1,
                    answer: Answer::Signature {
                        r: [0x11; 32],
                        s: [0x22; 32],
                    },
                }),
            ),
        ];
        for (name, encoded) in examples {
            assert_eq!(
                documented_frame(name),
                encoded,
                "{name}: the document says otherwise; the code encodes {}",
                encoded
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            );
        }
        assert_eq!(
            crate::wire::PROTOCOL_VERSION,
            2,
            "the document describes version 2"
        );
    }
}
