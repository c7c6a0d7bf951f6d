//! keyward keeps a validator's secret keys out of the validator's address space.
//!
//! [`SecretService::spawn`] forks a signer process, hardens it (seccomp allowlist, locked and
//! non-dumpable key memory, no files, no network, no new privileges, no capabilities) and from
//! then on talks to it only over anonymous pipes. The signer generates keys, returns public keys,
//! signs prehashed digests (one or a batch at a time) and messages with Ed25519 and performs
//! X25519 Diffie-Hellman; no secret key ever leaves it. The operations are the [`KeyService`]
//! trait.
//!
//! The source is split by which side of the boundary it runs on: `host/` (the validator's
//! process), `signer/` (the sandboxed signer process), `wire/` (what both compile: the messages
//! and their framing) and `sys/` (every `unsafe` system call). Where a sign request travels:
//! `host/service.rs` (checks the key id) → `host/operations.rs` (the typed request) →
//! `host/signer_process/` (picks a lane, matches the answer to its caller) → `wire/framing.rs`
//! (a frame on a pipe) → `signer/serve.rs` (the sandboxed signer's serving loop) →
//! `signer/dispatch.rs` (one `match` over every request) → `signer/key_store.rs` (the keys, in
//! locked memory) and back.
//!
//! ```
//! use ed25519_dalek::Verifier;
//! use keyward::{Config, KeyService, KeySpec, Purpose, SecretService};
//!
//! # fn main() -> Result<(), keyward::Error> {
//! let service = SecretService::spawn(Config::default())?;
//! let account = service.generate_key(KeySpec::new(Purpose::Account))?;
//! let public = service.public_key(account)?;
//! let digest = [7u8; 32]; // prehashed by the caller
//! let signature = service.sign(account, &digest)?;
//! assert!(public.as_ed25519().unwrap().verify_strict(&digest, &signature).is_ok());
//!
//! let handshake = service.generate_key(KeySpec::new(Purpose::NetworkHandshake))?;
//! let peer = x25519_dalek::StaticSecret::from([9u8; 32]);
//! let shared = service.diffie_hellman(handshake, &x25519_dalek::PublicKey::from(&peer))?;
//! let ours = service.public_key(handshake)?;
//! let theirs = peer.diffie_hellman(ours.as_x25519().unwrap());
//! assert_eq!(shared.expose_secret(), theirs.as_bytes());
//! # Ok(())
//! # }
//! ```

#![deny(unsafe_code)]

mod host;
mod signer;
mod sys;
mod wire;

#[cfg(feature = "test-support")]
#[doc(hidden)]
pub mod testing;

pub use host::config::{Config, Latency, RestartPolicy, SpawnMode};
pub use host::error::{Error, Result, SignerEnd, SpawnError};
pub use host::interchange::{
    INTERCHANGE_FORMAT, INTERCHANGE_FORMAT_VERSION, ImportReport, InterchangeError, KeyImport,
    KeyWatermarks, MarkImport, WatermarkInterchange,
};
pub use host::key_handle::KeySigner;
pub use host::key_service::KeyService;
pub use host::keys::{KeyId, KeyInfo, KeyVersion, ParseKeyIdError, PublicKey, SharedSecret};
pub use host::machine::MachineReport;
pub use host::provisioning::{AgeRecipient, ProvisioningRecipient, RestoreReport};
pub use host::sandbox_policy::{
    POLICY_JSON, POLICY_PROGRAM, Policy, PolicyCondition, PolicyRule, Sandbox, policy,
};
pub use host::service::SecretService;
pub use host::status::{FilterCheck, KeyMapping, SignerStatus};
pub use host::store::{
    ListedKey, StoreConfig, StoreCreation, StoreError, StoreListing, UnlockSecret, WriteStep,
};
pub use signer::entry::{SIGNER_ARGUMENT, run_signer_if_requested};
pub use wire::age_format::{AgeError, RecipientError};
pub use wire::backup_format::{
    BACKUP_FIRST_LINE, BackupProblem, PROVISIONING_LABEL, PROVISIONING_STATEMENT_LEN,
    provisioning_statement,
};
pub use wire::consensus::{
    CONSENSUS_DOMAIN, CONSENSUS_SIGNING_LEN, ChainId, ChainWatermarks, ConsensusKind,
    ConsensusMessage, GuardRule, Watermark,
};
pub use wire::key_types::{Algorithm, KeyMemory, KeySpec, Purpose, SecretMemory};
#[cfg(feature = "test-support")]
pub use wire::messages::ForbiddenSyscall;
pub use wire::startup::{HardeningStep, TamperedPart};
pub use wire::store_format::{CorruptField, FormatError, KdfParameters};
pub use wire::{
    MAX_BATCH, MAX_FRAME_LEN, MAX_KEY_LIMIT, MAX_MESSAGE_LEN, MAX_WORKERS, PROTOCOL_VERSION,
};

/// The rule by which keyward's callers and signer workers decide whether a wait spins. Public
/// only so that `keyward bench`'s pipe floor waits exactly as keyward does; not part of the API.
#[doc(hidden)]
pub use wire::framing::SpinBackoff;

/// README.md's examples, compiled and run as doctests so the README cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
