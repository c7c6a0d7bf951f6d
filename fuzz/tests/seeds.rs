//! The seed corpora in `seeds/`, built from `keyward::testing` (the real request type's encoder),
//! so they speak the protocol keyward speaks now. After a change to the protocol, rewrite them
//! with
//!
//! ```sh
//! cd fuzz && cargo test --test seeds -- --ignored write_seeds
//! ```
//!
//! and commit the result; `the_committed_seeds_are_the_written_ones` fails while they differ.
//! Every seed is built the same way each time: the three fuzzed keys are named by their
//! placeholders (24 bytes `K`, 24 bytes `X`, 24 bytes `C`), never by random ids.

use std::collections::BTreeMap;
use std::path::PathBuf;

use keyward::testing::{
    FRAME_CAP, arbitrary_request_frame, backup_frame, diffie_hellman_frame,
    diffie_hellman_with_version_frame, drop_key_frame, finish_drop_frame, finish_rotation_frame,
    generate_key_frame, import_key_frame, key_id_from_bytes, key_versions_frame, list_keys_frame,
    provisioning_frame, public_key_frame, purge_retired_frame, raise_watermarks_frame,
    release_consensus_frame, restore_step_frame, rotate_key_frame, sign_consensus_frame,
    sign_frame, sign_many_frame, sign_message_frame, sign_with_version_frame, test_hook_frame,
    watermarks_frame,
};
use keyward::{
    Algorithm, ChainId, ChainWatermarks, ConsensusMessage, ForbiddenSyscall, KeyId, KeySpec,
    MAX_BATCH, MAX_MESSAGE_LEN, Purpose, Watermark,
};

/// The seed files of each target: its name, then each file's name and bytes.
type Corpora = BTreeMap<&'static str, BTreeMap<&'static str, Vec<u8>>>;

fn ed25519() -> KeyId {
    key_id_from_bytes(&[b'K'; 24]).expect("24 bytes are a key id")
}

fn x25519() -> KeyId {
    key_id_from_bytes(&[b'X'; 24]).expect("24 bytes are a key id")
}

fn consensus() -> KeyId {
    key_id_from_bytes(&[b'C'; 24]).expect("24 bytes are a key id")
}

/// The chain the consensus seeds sign on, and another.
const CHAIN: ChainId = ChainId([0x5c; 32]);

fn chain(index: u8) -> ChainId {
    ChainId([0x60 + index; 32])
}

/// A backup recipient: an X25519 public key of prime order (Alice's, RFC 7748 section 6.1).
const RECIPIENT: [u8; 32] = [
    0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e, 0xf7, 0x5a,
    0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e, 0xaa, 0x9b, 0x4e, 0x6a,
];

/// A backup recipient of low order (the all-zero point), which the signer refuses.
const LOW_ORDER_RECIPIENT: [u8; 32] = [0; 32];

/// The public key an import claims (none of the imports here gets as far as comparing it).
const CLAIMED: [u8; 32] = [0x77; 32];

/// Bytes to import that are not an age file.
const GARBAGE: &[u8] = b"\x00not an age file\xff";

/// The backup-signing key a restore names: an Ed25519 public key (RFC 8032 section 7.1, test 1).
const SIGNED_BY: [u8; 32] = [
    0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a,
    0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a,
];

/// 32 bytes that are no Ed25519 public key: y = 2, for which x^2 = (y^2 - 1) / (d y^2 + 1) has
/// no root.
const NOT_A_POINT: [u8; 32] = {
    let mut bytes = [0; 32];
    bytes[0] = 2;
    bytes
};

/// An age file cut short inside its first recipient stanza.
const TRUNCATED_HEADER: &[u8] = b"age-encryption.org/v1\n-> X25519 ";

/// A vote on `CHAIN` at epoch 1.
fn vote(round: u64, digest: u8) -> ConsensusMessage {
    ConsensusMessage::vote(CHAIN, 1, round, [digest; 32])
}

/// The watermarks an import offers: a proposal and a vote above the seeds' votes.
fn imported() -> ChainWatermarks {
    let mark = |round| {
        Some(Watermark {
            epoch: 1,
            round,
            digest: [0xd1; 32],
        })
    };
    ChainWatermarks {
        chain: CHAIN,
        proposal: mark(9),
        vote: mark(8),
        timeout: None,
    }
}

/// A frame: the little-endian u32 length, then `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut bytes = u32::try_from(payload.len())
        .expect("a short payload")
        .to_le_bytes()
        .to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

fn payload(frame: &[u8]) -> &[u8] {
    &frame[4..]
}

/// A `request_dispatch` chunk holding a frame's payload, sent as it is (an even tag).
fn raw(frame: &[u8]) -> Vec<u8> {
    self::frame(&[&[0], payload(frame)].concat())
}

/// A `request_dispatch` chunk from which a request is drawn through the real request type (an
/// odd tag), sent with an id `gap` above the last accepted one. `expected` is the frame those
/// bytes must draw (with any id): the seed is checked to mean what it says.
fn drawn(gap: u8, bytes: &[u8], expected: impl Fn(u64) -> Vec<u8>) -> Vec<u8> {
    assert_eq!(
        arbitrary_request_frame(7, bytes),
        Some(expected(7)),
        "the bytes {bytes:?} draw another request"
    );
    frame(&[&[(gap << 1) | 1], bytes].concat())
}

/// The bytes from which `arbitrary` picks variant `index` of an enum of `count` variants (a u32,
/// scaled into the range by multiplying and shifting).
fn variant(index: u64, count: u64) -> [u8; 4] {
    let chosen = u32::try_from((index << 32).div_ceil(count)).expect("index < count");
    chosen.to_le_bytes()
}

/// The request kinds, in their order in the request type.
mod kind {
    pub(super) const COUNT: u64 = 24;
    pub(super) const GENERATE_KEY: u64 = 0;
    pub(super) const PUBLIC_KEY: u64 = 1;
    pub(super) const SIGN_DIGEST: u64 = 2;
    pub(super) const DIFFIE_HELLMAN: u64 = 4;
    pub(super) const LIST_KEYS: u64 = 5;
    pub(super) const DROP_KEY: u64 = 6;
    pub(super) const TEST_HOOK: u64 = 7;
    pub(super) const SIGN_MANY: u64 = 8;
    pub(super) const SIGN_CONSENSUS: u64 = 9;
    pub(super) const RELEASE_CONSENSUS: u64 = 10;
    pub(super) const WATERMARKS: u64 = 11;
    pub(super) const RAISE_WATERMARKS: u64 = 12;
    pub(super) const FINISH_DROP: u64 = 13;
    pub(super) const PROVISIONING: u64 = 14;
    pub(super) const IMPORT_KEY: u64 = 15;
    pub(super) const BACKUP: u64 = 16;
    pub(super) const RESTORE_STEP: u64 = 17;
    pub(super) const ROTATE_KEY: u64 = 18;
    pub(super) const FINISH_ROTATION: u64 = 19;
    pub(super) const PURGE_RETIRED: u64 = 20;
    pub(super) const KEY_VERSIONS: u64 = 21;
    pub(super) const SIGN_WITH_VERSION: u64 = 22;
    pub(super) const DIFFIE_HELLMAN_WITH_VERSION: u64 = 23;
}

/// A grace period for the rotations that keep the previous version: an hour.
const GRACE: u64 = 3600;

/// The bytes from which `arbitrary` draws `message` (its fields in order: chain, epoch and
/// round little-endian, kind, digest).
fn drawn_message(message: &ConsensusMessage) -> Vec<u8> {
    let kind = match message.kind {
        keyward::ConsensusKind::Proposal => 0,
        keyward::ConsensusKind::Vote => 1,
        keyward::ConsensusKind::Timeout => 2,
    };
    [
        &message.chain.0[..],
        &message.epoch.to_le_bytes(),
        &message.round.to_le_bytes(),
        &variant(kind, 3),
        &message.digest,
    ]
    .concat()
}

/// The bytes from which `arbitrary` draws an import of `encrypted` (at most 255 bytes) for
/// `purpose` (its index of 4): the kind, the purpose, the claimed key, the bytes, then their
/// count (`arbitrary` takes a byte string's length from the end of its input).
fn drawn_import(purpose: u64, encrypted: &[u8]) -> Vec<u8> {
    [
        &variant(kind::IMPORT_KEY, kind::COUNT)[..],
        &variant(purpose, 4),
        &CLAIMED,
        encrypted,
        &[u8::try_from(encrypted.len()).expect("at most 255 bytes")],
    ]
    .concat()
}

/// The bytes from which `arbitrary` draws `marks` (an option is a byte, odd for `Some`).
fn drawn_marks(marks: &ChainWatermarks) -> Vec<u8> {
    let mut bytes = marks.chain.0.to_vec();
    for mark in [marks.proposal, marks.vote, marks.timeout] {
        match mark {
            None => bytes.push(0),
            Some(mark) => {
                bytes.push(1);
                bytes.extend(mark.epoch.to_le_bytes());
                bytes.extend(mark.round.to_le_bytes());
                bytes.extend(mark.digest);
            }
        }
    }
    bytes
}

fn digest() -> [u8; 32] {
    std::array::from_fn(|at| u8::try_from(at).expect("under 32"))
}

/// `count` different digests.
fn digests(count: usize) -> Vec<[u8; 32]> {
    (0..count)
        .map(|at| {
            let mut digest = digest();
            digest[..8].copy_from_slice(&u64::try_from(at).expect("a count").to_le_bytes());
            digest
        })
        .collect()
}

/// One request of every kind (but `FinishDrop`, which the drawn seeds reach), a few refusals,
/// then a malformed body or two, from id `first` on: the frames a signer would read.
fn sequence(first: u64) -> Vec<u8> {
    let ids = first..;
    let frames: Vec<Box<dyn Fn(u64) -> Vec<u8>>> = vec![
        Box::new(|id| generate_key_frame(id, KeySpec::new(Purpose::Account))),
        Box::new(|id| {
            generate_key_frame(
                id,
                KeySpec::with_algorithm(Purpose::Consensus, Algorithm::X25519),
            )
        }),
        Box::new(|id| public_key_frame(id, ed25519())),
        Box::new(|id| sign_frame(id, ed25519(), digest())),
        Box::new(|id| sign_frame(id, x25519(), [0; 32])), // the wrong algorithm
        Box::new(|id| sign_message_frame(id, ed25519(), b"a message to sign")),
        Box::new(|id| sign_many_frame(id, ed25519(), &digests(3))),
        Box::new(|id| diffie_hellman_frame(id, x25519(), [9; 32])),
        Box::new(|id| diffie_hellman_frame(id, x25519(), [0; 32])), // a low-order point
        Box::new(list_keys_frame),
        // The consensus key: a vote, its repeat, another digest at its round, a round below,
        // a timeout of the round, a vote in it after, a blind digest, the watermarks, an
        // import, a release a memory-only signer cannot give; the account key refused a vote.
        Box::new(|id| sign_consensus_frame(id, consensus(), vote(5, 0xa1))),
        Box::new(|id| sign_consensus_frame(id, consensus(), vote(5, 0xa1))),
        Box::new(|id| sign_consensus_frame(id, consensus(), vote(5, 0xb2))),
        Box::new(|id| sign_consensus_frame(id, consensus(), vote(4, 0xa1))),
        Box::new(|id| {
            sign_consensus_frame(
                id,
                consensus(),
                ConsensusMessage::timeout(CHAIN, 1, 6, [0xe1; 32]),
            )
        }),
        Box::new(|id| sign_consensus_frame(id, consensus(), vote(6, 0xa1))),
        Box::new(|id| sign_frame(id, consensus(), digest())),
        Box::new(|id| watermarks_frame(id, consensus())),
        Box::new(|id| raise_watermarks_frame(id, consensus(), imported())),
        Box::new(|id| release_consensus_frame(id, consensus(), vote(8, 0xd1), 1)),
        Box::new(|id| sign_consensus_frame(id, ed25519(), vote(1, 0xa1))),
        // Provisioning, a backup (and one to a low-order recipient), imports and a restore that
        // do not decrypt.
        Box::new(provisioning_frame),
        Box::new(|id| backup_frame(id, RECIPIENT)),
        Box::new(|id| backup_frame(id, LOW_ORDER_RECIPIENT)),
        Box::new(|id| import_key_frame(id, Purpose::Account, CLAIMED, GARBAGE)),
        Box::new(|id| import_key_frame(id, Purpose::Consensus, CLAIMED, TRUNCATED_HEADER)),
        Box::new(|id| restore_step_frame(id, SIGNED_BY, GARBAGE)),
        // Rotations: the account key's with a grace period, so version 1 still signs and a
        // version never held is refused; the handshake key's with none, so version 1 is gone;
        // a rotation to finish that a memory-only signer never began; a purge of nothing.
        Box::new(|id| rotate_key_frame(id, ed25519(), GRACE)),
        Box::new(|id| key_versions_frame(id, ed25519())),
        Box::new(|id| sign_with_version_frame(id, ed25519(), 1, digest())),
        Box::new(|id| sign_with_version_frame(id, ed25519(), 9, digest())),
        Box::new(|id| rotate_key_frame(id, x25519(), 0)),
        Box::new(|id| diffie_hellman_with_version_frame(id, x25519(), 1, [9; 32])),
        Box::new(|id| diffie_hellman_with_version_frame(id, x25519(), 2, [9; 32])),
        Box::new(|id| finish_rotation_frame(id, ed25519(), true)),
        Box::new(purge_retired_frame),
        Box::new(|id| drop_key_frame(id, ed25519())),
        Box::new(|id| test_hook_frame(id, ForbiddenSyscall::Open)),
        // A key listing with a byte after it.
        Box::new(|id| frame(&[payload(&list_keys_frame(id)), &[0]].concat())),
    ];
    frames
        .iter()
        .zip(ids)
        .flat_map(|(frame, id)| frame(id))
        .collect()
}

/// Every seed, as the fuzz targets read them.
fn corpora() -> Corpora {
    let mut corpora = Corpora::new();

    // frame_decoding: a byte stream as the signer's frame reader sees it.
    let cap = u32::try_from(FRAME_CAP).expect("the cap fits a u32");
    let at_cap = frame(&vec![0; FRAME_CAP]);
    let mut partial = 100u32.to_le_bytes().to_vec();
    partial.resize(partial.len() + 46, 0);
    corpora.insert(
        "frame_decoding",
        BTreeMap::from([
            ("empty_frame", frame(&[])),
            ("over_cap", (cap + 1).to_le_bytes().to_vec()),
            ("partial_header", vec![0x10, 0x00]),
            ("at_cap", at_cap.clone()),
            (
                "at_cap_twice_then_partial",
                [at_cap.clone(), at_cap, partial].concat(),
            ),
            ("sequence", sequence(3)),
        ]),
    );

    // request_dispatch: chunks (fuzz_targets/request_dispatch.rs). Ids 0, 1 and 2 went to the
    // three keys the target generates first, so requests start at 3.
    let k = [b'K'; 24];
    let x = [b'X'; 24];
    let c = [b'C'; 24];
    let generate = [
        &variant(kind::GENERATE_KEY, kind::COUNT)[..],
        &variant(2, 4), // Purpose::NetworkDiscovery
        &variant(0, 2), // Algorithm::Ed25519
    ]
    .concat();
    let drawn_requests = [
        drawn(1, &generate, |id| {
            generate_key_frame(id, KeySpec::new(Purpose::NetworkDiscovery))
        }),
        drawn(
            1,
            &[&variant(kind::PUBLIC_KEY, kind::COUNT)[..], &k].concat(),
            |id| public_key_frame(id, ed25519()),
        ),
        drawn(
            1,
            &[&variant(kind::SIGN_DIGEST, kind::COUNT)[..], &k, &digest()].concat(),
            |id| sign_frame(id, ed25519(), digest()),
        ),
        drawn(
            1,
            &[
                &variant(kind::DIFFIE_HELLMAN, kind::COUNT)[..],
                &x,
                &[9; 32],
            ]
            .concat(),
            |id| diffie_hellman_frame(id, x25519(), [9; 32]),
        ),
        drawn(1, &variant(kind::LIST_KEYS, kind::COUNT), list_keys_frame),
        drawn(
            1,
            &[&variant(kind::TEST_HOOK, kind::COUNT)[..], &variant(0, 11)].concat(),
            |id| test_hook_frame(id, ForbiddenSyscall::Open),
        ),
        // The digests' byte count comes last (`arbitrary` takes lengths from the end): 64 of
        // the 64 bytes before it, two digests.
        drawn(
            1,
            &[
                &variant(kind::SIGN_MANY, kind::COUNT)[..],
                &k,
                &digests(2).concat(),
                &[64],
            ]
            .concat(),
            |id| sign_many_frame(id, ed25519(), &digests(2)),
        ),
        drawn(
            1,
            &[
                &variant(kind::SIGN_CONSENSUS, kind::COUNT)[..],
                &c,
                &drawn_message(&vote(3, 0xa1)),
            ]
            .concat(),
            |id| sign_consensus_frame(id, consensus(), vote(3, 0xa1)),
        ),
        // The same vote again (the same signature), then another digest at its round.
        drawn(
            1,
            &[
                &variant(kind::SIGN_CONSENSUS, kind::COUNT)[..],
                &c,
                &drawn_message(&vote(3, 0xa1)),
            ]
            .concat(),
            |id| sign_consensus_frame(id, consensus(), vote(3, 0xa1)),
        ),
        drawn(
            1,
            &[
                &variant(kind::SIGN_CONSENSUS, kind::COUNT)[..],
                &c,
                &drawn_message(&vote(3, 0xb2)),
            ]
            .concat(),
            |id| sign_consensus_frame(id, consensus(), vote(3, 0xb2)),
        ),
        drawn(
            1,
            &[
                &variant(kind::RELEASE_CONSENSUS, kind::COUNT)[..],
                &c,
                &drawn_message(&vote(3, 0xa1)),
                &1u64.to_le_bytes(),
            ]
            .concat(),
            |id| release_consensus_frame(id, consensus(), vote(3, 0xa1), 1),
        ),
        drawn(
            1,
            &[&variant(kind::WATERMARKS, kind::COUNT)[..], &c].concat(),
            |id| watermarks_frame(id, consensus()),
        ),
        drawn(
            1,
            &[
                &variant(kind::RAISE_WATERMARKS, kind::COUNT)[..],
                &c,
                &drawn_marks(&imported()),
            ]
            .concat(),
            |id| raise_watermarks_frame(id, consensus(), imported()),
        ),
        // A drop never begun: a memory-only signer has no drop to finish.
        drawn(
            1,
            &[&variant(kind::FINISH_DROP, kind::COUNT)[..], &k, &[1]].concat(),
            |id| finish_drop_frame(id, ed25519(), true),
        ),
        drawn(
            1,
            &variant(kind::PROVISIONING, kind::COUNT),
            provisioning_frame,
        ),
        drawn(
            1,
            &[&variant(kind::BACKUP, kind::COUNT)[..], &RECIPIENT].concat(),
            |id| backup_frame(id, RECIPIENT),
        ),
        drawn(
            1,
            &[
                &variant(kind::BACKUP, kind::COUNT)[..],
                &LOW_ORDER_RECIPIENT,
            ]
            .concat(),
            |id| backup_frame(id, LOW_ORDER_RECIPIENT),
        ),
        drawn(1, &drawn_import(0, GARBAGE), |id| {
            import_key_frame(id, Purpose::Account, CLAIMED, GARBAGE)
        }),
        drawn(1, &drawn_import(3, TRUNCATED_HEADER), |id| {
            import_key_frame(id, Purpose::NetworkHandshake, CLAIMED, TRUNCATED_HEADER)
        }),
        // A restore: the signing key, the bytes, their count last.
        drawn(
            1,
            &[
                &variant(kind::RESTORE_STEP, kind::COUNT)[..],
                &SIGNED_BY,
                TRUNCATED_HEADER,
                &[u8::try_from(TRUNCATED_HEADER.len()).expect("a short header")],
            ]
            .concat(),
            |id| restore_step_frame(id, SIGNED_BY, TRUNCATED_HEADER),
        ),
        // Rotations: the account key's with no grace period, so version 1 is never held
        // again, and the handshake key's kept for ever; versions 0 and the largest refused;
        // the versions held; a rotation to finish never begun; a purge of nothing.
        drawn(
            1,
            &[
                &variant(kind::ROTATE_KEY, kind::COUNT)[..],
                &k,
                &0u64.to_le_bytes(),
            ]
            .concat(),
            |id| rotate_key_frame(id, ed25519(), 0),
        ),
        drawn(
            1,
            &[
                &variant(kind::ROTATE_KEY, kind::COUNT)[..],
                &x,
                &u64::MAX.to_le_bytes(),
            ]
            .concat(),
            |id| rotate_key_frame(id, x25519(), u64::MAX),
        ),
        drawn(
            1,
            &[&variant(kind::KEY_VERSIONS, kind::COUNT)[..], &x].concat(),
            |id| key_versions_frame(id, x25519()),
        ),
        drawn(
            1,
            &[
                &variant(kind::SIGN_WITH_VERSION, kind::COUNT)[..],
                &k,
                &0u32.to_le_bytes(),
                &digest(),
            ]
            .concat(),
            |id| sign_with_version_frame(id, ed25519(), 0, digest()),
        ),
        drawn(
            1,
            &[
                &variant(kind::SIGN_WITH_VERSION, kind::COUNT)[..],
                &k,
                &2u32.to_le_bytes(),
                &digest(),
            ]
            .concat(),
            |id| sign_with_version_frame(id, ed25519(), 2, digest()),
        ),
        drawn(
            1,
            &[
                &variant(kind::DIFFIE_HELLMAN_WITH_VERSION, kind::COUNT)[..],
                &x,
                &1u32.to_le_bytes(),
                &[9; 32],
            ]
            .concat(),
            |id| diffie_hellman_with_version_frame(id, x25519(), 1, [9; 32]),
        ),
        drawn(
            1,
            &[
                &variant(kind::DIFFIE_HELLMAN_WITH_VERSION, kind::COUNT)[..],
                &x,
                &u32::MAX.to_le_bytes(),
                &[9; 32],
            ]
            .concat(),
            |id| diffie_hellman_with_version_frame(id, x25519(), u32::MAX, [9; 32]),
        ),
        drawn(
            1,
            &[&variant(kind::FINISH_ROTATION, kind::COUNT)[..], &k, &[1]].concat(),
            |id| finish_rotation_frame(id, ed25519(), true),
        ),
        drawn(
            1,
            &variant(kind::PURGE_RETIRED, kind::COUNT),
            purge_retired_frame,
        ),
        // The account key dropped last, so the requests before reach it.
        drawn(
            1,
            &[&variant(kind::DROP_KEY, kind::COUNT)[..], &k].concat(),
            |id| drop_key_frame(id, ed25519()),
        ),
        // A gap of 0: the id of the last request again, refused.
        drawn(0, &variant(kind::LIST_KEYS, kind::COUNT), list_keys_frame),
    ]
    .concat();
    let raw_sequence: Vec<u8> = split(&sequence(3)).iter().flat_map(|f| raw(f)).collect();
    corpora.insert(
        "request_dispatch",
        BTreeMap::from([
            (
                "generate",
                raw(&generate_key_frame(3, KeySpec::new(Purpose::Account))),
            ),
            (
                "generate_mismatch",
                raw(&generate_key_frame(
                    3,
                    KeySpec::with_algorithm(Purpose::Account, Algorithm::X25519),
                )),
            ),
            ("public_key", raw(&public_key_frame(3, ed25519()))),
            ("sign", raw(&sign_frame(3, ed25519(), digest()))),
            (
                "sign_wrong_algorithm",
                raw(&sign_frame(3, x25519(), [0; 32])),
            ),
            (
                "sign_message",
                raw(&sign_message_frame(3, ed25519(), b"a message to sign")),
            ),
            (
                "sign_message_at_cap",
                raw(&sign_message_frame(
                    3,
                    ed25519(),
                    &vec![0x5A; MAX_MESSAGE_LEN],
                )),
            ),
            (
                "sign_message_too_long",
                raw(&sign_message_frame(
                    3,
                    ed25519(),
                    &vec![0x5A; MAX_MESSAGE_LEN + 1],
                )),
            ),
            (
                "sign_many",
                raw(&sign_many_frame(3, ed25519(), &digests(3))),
            ),
            (
                "sign_many_at_cap",
                raw(&sign_many_frame(3, ed25519(), &digests(MAX_BATCH))),
            ),
            (
                "sign_many_over_cap",
                raw(&sign_many_frame(3, ed25519(), &digests(MAX_BATCH + 1))),
            ),
            ("sign_many_empty", raw(&sign_many_frame(3, ed25519(), &[]))),
            (
                "sign_many_wrong_algorithm",
                raw(&sign_many_frame(3, x25519(), &digests(2))),
            ),
            ("dh", raw(&diffie_hellman_frame(3, x25519(), [9; 32]))),
            (
                "dh_low_order",
                raw(&diffie_hellman_frame(3, x25519(), [0; 32])),
            ),
            ("drop", raw(&drop_key_frame(3, ed25519()))),
            (
                "sign_consensus",
                raw(&sign_consensus_frame(3, consensus(), vote(5, 0xa1))),
            ),
            (
                "sign_consensus_repeat_conflict_below",
                [
                    raw(&sign_consensus_frame(3, consensus(), vote(5, 0xa1))),
                    raw(&sign_consensus_frame(4, consensus(), vote(5, 0xa1))),
                    raw(&sign_consensus_frame(5, consensus(), vote(5, 0xb2))),
                    raw(&sign_consensus_frame(6, consensus(), vote(4, 0xa1))),
                ]
                .concat(),
            ),
            (
                "sign_consensus_timeout_then_vote",
                [
                    raw(&sign_consensus_frame(
                        3,
                        consensus(),
                        ConsensusMessage::timeout(CHAIN, 1, 5, [0xe1; 32]),
                    )),
                    raw(&sign_consensus_frame(4, consensus(), vote(5, 0xa1))),
                    raw(&sign_consensus_frame(
                        5,
                        consensus(),
                        ConsensusMessage::proposal(CHAIN, 1, 5, [0xa1; 32]),
                    )),
                ]
                .concat(),
            ),
            (
                // Four chains, then a fifth: over the cap.
                "sign_consensus_chain_limit",
                (0..5u8)
                    .map(|index| {
                        raw(&sign_consensus_frame(
                            3 + u64::from(index),
                            consensus(),
                            ConsensusMessage::vote(chain(index), 1, 1, [0xa1; 32]),
                        ))
                    })
                    .collect::<Vec<_>>()
                    .concat(),
            ),
            (
                "sign_consensus_not_a_consensus_key",
                raw(&sign_consensus_frame(3, ed25519(), vote(5, 0xa1))),
            ),
            (
                "sign_blind_consensus",
                raw(&sign_frame(3, consensus(), digest())),
            ),
            (
                "release_consensus",
                raw(&release_consensus_frame(3, consensus(), vote(5, 0xa1), 1)),
            ),
            ("watermarks", raw(&watermarks_frame(3, consensus()))),
            (
                "raise_watermarks_then_below",
                [
                    raw(&raise_watermarks_frame(3, consensus(), imported())),
                    raw(&watermarks_frame(4, consensus())),
                    raw(&sign_consensus_frame(5, consensus(), vote(7, 0xa1))),
                    raw(&sign_consensus_frame(6, consensus(), vote(8, 0xd1))),
                ]
                .concat(),
            ),
            ("finish_drop", raw(&finish_drop_frame(3, ed25519(), true))),
            ("provisioning", raw(&provisioning_frame(3))),
            ("backup", raw(&backup_frame(3, RECIPIENT))),
            (
                "backup_low_order",
                raw(&backup_frame(3, LOW_ORDER_RECIPIENT)),
            ),
            (
                // A vote first, so the backup carries the consensus key's watermark too.
                "backup_with_watermarks",
                [
                    raw(&sign_consensus_frame(3, consensus(), vote(5, 0xa1))),
                    raw(&backup_frame(4, RECIPIENT)),
                ]
                .concat(),
            ),
            (
                "import_garbage",
                raw(&import_key_frame(3, Purpose::Account, CLAIMED, GARBAGE)),
            ),
            (
                "restore_garbage",
                raw(&restore_step_frame(3, SIGNED_BY, GARBAGE)),
            ),
            (
                "restore_truncated_header",
                raw(&restore_step_frame(3, SIGNED_BY, TRUNCATED_HEADER)),
            ),
            (
                // A signing key that is no point: refused before the file is decrypted.
                "restore_signed_by_no_point",
                raw(&restore_step_frame(3, NOT_A_POINT, TRUNCATED_HEADER)),
            ),
            (
                "import_truncated_header",
                raw(&import_key_frame(
                    3,
                    Purpose::Consensus,
                    CLAIMED,
                    TRUNCATED_HEADER,
                )),
            ),
            (
                // Version 2, then 1 (old) and 2 signing, a version never held, the versions.
                "rotate",
                [
                    raw(&rotate_key_frame(3, ed25519(), GRACE)),
                    raw(&sign_with_version_frame(4, ed25519(), 1, digest())),
                    raw(&sign_with_version_frame(5, ed25519(), 2, digest())),
                    raw(&sign_with_version_frame(6, ed25519(), 9, digest())),
                    raw(&key_versions_frame(7, ed25519())),
                ]
                .concat(),
            ),
            (
                // No grace period: version 1 is gone at once.
                "rotate_no_grace",
                [
                    raw(&rotate_key_frame(3, x25519(), 0)),
                    raw(&diffie_hellman_with_version_frame(4, x25519(), 1, [9; 32])),
                    raw(&diffie_hellman_with_version_frame(5, x25519(), 2, [9; 32])),
                    raw(&key_versions_frame(6, x25519())),
                ]
                .concat(),
            ),
            (
                // A grace period that never ends (its end saturates at the largest second).
                "rotate_grace_max",
                [
                    raw(&rotate_key_frame(3, x25519(), u64::MAX)),
                    raw(&diffie_hellman_with_version_frame(4, x25519(), 1, [9; 32])),
                    raw(&key_versions_frame(5, x25519())),
                    raw(&purge_retired_frame(6)),
                ]
                .concat(),
            ),
            (
                // Two previous versions kept, a third refused; then one with no grace period.
                "rotate_version_limit",
                [
                    raw(&rotate_key_frame(3, ed25519(), GRACE)),
                    raw(&rotate_key_frame(4, ed25519(), GRACE)),
                    raw(&rotate_key_frame(5, ed25519(), GRACE)),
                    raw(&rotate_key_frame(6, ed25519(), 0)),
                    raw(&key_versions_frame(7, ed25519())),
                ]
                .concat(),
            ),
            (
                // A vote, the key rotated, another digest at the vote's round (refused: the
                // watermark stays with the key), a versioned blind signature (refused).
                "rotate_consensus_then_conflict",
                [
                    raw(&sign_consensus_frame(3, consensus(), vote(5, 0xa1))),
                    raw(&rotate_key_frame(4, consensus(), GRACE)),
                    raw(&sign_consensus_frame(5, consensus(), vote(5, 0xb2))),
                    raw(&sign_consensus_frame(6, consensus(), vote(6, 0xa1))),
                    raw(&sign_with_version_frame(7, consensus(), 1, digest())),
                ]
                .concat(),
            ),
            (
                "finish_rotation",
                raw(&finish_rotation_frame(3, ed25519(), true)),
            ),
            ("purge", raw(&purge_retired_frame(3))),
            ("key_versions", raw(&key_versions_frame(3, ed25519()))),
            (
                "sign_with_version",
                raw(&sign_with_version_frame(3, ed25519(), 1, digest())),
            ),
            (
                "sign_with_version_0_and_max",
                [
                    raw(&sign_with_version_frame(3, ed25519(), 0, digest())),
                    raw(&sign_with_version_frame(4, ed25519(), u32::MAX, digest())),
                ]
                .concat(),
            ),
            (
                "dh_with_version",
                raw(&diffie_hellman_with_version_frame(3, x25519(), 1, [9; 32])),
            ),
            (
                "dh_with_version_0_and_max",
                [
                    raw(&diffie_hellman_with_version_frame(3, x25519(), 0, [9; 32])),
                    raw(&diffie_hellman_with_version_frame(
                        4,
                        x25519(),
                        u32::MAX,
                        [9; 32],
                    )),
                ]
                .concat(),
            ),
            ("list", raw(&list_keys_frame(3))),
            (
                "test_hook",
                raw(&test_hook_frame(3, ForbiddenSyscall::Open)),
            ),
            (
                "trailing",
                raw(&frame(&[payload(&list_keys_frame(3)), &[0]].concat())),
            ),
            // Id 3, then kind 24: one past the last kind.
            ("unknown_kind", raw(&frame(&[3, 24]))),
            (
                "id_not_increasing",
                [raw(&list_keys_frame(3)), raw(&list_keys_frame(3))].concat(),
            ),
            ("sequence", raw_sequence.clone()),
            (
                "sequence_then_stop",
                // An empty payload has no id: the signer stops, and the last request is never
                // served.
                [raw_sequence, raw(&frame(&[])), raw(&list_keys_frame(60))].concat(),
            ),
            ("drawn", drawn_requests),
        ]),
    );
    corpora
}

/// The frames of a stream of whole frames.
fn split(mut stream: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while let Some(header) = stream.first_chunk::<4>() {
        let length = 4 + usize::try_from(u32::from_le_bytes(*header)).expect("a u32 fits");
        frames.push(stream[..length].to_vec());
        stream = &stream[length..];
    }
    frames
}

fn seeds_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target)
}

/// What is in `seeds/<target>/` now.
fn committed(target: &str) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(seeds_dir(target))
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    (name, std::fs::read(entry.path()).expect("a readable seed"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Rewrites `seeds/`: every seed file of each target, and no other file.
#[test]
#[ignore = "writes seeds/; run it by name after a protocol change"]
fn write_seeds() {
    for (target, seeds) in corpora() {
        let dir = seeds_dir(target);
        for name in committed(target).keys() {
            std::fs::remove_file(dir.join(name)).expect("a stale seed removed");
        }
        std::fs::create_dir_all(&dir).expect("the seed folder");
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes).expect("a seed written");
        }
        println!("{target}: seeds written to {}", dir.display());
    }
}

/// The seeds in the repository are exactly the ones `write_seeds` writes.
#[test]
fn the_committed_seeds_are_the_written_ones() {
    for (target, seeds) in corpora() {
        let written: BTreeMap<String, Vec<u8>> = seeds
            .into_iter()
            .map(|(name, bytes)| (name.to_owned(), bytes))
            .collect();
        let committed = committed(target);
        assert_eq!(
            committed.keys().collect::<Vec<_>>(),
            written.keys().collect::<Vec<_>>(),
            "{target}: run `cargo test --test seeds -- --ignored write_seeds`"
        );
        for (name, bytes) in &written {
            assert!(
                committed[name] == *bytes,
                "{target}/{name} is stale: run `cargo test --test seeds -- --ignored write_seeds`"
            );
        }
    }
}
