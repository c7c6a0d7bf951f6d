//! Runs in the signer: the keys, one type with one owner, in locked memory, sized once at start.
//!
//! Every key record and the key generator's state live in [`SecretCells`]: `memfd_secret` pages
//! or locked, don't-dump, wipe-on-fork pages. Nothing here allocates after construction, so the
//! sandboxed signer needs no memory-management system calls. Secret bytes leave this module only
//! as signatures and Diffie-Hellman results, or sealed under the store's key-encryption key
//! (`sealing`) for the host to write.
//!
//! With a sealed store, every change is one critical section under the store's write lock:
//! the key is made or erased, its record sealed, the sequence number advanced and the manifest
//! sealed, and the change handed to the host together with the answer.

mod backup_and_import;
mod rotation;

use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;

use ed25519_dalek::Signer as _;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::signer::guard::{self, Verdict};
use crate::signer::sealing::{MAX_UNLOCK_SECRET_LEN, Sealer};
use crate::sys::{SecretCells, SecretMemoryBacking};
use crate::wire::consensus::{
    ChainId, ChainWatermarks, ConsensusKind, ConsensusMessage, GuardRule, Watermark,
};
use crate::wire::key_types::{
    Algorithm, KeySpec, LocalKeyId, Purpose, SecretMemory, StoreId, WireKeyId,
};
use crate::wire::messages::{KeyListing, MESSAGE_CAP, Refusal, StoreChange};
use crate::wire::startup::{
    CreatedStore, SealedSummary, SignerStoreSettings, StoreProblem, TamperedPart, UnlockSource,
};
use crate::wire::store_format::{
    BODY_LEN, HEADER_LEN, MAX_CHAINS_PER_KEY, MAX_VERSIONS, ManifestFields, RECORD_LEN,
    RecordsDigest, Seal, SealedRecord, StoreFile, StoreHeader, WATERMARK_LEN, WatermarkRecord,
};

/// A secret key. No `Debug`, no `Clone`, no `Serialize`; wiped on drop by the dalek types.
enum SecretKey {
    Ed25519(ed25519_dalek::SigningKey),
    X25519(x25519_dalek::StaticSecret),
}

impl SecretKey {
    /// The key from its 32 secret bytes (an Ed25519 seed, or an X25519 scalar), and its public
    /// key.
    fn from_bytes(algorithm: Algorithm, bytes: &[u8; 32]) -> (Self, [u8; 32]) {
        match algorithm {
            Algorithm::Ed25519 => {
                let key = ed25519_dalek::SigningKey::from_bytes(bytes);
                let public = key.verifying_key().to_bytes();
                (SecretKey::Ed25519(key), public)
            }
            Algorithm::X25519 => {
                let key = x25519_dalek::StaticSecret::from(*bytes);
                let public = x25519_dalek::PublicKey::from(&key).to_bytes();
                (SecretKey::X25519(key), public)
            }
        }
    }
}

/// One held key.
struct KeyRecord {
    id: LocalKeyId,
    purpose: Purpose,
    secret: SecretKey,
    /// Kept beside the secret: deriving an X25519 public key costs a scalar multiplication.
    public_key: [u8; 32],
    /// Seconds since the Unix epoch when this version of the key was made.
    created: u64,
    /// 1 when the key is made, one more at each rotation.
    version: u32,
    /// 0 for the current version; for a previous one, the second its grace period ends.
    retires: u64,
    /// Its sealed secret and seal, as handed to the host (a sealed store only): the manifest
    /// binds every record's bytes, so they are kept to hash.
    sealed: Option<([u8; 32], Seal)>,
    /// Being dropped from a sealed store: out of the sealed state and unusable, but erased only
    /// once the host has written the state without it (or put back if it could not).
    dropping: bool,
    /// A retired version whose secret is already wiped, kept (without it) until the host has
    /// written the state without the record: the manifest still binds its sealed bytes.
    erased: bool,
    /// A previous version moved here by a rotation whose write is not acknowledged yet: its
    /// sealed bytes as they were in its old slot, to put it back if the write fails.
    undo: Option<([u8; 32], Seal)>,
}

impl KeyRecord {
    fn algorithm(&self) -> Algorithm {
        match self.secret {
            SecretKey::Ed25519(_) => Algorithm::Ed25519,
            SecretKey::X25519(_) => Algorithm::X25519,
        }
    }

    /// The record as the store file holds it, if it was sealed.
    fn sealed_record(&self, slot: u16) -> Option<SealedRecord> {
        if self.dropping {
            return None;
        }
        let (sealed_secret, seal) = self.sealed?;
        Some(SealedRecord {
            slot,
            local: self.id,
            purpose: self.purpose,
            algorithm: self.algorithm(),
            created: self.created,
            version: self.version,
            retires: self.retires,
            public_key: self.public_key,
            sealed_secret,
            seal,
        })
    }

    /// Whether this is the current version of its key, usable by the plain calls.
    fn is_current(&self) -> bool {
        self.retires == 0 && !self.dropping
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

    /// Mixes `fresh` (new operating-system entropy) into the state: the next state is SHA-256
    /// of a label, the current state and `fresh`, so whoever captured the state before cannot
    /// predict anything drawn after ("post-compromise security"), and a weak `fresh` cannot make
    /// the state weaker than it was.
    fn reseed(&mut self, fresh: &[u8; 32]) {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        hash.update(RESEED_LABEL);
        hash.update(self.seed);
        hash.update(fresh);
        self.seed = hash.finalize().into();
    }
}

/// Domain separation for [`GeneratorState::reseed`].
const RESEED_LABEL: &[u8] = b"keyward/v1 generator reseed";

/// How many bytes of fresh entropy the signer reads at each reseed. The sandbox admits
/// `getrandom` for at most this many bytes a call (`sandbox/x86_64.json`).
pub(crate) const RESEED_BYTES: usize = 32;

/// The held keys and the generator that makes them.
pub(crate) struct KeyStore {
    records: SecretCells<Option<KeyRecord>>,
    generator: SecretCells<GeneratorState>,
    limit: u32,
    /// This store's name: drawn at start for a memory-only store (a new store every time), read
    /// from the header of a sealed one (the same store across restarts).
    id: StoreId,
    sealed: Option<SealedState>,
    /// Per slot, a consensus key's double-sign guard on each chain it signed on. Not secret, so
    /// in ordinary memory, allocated once at start.
    guards: Vec<[Option<ChainGuard>; MAX_CHAINS_PER_KEY]>,
    /// Whether consensus keys may sign blind digests and arbitrary messages (unsafe).
    blind_consensus_allowed: bool,
    /// The provisioning and backup-signing keys (`backup_and_import`).
    identity: SecretCells<backup_and_import::StoreIdentity>,
    /// Where a backup's text or an import's plaintext is written: locked like the keys.
    scratch: SecretCells<[u8; backup_and_import::SCRATCH_LEN]>,
    /// Where a backup's ciphertext is written, for the answer to borrow: not secret.
    backup_out: Box<[u8]>,
}

/// A consensus key's watermarks on one chain, and for each kind the sequence number of the
/// sealed change that carried it (0: read from the store file, so durable).
#[derive(Clone, Copy, Debug)]
struct ChainGuard {
    marks: ChainWatermarks,
    sealed_in: [u64; 3],
}

/// What a sealed store keeps besides its keys.
struct SealedState {
    sealer: Sealer,
    header_checksum: [u8; 32],
    /// The sequence number of the last change sealed.
    sequence: u64,
    /// The highest sequence number the host has said is durable (the file's, when opened).
    durable: u64,
}

/// What a consensus request comes to.
#[allow(
    clippy::large_enum_variant,
    reason = "the signer cannot allocate once sandboxed: no Box"
)]
pub(crate) enum ConsensusStep {
    /// Signed: nothing needed writing.
    Signed([u8; 32], [u8; 32]),
    /// The advanced watermark, sealed: the host writes it, then asks for the signature.
    Persist(StoreChange),
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
            let identity = SecretCells::new(1, backing, backup_and_import::StoreIdentity::empty)?;
            let scratch = SecretCells::new(1, backing, || [0u8; backup_and_import::SCRATCH_LEN])?;
            Ok((records, generator, identity, scratch))
        };
        let (records, mut generator, identity, scratch) = match make(backing) {
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
            sealed: None,
            guards: vec![[None; MAX_CHAINS_PER_KEY]; capacity],
            blind_consensus_allowed: false,
            identity,
            scratch,
            backup_out: vec![0u8; crate::wire::MAX_FRAME_LEN].into_boxed_slice(),
        };
        store.id = *store.generator().draw::<8>();
        // A memory-only signer's identity lives as long as it does; a sealed store replaces it
        // with one derived from its key-encryption key (`open_sealed`).
        let provisioning = store.generator().draw::<32>();
        let backup_signing = store.generator().draw::<32>();
        store.identity_mut().set(&provisioning, &backup_signing);
        Ok(store)
    }

    /// Maps locked memory for `limit` keys, then opens the sealed store `settings` names (or
    /// creates it): reads the unlock secret and the state file itself, derives the
    /// key-encryption key, checks every seal and loads every key. Runs before the sandbox.
    pub(crate) fn open_sealed(
        limit: u32,
        memory: SecretMemory,
        settings: &SignerStoreSettings,
    ) -> Result<(Self, SealedSummary), StoreSetupError> {
        let mut store = Self::new(limit, memory)?;
        let unlock = read_unlock_secret(&settings.unlock).map_err(StoreSetupError::Store)?;
        let backing = store.backing();
        let summary = match settings.create {
            Some(kdf) => {
                let mut header = StoreHeader {
                    store: *store.generator().draw::<8>(),
                    kdf,
                    salt: *store.generator().draw::<16>(),
                    verifier: Seal {
                        nonce: [0; 24],
                        tag: [0; 16],
                    },
                };
                let sealer = Sealer::derive(&unlock, kdf, &header.salt, backing)
                    .map_err(StoreSetupError::Store)?;
                header.verifier = sealer.verifier(&header, *store.generator().draw::<24>());
                let manifest = ManifestFields {
                    sequence: 0,
                    record_count: 0,
                    watermark_count: 0,
                    records_digest: RecordsDigest::default().finish().2,
                };
                let header_checksum = header.checksum();
                let manifest_seal = sealer.seal_manifest(
                    &header_checksum,
                    &manifest,
                    *store.generator().draw::<24>(),
                );
                store.id = header.store;
                store.sealed = Some(SealedState {
                    sealer,
                    header_checksum,
                    sequence: 0,
                    durable: 0,
                });
                SealedSummary {
                    manifest,
                    created: Some(CreatedStore {
                        header,
                        manifest_seal,
                    }),
                }
            }
            None => {
                let bytes =
                    read_state_file(&settings.state_path).map_err(StoreSetupError::Store)?;
                let file = StoreFile::parse(&bytes)
                    .map_err(|error| StoreSetupError::Store(StoreProblem::Malformed(error)))?;
                store
                    .load(&file, &unlock, backing)
                    .map_err(StoreSetupError::Store)?;
                SealedSummary {
                    manifest: file.manifest,
                    created: None,
                }
            }
        };
        store.derive_identity_from_the_sealer();
        Ok((store, summary))
    }

    /// Checks a parsed file's seals with a key derived from `unlock` and loads its keys.
    fn load(
        &mut self,
        file: &StoreFile,
        unlock: &[u8],
        backing: SecretMemoryBacking,
    ) -> Result<(), StoreProblem> {
        let header = &file.header;
        let sealer = Sealer::derive(unlock, header.kdf, &header.salt, backing)?;
        if !sealer.verifies(header) {
            return Err(StoreProblem::WrongUnlockSecret);
        }
        let header_checksum = header.checksum();
        if !sealer.manifest_opens(&header_checksum, &file.manifest, &file.manifest_seal) {
            return Err(StoreProblem::Tampered(TamperedPart::Manifest));
        }
        // Records are in increasing slot order: the last one says what limit holds them all.
        if let Some(last) = file.records.last()
            && usize::from(last.slot) >= self.records.as_slice().len()
        {
            return Err(StoreProblem::KeyLimitTooSmall {
                needed: u32::from(last.slot) + 1,
                limit: self.limit,
            });
        }
        for record in &file.records {
            let slot = usize::from(record.slot);
            if self
                .records
                .as_slice()
                .iter()
                .flatten()
                .any(|held| held.id == record.local && held.version == record.version)
            {
                return Err(StoreProblem::Tampered(TamperedPart::DuplicateKey));
            }
            let Some(secret) = sealer.open_record(&header.store, record) else {
                return Err(StoreProblem::Tampered(TamperedPart::Record {
                    slot: record.slot,
                }));
            };
            let (key, public_key) = SecretKey::from_bytes(record.algorithm, &secret);
            if public_key != record.public_key || record.purpose.algorithm() != record.algorithm {
                return Err(StoreProblem::Tampered(TamperedPart::PublicKey {
                    slot: record.slot,
                }));
            }
            // A previous version whose grace period ended while no signer ran: its secret is
            // not kept; the record stays (the manifest binds it) until the host purges it.
            let expired = record.retires != 0 && record.retires <= now_seconds();
            self.records.as_mut_slice()[slot] = Some(KeyRecord {
                id: record.local,
                purpose: record.purpose,
                secret: if expired {
                    SecretKey::from_bytes(record.algorithm, &[0; 32]).0
                } else {
                    key
                },
                public_key,
                created: record.created,
                version: record.version,
                retires: record.retires,
                sealed: Some((record.sealed_secret, record.seal)),
                dropping: false,
                erased: expired,
                undo: None,
            });
        }
        for record in &file.watermarks {
            let slot = usize::from(record.slot);
            let holds_consensus_key = self
                .records
                .as_slice()
                .get(slot)
                .and_then(Option::as_ref)
                .is_some_and(|key| key.purpose == Purpose::Consensus);
            if !holds_consensus_key {
                return Err(StoreProblem::Tampered(TamperedPart::Watermark {
                    slot: record.slot,
                }));
            }
            let Some(free) = self.guards[slot].iter_mut().find(|guard| guard.is_none()) else {
                return Err(StoreProblem::Tampered(TamperedPart::Watermark {
                    slot: record.slot,
                }));
            };
            *free = Some(ChainGuard {
                marks: record.marks,
                sealed_in: [0; 3],
            });
        }
        self.id = header.store;
        self.sealed = Some(SealedState {
            sealer,
            header_checksum,
            sequence: file.manifest.sequence,
            durable: file.manifest.sequence,
        });
        Ok(())
    }

    /// Lets consensus keys sign blind digests and arbitrary messages (unsafe: the guard cannot
    /// see what they are).
    pub(crate) fn allow_blind_consensus_signing(&mut self, allowed: bool) {
        self.blind_consensus_allowed = allowed;
    }

    /// Seals the state after a change: the next sequence number, the records' digest, the
    /// manifest. `None` for a memory-only store.
    fn seal_change(&mut self, edit: Edit) -> Option<StoreChange> {
        self.sealed.as_ref()?;
        let nonce = *self.generator().draw::<24>();
        let mut digest = RecordsDigest::default();
        for (slot, record) in self.records.as_slice().iter().enumerate() {
            let slot = u16::try_from(slot).unwrap_or(u16::MAX);
            if let Some(sealed) = record
                .as_ref()
                .and_then(|record| record.sealed_record(slot))
            {
                digest.add(&sealed);
            }
        }
        for (index, guards) in self.guards.iter().enumerate() {
            let slot = u16::try_from(index).unwrap_or(u16::MAX);
            let dropping = self.records.as_slice()[index]
                .as_ref()
                .is_some_and(|record| record.dropping);
            if dropping {
                continue;
            }
            // In chain order, as the file holds them; a fixed array, sorted in place.
            let mut chains = *guards;
            chains.sort_unstable_by_key(|guard| guard.map(|guard| guard.marks.chain));
            for guard in chains.iter().flatten() {
                digest.add_watermark(&WatermarkRecord {
                    slot,
                    marks: guard.marks,
                });
            }
        }
        let (record_count, watermark_count, records_digest) = digest.finish();
        let sealed = self.sealed.as_mut()?;
        sealed.sequence += 1;
        let manifest = ManifestFields {
            sequence: sealed.sequence,
            record_count,
            watermark_count,
            records_digest,
        };
        let manifest_seal = sealed
            .sealer
            .seal_manifest(&sealed.header_checksum, &manifest, nonce);
        Some(StoreChange {
            added: edit.added,
            replaced: edit.replaced,
            removed_slots: edit.removed,
            watermark: edit.watermark,
            manifest,
            manifest_seal,
        })
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

    /// Reads fresh entropy from the kernel (the `getrandom` system call, which the sandbox
    /// admits for this) and mixes it into the generator, before a key is made: a one-time read
    /// of the generator's state does not predict keys made after the next reseed.
    pub(super) fn reseed_from_the_kernel(&mut self) -> Result<(), Refusal> {
        let mut fresh = Zeroizing::new([0u8; RESEED_BYTES]);
        getrandom::fill(fresh.as_mut_slice()).map_err(|error| Refusal::NoFreshEntropy {
            errno: error.raw_os_error().unwrap_or(0),
        })?;
        self.generator().reseed(&fresh);
        Ok(())
    }

    /// Generates a key for `spec`; returns its id, its public key and, for a sealed store, the
    /// sealed change the host must write.
    pub(crate) fn generate(
        &mut self,
        spec: KeySpec,
    ) -> Result<(WireKeyId, [u8; 32], Option<StoreChange>), Refusal> {
        if spec.purpose.algorithm() != spec.algorithm {
            return Err(Refusal::PurposeAlgorithmMismatch);
        }
        self.free_slot()?;
        self.reseed_from_the_kernel()?;
        let seed = self.generator().draw::<32>();
        self.insert(spec, &seed)
    }

    /// The first free slot, or the refusal that says the store is full.
    fn free_slot(&self) -> Result<usize, Refusal> {
        let limit = self.limit;
        self.records
            .as_slice()
            .iter()
            .position(Option::is_none)
            .ok_or(Refusal::KeyLimitReached { limit })
    }

    /// Holds the key whose secret bytes are `seed` (made here, or imported) under a new id;
    /// returns its id, its public key and, for a sealed store, the sealed change to write.
    fn insert(
        &mut self,
        spec: KeySpec,
        seed: &[u8; 32],
    ) -> Result<(WireKeyId, [u8; 32], Option<StoreChange>), Refusal> {
        self.insert_with_watermarks(spec, seed, None)
    }

    /// [`insert`](Self::insert), with a consensus key's watermarks on one chain held from the
    /// start and sealed in the same change: a restored key is never, even after a crash,
    /// without the watermarks it came with.
    fn insert_with_watermarks(
        &mut self,
        spec: KeySpec,
        seed: &[u8; 32],
        marks: Option<ChainWatermarks>,
    ) -> Result<(WireKeyId, [u8; 32], Option<StoreChange>), Refusal> {
        let free = self.free_slot()?;
        let id = loop {
            let candidate = WireKeyId {
                store: self.id,
                local: *self.generator().draw::<16>(),
            };
            if self.find(&candidate).is_err() {
                break candidate;
            }
        };
        let (secret, public_key) = SecretKey::from_bytes(spec.algorithm, seed);
        let created = now_seconds();
        // Slots are below the key limit, at most 1024.
        let slot = u16::try_from(free).unwrap_or(u16::MAX);
        let mut sealed_record = None;
        let nonce = *self.generator().draw::<24>();
        if let Some(sealed) = &self.sealed {
            let mut record = SealedRecord {
                slot,
                local: id.local,
                purpose: spec.purpose,
                algorithm: spec.algorithm,
                created,
                version: 1,
                retires: 0,
                public_key,
                sealed_secret: [0; 32],
                seal: Seal {
                    nonce: [0; 24],
                    tag: [0; 16],
                },
            };
            sealed
                .sealer
                .seal_record(&self.id, &mut record, seed, nonce);
            sealed_record = Some(record);
        }
        self.records.as_mut_slice()[free] = Some(KeyRecord {
            id: id.local,
            purpose: spec.purpose,
            secret,
            public_key,
            created,
            version: 1,
            retires: 0,
            sealed: sealed_record.map(|record| (record.sealed_secret, record.seal)),
            dropping: false,
            erased: false,
            undo: None,
        });
        let watermark = marks.map(|marks| {
            let next = self.sealed.as_ref().map_or(0, |sealed| sealed.sequence + 1);
            self.guards[free] = [None; MAX_CHAINS_PER_KEY];
            self.guards[free][0] = Some(ChainGuard {
                marks,
                sealed_in: [next; 3],
            });
            WatermarkRecord { slot, marks }
        });
        let change = self.seal_change(Edit {
            added: sealed_record,
            watermark,
            ..Edit::default()
        });
        Ok((id, public_key, change))
    }

    fn find(&self, key: &WireKeyId) -> Result<&KeyRecord, Refusal> {
        let slot = self.slot_of(key)?;
        self.records.as_slice()[slot]
            .as_ref()
            .ok_or(Refusal::UnknownKey)
    }

    /// The slot holding `key`.
    fn slot_of(&self, key: &WireKeyId) -> Result<usize, Refusal> {
        if key.store != self.id {
            return Err(Refusal::UnknownKey);
        }
        self.records
            .as_slice()
            .iter()
            .position(|slot| {
                slot.as_ref()
                    .is_some_and(|record| record.id == key.local && record.is_current())
            })
            .ok_or(Refusal::UnknownKey)
    }

    /// A key that may sign blind (digests, arbitrary messages): any Ed25519 key but a consensus
    /// key, unless that was allowed.
    fn blind_signer(&self, id: &WireKeyId) -> Result<Ed25519Signer<'_>, Refusal> {
        self.blind_signer_of(self.find(id)?)
    }

    /// [`blind_signer`](Self::blind_signer) for one version's record.
    fn blind_signer_of<'s>(&'s self, record: &'s KeyRecord) -> Result<Ed25519Signer<'s>, Refusal> {
        if record.purpose == Purpose::Consensus && !self.blind_consensus_allowed {
            return Err(Refusal::BlindSigningRefused {
                purpose: record.purpose,
            });
        }
        Ed25519Signer::of(record)
    }

    /// The consensus key `key`: its slot and signer.
    fn consensus_key(&self, key: &WireKeyId) -> Result<usize, Refusal> {
        let slot = self.slot_of(key)?;
        let record = self.find(key)?;
        if record.purpose != Purpose::Consensus {
            return Err(Refusal::NotAConsensusKey {
                purpose: record.purpose,
            });
        }
        Ed25519Signer::of(record)?;
        Ok(slot)
    }

    /// Signs a consensus message if the guard allows it. Check, advance and (when nothing needs
    /// writing) sign happen here, under the store's write lock: one critical section. With a
    /// sealed store, an advanced watermark is sealed and handed to the host instead of a
    /// signature; the signature comes from [`release_consensus`](Self::release_consensus) once
    /// the host says the change is durable.
    pub(crate) fn sign_consensus(
        &mut self,
        key: &WireKeyId,
        message: &ConsensusMessage,
    ) -> Result<ConsensusStep, Refusal> {
        let slot = self.consensus_key(key)?;
        let durable = self.sealed.as_ref().map(|sealed| sealed.durable);
        let (index, mut guard) = self.guard_of(slot, message.chain)?;
        let kind = message.kind.index();
        match guard::judge(&guard.marks, message) {
            Verdict::Refuse(rule) => {
                // The watermark the message ran into: its own kind's, or for a rule between
                // kinds, the other kind's.
                let met = match rule {
                    GuardRule::VoteAfterTimeout => ConsensusKind::Timeout,
                    GuardRule::TimeoutBelowVote => ConsensusKind::Vote,
                    _ => message.kind,
                };
                return Err(Refusal::WouldDoubleSign {
                    rule,
                    watermark: guard.marks.of(met),
                });
            }
            // Durable already (or nothing is ever written): the same signature again.
            Verdict::Repeat if durable.is_none_or(|durable| guard.sealed_in[kind] <= durable) => {
                return self.sign_consensus_bytes(slot, message);
            }
            // Advanced (or repeated before its write was acknowledged): seal it first.
            Verdict::Repeat | Verdict::Advance => {}
        }
        guard.marks.set(
            message.kind,
            Some(Watermark {
                epoch: message.epoch,
                round: message.round,
                digest: message.digest,
            }),
        );
        let Some(sequence) = self.sealed.as_ref().map(|sealed| sealed.sequence + 1) else {
            self.guards[slot][index] = Some(guard);
            return self.sign_consensus_bytes(slot, message);
        };
        guard.sealed_in[kind] = sequence;
        self.guards[slot][index] = Some(guard);
        let record = WatermarkRecord {
            slot: u16::try_from(slot).unwrap_or(u16::MAX),
            marks: guard.marks,
        };
        self.seal_change(Edit {
            watermark: Some(record),
            ..Edit::default()
        })
        .map(ConsensusStep::Persist)
        .ok_or(Refusal::NotReleasable)
    }

    /// Signs `message` once the host has said every change up to `sequence` is durable:
    /// `message` must be the key's watermark of its kind, sealed at or before `sequence`, and
    /// `sequence` one this signer sealed.
    pub(crate) fn release_consensus(
        &mut self,
        key: &WireKeyId,
        message: &ConsensusMessage,
        sequence: u64,
    ) -> Result<([u8; 32], [u8; 32]), Refusal> {
        let slot = self.consensus_key(key)?;
        let sealed = self.sealed.as_mut().ok_or(Refusal::NotReleasable)?;
        if sequence > sealed.sequence {
            return Err(Refusal::NotReleasable);
        }
        let guard = self.guards[slot]
            .iter()
            .flatten()
            .find(|guard| guard.marks.chain == message.chain)
            .ok_or(Refusal::NotReleasable)?;
        let kind = message.kind.index();
        let at_watermark = guard.marks.of(message.kind).is_some_and(|mark| {
            mark.position() == message.position() && mark.digest == message.digest
        });
        if !at_watermark || guard.sealed_in[kind] > sequence {
            return Err(Refusal::NotReleasable);
        }
        sealed.durable = sealed.durable.max(sequence);
        match self.sign_consensus_bytes(slot, message)? {
            ConsensusStep::Signed(r, s) => Ok((r, s)),
            ConsensusStep::Persist(_) => Err(Refusal::NotReleasable),
        }
    }

    fn sign_consensus_bytes(
        &self,
        slot: usize,
        message: &ConsensusMessage,
    ) -> Result<ConsensusStep, Refusal> {
        let record = self.records.as_slice()[slot]
            .as_ref()
            .ok_or(Refusal::UnknownKey)?;
        let (r, s) = Ed25519Signer::of(record)?.sign(&message.signing_bytes());
        Ok(ConsensusStep::Signed(r, s))
    }

    /// A consensus key's watermarks on every chain it keeps them for.
    pub(crate) fn watermarks(
        &self,
        key: &WireKeyId,
    ) -> Result<[Option<ChainWatermarks>; MAX_CHAINS_PER_KEY], Refusal> {
        let slot = self.consensus_key(key)?;
        Ok(self.guards[slot].map(|guard| guard.map(|guard| guard.marks)))
    }

    /// The guard of the key in `slot` on `chain`: where it is kept, and its watermarks (none yet
    /// for a chain it has not signed on, in a free place; `ChainLimit` if there is none).
    fn guard_of(&self, slot: usize, chain: ChainId) -> Result<(usize, ChainGuard), Refusal> {
        let guards = &self.guards[slot];
        let held = guards
            .iter()
            .position(|guard| guard.is_some_and(|guard| guard.marks.chain == chain));
        let index = match held {
            Some(index) => index,
            None => guards
                .iter()
                .position(Option::is_none)
                .ok_or(Refusal::ChainLimit {
                    cap: u32::try_from(MAX_CHAINS_PER_KEY).unwrap_or(u32::MAX),
                })?,
        };
        let guard = guards[index].unwrap_or(ChainGuard {
            marks: ChainWatermarks::empty(chain),
            sealed_in: [0; 3],
        });
        Ok((index, guard))
    }

    /// Raises a consensus key's watermarks on one chain to at least `marks` (an import): each
    /// kind's watermark becomes the higher of the two; never lower. For a sealed store, the
    /// change to write if anything rose.
    pub(crate) fn raise_watermarks(
        &mut self,
        key: &WireKeyId,
        marks: &ChainWatermarks,
    ) -> Result<Option<StoreChange>, Refusal> {
        let slot = self.consensus_key(key)?;
        let (index, mut guard) = self.guard_of(slot, marks.chain)?;
        let next = self.sealed.as_ref().map_or(0, |sealed| sealed.sequence + 1);
        let mut raised = false;
        for kind in ConsensusKind::ALL {
            let held = guard.marks.of(kind);
            let offered = marks.of(kind);
            let higher = match (held, offered) {
                (None, Some(offered)) => Some(offered),
                (Some(held), Some(offered)) if offered.position() > held.position() => {
                    Some(offered)
                }
                _ => None,
            };
            if let Some(higher) = higher {
                guard.marks.set(kind, Some(higher));
                guard.sealed_in[kind.index()] = next;
                raised = true;
            }
        }
        if !raised {
            return Ok(None);
        }
        self.guards[slot][index] = Some(guard);
        let record = WatermarkRecord {
            slot: u16::try_from(slot).unwrap_or(u16::MAX),
            marks: guard.marks,
        };
        Ok(self.seal_change(Edit {
            watermark: Some(record),
            ..Edit::default()
        }))
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
        let signer = self.blind_signer(id)?;
        if message.len() > MESSAGE_CAP as usize {
            return Err(Refusal::MessageTooLong { cap: MESSAGE_CAP });
        }
        Ok(signer.sign(message))
    }

    /// The Ed25519 key `id`, to sign several messages with while the store stays borrowed (and
    /// its lock held): a batch is signed by one key, looked up once.
    pub(crate) fn ed25519_signer(&self, id: &WireKeyId) -> Result<Ed25519Signer<'_>, Refusal> {
        self.blind_signer(id)
    }

    /// X25519 with a handshake key; refuses a peer point that gives an all-zero secret.
    pub(crate) fn diffie_hellman(
        &self,
        id: &WireKeyId,
        peer_public: &[u8; 32],
    ) -> Result<Zeroizing<[u8; 32]>, Refusal> {
        diffie_hellman_with(self.find(id)?, peer_public)
    }

    /// Every held key, for a listing; iterable more than once, allocating nothing.
    pub(crate) fn listings(&self) -> impl Iterator<Item = KeyListing> + Clone + '_ {
        self.records
            .as_slice()
            .iter()
            .flatten()
            .filter(|record| record.is_current())
            .map(|record| record.listing(self.id))
    }

    /// Erases a key: its record is dropped in place (the dalek types wipe themselves) and the
    /// slot is free again. For a sealed store, returns the sealed change the host must write.
    pub(crate) fn drop_key(&mut self, key: &WireKeyId) -> Result<Option<StoreChange>, Refusal> {
        self.slot_of(key)?;
        // Every version of the key goes: the current one and those in their grace period.
        let mut removed = [None; MAX_VERSIONS];
        let mut next = removed.iter_mut();
        for index in 0..self.records.as_slice().len() {
            let Some(record) = self.records.as_mut_slice()[index].as_mut() else {
                continue;
            };
            if record.id != key.local || record.dropping {
                continue;
            }
            if self.sealed.is_none() {
                self.erase(index);
                continue;
            }
            // Sealed: out of the state now, erased once the host has written the state
            // without it.
            record.dropping = true;
            if let Some(place) = next.next() {
                *place = Some(u16::try_from(index).unwrap_or(u16::MAX));
            }
        }
        Ok(self.seal_change(Edit {
            removed,
            ..Edit::default()
        }))
    }

    /// Ends a drop from a sealed store: `erase` once the host has written the state without
    /// the key; otherwise (the write failed) the key is back, as it was, in the state the host
    /// still holds.
    pub(crate) fn finish_drop(&mut self, key: &WireKeyId, erase: bool) -> Result<(), Refusal> {
        if key.store != self.id {
            return Err(Refusal::UnknownKey);
        }
        let mut found = false;
        for index in 0..self.records.as_slice().len() {
            let Some(record) = self.records.as_mut_slice()[index].as_mut() else {
                continue;
            };
            if record.id != key.local || !record.dropping {
                continue;
            }
            found = true;
            if erase {
                self.erase(index);
            } else {
                record.dropping = false;
            }
        }
        if found {
            Ok(())
        } else {
            Err(Refusal::UnknownKey)
        }
    }

    /// Erases the key in `index`: its record is dropped in place (the dalek types wipe
    /// themselves), its watermarks go with it, and the slot is free again.
    fn erase(&mut self, index: usize) {
        self.records.as_mut_slice()[index] = None;
        self.guards[index] = [None; MAX_CHAINS_PER_KEY];
    }
}

/// X25519 with one version's record; refuses a peer point that gives an all-zero secret.
fn diffie_hellman_with(
    record: &KeyRecord,
    peer_public: &[u8; 32],
) -> Result<Zeroizing<[u8; 32]>, Refusal> {
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

/// Seconds since the Unix epoch by the signer's clock (0 before 1970).
fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// What one sealed change does to the file, besides its manifest.
#[derive(Default)]
struct Edit {
    added: Option<SealedRecord>,
    replaced: Option<SealedRecord>,
    removed: [Option<u16>; MAX_VERSIONS],
    watermark: Option<WatermarkRecord>,
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
    /// The sealed store could not be opened or created.
    Store(StoreProblem),
}

/// The unlock secret's bytes, read into one buffer made at its full size first (so no growing
/// buffer leaves a copy behind), without one trailing newline (`\n` or `\r\n`): a passphrase
/// file written by an editor or `echo` ends with one.
fn read_unlock_secret(source: &UnlockSource) -> Result<Zeroizing<Vec<u8>>, StoreProblem> {
    // Room for the longest secret, its line ending, and one byte more to see it is too long.
    let mut secret = Zeroizing::new(vec![0u8; MAX_UNLOCK_SECRET_LEN + 3]);
    let length = match source {
        UnlockSource::Passphrase(passphrase) => passphrase.with(|passphrase| {
            let length = passphrase.len().min(secret.len());
            secret[..length].copy_from_slice(&passphrase[..length]);
            passphrase.len()
        }),
        UnlockSource::File(path) => {
            let unreadable = |error: io::Error| StoreProblem::UnlockSecretUnreadable {
                errno: error.raw_os_error().unwrap_or(0),
            };
            let mut file = std::fs::File::open(path_of(path)).map_err(unreadable)?;
            // A secret others may read is no secret: refused, as the store's own files are.
            let mode = file.metadata().map_err(unreadable)?.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(StoreProblem::UnlockSecretPermissions { mode });
            }
            let mut length = 0;
            loop {
                match file.read(&mut secret[length..]) {
                    Ok(0) => break,
                    Ok(read) => {
                        length += read;
                        if length == secret.len() {
                            break;
                        }
                    }
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(unreadable(error)),
                }
            }
            length
        }
    };
    let mut length = length.min(secret.len());
    if secret[..length].ends_with(b"\n") {
        length -= 1;
        if secret[..length].ends_with(b"\r") {
            length -= 1;
        }
    }
    if length > MAX_UNLOCK_SECRET_LEN {
        return Err(StoreProblem::UnlockSecretTooLong {
            cap: u32::try_from(MAX_UNLOCK_SECRET_LEN).unwrap_or(u32::MAX),
        });
    }
    if length == 0 {
        return Err(StoreProblem::UnlockSecretEmpty);
    }
    secret.truncate(length);
    Ok(secret)
}

/// The state file's bytes, up to the largest store keyward writes (and one more, so that a
/// longer file is seen to be too long).
fn read_state_file(path: &[u8]) -> Result<Vec<u8>, StoreProblem> {
    let unreadable = |error: io::Error| StoreProblem::StateUnreadable {
        errno: error.raw_os_error().unwrap_or(0),
    };
    let keys = crate::wire::MAX_KEY_LIMIT as usize;
    let cap = HEADER_LEN + BODY_LEN + (RECORD_LEN + MAX_CHAINS_PER_KEY * WATERMARK_LEN) * keys + 1;
    let mut bytes = Vec::new();
    std::fs::File::open(path_of(path))
        .and_then(|file| file.take(cap as u64).read_to_end(&mut bytes))
        .map_err(unreadable)?;
    Ok(bytes)
}

fn path_of(bytes: &[u8]) -> &std::path::Path {
    use std::os::unix::ffi::OsStrExt;
    std::path::Path::new(std::ffi::OsStr::from_bytes(bytes))
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

    #[test]
    fn two_generators_with_one_captured_state_diverge_after_a_reseed() {
        let mut ours = GeneratorState { seed: [9; 32] };
        let mut captured = GeneratorState { seed: ours.seed };
        // Before a reseed, whoever captured the state predicts every draw...
        assert_eq!(*ours.draw::<32>(), *captured.draw::<32>());
        // ...after one from the kernel, not any more, nor ever again.
        let mut fresh = [0u8; RESEED_BYTES];
        getrandom::fill(&mut fresh).unwrap();
        ours.reseed(&fresh);
        let mut guess = [0u8; RESEED_BYTES];
        getrandom::fill(&mut guess).unwrap();
        captured.reseed(&guess);
        for _ in 0..16 {
            assert_ne!(*ours.draw::<32>(), *captured.draw::<32>());
        }
        // The mixing is deterministic: the same state and the same entropy give the same state
        // (the captured party's only hope is to guess the 32 fresh bytes).
        let mut a = GeneratorState { seed: [1; 32] };
        let mut b = GeneratorState { seed: [1; 32] };
        a.reseed(&fresh);
        b.reseed(&fresh);
        assert_eq!(a.seed, b.seed);
        assert_ne!(a.seed, [1; 32]);
    }

    #[test]
    fn a_key_store_whose_generator_state_was_captured_still_makes_unpredictable_keys() {
        let spec = KeySpec::new(Purpose::Account);
        let mut ours = KeyStore::new(4, SecretMemory::LockedAnonymous).unwrap();
        let mut copy = KeyStore::new(4, SecretMemory::LockedAnonymous).unwrap();
        // An attacker who read the generator once holds an identical copy of it.
        copy.generator().seed = ours.generator().seed;
        copy.id = ours.id;
        let (_, ours_public, _) = ours.generate(spec).unwrap();
        let (_, copy_public, _) = copy.generate(spec).unwrap();
        assert_ne!(
            ours_public, copy_public,
            "generation must mix in fresh entropy: the captured state predicted the key"
        );
    }
}
