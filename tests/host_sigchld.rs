//! Whatever the host does with SIGCHLD, keyward knows exactly how its signer ended, at once. A
//! host that sets SIGCHLD to SIG_IGN has the kernel reap its children the moment they die; a host
//! whose SIGCHLD handler reaps every child, or with a thread that does (`waitpid(-1, WNOHANG)` in
//! a loop, as process supervisors and some runtimes do), takes their exit status first. Either way keyward must not
//! wait for a status it will never get, nor misreport the end: a sandbox violation is still
//! `SandboxViolation`, a SIGKILL still `Killed { signal: 9 }`, both well under a second, and a
//! hardening step that fails at spawn is still named. Both spawn modes.
#![cfg(feature = "test-support")]
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Setting the host's SIGCHLD disposition takes `nix::sys::signal::signal` and `sigaction`, which
// are unsafe (see the SAFETY comments); the library itself never touches it.
#![allow(unsafe_code)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keyward::{
    Error, ForbiddenSyscall, HardeningStep, KeyService, KeySpec, Purpose, SecretService, SignerEnd,
    SpawnError,
};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Each end must be reported within this.
const PROMPT: Duration = Duration::from_millis(500);

/// One scenario's outcome, for the report and the assertions.
struct Outcome {
    what: String,
    took: Duration,
    passed: bool,
    said: String,
}

fn ended_with(error: &Error, expected: SignerEnd) -> bool {
    matches!(error, Error::SignerEnded { end, .. } if *end == expected)
}

/// (a) The signer attempts a forbidden system call; the call that made it returns.
fn sandbox_violation(mode: &str, service: &SecretService) -> Outcome {
    let started = Instant::now();
    let result = service.attempt_forbidden_syscall(ForbiddenSyscall::Socket);
    let took = started.elapsed();
    let passed = matches!(&result, Err(error) if ended_with(error, SignerEnd::SandboxViolation))
        && took < PROMPT;
    Outcome {
        what: format!("{mode}: sandbox violation"),
        took,
        passed,
        said: format!("{result:?}"),
    }
}

/// (b) The signer is killed with SIGKILL; the next call returns.
fn killed(mode: &str, service: &SecretService, key: keyward::KeyId) -> Outcome {
    let started = Instant::now();
    nix::sys::signal::kill(Pid::from_raw(service.pid()), Signal::SIGKILL).unwrap();
    let result = service.sign(key, &[2; 32]);
    let took = started.elapsed();
    let passed = matches!(&result, Err(error) if ended_with(error, SignerEnd::Killed { signal: 9 }))
        && took < PROMPT;
    Outcome {
        what: format!("{mode}: SIGKILL"),
        took,
        passed,
        said: format!("{:?}", result.map(|_| "a signature")),
    }
}

/// (c) A hardening step fails at spawn (too few descriptors to lay the pipes out).
fn hardening_failure(mode: &str, config: keyward::Config) -> Outcome {
    let started = Instant::now();
    let result = SecretService::spawn(config);
    let took = started.elapsed();
    let passed = matches!(
        &result,
        Err(Error::Spawn(SpawnError::Hardening {
            step: HardeningStep::DescriptorHygiene,
            ..
        }))
    ) && took < PROMPT;
    Outcome {
        what: format!("{mode}: hardening failure at spawn"),
        took,
        passed,
        said: format!("{:?}", result.map(|service| service.pid())),
    }
}

fn play_host() {
    let mut outcomes = Vec::new();
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config.clone()).unwrap();
        outcomes.push(sandbox_violation(mode, &service));
        let service = SecretService::spawn(config).unwrap();
        let key = service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        service.sign(key, &[1; 32]).unwrap();
        outcomes.push(killed(mode, &service, key));
    }
    // Last: the lowered descriptor limit stays for the rest of this process. The signer parks
    // its pipes above 50 while laying them out, which a limit of 32 forbids (as in
    // hardening_failures.rs).
    setrlimit(Resource::RLIMIT_NOFILE, 32, 32).unwrap();
    for (mode, config) in common::spawn_modes() {
        outcomes.push(hardening_failure(mode, config));
    }
    for outcome in &outcomes {
        println!(
            "{}: {} after {:?}: {}",
            outcome.what,
            if outcome.passed { "ok" } else { "WRONG" },
            outcome.took,
            outcome.said
        );
    }
    let wrong: Vec<&str> = outcomes
        .iter()
        .filter(|outcome| !outcome.passed)
        .map(|outcome| outcome.what.as_str())
        .collect();
    assert_eq!(wrong, [] as [&str; 0], "ends misreported or late");
}

/// A thread that reaps every child of this process as soon as it can, as a supervisor would.
fn start_reaping_everything() -> Arc<AtomicUsize> {
    let reaped = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&reaped);
    // It runs until this process ends.
    std::thread::spawn(move || {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => {
                    std::thread::sleep(Duration::from_micros(200));
                }
                Ok(_) => {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    reaped
}

/// Exit statuses the SIGCHLD handler collected.
static REAPED_BY_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// A SIGCHLD handler that reaps every child that has ended. Async-signal-safe: waitpid and an
/// atomic add.
extern "C" fn reap_every_child(_signal: libc::c_int) {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
        REAPED_BY_HANDLER.fetch_add(1, Ordering::Relaxed);
    }
}

fn run(test: &str, role: &str) {
    match common::role().as_deref() {
        Some("sigchld-ignored") => {
            // SAFETY: SIG_IGN installs no code; this process plays a host that ignores SIGCHLD.
            unsafe { nix::sys::signal::signal(Signal::SIGCHLD, SigHandler::SigIgn) }.unwrap();
            play_host();
            println!("HOST DONE");
        }
        Some("reaping-thread") => {
            let reaped = start_reaping_everything();
            play_host();
            // How many exit statuses the reaper took before keyward could (it races keyward's
            // own wait, so the number varies).
            let reaped = reaped.load(Ordering::Relaxed);
            println!("the host's reaping thread collected {reaped} exit statuses");
            println!("HOST DONE");
        }
        Some("reaping-handler") => {
            let action = SigAction::new(
                SigHandler::Handler(reap_every_child),
                SaFlags::SA_RESTART | SaFlags::SA_NOCLDSTOP,
                SigSet::empty(),
            );
            // SAFETY: the handler only calls waitpid and adds to an atomic, both
            // async-signal-safe.
            unsafe { nix::sys::signal::sigaction(Signal::SIGCHLD, &action) }.unwrap();
            play_host();
            let reaped = REAPED_BY_HANDLER.load(Ordering::Relaxed);
            println!("the host's SIGCHLD handler collected {reaped} exit statuses");
            println!("HOST DONE");
        }
        Some(other) => panic!("unknown role {other}"),
        None => {
            common::run_host_role(test, role, Duration::from_secs(120));
        }
    }
}

#[test]
fn a_host_that_ignores_sigchld_still_learns_how_its_signer_ended() {
    run(
        "a_host_that_ignores_sigchld_still_learns_how_its_signer_ended",
        "sigchld-ignored",
    );
}

#[test]
fn a_host_that_reaps_every_child_still_learns_how_its_signer_ended() {
    run(
        "a_host_that_reaps_every_child_still_learns_how_its_signer_ended",
        "reaping-thread",
    );
}

#[test]
fn a_host_whose_sigchld_handler_reaps_every_child_still_learns_how_its_signer_ended() {
    run(
        "a_host_whose_sigchld_handler_reaps_every_child_still_learns_how_its_signer_ended",
        "reaping-handler",
    );
}
