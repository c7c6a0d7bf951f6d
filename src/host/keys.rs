//! Runs in the host: the public vocabulary of keys as a caller holds them (how a caller names a
//! key, its public key, the shared secrets that come back). No type here ever holds a secret key.
//! What a key is for and its algorithm are wire types (`wire::key_types`), re-exported.

use std::fmt;

use crate::wire::key_types::{Algorithm, Purpose, StoreId, WireKeyId};
use crate::wire::messages::WireSecret;

/// The name of one key: the store that holds it and its id within that store.
///
/// It holds no secret, and it is stable: it names the same key for as long as the key exists,
/// whichever signer process serves its store. A memory-only signer makes a new store each time it
/// starts, so after a respawn an old id is refused as the id of a store that is gone
/// ([`Error::KeyFromEndedSigner`](crate::Error)), never confused with a new key.
///
/// `Display` prints a short form for logs (`3f2a1b9c…`); the alternate form (`{:#}`) prints all
/// 48 hex digits (store, then key), which [`str::parse`] reads back, for configuration files and
/// for clients of a service in another process.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub(crate) WireKeyId);

impl KeyId {
    pub(crate) fn wire(self) -> WireKeyId {
        self.0
    }

    pub(crate) fn store(self) -> StoreId {
        self.0.store
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            for byte in self.0.store.iter().chain(&self.0.local) {
                write!(f, "{byte:02x}")?;
            }
            return Ok(());
        }
        // The first four bytes of the key's own id, enough to tell keys apart in a log line.
        for byte in &self.0.local[..4] {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("…")
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self:#})")
    }
}

/// A key id's text form was not 48 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a key id is 48 hex digits (store, then key), as `{{:#}}` prints it")]
pub struct ParseKeyIdError;

impl std::str::FromStr for KeyId {
    type Err = ParseKeyIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 24];
        let digits = text.as_bytes();
        if digits.len() != 2 * bytes.len() {
            return Err(ParseKeyIdError);
        }
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| ParseKeyIdError)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| ParseKeyIdError)?;
        }
        let (store, local) = bytes.split_at(8);
        Ok(KeyId(WireKeyId {
            store: store.try_into().map_err(|_| ParseKeyIdError)?,
            local: local.try_into().map_err(|_| ParseKeyIdError)?,
        }))
    }
}

/// A public key, tagged with its algorithm.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum PublicKey {
    /// An Ed25519 verifying key.
    Ed25519(ed25519_dalek::VerifyingKey),
    /// An X25519 public key.
    X25519(x25519_dalek::PublicKey),
}

impl PublicKey {
    /// The algorithm of the key.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            PublicKey::Ed25519(_) => Algorithm::Ed25519,
            PublicKey::X25519(_) => Algorithm::X25519,
        }
    }

    /// The 32 encoded bytes of the key.
    pub fn to_bytes(&self) -> [u8; 32] {
        match self {
            PublicKey::Ed25519(key) => key.to_bytes(),
            PublicKey::X25519(key) => key.to_bytes(),
        }
    }

    /// The Ed25519 verifying key, if this is one.
    pub fn as_ed25519(&self) -> Option<&ed25519_dalek::VerifyingKey> {
        match self {
            PublicKey::Ed25519(key) => Some(key),
            PublicKey::X25519(_) => None,
        }
    }

    /// The X25519 public key, if this is one.
    pub fn as_x25519(&self) -> Option<&x25519_dalek::PublicKey> {
        match self {
            PublicKey::X25519(key) => Some(key),
            PublicKey::Ed25519(_) => None,
        }
    }

    pub(crate) fn from_wire(algorithm: Algorithm, bytes: [u8; 32]) -> Option<Self> {
        match algorithm {
            Algorithm::Ed25519 => ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                .ok()
                .map(PublicKey::Ed25519),
            Algorithm::X25519 => Some(PublicKey::X25519(x25519_dalek::PublicKey::from(bytes))),
        }
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.to_bytes() {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({self})", self.algorithm())
    }
}

/// One key as `list_keys` reports it: its id, purpose and public key. Never the secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key's handle.
    pub id: KeyId,
    /// What the key is for.
    pub purpose: Purpose,
    /// The key's public half.
    pub public_key: PublicKey,
}

/// One version of a key, as [`key_versions`](crate::SecretService::key_versions) reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyVersion {
    /// 1 when the key was made, one more at each rotation.
    pub version: u32,
    /// This version's public key.
    pub public_key: PublicKey,
    /// When this version was made (the signer's clock, to the second).
    pub created: std::time::SystemTime,
    /// `None` for the current version; for a previous one, when its grace period ends (it is
    /// refused from then on, and erased).
    pub retires: Option<std::time::SystemTime>,
}

/// The result of an X25519 Diffie-Hellman: 32 secret bytes, wiped when dropped, redacted when
/// printed, readable only through [`SharedSecret::expose_secret`].
///
/// The bytes live in one heap buffer, the one the signer's answer was decoded into; it is handed
/// here by pointer, never copied.
pub struct SharedSecret(WireSecret);

impl SharedSecret {
    /// Takes the buffer the answer was decoded into.
    pub(crate) fn new(secret: WireSecret) -> Self {
        Self(secret)
    }

    /// The secret bytes. Every use of the secret goes through here, so it can be found by grep.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0.0
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret([REDACTED])")
    }
}

impl PartialEq for SharedSecret {
    /// Constant-time comparison.
    fn eq(&self, other: &Self) -> bool {
        use subtle_eq::ConstantTimeEq;
        self.0.0.ct_eq(&other.0.0)
    }
}

impl Eq for SharedSecret {}

mod subtle_eq {
    /// A constant-time equality on byte arrays, so comparing secrets leaks no timing.
    pub(super) trait ConstantTimeEq {
        fn ct_eq(&self, other: &Self) -> bool;
    }

    impl ConstantTimeEq for [u8; 32] {
        fn ct_eq(&self, other: &Self) -> bool {
            let mut difference = 0u8;
            for (a, b) in self.iter().zip(other) {
                difference |= a ^ b;
            }
            std::hint::black_box(difference) == 0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_id_prints_short_for_logs_and_whole_for_configs_and_parses_back() {
        let id = KeyId(WireKeyId {
            store: [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef],
            local: [0xfe; 16],
        });
        assert_eq!(id.to_string(), "fefefefe…");
        let whole = format!("{id:#}");
        assert_eq!(whole, format!("0123456789abcdef{}", "fe".repeat(16)));
        assert_eq!(whole.parse::<KeyId>(), Ok(id));
        assert_eq!(format!("{id:?}"), format!("KeyId({whole})"));
        for bad in [
            "",
            "0123",
            &whole[1..],
            &format!("{whole}0"),
            &whole.replace('f', "g"),
        ] {
            assert_eq!(bad.parse::<KeyId>(), Err(ParseKeyIdError), "{bad:?}");
        }
    }

    #[test]
    fn a_shared_secret_prints_redacted_and_compares_by_value() {
        let secret = SharedSecret::new(WireSecret(Box::new([0xcd; 32])));
        let printed = format!("{secret:?}");
        assert_eq!(printed, "SharedSecret([REDACTED])");
        assert_eq!(secret, SharedSecret::new(WireSecret(Box::new([0xcd; 32]))));
        assert_ne!(secret, SharedSecret::new(WireSecret(Box::new([0xce; 32]))));
    }
}
