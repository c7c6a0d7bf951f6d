//! Property: a Diffie-Hellman result reaches the caller once, in one zeroizing buffer, and no copy
//! of it stays in the host's memory after the `SharedSecret` is dropped: not on a thread's stack,
//! not in the heap or a malloc arena, not in the buffers that carried the answer. A root scanner
//! reads the host's whole memory from outside (`/proc/<pid>/mem`), single- and multi-threaded,
//! in both spawn modes. Control: a secret the host still holds is found.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use common::RoleCommand;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};

use keyward::{KeyService, KeySpec, Purpose, SecretService};

const TEST: &str = "no_copy_of_a_diffie_hellman_result_outlives_its_shared_secret";

/// The peer's secret for exchange `index`: distinct per exchange, known to the scanner.
fn peer_seed(index: u32) -> [u8; 32] {
    let mut seed = [0x77u8; 32];
    seed[..4].copy_from_slice(&index.to_le_bytes());
    seed
}

/// The exchange whose result the host keeps, as the scanner's control.
const KEPT: u32 = u32::MAX;

fn exchange(service: &SecretService, key: keyward::KeyId, index: u32) -> keyward::SharedSecret {
    let peer = x25519_dalek::StaticSecret::from(peer_seed(index));
    let shared = service
        .diffie_hellman(key, &x25519_dalek::PublicKey::from(&peer))
        .unwrap();
    // Checked without copying the secret anywhere.
    assert!(shared.expose_secret().iter().any(|byte| *byte != 0));
    shared
}

/// Played by the host under scan: exchanges on `threads` threads, `per_thread` each, drops every
/// result, keeps one, says where its signer and key are, and waits to be told to exit.
fn play_host() {
    let mode = common::role_parameter("mode");
    let threads: u32 = common::role_parameter("threads").parse().unwrap();
    let per_thread: u32 = common::role_parameter("per_thread").parse().unwrap();
    let config = common::spawn_modes()
        .into_iter()
        .find(|(name, _)| *name == mode)
        .unwrap()
        .1;
    let service = SecretService::spawn(config).unwrap();
    let key = service
        .generate_key(KeySpec::new(Purpose::NetworkHandshake))
        .unwrap();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let service = &service;
            scope.spawn(move || {
                for round in 0..per_thread {
                    drop(exchange(service, key, thread * per_thread + round));
                }
            });
        }
    });
    let kept = exchange(&service, key, KEPT);
    let public = service.public_key(key).unwrap();
    println!("KW public {}", common::hex(&public.to_bytes()));
    println!("KW ready");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
    drop(kept);
}

/// Where each needle occurs in `haystack`, by a hash of each window's first eight bytes: linear
/// in the haystack whatever the number of needles (800 here).
fn occurrences(haystack: &[u8], needles: &[[u8; 32]]) -> Vec<(usize, usize)> {
    let mut by_prefix: std::collections::HashMap<[u8; 8], Vec<usize>> = Default::default();
    for (index, needle) in needles.iter().enumerate() {
        by_prefix
            .entry(needle[..8].try_into().unwrap())
            .or_default()
            .push(index);
    }
    let mut found = Vec::new();
    for offset in 0..haystack.len().saturating_sub(31) {
        let prefix: [u8; 8] = haystack[offset..offset + 8].try_into().unwrap();
        if let Some(candidates) = by_prefix.get(&prefix) {
            for &index in candidates {
                if haystack[offset..offset + 32] == needles[index] {
                    found.push((index, offset));
                }
            }
        }
    }
    found
}

/// Runs a host, scans it, and returns (copies of dropped results, copies of the kept one).
fn scan(mode: &str, threads: u32, per_thread: u32) -> (Vec<String>, usize) {
    let mut host: Child = common::rerun_self(TEST, "dh-host")
        .parameter("mode", mode)
        .parameter("threads", threads.to_string())
        .parameter("per_thread", per_thread.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(host.stdout.take().unwrap()).lines();
    let mut public = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some((_, said)) = line.split_once("KW ") {
            if let Some(key) = said.strip_prefix("public ") {
                public = Some(<[u8; 32]>::try_from(common::unhex(key)).unwrap());
            }
            if said == "ready" {
                break;
            }
        }
    }
    let public = x25519_dalek::PublicKey::from(public.expect("the host never said ready"));
    // The scanner computes every result from the peer's side.
    let mut needles: Vec<[u8; 32]> = (0..threads * per_thread)
        .map(|index| {
            *x25519_dalek::StaticSecret::from(peer_seed(index))
                .diffie_hellman(&public)
                .as_bytes()
        })
        .collect();
    needles.push(
        *x25519_dalek::StaticSecret::from(peer_seed(KEPT))
            .diffie_hellman(&public)
            .as_bytes(),
    );
    let kept_index = needles.len() - 1;
    let mut dropped_copies = Vec::new();
    let mut kept_copies = 0;
    for (mapping, bytes) in common::readable_memory(host.id(), |_| true) {
        for (index, offset) in occurrences(&bytes, &needles) {
            if index == kept_index {
                kept_copies += 1;
            } else {
                dropped_copies.push(format!(
                    "exchange {index} at {} {} +{offset:#x}",
                    mapping.range(),
                    mapping.path
                ));
            }
        }
    }
    let mut stdin = host.stdin.take().unwrap();
    writeln!(stdin, "exit").unwrap();
    assert!(host.wait().unwrap().success(), "{mode}: the host failed");
    (dropped_copies, kept_copies)
}

#[test]
fn no_copy_of_a_diffie_hellman_result_outlives_its_shared_secret() {
    if common::role().as_deref() == Some("dh-host") {
        return play_host();
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test reads another process's memory, which needs root (CI runs as root)"
    );
    for mode in ["fork", "fork-exec"] {
        for (threads, per_thread) in [(1, 1), (8, 100)] {
            let (dropped, kept) = scan(mode, threads, per_thread);
            println!(
                "{mode}, {threads} thread(s) x {per_thread}: {} copies of dropped results, {kept} of the kept one",
                dropped.len()
            );
            assert!(
                kept >= 1,
                "{mode}: control failed: the result the host still holds was not found"
            );
            assert!(
                dropped.is_empty(),
                "{mode}, {threads} x {per_thread}: copies of dropped Diffie-Hellman results remain in the host: {dropped:#?}"
            );
        }
    }
}
