//! Spawning is fork-safe: a signer forked while other threads hold a std `Mutex`, the stdout
//! lock, the environment lock and the allocator starts, serves, and never deadlocks.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// This binary has one test, and races `std::env::set_var` against fork on purpose (see the
// SAFETY comment in `stress_environment`); nothing else may be unsafe.
#![allow(unsafe_code)]

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keyward::{Config, KeyService, KeySpec, Purpose, SecretService};

/// Each spawn and its requests must finish within this, or the test fails (a deadlocked signer
/// would otherwise hang it).
const DEADLINE: Duration = Duration::from_secs(10);
const REQUESTS_PER_SPAWN: usize = 100;

/// Held by a host thread for the whole run.
static HELD_FOR_THE_WHOLE_RUN: Mutex<u64> = Mutex::new(0);

/// The host threads that keep locks busy while the signers are forked.
struct Stressors {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
}

impl Stressors {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(Barrier::new(2));
        let mut threads = Vec::new();
        {
            let (stop, held) = (Arc::clone(&stop), Arc::clone(&held));
            threads.push(std::thread::spawn(move || {
                let mut guard = HELD_FOR_THE_WHOLE_RUN.lock().unwrap();
                held.wait();
                while !stop.load(Ordering::Relaxed) {
                    *guard += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }));
        }
        for stress in [stress_stdout, stress_environment, stress_allocator] {
            let (stop, rounds) = (Arc::clone(&stop), Arc::clone(&rounds));
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    stress();
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        held.wait();
        assert!(HELD_FOR_THE_WHOLE_RUN.try_lock().is_err());
        Self {
            stop,
            rounds,
            threads,
        }
    }

    fn stop(self) -> usize {
        assert!(
            HELD_FOR_THE_WHOLE_RUN.try_lock().is_err(),
            "the mutex was released early"
        );
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        self.rounds.load(Ordering::Relaxed)
    }
}

/// Holds the process's real stdout lock (not the test harness's capture) most of the time,
/// writing and flushing under it.
fn stress_stdout() {
    let mut stdout = std::io::stdout().lock();
    // Zero-length writes keep the test's output readable while taking the same lock and buffer
    // path as any write.
    stdout.write_all(b"").unwrap();
    stdout.flush().unwrap();
    std::thread::sleep(Duration::from_micros(200));
    drop(stdout);
    // And through `print!`, which the harness captures.
    print!("");
}

fn stress_environment() {
    for value in ["a", "bb", "ccc"] {
        // SAFETY: `set_var` is unsafe because another thread may read the environment at the
        // same time. This test binary has exactly one test, and its only other threads are this
        // file's stressors and the library's; the race against fork (which copies the
        // environment lock in whatever state it is in) is the point of the test. The library
        // reads no environment after fork: a forked signer never calls `std::env`, and a
        // fork-exec signer is started with an empty environment.
        unsafe { std::env::set_var("KEYWARD_FORK_SAFETY_PROBE", value) };
    }
    std::thread::yield_now();
}

fn stress_allocator() {
    let blocks: Vec<Vec<u8>> = (1..64).map(|size| vec![0u8; size * 97]).collect();
    std::hint::black_box(blocks);
    std::thread::yield_now();
}

/// Spawns `spawns` services one after the other on a worker thread; each must serve
/// `REQUESTS_PER_SPAWN` signatures that verify, within `DEADLINE` of its start.
fn spawn_repeatedly(mode: &'static str, config: Config, spawns: usize) {
    let (done, finished) = mpsc::channel::<Result<usize, String>>();
    // Detached, not scoped: if a spawn deadlocks, the test must fail, not wait for it.
    let _worker = std::thread::spawn(move || {
        for spawn in 0..spawns {
            let result = (|| {
                let config = config.clone().with_spawn_timeout(DEADLINE / 2);
                let service = SecretService::spawn(config).map_err(|e| e.to_string())?;
                let key = service
                    .generate_key(KeySpec::new(Purpose::Account))
                    .map_err(|e| e.to_string())?;
                let public = *service
                    .public_key(key)
                    .map_err(|e| e.to_string())?
                    .as_ed25519()
                    .ok_or("not an Ed25519 key")?;
                let mut verified = 0;
                for request in 0..REQUESTS_PER_SPAWN {
                    let mut digest = [0u8; 32];
                    digest[..8].copy_from_slice(&(spawn as u64).to_le_bytes());
                    digest[8..16].copy_from_slice(&(request as u64).to_le_bytes());
                    let signature = service.sign(key, &digest).map_err(|e| e.to_string())?;
                    public
                        .verify_strict(&digest, &signature)
                        .map_err(|e| e.to_string())?;
                    verified += 1;
                }
                Ok(verified)
            })();
            let failed = result.is_err();
            if done.send(result).is_err() || failed {
                return;
            }
        }
    });
    for spawn in 0..spawns {
        let start = Instant::now();
        match finished.recv_timeout(DEADLINE) {
            Ok(Ok(verified)) => assert_eq!(verified, REQUESTS_PER_SPAWN, "{mode} #{spawn}"),
            Ok(Err(error)) => panic!("{mode}: spawn #{spawn} failed: {error}"),
            Err(_) => panic!(
                "{mode}: spawn #{spawn} and its {REQUESTS_PER_SPAWN} requests did not finish \
                 within {DEADLINE:?} ({:?} waited): a deadlock",
                start.elapsed()
            ),
        }
    }
}

#[test]
fn signers_forked_while_host_threads_hold_locks_start_and_serve() {
    let stressors = Stressors::start();
    let modes = common::spawn_modes();
    let spawns_per_mode = |mode: &str| if mode == "fork" { 100 } else { 25 };
    assert!(modes.iter().any(|(mode, _)| *mode == "fork"));
    for (mode, config) in modes {
        spawn_repeatedly(mode, config, spawns_per_mode(mode));
    }
    let rounds = stressors.stop();
    // The stressors really ran alongside the spawns.
    assert!(rounds > 100, "only {rounds} stress rounds");
}
