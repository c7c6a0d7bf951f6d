//! Whatever ends the signer, every call in flight and every later call returns promptly with a typed error that says how; the host's signal dispositions are untouched.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The one unsafe call in this file sets the host's SIGPIPE disposition in a subprocess role (see
// `role_default_sigpipe`); the library itself must never need that.
#![allow(unsafe_code)]

mod common;
mod fault_util;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use fault_util::{all_threads_stopped, is_dead, is_reaped, process_state, signal_child, wait_for};
use keyward::{
    Config, Error, KeyId, KeyService, KeySpec, Purpose, RestartPolicy, SecretService, SignerEnd,
};
use nix::sys::signal::Signal;

/// How long any call may take to return once the signer is dead.
const RETURN_DEADLINE: Duration = Duration::from_secs(5);

fn spawn(mode: &str, config: Config) -> SecretService {
    SecretService::spawn(config).unwrap_or_else(|e| panic!("{mode}: spawn: {e}"))
}

/// A role of this test binary, run with its output captured.
fn spawn_role(test: &str, role: &str) -> std::process::Child {
    common::rerun_self(test, role)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn serving_key(service: &SecretService) -> KeyId {
    common::serving_key(service)
}

/// Sends `signal` to the signer and waits until the kernel has reaped it (the watcher thread
/// reaps it through its pidfd).
fn end_signer(mode: &str, service: &SecretService, signal: Signal) -> i32 {
    let pid = service.pid();
    assert!(signal_child(pid, signal), "{mode}: could not signal {pid}");
    assert!(
        wait_for(Duration::from_secs(3), || is_reaped(pid)),
        "{mode}: signer {pid} not reaped after {signal:?} (state {:?})",
        process_state(pid)
    );
    pid
}

fn assert_ended_by(mode: &str, error: &Error, expected: SignerEnd) {
    match error {
        Error::SignerEnded { end, .. } if *end == expected => {}
        other => panic!("{mode}: expected SignerEnded({expected:?}), got {other:?}"),
    }
}

#[test]
fn each_fatal_signal_is_reported_as_the_signal_that_ended_the_signer() {
    for (mode, config) in common::spawn_modes() {
        for signal in [
            Signal::SIGKILL,
            Signal::SIGSEGV,
            Signal::SIGABRT,
            Signal::SIGTERM,
        ] {
            let service = spawn(mode, config.clone());
            let key = serving_key(&service);
            end_signer(mode, &service, signal);
            let started = Instant::now();
            let error = service.sign(key, &[1; 32]).unwrap_err();
            let expected = SignerEnd::Killed {
                signal: signal as i32,
            };
            assert_ended_by(mode, &error, expected);
            match error {
                Error::SignerEnded { generation, .. } => assert_eq!(generation, 1),
                _ => unreachable!(),
            }
            let message = error.to_string();
            assert!(
                message.contains(&format!("killed by signal {}", signal as i32))
                    && message.contains("respawn()"),
                "{mode}: {message}"
            );
            // Every kind of call fails the same way, not only the one that noticed.
            assert_ended_by(mode, &service.public_key(key).unwrap_err(), expected);
            assert_ended_by(
                mode,
                &service
                    .generate_key(KeySpec::new(Purpose::Account))
                    .unwrap_err(),
                expected,
            );
            assert_ended_by(mode, &service.list_keys().unwrap_err(), expected);
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{mode} {signal:?}: four calls to a dead signer took {:?}",
                started.elapsed()
            );
            assert!(!service.is_running());
        }
    }
}

/// Signs on many threads; kills the signer while they are at it. Every thread's call in flight
/// returns SignerEnded{Killed 9} within the deadline; later calls fail at once; respawn gives
/// generation 2 and a working signer; old keys are refused as belonging to an ended signer.
#[test]
fn calls_in_flight_on_many_threads_all_return_when_the_signer_is_killed() {
    const THREADS: usize = 8;
    for (mode, config) in common::spawn_modes() {
        let service = Arc::new(spawn(mode, config));
        let key = serving_key(&service);
        let verifying = *service.public_key(key).unwrap().as_ed25519().unwrap();
        let successes = Arc::new(AtomicU64::new(0));
        let (done_tx, done_rx) = mpsc::channel();
        let mut active = Vec::new();
        for thread in 0..THREADS {
            let service = Arc::clone(&service);
            let successes = Arc::clone(&successes);
            let done = done_tx.clone();
            let started = Arc::new(AtomicBool::new(false));
            active.push(Arc::clone(&started));
            std::thread::spawn(move || {
                let mut count = 0u64;
                let error = loop {
                    let digest = [u8::try_from(thread).unwrap(); 32];
                    match service.sign(key, &digest) {
                        Ok(signature) => {
                            verifying.verify_strict(&digest, &signature).unwrap();
                            count += 1;
                            successes.fetch_add(1, Ordering::Relaxed);
                            started.store(true, Ordering::Relaxed);
                        }
                        Err(error) => break error,
                    }
                };
                let _ = done.send((thread, count, error, Instant::now()));
            });
        }
        drop(done_tx);
        assert!(
            wait_for(Duration::from_secs(10), || active
                .iter()
                .all(|started| started.load(Ordering::Relaxed))),
            "{mode}: not every thread got a signature"
        );
        let before_kill = successes.load(Ordering::Relaxed);
        let pid = service.pid();
        assert!(signal_child(pid, Signal::SIGKILL));
        let killed_at = Instant::now();
        let mut returned = Vec::new();
        while returned.len() < THREADS {
            let left = RETURN_DEADLINE.saturating_sub(killed_at.elapsed());
            match done_rx.recv_timeout(left) {
                Ok(report) => returned.push(report),
                Err(_) => panic!(
                    "{mode}: only {} of {THREADS} callers returned within {RETURN_DEADLINE:?} of the kill",
                    returned.len()
                ),
            }
        }
        let slowest = returned
            .iter()
            .map(|(_, _, _, at)| at.duration_since(killed_at))
            .max()
            .unwrap();
        for (thread, count, error, _) in &returned {
            assert!(*count > 0, "{mode}: thread {thread} never signed");
            assert_ended_by(mode, error, SignerEnd::Killed { signal: 9 });
        }
        println!(
            "{mode}: {before_kill} signatures before the kill; all {THREADS} callers returned within {slowest:?}"
        );

        // Later calls fail fast, and the service says it is not running.
        assert!(wait_for(Duration::from_secs(3), || is_reaped(pid)));
        assert!(!service.is_running());
        let started = Instant::now();
        for _ in 0..100 {
            assert_ended_by(
                mode,
                &service.sign(key, &[0; 32]).unwrap_err(),
                SignerEnd::Killed { signal: 9 },
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{mode}: 100 calls to a dead signer took {:?}",
            started.elapsed()
        );

        // Respawn: generation 2, working; the old key is refused as from an ended signer.
        assert_eq!(service.respawn().unwrap(), 2, "{mode}");
        assert_eq!(service.generation(), 2);
        assert!(service.is_running());
        assert_ne!(service.pid(), pid);
        let fresh = serving_key(&service);
        assert_ne!(
            fresh, key,
            "{mode}: the new signer names its keys in a new store"
        );
        match service.sign(key, &[0; 32]).unwrap_err() {
            error @ Error::KeyFromEndedSigner { current: 2, .. } => {
                let message = error.to_string();
                assert!(
                    message.contains("generation 1, which has ended"),
                    "{mode}: {message}"
                );
            }
            other => panic!("{mode}: expected KeyFromEndedSigner, got {other:?}"),
        }
        assert!(matches!(
            service.public_key(key),
            Err(Error::KeyFromEndedSigner { current: 2, .. })
        ));
        assert!(matches!(
            service.drop_key(key),
            Err(Error::KeyFromEndedSigner { current: 2, .. })
        ));
        assert_eq!(service.list_keys().unwrap().len(), 1);
    }
}

#[test]
fn automatic_restart_replaces_a_dead_signer() {
    for (mode, config) in common::spawn_modes() {
        let service = spawn(mode, config.with_restart(RestartPolicy::Automatic));
        let key = serving_key(&service);
        let pid = end_signer(mode, &service, Signal::SIGKILL);
        // The first call sees the end (and fails: the keys are gone) ...
        assert_ended_by(
            mode,
            &service.sign(key, &[1; 32]).unwrap_err(),
            SignerEnd::Killed { signal: 9 },
        );
        // ... and has already started generation 2.
        assert_eq!(service.generation(), 2, "{mode}");
        assert!(service.is_running());
        assert_ne!(service.pid(), pid);
        assert!(matches!(
            service.sign(key, &[1; 32]),
            Err(Error::KeyFromEndedSigner { current: 2, .. })
        ));
        let fresh = serving_key(&service);
        assert_ne!(
            fresh, key,
            "{mode}: the new signer names its keys in a new store"
        );

        // A second death is handled the same way.
        end_signer(mode, &service, Signal::SIGTERM);
        assert_ended_by(
            mode,
            &service.list_keys().unwrap_err(),
            SignerEnd::Killed { signal: 15 },
        );
        assert_eq!(service.generation(), 3, "{mode}");
        serving_key(&service);
    }
}

/// A stopped signer (SIGSTOP: a debugger, `kill -STOP`, job control) is not a hung one: the call
/// returns `Error::SignerStopped` after the deadline, the signer is left alone with its keys, and
/// once continued it serves again, the same keys, the late answer to the timed-out call dropped.
/// (A running signer that misses the deadline is killed as hung: `hostile_signer.rs`.)
#[test]
fn a_stopped_signer_times_out_but_keeps_its_keys_and_serves_once_continued() {
    let timeout = Duration::from_millis(300);
    for (mode, config) in common::spawn_modes() {
        let service = spawn(mode, config.with_request_timeout(timeout));
        let key = serving_key(&service);
        let verifying = *service.public_key(key).unwrap().as_ed25519().unwrap();
        let pid = service.pid();
        assert!(signal_child(pid, Signal::SIGSTOP));
        assert!(
            wait_for(Duration::from_secs(3), || all_threads_stopped(pid)),
            "{mode}: signer did not stop"
        );
        let started = Instant::now();
        let error = service.sign(key, &[5; 32]).unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(error, Error::SignerStopped(t) if t == timeout),
            "{mode}: {error:?}"
        );
        assert!(
            took >= timeout && took < timeout + Duration::from_secs(2),
            "{mode}: the timed-out call took {took:?}"
        );
        assert!(error.to_string().contains("keeps its keys"), "{error}");
        // Left alone: still there, still stopped, still the service's signer.
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            all_threads_stopped(pid),
            "{mode}: state {:?}",
            process_state(pid)
        );
        assert!(service.is_running());
        assert!(signal_child(pid, Signal::SIGCONT));
        for round in 0..20u8 {
            let digest = [round; 32];
            let signature = service.sign(key, &digest).unwrap();
            verifying.verify_strict(&digest, &signature).unwrap();
        }
        assert_eq!((service.generation(), service.pid()), (1, pid), "{mode}");
    }
}

/// Callers on several threads waiting when the signer is stopped: every one returns within the
/// deadline (plus a margin) with `SignerStopped`; none hangs, and once continued the signer
/// serves them all again.
#[test]
fn every_caller_waiting_on_a_stopped_signer_returns_after_the_deadline() {
    const THREADS: usize = 6;
    let timeout = Duration::from_millis(300);
    for (mode, config) in common::spawn_modes() {
        let service = Arc::new(spawn(mode, config.with_request_timeout(timeout)));
        let key = serving_key(&service);
        let (done_tx, done_rx) = mpsc::channel();
        for _ in 0..THREADS {
            let service = Arc::clone(&service);
            let done = done_tx.clone();
            std::thread::spawn(move || {
                let error = loop {
                    if let Err(error) = service.sign(key, &[7; 32]) {
                        break error;
                    }
                };
                let _ = done.send((error, Instant::now()));
            });
        }
        drop(done_tx);
        std::thread::sleep(Duration::from_millis(50));
        let pid = service.pid();
        assert!(signal_child(pid, Signal::SIGSTOP));
        let stopped_at = Instant::now();
        for _ in 0..THREADS {
            let (error, at) = done_rx
                .recv_timeout(timeout + RETURN_DEADLINE)
                .unwrap_or_else(|_| panic!("{mode}: a caller hung on a stopped signer"));
            assert!(
                matches!(error, Error::SignerStopped(t) if t == timeout),
                "{mode}: {error:?}"
            );
            assert!(at.duration_since(stopped_at) < timeout + Duration::from_secs(2));
        }
        assert!(service.is_running(), "{mode}: a stopped signer was ended");
        assert!(signal_child(pid, Signal::SIGCONT));
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let service = &service;
                scope.spawn(move || {
                    for round in 0..10 {
                        service
                            .sign(key, &[u8::try_from(thread * 10 + round).unwrap(); 32])
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(service.generation(), 1, "{mode}");
    }
}

/// A signer that is paused and resumed within the deadline just answers late: a stop by SIGSTOP
/// (a debugger, `kill -STOP`), then SIGCONT. The kernel resumes the poll the stop interrupted
/// through `restart_syscall`, which the seccomp policy must therefore allow (without it the
/// resumed signer was killed by its own sandbox: `SignerEnded { end: SandboxViolation }`).
///
/// Ctrl-Z in the host's terminal (SIGTSTP; the signer is in the host's process group) takes the
/// same path. It is not sent here: the kernel discards SIGTSTP in an orphaned process group,
/// which is what a test run detached from a terminal (as in CI) can be.
#[test]
fn a_signer_paused_and_resumed_within_the_deadline_still_answers() {
    for (mode, config) in common::spawn_modes() {
        let service = spawn(mode, config.with_request_timeout(Duration::from_secs(3)));
        let key = serving_key(&service);
        let pid = service.pid();
        assert!(signal_child(pid, Signal::SIGSTOP));
        assert!(
            wait_for(Duration::from_secs(3), || all_threads_stopped(pid)),
            "{mode}: SIGSTOP did not stop the signer"
        );
        let resumer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            assert!(signal_child(pid, Signal::SIGCONT));
        });
        let started = Instant::now();
        let signed = service.sign(key, &[8; 32]);
        resumer.join().unwrap();
        let signature =
            signed.unwrap_or_else(|error| panic!("{mode}: a signer paused and resumed: {error:?}"));
        assert!(started.elapsed() >= Duration::from_millis(150));
        service
            .public_key(key)
            .unwrap()
            .as_ed25519()
            .unwrap()
            .verify_strict(&[8; 32], &signature)
            .unwrap();
        assert!(service.is_running(), "{mode}");
        assert_eq!(service.generation(), 1);
    }
}

/// The role for `parent_death_takes_the_signer_with_it`: spawn a service in each mode, print
/// the signers' pids, sleep (the test kills us).
#[test]
#[ignore = "a subprocess role of parent_death_takes_the_signer_with_it; runs that test when invoked directly"]
fn role_parent_that_dies() {
    if common::role().as_deref() != Some("parent-death") {
        return parent_death_takes_the_signer_with_it();
    }
    let services: Vec<SecretService> = common::spawn_modes()
        .into_iter()
        .map(|(mode, config)| {
            let service = spawn(mode, config);
            serving_key(&service);
            service
        })
        .collect();
    let pids: Vec<String> = services.iter().map(|s| s.pid().to_string()).collect();
    println!("SIGNER_PIDS {}", pids.join(" "));
    // Bounded, in case the test never kills us.
    std::thread::sleep(Duration::from_secs(30));
}

#[test]
fn parent_death_takes_the_signer_with_it() {
    let mut parent = spawn_role("role_parent_that_dies", "parent-death");
    let stdout = parent.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some((_, pids)) = line.split_once("SIGNER_PIDS ") {
                let pids: Vec<i32> = pids.split(' ').map(|p| p.parse().unwrap()).collect();
                let _ = tx.send(pids);
            }
        }
    });
    let pids = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the role did not report its signers");
    assert_eq!(pids.len(), 2);
    let parent_pid = i32::try_from(parent.id()).unwrap();
    for &pid in &pids {
        assert!(!is_dead(pid), "signer {pid} not running before the kill");
        assert_eq!(
            fault_util::parent_of(pid),
            Some(parent_pid),
            "signer {pid} is not the role's child"
        );
    }
    parent.kill().unwrap(); // SIGKILL: no destructor, no handler runs in the parent.
    let killed_at = Instant::now();
    let status = parent.wait().unwrap();
    assert_eq!(status.signal(), Some(9));
    for &pid in &pids {
        let gone = wait_for(Duration::from_secs(1), || is_dead(pid));
        assert!(
            gone,
            "signer {pid} still alive {:?} after its parent was killed (state {:?})",
            killed_at.elapsed(),
            process_state(pid)
        );
    }
    let states: Vec<Option<char>> = pids.iter().map(|&pid| process_state(pid)).collect();
    println!(
        "both signers dead within {:?} of the parent's SIGKILL (states now: {states:?}; None = reaped)",
        killed_at.elapsed()
    );
}

/// The process's signal dispositions and this thread's mask, as the kernel shows them.
#[cfg(feature = "test-support")]
fn signal_dispositions() -> [Option<String>; 3] {
    [
        fault_util::status_field("/proc/self/status", "SigCgt"),
        fault_util::status_field("/proc/self/status", "SigIgn"),
        fault_util::status_field("/proc/thread-self/status", "SigBlk"),
    ]
}

#[test]
#[cfg(feature = "test-support")]
fn the_library_installs_no_signal_handler_and_leaves_the_mask_alone() {
    let before = signal_dispositions();
    assert!(before.iter().all(Option::is_some));
    for (mode, config) in common::spawn_modes() {
        let service = spawn(mode, config);
        let key = serving_key(&service);
        assert_eq!(signal_dispositions(), before, "{mode}: after spawn");
        end_signer(mode, &service, Signal::SIGKILL);
        assert!(service.sign(key, &[0; 32]).is_err());
        service.respawn().unwrap();
        serving_key(&service);
        drop(service);
        assert_eq!(signal_dispositions(), before, "{mode}: after a death");
    }
    // A write into a closed pipe (EPIPE) also leaves nothing pending or blocked.
    let raw = keyward::testing::RawSigner::spawn(Config::default()).unwrap();
    let pid = raw.pid();
    assert!(signal_child(pid, Signal::SIGKILL));
    assert!(wait_for(Duration::from_secs(3), || is_reaped(pid)));
    let error = raw
        .write(&keyward::testing::list_keys_frame(1))
        .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe);
    assert_eq!(signal_dispositions(), before, "after EPIPE");
    assert_eq!(
        fault_util::status_field("/proc/thread-self/status", "SigPnd").as_deref(),
        Some("0000000000000000"),
        "a SIGPIPE was left pending on this thread"
    );
}

/// The role for `a_host_with_default_sigpipe_survives_a_dead_signer`.
#[test]
#[cfg(feature = "test-support")]
#[ignore = "a subprocess role of a_host_with_default_sigpipe_survives_a_dead_signer; runs that test when invoked directly"]
fn role_default_sigpipe() {
    if common::role().as_deref() != Some("default-sigpipe") {
        return a_host_with_default_sigpipe_survives_a_dead_signer();
    }
    use nix::sys::signal::{SigHandler, signal};
    // SAFETY: SIG_DFL installs no code; this subprocess runs only this test, on this thread,
    // before it starts any other thread, so no other code races on the disposition.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.unwrap();
    let ignored = u64::from_str_radix(
        &fault_util::status_field("/proc/self/status", "SigIgn").unwrap(),
        16,
    )
    .unwrap();
    assert_eq!(
        ignored & (1 << (libc::SIGPIPE - 1)),
        0,
        "SIGPIPE still ignored"
    );

    // The raw pipe: a write into a dead signer's request pipe is EPIPE, not a SIGPIPE death.
    let raw = keyward::testing::RawSigner::spawn(Config::default()).unwrap();
    let pid = raw.pid();
    assert!(signal_child(pid, Signal::SIGKILL));
    assert!(wait_for(Duration::from_secs(3), || is_reaped(pid)));
    for id in 1..=3 {
        let error = raw
            .write(&keyward::testing::list_keys_frame(id))
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe);
    }
    drop(raw);

    // The public API, with callers racing the kill (some write into the closed pipe).
    for (mode, config) in common::spawn_modes() {
        let service = Arc::new(spawn(mode, config));
        let key = serving_key(&service);
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let service = Arc::clone(&service);
                std::thread::spawn(move || while service.sign(key, &[2; 32]).is_ok() {})
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        end_signer(mode, &service, Signal::SIGKILL);
        for caller in callers {
            caller.join().unwrap();
        }
        assert!(service.sign(key, &[2; 32]).is_err());
    }
    println!("DEFAULT_SIGPIPE_ROLE_SURVIVED");
}

#[test]
#[cfg(feature = "test-support")]
fn a_host_with_default_sigpipe_survives_a_dead_signer() {
    let child = spawn_role("role_default_sigpipe", "default-sigpipe");
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.signal(),
        None,
        "the host died by a signal: {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && stdout.contains("DEFAULT_SIGPIPE_ROLE_SURVIVED"),
        "the role failed: {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The role for `a_signer_can_be_spawned_while_a_host_thread_panics`: a host thread is inside
/// its panic hook (holding std's panic-hook lock) while the service spawns its signer.
#[test]
#[ignore = "a subprocess role of a_signer_can_be_spawned_while_a_host_thread_panics; runs that test when invoked directly"]
fn role_host_panicking_during_spawn() {
    if common::role().as_deref() != Some("host-panicking") {
        return a_signer_can_be_spawned_while_a_host_thread_panics();
    }
    // A slow panic hook: a logger or crash reporter that takes a moment.
    std::panic::set_hook(Box::new(|_| std::thread::sleep(Duration::from_secs(2))));
    for (mode, config) in common::spawn_modes() {
        let panicking = std::thread::spawn(|| panic!("a host thread panics"));
        // Give the panic time to enter the hook.
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        let spawned = SecretService::spawn(config.with_spawn_timeout(Duration::from_secs(5)));
        let took = started.elapsed();
        assert!(panicking.join().is_err());
        match spawned {
            Ok(service) => {
                serving_key(&service);
                println!("{mode}: spawned in {took:?} while a host thread was panicking");
            }
            Err(error) => {
                println!("HOST_PANIC_SPAWN_FAILED {mode}: after {took:?}: {error:?}");
                std::process::exit(3);
            }
        }
    }
    println!("HOST_PANIC_SPAWN_OK");
}

/// A host thread that is panicking (inside its panic hook) while a signer is forked must not
/// stop the signer from starting. (A forked signer once called `std::panic::set_hook`, which
/// waits for std's panic-hook lock; a host thread inside its hook held it at the moment of fork,
/// and in the child nobody ever released it.)
#[test]
fn a_signer_can_be_spawned_while_a_host_thread_panics() {
    let child = spawn_role("role_host_panicking_during_spawn", "host-panicking");
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("HOST_PANIC_SPAWN_OK"),
        "{:?}\n{stdout}",
        output.status
    );
}
