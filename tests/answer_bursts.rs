//! A real sandboxed signer answers the requests one read brings in together (callers queued on
//! a lane) back to back, in order, with one write while they fit in its answer buffer; answers
//! that do not fit go out in further writes, still in order; and a corrupt frame in the middle of
//! a burst ends the stream exactly where it did when every answer had a write of its own, after
//! the answers to the requests before it.
//!
//! Each burst is made exact by stopping the signer (SIGSTOP) while the frames are written, so
//! that its next read takes them all, and counted through the kernel's tally of the signer's
//! write system calls (`syscw` in `/proc/<pid>/io`).
#![cfg(feature = "test-support")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fault_util;

use std::time::Duration;

use ed25519_dalek::{Signature, VerifyingKey};
use fault_util::{is_reaped, signal_child, wait_for};
use keyward::testing::{
    FRAME_CAP, RawSigner, diffie_hellman_frame, generate_key_frame, generated_key_from_summary,
    list_keys_frame, sign_frame, sign_many_frame, sign_message_frame, signatures_from_summary,
};
use keyward::{KeyId, KeySpec, MAX_BATCH, Purpose, SignerEnd};
use nix::sys::signal::Signal;

const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// How many write system calls the process has made so far.
fn writes_so_far(pid: i32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/io: {e}"));
    io.lines()
        .find_map(|line| line.strip_prefix("syscw:"))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no syscw in /proc/{pid}/io: {io}"))
}

/// The 32 bytes listed after `label` (which ends in `[`) in a Debug summary.
fn bytes_after(summary: &str, label: &str) -> [u8; 32] {
    let start = summary
        .find(label)
        .unwrap_or_else(|| panic!("no {label} in {summary}"))
        + label.len();
    let end = start + summary[start..].find(']').unwrap();
    let bytes: Vec<u8> = summary[start..end]
        .split(',')
        .map(|byte| byte.trim().parse().unwrap())
        .collect();
    bytes.try_into().unwrap()
}

fn signature_in(summary: &str) -> Signature {
    assert!(summary.starts_with("Signature {"), "{summary}");
    Signature::from_components(bytes_after(summary, "r: ["), bytes_after(summary, "s: ["))
}

/// A key generated through the raw pipe: its id and public key.
fn generate(raw: &mut RawSigner, id: u64, purpose: Purpose) -> (KeyId, [u8; 32]) {
    raw.write(&generate_key_frame(id, KeySpec::new(purpose)))
        .unwrap();
    let (answered, summary) = raw.read_answer(ANSWER_WAIT).unwrap();
    assert_eq!(answered, id);
    let key = generated_key_from_summary(&summary)
        .unwrap_or_else(|| panic!("not a generated key: {summary}"));
    (key, bytes_after(&summary, "public_key: ["))
}

/// Writes `frames` while the signer is stopped (so one read takes them all), then reads one
/// answer per frame; returns the answers and how many writes the signer made meanwhile.
fn send_burst(mode: &str, raw: &mut RawSigner, frames: &[Vec<u8>]) -> (Vec<(u64, String)>, u64) {
    let before = writes_so_far(raw.pid());
    write_while_stopped(raw, frames);
    let mut answers = Vec::new();
    for _ in 0..frames.len() {
        answers.push(
            raw.read_answer(ANSWER_WAIT)
                .unwrap_or_else(|e| panic!("{mode}: answer {}: {e}", answers.len())),
        );
    }
    (answers, writes_so_far(raw.pid()) - before)
}

/// Writes `frames` while the signer is stopped, so that its next read takes them all at once,
/// then lets it go on.
fn write_while_stopped(raw: &RawSigner, frames: &[Vec<u8>]) {
    let pid = raw.pid();
    assert!(signal_child(pid, Signal::SIGSTOP));
    assert!(wait_for(Duration::from_secs(3), || {
        fault_util::all_threads_stopped(pid)
    }));
    raw.write(&frames.concat()).unwrap();
    assert!(signal_child(pid, Signal::SIGCONT));
}

fn assert_batch_signed(summary: &str, public: &VerifyingKey, digests: &[[u8; 32]]) {
    let signatures = signatures_from_summary(summary)
        .unwrap_or_else(|| panic!("not signatures: {}", &summary[..summary.len().min(200)]));
    assert_eq!(signatures.len(), digests.len());
    for (digest, signature) in digests.iter().zip(&signatures) {
        public.verify_strict(digest, signature).unwrap();
    }
}

/// Eight requests of six kinds, read at once: eight answers in request order, in one write.
#[test]
fn a_burst_read_at_once_is_answered_in_order_with_one_write() {
    for (mode, config) in common::spawn_modes() {
        let mut raw = RawSigner::spawn(config).unwrap_or_else(|e| panic!("{mode}: {e}"));
        let (key, public) = generate(&mut raw, 1, Purpose::NetworkDiscovery);
        let (handshake, _) = generate(&mut raw, 2, Purpose::NetworkHandshake);
        let public = VerifyingKey::from_bytes(&public).unwrap();
        let batch = common::numbered_digests(5, 0x77);
        let frames = vec![
            sign_frame(10, key, [1; 32]),
            sign_many_frame(11, key, &batch),
            sign_message_frame(12, key, b"a message in a burst"),
            diffie_hellman_frame(13, handshake, [9; 32]),
            sign_frame(14, handshake, [2; 32]), // refused: an X25519 key
            list_keys_frame(15),
            sign_many_frame(16, key, &[]), // refused: an empty batch
            sign_frame(17, key, [3; 32]),
        ];
        let (answers, writes) = send_burst(mode, &mut raw, &frames);
        let ids: Vec<u64> = answers.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, (10..=17).collect::<Vec<_>>(), "{mode}");
        let summary = |at: usize| answers[at].1.as_str();
        public
            .verify_strict(&[1; 32], &signature_in(summary(0)))
            .unwrap();
        assert_batch_signed(summary(1), &public, &batch);
        public
            .verify_strict(b"a message in a burst", &signature_in(summary(2)))
            .unwrap();
        assert!(
            summary(3).starts_with("SharedSecret("),
            "{mode}: {}",
            summary(3)
        );
        assert!(
            summary(4).contains("WrongAlgorithm"),
            "{mode}: {}",
            summary(4)
        );
        assert_eq!(summary(5).matches("KeyListing").count(), 2, "{mode}");
        assert_eq!(
            summary(6),
            format!("Refused(BatchSize {{ cap: {MAX_BATCH} }})"),
            "{mode}"
        );
        public
            .verify_strict(&[3; 32], &signature_in(summary(7)))
            .unwrap();
        assert_eq!(writes, 1, "{mode}: eight answers took {writes} writes");
    }
}

/// Batches at the cap take half the answer buffer each: a burst of them and smaller answers goes
/// out in more than one write, and every answer arrives whole and in order.
#[test]
fn a_burst_larger_than_the_answer_buffer_goes_out_in_order_in_several_writes() {
    for (mode, config) in common::spawn_modes() {
        let mut raw = RawSigner::spawn(config).unwrap_or_else(|e| panic!("{mode}: {e}"));
        let (key, public) = generate(&mut raw, 1, Purpose::Account);
        let public = VerifyingKey::from_bytes(&public).unwrap();
        let batches: Vec<Vec<[u8; 32]>> = (0..3)
            .map(|salt| common::numbered_digests(MAX_BATCH, salt))
            .collect();
        let frames = vec![
            sign_frame(10, key, [1; 32]),
            sign_many_frame(11, key, &batches[0]),
            sign_frame(12, key, [2; 32]),
            sign_many_frame(13, key, &batches[1]),
            sign_many_frame(14, key, &batches[2]),
            sign_frame(15, key, [3; 32]),
        ];
        assert!(
            frames.iter().map(Vec::len).sum::<usize>() <= FRAME_CAP,
            "the burst must fit one read"
        );
        let (answers, writes) = send_burst(mode, &mut raw, &frames);
        let ids: Vec<u64> = answers.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, (10..=15).collect::<Vec<_>>(), "{mode}");
        for (at, digest) in [(0, [1; 32]), (2, [2; 32]), (5, [3; 32])] {
            public
                .verify_strict(&digest, &signature_in(&answers[at].1))
                .unwrap();
        }
        for (at, batch) in [(1, &batches[0]), (3, &batches[1]), (4, &batches[2])] {
            assert_batch_signed(&answers[at].1, &public, batch);
        }
        // Three answers of 32 KiB cannot share one 64 KiB buffer, and six answers did not take
        // six writes.
        assert!((2..6).contains(&writes), "{mode}: {writes} writes");
        println!("{mode}: six answers, three of them at the batch cap, in {writes} writes");
    }
}

/// A frame the signer cannot trust in the middle of a burst: the answers to the requests before
/// it are written, the signer stops there (CorruptRequestStream), and the request after it is
/// never served, as when each answer had a write of its own.
#[test]
fn a_corrupt_frame_in_a_burst_ends_the_stream_after_the_answers_before_it() {
    let no_id = 0u32.to_le_bytes().to_vec(); // an empty payload: not even an id
    let over_cap = u32::try_from(FRAME_CAP + 1).unwrap().to_le_bytes().to_vec();
    for (mode, config) in common::spawn_modes() {
        for (what, corrupt) in [("no id", &no_id), ("over the cap", &over_cap)] {
            let mut raw =
                RawSigner::spawn(config.clone()).unwrap_or_else(|e| panic!("{mode}: {e}"));
            let (key, public) = generate(&mut raw, 1, Purpose::NetworkDiscovery);
            let public = VerifyingKey::from_bytes(&public).unwrap();
            let batch = common::numbered_digests(3, 0x42);
            let frames = vec![
                sign_frame(10, key, [1; 32]),
                sign_many_frame(11, key, &batch),
                corrupt.clone(),
                sign_frame(12, key, [2; 32]),
            ];
            write_while_stopped(&raw, &frames);
            let (id, summary) = raw.read_answer(ANSWER_WAIT).unwrap();
            assert_eq!(id, 10, "{mode}, {what}");
            public
                .verify_strict(&[1; 32], &signature_in(&summary))
                .unwrap();
            let (id, summary) = raw.read_answer(ANSWER_WAIT).unwrap();
            assert_eq!(id, 11, "{mode}, {what}");
            assert_batch_signed(&summary, &public, &batch);
            assert_eq!(
                raw.read_answer(ANSWER_WAIT),
                Err("closed".to_owned()),
                "{mode}, {what}: the request after the corrupt frame was served"
            );
            assert_eq!(
                raw.wait_end(),
                SignerEnd::CorruptRequestStream,
                "{mode}, {what}"
            );
            let pid = raw.pid();
            drop(raw);
            assert!(wait_for(Duration::from_secs(3), || is_reaped(pid)));
        }
    }
}
