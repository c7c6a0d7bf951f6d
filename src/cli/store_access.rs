//! Runs in the host (the binary): how the operator's commands that need a store's keys open it:
//! the way a validator does, through a signer that unseals it, holding the store's lock.

use std::path::PathBuf;

use clap::Args;
use keyward::{Config, Error, SecretService, StoreConfig, StoreError, UnlockSecret};

/// Which store, and how to unlock it.
#[derive(Args, Debug)]
pub(crate) struct StoreArgs {
    /// The store directory (mode 0700).
    #[arg(long, value_name = "DIR")]
    pub(crate) store: PathBuf,
    /// The file holding the store's unlock secret (mode 0600; one trailing newline is ignored).
    #[arg(long, value_name = "FILE")]
    pub(crate) unlock_file: PathBuf,
}

/// Opens the store (with a key limit large enough for what it holds); the error is one line
/// for standard error, with `locked_hint` added when another service holds the store.
pub(crate) fn open_store(store: &StoreArgs, locked_hint: &str) -> Result<SecretService, String> {
    let config = |limit: Option<u32>| {
        let config = Config::default().with_store(StoreConfig::new(
            &store.store,
            UnlockSecret::file(&store.unlock_file),
        ));
        match limit {
            Some(limit) => config.with_key_limit(limit),
            None => config,
        }
    };
    let opened = match SecretService::spawn(config(None)) {
        Err(Error::Store(StoreError::KeyLimitTooSmall { needed, .. })) => {
            SecretService::spawn(config(Some(needed)))
        }
        opened => opened,
    };
    opened.map_err(|error| {
        let hint = match &error {
            Error::Store(StoreError::Locked { .. }) => locked_hint,
            _ => "",
        };
        format!(
            "could not open the store {}: {error}{hint}",
            store.store.display()
        )
    })
}
