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
///
/// It signs as the public key it reports ([`signature::Keypair::verifying_key`]), or not at all:
/// once its key has been rotated, `try_sign` fails with an error whose source is
/// [`Error::KeyRotated`]; make a new `KeySigner` for the new version.
#[derive(Debug)]
pub struct KeySigner {
    service: Arc<dyn KeyService>,
    key: KeyId,
    verifying_key: ed25519_dalek::VerifyingKey,
    /// The service's count of rotations begun when `verifying_key` was last known to be the
    /// key's: while it has not moved, no signature needs checking.
    rotations_seen: std::sync::atomic::AtomicU64,
}

impl Clone for KeySigner {
    fn clone(&self) -> Self {
        Self {
            service: Arc::clone(&self.service),
            key: self.key,
            verifying_key: self.verifying_key,
            rotations_seen: std::sync::atomic::AtomicU64::new(
                self.rotations_seen
                    .load(std::sync::atomic::Ordering::SeqCst),
            ),
        }
    }
}

impl KeySigner {
    /// A signer for `key` of `service`, which must be an Ed25519 key.
    pub fn new(service: Arc<dyn KeyService>, key: KeyId) -> Result<Self> {
        let rotations = service.rotations_begun();
        match service.public_key(key)? {
            PublicKey::Ed25519(verifying_key) => Ok(Self {
                service,
                key,
                verifying_key,
                rotations_seen: std::sync::atomic::AtomicU64::new(rotations),
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
        use std::sync::atomic::Ordering;
        let seen = self.rotations_seen.load(Ordering::SeqCst);
        let before = self.service.rotations_begun();
        let signature = self
            .service
            .sign_message(self.key, message)
            .map_err(signature::Error::from_source)?;
        // A rotation counts itself before it is sent, so any signature by a new version is
        // made after the count moved: with no move, this is the version this handle reports.
        if before == seen && self.service.rotations_begun() == seen {
            return Ok(signature);
        }
        // Some key of the service was rotated: this signature is checked, and the handle is
        // fast again once its key is known to be unchanged.
        if self
            .verifying_key
            .verify_strict(message, &signature)
            .is_err()
        {
            return Err(signature::Error::from_source(Error::KeyRotated {
                key: self.key,
            }));
        }
        if matches!(self.service.public_key(self.key), Ok(PublicKey::Ed25519(current)) if current == self.verifying_key)
        {
            let _ = self.rotations_seen.compare_exchange(
                seen,
                before,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        Ok(signature)
    }
}

impl signature::Keypair for KeySigner {
    type VerifyingKey = ed25519_dalek::VerifyingKey;

    fn verifying_key(&self) -> Self::VerifyingKey {
        self.verifying_key
    }
}
