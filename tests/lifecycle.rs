//! The signer is a separate, sandboxed child process for exactly as long as its service (or
//! signer generation) lives: dropping or replacing it ends and reaps it, leaving no process and
//! no zombie behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use keyward::{KeyService, KeySpec, Purpose, SecretService};

/// The tests here scan this process's children; run them one at a time so that one test's
/// signers (briefly zombies while being reaped) cannot show up in another's scan.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn our_pid() -> i32 {
    i32::try_from(std::process::id()).unwrap()
}

/// `(pid, parent pid, state)` from `/proc/<pid>/stat`, if the process exists.
fn stat(pid: i32) -> Option<(i32, i32, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: parse after the last ')'.
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((pid, parent, state))
}

/// Every process whose parent is this process, with its state.
fn our_children() -> Vec<(i32, char)> {
    let us = our_pid();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .filter(|&(_, parent, _)| parent == us)
        .map(|(pid, _, state)| (pid, state))
        .collect()
}

/// The process `pid` is gone and reaped: no `/proc/<pid>`, and no zombie child of ours at all.
fn assert_gone_and_reaped(mode: &str, pid: i32) {
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "{mode}: signer {pid} still exists: {:?}",
        stat(pid)
    );
    assert!(!Path::new(&format!("/proc/{pid}/status")).exists());
    let children = our_children();
    assert!(
        children.iter().all(|&(child, _)| child != pid),
        "{mode}: {pid} is still our child"
    );
    let zombies: Vec<_> = children.iter().filter(|&&(_, s)| s == 'Z').collect();
    assert!(zombies.is_empty(), "{mode}: zombie children {zombies:?}");
}

/// Exercises a service so that dropping it is not dropping an idle, empty signer.
fn use_it(service: &SecretService) {
    for purpose in Purpose::ALL {
        service.generate_key(KeySpec::new(purpose)).unwrap();
    }
    let key = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    let public = *service.public_key(key).unwrap().as_ed25519().unwrap();
    let signature = service.sign(key, &[9; 32]).unwrap();
    public.verify_strict(&[9; 32], &signature).unwrap();
}

#[test]
fn the_signer_is_a_sandboxed_child_process_of_ours() {
    let _serial = one_at_a_time();
    for (mode, config) in common::spawn_modes() {
        let workers = config.workers();
        let service = SecretService::spawn(config).unwrap();
        let pid = service.pid();
        assert!(pid > 0, "{mode}");
        assert_ne!(pid, our_pid(), "{mode}: the signer is this process");
        let (_, parent, state) = stat(pid).unwrap();
        assert_eq!(parent, our_pid(), "{mode}: the signer is not our child");
        assert_ne!(state, 'Z', "{mode}");
        assert!(our_children().iter().any(|&(child, _)| child == pid));
        assert!(service.is_running(), "{mode}");

        use_it(&service);
        let status = service.status().unwrap();
        assert_eq!(status.pid, pid, "{mode}");
        assert_eq!(status.generation, 1, "{mode}");
        assert_eq!(status.seccomp_mode, Some(2), "{mode}: {status}");
        assert!(
            status.seccomp_filters.is_some_and(|n| n >= 1),
            "{mode}: {status}"
        );
        assert_eq!(status.no_new_privs, Some(true), "{mode}: {status}");
        assert_eq!(status.effective_capabilities, Some(0), "{mode}: {status}");
        assert_eq!(status.permitted_capabilities, Some(0), "{mode}: {status}");
        assert_eq!(
            status.threads,
            Some(u32::try_from(workers).unwrap()),
            "{mode}: one thread per worker"
        );
        assert!(!status.key_mappings.is_empty(), "{mode}: {status}");
    }
}

#[test]
fn dropping_the_service_ends_and_reaps_the_signer() {
    let _serial = one_at_a_time();
    for (mode, config) in common::spawn_modes() {
        for cycle in 0..3 {
            let service = SecretService::spawn(config.clone()).unwrap();
            let pid = service.pid();
            assert!(stat(pid).is_some(), "{mode} #{cycle}: not running");
            if cycle > 0 {
                use_it(&service);
            }
            drop(service);
            // Drop returns only once the signer is reaped.
            assert_gone_and_reaped(mode, pid);
        }
    }
}

#[test]
fn a_signer_replaced_while_calls_are_in_flight_is_reaped_once_they_finish() {
    let _serial = one_at_a_time();
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config).unwrap();
        let old = service.pid();
        let key = service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        let public = *service.public_key(key).unwrap().as_ed25519().unwrap();
        let signed = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for thread in 0u8..4 {
                let (service, signed) = (&service, &signed);
                scope.spawn(move || {
                    // Sign until the key's signer is replaced; every answer before that is a
                    // good signature, and the only refusal is the one for a replaced signer.
                    for _ in 0..100_000 {
                        match service.sign(key, &[thread; 32]) {
                            Ok(signature) => {
                                public.verify_strict(&[thread; 32], &signature).unwrap();
                                signed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(keyward::Error::KeyFromEndedSigner {
                                key: k,
                                ended: 1,
                                current: 2,
                            }) if k == key => {
                                return;
                            }
                            Err(error) => panic!("{mode}: {error:?}"),
                        }
                    }
                    panic!("{mode}: the signer was never replaced");
                });
            }
            while signed.load(std::sync::atomic::Ordering::Relaxed) < 200 {
                std::thread::yield_now();
            }
            assert_eq!(service.respawn().unwrap(), 2, "{mode}");
        });
        assert_gone_and_reaped(mode, old);
        assert!(service.is_running(), "{mode}");
        let pid = service.pid();
        drop(service);
        assert_gone_and_reaped(mode, pid);
    }
}

#[test]
fn respawn_ends_and_reaps_the_replaced_signer() {
    let _serial = one_at_a_time();
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config).unwrap();
        let mut pids = vec![service.pid()];
        for generation in 2..=4 {
            use_it(&service);
            let old = service.pid();
            assert_eq!(service.respawn().unwrap(), generation, "{mode}");
            assert_eq!(service.generation(), generation);
            assert_ne!(service.pid(), old, "{mode}");
            assert!(service.is_running());
            let status = service.status().unwrap();
            assert_eq!(status.generation, generation);
            assert_eq!(status.seccomp_mode, Some(2), "{mode}: {status}");
            assert!(!Path::new(&format!("/proc/{old}")).exists(), "{mode}");
            pids.push(service.pid());
        }
        drop(service);
        assert_eq!(pids.len(), 4);
        for pid in pids {
            assert_gone_and_reaped(mode, pid);
        }
    }
}
