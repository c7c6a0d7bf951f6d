//! Property: every thread of the signer (not only the first, which `/proc/<pid>/status` and
//! `SignerStatus` describe) runs without capabilities, with no-new-privs and under the filter.
//! Capabilities and no-new-privs are per thread, so this reads `/proc/<pid>/task/*/status` for
//! every thread rather than trusting the first thread's view.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use keyward::{Sandbox, SecretService};

fn field(who: &str, name: &str) -> String {
    common::status_field(who, name)
        .unwrap_or_else(|| panic!("/proc/{who}/status has no {name} field"))
}

/// Every thread of the signer, not only the first one that `/proc/<pid>/status` describes, runs
/// without capabilities, with no-new-privs and under the filter. Capabilities are per thread:
/// the kernel gives a new thread its creator's sets, and `capset` changes only the caller's.
/// `child::harden_and_serve` therefore drops capabilities and sets no-new-privs before it starts
/// the workers (an earlier order left every worker with a root host's capabilities while the
/// first thread showed none), and `SignerStatus` reports the weakest thread.
#[test]
fn every_signer_thread_is_stripped() {
    let mut failures = Vec::new();
    for (mode, config) in common::spawn_modes() {
        for workers in [1, 4] {
            let service = SecretService::spawn(config.clone().with_workers(workers))
                .unwrap_or_else(|e| panic!("{mode}: {e}"));
            let pid = service.pid();
            let mut threads = 0;
            for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
                threads += 1;
                let tid = task.unwrap().file_name().to_string_lossy().into_owned();
                let who = format!("{pid}/task/{tid}");
                for (name, expected) in [
                    ("Seccomp", "2"),
                    ("Seccomp_filters", "1"),
                    ("NoNewPrivs", "1"),
                    ("CapEff", "0000000000000000"),
                    ("CapPrm", "0000000000000000"),
                    ("CapInh", "0000000000000000"),
                    ("CapAmb", "0000000000000000"),
                ] {
                    let value = field(&who, name);
                    if value != expected {
                        failures.push(format!(
                            "{mode}, {workers} workers: thread {tid} of {pid}: {name} {value}"
                        ));
                    }
                }
            }
            assert_eq!(threads, workers, "{mode}");
            // What the library reports (the union over every thread).
            assert_eq!(service.status().unwrap().effective_capabilities, Some(0));
        }
    }
    // Without the filter (Sandbox::UnsandboxedInsecure) there is no TSYNC to carry no-new-privs
    // to the workers either: each thread must get it, and lose its capabilities, on its own.
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(
            config
                .with_workers(4)
                .with_sandbox(Sandbox::UnsandboxedInsecure),
        )
        .unwrap_or_else(|e| panic!("{mode}: {e}"));
        let pid = service.pid();
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let tid = task.unwrap().file_name().to_string_lossy().into_owned();
            let who = format!("{pid}/task/{tid}");
            for (name, expected) in [
                ("Seccomp", "0"),
                ("NoNewPrivs", "1"),
                ("CapEff", "0000000000000000"),
                ("CapPrm", "0000000000000000"),
            ] {
                let value = field(&who, name);
                if value != expected {
                    failures.push(format!(
                        "{mode}, unsandboxed, 4 workers: thread {tid} of {pid}: {name} {value}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "signer threads that kept privileges: {failures:#?}"
    );
}
