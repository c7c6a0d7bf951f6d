//! A host that forks without exec (a pre-fork server, a daemon that double-forks, a test runner)
//! leaves a copy of the service in the forked process. That copy refuses every call with
//! `Error::ForkedProcess`, and dropping it (the service, then the last `KeySigner`) returns at
//! once without touching the original's signer; the original keeps signing throughout, with the
//! same signer process.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// `nix::unistd::fork` and `libc::_exit` are unsafe: this file forks its host on purpose (see the
// SAFETY comments); nothing else in it is unsafe.
#![allow(unsafe_code)]

mod common;

use std::time::{Duration, Instant};

use keyward::{Error, KeyId, KeyService, KeySigner, KeySpec, Purpose, SecretService};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

const TEST: &str = "a_forked_copy_of_the_host_is_refused_and_the_original_keeps_its_signer";
const ROUNDS: usize = 50;
/// How long the forked copy may take to make its calls, drop everything and exit.
const COPY_DEADLINE: Duration = Duration::from_secs(5);
/// The forked copy's exit codes. Not 0 for success: a forked copy whose only thread ends (as the
/// test harness's thread does after a panic) exits with 0.
const COPY_PASSED: i32 = 42;
const COPY_FAILED: i32 = 43;
const COPY_PANICKED: i32 = 44;

/// In the forked copy: every call is refused as coming from a forked process, then the service
/// and the last `KeySigner` are dropped. Returns the exit code.
fn play_forked_copy(service: SecretService, signer: KeySigner, key: KeyId, creator: u32) -> i32 {
    let this = std::process::id();
    let refused = |what: &str, error: Option<&Error>| match error {
        Some(Error::ForkedProcess {
            creator: said_creator,
            this: said_this,
        }) if *said_creator == creator && *said_this == this => true,
        other => {
            eprintln!("forked copy: {what} gave {other:?}, not ForkedProcess");
            false
        }
    };
    let message_error =
        signature::Signer::<ed25519_dalek::Signature>::try_sign(&signer, b"m").err();
    let message_error = message_error
        .as_ref()
        .and_then(std::error::Error::source)
        .and_then(|source| source.downcast_ref::<Error>());
    let checks = [
        refused("sign", service.sign(key, &[1; 32]).err().as_ref()),
        refused(
            "generate_key",
            service
                .generate_key(KeySpec::new(Purpose::Account))
                .err()
                .as_ref(),
        ),
        refused("list_keys", service.list_keys().err().as_ref()),
        refused("respawn", service.respawn().err().as_ref()),
        refused("status", service.status().err().as_ref()),
        refused("public_key", service.public_key(key).err().as_ref()),
        refused("KeySigner::try_sign", message_error),
    ];
    // The service first, so that the KeySigner holds the last share and its drop ends the copy's
    // signer handle.
    drop(service);
    drop(signer);
    if checks.iter().all(|passed| *passed) {
        COPY_PASSED
    } else {
        COPY_FAILED
    }
}

fn sign_and_verify(
    service: &SecretService,
    key: KeyId,
    public: &ed25519_dalek::VerifyingKey,
    n: u64,
) {
    let digest = {
        let mut digest = [0u8; 32];
        digest[..8].copy_from_slice(&n.to_le_bytes());
        digest
    };
    let signature = service.sign(key, &digest).unwrap();
    public.verify_strict(&digest, &signature).unwrap();
}

fn play_host_that_forks() {
    let creator = std::process::id();
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config).unwrap();
        let key = service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        let public = *service.public_key(key).unwrap().as_ed25519().unwrap();
        let signer_pid = service.pid();
        let mut slowest_copy = Duration::ZERO;
        let mut signatures = 0u64;
        // Held in options so that the forked copy can take and drop them; the original never does.
        let mut copy_of_service = Some(service);
        let mut copy_of_signer = Some(copy_of_service.as_ref().unwrap().signing_key(key).unwrap());
        for round in 0..ROUNDS {
            // SAFETY: the child runs only `play_forked_copy` (calls that are refused before any
            // lock but the service's own is taken, then drops) and ends with `_exit`, never
            // returning into the test harness. The other threads of this process are keyward's
            // watcher threads, which hold no lock the child takes.
            match unsafe { nix::unistd::fork() }.unwrap() {
                ForkResult::Child => {
                    let (service, signer) = (
                        copy_of_service.take().unwrap(),
                        copy_of_signer.take().unwrap(),
                    );
                    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        play_forked_copy(service, signer, key, creator)
                    }))
                    .unwrap_or(COPY_PANICKED);
                    // SAFETY: ends the forked copy at once, without running the harness's exit
                    // handlers (which belong to the original).
                    unsafe { libc::_exit(code) }
                }
                ForkResult::Parent { child } => {
                    let service = copy_of_service.as_ref().unwrap();
                    let forked_at = Instant::now();
                    // Meanwhile: the original signs, verified, until the copy has exited.
                    let status = loop {
                        sign_and_verify(service, key, &public, signatures);
                        signatures += 1;
                        match waitpid(child, Some(WaitPidFlag::WNOHANG)).unwrap() {
                            WaitStatus::StillAlive => {}
                            status => break status,
                        }
                        if forked_at.elapsed() > COPY_DEADLINE {
                            kill_and_reap(child);
                            panic!(
                                "{mode}, round {round}: the forked copy did not exit within \
                                 {COPY_DEADLINE:?} (it hangs dropping the service)"
                            );
                        }
                    };
                    slowest_copy = slowest_copy.max(forked_at.elapsed());
                    assert_eq!(
                        status,
                        WaitStatus::Exited(child, COPY_PASSED),
                        "{mode}, round {round}: the forked copy failed its checks ({COPY_FAILED}) \
                         or panicked ({COPY_PANICKED})"
                    );
                    // Afterwards: the original still signs, with the same signer.
                    for _ in 0..3 {
                        sign_and_verify(service, key, &public, signatures);
                        signatures += 1;
                    }
                    assert_eq!(service.pid(), signer_pid, "{mode}, round {round}");
                    assert!(service.is_running(), "{mode}, round {round}");
                }
            }
        }
        let service = copy_of_service.take().unwrap();
        assert_eq!(service.pid(), signer_pid, "{mode}");
        assert_eq!(service.generation(), 1, "{mode}");
        let signer = copy_of_signer.take().unwrap();
        let signature = signature::Signer::<ed25519_dalek::Signature>::sign(&signer, b"after");
        public.verify_strict(b"after", &signature).unwrap();
        println!(
            "{mode}: {ROUNDS} forks; every copy refused and exited, the slowest after \
             {slowest_copy:?}; {signatures} signatures verified in the original, signer {signer_pid} \
             throughout"
        );
    }
    println!("HOST DONE");
}

fn kill_and_reap(child: Pid) {
    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
    let _ = waitpid(child, None);
}

#[test]
fn a_forked_copy_of_the_host_is_refused_and_the_original_keeps_its_signer() {
    if common::role().as_deref() == Some("forking-host") {
        return play_host_that_forks();
    }
    let run = common::run_role(TEST, "forking-host", &[], Duration::from_secs(60));
    println!("{}{}", run.stdout, run.stderr);
    assert!(run.succeeded(), "the forking host failed: {:?}", run.status);
    assert!(
        run.stdout.contains("HOST DONE"),
        "the host's checks did not all run"
    );
}
