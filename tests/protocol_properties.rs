//! Property: the signer's frame reader and request dispatch never panic on any bytes; every answer decodes and carries its request's id; a body that does not decode is refused (never executed) and valid requests after garbage still work.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ed25519_dalek::{Signature, VerifyingKey};
use keyward::testing::{
    DispatchResult, Dispatcher, FRAME_CAP, generate_key_frame, list_keys_frame, sign_frame,
    split_frames,
};
use keyward::{Algorithm, KeySpec, Purpose};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The request wire format, mirrored from the protocol (checked against the library's own
/// encoder in `the_mirror_encodes_like_the_library`), so the tests can build every request and
/// know which payloads are valid requests. Without `test-support`, variant 6 does not
/// exist.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct WireFrame {
    id: u64,
    request: WireRequest,
}

/// The variant index of the test-only request that makes the dispatcher attempt a forbidden
/// system call.
const HOOK_VARIANT: u32 = 6;

fn encode(id: u64, request: WireRequest) -> Vec<u8> {
    postcard::to_allocvec(&WireFrame { id, request }).unwrap()
}

/// With `test-support` on, the dispatcher would really make a forbidden system call (fork,
/// execve, ptrace ...) in this test process for a payload naming variant 6 (see
/// `the_in_process_dispatcher_never_makes_a_test_hook_system_call`). Such payloads are never fed
/// to it here.
fn unsafe_to_dispatch(payload: &[u8]) -> bool {
    cfg!(feature = "test-support")
        && postcard::take_from_bytes::<u64>(payload)
            .and_then(|(_, body)| postcard::take_from_bytes::<u32>(body))
            .is_ok_and(|(variant, _)| variant == HOOK_VARIANT)
}

/// Whether the payload is a whole, valid request (as the signer decodes it).
fn is_valid_request(payload: &[u8]) -> bool {
    matches!(postcard::take_from_bytes::<WireFrame>(payload), Ok((_, [])))
}

/// Checks one answer against what the input policy says it must be; returns the answer's
/// summary if there was one.
fn check(payload: &[u8], result: &DispatchResult) -> Option<String> {
    let id = postcard::take_from_bytes::<u64>(payload)
        .ok()
        .map(|(id, _)| id);
    match (id, result) {
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

/// A key generated in a dispatcher: its local id and public key.
struct Generated {
    key: [u8; 16],
    public: [u8; 32],
}

fn generate(dispatcher: &mut Dispatcher, id: u64, purpose: Purpose) -> Generated {
    let frame = generate_key_frame(id, KeySpec::new(purpose));
    let summary = dispatch(dispatcher, payload_of(&frame)).unwrap();
    Generated {
        key: array(bytes_after(&summary, "key: [")),
        public: array(bytes_after(&summary, "public_key: [")),
    }
}

/// Signs with the dispatcher and verifies the signature with `verify_strict`.
fn assert_signs(dispatcher: &mut Dispatcher, id: u64, key: &Generated, digest: [u8; 32]) {
    let summary = dispatch(dispatcher, payload_of(&sign_frame(id, key.key, digest))).unwrap();
    let signature = Signature::from_components(
        array(bytes_after(&summary, "r: [")),
        array(bytes_after(&summary, "s: [")),
    );
    VerifyingKey::from_bytes(&key.public)
        .unwrap()
        .verify_strict(&digest, &signature)
        .unwrap_or_else(|e| panic!("a wrong signature after garbage: {e}"));
}

/// Diffie-Hellman with the dispatcher, checked against the peer's side.
fn assert_agrees(dispatcher: &mut Dispatcher, id: u64, key: &Generated, peer_seed: [u8; 32]) {
    let peer = x25519_dalek::StaticSecret::from(peer_seed);
    let peer_public = x25519_dalek::PublicKey::from(&peer);
    let payload = encode(
        id,
        WireRequest::DiffieHellman {
            key: key.key,
            peer_public: peer_public.to_bytes(),
        },
    );
    let summary = dispatch(dispatcher, &payload).unwrap();
    let expected = peer.diffie_hellman(&x25519_dalek::PublicKey::from(key.public));
    if expected.as_bytes() == &[0; 32] {
        assert!(summary.contains("LowOrderPoint"), "{summary}");
    } else {
        assert_eq!(bytes_after(&summary, "SharedSecret(["), expected.as_bytes());
    }
}

// ---- strategies ----

fn purpose() -> impl Strategy<Value = Purpose> {
    prop::sample::select(Purpose::ALL.to_vec())
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop_oneof![Just(Algorithm::Ed25519), Just(Algorithm::X25519)]
}

fn request() -> impl Strategy<Value = WireRequest> {
    prop_oneof![
        (purpose(), algorithm()).prop_map(|(purpose, algorithm)| WireRequest::GenerateKey {
            spec: KeySpec::with_algorithm(purpose, algorithm)
        }),
        any::<[u8; 16]>().prop_map(|key| WireRequest::PublicKey { key }),
        (any::<[u8; 16]>(), any::<[u8; 32]>())
            .prop_map(|(key, digest)| WireRequest::Sign { key, digest }),
        (any::<[u8; 16]>(), any::<[u8; 32]>())
            .prop_map(|(key, peer_public)| { WireRequest::DiffieHellman { key, peer_public } }),
        Just(WireRequest::ListKeys),
        any::<[u8; 16]>().prop_map(|key| WireRequest::DropKey { key }),
    ]
}

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

/// A payload: random bytes, bytes with no id, random bytes behind a small id and variant, or a
/// valid request mutated a few times.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => vec(any::<u8>(), 0..96),
        // No id: nothing, or a varint that never ends (or runs past 10 bytes).
        1 => vec(0x80u8..=0xFF, 0..14),
        3 => (0u8..0x80, 0u8..10, vec(any::<u8>(), 0..80)).prop_map(|(id, variant, rest)| [
            vec![id, variant],
            rest
        ]
        .concat()),
        4 => (id(), request(), vec(mutation(), 0..4)).prop_map(|(id, request, mutations)| {
            let mut bytes = encode(id, request);
            for mutation in &mutations {
                apply(&mut bytes, mutation);
            }
            bytes
        }),
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
/// next valid request (with an id above every id accepted so far) is served, signatures still
/// verify and Diffie-Hellman still agrees with the peer.
#[test]
fn valid_requests_after_garbage_still_work() {
    const CASES: u32 = 256;
    let tally = Tally::default();
    let checks = AtomicUsize::new(0);
    let strategy = (vec(payload(), 1..8), any::<[u8; 32]>(), any::<[u8; 32]>());
    run(CASES, strategy, |(garbage, digest, peer)| {
        let mut dispatcher = Dispatcher::new(16).unwrap();
        let signing = generate(&mut dispatcher, 1, Purpose::Consensus);
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
                let (id, _) = postcard::take_from_bytes::<u64>(payload).unwrap();
                prop_assert!(id > last, "accepted id {} after {}", id, last);
                last = id;
            }
            if last >= u64::MAX - 3 {
                break;
            }
            // A request that does not increase is refused whatever it is.
            let stale = dispatch(&mut dispatcher, payload_of(&list_keys_frame(last))).unwrap();
            prop_assert!(stale.contains("RequestIdNotIncreasing"), "{}", stale);
            let listed = dispatch(&mut dispatcher, payload_of(&list_keys_frame(last + 1))).unwrap();
            prop_assert!(listed.starts_with("KeyList("), "{}", listed);
            // The garbage could drop a key only by guessing its random 16-byte id.
            assert_signs(&mut dispatcher, last + 2, &signing, digest);
            assert_agrees(&mut dispatcher, last + 3, &handshake, peer);
            last += 3;
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

#[test]
fn the_mirror_encodes_like_the_library() {
    let spec = KeySpec::new(Purpose::NetworkDiscovery);
    assert_eq!(
        encode(7, WireRequest::GenerateKey { spec }),
        payload_of(&generate_key_frame(7, spec))
    );
    assert_eq!(
        encode(
            u64::MAX,
            WireRequest::Sign {
                key: [9; 16],
                digest: [8; 32]
            }
        ),
        payload_of(&sign_frame(u64::MAX, [9; 16], [8; 32]))
    );
    assert_eq!(
        encode(300, WireRequest::ListKeys),
        payload_of(&list_keys_frame(300))
    );
}

/// Every request kind through one dispatcher, checked for its meaning, not only its id.
#[test]
fn every_request_kind_is_served_correctly_in_process() {
    let mut dispatcher = Dispatcher::new(4).unwrap();
    let signing = generate(&mut dispatcher, 1, Purpose::Account);
    let handshake = generate(&mut dispatcher, 2, Purpose::NetworkHandshake);
    assert_signs(&mut dispatcher, 3, &signing, [1; 32]);
    assert_agrees(&mut dispatcher, 4, &handshake, [2; 32]);
    let summary = dispatch(
        &mut dispatcher,
        &encode(5, WireRequest::PublicKey { key: signing.key }),
    )
    .unwrap();
    assert_eq!(bytes_after(&summary, "public_key: ["), signing.public);
    // X25519 key asked to sign; Ed25519 key asked for DH; low-order peer; unknown key.
    let summary = dispatch(
        &mut dispatcher,
        payload_of(&sign_frame(6, handshake.key, [0; 32])),
    )
    .unwrap();
    assert!(summary.contains("WrongAlgorithm"), "{summary}");
    let summary = dispatch(
        &mut dispatcher,
        &encode(
            7,
            WireRequest::DiffieHellman {
                key: signing.key,
                peer_public: [1; 32],
            },
        ),
    )
    .unwrap();
    assert!(summary.contains("WrongAlgorithm"), "{summary}");
    let summary = dispatch(
        &mut dispatcher,
        &encode(
            8,
            WireRequest::DiffieHellman {
                key: handshake.key,
                peer_public: [0; 32],
            },
        ),
    )
    .unwrap();
    assert!(summary.contains("LowOrderPoint"), "{summary}");
    let summary = dispatch(
        &mut dispatcher,
        payload_of(&sign_frame(9, [0xEE; 16], [0; 32])),
    )
    .unwrap();
    assert!(summary.contains("UnknownKey"), "{summary}");
    let summary = dispatch(
        &mut dispatcher,
        &encode(
            10,
            WireRequest::GenerateKey {
                spec: KeySpec::with_algorithm(Purpose::Consensus, Algorithm::X25519),
            },
        ),
    )
    .unwrap();
    assert!(summary.contains("PurposeAlgorithmMismatch"), "{summary}");
    let summary = dispatch(
        &mut dispatcher,
        &encode(11, WireRequest::DropKey { key: signing.key }),
    )
    .unwrap();
    assert_eq!(summary, "KeyDropped");
    let summary = dispatch(
        &mut dispatcher,
        payload_of(&sign_frame(12, signing.key, [0; 32])),
    )
    .unwrap();
    assert!(summary.contains("UnknownKey"), "{summary}");
    // Fill the store: the limit is refused by name.
    for id in 13..16 {
        generate(&mut dispatcher, id, Purpose::Consensus);
    }
    let summary = dispatch(
        &mut dispatcher,
        payload_of(&generate_key_frame(16, KeySpec::new(Purpose::Consensus))),
    )
    .unwrap();
    assert!(summary.contains("KeyLimitReached"), "{summary}");
    let summary = dispatch(&mut dispatcher, payload_of(&list_keys_frame(17))).unwrap();
    assert_eq!(summary.matches("KeyListing").count(), 4, "{summary}");
}

/// The file descriptors of this process that point at `path`.
#[cfg(feature = "test-support")]
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
/// the harmless one: `Open` would leave a descriptor on /etc/hostname open in this process.
#[cfg(feature = "test-support")]
#[test]
fn the_in_process_dispatcher_never_makes_a_test_hook_system_call() {
    let before = descriptors_open_on("/etc/hostname");
    let mut dispatcher = Dispatcher::new(1).unwrap();
    // id 1, variant 6 (AttemptForbiddenSyscall), ForbiddenSyscall::Open (0).
    let result = dispatcher.handle(&[1, 6, 0]);
    let after = descriptors_open_on("/etc/hostname");
    assert_eq!(
        after, before,
        "the dispatcher opened /etc/hostname in the test process (answer: {result:?})"
    );
}
