//! A real sandboxed signer fed hostile frames through its pipe either refuses them and carries on, or stops on a stream it can no longer trust, exactly as its input policy says; and the supervisor survives a signer killed mid-answer.
#![cfg(feature = "test-support")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fault_util;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fault_util::{is_reaped, process_state, signal_child, wait_for};
use keyward::testing::{
    self, FRAME_CAP, RawSigner, generate_key_frame, generated_key_from_summary, list_keys_frame,
    sign_frame, sign_message_frame,
};
use keyward::{
    Config, Error, KeyService, KeySpec, MAX_MESSAGE_LEN, Purpose, SecretService, SignerEnd,
};
use nix::sys::signal::Signal;

const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// A frame: the little-endian u32 length, then `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut bytes = u32::try_from(payload.len()).unwrap().to_le_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

/// The payload of a frame built by the fuzzing helpers.
fn payload(frame: &[u8]) -> Vec<u8> {
    frame[4..].to_vec()
}

/// A postcard varint.
fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = u8::try_from(value & 0x7f).unwrap();
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn spawn_raw(mode: &str, config: Config) -> RawSigner {
    RawSigner::spawn(config).unwrap_or_else(|e| panic!("{mode}: spawn: {e}"))
}

/// Sends one frame and returns the answer's id and summary.
fn ask(mode: &str, raw: &mut RawSigner, bytes: &[u8]) -> (u64, String) {
    raw.write(bytes).unwrap();
    raw.read_answer(ANSWER_WAIT)
        .unwrap_or_else(|e| panic!("{mode}: no answer: {e}"))
}

/// The signer still serves on this lane: a key listing with the next id, then a key generated
/// and a digest signed with it.
fn assert_still_serving(mode: &str, raw: &mut RawSigner, next_id: u64) {
    let (id, summary) = ask(mode, raw, &list_keys_frame(next_id));
    assert_eq!(id, next_id, "{mode}");
    assert!(summary.starts_with("KeyList("), "{mode}: {summary}");
    let (id, summary) = ask(
        mode,
        raw,
        &generate_key_frame(next_id + 1, KeySpec::new(Purpose::Account)),
    );
    assert_eq!(id, next_id + 1);
    let key = generated_key_from_summary(&summary)
        .unwrap_or_else(|| panic!("{mode}: not a generated key: {summary}"));
    let (id, summary) = ask(mode, raw, &sign_frame(next_id + 2, key, [4; 32]));
    assert_eq!(id, next_id + 2);
    assert!(summary.starts_with("Signature {"), "{mode}: {summary}");
}

/// The signer ends on its own with `expected` (the answer pipe closes first) and is reaped.
fn assert_ends(mode: &str, mut raw: RawSigner, expected: SignerEnd, what: &str) {
    let pid = raw.pid();
    assert_eq!(
        raw.read_answer(ANSWER_WAIT),
        Err("closed".to_owned()),
        "{mode}: {what}: the signer answered instead of ending"
    );
    assert_eq!(raw.wait_end(), expected, "{mode}: {what}");
    drop(raw);
    assert!(
        wait_for(Duration::from_secs(3), || is_reaped(pid)),
        "{mode}: {what}: signer {pid} not reaped (state {:?})",
        process_state(pid)
    );
}

#[test]
fn a_length_over_the_cap_ends_the_signer() {
    for (mode, config) in common::spawn_modes() {
        let raw = spawn_raw(mode, config);
        let over = u32::try_from(FRAME_CAP + 1).unwrap();
        raw.write(&over.to_le_bytes()).unwrap();
        assert_ends(mode, raw, SignerEnd::CorruptRequestStream, "length cap + 1");
        assert_eq!(testing::CORRUPT_STREAM_END, SignerEnd::CorruptRequestStream);
    }
}

/// A message to sign that makes its frame longer than the cap is a corrupt stream like any frame
/// over the cap: the signer stops on the header alone and never reads the message. The same
/// request one byte shorter, a frame exactly at the cap, is read whole and its message refused
/// as too long (it is over `MAX_MESSAGE_LEN`), and the signer carries on.
#[test]
fn a_sign_message_frame_over_the_cap_ends_the_signer() {
    for (mode, config) in common::spawn_modes() {
        let mut raw = spawn_raw(mode, config);
        let (_, summary) = ask(
            mode,
            &mut raw,
            &generate_key_frame(1, KeySpec::new(Purpose::Account)),
        );
        let key = generated_key_from_summary(&summary)
            .unwrap_or_else(|| panic!("{mode}: not a generated key: {summary}"));
        // What a sign-message request adds to its message: id, kind, key, message length.
        let message = vec![0x5A; MAX_MESSAGE_LEN];
        let overhead = payload(&sign_message_frame(2, key, &message)).len() - message.len();
        let at_cap = sign_message_frame(2, key, &vec![0x5A; FRAME_CAP - overhead]);
        assert_eq!(at_cap.len(), 4 + FRAME_CAP, "{mode}");
        let (id, summary) = ask(mode, &mut raw, &at_cap);
        assert_eq!(id, 2, "{mode}");
        assert_eq!(
            summary,
            format!("Refused(MessageTooLong {{ cap: {MAX_MESSAGE_LEN} }})"),
            "{mode}"
        );
        assert_still_serving(mode, &mut raw, 3);
        let over = sign_message_frame(6, key, &vec![0x5A; FRAME_CAP + 1 - overhead]);
        assert_eq!(over.len(), 4 + FRAME_CAP + 1, "{mode}");
        // The signer stops after the header, so the write may find the pipe closed part-way.
        let written = raw.write(&over);
        assert!(
            written
                .as_ref()
                .map_or_else(|e| e.kind() == std::io::ErrorKind::BrokenPipe, |()| true),
            "{mode}: {written:?}"
        );
        assert_ends(
            mode,
            raw,
            SignerEnd::CorruptRequestStream,
            "a message to sign making its frame over the cap",
        );
    }
}

/// u32::MAX announced: the signer must not try to allocate (a sandboxed signer that did would
/// die by SIGSYS, reported as SandboxViolation); it stops on the header alone.
#[test]
fn a_huge_announced_length_ends_the_signer_without_allocating() {
    for (mode, config) in common::spawn_modes() {
        for announced in [u32::MAX, 0x8000_0000, 1 << 20] {
            let raw = spawn_raw(mode, config.clone());
            let mut bytes = announced.to_le_bytes().to_vec();
            bytes.extend_from_slice(&[0xAB; 100]);
            raw.write(&bytes).unwrap();
            assert_ends(
                mode,
                raw,
                SignerEnd::CorruptRequestStream,
                &format!("announced {announced}"),
            );
        }
    }
}

/// The frame reader holds exactly one frame at the cap: a payload of exactly FRAME_CAP bytes is
/// read whole (and refused, as it is not a request), and the signer carries on.
#[test]
fn a_frame_exactly_at_the_cap_is_read_and_refused() {
    for (mode, config) in common::spawn_modes() {
        let mut raw = spawn_raw(mode, config);
        let mut body = payload(&generate_key_frame(1, KeySpec::new(Purpose::Account)));
        body.resize(FRAME_CAP, 0);
        let (id, summary) = ask(mode, &mut raw, &frame(&body));
        assert_eq!(id, 1);
        assert!(summary.contains("MalformedRequest"), "{mode}: {summary}");
        assert_still_serving(mode, &mut raw, 2);
    }
}

#[test]
fn a_truncated_frame_then_end_of_stream_ends_the_signer() {
    for (mode, config) in common::spawn_modes() {
        let mut raw = spawn_raw(mode, config.clone());
        let whole = list_keys_frame(1);
        let mut bytes = frame(&[0u8; 100]);
        bytes.truncate(4 + 10);
        raw.write(&bytes).unwrap();
        // A partial frame alone is not an error: the signer waits for the rest.
        assert_eq!(
            raw.read_answer(Duration::from_millis(200)),
            Err("timed out".to_owned()),
            "{mode}"
        );
        raw.close_requests();
        assert_ends(
            mode,
            raw,
            SignerEnd::CorruptRequestStream,
            "truncated frame, then end of stream",
        );
        // A header cut short is truncated too.
        let mut raw = spawn_raw(mode, config);
        raw.write(&whole[..2]).unwrap();
        raw.close_requests();
        assert_ends(
            mode,
            raw,
            SignerEnd::CorruptRequestStream,
            "truncated header",
        );
    }
}

/// A well-framed payload whose id decodes but whose body does not is refused with
/// MalformedRequest to that id, and the signer carries on.
#[test]
fn undecodable_bodies_are_refused_and_the_signer_carries_on() {
    for (mode, config) in common::spawn_modes() {
        let mut raw = spawn_raw(mode, config);
        let list = payload(&list_keys_frame(0));
        let key: keyward::KeyId = "01".repeat(24).parse().unwrap();
        let sign = payload(&sign_frame(0, key, [2; 32]));
        let sign_message = payload(&sign_message_frame(0, key, &[3; 40]));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("garbage after the id", vec![0xFF; 9]),
            ("an unterminated variant varint", vec![0x80]),
            ("an unknown variant index (one past the last)", varint(24)),
            ("an unknown variant index (large)", varint(1000)),
            (
                "a request with trailing bytes",
                [&list[1..], &[0][..]].concat(),
            ),
            ("a sign request cut short", sign[1..sign.len() - 5].to_vec()),
            (
                "a message to sign shorter than its length says",
                sign_message[1..sign_message.len() - 1].to_vec(),
            ),
            (
                "a key spec with an unknown purpose",
                [varint(0), varint(9), varint(0)].concat(),
            ),
            ("no body at all", Vec::new()),
        ];
        let mut id = 10u64;
        for (what, body) in cases {
            id += 1;
            let bytes = frame(&[varint(id), body].concat());
            let (answered, summary) = ask(mode, &mut raw, &bytes);
            assert_eq!(answered, id, "{mode}: {what}");
            assert!(
                summary.contains("MalformedRequest"),
                "{mode}: {what}: {summary}"
            );
            // A refused body does not consume the id: the same id is still usable.
            assert_still_serving(mode, &mut raw, id);
            id += 2;
        }
        // A spec whose algorithm does not fit its purpose decodes: refused for that reason.
        let mismatched = [varint(0), varint(1), varint(1)].concat(); // Consensus with X25519
        id += 1;
        let (answered, summary) = ask(mode, &mut raw, &frame(&[varint(id), mismatched].concat()));
        assert_eq!(answered, id);
        assert!(
            summary.contains("PurposeAlgorithmMismatch"),
            "{mode}: {summary}"
        );
    }
}

#[test]
fn ids_that_do_not_increase_are_refused() {
    for (mode, config) in common::spawn_modes() {
        let mut raw = spawn_raw(mode, config);
        let (id, summary) = ask(mode, &mut raw, &list_keys_frame(5));
        assert_eq!((id, summary.as_str()), (5, "KeyList([])"), "{mode}");
        for reused in [5, 4, 0] {
            let (id, summary) = ask(mode, &mut raw, &list_keys_frame(reused));
            assert_eq!(id, reused, "{mode}");
            assert!(
                summary.contains("RequestIdNotIncreasing"),
                "{mode}: id {reused}: {summary}"
            );
        }
        // A refused id leaves the lane's last id where it was.
        assert_still_serving(mode, &mut raw, 6);
        // The largest id is accepted once; after it nothing can increase.
        let (_, summary) = ask(mode, &mut raw, &list_keys_frame(u64::MAX));
        assert!(summary.starts_with("KeyList("), "{mode}: {summary}");
        let (_, summary) = ask(mode, &mut raw, &list_keys_frame(u64::MAX));
        assert!(summary.contains("RequestIdNotIncreasing"), "{mode}");
    }
}

/// A payload from which not even an id can be read means the stream cannot be trusted.
#[test]
fn a_payload_without_an_id_ends_the_signer() {
    for (mode, config) in common::spawn_modes() {
        for (what, body) in [
            ("an empty payload", Vec::new()),
            ("an unterminated id varint", vec![0xFF]),
            ("an id varint longer than a u64", vec![0xFF; 11]),
        ] {
            let raw = spawn_raw(mode, config.clone());
            raw.write(&frame(&body)).unwrap();
            assert_ends(mode, raw, SignerEnd::CorruptRequestStream, what);
        }
    }
}

/// Requests queued behind a hostile frame in the same write are not served once the signer has
/// stopped: it stops at the first frame it cannot trust.
#[test]
fn frames_after_an_untrusted_one_are_never_served() {
    for (mode, config) in common::spawn_modes() {
        let mut raw = spawn_raw(mode, config);
        let mut bytes = list_keys_frame(1);
        bytes.extend_from_slice(&frame(&[]));
        bytes.extend_from_slice(&list_keys_frame(2));
        raw.write(&bytes).unwrap();
        let (id, _) = raw.read_answer(ANSWER_WAIT).unwrap();
        assert_eq!(id, 1);
        assert_ends(mode, raw, SignerEnd::CorruptRequestStream, "frame after");
    }
}

/// The signer is killed while it writes an answer larger than what is left of the pipe: the
/// reader gets one whole answer and then a frame cut short, then end of file.
#[test]
fn a_signer_killed_mid_answer_leaves_a_cut_frame_and_is_reaped() {
    const KEYS: u32 = 1024;
    for (mode, config) in common::spawn_modes() {
        let mut raw = spawn_raw(mode, config.with_key_limit(KEYS));
        let mut id = 0;
        for _ in 0..KEYS {
            id += 1;
            let (_, summary) = ask(
                mode,
                &mut raw,
                &generate_key_frame(id, KeySpec::new(Purpose::Account)),
            );
            assert!(summary.starts_with("KeyGenerated"), "{mode}: {summary}");
        }
        // Two listings of ~59 KB each (58 bytes a key): together more than the 64 KiB pipe, so
        // the second write blocks part-way.
        let mut bytes = list_keys_frame(id + 1);
        bytes.extend_from_slice(&list_keys_frame(id + 2));
        raw.write(&bytes).unwrap();
        let pid = raw.pid();
        let blocked_in_write = wait_for(Duration::from_secs(5), || writing_answer(pid));
        if !blocked_in_write {
            // Without /proc/<pid>/task/*/syscall, give the signer time to fill the pipe.
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(signal_child(pid, Signal::SIGKILL));
        assert!(wait_for(Duration::from_secs(3), || is_reaped(pid)));
        let received = drain(&raw);
        let first_len =
            usize::try_from(u32::from_le_bytes(received[..4].try_into().unwrap())).unwrap() + 4;
        assert!(
            received.len() > first_len && received.len() < 2 * first_len,
            "{mode}: expected one whole answer ({first_len} bytes) and part of another, got {} bytes",
            received.len()
        );
        assert_eq!(raw.wait_end(), SignerEnd::Killed { signal: 9 }, "{mode}");
        println!(
            "{mode}: killed mid-answer: {} of {} bytes received (blocked in write seen: {blocked_in_write})",
            received.len(),
            2 * first_len
        );
    }
}

/// Whether a thread of `pid` is in write(2) on lane 0's answer descriptor (19).
fn writing_answer(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("syscall"))
            .is_ok_and(|line| line.starts_with("1 0x13 "))
    })
}

/// Reads the answer pipe to end of file.
fn drain(raw: &RawSigner) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match nix::unistd::read(raw.response_pipe(), &mut chunk) {
            Ok(0) => return all,
            Ok(count) => all.extend_from_slice(&chunk[..count]),
            Err(nix::errno::Errno::EAGAIN) => {
                assert!(
                    Instant::now() < deadline,
                    "the pipe never reached end of file"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(error) => panic!("read: {error}"),
        }
    }
}

/// Through the public API: callers reading ~59 KB listings while the signer is killed at random
/// moments all get SignerEnded{Killed 9} within the deadline (never a panic, a hang or a wrong
/// answer), and the service respawns.
#[test]
fn the_supervisor_survives_a_signer_killed_mid_answer() {
    const KEYS: usize = 1024;
    const CALLERS: usize = 4;
    let mut rng = fault_util::Xorshift::new(0x5eed_0fde_ad00);
    for (mode, config) in common::spawn_modes() {
        let config = config
            .with_key_limit(u32::try_from(KEYS).unwrap())
            .with_workers(1);
        let service = Arc::new(SecretService::spawn(config).unwrap());
        for round in 0..3 {
            for _ in 0..KEYS {
                service
                    .generate_key(KeySpec::new(Purpose::NetworkDiscovery))
                    .unwrap();
            }
            let (done_tx, done_rx) = mpsc::channel();
            for _ in 0..CALLERS {
                let service = Arc::clone(&service);
                let done = done_tx.clone();
                std::thread::spawn(move || {
                    let mut listings = 0u32;
                    let error = loop {
                        match service.list_keys() {
                            Ok(keys) => {
                                assert_eq!(keys.len(), KEYS);
                                listings += 1;
                            }
                            Err(error) => break error,
                        }
                    };
                    let _ = done.send((listings, error));
                });
            }
            drop(done_tx);
            std::thread::sleep(Duration::from_millis(20 + rng.below(60)));
            let pid = service.pid();
            assert!(signal_child(pid, Signal::SIGKILL));
            let killed_at = Instant::now();
            for _ in 0..CALLERS {
                let left = Duration::from_secs(5).saturating_sub(killed_at.elapsed());
                let (listings, error) = done_rx
                    .recv_timeout(left)
                    .unwrap_or_else(|_| panic!("{mode} round {round}: a caller hung"));
                assert!(
                    matches!(
                        error,
                        Error::SignerEnded {
                            end: SignerEnd::Killed { signal: 9 },
                            ..
                        }
                    ),
                    "{mode} round {round}: after {listings} listings: {error:?}"
                );
            }
            assert!(!service.is_running());
            assert_eq!(service.respawn().unwrap(), round + 2);
        }
        assert!(service.list_keys().unwrap().is_empty());
    }
}
