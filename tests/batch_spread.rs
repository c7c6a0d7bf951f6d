//! A batch (`sign_many`) is split across the signer's idle workers, which sign the parts side by
//! side: every worker thread of a two-worker signer does part of a large batch, a small batch
//! stays on one worker, the signatures come back in the order of the digests, a refusal is the
//! refusal of the whole batch, and a signer that dies with parts in flight ends the call with
//! `SignerEnded` rather than leaving it waiting on a lane.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fault_util;

use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use keyward::{Config, Error, KeyService, KeySpec, MAX_BATCH, Purpose, SecretService};
use nix::sys::signal::Signal;

use fault_util::{all_threads_stopped, signal_child, wait_for};

/// Each thread's run time so far (ns, from /proc/<pid>/task/<tid>/schedstat), by thread id.
fn thread_run_times(pid: i32) -> Vec<(u32, u64)> {
    let mut times = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let entry = entry.unwrap();
        let tid: u32 = entry.file_name().to_str().unwrap().parse().unwrap();
        let schedstat = std::fs::read_to_string(entry.path().join("schedstat")).unwrap();
        let run_ns = schedstat
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        times.push((tid, run_ns));
    }
    times.sort_unstable();
    times
}

/// How much each thread ran between two readings (ns), largest first.
fn ran_between(before: &[(u32, u64)], after: &[(u32, u64)]) -> Vec<u64> {
    let mut ran: Vec<u64> = after
        .iter()
        .map(|(tid, now)| {
            let then = before
                .iter()
                .find(|(other, _)| other == tid)
                .map_or(0, |(_, then)| *then);
            now - then
        })
        .collect();
    ran.sort_unstable_by(|a, b| b.cmp(a));
    ran
}

fn two_worker_service() -> (SecretService, keyward::KeyId, VerifyingKey) {
    let service = SecretService::spawn(Config::default().with_workers(2)).unwrap();
    let key = service
        .generate_key(KeySpec::new(Purpose::NetworkDiscovery))
        .unwrap();
    let public = *service.public_key(key).unwrap().as_ed25519().unwrap();
    (service, key, public)
}

#[test]
fn a_large_batch_is_signed_by_both_workers_and_a_small_one_by_one() {
    let (service, key, public) = two_worker_service();
    let pid = service.pid();

    // 512 signatures take a worker milliseconds of CPU; spread, each worker signs half.
    let batch = common::numbered_digests(MAX_BATCH, 1);
    let before = thread_run_times(pid);
    let signatures = service.sign_many(key, &batch).unwrap();
    let ran = ran_between(&before, &thread_run_times(pid));
    for (at, (digest, signature)) in batch.iter().zip(&signatures).enumerate() {
        public
            .verify_strict(digest, signature)
            .unwrap_or_else(|e| panic!("#{at}: {e}"));
    }
    assert!(ran.len() >= 2, "{ran:?}");
    let busiest = ran[0];
    assert!(busiest > 2_000_000, "the busiest worker ran {busiest} ns");
    assert!(
        ran[1] * 4 > busiest,
        "the second worker did a small share of the batch (ns per thread: {ran:?})"
    );

    // Control: three digests are not worth a second part; one worker signs them.
    let small = common::numbered_digests(3, 2);
    let before = thread_run_times(pid);
    let signatures = service.sign_many(key, &small).unwrap();
    let ran = ran_between(&before, &thread_run_times(pid));
    for (digest, signature) in small.iter().zip(&signatures) {
        public.verify_strict(digest, signature).unwrap();
    }
    assert!(ran[0] > 0, "{ran:?}");
    assert!(
        ran.iter().skip(1).all(|&other| other * 10 < ran[0]),
        "a three-digest batch woke a second worker (ns per thread: {ran:?})"
    );
}

#[test]
fn a_spread_batch_keeps_the_order_of_its_digests_at_uneven_sizes() {
    let (service, key, _) = two_worker_service();
    for (salt, count) in [8, 9, 15, 17, 101, MAX_BATCH - 1].into_iter().enumerate() {
        let batch = common::numbered_digests(count, u8::try_from(salt).unwrap() + 10);
        let signatures = service.sign_many(key, &batch).unwrap();
        assert_eq!(signatures.len(), count);
        // Ed25519 is deterministic: each is exactly what `sign` gives for its digest.
        for (at, digest) in batch.iter().enumerate() {
            assert_eq!(
                signatures[at],
                service.sign(key, digest).unwrap(),
                "{count} digests, #{at}"
            );
        }
    }
}

#[test]
fn a_refused_spread_batch_is_one_typed_refusal_and_the_lanes_stay_clean() {
    let (service, key, public) = two_worker_service();
    let pid = service.pid();
    let handshake = service
        .generate_key(KeySpec::new(Purpose::NetworkHandshake))
        .unwrap();
    let error = service
        .sign_many(handshake, &common::numbered_digests(64, 3))
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::WrongKeyType {
                operation: "sign_many",
                ..
            }
        ),
        "{error:?}"
    );
    // Every part's answer was collected: the next calls on both lanes are answered in turn.
    for round in 0u8..4 {
        let batch = common::numbered_digests(32, round);
        let signatures = service.sign_many(key, &batch).unwrap();
        for (digest, signature) in batch.iter().zip(&signatures) {
            public.verify_strict(digest, signature).unwrap();
        }
        let digest = [round; 32];
        public
            .verify_strict(&digest, &service.sign(key, &digest).unwrap())
            .unwrap();
    }
    assert!(service.is_running() && service.pid() == pid);
}

#[test]
fn a_signer_that_dies_with_parts_of_a_batch_in_flight_ends_the_call() {
    let (service, key, _) = two_worker_service();
    let pid = service.pid();
    // Stopped, the signer takes both parts into its pipes and answers neither.
    assert!(signal_child(pid, Signal::SIGSTOP));
    assert!(wait_for(Duration::from_secs(3), || all_threads_stopped(
        pid
    )));
    let batch = common::numbered_digests(64, 7);
    let result = std::thread::scope(|scope| {
        let call = scope.spawn(|| service.sign_many(key, &batch));
        // Give the call time to write both parts, then end the signer under it.
        std::thread::sleep(Duration::from_millis(200));
        assert!(signal_child(pid, Signal::SIGKILL));
        call.join().unwrap()
    });
    assert!(
        matches!(result, Err(Error::SignerEnded { .. })),
        "{result:?}"
    );
    assert!(matches!(
        service.sign(key, &[1; 32]),
        Err(Error::SignerEnded { .. })
    ));
}
