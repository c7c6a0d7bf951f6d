//! A service gives back everything it took from the host process: after spawn/use/drop (and
//! respawn) cycles, this process has exactly the file descriptors and threads it had before.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// This binary holds one test on purpose: a test running in parallel would open descriptors and
// start threads of its own and spoil the counts.

mod common;

use keyward::{KeyService, KeySpec, Purpose, SecretService};

/// The descriptors this process has open (the count includes the one `read_dir` uses, the
/// same every time).
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn spawn_use_and_drop_cycles_leak_no_descriptor_or_thread() {
    let (descriptors, threads_before) = (open_descriptors(), threads());
    let mut cycles = 0;
    for (mode, config) in common::spawn_modes() {
        for workers in [1, 2, 16] {
            for _ in 0..2 {
                let service = SecretService::spawn(config.clone().with_workers(workers)).unwrap();
                // The counts can see a service: it holds pipes, a pidfd and a watcher thread.
                assert!(
                    open_descriptors() >= descriptors + 2 * workers,
                    "{mode}: a live service's descriptors do not show"
                );
                assert!(threads() > threads_before, "{mode}: no watcher thread");
                let key = service
                    .generate_key(KeySpec::new(Purpose::Account))
                    .unwrap();
                service.sign(key, &[5; 32]).unwrap();
                service.list_keys().unwrap();
                service.respawn().unwrap();
                let key = service
                    .generate_key(KeySpec::new(Purpose::NetworkHandshake))
                    .unwrap();
                service.drop_key(key).unwrap();
                service.status().unwrap();
                drop(service);
                assert_eq!(
                    open_descriptors(),
                    descriptors,
                    "{mode}, {workers} workers: a descriptor leaked"
                );
                // A joined thread can still be counted for a moment: `join` returns when the
                // thread has cleared its tid, a little before the kernel releases it from the
                // thread group. Wait for the count to settle (bounded), then compare.
                let settle_until = std::time::Instant::now() + std::time::Duration::from_secs(1);
                while threads() != threads_before && std::time::Instant::now() < settle_until {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                assert_eq!(
                    threads(),
                    threads_before,
                    "{mode}, {workers} workers: a thread leaked"
                );
                cycles += 1;
            }
        }
    }
    assert_eq!(cycles, 12);
}
