//! The supervisor distrusts the signer's bytes as much as the signer distrusts the supervisor's.
//! Each test stands a scripted impostor in for the signer program (fork-exec mode: a bash
//! script on the lane's fixed descriptors, 3 for requests and 19 for answers) that writes exactly
//! the bytes under test, and checks what the caller sees and that the impostor is killed and
//! reaped.
//!
//! The impostors cannot harden themselves, so all but one run under
//! `Sandbox::UnsandboxedInsecure`, which skips the supervisor's check of the kernel's view;
//! `a_signer_that_says_ready_without_its_sandbox_never_serves` shows that check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use keyward::{
    Config, Error, HardeningStep, KeyService, KeySpec, Purpose, Sandbox, SecretService, SignerEnd,
    SpawnError, SpawnMode,
};

/// The greeting a real signer sends: a frame of 12 bytes, `Greeting::Ready`, protocol version 5,
/// key memory `LockedAnonymous`, store id all zeros, no sealed store, as `printf` octal escapes.
const READY: &str = r"\014\000\000\000\000\005\001\000\000\000\000\000\000\000\000\000";

/// The greeting's protocol version is the library's.
#[test]
fn the_scripted_greeting_speaks_this_protocol_version() {
    assert_eq!(keyward::PROTOCOL_VERSION, 5, "update READY's version byte");
    assert!(READY.starts_with(r"\014\000\000\000\000\005"));
}

/// Waits on the request pipe until the supervisor closes it (then the impostor exits).
const WAIT_FOR_END: &str = "while read -r _ <&3; do :; done";

/// An impostor that runs `body` (shell) in place of the signer.
struct Impostor {
    _dir: common::TempDir,
    program: std::path::PathBuf,
}

impl Impostor {
    fn new(body: &str) -> Self {
        let dir = common::TempDir::new("keyward-impostor");
        let program = dir.path().join("impostor.sh");
        std::fs::write(&program, format!("#!/bin/bash\n{body}\n")).unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { _dir: dir, program }
    }

    /// An impostor that says it is ready, then writes `answer` (printf escapes) and waits.
    fn answering(answer: &str) -> Self {
        Self::new(&format!(
            "printf '{READY}' >&19\nprintf '{answer}' >&19\n{WAIT_FOR_END}"
        ))
    }

    fn config(&self) -> Config {
        Config::default()
            .with_workers(1)
            .with_sandbox(Sandbox::UnsandboxedInsecure)
            .with_spawn_timeout(Duration::from_secs(5))
            .with_spawn_mode(SpawnMode::ForkExec {
                program: self.program.clone(),
            })
    }
}

/// Whether `pid` is gone: neither running nor a zombie (it was reaped).
fn reaped_within(pid: i32, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if std::fs::metadata(format!("/proc/{pid}")).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The signer `pid` was killed and reaped, and a later call says it ended as `end`.
fn assert_ended_as(service: &SecretService, pid: i32, end: SignerEnd, what: &str) {
    assert!(
        reaped_within(pid, Duration::from_secs(3)),
        "{what}: the signer {pid} is still there"
    );
    let later = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap_err();
    assert!(
        matches!(later, Error::SignerEnded { end: ended, .. } if ended == end),
        "{what}: a later call got {later:?}"
    );
    assert!(!service.is_running());
}

/// Spawns the impostor, makes one call, and checks the call fails with `Error::SignerMisbehaved`
/// mentioning `what`, that the impostor is killed and reaped, and that later calls say why.
fn assert_protocol_violation(impostor: &Impostor, what: &str) {
    let service = SecretService::spawn(impostor.config()).unwrap();
    let pid = service.pid();
    let error = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap_err();
    match &error {
        Error::SignerMisbehaved { what: said, .. } => {
            assert!(said.contains(what), "{what}: {error}");
            assert!(error.to_string().contains("it was killed"), "{error}");
        }
        other => panic!("{what}: expected a protocol error, got {other:?}"),
    }
    assert_ended_as(&service, pid, SignerEnd::ProtocolViolation, what);
}

#[test]
fn an_undecodable_answer_is_a_protocol_error_and_ends_the_signer() {
    // id 1, then variant 127: there is no such response.
    assert_protocol_violation(
        &Impostor::answering(r"\002\000\000\000\001\177"),
        "undecodable",
    );
}

#[test]
fn an_answer_of_the_wrong_kind_is_a_protocol_error_and_ends_the_signer() {
    // id 1, `KeyDropped` (variant 5) to a request to generate a key.
    assert_protocol_violation(
        &Impostor::answering(r"\002\000\000\000\001\005"),
        "wrong kind",
    );
}

#[test]
fn an_answer_longer_than_the_cap_is_refused_before_it_is_read() {
    // A header announcing 1 MiB; nothing follows.
    assert_protocol_violation(&Impostor::answering(r"\000\000\020\000"), "frame cap");
}

#[test]
fn an_answer_to_a_request_never_made_is_a_protocol_error() {
    // id 99 (octal 143), `KeyDropped`.
    assert_protocol_violation(
        &Impostor::answering(r"\002\000\000\000\143\005"),
        "nobody is waiting",
    );
}

#[test]
fn a_signer_that_speaks_another_protocol_version_is_refused() {
    // `Ready` with protocol version 6, one past this library's.
    let impostor = Impostor::new(&format!(
        r"printf '\014\000\000\000\000\006\001\000\000\000\000\000\000\000\000\000' >&19
{WAIT_FOR_END}"
    ));
    match SecretService::spawn(impostor.config()) {
        Err(Error::Spawn(SpawnError::VersionMismatch { ours, theirs })) => {
            assert_eq!((ours, theirs), (keyward::PROTOCOL_VERSION, 6));
        }
        other => panic!(
            "expected a version mismatch, got {:?}",
            other.map(|s| s.pid())
        ),
    }
}

#[test]
fn a_failed_hardening_step_is_reported_by_name_and_errno() {
    // `HardeningFailed { step: SeccompFilter (10), errno: EINVAL (22, zigzag 44) }`.
    let impostor = Impostor::new(&format!(
        r"printf '\003\000\000\000\001\012\054' >&19
{WAIT_FOR_END}"
    ));
    match SecretService::spawn(impostor.config()) {
        Err(Error::Spawn(error @ SpawnError::Hardening { step, errno })) => {
            assert_eq!((step, errno), (HardeningStep::SeccompFilter, 22));
            let said = error.to_string();
            assert!(said.contains("loading the seccomp filter"), "{said}");
        }
        other => panic!(
            "expected a hardening failure, got {:?}",
            other.map(|s| s.pid())
        ),
    }
}

#[test]
fn a_signer_that_never_says_ready_is_killed_at_the_spawn_deadline() {
    let impostor = Impostor::new(WAIT_FOR_END);
    let started = Instant::now();
    let config = impostor
        .config()
        .with_spawn_timeout(Duration::from_millis(300));
    match SecretService::spawn(config) {
        Err(Error::Spawn(SpawnError::NotReady(waited))) => {
            assert_eq!(waited, Duration::from_millis(300));
        }
        other => panic!("expected NotReady, got {:?}", other.map(|s| s.pid())),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "spawn returned only after {:?}",
        started.elapsed()
    );
}

#[test]
fn a_signer_that_exits_before_it_is_ready_is_reported_with_its_code() {
    let impostor = Impostor::new("exit 3");
    match SecretService::spawn(impostor.config()) {
        Err(Error::Spawn(SpawnError::Ended(SignerEnd::Exited { code }))) => assert_eq!(code, 3),
        other => panic!(
            "expected an exit before ready, got {:?}",
            other.map(|s| s.pid())
        ),
    }
}

#[test]
fn a_signer_that_says_ready_without_its_sandbox_never_serves() {
    let impostor = Impostor::new(&format!("printf '{READY}' >&19\n{WAIT_FOR_END}"));
    let config = impostor.config().with_sandbox(Sandbox::Enforced);
    match SecretService::spawn(config) {
        Err(Error::Spawn(SpawnError::NotHardened(weakness))) => {
            assert!(weakness.contains("Seccomp 0"), "{weakness}");
        }
        other => panic!("expected NotHardened, got {:?}", other.map(|s| s.pid())),
    }
    // Control: the real signer under the same configuration passes the same check.
    let real = Config::default()
        .with_workers(1)
        .with_spawn_mode(SpawnMode::ForkExec {
            program: common::signer_program(),
        });
    let service = SecretService::spawn(real).unwrap();
    service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
}

/// A signer that reads requests but never answers, while running, is hung: the call returns
/// `Error::Timeout` at the deadline, the signer is killed and reaped, and later calls say it
/// ended on a timeout. (A stopped signer is left alone: `child_death.rs`.)
#[test]
fn a_running_signer_that_never_answers_is_killed_as_hung() {
    let impostor = Impostor::new(&format!("printf '{READY}' >&19\n{WAIT_FOR_END}"));
    let timeout = Duration::from_millis(300);
    let service = SecretService::spawn(impostor.config().with_request_timeout(timeout)).unwrap();
    let pid = service.pid();
    let started = Instant::now();
    let error = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(error, Error::Timeout(t) if t == timeout),
        "{error:?}"
    );
    assert!(error.to_string().contains("killed as hung"), "{error}");
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(2),
        "the timed-out call took {took:?}"
    );
    assert_ended_as(&service, pid, SignerEnd::TimedOut, "a hung signer");
}

/// `bytes` as `printf` octal escapes.
fn octal(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("\\{byte:03o}")).collect()
}

/// An answer frame for request 1 carrying `payload` after the id, as `printf` escapes.
fn answer_to_request_one(payload: &[u8]) -> String {
    let mut frame = u32::try_from(payload.len() + 1)
        .unwrap()
        .to_le_bytes()
        .to_vec();
    frame.push(1);
    frame.extend_from_slice(payload);
    octal(&frame)
}

#[test]
fn a_new_key_named_in_another_store_is_a_protocol_error() {
    // `KeyGenerated` (0) naming store 09×8, while the signer greeted with store 00×8.
    let mut payload = vec![0u8];
    payload.extend([9u8; 8]);
    payload.extend([0u8; 16]);
    payload.extend([0x58u8; 32]);
    assert_protocol_violation(
        &Impostor::answering(&answer_to_request_one(&payload)),
        "another store",
    );
}

#[test]
fn a_refusal_that_cannot_apply_to_the_request_is_a_protocol_error() {
    // `Refused(UnknownKey)` to a request to generate a key, which names no key.
    assert_protocol_violation(
        &Impostor::answering(&answer_to_request_one(&[6, 0])),
        "does not fit",
    );
}

#[test]
fn a_public_key_that_is_not_a_point_is_a_protocol_error() {
    // The first y coordinate with no point on the curve.
    let not_a_point = (0u8..=255)
        .map(|first| {
            let mut bytes = [0u8; 32];
            bytes[0] = first;
            bytes
        })
        .find(|bytes| ed25519_dalek::VerifyingKey::from_bytes(bytes).is_err())
        .unwrap();
    // `PublicKey` (1): Ed25519 (0), consensus (1), the bytes.
    let mut payload = vec![1u8, 0, 1];
    payload.extend(not_a_point);
    let impostor = Impostor::answering(&answer_to_request_one(&payload));
    let service = SecretService::spawn(impostor.config()).unwrap();
    // A key id in the impostor's store (all zeros), so the request is sent.
    let key: keyward::KeyId = "00".repeat(24).parse().unwrap();
    let error = service.public_key(key).unwrap_err();
    match &error {
        Error::SignerMisbehaved { what, .. } => {
            assert!(what.contains("not a valid point"), "{error}")
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert!(!service.is_running());
}

/// Signatures can only be matched to digests by their place, so a batch answered with one
/// signature too few (or too many) is a protocol error, never a shorter result; the same answer
/// with as many signatures as digests is accepted (the control).
#[test]
fn a_batch_answered_with_another_number_of_signatures_is_a_protocol_error() {
    // `Signatures` (8): a count, then (R, S) for each.
    let signatures = |count: u8| {
        let mut payload = vec![8u8, count];
        for _ in 0..count {
            payload.extend([0x11u8; 32]);
            payload.extend([0x22u8; 32]);
        }
        payload
    };
    // A key id in the impostor's store (all zeros), so the request is sent.
    let key: keyward::KeyId = "00".repeat(24).parse().unwrap();
    let digests = [[1u8; 32], [2; 32]];
    for count in [1, 3] {
        let impostor = Impostor::answering(&answer_to_request_one(&signatures(count)));
        let service = SecretService::spawn(impostor.config()).unwrap();
        let pid = service.pid();
        let error = service.sign_many(key, &digests).unwrap_err();
        match &error {
            Error::SignerMisbehaved { what, .. } => {
                assert!(what.contains("another number of signatures"), "{error}");
            }
            other => panic!("{count} signatures: expected a protocol error, got {other:?}"),
        }
        assert_ended_as(
            &service,
            pid,
            SignerEnd::ProtocolViolation,
            &format!("{count} signatures for 2 digests"),
        );
    }
    let impostor = Impostor::answering(&answer_to_request_one(&signatures(2)));
    let service = SecretService::spawn(impostor.config()).unwrap();
    let answered = service.sign_many(key, &digests).unwrap();
    let expected = ed25519_dalek::Signature::from_components([0x11; 32], [0x22; 32]);
    assert_eq!(answered, vec![expected; 2]);
    assert!(service.is_running());
}
