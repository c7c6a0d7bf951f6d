//! The public vocabulary of keys: what a key is for, which algorithm it uses, how a caller names
//! it, and the values that come back across the boundary (public keys, signatures, shared
//! secrets). No type here ever holds a secret key.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// What a key is for. A key carries its purpose from the moment it is generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Purpose {
    /// The validator's account key, which controls the other three.
    Account,
    /// The consensus signing key.
    Consensus,
    /// The network discovery signing key.
    NetworkDiscovery,
    /// The network handshake Diffie-Hellman static key.
    NetworkHandshake,
}

impl Purpose {
    /// Every purpose, in the order a validator usually sets them up.
    pub const ALL: [Purpose; 4] = [
        Purpose::Account,
        Purpose::Consensus,
        Purpose::NetworkDiscovery,
        Purpose::NetworkHandshake,
    ];

    /// The algorithm a key of this purpose uses.
    pub fn algorithm(self) -> Algorithm {
        match self {
            Purpose::Account | Purpose::Consensus | Purpose::NetworkDiscovery => Algorithm::Ed25519,
            Purpose::NetworkHandshake => Algorithm::X25519,
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Purpose::Account => "account",
            Purpose::Consensus => "consensus",
            Purpose::NetworkDiscovery => "network discovery",
            Purpose::NetworkHandshake => "network handshake",
        })
    }
}

/// The algorithm of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Algorithm {
    /// Ed25519 signatures (RFC 8032, pure, over a 32-byte prehashed digest).
    Ed25519,
    /// X25519 Diffie-Hellman (RFC 7748).
    X25519,
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::Ed25519 => "Ed25519",
            Algorithm::X25519 => "X25519",
        })
    }
}

/// What to generate: a purpose and the algorithm for it.
///
/// `KeySpec::new(purpose)` picks the purpose's algorithm; a spec naming another algorithm is
/// refused by the signer with [`Error::PurposeAlgorithmMismatch`](crate::Error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeySpec {
    /// What the key is for.
    pub purpose: Purpose,
    /// The algorithm asked for.
    pub algorithm: Algorithm,
}

impl KeySpec {
    /// A spec for `purpose` with the algorithm that purpose uses.
    pub fn new(purpose: Purpose) -> Self {
        Self {
            purpose,
            algorithm: purpose.algorithm(),
        }
    }

    /// A spec naming an explicit algorithm; the signer refuses a pair that does not belong
    /// together.
    pub fn with_algorithm(purpose: Purpose, algorithm: Algorithm) -> Self {
        Self { purpose, algorithm }
    }
}

/// The bytes that name a key inside one signer: random, not derived from the key.
pub(crate) type LocalKeyId = [u8; 16];

/// A handle that names one key held by one signer of one [`SecretService`](crate::SecretService).
///
/// It holds no secret. It records which service and which signer (generation) made the key, so
/// that an id from a signer that has ended is refused as such, never confused with a new key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId {
    pub(crate) service: u64,
    pub(crate) generation: u32,
    pub(crate) local: LocalKeyId,
}

impl KeyId {
    /// Which signer of its service made this key: 1 for the first, then one more per respawn.
    pub fn generation(&self) -> u32 {
        self.generation
    }
}

impl fmt::Display for KeyId {
    /// The first four bytes in hex, enough to tell keys apart in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.local[..4] {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("…")
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self} gen {})", self.generation)
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

/// The result of an X25519 Diffie-Hellman: 32 secret bytes, wiped when dropped, redacted when
/// printed, readable only through [`SharedSecret::expose_secret`].
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SharedSecret([u8; 32]);

impl SharedSecret {
    pub(crate) fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The secret bytes. Every use of the secret goes through here, so it can be found by grep.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
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
        self.0.ct_eq(&other.0)
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
    fn a_shared_secret_prints_redacted_and_compares_by_value() {
        let secret = SharedSecret::new([0xcd; 32]);
        let printed = format!("{secret:?}");
        assert_eq!(printed, "SharedSecret([REDACTED])");
        assert_eq!(secret, SharedSecret::new([0xcd; 32]));
        assert_ne!(secret, SharedSecret::new([0xce; 32]));
    }
}
