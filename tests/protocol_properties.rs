//! Property: the signer's frame reader and request dispatch never panic on any bytes; every answer decodes and carries its request's id; a body that does not decode is refused (never executed) and valid requests after garbage still work. Requests come from the real request type (drawn through its `arbitrary` derive by `testing::arbitrary_request_frame`, or built by the `testing` helpers), never from a copy of it.
#![cfg(feature = "test-support")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ed25519_dalek::{Signature, VerifyingKey};
use keyward::testing::{
    DispatchResult, Dispatcher, FRAME_CAP, arbitrary_request_frame, backup_frame,
    diffie_hellman_frame, diffie_hellman_with_version_frame, drop_key_frame, finish_drop_frame,
    finish_rotation_frame, generate_key_frame, generated_key_from_summary, import_key_frame,
    is_test_hook_request, is_valid_request, key_id_bytes, key_id_from_bytes, key_versions_frame,
    list_keys_frame, provisioning_frame, public_key_frame, purge_retired_frame,
    raise_watermarks_frame, release_consensus_frame, restore_step_frame, rotate_key_frame,
    sign_consensus_frame, sign_frame, sign_many_frame, sign_message_frame, sign_with_version_frame,
    signatures_from_summary, split_frames, test_hook_frame, watermarks_frame,
};
use keyward::{Algorithm, ForbiddenSyscall, KeyId, KeySpec, MAX_BATCH, MAX_MESSAGE_LEN, Purpose};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use std::sync::atomic::{AtomicUsize, Ordering};

/// How many kinds of request the protocol has (variant indexes `0..REQUEST_KINDS`). A new kind
/// fails `every_arbitrary_request_decodes_and_is_answered_with_its_id` until it is counted here
/// and checked for its meaning in `every_request_kind_is_served_correctly_in_process`.
const REQUEST_KINDS: usize = 24;

/// A signer with live test hooks makes a forbidden system call (fork, execve, ptrace ...) for a
/// test-hook request. The in-process dispatcher refuses it, as
/// `the_in_process_dispatcher_never_makes_a_test_hook_system_call` shows with calls whose effect
/// would be harmless and visible. The random properties never feed it one all the same: were that
/// refusal ever lost, an `execve` of this test binary in the middle of a property would end the
/// run looking like a pass, before that test could say what happened.
fn unsafe_to_dispatch(payload: &[u8]) -> bool {
    is_test_hook_request(payload)
}

/// The id a payload starts with, if one decodes (a postcard varint `u64`).
fn id_of(payload: &[u8]) -> Option<u64> {
    postcard::take_from_bytes::<u64>(payload)
        .ok()
        .map(|(id, _)| id)
}

/// The request kind (variant index) after the id, if one decodes.
fn kind_of(payload: &[u8]) -> Option<u32> {
    let (_, body) = postcard::take_from_bytes::<u64>(payload).ok()?;
    postcard::take_from_bytes::<u32>(body)
        .ok()
        .map(|(kind, _)| kind)
}

/// Checks one answer against what the input policy says it must be; returns the answer's
/// summary if there was one.
fn check(payload: &[u8], result: &DispatchResult) -> Option<String> {
    match (id_of(payload), result) {
        (None, DispatchResult::Stopped) => None,
        (
            Some(id),
            DispatchResult::Answered {
                id: answered,
                summary,
            },
        ) => {
            assert_eq!(*answered, id, "the answer's id is not the request's");
            let malformed = summary.contains("MalformedRequest");
            assert_eq!(
                malformed,
                !is_valid_request(payload),
                "{payload:?} answered {summary}"
            );
            Some(summary.clone())
        }
        (id, result) => panic!("payload {payload:?} (id {id:?}) gave {result:?}"),
    }
}

fn dispatch(dispatcher: &mut Dispatcher, payload: &[u8]) -> Option<String> {
    assert!(!unsafe_to_dispatch(payload));
    let result = dispatcher.handle(payload);
    check(payload, &result)
}

/// The bytes listed after `prefix` (which ends in `[`) in a Debug summary.
fn bytes_after(summary: &str, prefix: &str) -> Vec<u8> {
    let start = summary
        .find(prefix)
        .unwrap_or_else(|| panic!("no {prefix} in {summary}"))
        + prefix.len();
    let end = start + summary[start..].find(']').unwrap();
    summary[start..end]
        .split(',')
        .map(|byte| byte.trim().parse().unwrap())
        .collect()
}

fn array<const N: usize>(bytes: Vec<u8>) -> [u8; N] {
    bytes.try_into().unwrap()
}

fn payload_of(frame: &[u8]) -> &[u8] {
    &frame[4..]
}

/// A key generated in a dispatcher: its id and public key.
struct Generated {
    key: KeyId,
    public: [u8; 32],
}

fn generate(dispatcher: &mut Dispatcher, id: u64, purpose: Purpose) -> Generated {
    let frame = generate_key_frame(id, KeySpec::new(purpose));
    let summary = dispatch(dispatcher, payload_of(&frame)).unwrap();
    Generated {
        key: generated_key_from_summary(&summary)
            .unwrap_or_else(|| panic!("not a generated key: {summary}")),
        public: array(bytes_after(&summary, "public_key: [")),
    }
}

/// The signature in a `Signature` answer.
fn signature_in(summary: &str) -> Signature {
    Signature::from_components(
        array(bytes_after(summary, "r: [")),
        array(bytes_after(summary, "s: [")),
    )
}

/// Signs a digest with the dispatcher and verifies the signature with `verify_strict`.
fn assert_signs(
    dispatcher: &mut Dispatcher,
    id: u64,
    key: &Generated,
    digest: [u8; 32],
) -> Signature {
    let summary = dispatch(dispatcher, payload_of(&sign_frame(id, key.key, digest))).unwrap();
    let signature = signature_in(&summary);
    VerifyingKey::from_bytes(&key.public)
        .unwrap()
        .verify_strict(&digest, &signature)
        .unwrap_or_else(|e| panic!("a wrong signature of a digest: {e}"));
    signature
}

/// Signs a message with the dispatcher and verifies the signature with `verify_strict`.
fn assert_signs_message(
    dispatcher: &mut Dispatcher,
    id: u64,
    key: &Generated,
    message: &[u8],
) -> Signature {
    let frame = sign_message_frame(id, key.key, message);
    let summary = dispatch(dispatcher, payload_of(&frame)).unwrap();
    assert!(
        summary.starts_with("Signature {"),
        "a message of {} bytes: {summary}",
        message.len()
    );
    let signature = signature_in(&summary);
    VerifyingKey::from_bytes(&key.public)
        .unwrap()
        .verify_strict(message, &signature)
        .unwrap_or_else(|e| panic!("a wrong signature of a {}-byte message: {e}", message.len()));
    signature
}

/// Signs a batch with the dispatcher: every signature verifies with `verify_strict` and is, in
/// its place, the one `SignDigest` gives for its digest (checked for at most `compare` digests,
/// spread over the batch). Returns the next free id.
fn assert_signs_many(
    dispatcher: &mut Dispatcher,
    id: u64,
    key: &Generated,
    digests: &[[u8; 32]],
    compare: usize,
) -> u64 {
    let summary = dispatch(
        dispatcher,
        payload_of(&sign_many_frame(id, key.key, digests)),
    )
    .unwrap();
    let signatures = signatures_from_summary(&summary).unwrap_or_else(|| {
        panic!(
            "{} digests: not signatures: {}",
            digests.len(),
            &summary[..summary.len().min(200)]
        )
    });
    assert_eq!(
        signatures.len(),
        digests.len(),
        "a batch lost or gained signatures"
    );
    let public = VerifyingKey::from_bytes(&key.public).unwrap();
    for (at, (digest, signature)) in digests.iter().zip(&signatures).enumerate() {
        public
            .verify_strict(digest, signature)
            .unwrap_or_else(|e| panic!("signature {at} of {}: {e}", digests.len()));
    }
    let mut next = id + 1;
    let step = digests.len().div_ceil(compare.max(1)).max(1);
    for at in (0..digests.len()).step_by(step) {
        let single = assert_signs(dispatcher, next, key, digests[at]);
        assert_eq!(signatures[at], single, "signature {at} is not SignDigest's");
        next += 1;
    }
    next
}

/// Diffie-Hellman with the dispatcher, checked against the peer's side.
fn assert_agrees(dispatcher: &mut Dispatcher, id: u64, key: &Generated, peer_seed: [u8; 32]) {
    let peer = x25519_dalek::StaticSecret::from(peer_seed);
    let peer_public = x25519_dalek::PublicKey::from(&peer);
    let frame = diffie_hellman_frame(id, key.key, peer_public.to_bytes());
    let summary = dispatch(dispatcher, payload_of(&frame)).unwrap();
    let expected = peer.diffie_hellman(&x25519_dalek::PublicKey::from(key.public));
    if expected.as_bytes() == &[0; 32] {
        assert!(summary.contains("LowOrderPoint"), "{summary}");
    } else {
        assert_eq!(bytes_after(&summary, "SharedSecret(["), expected.as_bytes());
    }
}

/// Signs a digest with version `version` of a key and verifies the signature with
/// `verify_strict` under `key.public`, that version's public key.
fn assert_signs_with_version(
    dispatcher: &mut Dispatcher,
    id: u64,
    key: &Generated,
    version: u32,
    digest: [u8; 32],
) -> Signature {
    let frame = sign_with_version_frame(id, key.key, version, digest);
    let summary = dispatch(dispatcher, payload_of(&frame)).unwrap();
    assert!(
        summary.starts_with("Signature {"),
        "version {version}: {summary}"
    );
    let signature = signature_in(&summary);
    VerifyingKey::from_bytes(&key.public)
        .unwrap()
        .verify_strict(&digest, &signature)
        .unwrap_or_else(|e| panic!("a wrong signature by version {version}: {e}"));
    signature
}

/// The number after `label` in a Debug summary.
fn number_after(summary: &str, label: &str) -> u64 {
    let start = summary
        .find(label)
        .unwrap_or_else(|| panic!("no {label} in {summary}"))
        + label.len();
    summary[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The versions in a `KeyVersions` answer, in its order: each one's number, public key and
/// retirement time (0 for the current version).
fn versions_in(summary: &str) -> Vec<(u32, [u8; 32], u64)> {
    assert!(summary.starts_with("KeyVersions(["), "{summary}");
    summary
        .split("VersionListing {")
        .skip(1)
        .map(|listing| {
            (
                u32::try_from(number_after(listing, "version: ")).unwrap(),
                array(bytes_after(listing, "public_key: [")),
                number_after(listing, "retires: "),
            )
        })
        .collect()
}

/// Seconds since the Unix epoch by the clock the in-process signer reads.
fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---- strategies ----

/// Bytes for `arbitrary` to draw one request from: enough for every kind (the longest fixed-size
/// ones, `SignWithVersion` and `DiffieHellmanWithVersion`, take 4 bytes for their kind, 24 for
/// the key, 4 for the version and 32 for the digest or the peer's key: 64), and for messages to
/// sign of up to about a hundred bytes.
fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..160)
}

/// Fewer bytes than this may run out before a request is drawn; from this many on, every kind is
/// drawn whole.
const ENOUGH_TO_DRAW: usize = 64;

fn id() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..1000, any::<u64>()]
}

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Truncate(usize),
    Extend(Vec<u8>),
    Insert(usize, u8),
    Remove(usize),
    ChangeId(u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::SetByte(at, byte)),
        any::<usize>().prop_map(Mutation::Truncate),
        vec(any::<u8>(), 1..12).prop_map(Mutation::Extend),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert(at, byte)),
        any::<usize>().prop_map(Mutation::Remove),
        id().prop_map(Mutation::ChangeId),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len();
    match mutation {
        Mutation::FlipBit(at, bit) if len > 0 => bytes[at % len] ^= 1 << bit,
        Mutation::SetByte(at, byte) if len > 0 => bytes[at % len] = *byte,
        Mutation::Truncate(at) => bytes.truncate(at % (len + 1)),
        Mutation::Extend(extra) => bytes.extend_from_slice(extra),
        Mutation::Insert(at, byte) => bytes.insert(at % (len + 1), *byte),
        Mutation::Remove(at) if len > 0 => {
            bytes.remove(at % len);
        }
        Mutation::ChangeId(id) => {
            let body = postcard::take_from_bytes::<u64>(bytes)
                .map(|(_, body)| body.to_vec())
                .unwrap_or_else(|_| bytes.clone());
            *bytes = [postcard::to_allocvec(id).unwrap(), body].concat();
        }
        _ => {}
    }
}

/// A payload: random bytes, bytes with no id, random bytes behind a small id and kind, or a
/// request drawn from the real request type and mutated a few times (or not at all).
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => vec(any::<u8>(), 0..96),
        // No id: nothing, or a varint that never ends (or runs past 10 bytes).
        1 => vec(0x80u8..=0xFF, 0..14),
        // Kinds 0..REQUEST_KINDS exist, the two after them do not.
        3 => (0u8..0x80, 0u8..26, vec(any::<u8>(), 0..80)).prop_map(|(id, kind, rest)| [
            vec![id, kind],
            rest
        ]
        .concat()),
        4 => (id(), request_bytes(), vec(mutation(), 0..4)).prop_filter_map(
            "no request drawn",
            |(id, bytes, mutations)| {
                let mut bytes = payload_of(&arbitrary_request_frame(id, &bytes)?).to_vec();
                for mutation in &mutations {
                    apply(&mut bytes, mutation);
                }
                Some(bytes)
            }
        ),
    ]
    .prop_filter("a test-hook request", |payload| {
        !unsafe_to_dispatch(payload)
    })
}

/// How the signer's reader must split `stream`: each whole frame's length, then why it stopped.
fn model_split(stream: &[u8]) -> (Vec<usize>, Option<&'static str>) {
    let mut lengths = Vec::new();
    let mut rest = stream;
    loop {
        if rest.is_empty() {
            return (lengths, None);
        }
        let Some(header) = rest.first_chunk::<4>() else {
            return (lengths, Some("truncated frame"));
        };
        let length = usize::try_from(u32::from_le_bytes(*header)).unwrap();
        if length > FRAME_CAP {
            return (lengths, Some("TooLong"));
        }
        if rest.len() - 4 < length {
            return (lengths, Some("truncated frame"));
        }
        lengths.push(length);
        rest = &rest[4 + length..];
    }
}

/// A frame length: small, large, or at the edges of the cap.
fn frame_length() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..64,
        4 => 0..=FRAME_CAP,
        2 => (FRAME_CAP - 8)..=FRAME_CAP,
        1 => Just(FRAME_CAP + 1),
    ]
}

/// A stream of frames (some far larger than the reader's spare room, so the reader must move
/// partial frames), then a few mutations.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..64),
        (
            vec(frame_length(), 0..6),
            any::<u8>(),
            vec(mutation(), 0..3)
        )
            .prop_map(|(lengths, fill, mutations)| {
                let mut bytes = Vec::new();
                for length in lengths {
                    bytes.extend_from_slice(&u32::try_from(length).unwrap().to_le_bytes());
                    bytes.resize(bytes.len() + length, fill);
                }
                for mutation in mutations {
                    apply(&mut bytes, &mutation);
                }
                bytes
            }),
    ]
}

/// Runs `property` on `cases` values of `strategy`; a failure is shrunk and reported with the
/// minimal input.
fn run<S: Strategy>(
    cases: u32,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let config = ProptestConfig {
        cases,
        max_shrink_iters: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    if let Err(failure) = runner.run(&strategy, property) {
        panic!("{failure}");
    }
}

/// What a run of payloads exercised, so a run that never reached a branch fails.
#[derive(Default)]
struct Tally {
    stopped: AtomicUsize,
    malformed: AtomicUsize,
    served: AtomicUsize,
    not_increasing: AtomicUsize,
}

impl Tally {
    fn count(&self, summary: Option<&str>) {
        let counter = match summary {
            None => &self.stopped,
            Some(s) if s.contains("MalformedRequest") => &self.malformed,
            Some(s) if s.contains("RequestIdNotIncreasing") => &self.not_increasing,
            Some(_) => &self.served,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::Relaxed)
    }
}

/// Any payload: an answer carrying the payload's id (MalformedRequest exactly when the body is
/// not a whole request), or a stop when not even an id decodes. Never a panic, never an
/// undecodable answer.
#[test]
fn any_payload_is_answered_with_its_id_or_stops_the_signer() {
    const CASES: u32 = 1024;
    let tally = Tally::default();
    run(CASES, payload(), |payload| {
        let mut dispatcher = Dispatcher::new(8).unwrap();
        tally.count(dispatch(&mut dispatcher, &payload).as_deref());
        Ok(())
    });
    let (stopped, malformed, served) = (
        Tally::get(&tally.stopped),
        Tally::get(&tally.malformed),
        Tally::get(&tally.served),
    );
    println!(
        "{CASES} payloads: {stopped} stopped, {malformed} refused as malformed, {served} served"
    );
    // Each outcome is a real share of the run, not an accident of one case.
    for (what, count) in [
        ("stopped", stopped),
        ("malformed", malformed),
        ("served", served),
    ] {
        assert!(count >= 32, "only {count} payloads {what}");
    }
}

/// The frame reader splits any stream exactly as the framing rule says.
#[test]
fn the_frame_reader_splits_any_stream_by_the_rule() {
    const CASES: u32 = 256;
    let outcomes = [
        AtomicUsize::new(0), // clean end
        AtomicUsize::new(0), // truncated
        AtomicUsize::new(0), // too long
        AtomicUsize::new(0), // streams over 64 KiB (the reader must move partial frames)
    ];
    run(CASES, stream(), |stream| {
        let (lengths, stop) = split_frames(&stream);
        let (expected_lengths, expected_stop) = model_split(&stream);
        prop_assert_eq!(&lengths, &expected_lengths);
        prop_assert_eq!(stop.as_deref(), expected_stop);
        let index = match expected_stop {
            None => 0,
            Some("truncated frame") => 1,
            Some(_) => 2,
        };
        outcomes[index].fetch_add(1, Ordering::Relaxed);
        if stream.len() > FRAME_CAP + 4 && lengths.len() > 1 {
            outcomes[3].fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    let counts: Vec<usize> = outcomes.iter().map(Tally::get).collect();
    println!(
        "{CASES} streams: clean {}, truncated {}, too long {}, long multi-frame {}",
        counts[0], counts[1], counts[2], counts[3]
    );
    assert!(counts.iter().all(|&count| count >= 8), "{counts:?}");
}

/// A sequence of hostile payloads on one lane: after each one that did not stop the signer, the
/// next valid request (with an id above every id accepted so far) is served, signatures of
/// digests and of messages still verify and Diffie-Hellman still agrees with the peer.
#[test]
fn valid_requests_after_garbage_still_work() {
    const CASES: u32 = 256;
    let tally = Tally::default();
    let checks = AtomicUsize::new(0);
    let strategy = (
        vec(payload(), 1..8),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        vec(any::<u8>(), 0..200),
    );
    run(CASES, strategy, |(garbage, digest, peer, message)| {
        let mut dispatcher = Dispatcher::new(16).unwrap();
        let signing = generate(&mut dispatcher, 1, Purpose::Account);
        let handshake = generate(&mut dispatcher, 2, Purpose::NetworkHandshake);
        let mut last = 2u64;
        for payload in &garbage {
            let summary = dispatch(&mut dispatcher, payload);
            tally.count(summary.as_deref());
            let Some(summary) = summary else {
                break; // The real signer stops here.
            };
            let refused =
                summary.contains("MalformedRequest") || summary.contains("RequestIdNotIncreasing");
            if !refused {
                let id = id_of(payload).unwrap();
                prop_assert!(id > last, "accepted id {} after {}", id, last);
                last = id;
            }
            if last >= u64::MAX - 16 {
                break;
            }
            // A request that does not increase is refused whatever it is.
            let stale = dispatch(&mut dispatcher, payload_of(&list_keys_frame(last))).unwrap();
            prop_assert!(stale.contains("RequestIdNotIncreasing"), "{}", stale);
            let listed = dispatch(&mut dispatcher, payload_of(&list_keys_frame(last + 1))).unwrap();
            prop_assert!(listed.starts_with("KeyList("), "{}", listed);
            // The garbage could drop a key only by guessing its random 24-byte id (store and
            // key).
            assert_signs(&mut dispatcher, last + 2, &signing, digest);
            assert_signs_message(&mut dispatcher, last + 3, &signing, &message);
            assert_agrees(&mut dispatcher, last + 4, &handshake, peer);
            last = assert_signs_many(&mut dispatcher, last + 5, &signing, &[digest, peer], 2) - 1;
            checks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    let checks = checks.into_inner();
    println!(
        "{CASES} sequences: {checks} checks after garbage; garbage stopped {}, malformed {}, \
         not increasing {}, served {}",
        Tally::get(&tally.stopped),
        Tally::get(&tally.malformed),
        Tally::get(&tally.not_increasing),
        Tally::get(&tally.served)
    );
    assert!(
        checks >= CASES as usize,
        "only {checks} checks after garbage"
    );
    assert!(Tally::get(&tally.malformed) >= 32 && Tally::get(&tally.served) >= 16);
}

/// Every request the real request type can hold, drawn through its `arbitrary` derive, makes one
/// whole frame under the cap that the signer decodes as a request (the encoder and the decoder
/// agree), that is a test hook exactly when it is of the hook's kind, and that is answered with
/// its own id, never as malformed. Every kind is drawn, and only the kinds the protocol has.
#[test]
fn every_arbitrary_request_decodes_and_is_answered_with_its_id() {
    const CASES: u32 = 512;
    /// The variant index of the test hook.
    const HOOK_KIND: usize = 7;
    // One counter per kind, and one for any kind past the last.
    let kinds: [AtomicUsize; REQUEST_KINDS + 1] = Default::default();
    let not_drawn = AtomicUsize::new(0);
    let tally = Tally::default();
    let strategy = vec((1u64..1000, request_bytes()), 1..8);
    run(CASES, strategy, |draws| {
        let mut dispatcher = Dispatcher::new(4).unwrap();
        let mut id = 0u64;
        for (gap, bytes) in &draws {
            id += gap;
            let Some(frame) = arbitrary_request_frame(id, bytes) else {
                prop_assert!(
                    bytes.len() < ENOUGH_TO_DRAW,
                    "no request drawn from {} bytes",
                    bytes.len()
                );
                not_drawn.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let payload = payload_of(&frame);
            prop_assert_eq!(split_frames(&frame), (vec![payload.len()], None));
            prop_assert!(is_valid_request(payload), "{:?} does not decode", payload);
            prop_assert_eq!(id_of(payload), Some(id));
            let kind = usize::try_from(kind_of(payload).unwrap()).unwrap();
            kinds[kind.min(REQUEST_KINDS)].fetch_add(1, Ordering::Relaxed);
            prop_assert_eq!(is_test_hook_request(payload), kind == HOOK_KIND);
            if unsafe_to_dispatch(payload) {
                continue;
            }
            let summary = dispatch(&mut dispatcher, payload).unwrap();
            tally.count(Some(&summary));
            prop_assert!(
                !summary.contains("MalformedRequest")
                    && !summary.contains("RequestIdNotIncreasing"),
                "request {} refused: {}",
                id,
                summary
            );
        }
        Ok(())
    });
    let kinds: Vec<usize> = kinds.iter().map(Tally::get).collect();
    println!(
        "{CASES} sequences: requests of each kind {:?}, {} not drawn (too few bytes), {} served",
        &kinds[..REQUEST_KINDS],
        not_drawn.into_inner(),
        Tally::get(&tally.served)
    );
    assert_eq!(
        kinds[REQUEST_KINDS], 0,
        "a request kind past the {REQUEST_KINDS} known: count it in REQUEST_KINDS and check it in \
         every_request_kind_is_served_correctly_in_process"
    );
    assert!(
        kinds[..REQUEST_KINDS].iter().all(|&count| count >= 32),
        "a request kind drawn too rarely: {kinds:?}"
    );
}

/// A digest made from a number: different for every number.
fn numbered_digest(number: usize) -> [u8; 32] {
    let mut digest = [0x3c; 32];
    digest[..8].copy_from_slice(&(number as u64).to_le_bytes());
    digest
}

/// A batch to sign with one key, of any size from none to past the cap, with its digests drawn
/// at random: answered with one signature for each digest, in order, each verifying under
/// ed25519-dalek's `verify_strict` and equal to the signature `SignDigest` gives for its digest;
/// none or more than the cap refused by name; the wrong key refused; and the dispatcher carries
/// on.
#[test]
fn sign_many_agrees_with_ed25519_dalek_at_any_batch_size() {
    const CASES: u32 = 48;
    let sizes = AtomicUsize::new(0);
    let refused = AtomicUsize::new(0);
    let strategy = (
        prop_oneof![
            4 => 1usize..=16,
            2 => 0usize..=MAX_BATCH + 2,
            1 => Just(0usize),
            1 => (MAX_BATCH - 1)..=(MAX_BATCH + 1),
        ],
        any::<[u8; 32]>(),
        any::<bool>(),
    );
    run(CASES, strategy, |(count, seed, wrong_key)| {
        let mut dispatcher = Dispatcher::new(2).unwrap();
        let d = &mut dispatcher;
        let signing = generate(d, 1, Purpose::Account);
        let handshake = generate(d, 2, Purpose::NetworkHandshake);
        let digests: Vec<[u8; 32]> = (0..count)
            .map(|at| {
                let mut digest = seed;
                for (byte, extra) in digest.iter_mut().zip((at as u64).to_le_bytes()) {
                    *byte ^= extra;
                }
                digest
            })
            .collect();
        let in_range = (1..=MAX_BATCH).contains(&count);
        let next = if wrong_key && in_range {
            let frame = sign_many_frame(3, handshake.key, &digests);
            let summary = dispatch(d, payload_of(&frame)).unwrap();
            prop_assert!(summary.contains("WrongAlgorithm"), "{}", summary);
            refused.fetch_add(1, Ordering::Relaxed);
            4
        } else if in_range {
            sizes.fetch_add(1, Ordering::Relaxed);
            assert_signs_many(d, 3, &signing, &digests, 4)
        } else {
            let summary = dispatch(d, payload_of(&sign_many_frame(3, signing.key, &digests)));
            prop_assert_eq!(
                summary,
                Some(format!("Refused(BatchSize {{ cap: {MAX_BATCH} }})"))
            );
            refused.fetch_add(1, Ordering::Relaxed);
            4
        };
        // The dispatcher carries on.
        assert_signs(d, next, &signing, seed);
        Ok(())
    });
    let (signed, refused) = (sizes.into_inner(), refused.into_inner());
    println!("{CASES} batches: {signed} signed, {refused} refused");
    assert!(
        signed >= 8 && refused >= 8,
        "{signed} signed, {refused} refused"
    );
}

/// A message of `length` bytes, not all alike.
fn message(length: usize) -> Vec<u8> {
    (0..length)
        .map(|at| u8::try_from((at * 7 + length) % 251).unwrap())
        .collect()
}

/// Every request kind through one dispatcher, checked for its meaning, not only its id.
#[test]
fn every_request_kind_is_served_correctly_in_process() {
    let mut dispatcher = Dispatcher::new(4).unwrap();
    let d = &mut dispatcher;
    let ask = |d: &mut Dispatcher, frame: Vec<u8>| dispatch(d, payload_of(&frame)).unwrap();
    // GenerateKey, SignDigest, DiffieHellman.
    let signing = generate(d, 1, Purpose::Account);
    let handshake = generate(d, 2, Purpose::NetworkHandshake);
    let digest_signature = assert_signs(d, 3, &signing, [1; 32]);
    assert_agrees(d, 4, &handshake, [2; 32]);
    // PublicKey.
    let summary = ask(d, public_key_frame(5, signing.key));
    assert_eq!(bytes_after(&summary, "public_key: ["), signing.public);
    assert!(
        summary.contains("algorithm: Ed25519, purpose: Account"),
        "{summary}"
    );
    // X25519 key asked to sign; Ed25519 key asked for DH; low-order peer; unknown key; the id
    // of a held key but in another store.
    let summary = ask(d, sign_frame(6, handshake.key, [0; 32]));
    assert!(summary.contains("WrongAlgorithm"), "{summary}");
    let summary = ask(d, diffie_hellman_frame(7, signing.key, [1; 32]));
    assert!(summary.contains("WrongAlgorithm"), "{summary}");
    let summary = ask(d, diffie_hellman_frame(8, handshake.key, [0; 32]));
    assert!(summary.contains("LowOrderPoint"), "{summary}");
    let unknown: KeyId = "ee".repeat(24).parse().unwrap();
    let summary = ask(d, sign_frame(9, unknown, [0; 32]));
    assert!(summary.contains("UnknownKey"), "{summary}");
    let mut elsewhere = key_id_bytes(signing.key);
    elsewhere[0] ^= 1; // The store's first byte.
    let elsewhere = key_id_from_bytes(&elsewhere).unwrap();
    let summary = ask(d, sign_frame(10, elsewhere, [0; 32]));
    assert!(summary.contains("UnknownKey"), "{summary}");
    let summary = ask(
        d,
        generate_key_frame(
            11,
            KeySpec::with_algorithm(Purpose::Consensus, Algorithm::X25519),
        ),
    );
    assert!(summary.contains("PurposeAlgorithmMismatch"), "{summary}");
    // SignMessage: pure Ed25519 over the message, at every length up to the cap. A 32-byte
    // message is signed exactly as the same 32 bytes sent as a digest.
    let mut id = 12;
    for length in [0, 1, 31, 32, 33, 1024, MAX_MESSAGE_LEN] {
        let signature = assert_signs_message(d, id, &signing, &message(length));
        if length == 32 {
            let again = assert_signs_message(d, id + 1, &signing, &[1; 32]);
            assert_eq!(
                again, digest_signature,
                "a 32-byte message and a digest differ"
            );
            id += 1;
        }
        assert_ne!(signature, digest_signature);
        id += 1;
    }
    // One byte over the cap is refused by name, and the dispatcher carries on.
    let summary = ask(
        d,
        sign_message_frame(id, signing.key, &message(MAX_MESSAGE_LEN + 1)),
    );
    assert_eq!(
        summary,
        format!("Refused(MessageTooLong {{ cap: {MAX_MESSAGE_LEN} }})")
    );
    assert_signs_message(d, id + 1, &signing, &message(100));
    let summary = ask(d, sign_message_frame(id + 2, handshake.key, b"to sign"));
    assert!(summary.contains("WrongAlgorithm"), "{summary}");
    let summary = ask(d, sign_message_frame(id + 3, unknown, b"to sign"));
    assert!(summary.contains("UnknownKey"), "{summary}");
    id += 4;
    // SignMany: each digest signed as SignDigest signs it, in order, at every size up to the
    // cap; none and one over the cap refused by name; the wrong key and an unknown key refused;
    // digest bytes that are not whole digests malformed.
    for count in [1, 2, 100, MAX_BATCH] {
        let digests: Vec<[u8; 32]> = (0..count).map(numbered_digest).collect();
        id = assert_signs_many(d, id, &signing, &digests, 8);
    }
    let batch_refused = format!("Refused(BatchSize {{ cap: {MAX_BATCH} }})");
    assert_eq!(ask(d, sign_many_frame(id, signing.key, &[])), batch_refused);
    let over = vec![[1; 32]; MAX_BATCH + 1];
    assert_eq!(
        ask(d, sign_many_frame(id + 1, signing.key, &over)),
        batch_refused
    );
    let summary = ask(d, sign_many_frame(id + 2, handshake.key, &[[1; 32]]));
    assert!(summary.contains("WrongAlgorithm"), "{summary}");
    let summary = ask(d, sign_many_frame(id + 3, unknown, &[[1; 32]]));
    assert!(summary.contains("UnknownKey"), "{summary}");
    // Two digests, their byte string's length (64, just before them) made 63 and the last byte
    // dropped: one byte short of two whole digests.
    let mut cut = payload_of(&sign_many_frame(id + 4, signing.key, &[[1; 32], [2; 32]])).to_vec();
    let length_at = cut.len() - 65;
    assert_eq!(cut[length_at], 64);
    cut[length_at] = 63;
    cut.pop();
    assert_eq!(dispatch(d, &cut).unwrap(), "Refused(MalformedRequest)");
    id = assert_signs_many(d, id + 4, &signing, &[[3; 32]], 1);
    // DropKey: the key is gone for every operation.
    let summary = ask(d, drop_key_frame(id, signing.key));
    assert_eq!(summary, "KeyDropped");
    let summary = ask(d, sign_frame(id + 1, signing.key, [0; 32]));
    assert!(summary.contains("UnknownKey"), "{summary}");
    let summary = ask(d, sign_message_frame(id + 2, signing.key, b"to sign"));
    assert!(summary.contains("UnknownKey"), "{summary}");
    let summary = ask(d, public_key_frame(id + 3, signing.key));
    assert!(summary.contains("UnknownKey"), "{summary}");
    let summary = ask(d, drop_key_frame(id + 4, signing.key));
    assert!(summary.contains("UnknownKey"), "{summary}");
    let summary = ask(d, sign_many_frame(id + 5, signing.key, &[[0; 32]]));
    assert!(summary.contains("UnknownKey"), "{summary}");
    id += 6;
    // Fill the store: the limit is refused by name.
    for _ in 0..3 {
        generate(d, id, Purpose::Account);
        id += 1;
    }
    let summary = ask(d, generate_key_frame(id, KeySpec::new(Purpose::Account)));
    assert!(summary.contains("KeyLimitReached"), "{summary}");
    // ListKeys: the four keys held, the handshake key among them.
    let summary = ask(d, list_keys_frame(id + 1));
    assert_eq!(summary.matches("KeyListing").count(), 4, "{summary}");
    assert!(
        summary.contains(&format!("public_key: {:?}", handshake.public)),
        "{summary}"
    );
    assert!(
        !summary.contains(&format!("public_key: {:?}", signing.public)),
        "a dropped key is listed: {summary}"
    );
    // AttemptForbiddenSyscall: in the_in_process_dispatcher_never_makes_a_test_hook_system_call.

    // The consensus requests, on a memory-only store (nothing to write: signed at once).
    let mut dispatcher = Dispatcher::new(2).unwrap();
    let d = &mut dispatcher;
    let consensus = generate(d, 1, Purpose::Consensus);
    let account = generate(d, 2, Purpose::Account);
    let chain = keyward::ChainId([5; 32]);
    let vote = keyward::ConsensusMessage::vote(chain, 1, 2, [3; 32]);
    // SignConsensus: over the typed bytes; a repeat is the same signature; a conflict refused.
    let summary = ask(d, sign_consensus_frame(3, consensus.key, vote));
    let signature = signature_in(&summary);
    ed25519_dalek::VerifyingKey::from_bytes(&consensus.public)
        .unwrap()
        .verify_strict(&vote.signing_bytes(), &signature)
        .unwrap();
    assert_eq!(
        ask(d, sign_consensus_frame(4, consensus.key, vote)),
        summary
    );
    let conflicting = keyward::ConsensusMessage::vote(chain, 1, 2, [4; 32]);
    let summary = ask(d, sign_consensus_frame(5, consensus.key, conflicting));
    assert!(
        summary.starts_with("Refused(WouldDoubleSign { rule: ConflictingDigest"),
        "{summary}"
    );
    let summary = ask(d, sign_consensus_frame(6, account.key, vote));
    assert!(summary.contains("NotAConsensusKey"), "{summary}");
    // Blind signing with the consensus key is refused.
    let summary = ask(d, sign_frame(7, consensus.key, [0; 32]));
    assert!(summary.contains("BlindSigningRefused"), "{summary}");
    // ReleaseConsensus: a memory-only store has nothing to release.
    let summary = ask(d, release_consensus_frame(8, consensus.key, vote, 1));
    assert_eq!(summary, "Refused(NotReleasable)");
    // Watermarks: the vote's, on its chain.
    let summary = ask(d, watermarks_frame(9, consensus.key));
    assert!(summary.starts_with("Watermarks([Some("), "{summary}");
    assert!(
        summary.contains("vote: Some(Watermark { epoch: 1, round: 2"),
        "{summary}"
    );
    // RaiseWatermarks: a higher vote raises it (nothing to write in memory); then round 3 is
    // below it.
    let mut marks = keyward::ChainWatermarks::empty(chain);
    marks.vote = Some(keyward::Watermark {
        epoch: 1,
        round: 9,
        digest: [0; 32],
    });
    let summary = ask(d, raise_watermarks_frame(10, consensus.key, marks));
    assert_eq!(summary, "WatermarksRaised { change: None }");
    let later = keyward::ConsensusMessage::vote(chain, 1, 3, [3; 32]);
    let summary = ask(d, sign_consensus_frame(11, consensus.key, later));
    assert!(summary.contains("BelowWatermark"), "{summary}");
    // FinishDrop: a memory-only store erases at once, so there is no drop to finish.
    let summary = ask(d, finish_drop_frame(12, consensus.key, true));
    assert_eq!(summary, "Refused(UnknownKey)");
    assert!(ask(d, watermarks_frame(13, consensus.key)).starts_with("Watermarks"));

    // Provisioning, Backup, ImportKey and RestoreStep, on memory-only stores with room for one
    // more key.
    let mut dispatcher = Dispatcher::new(3).unwrap();
    let d = &mut dispatcher;
    let consensus = generate(d, 1, Purpose::Consensus);
    let handshake = generate(d, 2, Purpose::NetworkHandshake);
    let vote = keyward::ConsensusMessage::vote(keyward::ChainId([6; 32]), 1, 1, [8; 32]);
    let vote_signature = signature_in(&ask(d, sign_consensus_frame(3, consensus.key, vote)));
    VerifyingKey::from_bytes(&consensus.public)
        .unwrap()
        .verify_strict(&vote.signing_bytes(), &vote_signature)
        .unwrap();
    // Provisioning: the recipient, and the backup-signing key's signature over the statement
    // naming this store and that recipient; the same for the signer's life.
    let (recipient, signing_key) = provisioning(d, 4, consensus.key);
    let summary = ask(d, provisioning_frame(5));
    assert_eq!(bytes_after(&summary, "recipient: ["), recipient);
    // Backup: an age file to the recipient (X25519, one stanza); a low-order one refused.
    let operator = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([7; 32]));
    let summary = ask(d, backup_frame(6, operator.to_bytes()));
    let file = bytes_after(&summary, "Backup([");
    assert!(
        file.starts_with(b"age-encryption.org/v1\n-> X25519 "),
        "{summary}"
    );
    assert_eq!(
        ask(d, backup_frame(7, [0; 32])),
        "Refused(BackupRecipientInvalid)"
    );
    // ImportKey: bytes that are not an age file, a header cut short, and an age file that does
    // decrypt (a backup to the signer's own provisioning recipient) but holds no 32-byte key:
    // each refused by name, nothing kept.
    let claimed = [0x77; 32];
    let summary = ask(
        d,
        import_key_frame(8, Purpose::Account, claimed, b"not an age file"),
    );
    assert_eq!(
        summary,
        "Refused(ImportUndecryptable { error: NotAnAgeFile })"
    );
    let summary = ask(
        d,
        import_key_frame(
            9,
            Purpose::Account,
            claimed,
            b"age-encryption.org/v1\n-> X25519 ",
        ),
    );
    assert_eq!(summary, "Refused(ImportUndecryptable { error: Truncated })");
    let to_itself = bytes_after(&ask(d, backup_frame(10, recipient)), "Backup([");
    let summary = ask(
        d,
        import_key_frame(11, Purpose::Account, claimed, &to_itself),
    );
    assert_eq!(summary, "Refused(ImportMalformed)");
    // A backup to another recipient does not decrypt with the provisioning key.
    let summary = ask(d, import_key_frame(12, Purpose::Account, claimed, &file));
    assert_eq!(
        summary,
        "Refused(ImportUndecryptable { error: NoMatchingRecipient })"
    );
    // RestoreStep of the backup to itself: every key and watermark is held, so it is complete
    // at once; under another signing key (the consensus key's) it is refused whole; bytes that
    // are not an age file are refused as an import's are.
    let summary = ask(d, restore_step_frame(13, signing_key, &to_itself));
    assert_eq!(summary, "Restored(Complete { keys: 2, marks: 1 })");
    let summary = ask(d, restore_step_frame(14, consensus.public, &to_itself));
    assert_eq!(
        summary,
        "Refused(RestoreRefused { problem: SignatureInvalid })"
    );
    let mut no_point = [0; 32];
    no_point[0] = 2; // y = 2 is on no Ed25519 point.
    let summary = ask(d, restore_step_frame(15, no_point, &to_itself));
    assert_eq!(
        summary,
        "Refused(RestoreRefused { problem: SignatureInvalid })"
    );
    let summary = ask(d, restore_step_frame(16, signing_key, b"not an age file"));
    assert_eq!(
        summary,
        "Refused(ImportUndecryptable { error: NotAnAgeFile })"
    );
    let summary = ask(d, list_keys_frame(17));
    assert_eq!(summary.matches("KeyListing").count(), 2, "{summary}");
    assert!(
        summary.contains(&format!("public_key: {:?}", handshake.public)),
        "{summary}"
    );
    // RestoreStep into another signer, of a backup to its provisioning recipient: one key a
    // step, the consensus key with its watermark, then complete, then complete again.
    let mut other = Dispatcher::new(3).unwrap();
    let o = &mut other;
    let anchor = generate(o, 1, Purpose::Account);
    let (other_recipient, _) = provisioning(o, 2, anchor.key);
    let moving = bytes_after(&ask(d, backup_frame(18, other_recipient)), "Backup([");
    let mut restored = Vec::new();
    for id in 3..5 {
        let summary = ask(o, restore_step_frame(id, signing_key, &moving));
        assert!(summary.starts_with("Restored(Added { key: "), "{summary}");
        let key = [
            bytes_after(&summary, "store: ["),
            bytes_after(&summary, "local: ["),
        ]
        .concat();
        restored.push((
            key_id_from_bytes(&key).unwrap(),
            array::<32>(bytes_after(&summary, "public_key: [")),
        ));
    }
    assert_eq!(
        restored
            .iter()
            .map(|(_, public)| *public)
            .collect::<Vec<_>>(),
        [consensus.public, handshake.public]
    );
    for id in 5..7 {
        let summary = ask(o, restore_step_frame(id, signing_key, &moving));
        assert_eq!(summary, "Restored(Complete { keys: 2, marks: 1 })");
    }
    // The restored consensus key signs the vote again as the original did, and refuses another
    // digest at its round: its watermark came with it.
    let restored_consensus = restored[0].0;
    let summary = ask(o, sign_consensus_frame(7, restored_consensus, vote));
    assert_eq!(signature_in(&summary), vote_signature);
    let conflicting = keyward::ConsensusMessage::vote(keyward::ChainId([6; 32]), 1, 1, [9; 32]);
    let summary = ask(o, sign_consensus_frame(8, restored_consensus, conflicting));
    assert!(
        summary.starts_with("Refused(WouldDoubleSign { rule: ConflictingDigest"),
        "{summary}"
    );
    // The other signer is now full: an import is refused before the file is read.
    let summary = ask(
        o,
        import_key_frame(9, Purpose::Account, claimed, &to_itself),
    );
    assert_eq!(summary, "Refused(KeyLimitReached { limit: 3 })");

    rotation_requests_are_served_correctly_in_process();
}

/// The rotation requests (`RotateKey`, `FinishRotation`, `PurgeRetired`, `KeyVersions`,
/// `SignWithVersion`, `DiffieHellmanWithVersion`) on a memory-only store: a rotation is done at
/// once (nothing to write, so no rotation to finish), a previous version in its grace period
/// takes a slot of its own.
fn rotation_requests_are_served_correctly_in_process() {
    let mut dispatcher = Dispatcher::new(8).unwrap();
    let d = &mut dispatcher;
    let ask = |d: &mut Dispatcher, frame: Vec<u8>| dispatch(d, payload_of(&frame)).unwrap();
    let account = generate(d, 1, Purpose::Account);
    let handshake = generate(d, 2, Purpose::NetworkHandshake);
    let consensus = generate(d, 3, Purpose::Consensus);
    // KeyVersions of a key never rotated: version 1, current.
    let summary = ask(d, key_versions_frame(4, account.key));
    assert_eq!(versions_in(&summary), [(1, account.public, 0)], "{summary}");
    // RotateKey with a grace of an hour: version 2, under the same id, with a new public key.
    let before = now_seconds();
    let summary = ask(d, rotate_key_frame(5, account.key, 3600));
    let after = now_seconds();
    assert!(
        summary.starts_with("KeyRotated { version: 2, public_key: [")
            && summary.ends_with("change: None }"),
        "{summary}"
    );
    let rotated = Generated {
        key: account.key,
        public: array(bytes_after(&summary, "public_key: [")),
    };
    assert_ne!(rotated.public, account.public);
    // KeyVersions: 1, retiring an hour after the rotation, and 2, current.
    let summary = ask(d, key_versions_frame(6, account.key));
    let listed = versions_in(&summary);
    assert_eq!(listed.len(), 2, "{summary}");
    assert_eq!((listed[0].0, listed[0].1), (1, account.public), "{summary}");
    assert!(
        // Rounded up to the next second: never shorter than the hour asked.
        (before + 3601..=after + 3601).contains(&listed[0].2),
        "{summary}"
    );
    assert_eq!(listed[1], (2, rotated.public, 0), "{summary}");
    // The calls that name no version use the new one; the key is listed once.
    let summary = ask(d, public_key_frame(7, account.key));
    assert_eq!(bytes_after(&summary, "public_key: ["), rotated.public);
    let current = assert_signs(d, 8, &rotated, [5; 32]);
    let summary = ask(d, list_keys_frame(9));
    assert_eq!(summary.matches("KeyListing").count(), 3, "{summary}");
    assert!(
        !summary.contains(&format!("public_key: {:?}", account.public)),
        "a previous version is listed: {summary}"
    );
    // SignWithVersion: version 1 verifies under the old public key (and not the new), version 2
    // under the new, as SignDigest signs.
    let old = assert_signs_with_version(d, 10, &account, 1, [5; 32]);
    assert!(
        VerifyingKey::from_bytes(&rotated.public)
            .unwrap()
            .verify_strict(&[5; 32], &old)
            .is_err()
    );
    assert_eq!(
        assert_signs_with_version(d, 11, &rotated, 2, [5; 32]),
        current
    );
    // Versions never held: 9, 0 and the largest.
    for (id, version) in [(12, 9), (13, 0), (14, u32::MAX)] {
        let summary = ask(
            d,
            sign_with_version_frame(id, account.key, version, [5; 32]),
        );
        assert_eq!(summary, "Refused(UnknownVersion)", "version {version}");
    }
    // DiffieHellmanWithVersion on a rotated handshake key: version 1 agrees with the peer's
    // side computed with the old public key, version 2 (and DiffieHellman) with the new one.
    let summary = ask(d, rotate_key_frame(15, handshake.key, 3600));
    assert!(summary.starts_with("KeyRotated { version: 2,"), "{summary}");
    let handshake_rotated = Generated {
        key: handshake.key,
        public: array(bytes_after(&summary, "public_key: [")),
    };
    let peer = x25519_dalek::StaticSecret::from([2; 32]);
    let peer_public = x25519_dalek::PublicKey::from(&peer).to_bytes();
    for (id, version, public) in [(16, 1, handshake.public), (17, 2, handshake_rotated.public)] {
        let frame = diffie_hellman_with_version_frame(id, handshake.key, version, peer_public);
        let summary = ask(d, frame);
        let expected = peer.diffie_hellman(&x25519_dalek::PublicKey::from(public));
        assert_eq!(
            bytes_after(&summary, "SharedSecret(["),
            expected.as_bytes(),
            "version {version}"
        );
    }
    assert_agrees(d, 18, &handshake_rotated, [2; 32]);
    let summary = ask(
        d,
        diffie_hellman_with_version_frame(19, handshake.key, 9, peer_public),
    );
    assert_eq!(summary, "Refused(UnknownVersion)");
    let summary = ask(
        d,
        diffie_hellman_with_version_frame(20, handshake.key, 1, [0; 32]),
    );
    assert_eq!(summary, "Refused(LowOrderPoint)");
    // The wrong algorithm, either way round, for a previous version too.
    let summary = ask(
        d,
        diffie_hellman_with_version_frame(21, account.key, 1, peer_public),
    );
    assert!(summary.contains("WrongAlgorithm"), "{summary}");
    let summary = ask(d, sign_with_version_frame(22, handshake.key, 1, [5; 32]));
    assert!(summary.contains("WrongAlgorithm"), "{summary}");
    // A second rotation with a grace period makes version 3; a third is refused (two previous
    // versions in their grace period at most) and changes nothing.
    let summary = ask(d, rotate_key_frame(23, account.key, 3600));
    assert!(summary.starts_with("KeyRotated { version: 3,"), "{summary}");
    let third = Generated {
        key: account.key,
        public: array(bytes_after(&summary, "public_key: [")),
    };
    let summary = ask(d, rotate_key_frame(24, account.key, 3600));
    assert_eq!(summary, "Refused(VersionLimit { cap: 2 })");
    let summary = ask(d, key_versions_frame(25, account.key));
    let numbers: Vec<u32> = versions_in(&summary).iter().map(|v| v.0).collect();
    assert_eq!(numbers, [1, 2, 3], "{summary}");
    assert_signs(d, 26, &third, [6; 32]);
    // With no grace period it is not refused: version 4 replaces 3 at once, and 1 and 2 keep
    // their grace period.
    let summary = ask(d, rotate_key_frame(27, account.key, 0));
    assert!(summary.starts_with("KeyRotated { version: 4,"), "{summary}");
    let summary = ask(d, key_versions_frame(28, account.key));
    let numbers: Vec<u32> = versions_in(&summary).iter().map(|v| v.0).collect();
    assert_eq!(numbers, [1, 2, 4], "{summary}");
    let summary = ask(d, sign_with_version_frame(29, account.key, 3, [5; 32]));
    assert_eq!(summary, "Refused(UnknownVersion)");
    assert_signs_with_version(d, 30, &account, 1, [7; 32]);
    // A rotation with no grace period of a key never rotated leaves one version, the new one.
    let single = generate(d, 31, Purpose::NetworkDiscovery);
    let summary = ask(d, rotate_key_frame(32, single.key, 0));
    assert!(summary.starts_with("KeyRotated { version: 2,"), "{summary}");
    let single_rotated = Generated {
        key: single.key,
        public: array(bytes_after(&summary, "public_key: [")),
    };
    let summary = ask(d, key_versions_frame(33, single.key));
    assert_eq!(
        versions_in(&summary),
        [(2, single_rotated.public, 0)],
        "{summary}"
    );
    let summary = ask(d, sign_with_version_frame(34, single.key, 1, [5; 32]));
    assert_eq!(summary, "Refused(UnknownVersion)");
    assert_signs(d, 35, &single_rotated, [5; 32]);
    // PurgeRetired with nothing retired (every grace period runs for an hour yet): no key.
    assert_eq!(
        ask(d, purge_retired_frame(36)),
        "Purged { key: None, change: None }"
    );
    assert_signs_with_version(d, 37, &rotated, 2, [5; 32]);
    // FinishRotation: a memory-only store has no rotation waiting for a write, either way; the
    // key is as it was.
    for (id, commit) in [(38, true), (39, false)] {
        let summary = ask(d, finish_rotation_frame(id, account.key, commit));
        assert_eq!(summary, "Refused(NotReleasable)", "commit {commit}");
    }
    let summary = ask(d, key_versions_frame(40, account.key));
    let numbers: Vec<u32> = versions_in(&summary).iter().map(|v| v.0).collect();
    assert_eq!(numbers, [1, 2, 4], "{summary}");
    let unknown: KeyId = "ee".repeat(24).parse().unwrap();
    for frame in [
        rotate_key_frame(41, unknown, 0),
        finish_rotation_frame(42, unknown, true),
        key_versions_frame(43, unknown),
        sign_with_version_frame(44, unknown, 1, [5; 32]),
        diffie_hellman_with_version_frame(45, unknown, 1, peer_public),
    ] {
        assert_eq!(ask(d, frame), "Refused(UnknownKey)");
    }
    // A consensus key rotated keeps its watermarks (they stay with its slot): the conflicting
    // vote at its watermark is still refused; a vote above it is signed by the new version.
    let chain = keyward::ChainId([7; 32]);
    let vote = keyward::ConsensusMessage::vote(chain, 1, 4, [3; 32]);
    let summary = ask(d, sign_consensus_frame(46, consensus.key, vote));
    VerifyingKey::from_bytes(&consensus.public)
        .unwrap()
        .verify_strict(&vote.signing_bytes(), &signature_in(&summary))
        .unwrap();
    let summary = ask(d, rotate_key_frame(47, consensus.key, 60));
    assert!(summary.starts_with("KeyRotated { version: 2,"), "{summary}");
    let consensus_rotated: [u8; 32] = array(bytes_after(&summary, "public_key: ["));
    let conflicting = keyward::ConsensusMessage::vote(chain, 1, 4, [4; 32]);
    let summary = ask(d, sign_consensus_frame(48, consensus.key, conflicting));
    assert!(
        summary.starts_with("Refused(WouldDoubleSign { rule: ConflictingDigest"),
        "{summary}"
    );
    let summary = ask(d, sign_consensus_frame(49, consensus.key, vote));
    VerifyingKey::from_bytes(&consensus_rotated)
        .unwrap()
        .verify_strict(&vote.signing_bytes(), &signature_in(&summary))
        .unwrap();
    let above = keyward::ConsensusMessage::vote(chain, 1, 5, [4; 32]);
    let summary = ask(d, sign_consensus_frame(50, consensus.key, above));
    VerifyingKey::from_bytes(&consensus_rotated)
        .unwrap()
        .verify_strict(&above.signing_bytes(), &signature_in(&summary))
        .unwrap();
    // SignWithVersion is blind signing: refused for either version of a consensus key.
    for (id, version) in [(51, 1), (52, 2)] {
        let summary = ask(
            d,
            sign_with_version_frame(id, consensus.key, version, [5; 32]),
        );
        assert!(
            summary.starts_with("Refused(BlindSigningRefused"),
            "{summary}"
        );
    }
    // The store is full (4 keys, 4 previous versions): a rotation that keeps the previous
    // version needs a slot of its own and is refused; one that does not is served.
    let summary = ask(d, rotate_key_frame(53, handshake.key, 3600));
    assert_eq!(summary, "Refused(KeyLimitReached { limit: 8 })");
    let summary = ask(d, rotate_key_frame(54, handshake.key, 0));
    assert!(summary.starts_with("KeyRotated { version: 3,"), "{summary}");

    // A grace period that ends: the previous version is refused as retired, is no longer
    // listed, and PurgeRetired erases it (naming its key) and frees its slot.
    let mut dispatcher = Dispatcher::new(2).unwrap();
    let d = &mut dispatcher;
    let key = generate(d, 1, Purpose::Account);
    let summary = ask(d, rotate_key_frame(2, key.key, 1));
    assert!(summary.starts_with("KeyRotated { version: 2,"), "{summary}");
    let summary = ask(d, key_versions_frame(3, key.key));
    let retires = versions_in(&summary)[0].2;
    // Retired at `retires` by the signer's clock, which is this process's.
    let waited = std::time::Instant::now();
    while now_seconds() < retires {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(10),
            "the clock did not reach {retires}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let summary = ask(d, sign_with_version_frame(4, key.key, 1, [5; 32]));
    assert_eq!(summary, "Refused(VersionRetired)");
    let summary = ask(d, key_versions_frame(5, key.key));
    let numbers: Vec<u32> = versions_in(&summary).iter().map(|v| v.0).collect();
    assert_eq!(numbers, [2], "{summary}");
    let summary = ask(d, generate_key_frame(6, KeySpec::new(Purpose::Account)));
    assert_eq!(summary, "Refused(KeyLimitReached { limit: 2 })");
    let summary = ask(d, purge_retired_frame(7));
    assert!(
        summary.starts_with("Purged { key: Some(") && summary.ends_with("change: None }"),
        "{summary}"
    );
    let named = [
        bytes_after(&summary, "store: ["),
        bytes_after(&summary, "local: ["),
    ]
    .concat();
    assert_eq!(named, key_id_bytes(key.key));
    let summary = ask(d, sign_with_version_frame(8, key.key, 1, [5; 32]));
    assert_eq!(summary, "Refused(UnknownVersion)");
    assert_eq!(
        ask(d, purge_retired_frame(9)),
        "Purged { key: None, change: None }"
    );
    generate(d, 10, Purpose::Account);
}

/// The provisioning recipient and backup-signing key of the signer holding `held`, after
/// checking the key's signature over the statement naming the store and the recipient.
fn provisioning(dispatcher: &mut Dispatcher, id: u64, held: KeyId) -> ([u8; 32], [u8; 32]) {
    let summary = dispatch(dispatcher, payload_of(&provisioning_frame(id))).unwrap();
    assert!(summary.starts_with("Provisioning {"), "{summary}");
    let recipient: [u8; 32] = array(bytes_after(&summary, "recipient: ["));
    let signing_key: [u8; 32] = array(bytes_after(&summary, "signing_key: ["));
    let store: [u8; 8] = array(key_id_bytes(held)[..8].to_vec());
    VerifyingKey::from_bytes(&signing_key)
        .expect("an Ed25519 point")
        .verify_strict(
            &keyward::provisioning_statement(&store, &recipient),
            &signature_in(&summary),
        )
        .expect("the provisioning statement's signature");
    (recipient, signing_key)
}

/// The file descriptors of this process that point at `path`.
fn descriptors_open_on(path: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target == std::path::Path::new(path))
        })
        .count()
}

/// With `test-support` on, `testing::Dispatcher` must refuse the test-only
/// `AttemptForbiddenSyscall` request rather than make the call, unsandboxed, in the calling
/// process (a 3-byte payload once made a property test open files, fork, or execve). Shown with
/// the calls that would be harmless here: `Open` and `OpenAt` would leave a descriptor on
/// /etc/hostname open in this process, and every call made would be answered
/// `SurvivedForbiddenSyscall`. (Execve, Fork, Clone, Ptrace, MmapExecutable and I386IntX80 are
/// never sent: were they made, this process would be replaced, copied, traced or crashed.)
#[test]
fn the_in_process_dispatcher_never_makes_a_test_hook_system_call() {
    let mut dispatcher = Dispatcher::new(1).unwrap();
    let calls = [
        ForbiddenSyscall::Open,
        ForbiddenSyscall::OpenAt,
        ForbiddenSyscall::Socket,
        ForbiddenSyscall::Mprotect,
        ForbiddenSyscall::X32Write,
    ];
    for (id, call) in (1..).zip(calls) {
        let frame = test_hook_frame(id, call);
        let payload = payload_of(&frame);
        assert!(
            is_test_hook_request(payload),
            "{call:?}: {payload:?} is not the test hook"
        );
        let before = descriptors_open_on("/etc/hostname");
        let result = dispatcher.handle(payload);
        let after = descriptors_open_on("/etc/hostname");
        assert_eq!(
            after, before,
            "{call:?}: the dispatcher opened /etc/hostname in the test process (answer: {result:?})"
        );
        assert_eq!(
            result,
            DispatchResult::Answered {
                id,
                summary: "Refused(NotInThisBuild)".to_owned()
            },
            "{call:?}"
        );
    }
}
