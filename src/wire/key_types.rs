//! Shared by both sides: the vocabulary of keys that crosses the pipe (what a key is for, its
//! algorithm, how the signer names it, which memory holds it). No type here holds a secret.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a key is for. A key carries its purpose from the moment it is generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "test-support", derive(arbitrary::Arbitrary))]
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
#[cfg_attr(feature = "test-support", derive(arbitrary::Arbitrary))]
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
#[cfg_attr(feature = "test-support", derive(arbitrary::Arbitrary))]
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

/// The bytes that name a key inside one store: random, not derived from the key.
pub(crate) type LocalKeyId = [u8; 16];

/// The bytes that name one key store: random, drawn by the signer when it creates the store.
/// A memory-only signer creates a new store each time it starts; a key id carries its store's
/// id, so an id from a store that is gone is refused as such, never confused with a new key.
pub(crate) type StoreId = [u8; 8];

/// A key's full name on the wire: its store and its id within the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "test-support", derive(arbitrary::Arbitrary))]
pub(crate) struct WireKeyId {
    pub(crate) store: StoreId,
    pub(crate) local: LocalKeyId,
}

/// Which kind of memory holds the signer's keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SecretMemory {
    /// `memfd_secret` where the kernel offers it, else locked anonymous memory.
    #[default]
    Auto,
    /// Only `memfd_secret`: pages removed from the kernel's direct map, which not even root can
    /// read through `/proc/<pid>/mem`. Spawning fails where the kernel lacks it.
    MemfdSecret,
    /// Anonymous memory, locked (`mlock`), excluded from core dumps and wiped on fork.
    LockedAnonymous,
}

/// The kind of memory the signer put its keys in, as it reported when it became ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum KeyMemory {
    /// `memfd_secret` pages.
    MemfdSecret,
    /// Locked, don't-dump, wipe-on-fork anonymous pages.
    LockedAnonymous,
}

impl fmt::Display for KeyMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyMemory::MemfdSecret => "memfd_secret (unreadable even by root through /proc)",
            KeyMemory::LockedAnonymous => {
                "locked anonymous pages (mlock, don't-dump, wipe-on-fork)"
            }
        })
    }
}
