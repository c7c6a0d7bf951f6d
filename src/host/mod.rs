//! Runs in the host: everything that executes in the validator's own process. Nothing here
//! ever holds a secret key.
//!
//! A request's path on this side: `service` (the [`SecretService`](crate::SecretService) and its
//! [`KeyService`](crate::KeyService) methods check the key id) → `operations` (the typed request
//! and the answer kind it expects) → `signer_process` (picks a lane, writes the frame, matches
//! the answer to its caller; `verdict` decides what a failure means) → the pipe (`wire`) → the
//! signer (`signer`) and back.

pub(crate) mod config;
pub(crate) mod error;
pub(crate) mod interchange;
pub(crate) mod key_handle;
pub(crate) mod key_service;
pub(crate) mod keys;
pub(crate) mod machine;
pub(crate) mod operations;
pub(crate) mod provisioning;
pub(crate) mod sandbox_policy;
pub(crate) mod service;
pub(crate) mod signer_process;
pub(crate) mod signer_program;
pub(crate) mod status;
pub(crate) mod store;
