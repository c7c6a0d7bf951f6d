//! Property: the double-sign guard answers every sequence of consensus requests as a model of
//! its rules says. The model is written here from the design brief and issue 14, not from
//! `src/signer/guard.rs`: per key and chain, each kind (proposal, vote, timeout) has a watermark,
//! the highest (epoch, round) signed and its digest; a message above it is signed and moves it;
//! exactly the watermark's message is signed again, with the same signature; the watermark's
//! position with another digest is refused (conflicting digest); anything lower is refused
//! (below the watermark); a vote at or below the last timeout is refused; a timeout below the
//! last vote is refused; proposals are apart. A key keeps watermarks for at most four chains,
//! only consensus keys sign typed messages, and an import only ever raises a watermark.
//!
//! Two properties: one through the in-process dispatcher (the signer's own request handling,
//! memory only: every message allowed is signed at once), many cases; one through a real
//! `SecretService` on a sealed store with restarts and respawns among the steps, fewer cases,
//! so the watermarks' persistence is checked against the same model, and each new watermark is
//! checked to cost exactly one write (a repeat, a refusal or an import that raises nothing, none).
#![cfg(feature = "test-support")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod store_util;

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, VerifyingKey};
use keyward::testing::{
    DispatchResult, Dispatcher, generate_key_frame, generated_key_from_summary,
    raise_watermarks_frame, release_consensus_frame, sign_consensus_frame, sign_frame,
    watermarks_frame,
};
use keyward::{
    ChainId, ChainWatermarks, ConsensusKind, ConsensusMessage, Error, GuardRule, KeyId, KeyService,
    KeySpec, Purpose, SecretService, Watermark,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use store_util::StoreBase;

/// The keys of every case: two consensus keys and an account key (which signs no typed
/// message), by index.
const KEYS: [Purpose; 3] = [Purpose::Consensus, Purpose::Consensus, Purpose::Account];

/// The chains messages are drawn from: more than a key may keep, so the cap is reached.
const CHAINS: usize = 5;

/// The most chains a key keeps watermarks for.
const CHAIN_CAP: usize = 4;

fn chain(index: usize) -> ChainId {
    ChainId([0xc0 + u8::try_from(index).unwrap(); 32])
}

fn digest(index: u8) -> [u8; 32] {
    [0xd0 + index; 32]
}

/// A kind's place among a chain's three watermarks, in the model.
fn slot(kind: ConsensusKind) -> usize {
    match kind {
        ConsensusKind::Proposal => 0,
        ConsensusKind::Vote => 1,
        ConsensusKind::Timeout => 2,
    }
}

/// A watermark in the model: (epoch, round) and the digest signed there.
type Mark = ((u64, u64), [u8; 32]);

/// The model's view of one key on one chain: per kind (proposal, vote, timeout) its mark.
#[derive(Clone, Copy, Debug)]
struct ChainModel {
    chain: ChainId,
    marks: [Option<Mark>; 3],
}

impl ChainModel {
    /// As the library reports a key's watermarks on a chain.
    fn reported(&self) -> ChainWatermarks {
        let mark = |at: usize| {
            self.marks[at].map(|((epoch, round), digest)| Watermark {
                epoch,
                round,
                digest,
            })
        };
        ChainWatermarks {
            chain: self.chain,
            proposal: mark(0),
            vote: mark(1),
            timeout: mark(2),
        }
    }
}

/// What the model says of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expected {
    /// Signed; `new` if the watermark moves (a write, for a sealed store), else a repeat of the
    /// watermark's own message.
    Signed { new: bool },
    /// Refused by the guard, naming the rule and the kind's watermark.
    WouldDoubleSign {
        rule: GuardRule,
        watermark: Option<Watermark>,
    },
    /// The key already keeps watermarks for its most chains.
    ChainLimit,
    /// Not a consensus key.
    NotAConsensusKey(Purpose),
}

/// The model: per key, the chains it keeps watermarks for, in the order it first kept each.
#[derive(Clone, Debug, Default)]
struct Model {
    chains: [Vec<ChainModel>; 3],
}

impl Model {
    /// The index of `chain` among the key's chains, or where a new one would go; `None` when the
    /// key keeps its most chains already.
    fn chain_index(&self, key: usize, chain: ChainId) -> Option<usize> {
        let chains = &self.chains[key];
        match chains.iter().position(|held| held.chain == chain) {
            Some(index) => Some(index),
            None if chains.len() < CHAIN_CAP => Some(chains.len()),
            None => None,
        }
    }

    fn chain_or_empty(&self, key: usize, index: usize, chain: ChainId) -> ChainModel {
        self.chains[key].get(index).copied().unwrap_or(ChainModel {
            chain,
            marks: [None; 3],
        })
    }

    fn store(&mut self, key: usize, index: usize, model: ChainModel) {
        if index == self.chains[key].len() {
            self.chains[key].push(model);
        } else {
            self.chains[key][index] = model;
        }
    }

    /// The rules, applied to `message` for `key`: the answer, and the watermark moved if it is
    /// signed anew.
    fn sign(&mut self, key: usize, message: &ConsensusMessage) -> Expected {
        if KEYS[key] != Purpose::Consensus {
            return Expected::NotAConsensusKey(KEYS[key]);
        }
        let Some(index) = self.chain_index(key, message.chain) else {
            return Expected::ChainLimit;
        };
        let mut model = self.chain_or_empty(key, index, message.chain);
        let at = (message.epoch, message.round);
        let own = model.marks[slot(message.kind)];
        // The refusal names the watermark the message met: its own kind's, or for a rule
        // between kinds the other kind's.
        let refuse = |rule| Expected::WouldDoubleSign {
            rule,
            watermark: model.reported().of(match rule {
                GuardRule::VoteAfterTimeout => ConsensusKind::Timeout,
                GuardRule::TimeoutBelowVote => ConsensusKind::Vote,
                _ => message.kind,
            }),
        };
        if let Some((position, digest)) = own {
            if at < position {
                return refuse(GuardRule::BelowWatermark);
            }
            if at == position {
                return if digest == message.digest {
                    Expected::Signed { new: false }
                } else {
                    refuse(GuardRule::ConflictingDigest)
                };
            }
        }
        let vote = model.marks[slot(ConsensusKind::Vote)];
        let timeout = model.marks[slot(ConsensusKind::Timeout)];
        match message.kind {
            // A round timed out is never voted in afterwards.
            ConsensusKind::Vote if timeout.is_some_and(|(position, _)| at <= position) => {
                return refuse(GuardRule::VoteAfterTimeout);
            }
            // A round voted in may be timed out, an earlier one not.
            ConsensusKind::Timeout if vote.is_some_and(|(position, _)| at < position) => {
                return refuse(GuardRule::TimeoutBelowVote);
            }
            _ => {}
        }
        model.marks[slot(message.kind)] = Some((at, message.digest));
        self.store(key, index, model);
        Expected::Signed { new: true }
    }

    /// An import of `offered` for `key`: `Ok(true)` if any watermark rose (a write), `Ok(false)`
    /// if none did, or the refusal.
    fn raise(&mut self, key: usize, offered: &ChainModel) -> Result<bool, Expected> {
        if KEYS[key] != Purpose::Consensus {
            return Err(Expected::NotAConsensusKey(KEYS[key]));
        }
        let index = self
            .chain_index(key, offered.chain)
            .ok_or(Expected::ChainLimit)?;
        let mut model = self.chain_or_empty(key, index, offered.chain);
        let mut raised = false;
        for (held, offered) in model.marks.iter_mut().zip(offered.marks) {
            if let Some(offered) = offered
                && held.is_none_or(|held| offered.0 > held.0)
            {
                *held = Some(offered);
                raised = true;
            }
        }
        if raised {
            self.store(key, index, model);
        }
        Ok(raised)
    }

    /// The key's marks on `chain`, per kind slot (none where it keeps none there).
    fn marks_of(&self, key: usize, chain: ChainId) -> [Option<Mark>; 3] {
        self.chains[key]
            .iter()
            .find(|held| held.chain == chain)
            .map_or([None; 3], |held| held.marks)
    }

    /// The key's watermarks as the signer lists them: a chain per place, in the order it was
    /// first kept (places for four).
    fn listed(&self, key: usize) -> [Option<ChainWatermarks>; CHAIN_CAP] {
        std::array::from_fn(|at| self.chains[key].get(at).map(ChainModel::reported))
    }
}

/// One step of a case.
#[derive(Clone, Debug)]
enum Step {
    /// Sign a consensus message with key `key`.
    Sign {
        key: usize,
        message: ConsensusMessage,
    },
    /// Sign again a message signed before (the `pick`-th of those signed, modulo their number),
    /// with the digest it had or another: repeats and conflicts, many of them across restarts.
    Again { pick: usize, digest: Option<u8> },
    /// Ask for the key's watermarks.
    Watermarks { key: usize },
    /// Import watermarks for the key.
    Raise { key: usize, marks: ChainModel },
    /// Sign a blind digest with the key (refused for a consensus key).
    Blind { key: usize },
    /// Ask a memory-only signer to release a message (it has nothing to release).
    Release {
        key: usize,
        message: ConsensusMessage,
    },
    /// Drop the service and spawn another on the same store (sealed property only).
    Restart,
    /// A new signer under the same service (sealed property only).
    Respawn,
}

fn key() -> impl Strategy<Value = usize> {
    prop_oneof![4 => Just(0usize), 2 => Just(1usize), 1 => Just(2usize)]
}

/// Chains 0 and 1 most of the time, the others now and then: a key reaches its cap of four
/// chains in some cases, not in most.
fn chain_index() -> impl Strategy<Value = usize> {
    prop_oneof![8 => Just(0usize), 4 => Just(1usize), 1 => 2..CHAINS]
}

fn kind() -> impl Strategy<Value = ConsensusKind> {
    proptest::sample::select(ConsensusKind::ALL.to_vec())
}

/// A message in a small space: epochs 0..2, rounds 0..4, three digests, so that equal
/// positions, repeats and conflicts are frequent.
fn message() -> impl Strategy<Value = ConsensusMessage> {
    (chain_index(), kind(), 0u64..2, 0u64..4, 0u8..3).prop_map(
        |(chain_at, kind, epoch, round, digest_at)| {
            ConsensusMessage::new(chain(chain_at), epoch, round, kind, digest(digest_at))
        },
    )
}

fn mark() -> impl Strategy<Value = Option<Mark>> {
    proptest::option::of(
        (0u64..2, 0u64..5, 0u8..3)
            .prop_map(|(epoch, round, digest_at)| ((epoch, round), digest(digest_at))),
    )
}

fn marks() -> impl Strategy<Value = ChainModel> {
    (chain_index(), mark(), mark(), mark()).prop_map(|(chain_at, proposal, vote, timeout)| {
        ChainModel {
            chain: chain(chain_at),
            marks: [proposal, vote, timeout],
        }
    })
}

/// The steps both properties draw from; `restarts` adds restarts and respawns.
fn step(restarts: bool) -> BoxedStrategy<Step> {
    let requests = prop_oneof![
        24 => (key(), message()).prop_map(|(key, message)| Step::Sign { key, message }),
        6 => (any::<usize>(), proptest::option::of(0u8..3))
            .prop_map(|(pick, digest)| Step::Again { pick, digest }),
        2 => key().prop_map(|key| Step::Watermarks { key }),
        2 => (key(), marks()).prop_map(|(key, marks)| Step::Raise { key, marks }),
        1 => key().prop_map(|key| Step::Blind { key }),
        1 => (key(), message()).prop_map(|(key, message)| Step::Release { key, message }),
    ];
    if restarts {
        prop_oneof![
            30 => requests,
            2 => Just(Step::Restart),
            1 => Just(Step::Respawn),
        ]
        .boxed()
    } else {
        requests.boxed()
    }
}

/// Every signature given so far, by key and message: a repeat must give the same one.
type Given = BTreeMap<(usize, [u8; 101]), Signature>;

/// Checks a signature for `message` by `key`: it verifies over the typed bytes; a repeat gives
/// the signature given before for the same message, if one was (none was for a watermark that
/// came by import); a `new` one is for a message never signed before.
fn check_signature(
    given: &mut Given,
    public: &[VerifyingKey],
    key: usize,
    message: &ConsensusMessage,
    signature: Signature,
    new: bool,
    at: &str,
) -> Result<(), TestCaseError> {
    let bytes = message.signing_bytes();
    prop_assert!(
        public[key].verify_strict(&bytes, &signature).is_ok(),
        "{}: the signature does not verify",
        at
    );
    match given.get(&(key, bytes)) {
        Some(earlier) => {
            prop_assert!(!new, "{}: a message signed before moved the watermark", at);
            prop_assert_eq!(
                *earlier,
                signature,
                "{}: the same message signed again gave another signature",
                at
            );
        }
        None => {
            given.insert((key, bytes), signature);
        }
    }
    Ok(())
}

/// Messages signed so far, by key, in the order they were signed.
type History = Vec<(usize, ConsensusMessage)>;

/// The step to take: `Again` becomes the `Sign` it names (`None` while nothing was signed).
fn resolve(step: &Step, history: &History) -> Option<Step> {
    match step {
        Step::Again {
            pick,
            digest: other,
        } => {
            let &(key, mut message) = history.get(pick % history.len().max(1))?;
            if let Some(other) = other {
                message.digest = digest(*other);
            }
            Some(Step::Sign { key, message })
        }
        step => Some(step.clone()),
    }
}

// ---------------------------------------------------------------------------------------------
// Through the in-process dispatcher.

/// The bytes in `[...]` after `label` in an answer's `Debug` form.
fn bytes_after(summary: &str, label: &str) -> Option<Vec<u8>> {
    let start = summary.find(label)? + label.len();
    let end = start + summary[start..].find(']')?;
    summary[start..end]
        .split(',')
        .map(|byte| byte.trim().parse::<u8>().ok())
        .collect()
}

/// The signature in a `Signature { r, s }` answer's `Debug` form.
fn signature_of(summary: &str) -> Option<Signature> {
    if !summary.starts_with("Signature {") {
        return None;
    }
    let r: [u8; 32] = bytes_after(summary, "r: [")?.try_into().ok()?;
    let s: [u8; 32] = bytes_after(summary, "s: [")?.try_into().ok()?;
    Some(Signature::from_components(r, s))
}

/// A refusal's `Debug` form as the dispatcher prints it.
fn refusal_summary(expected: &Expected) -> String {
    match expected {
        Expected::WouldDoubleSign { rule, watermark } => {
            format!("Refused(WouldDoubleSign {{ rule: {rule:?}, watermark: {watermark:?} }})")
        }
        Expected::ChainLimit => format!("Refused(ChainLimit {{ cap: {CHAIN_CAP} }})"),
        Expected::NotAConsensusKey(purpose) => {
            format!("Refused(NotAConsensusKey {{ purpose: {purpose:?} }})")
        }
        Expected::Signed { .. } => unreachable!("not a refusal"),
    }
}

/// Counts of what the dispatcher property saw, so a run shows it reached every rule.
#[derive(Debug, Default)]
struct Seen {
    outcomes: BTreeMap<String, usize>,
}

impl Seen {
    fn count(&mut self, what: &Expected) {
        let name = match what {
            Expected::Signed { new: true } => "signed".to_owned(),
            Expected::Signed { new: false } => "repeat".to_owned(),
            Expected::WouldDoubleSign { rule, .. } => format!("{rule:?}"),
            Expected::ChainLimit => "ChainLimit".to_owned(),
            Expected::NotAConsensusKey(_) => "NotAConsensusKey".to_owned(),
        };
        *self.outcomes.entry(name).or_default() += 1;
    }
}

struct Lane {
    dispatcher: Dispatcher,
    next_id: u64,
}

impl Lane {
    fn ask(&mut self, frame: impl FnOnce(u64) -> Vec<u8>) -> String {
        let id = self.next_id;
        self.next_id += 1;
        let frame = frame(id);
        match self.dispatcher.handle(&frame[4..]) {
            DispatchResult::Answered {
                id: answered,
                summary,
            } => {
                assert_eq!(answered, id);
                summary
            }
            DispatchResult::Stopped => panic!("the dispatcher stopped on a valid request"),
        }
    }
}

fn run_in_process(steps: &[Step], seen: &mut Seen) -> Result<(), TestCaseError> {
    let mut lane = Lane {
        dispatcher: Dispatcher::new(8).unwrap(),
        next_id: 1,
    };
    let mut keys = Vec::new();
    let mut public = Vec::new();
    for purpose in KEYS {
        let summary = lane.ask(|id| generate_key_frame(id, KeySpec::new(purpose)));
        keys.push(generated_key_from_summary(&summary).unwrap());
        let bytes: [u8; 32] = bytes_after(&summary, "public_key: [")
            .unwrap()
            .try_into()
            .unwrap();
        public.push(VerifyingKey::from_bytes(&bytes).unwrap());
    }
    let mut model = Model::default();
    let mut given = Given::new();
    let mut history = History::new();
    for (index, step) in steps.iter().enumerate() {
        let Some(step) = resolve(step, &history) else {
            continue;
        };
        let step = &step;
        let at = format!("step {index} ({step:?})");
        match step {
            Step::Sign { key, message } => {
                let expected = model.sign(*key, message);
                seen.count(&expected);
                let summary = lane.ask(|id| sign_consensus_frame(id, keys[*key], *message));
                match expected {
                    Expected::Signed { new } => {
                        let signature = signature_of(&summary).ok_or_else(|| {
                            TestCaseError::fail(format!(
                                "{at}: the model signs ({expected:?}), the signer said {summary}"
                            ))
                        })?;
                        check_signature(&mut given, &public, *key, message, signature, new, &at)?;
                        history.push((*key, *message));
                    }
                    refused => prop_assert_eq!(
                        &summary,
                        &refusal_summary(&refused),
                        "{}: the model refuses",
                        at
                    ),
                }
            }
            Step::Watermarks { key } => {
                let summary = lane.ask(|id| watermarks_frame(id, keys[*key]));
                let expected = if KEYS[*key] == Purpose::Consensus {
                    format!("Watermarks({:?})", model.listed(*key))
                } else {
                    refusal_summary(&Expected::NotAConsensusKey(KEYS[*key]))
                };
                prop_assert_eq!(&summary, &expected, "{}", at);
            }
            Step::Raise { key, marks } => {
                let summary =
                    lane.ask(|id| raise_watermarks_frame(id, keys[*key], marks.reported()));
                let expected = match model.raise(*key, marks) {
                    // A memory-only signer has nothing to write.
                    Ok(_) => "WatermarksRaised { change: None }".to_owned(),
                    Err(refused) => refusal_summary(&refused),
                };
                prop_assert_eq!(&summary, &expected, "{}", at);
            }
            Step::Blind { key } => {
                let summary = lane.ask(|id| sign_frame(id, keys[*key], [0x77; 32]));
                if KEYS[*key] == Purpose::Consensus {
                    prop_assert_eq!(
                        &summary,
                        "Refused(BlindSigningRefused { purpose: Consensus })",
                        "{}",
                        at
                    );
                } else {
                    let signature = signature_of(&summary).unwrap();
                    prop_assert!(
                        public[*key].verify_strict(&[0x77; 32], &signature).is_ok(),
                        "{}",
                        at
                    );
                }
            }
            Step::Release { key, message } => {
                let summary = lane.ask(|id| release_consensus_frame(id, keys[*key], *message, 1));
                let expected = if KEYS[*key] == Purpose::Consensus {
                    "Refused(NotReleasable)".to_owned()
                } else {
                    refusal_summary(&Expected::NotAConsensusKey(KEYS[*key]))
                };
                prop_assert_eq!(&summary, &expected, "{}", at);
            }
            Step::Restart | Step::Respawn | Step::Again { .. } => {
                unreachable!("not drawn for the dispatcher, or resolved")
            }
        }
    }
    Ok(())
}

#[test]
fn the_guard_in_the_dispatcher_answers_as_the_model_says() {
    let config = ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let strategy = proptest::collection::vec(step(false), 1..=80);
    let seen = std::cell::RefCell::new(Seen::default());
    if let Err(failure) = runner.run(&strategy, |steps| {
        run_in_process(&steps, &mut seen.borrow_mut())
    }) {
        panic!("{failure}");
    }
    let seen = seen.into_inner();
    eprintln!("in-process guard property: {:?}", seen.outcomes);
    // Not vacuous: every rule, repeats and the chain cap were reached.
    for outcome in [
        "signed",
        "repeat",
        "BelowWatermark",
        "ConflictingDigest",
        "VoteAfterTimeout",
        "TimeoutBelowVote",
        "ChainLimit",
        "NotAConsensusKey",
    ] {
        assert!(
            seen.outcomes.get(outcome).is_some_and(|&count| count > 0),
            "{outcome} never reached: {:?}",
            seen.outcomes
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Through a real service on a sealed store, with restarts.

/// The state file's sequence number (bytes 119..127): how many sealed changes it has seen.
fn sequence(base: &StoreBase) -> u64 {
    let bytes = std::fs::read(base.store().join(store_util::STATE)).unwrap();
    u64::from_le_bytes(bytes[119..127].try_into().unwrap())
}

/// The error the service returns for a refusal the model expects.
fn expected_error(
    expected: &Expected,
    key: KeyId,
    message: Option<&ConsensusMessage>,
) -> Option<Error> {
    Some(match expected {
        Expected::WouldDoubleSign { rule, watermark } => {
            let message = message?;
            Error::WouldDoubleSign {
                key,
                kind: message.kind,
                epoch: message.epoch,
                round: message.round,
                rule: *rule,
                watermark: *watermark,
            }
        }
        Expected::ChainLimit => Error::ChainLimit {
            key,
            cap: u32::try_from(CHAIN_CAP).unwrap(),
        },
        Expected::NotAConsensusKey(purpose) => Error::NotAConsensusKey {
            key,
            purpose: *purpose,
        },
        Expected::Signed { .. } => return None,
    })
}

/// `Error` has no `PartialEq` (it carries I/O errors): compare the `Debug` forms.
fn same_error(found: &Error, expected: &Error) -> bool {
    format!("{found:?}") == format!("{expected:?}")
}

fn run_sealed(steps: &[Step], seen: &mut Seen) -> Result<(), TestCaseError> {
    let base = StoreBase::new("consensus-properties");
    let mut service = SecretService::spawn(base.create_config()).unwrap();
    let mut keys = Vec::new();
    let mut public = Vec::new();
    for purpose in KEYS {
        let key = service.generate_key(KeySpec::new(purpose)).unwrap();
        keys.push(key);
        public.push(*service.public_key(key).unwrap().as_ed25519().unwrap());
    }
    let mut model = Model::default();
    let mut given = Given::new();
    let mut history = History::new();
    // Watermarks raised by an import since the signer last learnt what is durable (a release,
    // or reading the store at a start): docs/consensus-format.md, section 3, "a repeat of a
    // message whose watermark is not yet known durable is sealed and written again before it
    // is released". Per (key, chain, kind slot).
    let mut not_known_durable: std::collections::BTreeSet<(usize, ChainId, usize)> =
        std::collections::BTreeSet::new();
    for (index, step) in steps.iter().enumerate() {
        let Some(step) = resolve(step, &history) else {
            continue;
        };
        let step = &step;
        let at = format!("step {index} ({step:?}) of {steps:?}");
        let before = sequence(&base);
        // The writes the step must cost: one per watermark moved, none otherwise.
        let mut writes = 0;
        match step {
            Step::Sign { key, message } => {
                let expected = model.sign(*key, message);
                seen.count(&expected);
                let result = service.sign_consensus(keys[*key], message);
                match (&expected, result) {
                    (Expected::Signed { new }, Ok(signature)) => {
                        let resealed =
                            not_known_durable.contains(&(*key, message.chain, slot(message.kind)));
                        writes = u64::from(*new || resealed);
                        if writes > 0 {
                            // Released at the newest sequence: everything sealed before it is
                            // known durable now.
                            not_known_durable.clear();
                        }
                        check_signature(&mut given, &public, *key, message, signature, *new, &at)?;
                        history.push((*key, *message));
                    }
                    (expected, Err(error)) => {
                        let wanted = expected_error(expected, keys[*key], Some(message));
                        prop_assert!(
                            wanted
                                .as_ref()
                                .is_some_and(|wanted| same_error(&error, wanted)),
                            "{}: expected {:?}, got {:?}",
                            at,
                            expected,
                            error
                        );
                    }
                    (expected, Ok(_)) => {
                        return Err(TestCaseError::fail(format!(
                            "{at}: signed, the model says {expected:?}"
                        )));
                    }
                }
            }
            Step::Watermarks { key } => match service.watermarks(keys[*key]) {
                Ok(mut listed) => {
                    prop_assert_eq!(KEYS[*key], Purpose::Consensus, "{}", at);
                    // The order of chains after a restart is the file's: compare as sets.
                    listed.sort_by_key(|marks| marks.chain);
                    let mut expected: Vec<_> = model.listed(*key).into_iter().flatten().collect();
                    expected.sort_by_key(|marks| marks.chain);
                    prop_assert_eq!(listed, expected, "{}", at);
                }
                Err(error) => {
                    let wanted =
                        expected_error(&Expected::NotAConsensusKey(KEYS[*key]), keys[*key], None)
                            .unwrap();
                    prop_assert!(
                        KEYS[*key] != Purpose::Consensus && same_error(&error, &wanted),
                        "{}: {:?}",
                        at,
                        error
                    );
                }
            },
            Step::Raise { key, marks } => {
                let result = service.raise_watermarks(keys[*key], &marks.reported());
                let held = model.marks_of(*key, marks.chain);
                match (model.raise(*key, marks), result) {
                    (Ok(raised), Ok(())) => {
                        writes = u64::from(raised);
                        let now = model.marks_of(*key, marks.chain);
                        for kind in 0..3 {
                            if now[kind] != held[kind] {
                                not_known_durable.insert((*key, marks.chain, kind));
                            }
                        }
                    }
                    (Err(expected), Err(error)) => {
                        let wanted = expected_error(&expected, keys[*key], None).unwrap();
                        prop_assert!(same_error(&error, &wanted), "{}: {:?}", at, error);
                    }
                    (expected, found) => {
                        return Err(TestCaseError::fail(format!(
                            "{at}: the model says {expected:?}, the service {found:?}"
                        )));
                    }
                }
            }
            Step::Blind { key } => {
                let result = service.sign(keys[*key], &[0x77; 32]);
                if KEYS[*key] == Purpose::Consensus {
                    prop_assert!(
                        matches!(
                            result,
                            Err(Error::BlindSigningRefused {
                                purpose: Purpose::Consensus,
                                ..
                            })
                        ),
                        "{}: {:?}",
                        at,
                        result
                    );
                } else {
                    let signature = result.unwrap();
                    prop_assert!(
                        public[*key].verify_strict(&[0x77; 32], &signature).is_ok(),
                        "{}",
                        at
                    );
                }
            }
            // The release is the host's own step; the service never lets a caller send one.
            Step::Release { .. } => {}
            Step::Again { .. } => unreachable!("resolved"),
            Step::Restart => {
                *seen.outcomes.entry("restart".to_owned()).or_default() += 1;
                not_known_durable.clear();
                drop(service);
                service = SecretService::spawn(base.open_config())
                    .map_err(|error| TestCaseError::fail(format!("{at}: reopening: {error}")))?;
            }
            Step::Respawn => {
                *seen.outcomes.entry("respawn".to_owned()).or_default() += 1;
                not_known_durable.clear();
                service
                    .respawn()
                    .map_err(|error| TestCaseError::fail(format!("{at}: {error}")))?;
            }
        }
        prop_assert_eq!(
            sequence(&base),
            before + writes,
            "{}: the writes the step cost",
            at
        );
    }
    Ok(())
}

/// The case the random runs once found: a watermark raised by an import is not known durable to
/// the signer, so the first repeat of its message is written again before it is released, and
/// the next repeat, known durable then, costs nothing; across a restart the file's marks are
/// durable. The model counts exactly those writes.
#[test]
fn a_repeat_of_an_imported_watermark_is_written_once_then_costs_nothing() {
    let chain = ChainId([0xc0; 32]);
    let timeout = ConsensusMessage::timeout(chain, 1, 0, [0xd1; 32]);
    let raised = ChainModel {
        chain,
        marks: [None, None, Some(((1, 0), [0xd1; 32]))],
    };
    let sign = Step::Sign {
        key: 1,
        message: timeout,
    };
    let steps = [
        Step::Raise {
            key: 1,
            marks: raised,
        },
        sign.clone(),
        sign.clone(),
        Step::Raise {
            key: 0,
            marks: raised,
        },
        Step::Restart,
        Step::Sign {
            key: 0,
            message: timeout,
        },
    ];
    let mut seen = Seen::default();
    run_sealed(&steps, &mut seen).unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!(seen.outcomes.get("repeat"), Some(&3), "{:?}", seen.outcomes);
}

#[test]
fn the_guard_on_a_sealed_store_across_restarts_answers_as_the_model_says() {
    let config = ProptestConfig {
        cases: 16,
        max_shrink_iters: 100,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let strategy = proptest::collection::vec(step(true), 30);
    let seen = std::cell::RefCell::new(Seen::default());
    if let Err(failure) = runner.run(&strategy, |steps| {
        run_sealed(&steps, &mut seen.borrow_mut())
    }) {
        panic!("{failure}");
    }
    let seen = seen.into_inner();
    eprintln!("sealed guard property: {:?}", seen.outcomes);
    for outcome in ["signed", "restart", "BelowWatermark", "ConflictingDigest"] {
        assert!(
            seen.outcomes.get(outcome).is_some_and(|&count| count > 0),
            "{outcome} never reached: {:?}",
            seen.outcomes
        );
    }
}
