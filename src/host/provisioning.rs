//! Runs in the host: the public face of provisioning and backup. A signer's provisioning
//! recipient (an age X25519 recipient, vouched for by its backup-signing key), and the age
//! recipients backups are encrypted to. The host only ever handles public keys and ciphertext
//! here; every secret is encrypted or decrypted inside the signer.

use std::fmt;
use std::str::FromStr;

use crate::wire::age_format::{RecipientError, parse_recipient, recipient_string};
use crate::wire::backup_format::provisioning_statement;

/// An age X25519 recipient (`age1…`): who a backup is encrypted to.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AgeRecipient(pub(crate) [u8; 32]);

impl AgeRecipient {
    /// The recipient of an X25519 public key.
    pub fn from_x25519(public: &x25519_dalek::PublicKey) -> Self {
        Self(public.to_bytes())
    }

    /// Its X25519 public key.
    pub fn x25519(&self) -> x25519_dalek::PublicKey {
        x25519_dalek::PublicKey::from(self.0)
    }
}

impl FromStr for AgeRecipient {
    type Err = RecipientError;

    /// Parses an `age1…` recipient (as `age-keygen` prints it).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_recipient(text.trim()).map(Self)
    }
}

impl fmt::Display for AgeRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&recipient_string(&self.0))
    }
}

impl fmt::Debug for AgeRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgeRecipient({self})")
    }
}

/// What a [`restore`](crate::SecretService::restore) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// The keys added, under their new ids, with their public keys (the backup's).
    pub added: Vec<(crate::KeyId, crate::PublicKey)>,
    /// How many keys already held had their watermarks raised to the backup's.
    pub raised: u32,
    /// The keys the backup holds (added now, or held before).
    pub keys_in_backup: u32,
    /// The watermarks the backup holds.
    pub marks_in_backup: u32,
}

/// A signer's provisioning recipient: encrypt a key to it (with the stock `age` tool) and
/// [`import_key`](crate::SecretService::import_key) it; only this signer (or, with a sealed
/// store, any signer that opens the same store) can decrypt it. The backup-signing key signs
/// the recipient, so an operator who pinned that key can tell the recipient is genuine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProvisioningRecipient {
    /// The recipient.
    pub recipient: AgeRecipient,
    /// The store it belongs to.
    pub store: [u8; 8],
    /// The store's backup-signing key: it signs this recipient and every backup.
    pub signing_key: ed25519_dalek::VerifyingKey,
    /// The signing key's signature over
    /// [`provisioning_statement`](crate::provisioning_statement)`(store, recipient)`.
    pub signature: ed25519_dalek::Signature,
}

impl ProvisioningRecipient {
    /// Whether `signature` is the signing key's over this recipient and store (strict RFC 8032
    /// verification). Check it against a signing key you pinned, not only against the one
    /// carried here.
    pub fn is_signed_by(&self, signing_key: &ed25519_dalek::VerifyingKey) -> bool {
        signing_key
            .verify_strict(
                &provisioning_statement(&self.store, &self.recipient.0),
                &self.signature,
            )
            .is_ok()
    }
}
