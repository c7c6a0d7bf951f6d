//! Property: any sequence of generates, drops, restarts (the service dropped and spawned again)
//! and respawns (a new signer under the same service) leaves the store holding exactly the keys
//! a model says, after every step: the same ids, purposes and public keys, ids stable across
//! restarts and respawns, every old id still usable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod store_util;

use keyward::{KeyService, KeySpec, Purpose, SecretService};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use store_util::{KeySet, StoreBase, assert_all_sign, describe, key_set};

#[derive(Clone, Debug)]
enum Step {
    Generate(Purpose),
    /// Drops the key at this index (modulo their number) of the model's keys, in id order;
    /// a no-op on an empty store.
    Drop(usize),
    /// Drops the service (its signer ends, the store's lock is released) and spawns another.
    Restart,
    /// Replaces the signer under the same service.
    Respawn,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => proptest::sample::select(Purpose::ALL.to_vec()).prop_map(Step::Generate),
        2 => any::<usize>().prop_map(Step::Drop),
        1 => Just(Step::Restart),
        1 => Just(Step::Respawn),
    ]
}

/// Runs `steps` on a fresh store, comparing it with the model after every step.
fn run(steps: &[Step]) -> Result<(), TestCaseError> {
    let base = StoreBase::new("store-properties");
    let mut service = SecretService::spawn(base.create_config())
        .map_err(|error| TestCaseError::fail(format!("creating the store: {error}")))?;
    let mut model = KeySet::new();
    for (index, step) in steps.iter().enumerate() {
        let at = format!("step {index} ({step:?}) of {steps:?}");
        match step {
            Step::Generate(purpose) => {
                let id = service
                    .generate_key(KeySpec::new(*purpose))
                    .map_err(|error| TestCaseError::fail(format!("{at}: {error}")))?;
                let info = service.key_info(id).unwrap();
                prop_assert_eq!(info.purpose, *purpose, "{}", at);
                let fresh =
                    model.insert(format!("{id:#}"), (*purpose, info.public_key.to_string()));
                prop_assert!(fresh.is_none(), "{}: an id given twice", at);
            }
            Step::Drop(pick) => {
                if model.is_empty() {
                    continue;
                }
                let id = model.keys().nth(pick % model.len()).unwrap().clone();
                service
                    .drop_key(id.parse().unwrap())
                    .map_err(|error| TestCaseError::fail(format!("{at}: {error}")))?;
                model.remove(&id);
            }
            Step::Restart => {
                drop(service);
                service = SecretService::spawn(base.open_config())
                    .map_err(|error| TestCaseError::fail(format!("{at}: reopening: {error}")))?;
            }
            Step::Respawn => {
                service
                    .respawn()
                    .map_err(|error| TestCaseError::fail(format!("{at}: {error}")))?;
            }
        }
        if matches!(step, Step::Restart | Step::Respawn) {
            // The ids the caller kept from before name the same keys.
            for (id, (purpose, public)) in &model {
                let info = service
                    .key_info(id.parse().unwrap())
                    .map_err(|error| TestCaseError::fail(format!("{at}: {id}: {error}")))?;
                prop_assert_eq!(info.purpose, *purpose, "{}: {}", at, id);
                prop_assert_eq!(&info.public_key.to_string(), public, "{}: {}", at, id);
            }
        }
        let found = key_set(&service);
        prop_assert!(
            found == model,
            "{}\nmodel:\n  {}\nstore:\n  {}",
            at,
            describe(&model),
            describe(&found)
        );
    }
    // Every key the model holds still works, and a last restart keeps the set.
    assert_all_sign(&service, &model, 0x61);
    drop(service);
    let service = SecretService::spawn(base.open_config()).unwrap();
    let found = key_set(&service);
    prop_assert!(
        found == model,
        "after a last restart\nmodel:\n  {}\nstore:\n  {}",
        describe(&model),
        describe(&found)
    );
    Ok(())
}

#[test]
fn any_sequence_of_generates_drops_restarts_and_respawns_matches_the_model() {
    let config = ProptestConfig {
        cases: 24,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let strategy = proptest::collection::vec(step(), 1..=20);
    if let Err(failure) = runner.run(&strategy, |steps| run(&steps)) {
        panic!("{failure}");
    }
}
