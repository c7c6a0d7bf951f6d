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

use crate::wire::age_format::AgeError;
use crate::wire::backup_format::BackupProblem;
use crate::wire::consensus::{ChainWatermarks, ConsensusMessage, GuardRule, Watermark};
use crate::wire::key_types::{Algorithm, KeySpec, Purpose, WireKeyId};
use crate::wire::store_format::{
    MAX_CHAINS_PER_KEY, MAX_VERSIONS, ManifestFields, Seal, SealedRecord, WatermarkRecord,
};
use crate::wire::{MAX_BATCH, MAX_FRAME_LEN, MAX_KEY_LIMIT, MAX_MESSAGE_LEN};

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
    /// Sign 1 to [`MAX_BATCH`] 32-byte prehashed digests with one Ed25519 key; answered with
    /// `Signatures`, one for each digest, in order. The signer signs them where they lie, in the
    /// frame buffer.
    SignMany {
        key: WireKeyId,
        #[serde(borrow, with = "digest_bytes")]
        #[cfg_attr(feature = "test-support", arbitrary(with = arbitrary_digests))]
        digests: &'a [[u8; 32]],
    },
    /// Sign a typed consensus message with a consensus key, if the double-sign guard allows it.
    /// Answered with `Signature` when no write is needed (a repeat of a durable watermark, or a
    /// memory-only signer), else with `ConsensusSealed`: the advanced watermark, sealed, for the
    /// host to write before it asks for the signature with `ReleaseConsensus`.
    SignConsensus {
        key: WireKeyId,
        message: ConsensusMessage,
    },
    /// The host has durably written every sealed change up to `sequence`: sign `message`, which
    /// must be the key's watermark, sealed at or before `sequence`. Answered with `Signature`.
    ReleaseConsensus {
        key: WireKeyId,
        message: ConsensusMessage,
        sequence: u64,
    },
    /// A consensus key's watermarks, per chain; answered with `Watermarks`.
    Watermarks { key: WireKeyId },
    /// Raise a consensus key's watermarks on one chain to at least `marks` (an import: never
    /// lowers one); answered with `WatermarksRaised`.
    RaiseWatermarks {
        key: WireKeyId,
        marks: ChainWatermarks,
    },
    /// End a drop from a sealed store: `erase` the key once the state without it is durable,
    /// or put it back when the write failed. Answered with `KeyDropped`.
    FinishDrop { key: WireKeyId, erase: bool },
    /// The signer's provisioning recipient and backup-signing key; answered with
    /// `Provisioning`.
    Provisioning,
    /// Import a secret key for `purpose` that an operator encrypted (an age file, bounded by
    /// the frame cap; the host sends at most 4 KiB) to the signer's provisioning recipient; the
    /// signer decrypts
    /// it, re-derives its public key and refuses it unless that is `claimed_public`. Answered
    /// like `GenerateKey`.
    ImportKey {
        purpose: Purpose,
        claimed_public: [u8; 32],
        #[serde(borrow, serialize_with = "as_bytes")]
        encrypted: &'a [u8],
    },
    /// Every key (and every consensus key's watermarks), signed by the backup-signing key and
    /// encrypted to the X25519 age `recipient`; answered with `Backup`.
    Backup { recipient: [u8; 32] },
    /// One step of restoring a backup re-encrypted to the provisioning recipient and signed by
    /// `signed_by`: the signer adds the first key of it not held (with its watermarks, in one
    /// change) or raises the first watermark held lower, or says the restore is complete.
    /// Answered with `Restored`; the host writes its change and asks again.
    RestoreStep {
        signed_by: [u8; 32],
        #[serde(borrow, serialize_with = "as_bytes")]
        encrypted: &'a [u8],
    },
    /// Give `key` a new version, keeping the previous one for `grace_seconds`; answered with
    /// `KeyRotated`. With a sealed store the host writes its change, then `FinishRotation`.
    RotateKey { key: WireKeyId, grace_seconds: u64 },
    /// End a rotation of a sealed store: `commit` once its change is durable, or put the
    /// previous version back. Answered with `KeyDropped` (nothing to say).
    FinishRotation { key: WireKeyId, commit: bool },
    /// Erase the previous versions of one key whose grace period is over; answered with
    /// `Purged`. With a sealed store the host writes its change, then `FinishDrop`.
    PurgeRetired,
    /// The versions of `key` held; answered with `KeyVersions`.
    KeyVersions { key: WireKeyId },
    /// Sign a 32-byte digest with one version of an Ed25519 key; answered with `Signature`.
    SignWithVersion {
        key: WireKeyId,
        version: u32,
        digest: [u8; 32],
    },
    /// X25519 with one version of a handshake key; answered with `SharedSecret`.
    DiffieHellmanWithVersion {
        key: WireKeyId,
        version: u32,
        peer_public: [u8; 32],
    },
}

/// The most bytes of an answer frame to any request but a listing or a batch: every fixed-size
/// answer and every refusal, with the largest id, is well under it.
pub(crate) const SMALL_ANSWER_FRAME: usize = 128;

/// The most bytes of an answer frame that carries a sealed store change (two records, three
/// removed slots, a watermark record, a manifest and their seals: 601 bytes at most, 674 with
/// the largest answer around it and the largest id).
pub(crate) const SEALED_ANSWER_FRAME: usize = 768;

/// The most bytes of a `KeyVersions` answer: three versions of at most 58 bytes each (189 bytes
/// with the largest id).
pub(crate) const VERSIONS_ANSWER_FRAME: usize = 320;

/// The most bytes of a `Watermarks` answer: a key's watermarks on its most chains.
pub(crate) const WATERMARKS_ANSWER_FRAME: usize = 1024;

/// The most bytes of a `Provisioning` answer: four 32-byte fields (the recipient, the signing
/// key, the signature's halves), 143 bytes with the largest id, so over the small cap.
pub(crate) const PROVISIONING_ANSWER_FRAME: usize = 192;

impl Request<'_> {
    /// The most bytes the frame answering this request can take. The signer answers a burst of
    /// requests back to back in one buffer, and checks that this much is left before it handles
    /// a request, since a request once handled cannot be undone to make room.
    pub(crate) fn largest_answer_frame(&self) -> usize {
        match self {
            // At the largest key limit: most of a frame.
            Request::ListKeys => SMALL_ANSWER_FRAME + LISTING_LEN * MAX_KEY_LIMIT as usize,
            Request::SignMany { digests, .. } => {
                SMALL_ANSWER_FRAME + SIGNATURE_LEN * digests.len().min(MAX_BATCH)
            }
            Request::GenerateKey { .. }
            | Request::DropKey { .. }
            | Request::SignConsensus { .. }
            | Request::RaiseWatermarks { .. } => SEALED_ANSWER_FRAME,
            Request::Watermarks { .. } => WATERMARKS_ANSWER_FRAME,
            Request::ReleaseConsensus { .. } => SMALL_ANSWER_FRAME,
            Request::PublicKey { .. }
            | Request::SignDigest { .. }
            | Request::SignMessage { .. }
            | Request::DiffieHellman { .. }
            | Request::AttemptForbiddenSyscall { .. }
            | Request::FinishDrop { .. } => SMALL_ANSWER_FRAME,
            Request::Provisioning => PROVISIONING_ANSWER_FRAME,
            Request::ImportKey { .. }
            | Request::RestoreStep { .. }
            | Request::RotateKey { .. }
            | Request::PurgeRetired => SEALED_ANSWER_FRAME,
            Request::KeyVersions { .. } => VERSIONS_ANSWER_FRAME,
            Request::FinishRotation { .. }
            | Request::SignWithVersion { .. }
            | Request::DiffieHellmanWithVersion { .. } => SMALL_ANSWER_FRAME,
            Request::Backup { .. } => MAX_FRAME_LEN,
        }
    }
}

/// The bytes of one signature in a `Signatures` answer.
const SIGNATURE_LEN: usize = 64;

/// The bytes of one key in a `KeyList` answer: its id, one byte each for its purpose and its
/// algorithm, its public key.
const LISTING_LEN: usize = 24 + 1 + 1 + 32;

// Whatever the request, its answer fits in an empty answer buffer (one frame).
const _: () = assert!(SMALL_ANSWER_FRAME + LISTING_LEN * MAX_KEY_LIMIT as usize <= MAX_FRAME_LEN);
const _: () = assert!(SMALL_ANSWER_FRAME + SIGNATURE_LEN * MAX_BATCH <= MAX_FRAME_LEN);

/// `SignMany`'s digests travel as one byte string, 32 bytes a digest back to back, so that the
/// signer can borrow them from its frame buffer as whole digests (a sequence of arrays could only
/// be decoded into new memory). A length that is not a multiple of 32 does not decode: the
/// request is malformed.
mod digest_bytes {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        digests: &&[[u8; 32]],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(digests.as_flattened())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<&'de [[u8; 32]], D::Error> {
        let bytes = <&'de [u8]>::deserialize(deserializer)?;
        match bytes.as_chunks::<32>() {
            (digests, []) => Ok(digests),
            _ => Err(D::Error::invalid_length(
                bytes.len(),
                &"a whole number of 32-byte digests",
            )),
        }
    }
}

/// Draws a batch of digests for `arbitrary`: any count the remaining bytes allow, none and over
/// the cap included, so the refusals are drawn too.
#[cfg(feature = "test-support")]
fn arbitrary_digests<'a>(
    input: &mut arbitrary::Unstructured<'a>,
) -> arbitrary::Result<&'a [[u8; 32]]> {
    let count = input.arbitrary_len::<[u8; 32]>()?;
    let bytes = input.bytes(count * 32)?;
    Ok(bytes.as_chunks::<32>().0)
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

/// One signature of a `Signatures` answer, as its two halves (serde has no 64-byte arrays).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireSignature {
    pub(crate) r: [u8; 32],
    pub(crate) s: [u8; 32],
}

/// An answer from the signer. `L` is the key listing, `S` a shared secret and `B` a batch's
/// signatures: a `Vec`, a [`WireSecret`] and a `Vec` when decoded by the host; a borrowed view of
/// the key store, a borrowed `&[u8; 32]` and a [`SignaturesView`] that signs as it is encoded
/// when encoded by the signer (which allocates nothing once sandboxed). Both encode the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(
    clippy::large_enum_variant,
    reason = "the signer encodes answers without allocating: no Box; the host decodes one at a time"
)]
pub(crate) enum Answer<L = Vec<KeyListing>, S = WireSecret, B = Vec<WireSignature>, E = Vec<u8>> {
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
    /// The signatures of a `SignMany`, one for each digest, in the order of the digests.
    Signatures(B),
    /// `KeyGenerated` from a signer with a sealed store: the new key and the sealed change the
    /// host must write durably before it tells its caller.
    KeyGeneratedSealed {
        key: WireKeyId,
        public_key: [u8; 32],
        change: StoreChange,
    },
    /// `KeyDropped` from a signer with a sealed store, with the sealed change to write.
    KeyDroppedSealed {
        change: StoreChange,
    },
    /// A consensus message's advanced watermark, sealed: write it, then `ReleaseConsensus`.
    ConsensusSealed {
        change: StoreChange,
    },
    /// A consensus key's watermarks, one entry per chain it has signed on.
    Watermarks([Option<ChainWatermarks>; MAX_CHAINS_PER_KEY]),
    /// Watermarks raised; the sealed change to write, if anything was raised in a sealed store.
    WatermarksRaised {
        change: Option<StoreChange>,
    },
    /// The provisioning recipient (an X25519 public key), the backup-signing key (Ed25519) and
    /// that key's signature over the recipient
    /// ([`provisioning_statement`](crate::wire::backup_format::provisioning_statement)).
    Provisioning {
        recipient: [u8; 32],
        signing_key: [u8; 32],
        r: [u8; 32],
        s: [u8; 32],
    },
    /// A backup: an age file (a borrowed slice of the signer's buffer when it encodes it).
    Backup(E),
    /// What one restore step did.
    Restored(RestoreProgress),
    /// A key's new version, its public key, and (a sealed store) the change to write.
    KeyRotated {
        version: u32,
        public_key: [u8; 32],
        change: Option<StoreChange>,
    },
    /// The key whose retired versions were erased (none: nothing was left to purge), and (a
    /// sealed store) the change that removes them.
    Purged {
        key: Option<WireKeyId>,
        change: Option<StoreChange>,
    },
    /// A key's versions, by version.
    KeyVersions([Option<VersionListing>; MAX_VERSIONS]),
}

/// One version of a key in a `KeyVersions` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VersionListing {
    pub(crate) version: u32,
    pub(crate) public_key: [u8; 32],
    pub(crate) created: u64,
    /// 0 for the current version, else when its grace period ends.
    pub(crate) retires: u64,
}

/// What one restore step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum RestoreProgress {
    /// A key of the backup added, with its watermarks, in `change` (a sealed store's).
    Added {
        key: WireKeyId,
        public_key: [u8; 32],
        change: Option<StoreChange>,
    },
    /// A held key's watermarks raised to the backup's, in `change`.
    Raised {
        key: WireKeyId,
        change: Option<StoreChange>,
    },
    /// Every key and watermark of the backup is held: `keys` keys and `marks` watermarks.
    Complete { keys: u32, marks: u32 },
}

/// One write of the sealed store, as the signer hands it to the host: at most one record added,
/// one replaced and a key's records removed, and the manifest of the state after the change,
/// sealed. The host applies it to its copy of the file and writes the result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoreChange {
    pub(crate) added: Option<SealedRecord>,
    /// A record that takes the place of the one in its slot (a rotation's new version); the
    /// slot's watermark records stay.
    pub(crate) replaced: Option<SealedRecord>,
    /// Records removed (a key's versions, or its retired ones), with their watermark records.
    pub(crate) removed_slots: [Option<u16>; MAX_VERSIONS],
    /// A watermark record added or replaced (by slot and chain).
    pub(crate) watermark: Option<WatermarkRecord>,
    pub(crate) manifest: ManifestFields,
    pub(crate) manifest_seal: Seal,
}

impl StoreChange {
    /// Whether the change takes nothing away: no record removed, none replaced.
    pub(crate) fn removes_nothing(&self) -> bool {
        self.replaced.is_none() && self.removed_slots.iter().all(Option::is_none)
    }
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
pub(crate) struct AnswerFrame<
    L = Vec<KeyListing>,
    S = WireSecret,
    B = Vec<WireSignature>,
    E = Vec<u8>,
> {
    pub(crate) id: u64,
    pub(crate) answer: Answer<L, S, B, E>,
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
    /// A batch to sign with no digests, or more than the cap.
    BatchSize {
        cap: u32,
    },
    /// The double-sign guard refused the message, by `rule`; `watermark` is its kind's.
    WouldDoubleSign {
        rule: GuardRule,
        watermark: Option<Watermark>,
    },
    /// A typed consensus request for a key of another purpose.
    NotAConsensusKey {
        purpose: Purpose,
    },
    /// Blind signing (a digest or an arbitrary message) with a key whose purpose forbids it.
    BlindSigningRefused {
        purpose: Purpose,
    },
    /// The key already keeps watermarks for its most chains.
    ChainLimit {
        cap: u32,
    },
    /// A release of a message that is not the key's watermark, or not sealed by the sequence
    /// number given, or of a sequence number never sealed.
    NotReleasable,
    /// The kernel gave no fresh entropy for the reseed that precedes making a key.
    NoFreshEntropy {
        errno: i32,
    },
    /// An import that did not decrypt with the provisioning key.
    ImportUndecryptable {
        error: AgeError,
    },
    /// An import whose plaintext is not a 32-byte secret key in an accepted form.
    ImportMalformed,
    /// An import whose secret's public key is not the one claimed.
    ImportPublicKeyMismatch,
    /// An import of a key the signer already holds (under `key`).
    KeyAlreadyHeld {
        key: WireKeyId,
    },
    /// A backup larger than one answer can carry.
    BackupTooLarge {
        keys: u32,
        cap: u32,
    },
    /// A backup recipient of low order (no key agreement is possible with it).
    BackupRecipientInvalid,
    /// A restore's backup was refused.
    RestoreRefused {
        problem: BackupProblem,
    },
    /// No version of the key has that number.
    UnknownVersion,
    /// That version's grace period is over.
    VersionRetired,
    /// The key already has `cap` previous versions in their grace period.
    VersionLimit {
        cap: u32,
    },
    /// A rotation of the key is waiting for its write to be acknowledged.
    RotationPending,
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

/// Serializes a batch's signatures as they are made, one digest at a time, straight into the
/// answer buffer: the signer needs no room for them anywhere else. `sign` must not fail: the key
/// is looked up, and the batch's size checked, before the answer is encoded.
pub(crate) struct SignaturesView<'a, F> {
    pub(crate) digests: &'a [[u8; 32]],
    pub(crate) sign: F,
}

impl<F> Serialize for SignaturesView<'_, F>
where
    F: Fn(&[u8; 32]) -> WireSignature,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut sequence = serializer.serialize_seq(Some(self.digests.len()))?;
        for digest in self.digests {
            sequence.serialize_element(&(self.sign)(digest))?;
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

/// The cap on a batch to sign, as the wire carries it.
#[allow(
    clippy::cast_possible_truncation,
    reason = "checked by the assertion above it"
)]
pub(crate) const BATCH_CAP: u32 = {
    assert!(MAX_BATCH <= u32::MAX as usize);
    MAX_BATCH as u32
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::FRAME_HEADER_LEN;

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
        use crate::wire::startup::{
            Greeting, HardeningStep, SealedSummary, StoreProblem, TamperedPart,
        };
        let key = WireKeyId {
            store: [1; 8],
            local: [2; 16],
        };
        let manifest = ManifestFields {
            sequence: 9,
            record_count: 1,
            watermark_count: 0,
            records_digest: [0x77; 32],
        };
        let manifest_seal = Seal {
            nonce: [0x88; 24],
            tag: [0x99; 16],
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
                "request 2: `SignMany`",
                framed(&RequestFrame {
                    id: 2,
                    request: Request::SignMany {
                        key,
                        digests: &[[3; 32], [4; 32]],
                    },
                }),
            ),
            (
                "request 3: `Backup`",
                framed(&RequestFrame {
                    id: 3,
                    request: Request::Backup { recipient: [9; 32] },
                }),
            ),
            (
                "request 4: `ImportKey`",
                framed(&RequestFrame {
                    id: 4,
                    request: Request::ImportKey {
                        purpose: Purpose::Consensus,
                        claimed_public: [0x33; 32],
                        encrypted: b"age",
                    },
                }),
            ),
            (
                "request 5: `RestoreStep`",
                framed(&RequestFrame {
                    id: 5,
                    request: Request::RestoreStep {
                        signed_by: [0x44; 32],
                        encrypted: b"age",
                    },
                }),
            ),
            (
                "greeting: `Ready`",
                framed(&Greeting::Ready {
                    protocol_version: 5,
                    key_memory: KeyMemory::LockedAnonymous,
                    store: [0xaa; 8],
                    sealed: None,
                }),
            ),
            (
                "greeting: `Ready` with a sealed store",
                framed(&Greeting::Ready {
                    protocol_version: 5,
                    key_memory: KeyMemory::MemfdSecret,
                    store: [0xaa; 8],
                    sealed: Some(SealedSummary {
                        manifest,
                        created: None,
                    }),
                }),
            ),
            (
                "greeting: `StoreRefused`",
                framed(&Greeting::StoreRefused {
                    problem: StoreProblem::Tampered(TamperedPart::Record { slot: 2 }),
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
            (
                "answer 6: `Refused(ImportUndecryptable)`",
                framed(&AnswerFrame::<(), &[u8; 32]> {
                    id: 6,
                    answer: Answer::Refused(Refusal::ImportUndecryptable {
                        error: AgeError::OutputTooSmall { needed: 300 },
                    }),
                }),
            ),
            (
                "answer 5: `Restored(Complete)`",
                framed(&AnswerFrame::<(), &[u8; 32]> {
                    id: 5,
                    answer: Answer::Restored(RestoreProgress::Complete { keys: 2, marks: 1 }),
                }),
            ),
            (
                "answer 3: `Backup`",
                framed(&AnswerFrame::<(), &[u8; 32], (), &[u8]> {
                    id: 3,
                    answer: Answer::Backup(b"age-encryption.org/v1\n"),
                }),
            ),
            (
                "answer 2: `Signatures`",
                framed(&AnswerFrame::<(), &[u8; 32]> {
                    id: 2,
                    answer: Answer::Signatures(vec![
                        WireSignature {
                            r: [0x11; 32],
                            s: [0x22; 32],
                        },
                        WireSignature {
                            r: [0x33; 32],
                            s: [0x44; 32],
                        },
                    ]),
                }),
            ),
            (
                "answer 4: `KeyGeneratedSealed`",
                framed(&AnswerFrame::<(), &[u8; 32]> {
                    id: 4,
                    answer: Answer::KeyGeneratedSealed {
                        key,
                        public_key: [0x33; 32],
                        change: StoreChange {
                            added: Some(SealedRecord {
                                slot: 3,
                                local: [2; 16],
                                purpose: Purpose::Consensus,
                                algorithm: Algorithm::Ed25519,
                                created: 1_700_000_000,
                                version: 1,
                                retires: 0,
                                public_key: [0x33; 32],
                                sealed_secret: [0x44; 32],
                                seal: Seal {
                                    nonce: [0x55; 24],
                                    tag: [0x66; 16],
                                },
                            }),
                            replaced: None,
                            removed_slots: [None; MAX_VERSIONS],
                            watermark: None,
                            manifest,
                            manifest_seal,
                        },
                    },
                }),
            ),
            (
                "answer 5: `KeyDroppedSealed`",
                framed(&AnswerFrame::<(), &[u8; 32]> {
                    id: 5,
                    answer: Answer::KeyDroppedSealed {
                        change: StoreChange {
                            added: None,
                            replaced: None,
                            removed_slots: [Some(3), None, None],
                            watermark: None,
                            manifest,
                            manifest_seal,
                        },
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
            5,
            "the document describes version 5"
        );
    }

    /// What the signer encodes while it signs, and what the host decodes, agree.
    #[test]
    fn signatures_encoded_as_they_are_made_decode_as_the_host_reads_them() {
        let digests: Vec<[u8; 32]> = (0..=255u8).map(|at| [at; 32]).collect();
        let sign = |digest: &[u8; 32]| WireSignature {
            r: *digest,
            s: [!digest[0]; 32],
        };
        let encoded = framed(&AnswerFrame::<(), &[u8; 32], _> {
            id: 77,
            answer: Answer::Signatures(SignaturesView {
                digests: &digests,
                sign,
            }),
        });
        let expected: Vec<WireSignature> = digests.iter().map(sign).collect();
        let host_side = framed(&AnswerFrame::<()> {
            id: 77,
            answer: Answer::Signatures(expected.clone()),
        });
        assert_eq!(encoded, host_side);
        let decoded = postcard::from_bytes::<AnswerFrame>(&encoded[FRAME_HEADER_LEN..]);
        assert!(
            matches!(&decoded, Ok(AnswerFrame { id: 77, answer: Answer::Signatures(signatures) }) if *signatures == expected),
            "{decoded:?}"
        );
    }

    /// A batch's digests are decoded where they lie, and only as whole digests.
    #[test]
    fn a_batch_decodes_in_place_and_only_as_whole_digests() {
        let key = WireKeyId {
            store: [1; 8],
            local: [2; 16],
        };
        let digests = [[5u8; 32], [6; 32], [7; 32]];
        let frame = framed(&RequestFrame {
            id: 9,
            request: Request::SignMany {
                key,
                digests: &digests,
            },
        });
        let payload = &frame[FRAME_HEADER_LEN..];
        let decoded = decode_request(payload);
        assert!(
            matches!(&decoded, Ok(RequestFrame { id: 9, request: Request::SignMany { digests: got, .. } }) if *got == digests),
            "{decoded:?}"
        );
        if let Ok(RequestFrame {
            request: Request::SignMany { digests: got, .. },
            ..
        }) = &decoded
        {
            assert!(
                payload.as_ptr_range().contains(&got.as_ptr().cast::<u8>()),
                "the digests were copied"
            );
        }
        // The byte string's length, one byte before the digests (96 = 3 x 32), made 95: the body
        // no longer decodes (and with the last byte dropped, nothing trails either).
        let length_at = payload.len() - 96 - 1;
        assert_eq!(payload[length_at], 96);
        let mut cut = payload[..payload.len() - 1].to_vec();
        cut[length_at] = 95;
        assert_eq!(
            decode_request(&cut),
            Err(RequestDecodeError::Body { id: 9 })
        );
    }

    /// Each answer fits in the room the signer checks for before handling its request.
    #[test]
    fn every_answer_fits_in_the_room_its_request_reserves() {
        use crate::wire::key_types::{Algorithm, KeySpec, Purpose};
        let key = WireKeyId {
            store: [0xff; 8],
            local: [0xff; 16],
        };
        let id = u64::MAX;
        let length = |answer: Answer<(), &[u8; 32]>| framed(&AnswerFrame { id, answer }).len();
        let small = [
            length(Answer::KeyGenerated {
                key,
                public_key: [0xff; 32],
            }),
            length(Answer::PublicKey {
                algorithm: Algorithm::X25519,
                purpose: Purpose::NetworkHandshake,
                public_key: [0xff; 32],
            }),
            length(Answer::Signature {
                r: [0xff; 32],
                s: [0xff; 32],
            }),
            length(Answer::SharedSecret(&[0xff; 32])),
            length(Answer::KeyDropped),
            length(Answer::SurvivedForbiddenSyscall { result: i64::MIN }),
            length(Answer::Refused(Refusal::WrongAlgorithm {
                algorithm: Algorithm::X25519,
                needed: Algorithm::Ed25519,
            })),
            length(Answer::Refused(Refusal::KeyLimitReached {
                limit: u32::MAX,
            })),
            length(Answer::Refused(Refusal::MessageTooLong { cap: u32::MAX })),
            length(Answer::Refused(Refusal::BatchSize { cap: u32::MAX })),
            length(Answer::Refused(Refusal::NoFreshEntropy { errno: i32::MIN })),
            length(Answer::Refused(Refusal::ImportUndecryptable {
                error: AgeError::OutputTooSmall { needed: u64::MAX },
            })),
            length(Answer::Refused(Refusal::KeyAlreadyHeld { key })),
            length(Answer::Refused(Refusal::BackupTooLarge {
                keys: u32::MAX,
                cap: u32::MAX,
            })),
            length(Answer::Refused(Refusal::RestoreRefused {
                problem: BackupProblem::MalformedLine { line: u32::MAX },
            })),
            length(Answer::Restored(RestoreProgress::Complete {
                keys: u32::MAX,
                marks: u32::MAX,
            })),
            length(Answer::Refused(Refusal::VersionLimit { cap: u32::MAX })),
            length(Answer::Purged {
                key: Some(key),
                change: None,
            }),
            length(Answer::KeyRotated {
                version: u32::MAX,
                public_key: [0xff; 32],
                change: None,
            }),
        ];
        for answer_length in small {
            assert!(answer_length <= SMALL_ANSWER_FRAME, "{answer_length}");
        }
        let sign = |_: &[u8; 32]| WireSignature {
            r: [0xff; 32],
            s: [0xff; 32],
        };
        let spec = KeySpec::new(Purpose::Consensus);
        for count in [1, 2, 100, MAX_BATCH] {
            let digests = vec![[0u8; 32]; count];
            let request = Request::SignMany {
                key,
                digests: &digests,
            };
            let answer = framed(&AnswerFrame::<(), &[u8; 32], _> {
                id,
                answer: Answer::Signatures(SignaturesView {
                    digests: &digests,
                    sign,
                }),
            });
            assert!(answer.len() <= request.largest_answer_frame(), "{count}");
        }
        let over = vec![[0u8; 32]; MAX_BATCH + 1];
        let request = Request::SignMany {
            key,
            digests: &over,
        };
        assert!(request.largest_answer_frame() >= SMALL_ANSWER_FRAME);
        // A sealed change at its largest: every varint at its widest.
        let record = SealedRecord {
            slot: u16::MAX,
            local: [0xff; 16],
            purpose: Purpose::NetworkHandshake,
            algorithm: Algorithm::X25519,
            created: u64::MAX,
            version: u32::MAX,
            retires: u64::MAX,
            public_key: [0xff; 32],
            sealed_secret: [0xff; 32],
            seal: Seal {
                nonce: [0xff; 24],
                tag: [0xff; 16],
            },
        };
        let mark = Watermark {
            epoch: u64::MAX,
            round: u64::MAX,
            digest: [0xff; 32],
        };
        let change = StoreChange {
            added: Some(record),
            replaced: Some(record),
            removed_slots: [Some(u16::MAX); MAX_VERSIONS],
            watermark: Some(WatermarkRecord {
                slot: u16::MAX,
                marks: ChainWatermarks {
                    chain: crate::wire::consensus::ChainId([0xff; 32]),
                    proposal: Some(mark),
                    vote: Some(mark),
                    timeout: Some(mark),
                },
            }),
            manifest: ManifestFields {
                sequence: u64::MAX,
                record_count: u32::MAX,
                watermark_count: u32::MAX,
                records_digest: [0xff; 32],
            },
            manifest_seal: Seal {
                nonce: [0xff; 24],
                tag: [0xff; 16],
            },
        };
        for answer in [
            Answer::KeyGeneratedSealed {
                key,
                public_key: [0xff; 32],
                change,
            },
            Answer::KeyDroppedSealed { change },
            Answer::Restored(RestoreProgress::Added {
                key,
                public_key: [0xff; 32],
                change: Some(change),
            }),
            Answer::Restored(RestoreProgress::Raised {
                key,
                change: Some(change),
            }),
            Answer::KeyRotated {
                version: u32::MAX,
                public_key: [0xff; 32],
                change: Some(change),
            },
            Answer::Purged {
                key: Some(key),
                change: Some(change),
            },
        ] {
            let answer_length = framed(&AnswerFrame::<(), &[u8; 32]> { id, answer }).len();
            assert!(answer_length <= SEALED_ANSWER_FRAME, "{answer_length}");
        }
        for request in [
            Request::RotateKey {
                key,
                grace_seconds: u64::MAX,
            },
            Request::PurgeRetired,
        ] {
            assert_eq!(request.largest_answer_frame(), SEALED_ANSWER_FRAME);
        }
        for request in [
            Request::FinishRotation { key, commit: true },
            Request::SignWithVersion {
                key,
                version: u32::MAX,
                digest: [0xff; 32],
            },
            Request::DiffieHellmanWithVersion {
                key,
                version: u32::MAX,
                peer_public: [0xff; 32],
            },
        ] {
            assert_eq!(request.largest_answer_frame(), SMALL_ANSWER_FRAME);
        }
        // A key's versions at their largest: three, every varint at its widest.
        let listing = VersionListing {
            version: u32::MAX,
            public_key: [0xff; 32],
            created: u64::MAX,
            retires: u64::MAX,
        };
        let versions = length(Answer::KeyVersions([Some(listing); MAX_VERSIONS]));
        assert!(
            versions <= Request::KeyVersions { key }.largest_answer_frame(),
            "{versions}"
        );
        assert_eq!(
            Request::GenerateKey { spec }.largest_answer_frame(),
            SEALED_ANSWER_FRAME
        );
        assert_eq!(
            Request::DropKey { key }.largest_answer_frame(),
            SEALED_ANSWER_FRAME
        );
        let listings = vec![
            KeyListing {
                key,
                purpose: Purpose::NetworkHandshake,
                algorithm: Algorithm::X25519,
                public_key: [0xff; 32],
            };
            MAX_KEY_LIMIT as usize
        ];
        let listing = framed(&AnswerFrame::<_, &[u8; 32]> {
            id,
            answer: Answer::KeyList(listings),
        });
        assert!(
            listing.len() > FRAME_HEADER_LEN,
            "the listing did not encode"
        );
        assert!(listing.len() <= Request::ListKeys.largest_answer_frame());
        // The provisioning answer: four 32-byte fields.
        let provisioning = length(Answer::Provisioning {
            recipient: [0xff; 32],
            signing_key: [0xff; 32],
            r: [0xff; 32],
            s: [0xff; 32],
        });
        assert!(
            provisioning <= Request::Provisioning.largest_answer_frame(),
            "{provisioning}"
        );
        // An import is answered as a generate is, or refused.
        let import = Request::ImportKey {
            purpose: Purpose::Consensus,
            claimed_public: [0xff; 32],
            encrypted: &[0xff; MAX_MESSAGE_LEN],
        };
        assert_eq!(import.largest_answer_frame(), SEALED_ANSWER_FRAME);
        let restore = Request::RestoreStep {
            signed_by: [0xff; 32],
            encrypted: &[0xff; MAX_MESSAGE_LEN],
        };
        assert_eq!(restore.largest_answer_frame(), SEALED_ANSWER_FRAME);
        // A backup: an age file as long as a frame can carry with the largest id (its kind and
        // a 3-byte length before it). The signer writes at most a shorter one
        // (`the_largest_backup_fits_in_one_answer_frame`).
        let file = vec![0xff; MAX_FRAME_LEN - FRAME_HEADER_LEN - 10 - 1 - 3];
        let backup = framed(&AnswerFrame::<(), &[u8; 32], (), &[u8]> {
            id,
            answer: Answer::Backup(&file),
        });
        assert_eq!(backup.len(), MAX_FRAME_LEN);
        assert!(
            backup.len()
                <= Request::Backup {
                    recipient: [0xff; 32]
                }
                .largest_answer_frame()
        );
    }
}
