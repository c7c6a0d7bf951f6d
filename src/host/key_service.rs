//! Runs in the host: the service API as one object-safe trait, [`KeyService`].
//!
//! [`SecretService`](crate::SecretService) implements it over a sandboxed child process; a client
//! of a keyward service in another process (the socket service planned in the roadmap) will
//! implement the same trait. A validator that holds an `Arc<dyn KeyService>` does not need to know
//! which it has.

use crate::host::error::Result;
use crate::host::keys::{KeyId, KeyInfo, PublicKey, SharedSecret};
use crate::wire::key_types::KeySpec;

/// The operations a validator asks of its key service. Every secret stays with the service: what
/// comes back is a key id, a public key, a signature, or a Diffie-Hellman result.
///
/// Object-safe, `Send + Sync`: share one as `Arc<dyn KeyService>` between threads and tasks.
pub trait KeyService: Send + Sync + std::fmt::Debug {
    /// Generates a key for `spec` inside the service and returns its id.
    fn generate_key(&self, spec: KeySpec) -> Result<KeyId>;

    /// `key`'s id, purpose and public key.
    fn key_info(&self, key: KeyId) -> Result<KeyInfo>;

    /// The public key of `key`.
    fn public_key(&self, key: KeyId) -> Result<PublicKey> {
        Ok(self.key_info(key)?.public_key)
    }

    /// How many key rotations this service has begun: a handle that keeps a key's public key
    /// (a [`KeySigner`](crate::KeySigner)) checks it again when this has changed. A service
    /// that never rotates keys may keep the default, 0.
    fn rotations_begun(&self) -> u64 {
        0
    }

    /// Every key the service holds: id, purpose, public key.
    fn list_keys(&self) -> Result<Vec<KeyInfo>>;

    /// Erases `key`. Later use of `key` fails with [`Error::UnknownKey`](crate::Error).
    fn drop_key(&self, key: KeyId) -> Result<()>;

    /// Signs a 32-byte prehashed digest with the Ed25519 key `key`: pure Ed25519 (RFC 8032) over
    /// those 32 bytes; verify with `VerifyingKey::verify_strict(digest, &signature)`.
    fn sign(&self, key: KeyId, digest: &[u8; 32]) -> Result<ed25519_dalek::Signature>;

    /// Signs `message` (up to [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN) bytes) with the
    /// Ed25519 key `key`: pure Ed25519 (RFC 8032) over the message bytes; verify with
    /// `VerifyingKey::verify_strict(message, &signature)`. A longer message is refused with
    /// [`Error::MessageTooLong`](crate::Error) before anything is sent.
    fn sign_message(&self, key: KeyId, message: &[u8]) -> Result<ed25519_dalek::Signature>;

    /// Signs each of `digests` (32-byte prehashed digests) with the Ed25519 key `key`, in one
    /// round trip: the signatures come back in the order of the digests, each exactly what
    /// [`sign`](KeyService::sign) gives for its digest. For a caller holding several digests at
    /// once (a batch of votes or attestations), it saves a request and an answer per signature.
    /// With more than one signer worker free, [`SecretService`](crate::SecretService) splits a
    /// batch of 8 or more digests among the free workers, which sign the parts side by side (each
    /// part at least 4 digests); a refusal of any part is the refusal of the batch.
    /// A batch of none or of more than [`MAX_BATCH`](crate::MAX_BATCH) digests is refused with
    /// [`Error::BatchSize`](crate::Error) before anything is sent.
    fn sign_many(&self, key: KeyId, digests: &[[u8; 32]]) -> Result<Vec<ed25519_dalek::Signature>>;

    /// Signs a typed consensus message with the consensus key `key`, if the signer's
    /// double-sign guard allows it; else [`Error::WouldDoubleSign`](crate::Error) says which
    /// rule refused it and where the watermark stands. The signature covers
    /// [`ConsensusMessage::signing_bytes`](crate::ConsensusMessage::signing_bytes) (verify with
    /// `verify_strict` over those bytes). With a sealed store, the advanced watermark is on disk
    /// before the signature leaves the signer; a repeat of the same message gets the same
    /// signature without a write.
    fn sign_consensus(
        &self,
        key: KeyId,
        message: &crate::wire::consensus::ConsensusMessage,
    ) -> Result<ed25519_dalek::Signature>;

    /// X25519 Diffie-Hellman between the handshake key `key` and a peer's public key. A peer
    /// point of low order (which would make the secret all zeros) is refused.
    fn diffie_hellman(
        &self,
        key: KeyId,
        peer_public: &x25519_dalek::PublicKey,
    ) -> Result<SharedSecret>;
}
