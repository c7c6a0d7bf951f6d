//! Runs in the host: [`KeySigner`], an owned handle to one Ed25519 key, for code written against
//! RustCrypto's [`signature::Signer`].

use std::sync::Arc;

use crate::host::error::{Error, Result};
use crate::host::key_service::KeyService;
use crate::host::keys::{KeyId, PublicKey};
use crate::wire::key_types::Algorithm;

/// A [`signature::Signer`] backed by one Ed25519 key held by a [`KeyService`].
///
/// It owns a share of the service (`Clone + Send + Sync + 'static`): store it in a struct, clone
/// it, move it into a thread or a task; it keeps working after the service value that made it has
/// been moved, and its signer lives until the last handle is dropped. After a respawn it fails
/// as the service does for a key of an ended signer ([`Error::KeyFromEndedSigner`]).
///
/// `try_sign` signs messages of any length up to [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN)
/// with pure Ed25519 (RFC 8032) over the message bytes; a longer one fails with an error whose
/// source is [`Error::MessageTooLong`].
#[derive(Clone, Debug)]
pub struct KeySigner {
    service: Arc<dyn KeyService>,
    key: KeyId,
    verifying_key: ed25519_dalek::VerifyingKey,
}

impl KeySigner {
    /// A signer for `key` of `service`, which must be an Ed25519 key.
    pub fn new(service: Arc<dyn KeyService>, key: KeyId) -> Result<Self> {
        match service.public_key(key)? {
            PublicKey::Ed25519(verifying_key) => Ok(Self {
                service,
                key,
                verifying_key,
            }),
            PublicKey::X25519(_) => Err(Error::WrongKeyType {
                key,
                algorithm: Algorithm::X25519,
                operation: "signing_key",
                needed: Algorithm::Ed25519,
            }),
        }
    }

    /// The key this signer uses.
    pub fn key_id(&self) -> KeyId {
        self.key
    }
}

impl signature::Signer<ed25519_dalek::Signature> for KeySigner {
    fn try_sign(&self, message: &[u8]) -> Result<ed25519_dalek::Signature, signature::Error> {
        self.service
            .sign_message(self.key, message)
            .map_err(signature::Error::from_source)
    }
}

impl signature::Keypair for KeySigner {
    type VerifyingKey = ed25519_dalek::VerifyingKey;

    fn verifying_key(&self) -> Self::VerifyingKey {
        self.verifying_key
    }
}
