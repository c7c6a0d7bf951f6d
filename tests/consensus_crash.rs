//! The crash proof of the double-sign guard, as behaviour: a host signs a stream of rounds (each
//! round once, with digest A) and is SIGKILLed at random moments, or at a chosen point of a
//! store write (between the signer's sealed state and the host's write, among others); after
//! each crash a new host tries the last round it was told of, and the round after it, with
//! another digest B, then goes on with A. Every signature that ever reached a caller is
//! collected and verified; no round may have two different signed digests.
//!
//! Each host is this test binary re-run in a role (`tests/common`); it prints every signature
//! that reached it, flushed, before the next request.
#![cfg(feature = "test-support")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod store_util;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::RoleCommand;
use keyward::testing::{StoreWritePoint, crash_at_store_write};
use keyward::{
    ChainId, ConsensusMessage, Error, KeyId, KeyService, KeySpec, Purpose, SecretService,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use store_util::StoreBase;

const CHAIN: ChainId = ChainId([0xcc; 32]);
/// How many hosts the run kills.
const KILLS: usize = 1_000;
/// The longest the test lets a host run before killing it, when it does not crash on its own.
const MAX_KILL_DELAY_MS: u32 = 25;
const POINTS: [StoreWritePoint; 5] = [
    StoreWritePoint::BeforeTemporary,
    StoreWritePoint::AfterTemporaryWrite,
    StoreWritePoint::AfterTemporarySync,
    StoreWritePoint::AfterRename,
    StoreWritePoint::AfterDirectorySync,
];

/// The digest a round is signed with: `letter` is b'A' (the stream) or b'B' (the retry after a
/// crash).
fn digest(round: u64, letter: u8) -> [u8; 32] {
    let mut digest = [letter; 32];
    digest[..8].copy_from_slice(&round.to_le_bytes());
    digest
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "KW {line}").unwrap();
    out.flush().unwrap();
}

/// Signs `round` with `letter`'s digest and reports it: `SIGNED round letter signature`, or
/// `REFUSED round letter rule`.
fn attempt(service: &SecretService, key: KeyId, round: u64, letter: u8) {
    let vote = ConsensusMessage::vote(CHAIN, 1, round, digest(round, letter));
    match service.sign_consensus(key, &vote) {
        Ok(signature) => say(&format!(
            "SIGNED {round} {} {}",
            letter as char,
            common::hex(&signature.to_bytes())
        )),
        Err(Error::WouldDoubleSign { rule, .. }) => {
            say(&format!("REFUSED {round} {} {rule:?}", letter as char));
        }
        Err(error) => panic!("round {round}: {error}"),
    }
}

/// Played by each host: open the store, try the round it was last told of and the next one
/// with digest B, then sign A from the round after, until killed.
#[test]
#[ignore = "a subprocess role of the consensus crash test: a host signing rounds until killed"]
fn role_vote_host() {
    if common::role().as_deref() != Some("vote-host") {
        return;
    }
    let base = StoreBase::existing(common::role_parameter("base"));
    let key: KeyId = common::role_parameter("key").parse().unwrap();
    let next: u64 = common::role_parameter("next").parse().unwrap();
    if let Some(crash) = common::role_parameter_if_given("crash") {
        let (point, skip) = crash.split_once(':').unwrap();
        crash_at_store_write(
            POINTS[point.parse::<usize>().unwrap()],
            skip.parse().unwrap(),
        );
    }
    let service = SecretService::spawn(base.open_config()).unwrap();
    say("READY");
    if next > 1 {
        attempt(&service, key, next - 1, b'B');
    }
    attempt(&service, key, next, b'B');
    let started = Instant::now();
    let mut round = next + 1;
    while started.elapsed() < Duration::from_secs(20) {
        attempt(&service, key, round, b'A');
        round += 1;
    }
    say("END");
}

/// Runs one host until it dies (by its crash hook) or the test kills it; returns its lines.
fn run_host(
    base: &StoreBase,
    key: KeyId,
    next: u64,
    crash: Option<String>,
    delay: Duration,
) -> Vec<String> {
    let mut command = common::rerun_self("role_vote_host", "vote-host");
    command
        .parameter("base", base.base.display())
        .parameter("key", format!("{key:#}"))
        .parameter("next", next);
    if let Some(crash) = crash {
        command.parameter("crash", crash);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (lines, received) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            // The first line follows libtest's "test role_vote_host ... " on the same line.
            if let Some((_, line)) = line.split_once("KW ")
                && lines.send(line.to_owned()).is_err()
            {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Wait for READY, then let it run `delay` (or until its crash hook ends it), then kill.
    let mut kill_at = None;
    loop {
        let now = Instant::now();
        assert!(now < deadline, "a host neither became ready nor ended");
        if kill_at.is_some_and(|at| now >= at) {
            break;
        }
        let wait = kill_at.map_or(Duration::from_millis(50), |at: Instant| {
            at.saturating_duration_since(now)
        });
        match received.recv_timeout(wait) {
            Ok(line) => {
                if line == "READY" {
                    kill_at = Some(Instant::now() + delay);
                }
                printed.push(line);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if kill_at.is_some_and(|at| Instant::now() >= at) {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap();
    // Whatever the host printed before it died reached its caller.
    while let Ok(line) = received.try_recv() {
        printed.push(line);
    }
    assert!(
        !printed.iter().any(|line| line == "END"),
        "a host outlived its run"
    );
    printed
}

/// 1,000 hosts killed at random moments and at chosen write points; no round is ever signed
/// with two digests. The seed is printed; `KEYWARD_CRASH_SEED` replays the kills' choices.
#[test]
fn no_round_is_ever_signed_twice_across_a_thousand_crashes() {
    let seed = std::env::var("KEYWARD_CRASH_SEED")
        .ok()
        .map(|seed| seed.parse::<u64>().unwrap())
        .unwrap_or_else(|| {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).unwrap();
            u64::from_le_bytes(bytes)
        });
    eprintln!("consensus crash run: seed {seed} (KEYWARD_CRASH_SEED={seed} replays it)");
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let started = Instant::now();
    let base = StoreBase::new("consensus-crash");
    let (key, public) = {
        let service = SecretService::spawn(base.create_config()).unwrap();
        let key = service
            .generate_key(KeySpec::new(Purpose::Consensus))
            .unwrap();
        let public = *service.public_key(key).unwrap().as_ed25519().unwrap();
        (key, public)
    };
    // Every digest ever signed, per round, with its signatures (verified).
    let mut signed: BTreeMap<u64, BTreeSet<[u8; 32]>> = BTreeMap::new();
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    let (mut signatures, mut b_signed, mut hook_kills) = (0usize, 0usize, 0usize);
    let mut next = 1u64;
    for kill in 1..=KILLS {
        let crash = (rng.next_u32() % 3 == 0).then(|| {
            hook_kills += 1;
            format!(
                "{}:{}",
                rng.next_u32() as usize % POINTS.len(),
                rng.next_u32() % 4
            )
        });
        let delay = Duration::from_millis(u64::from(rng.next_u32() % (MAX_KILL_DELAY_MS + 1)));
        let case =
            format!("seed {seed}, kill {kill}, next {next}, crash {crash:?}, delay {delay:?}");
        let lines = run_host(&base, key, next, crash, delay);
        for line in &lines {
            let fields: Vec<&str> = line.split(' ').collect();
            match fields.as_slice() {
                ["SIGNED", round, letter, signature] => {
                    let round: u64 = round.parse().unwrap();
                    let letter = letter.as_bytes()[0];
                    let digest = digest(round, letter);
                    let bytes: [u8; 64] = common::unhex(signature).try_into().unwrap();
                    let vote = ConsensusMessage::vote(CHAIN, 1, round, digest);
                    public
                        .verify_strict(
                            &vote.signing_bytes(),
                            &ed25519_dalek::Signature::from_bytes(&bytes),
                        )
                        .unwrap_or_else(|error| panic!("{case}: a bad signature: {error}"));
                    signatures += 1;
                    if letter == b'B' {
                        b_signed += 1;
                    }
                    let digests = signed.entry(round).or_default();
                    digests.insert(digest);
                    assert_eq!(
                        digests.len(),
                        1,
                        "{case}: round {round} was signed with two digests"
                    );
                    next = next.max(round + 1);
                }
                ["REFUSED", round, _, rule] => {
                    *refusals.entry((*rule).to_owned()).or_default() += 1;
                    let round: u64 = round.parse().unwrap();
                    next = next.max(round + 1);
                }
                ["READY"] => {}
                other => panic!("{case}: an unexpected line {other:?}"),
            }
        }
    }
    let conflicting = signed.values().filter(|digests| digests.len() > 1).count();
    eprintln!(
        "consensus crash run: {KILLS} kills ({hook_kills} at a chosen write point), {} rounds \
         signed, {signatures} signatures reached callers ({b_signed} of them a retry's digest B \
         for a round never signed before its crash), refusals {refusals:?}, conflicting rounds \
         {conflicting}, in {:?}",
        signed.len(),
        started.elapsed()
    );
    assert_eq!(conflicting, 0);
    assert!(
        signed.len() > KILLS / 4,
        "too few rounds signed to mean anything"
    );
    assert!(
        refusals
            .get("ConflictingDigest")
            .is_some_and(|&count| count > 0),
        "no retry ever met a durable watermark: the run did not test the guard"
    );
}
