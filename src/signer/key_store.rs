//! Runs in the signer: the keys, one type with one owner, in locked memory, sized once at start.
//!
//! Every key record and the key generator's state live in [`SecretCells`]: `memfd_secret` pages
//! or locked, don't-dump, wipe-on-fork pages. Nothing here allocates after construction, so the
//! sandboxed signer needs no memory-management system calls. Secret bytes leave this module only
//! as signatures and Diffie-Hellman results.

use std::io;

use ed25519_dalek::Signer as _;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::sys::{SecretCells, SecretMemoryBacking};
use crate::wire::key_types::{
    Algorithm, KeySpec, LocalKeyId, Purpose, SecretMemory, StoreId, WireKeyId,
};
use crate::wire::messages::{KeyListing, MESSAGE_CAP, Refusal};

/// A secret key. No `Debug`, no `Clone`, no `Serialize`; wiped on drop by the dalek types.
enum SecretKey {
    Ed25519(ed25519_dalek::SigningKey),
    X25519(x25519_dalek::StaticSecret),
}

/// One held key.
struct KeyRecord {
    id: LocalKeyId,
    purpose: Purpose,
    secret: SecretKey,
    /// Kept beside the secret: deriving an X25519 public key costs a scalar multiplication.
    public_key: [u8; 32],
}

impl KeyRecord {
    fn algorithm(&self) -> Algorithm {
        match self.secret {
            SecretKey::Ed25519(_) => Algorithm::Ed25519,
            SecretKey::X25519(_) => Algorithm::X25519,
        }
    }

    fn listing(&self, store: StoreId) -> KeyListing {
        KeyListing {
            key: WireKeyId {
                store,
                local: self.id,
            },
            purpose: self.purpose,
            algorithm: self.algorithm(),
            public_key: self.public_key,
        }
    }
}

/// The generator's state: a ChaCha20 key, replaced by fresh output after every use, so that
/// whoever later reads this state cannot recompute any key generated before ("fast key
/// erasure").
#[derive(Zeroize, ZeroizeOnDrop)]
struct GeneratorState {
    seed: [u8; 32],
}

impl GeneratorState {
    /// Draws `N` bytes and re-keys the generator from its own output in the same step.
    fn draw<const N: usize>(&mut self) -> Zeroizing<[u8; N]> {
        let mut rng = ChaCha20Rng::from_seed(self.seed);
        let mut output = Zeroizing::new([0u8; N]);
        rng.fill_bytes(&mut self.seed);
        rng.fill_bytes(output.as_mut_slice());
        // ChaCha20Rng has no zeroize of its own; its stack copy is overwritten by the caller's
        // `scrub_stack` after the operation.
        drop(rng);
        output
    }
}

/// The held keys and the generator that makes them.
pub(crate) struct KeyStore {
    records: SecretCells<Option<KeyRecord>>,
    generator: SecretCells<GeneratorState>,
    limit: u32,
    /// This store's name, drawn at start: a memory-only store is a new store every time.
    id: StoreId,
}

impl KeyStore {
    /// Maps locked memory for `limit` keys and seeds the generator from the operating system.
    ///
    /// Fails with the step that failed: [`StoreSetupError::Memory`] or
    /// [`StoreSetupError::Entropy`].
    pub(crate) fn new(limit: u32, memory: SecretMemory) -> Result<Self, StoreSetupError> {
        let backing = match memory {
            SecretMemory::LockedAnonymous => SecretMemoryBacking::LockedAnonymous,
            SecretMemory::MemfdSecret | SecretMemory::Auto => SecretMemoryBacking::MemfdSecret,
        };
        let capacity = usize::try_from(limit)
            .map_err(|_| StoreSetupError::Memory(io::Error::from_raw_os_error(libc::EINVAL)))?;
        let make = |backing| -> io::Result<_> {
            let records = SecretCells::new(capacity, backing, || None)?;
            let generator = SecretCells::new(1, backing, || GeneratorState { seed: [0; 32] })?;
            Ok((records, generator))
        };
        let (records, mut generator) = match make(backing) {
            Ok(cells) => cells,
            Err(_) if memory == SecretMemory::Auto => {
                make(SecretMemoryBacking::LockedAnonymous).map_err(StoreSetupError::Memory)?
            }
            Err(error) => return Err(StoreSetupError::Memory(error)),
        };
        for state in generator.as_mut_slice() {
            getrandom::fill(&mut state.seed)
                .map_err(|error| StoreSetupError::Entropy(error.raw_os_error().unwrap_or(0)))?;
        }
        let mut store = Self {
            records,
            generator,
            limit,
            id: [0; 8],
        };
        store.id = *store.generator().draw::<8>();
        Ok(store)
    }

    /// This store's id; every key id it hands out carries it.
    pub(crate) fn id(&self) -> StoreId {
        self.id
    }

    /// Which kind of memory the keys ended up in.
    pub(crate) fn backing(&self) -> SecretMemoryBacking {
        self.records.backing()
    }

    fn generator(&mut self) -> &mut GeneratorState {
        // `new` always makes exactly one generator cell.
        &mut self.generator.as_mut_slice()[0]
    }

    /// Generates a key for `spec`; returns its id and public key.
    pub(crate) fn generate(&mut self, spec: KeySpec) -> Result<(WireKeyId, [u8; 32]), Refusal> {
        if spec.purpose.algorithm() != spec.algorithm {
            return Err(Refusal::PurposeAlgorithmMismatch);
        }
        let limit = self.limit;
        let Some(free) = self.records.as_slice().iter().position(Option::is_none) else {
            return Err(Refusal::KeyLimitReached { limit });
        };
        let id = loop {
            let candidate = WireKeyId {
                store: self.id,
                local: *self.generator().draw::<16>(),
            };
            if self.find(&candidate).is_err() {
                break candidate;
            }
        };
        let seed = self.generator().draw::<32>();
        let (secret, public_key) = match spec.algorithm {
            Algorithm::Ed25519 => {
                let key = ed25519_dalek::SigningKey::from_bytes(&seed);
                let public = key.verifying_key().to_bytes();
                (SecretKey::Ed25519(key), public)
            }
            Algorithm::X25519 => {
                let key = x25519_dalek::StaticSecret::from(*seed);
                let public = x25519_dalek::PublicKey::from(&key).to_bytes();
                (SecretKey::X25519(key), public)
            }
        };
        self.records.as_mut_slice()[free] = Some(KeyRecord {
            id: id.local,
            purpose: spec.purpose,
            secret,
            public_key,
        });
        Ok((id, public_key))
    }

    fn find(&self, key: &WireKeyId) -> Result<&KeyRecord, Refusal> {
        if key.store != self.id {
            return Err(Refusal::UnknownKey);
        }
        let id = &key.local;
        self.records
            .as_slice()
            .iter()
            .flatten()
            .find(|record| &record.id == id)
            .ok_or(Refusal::UnknownKey)
    }

    /// A key's algorithm, purpose and public key.
    pub(crate) fn public_key(
        &self,
        id: &WireKeyId,
    ) -> Result<(Algorithm, Purpose, [u8; 32]), Refusal> {
        let record = self.find(id)?;
        Ok((record.algorithm(), record.purpose, record.public_key))
    }

    /// Signs `message` (a prehashed digest, or a message of up to the cap) with pure Ed25519
    /// (RFC 8032) over its bytes; returns (R, S).
    pub(crate) fn sign(
        &self,
        id: &WireKeyId,
        message: &[u8],
    ) -> Result<([u8; 32], [u8; 32]), Refusal> {
        let record = self.find(id)?;
        if message.len() > MESSAGE_CAP as usize {
            return Err(Refusal::MessageTooLong { cap: MESSAGE_CAP });
        }
        Ok(Ed25519Signer::of(record)?.sign(message))
    }

    /// The Ed25519 key `id`, to sign several messages with while the store stays borrowed (and
    /// its lock held): a batch is signed by one key, looked up once.
    pub(crate) fn ed25519_signer(&self, id: &WireKeyId) -> Result<Ed25519Signer<'_>, Refusal> {
        Ed25519Signer::of(self.find(id)?)
    }

    /// X25519 with a handshake key; refuses a peer point that gives an all-zero secret.
    pub(crate) fn diffie_hellman(
        &self,
        id: &WireKeyId,
        peer_public: &[u8; 32],
    ) -> Result<Zeroizing<[u8; 32]>, Refusal> {
        let record = self.find(id)?;
        match &record.secret {
            SecretKey::X25519(key) => {
                let shared = key.diffie_hellman(&x25519_dalek::PublicKey::from(*peer_public));
                if !shared.was_contributory() {
                    return Err(Refusal::LowOrderPoint);
                }
                Ok(Zeroizing::new(shared.to_bytes()))
            }
            SecretKey::Ed25519(_) => Err(Refusal::WrongAlgorithm {
                algorithm: Algorithm::Ed25519,
                needed: Algorithm::X25519,
            }),
        }
    }

    /// Every held key, for a listing; iterable more than once, allocating nothing.
    pub(crate) fn listings(&self) -> impl Iterator<Item = KeyListing> + Clone + '_ {
        self.records
            .as_slice()
            .iter()
            .flatten()
            .map(|record| record.listing(self.id))
    }

    /// Erases a key: its record is dropped in place (the dalek types wipe themselves) and the
    /// slot is free again.
    pub(crate) fn drop_key(&mut self, key: &WireKeyId) -> Result<(), Refusal> {
        if key.store != self.id {
            return Err(Refusal::UnknownKey);
        }
        let id = &key.local;
        let slot = self
            .records
            .as_mut_slice()
            .iter_mut()
            .find(|slot| slot.as_ref().is_some_and(|record| &record.id == id))
            .ok_or(Refusal::UnknownKey)?;
        *slot = None;
        Ok(())
    }
}

/// An Ed25519 key lent out of the store: it signs and does nothing else, so the secret still
/// leaves this module only as signatures. No `Debug`.
#[derive(Clone, Copy)]
pub(crate) struct Ed25519Signer<'a>(&'a ed25519_dalek::SigningKey);

impl<'a> Ed25519Signer<'a> {
    fn of(record: &'a KeyRecord) -> Result<Self, Refusal> {
        match &record.secret {
            SecretKey::Ed25519(key) => Ok(Self(key)),
            SecretKey::X25519(_) => Err(Refusal::WrongAlgorithm {
                algorithm: Algorithm::X25519,
                needed: Algorithm::Ed25519,
            }),
        }
    }

    /// Pure Ed25519 (RFC 8032) over `message`; returns (R, S).
    pub(crate) fn sign(self, message: &[u8]) -> ([u8; 32], [u8; 32]) {
        let signature = self.0.sign(message);
        (*signature.r_bytes(), *signature.s_bytes())
    }
}

/// The locked bytes a store for `limit` keys maps: one region of records, one for the generator,
/// each rounded up to whole pages.
pub(crate) fn locked_bytes_for(limit: u32) -> u64 {
    const PAGE: u64 = 4096;
    let records = std::mem::size_of::<Option<KeyRecord>>() as u64 * u64::from(limit.max(1));
    records.div_ceil(PAGE) * PAGE + PAGE
}

/// Why the key store could not be set up.
#[derive(Debug)]
pub(crate) enum StoreSetupError {
    /// Locked memory could not be mapped.
    Memory(io::Error),
    /// The operating system gave no entropy (the errno, or 0).
    Entropy(i32),
}

/// Overwrites the stack below the caller's frame, where the frames of a finished key operation
/// left copies of secrets (seeds moved by value, the generator's block state).
#[inline(never)]
pub(crate) fn scrub_stack() {
    let mut area = [0u8; 16 * 1024];
    area.zeroize();
    std::hint::black_box(&area);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawing_rekeys_so_the_state_left_behind_cannot_recompute_earlier_output() {
        let mut state = GeneratorState { seed: [7; 32] };
        let erased = state.seed;
        let drawn = state.draw::<32>();
        assert_ne!(state.seed, erased, "the state must change with every draw");
        assert_ne!(state.seed, *drawn, "the new state must not be the output");
        // Whoever reads the state left behind gets nothing drawn before it...
        let mut later = GeneratorState { seed: state.seed };
        for _ in 0..64 {
            assert_ne!(*later.draw::<32>(), *drawn);
        }
        // ...while the erased state would have reproduced it: erasing it is what protects.
        let mut replay = GeneratorState { seed: erased };
        assert_eq!(*replay.draw::<32>(), *drawn);
    }
}
