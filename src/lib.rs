//! keyward keeps a validator's secret keys out of the validator's address space.
//!
//! [`SecretService::spawn`] forks a signer process, hardens it (seccomp allowlist, locked and
//! non-dumpable key memory, no files, no network, no new privileges, no capabilities) and from
//! then on talks to it only over anonymous pipes. The signer generates keys, returns public keys,
//! signs 32-byte prehashed digests with Ed25519 and performs X25519 Diffie-Hellman; no secret key
//! ever leaves it.
//!
//! Where a sign request travels: [`supervisor`](SecretService) (checks the key id) →
//! `signer_process` (picks a lane, matches the answer to its caller) → `transport` (a frame on a
//! pipe) → `child` (the sandboxed signer's serving loop) → `dispatch` (one `match` over every
//! request) → `key_store` (the keys, in locked memory) and back.
//!
//! ```
//! use ed25519_dalek::Verifier;
//! use keyward::{Config, KeySpec, Purpose, SecretService};
//!
//! # fn main() -> Result<(), keyward::Error> {
//! let service = SecretService::spawn(Config::default())?;
//! let consensus = service.generate_key(KeySpec::new(Purpose::Consensus))?;
//! let public = service.public_key(consensus)?;
//! let digest = [7u8; 32]; // prehashed by the caller
//! let signature = service.sign(consensus, &digest)?;
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

mod child;
mod config;
mod dispatch;
mod error;
mod key_store;
mod keys;
mod machine;
mod protocol;
mod sandbox;
mod signer_process;
mod status;
mod supervisor;
mod sys;
mod transport;

#[doc(hidden)]
pub mod fuzzing;

pub use child::{SIGNER_ARGUMENT, run_signer_if_requested};
pub use config::{Config, Latency, RestartPolicy, SpawnMode};
pub use error::{Error, Result, SignerEnd, SpawnError};
pub use keys::{Algorithm, KeyId, KeyInfo, KeySpec, PublicKey, Purpose, SharedSecret};
pub use machine::MachineReport;
#[cfg(feature = "sandbox-test-hooks")]
pub use protocol::ForbiddenSyscall;
pub use protocol::{
    HardeningStep, MAX_FRAME_LEN, MAX_KEY_LIMIT, MAX_WORKERS, PROTOCOL_VERSION, SecretMemory,
};
pub use sandbox::{POLICY_JSON, Policy, PolicyCondition, PolicyRule, Sandbox, policy};
pub use status::{KeyMapping, KeyMemory, SignerStatus};
pub use supervisor::{KeySigner, SecretService};

/// README.md's examples, compiled and run as doctests so the README cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
