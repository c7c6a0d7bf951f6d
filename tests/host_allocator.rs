//! A host whose global allocator has no fork handler (a spin lock around the system allocator,
//! as simple allocators and arena wrappers have) and threads that allocate all the time: a
//! fork-exec signer still starts every time, because nothing between fork and exec allocates. A
//! copy of the allocator's lock, taken by another thread at the moment of fork, stays taken
//! forever in the child; one allocation there and the child never reaches exec.
//!
//! A forked signer (`SpawnMode::Fork`) keeps running in the forked copy and allocates as it
//! starts (its workers, its buffers), so it needs an allocator that is fork-safe: one that takes
//! its locks before fork and releases them in both processes after, as glibc's malloc and
//! jemalloc do through their fork handlers. The second test shows the same spin lock with such a
//! handler serving every forked signer.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// A global allocator is unsafe to implement, and registering its fork handler
// (`pthread_atfork`) is unsafe; both are here to play the host, not the library.
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keyward::{Config, KeyService, KeySpec, Purpose, SecretService, SpawnMode};

const SPAWNS: usize = 20;
/// Each spawn must be ready within this (a child stuck on the allocator's lock never is).
const SPAWN_DEADLINE: Duration = Duration::from_secs(2);

/// A global allocator that serialises the system allocator behind a spin lock, with no fork
/// handler unless one is registered (`register_fork_handler`).
struct SpinLockAllocator {
    locked: AtomicBool,
}

impl SpinLockAllocator {
    fn lock(&self) {
        let mut spins = 0u32;
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins += 1;
            if spins.is_multiple_of(64) {
                // sched_yield: allocates nothing.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    fn unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

// SAFETY: every method forwards to `System` with the caller's layout and pointer unchanged; the
// lock only serialises the calls.
unsafe impl GlobalAlloc for SpinLockAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.lock();
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        let pointer = unsafe { System.alloc(layout) };
        self.unlock();
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        self.lock();
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(pointer, layout) };
        self.unlock();
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        self.lock();
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        let pointer = unsafe { System.realloc(pointer, layout, size) };
        self.unlock();
        pointer
    }
}

#[global_allocator]
static ALLOCATOR: SpinLockAllocator = SpinLockAllocator {
    locked: AtomicBool::new(false),
};

extern "C" fn take_the_lock_before_fork() {
    ALLOCATOR.lock();
}

extern "C" fn release_the_lock_after_fork() {
    ALLOCATOR.unlock();
}

/// What a fork-safe allocator does: hold its lock across fork, release it in both processes.
fn register_fork_handler() {
    // SAFETY: the three handlers are `extern "C"` functions that only take or release the
    // allocator's lock; they stay valid for the life of the process.
    let registered = unsafe {
        libc::pthread_atfork(
            Some(take_the_lock_before_fork),
            Some(release_the_lock_after_fork),
            Some(release_the_lock_after_fork),
        )
    };
    assert_eq!(registered, 0);
}

/// Two threads that allocate and free in a loop, so the allocator's lock is often held by
/// another thread at the moment the signer is forked.
fn start_busy_allocators(
    stop: &Arc<AtomicBool>,
) -> (Arc<AtomicUsize>, Vec<std::thread::JoinHandle<()>>) {
    let rounds = Arc::new(AtomicUsize::new(0));
    let threads = (0..2)
        .map(|thread| {
            let (stop, rounds) = (Arc::clone(stop), Arc::clone(&rounds));
            std::thread::spawn(move || {
                let mut size = 16 + thread;
                while !stop.load(Ordering::Relaxed) {
                    let block = vec![0u8; size];
                    std::hint::black_box(&block);
                    drop(block);
                    size = size % 4000 + 24;
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    (rounds, threads)
}

/// Spawns `SPAWNS` signers in `mode` while the busy threads run; each must be ready within the
/// deadline and sign. Prints and returns how many did.
fn spawn_repeatedly(what: &str, mode: SpawnMode) -> usize {
    let stop = Arc::new(AtomicBool::new(false));
    let (rounds, threads) = start_busy_allocators(&stop);
    let mut served = 0;
    let mut failures = Vec::new();
    let started = Instant::now();
    for spawn in 0..SPAWNS {
        let config = Config::default()
            .with_spawn_mode(mode.clone())
            .with_spawn_timeout(SPAWN_DEADLINE);
        let result = SecretService::spawn(config).and_then(|service| {
            let key = service.generate_key(KeySpec::new(Purpose::Account))?;
            let public = service.public_key(key)?;
            let signature = service.sign(key, &[7; 32])?;
            public
                .as_ed25519()
                .unwrap()
                .verify_strict(&[7; 32], &signature)
                .unwrap();
            Ok(())
        });
        match result {
            Ok(()) => served += 1,
            Err(error) => failures.push(format!("#{spawn}: {error}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    println!(
        "{what}: {served} of {SPAWNS} spawns served, in {:?}, beside {} allocations by the busy \
         threads; failures: {failures:?}",
        started.elapsed(),
        rounds.load(Ordering::Relaxed)
    );
    served
}

fn play_host(role: &str) {
    match role {
        "fork-exec-no-fork-handler" => {
            let served = spawn_repeatedly(
                "fork-exec, an allocator without a fork handler",
                SpawnMode::ForkExec {
                    program: common::signer_program(),
                },
            );
            assert_eq!(served, SPAWNS);
        }
        "fork-with-fork-handler" => {
            register_fork_handler();
            let served = spawn_repeatedly(
                "fork, the same allocator with a fork handler",
                SpawnMode::Fork,
            );
            assert_eq!(served, SPAWNS);
        }
        other => panic!("unknown role {other}"),
    }
    println!("HOST DONE");
}

fn run_host(test: &str, role: &str) {
    if let Some(role) = common::role() {
        return play_host(&role);
    }
    common::run_host_role(test, role, Duration::from_secs(120));
}

#[test]
fn fork_exec_signers_start_beside_an_allocator_without_a_fork_handler() {
    run_host(
        "fork_exec_signers_start_beside_an_allocator_without_a_fork_handler",
        "fork-exec-no-fork-handler",
    );
}

#[test]
fn forked_signers_start_beside_an_allocator_with_a_fork_handler() {
    run_host(
        "forked_signers_start_beside_an_allocator_with_a_fork_handler",
        "fork-with-fork-handler",
    );
}
