//! The crash proof of the double-sign guard, as behaviour (issue 14): a host signing a stream of
//! consensus votes on a sealed store is killed (SIGKILL) a thousand times, at random moments and
//! at every point of a store write (so some kills fall between the signer's sealed watermark and
//! the host's durable write and acknowledgement). After each kill a new host first tries, with a
//! second digest B, the last round whose signature reached its caller and the round after it,
//! then carries on voting with digest A. Every signature that ever reached a caller is collected
//! and checked: each verifies under the key's public key over the typed bytes, and no round has
//! two different digests signed.
//!
//! Each host is this test binary re-run in a role (`tests/common`): it prints each signature it
//! was given (and each refusal), flushed, before it asks for the next, so what the test reads
//! after the kill is exactly what the host's caller had been told.
//!
//! Needs the `test-support` feature (the crash hook); `cargo test --all-features` has it.
#![cfg(feature = "test-support")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod store_util;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Child;
use std::time::{Duration, Instant};

use common::RoleCommand;
use ed25519_dalek::{Signature, VerifyingKey};
use keyward::testing::{StoreWritePoint, crash_at_store_write};
use keyward::{
    ChainId, ConsensusMessage, Error, GuardRule, KeyId, KeyService, KeySpec, Purpose, SecretService,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use store_util::StoreBase;

/// Every point of a durable write, in the order the write reaches them.
const POINTS: [StoreWritePoint; 5] = StoreWritePoint::ALL;

const CHAIN: ChainId = ChainId([0x5c; 32]);
const EPOCH: u64 = 1;

/// How many hosts the run kills.
const KILLS: usize = 1_000;

/// The share of hosts (in percent) that kill themselves at a chosen point of a store write
/// rather than being killed by the test after a random delay.
const HOOKED_PERCENT: u32 = 35;

/// The longest the test waits after a host is ready before killing it.
const MAX_KILL_DELAY_MS: u32 = 30;

/// The highest `skip` a self-killing host is given: it dies in one of its first writes.
const MAX_SKIP: u32 = 3;

/// What starts a host's line to its test: the test harness prints its own words on the same
/// stream, the first of them on the line a role's first line continues.
const MARK: &str = store_util::HOST_MARK;

/// The digest a vote for `round` carries: SHA-256 of the letter (`A` for the stream, `B` for the
/// attempts after a restart) and the round.
fn digest(letter: char, round: u64) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update([u8::try_from(letter).unwrap()]);
    hasher.update(round.to_le_bytes());
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&hasher.finalize());
    digest
}

fn vote(letter: char, round: u64) -> ConsensusMessage {
    ConsensusMessage::vote(CHAIN, EPOCH, round, digest(letter, round))
}

/// One line to the test, written and flushed before the host goes on.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{MARK}{line}").unwrap();
    out.flush().unwrap();
}

/// Why a host asked for a vote: the last round its predecessors' callers were given a signature
/// for, again with digest B; the round after it with digest B; or the stream, with digest A.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Attempt {
    Retry,
    Next,
    Stream,
}

impl Attempt {
    fn name(self) -> &'static str {
        match self {
            Attempt::Retry => "retry",
            Attempt::Next => "next",
            Attempt::Stream => "stream",
        }
    }

    fn named(name: &str) -> Self {
        match name {
            "retry" => Attempt::Retry,
            "next" => Attempt::Next,
            "stream" => Attempt::Stream,
            other => panic!("no attempt {other}"),
        }
    }
}

/// The host: opens the store, arms the crash hook if told to, tries round `last` and round
/// `last + 1` with digest B, then votes with digest A from round `last + 1` on, printing every
/// signature and refusal, until it is killed.
#[test]
#[ignore = "a subprocess role of the consensus crash test: a host voting until it is killed"]
fn role_consensus_host() {
    if common::role().as_deref() != Some("consensus-host") {
        return;
    }
    let base = StoreBase::existing(common::role_parameter("base"));
    let key: KeyId = common::role_parameter("key").parse().unwrap();
    let last: u64 = common::role_parameter("last").parse().unwrap();
    let service = SecretService::spawn(base.open_config()).unwrap();
    if let Some(point) = common::role_parameter_if_given("point") {
        let skip = common::role_parameter("skip").parse().unwrap();
        crash_at_store_write(POINTS[point.parse::<usize>().unwrap()], skip);
    }
    say("READY");
    let attempt = |attempt: Attempt, letter: char, round: u64| {
        let message = vote(letter, round);
        match service.sign_consensus(key, &message) {
            Ok(signature) => say(&format!(
                "SIGNED {} {round} {letter} {} {}",
                attempt.name(),
                common::hex(&message.digest),
                common::hex(&signature.to_bytes())
            )),
            Err(Error::WouldDoubleSign { rule, .. }) => {
                say(&format!(
                    "REFUSED {} {round} {letter} {rule:?}",
                    attempt.name()
                ));
            }
            Err(other) => panic!("round {round} with {letter}: {other:?} ({other})"),
        }
    };
    if last > 0 {
        attempt(Attempt::Retry, 'B', last);
    }
    attempt(Attempt::Next, 'B', last + 1);
    let started = Instant::now();
    let mut round = last + 1;
    // Bounded: the test kills the host within a fraction of a second.
    while started.elapsed() < Duration::from_secs(30) {
        attempt(Attempt::Stream, 'A', round);
        round += 1;
    }
    say("STREAM END");
}

/// Everything the callers of every host were given, and what was refused.
#[derive(Default)]
struct Record {
    /// Per round, the digest's letter and the signature the caller got.
    signed: BTreeMap<u64, (char, Signature)>,
    /// Signatures that reached a caller, counted once per line.
    signatures_seen: usize,
    /// Rounds given a signature for a second digest: must stay empty.
    conflicts: Vec<String>,
    /// Refusals, by attempt and rule.
    refusals: BTreeMap<(Attempt, String), usize>,
    /// B votes signed for a round no caller had a signature for (the host before had died
    /// after sealing round `last + 1`'s A vote, before it was durable).
    b_fresh: usize,
    /// B votes signed again (a repeat of a B vote signed before).
    b_repeated: usize,
    /// A votes for round `last + 1` signed after a restart whose B vote had been refused: the
    /// A vote was durable, but its signature had not reached the caller before the kill (this
    /// is the same signature again).
    a_durable_unheard: usize,
}

impl Record {
    /// The last round a caller was given a signature for (0: none yet).
    fn last(&self) -> u64 {
        self.signed.keys().next_back().copied().unwrap_or(0)
    }

    /// Applies the complete lines of a host's stdout, which started after round `last` (a line
    /// cut short by the kill is not one the host finished writing, so it does not count).
    /// Checks each signature and each refusal against what the guard must do.
    fn apply(&mut self, public: &VerifyingKey, last: u64, stdout: &str, case: &str) -> bool {
        let complete = match stdout.rfind('\n') {
            Some(end) => &stdout[..end],
            None => "",
        };
        let mut ready = false;
        let mut b_signed_next = false;
        let mut b_refused_next = false;
        for line in complete.lines() {
            let Some((_, line)) = line.split_once(MARK) else {
                continue;
            };
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["READY"] => ready = true,
                ["STREAM", "END"] => panic!("{case}: the host was never killed"),
                ["SIGNED", attempt, round, letter, digest_hex, signature_hex] => {
                    let attempt = Attempt::named(attempt);
                    let round: u64 = round.parse().unwrap();
                    let letter = letter.chars().next().unwrap();
                    let message = vote(letter, round);
                    assert_eq!(common::unhex(digest_hex), message.digest, "{case}: {line}");
                    let signature =
                        Signature::from_bytes(&common::unhex(signature_hex).try_into().unwrap());
                    public
                        .verify_strict(&message.signing_bytes(), &signature)
                        .unwrap_or_else(|error| {
                            panic!("{case}: a signature that does not verify: {line}: {error}")
                        });
                    self.signatures_seen += 1;
                    match self.signed.get(&round) {
                        None => {
                            if attempt == Attempt::Next {
                                self.b_fresh += 1;
                            }
                            if attempt == Attempt::Stream && round == last + 1 && b_refused_next {
                                self.a_durable_unheard += 1;
                            }
                            self.signed.insert(round, (letter, signature));
                        }
                        Some((earlier, _)) if *earlier != letter => self.conflicts.push(format!(
                            "{case}: round {round} signed with {earlier} and then {letter}"
                        )),
                        Some((_, earlier)) => {
                            assert_eq!(
                                *earlier, signature,
                                "{case}: round {round} with {letter} signed twice, differently"
                            );
                            // Only the retry asks for a round a caller was given already.
                            assert_eq!(attempt, Attempt::Retry, "{case}: {line}");
                            self.b_repeated += 1;
                        }
                    }
                    if attempt == Attempt::Next {
                        b_signed_next = true;
                    }
                }
                ["REFUSED", attempt, round, letter, rule] => {
                    let attempt = Attempt::named(attempt);
                    let round: u64 = round.parse().unwrap();
                    // Refused only where the guard must refuse: the retry of a round whose vote
                    // is durable (equal: conflicting; the round after it durable too: below);
                    // a B vote for the next round whose A vote was made durable by a host that
                    // died before its caller heard of it; the stream's first round once its B
                    // vote was signed. Any other refusal would stop a validator for nothing.
                    let expected: &[&str] = match attempt {
                        Attempt::Retry => &["ConflictingDigest", "BelowWatermark"],
                        Attempt::Next => &["ConflictingDigest"],
                        Attempt::Stream if round == last + 1 && b_signed_next => {
                            &["ConflictingDigest"]
                        }
                        Attempt::Stream => &[],
                    };
                    assert!(
                        expected.contains(rule),
                        "{case}: {line}: refused by a rule the guard has no reason for here \
                         (expected one of {expected:?}, last round {last})"
                    );
                    assert_eq!(
                        *letter,
                        if attempt == Attempt::Stream { "A" } else { "B" },
                        "{case}: {line}"
                    );
                    if attempt == Attempt::Next {
                        b_refused_next = true;
                    }
                    *self
                        .refusals
                        .entry((attempt, (*rule).to_owned()))
                        .or_default() += 1;
                }
                _ => panic!("{case}: a line the host does not print: {line}"),
            }
        }
        ready
    }
}

/// How a host was killed.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// By the test, this long after it was ready.
    After(Duration),
    /// By itself, at `point` of its (`skip` + 1)-th write that reaches it.
    AtWrite { point: usize, skip: u32 },
}

/// Starts a host on `base` after round `last`, kills it as `kill` says (or lets it kill itself)
/// and returns everything it printed.
fn run_and_kill(base: &StoreBase, key: KeyId, last: u64, kill: Kill, case: &str) -> String {
    let mut command = common::rerun_self("role_consensus_host", "consensus-host");
    command
        .parameter("base", base.base.display())
        .parameter("key", format!("{key:#}"))
        .parameter("last", last);
    if let Kill::AtWrite { point, skip } = kill {
        command.parameter("point", point).parameter("skip", skip);
    }
    store_util::run_host_until_killed(command, case, |child| match kill {
        Kill::After(delay) => {
            std::thread::sleep(delay);
            child.kill().unwrap();
            child.wait().unwrap()
        }
        Kill::AtWrite { .. } => wait_for_self_kill(child, case),
    })
}

/// Waits for a host armed with the crash hook to kill itself (it writes within milliseconds);
/// a host still alive after ten seconds fails the test.
fn wait_for_self_kill(child: &mut Child, case: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{case}: the host armed to die at a store write did not");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// 1,000 hosts signing a stream of votes on one sealed store, each killed (SIGKILL) at a random
/// moment or at a chosen point of a store write; after each, the next host tries the last round
/// its predecessors' callers were given and the round after it with another digest. No round
/// is ever signed with two digests, every signature verifies, and the guard refuses only where
/// it must. The seed is printed; set `KEYWARD_CONSENSUS_CRASH_SEED` to replay the same kills
/// (the moments the timed kills land still depend on timing).
#[test]
fn hosts_killed_at_random_moments_never_sign_a_round_twice() {
    let seed = std::env::var("KEYWARD_CONSENSUS_CRASH_SEED")
        .ok()
        .map(|seed| seed.parse::<u64>().unwrap())
        .unwrap_or_else(|| {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).unwrap();
            u64::from_le_bytes(bytes)
        });
    eprintln!("consensus crash run: seed {seed} (KEYWARD_CONSENSUS_CRASH_SEED={seed} replays it)");
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
    let mut record = Record::default();
    let mut timed_kills = 0;
    let mut kills_at = [0usize; POINTS.len()];
    for kill in 1..=KILLS {
        let how = if rng.next_u32() % 100 < HOOKED_PERCENT {
            Kill::AtWrite {
                point: rng.next_u32() as usize % POINTS.len(),
                skip: rng.next_u32() % (MAX_SKIP + 1),
            }
        } else {
            Kill::After(Duration::from_millis(u64::from(
                rng.next_u32() % (MAX_KILL_DELAY_MS + 1),
            )))
        };
        let last = record.last();
        let case = format!("seed {seed}, kill {kill} ({how:?}, after round {last})");
        let stdout = run_and_kill(&base, key, last, how, &case);
        assert!(
            record.apply(&public, last, &stdout, &case),
            "{case}: not ready"
        );
        match how {
            Kill::After(_) => timed_kills += 1,
            Kill::AtWrite { point, .. } => kills_at[point] += 1,
        }
    }
    let elapsed = started.elapsed();

    let last = record.last();
    let rounds = record.signed.len();
    let refusals: Vec<String> = record
        .refusals
        .iter()
        .map(|((attempt, rule), count)| format!("{} {rule}: {count}", attempt.name()))
        .collect();
    let refused: usize = record.refusals.values().sum();
    eprintln!(
        "consensus crash run: {KILLS} kills ({timed_kills} timed, {} at a store write: {} by \
         point {:?}), {rounds} rounds signed (last {last}), {} signatures reached a caller, \
         {refused} refusals ({}), {} B votes signed for a round never signed before the crash, \
         {} B votes repeated, {} A votes durable but unheard of signed again after a restart, {} \
         conflicting signatures, \
         {elapsed:.1?} ({:.1} kills/s)",
        KILLS - timed_kills,
        kills_at
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("/"),
        POINTS,
        record.signatures_seen,
        refusals.join(", "),
        record.b_fresh,
        record.b_repeated,
        record.a_durable_unheard,
        record.conflicts.len(),
        KILLS as f64 / elapsed.as_secs_f64(),
    );
    assert!(
        record.conflicts.is_empty(),
        "seed {seed}: rounds signed with two digests:\n{}",
        record.conflicts.join("\n")
    );
    // Not a vacuous run: hosts voted, some died with a round sealed but not durable (its B vote
    // was then signed), some with a round durable but unheard of (its B vote was refused).
    // (No tight bound on the rounds: how many a host signs before its kill depends on how fast
    // this disk syncs and how busy the machine is; four to ten per kill here.)
    assert!(
        rounds > KILLS / 10,
        "seed {seed}: only {rounds} rounds signed"
    );
    assert!(record.b_fresh > 0, "seed {seed}: no B vote was ever signed");
    assert!(
        record
            .refusals
            .contains_key(&(Attempt::Next, "ConflictingDigest".to_owned())),
        "seed {seed}: no kill left a durable round its caller never heard of"
    );

    // The store after the last kill: the vote watermark is the last round a caller heard of, or
    // the one after it (sealed durably, its signature lost with the host), never lower.
    let service = SecretService::spawn(base.open_config()).unwrap();
    let marks = service.watermarks(key).unwrap();
    let vote_mark = marks
        .iter()
        .find(|marks| marks.chain == CHAIN)
        .and_then(|marks| marks.vote)
        .unwrap();
    assert!(
        vote_mark.round == last || vote_mark.round == last + 1,
        "seed {seed}: the watermark is at round {}, the last signature given at {last}",
        vote_mark.round
    );
    if vote_mark.round == last {
        assert_eq!(vote_mark.digest, digest(record.signed[&last].0, last));
    }
    let other = if record.signed[&last].0 == 'A' {
        'B'
    } else {
        'A'
    };
    assert!(matches!(
        service.sign_consensus(key, &vote(other, last)),
        Err(Error::WouldDoubleSign {
            rule: GuardRule::ConflictingDigest | GuardRule::BelowWatermark,
            ..
        })
    ));
    drop(service);
}
