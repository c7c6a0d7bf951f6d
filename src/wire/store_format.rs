//! Shared by both sides: the sealed store's file, byte by byte. The signer seals and opens it;
//! the host parses its clear parts (to refuse a damaged file before a signer is started, to
//! show `keyward status`, and to compose the next file from the pieces the signer hands it) and
//! writes it. Nothing here holds or sees a secret: sealed bytes are opaque here.
//!
//! `docs/store-format.md` describes the same layout for a second implementation; the tests at
//! the end check its worked example.
//!
//! The file is a fixed header, a body (the sequence number, the record counts and the manifest
//! seal), the key records in increasing slot order, then the watermark records (a consensus
//! key's double-sign guard on one chain) in increasing (slot, chain) order; every record is of
//! fixed length. All integers are little-endian.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::wire::consensus::{ChainId, ChainWatermarks, ConsensusKind, Watermark};
use crate::wire::key_types::{Algorithm, LocalKeyId, Purpose, StoreId};

/// The first eight bytes of every store file.
pub(crate) const MAGIC: [u8; 8] = *b"KWSTORE\0";
/// The one format version this build reads and writes.
pub(crate) const FORMAT_VERSION: u16 = 1;
/// The key derivation the header names: Argon2id, version 0x13 (RFC 9106).
pub(crate) const KDF_ARGON2ID: u8 = 1;

/// Bytes 0..87 of the header are covered by its checksum; 0..47 by the verifier.
const VERIFIED_LEN: usize = 47;
const CHECKED_LEN: usize = 87;
/// The header: magic, version, store id, KDF, salt, verifier, checksum.
pub(crate) const HEADER_LEN: usize = CHECKED_LEN + 32;
/// The body before the records: sequence number, key and watermark record counts, manifest
/// nonce and tag.
pub(crate) const BODY_LEN: usize = 8 + 4 + 4 + 24 + 16;
/// One record: slot, id, purpose, algorithm, creation time, version, retirement time, public
/// key, nonce, sealed secret, tag.
pub(crate) const RECORD_LEN: usize = 2 + 16 + 1 + 1 + 8 + 4 + 8 + 32 + 24 + 32 + 16;
/// The part of a record in the clear, bound into its seal as associated data.
const RECORD_CLEAR_LEN: usize = 2 + 16 + 1 + 1 + 8 + 4 + 8 + 32;
/// One watermark of a watermark record: signed (1) or not (0), epoch, round, digest.
const MARK_LEN: usize = 1 + 8 + 8 + 32;
/// One watermark record: the key's slot, the chain, a watermark per kind (proposal, vote,
/// timeout). In the clear: the manifest's digest covers it.
pub(crate) const WATERMARK_LEN: usize = 2 + 32 + 3 * MARK_LEN;
/// The most chains one consensus key keeps watermarks for.
pub(crate) const MAX_CHAINS_PER_KEY: usize = 4;
/// The most versions of one key held at once: the current one and two previous ones in their
/// grace period after rotations.
pub(crate) const MAX_VERSIONS: usize = 3;

/// Domain labels of the three seals; each seal's associated data starts with its own.
pub(crate) const VERIFIER_LABEL: &[u8] = b"keyward-store/v1 verifier";
pub(crate) const MANIFEST_LABEL: &[u8] = b"keyward-store/v1 manifest";
pub(crate) const RECORD_LABEL: &[u8] = b"keyward-store/v1 record";

/// The most memory (KiB), passes and lanes a header may ask of the key derivation: a header
/// cannot make the signer map more than 1 GiB or run for minutes.
pub(crate) const MAX_KDF_MEMORY_KIB: u32 = 1024 * 1024;
pub(crate) const MAX_KDF_PASSES: u32 = 64;
pub(crate) const MAX_KDF_LANES: u32 = 16;

/// Argon2id's cost parameters, as the header stores them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParameters {
    /// Memory in KiB (at least 8 per lane).
    pub memory_kib: u32,
    /// Passes over the memory.
    pub passes: u32,
    /// Lanes (computed one after the other inside the signer).
    pub lanes: u32,
}

impl KdfParameters {
    /// RFC 9106's second recommended option: 64 MiB, 3 passes, 4 lanes. About a fifth of a
    /// second on a 2-vCPU VM, paid once per signer start.
    pub const RFC_9106_LOW_MEMORY: KdfParameters = KdfParameters {
        memory_kib: 64 * 1024,
        passes: 3,
        lanes: 4,
    };

    /// Whether Argon2 accepts these and they are within keyward's bounds; `Err` says which
    /// bound is broken.
    pub(crate) fn check(self) -> Result<(), &'static str> {
        if self.lanes == 0 || self.lanes > MAX_KDF_LANES {
            return Err("lanes must be 1 to 16");
        }
        if self.passes == 0 || self.passes > MAX_KDF_PASSES {
            return Err("passes must be 1 to 64");
        }
        if self.memory_kib < 8 * self.lanes || self.memory_kib > MAX_KDF_MEMORY_KIB {
            return Err("memory must be 8 KiB per lane to 1 GiB");
        }
        Ok(())
    }
}

impl Default for KdfParameters {
    fn default() -> Self {
        Self::RFC_9106_LOW_MEMORY
    }
}

/// A seal: its random nonce and its Poly1305 tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Seal {
    pub(crate) nonce: [u8; 24],
    pub(crate) tag: [u8; 16],
}

/// The header, as fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoreHeader {
    pub(crate) store: StoreId,
    pub(crate) kdf: KdfParameters,
    pub(crate) salt: [u8; 16],
    /// Seals nothing, under the key-encryption key, with the header's first 47 bytes as
    /// associated data: it tells a wrong unlock secret from a damaged body.
    pub(crate) verifier: Seal,
}

impl StoreHeader {
    /// The bytes the verifier binds: magic, version, store id, KDF, salt.
    pub(crate) fn verified_bytes(&self) -> [u8; VERIFIED_LEN] {
        let mut bytes = [0u8; VERIFIED_LEN];
        bytes[0..8].copy_from_slice(&MAGIC);
        bytes[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes[10..18].copy_from_slice(&self.store);
        bytes[18] = KDF_ARGON2ID;
        bytes[19..23].copy_from_slice(&self.kdf.memory_kib.to_le_bytes());
        bytes[23..27].copy_from_slice(&self.kdf.passes.to_le_bytes());
        bytes[27..31].copy_from_slice(&self.kdf.lanes.to_le_bytes());
        bytes[31..47].copy_from_slice(&self.salt);
        bytes
    }

    /// The header's bytes, checksum last.
    pub(crate) fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[..VERIFIED_LEN].copy_from_slice(&self.verified_bytes());
        bytes[47..71].copy_from_slice(&self.verifier.nonce);
        bytes[71..87].copy_from_slice(&self.verifier.tag);
        let checksum = Sha256::digest(&bytes[..CHECKED_LEN]);
        bytes[CHECKED_LEN..].copy_from_slice(&checksum);
        bytes
    }

    /// The checksum, which the manifest binds (so the manifest binds every header field).
    pub(crate) fn checksum(&self) -> [u8; 32] {
        let bytes = self.to_bytes();
        let mut checksum = [0u8; 32];
        checksum.copy_from_slice(&bytes[CHECKED_LEN..]);
        checksum
    }
}

/// One key record: the clear part (bound into the seal) and the sealed secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SealedRecord {
    pub(crate) slot: u16,
    pub(crate) local: LocalKeyId,
    pub(crate) purpose: Purpose,
    pub(crate) algorithm: Algorithm,
    /// Seconds since the Unix epoch when this version of the key was made (the signer's clock).
    pub(crate) created: u64,
    /// The key's version: 1 when it is made, one more at each rotation.
    pub(crate) version: u32,
    /// 0 for the key's current version; for a previous one, kept through its grace period
    /// after a rotation, the second (since the Unix epoch) at which it is erased.
    pub(crate) retires: u64,
    pub(crate) public_key: [u8; 32],
    pub(crate) sealed_secret: [u8; 32],
    pub(crate) seal: Seal,
}

impl SealedRecord {
    fn clear_bytes(&self) -> [u8; RECORD_CLEAR_LEN] {
        let mut bytes = [0u8; RECORD_CLEAR_LEN];
        bytes[0..2].copy_from_slice(&self.slot.to_le_bytes());
        bytes[2..18].copy_from_slice(&self.local);
        bytes[18] = purpose_code(self.purpose);
        bytes[19] = algorithm_code(self.algorithm);
        bytes[20..28].copy_from_slice(&self.created.to_le_bytes());
        bytes[28..32].copy_from_slice(&self.version.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.retires.to_le_bytes());
        bytes[40..72].copy_from_slice(&self.public_key);
        bytes
    }

    /// The associated data of this record's seal: label, store id, format version, clear part.
    pub(crate) fn associated_data(
        &self,
        store: &StoreId,
    ) -> [u8; RECORD_LABEL.len() + 8 + 2 + RECORD_CLEAR_LEN] {
        let mut data = [0u8; RECORD_LABEL.len() + 8 + 2 + RECORD_CLEAR_LEN];
        let (label, rest) = data.split_at_mut(RECORD_LABEL.len());
        label.copy_from_slice(RECORD_LABEL);
        rest[0..8].copy_from_slice(store);
        rest[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        rest[10..].copy_from_slice(&self.clear_bytes());
        data
    }

    /// The record's bytes in the file.
    pub(crate) fn to_bytes(self) -> [u8; RECORD_LEN] {
        let mut bytes = [0u8; RECORD_LEN];
        bytes[..RECORD_CLEAR_LEN].copy_from_slice(&self.clear_bytes());
        bytes[72..96].copy_from_slice(&self.seal.nonce);
        bytes[96..128].copy_from_slice(&self.sealed_secret);
        bytes[128..144].copy_from_slice(&self.seal.tag);
        bytes
    }

    fn from_bytes(bytes: &[u8; RECORD_LEN]) -> Result<Self, FormatError> {
        Ok(Self {
            slot: u16::from_le_bytes([bytes[0], bytes[1]]),
            local: array(&bytes[2..18]),
            purpose: purpose_from(bytes[18])
                .ok_or(FormatError::Corrupt(CorruptField::RecordPurpose))?,
            algorithm: algorithm_from(bytes[19])
                .ok_or(FormatError::Corrupt(CorruptField::RecordAlgorithm))?,
            created: u64::from_le_bytes(array(&bytes[20..28])),
            version: match u32::from_le_bytes(array(&bytes[28..32])) {
                0 => return Err(FormatError::Corrupt(CorruptField::RecordVersion)),
                version => version,
            },
            retires: u64::from_le_bytes(array(&bytes[32..40])),
            public_key: array(&bytes[40..72]),
            seal: Seal {
                nonce: array(&bytes[72..96]),
                tag: array(&bytes[128..144]),
            },
            sealed_secret: array(&bytes[96..128]),
        })
    }
}

/// A consensus key's watermarks on one chain, as the store file holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WatermarkRecord {
    /// The slot of the key (a consensus key the store holds).
    pub(crate) slot: u16,
    pub(crate) marks: ChainWatermarks,
}

impl WatermarkRecord {
    /// The record's bytes in the file.
    pub(crate) fn to_bytes(self) -> [u8; WATERMARK_LEN] {
        let mut bytes = [0u8; WATERMARK_LEN];
        bytes[0..2].copy_from_slice(&self.slot.to_le_bytes());
        bytes[2..34].copy_from_slice(&self.marks.chain.0);
        for (kind, mark) in ConsensusKind::ALL
            .into_iter()
            .zip(bytes[34..].chunks_exact_mut(MARK_LEN))
        {
            if let Some(watermark) = self.marks.of(kind) {
                mark[0] = 1;
                mark[1..9].copy_from_slice(&watermark.epoch.to_le_bytes());
                mark[9..17].copy_from_slice(&watermark.round.to_le_bytes());
                mark[17..49].copy_from_slice(&watermark.digest);
            }
        }
        bytes
    }

    fn from_bytes(bytes: &[u8; WATERMARK_LEN]) -> Result<Self, FormatError> {
        let mut marks = ChainWatermarks::empty(ChainId(array(&bytes[2..34])));
        for (kind, mark) in ConsensusKind::ALL
            .into_iter()
            .zip(bytes[34..].chunks_exact(MARK_LEN))
        {
            let watermark = match mark[0] {
                0 if mark[1..].iter().all(|&byte| byte == 0) => None,
                1 => Some(Watermark {
                    epoch: u64::from_le_bytes(array(&mark[1..9])),
                    round: u64::from_le_bytes(array(&mark[9..17])),
                    digest: array(&mark[17..49]),
                }),
                _ => return Err(FormatError::Corrupt(CorruptField::Watermark)),
            };
            marks.set(kind, watermark);
        }
        Ok(Self {
            slot: u16::from_le_bytes([bytes[0], bytes[1]]),
            marks,
        })
    }

    /// The order of watermark records in the file.
    pub(crate) fn order(&self) -> (u16, ChainId) {
        (self.slot, self.marks.chain)
    }
}

/// What the manifest seal binds besides the header: which write this is and which records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ManifestFields {
    /// Grows with every write the signer seals (by one or more: a sealed state the host could
    /// not write is skipped).
    pub(crate) sequence: u64,
    pub(crate) record_count: u32,
    pub(crate) watermark_count: u32,
    /// SHA-256 over the key records' bytes, then the watermark records' bytes, in file order.
    pub(crate) records_digest: [u8; 32],
}

impl ManifestFields {
    /// The manifest seal's associated data.
    pub(crate) fn associated_data(
        &self,
        header_checksum: &[u8; 32],
    ) -> [u8; MANIFEST_LABEL.len() + 32 + 8 + 4 + 4 + 32] {
        let mut data = [0u8; MANIFEST_LABEL.len() + 32 + 8 + 4 + 4 + 32];
        let (label, rest) = data.split_at_mut(MANIFEST_LABEL.len());
        label.copy_from_slice(MANIFEST_LABEL);
        rest[0..32].copy_from_slice(header_checksum);
        rest[32..40].copy_from_slice(&self.sequence.to_le_bytes());
        rest[40..44].copy_from_slice(&self.record_count.to_le_bytes());
        rest[44..48].copy_from_slice(&self.watermark_count.to_le_bytes());
        rest[48..80].copy_from_slice(&self.records_digest);
        data
    }

    /// The summary of the records this manifest binds.
    pub(crate) fn summary(&self) -> RecordsSummary {
        (self.record_count, self.watermark_count, self.records_digest)
    }
}

/// Hashes records, in file order (every key record before every watermark record), as the
/// manifest binds them.
#[derive(Clone, Default)]
pub(crate) struct RecordsDigest {
    hasher: Sha256,
    keys: u32,
    watermarks: u32,
}

/// The counts and the digest the manifest binds.
pub(crate) type RecordsSummary = (u32, u32, [u8; 32]);

impl RecordsDigest {
    pub(crate) fn add(&mut self, record: &SealedRecord) {
        self.hasher.update(record.to_bytes());
        self.keys = self.keys.saturating_add(1);
    }

    pub(crate) fn add_watermark(&mut self, record: &WatermarkRecord) {
        self.hasher.update(record.to_bytes());
        self.watermarks = self.watermarks.saturating_add(1);
    }

    pub(crate) fn finish(self) -> RecordsSummary {
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&self.hasher.finalize());
        (self.keys, self.watermarks, digest)
    }
}

/// A whole store file, parsed. Seals are not checked here (that needs the key-encryption key,
/// which only the signer has): a parsed file is well-formed, not authentic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoreFile {
    pub(crate) header: StoreHeader,
    pub(crate) manifest: ManifestFields,
    pub(crate) manifest_seal: Seal,
    pub(crate) records: Vec<SealedRecord>,
    pub(crate) watermarks: Vec<WatermarkRecord>,
}

/// Why bytes are not a store file this build can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FormatError {
    /// The first eight bytes are not the magic.
    NotAStore,
    /// A format version this build does not read.
    UnsupportedVersion(u16),
    /// Shorter than its header or its record count says.
    Truncated {
        /// The file's length.
        length: usize,
        /// The least length it needs.
        needed: usize,
    },
    /// Longer than its record count says.
    TrailingBytes {
        /// The file's length.
        length: usize,
        /// The length its record count gives.
        expected: usize,
    },
    /// A field that cannot be right.
    Corrupt(CorruptField),
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FormatError::NotAStore => f.write_str("it does not start with keyward's store magic"),
            FormatError::UnsupportedVersion(found) => write!(
                f,
                "it is store format version {found}; this build reads version {FORMAT_VERSION}"
            ),
            FormatError::Truncated { length, needed } => {
                write!(
                    f,
                    "it is truncated: {length} bytes, at least {needed} needed"
                )
            }
            FormatError::TrailingBytes { length, expected } => write!(
                f,
                "it is {length} bytes where its record count says {expected}"
            ),
            FormatError::Corrupt(field) => write!(f, "{field} is corrupt"),
        }
    }
}

/// A field of the store file found impossible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CorruptField {
    /// The header's SHA-256 checksum does not match the header.
    HeaderChecksum,
    /// The key derivation is not Argon2id.
    KdfAlgorithm,
    /// The key derivation's costs are out of bounds.
    KdfParameters,
    /// The record count cannot be.
    RecordCount,
    /// The records are not in strictly increasing slot order.
    RecordOrder,
    /// A record names no known purpose.
    RecordPurpose,
    /// A record names no known algorithm.
    RecordAlgorithm,
    /// A watermark record's flag is neither 0 nor 1, or an unset watermark is not all zeros.
    Watermark,
    /// The watermark records are not in strictly increasing (slot, chain) order.
    WatermarkOrder,
    /// A record's version is 0, or a key's versions do not fit together: not exactly one
    /// current version, a previous version not older than the current one, a version twice.
    RecordVersion,
    /// A watermark record's slot holds no current consensus key.
    WatermarkSlot,
}

impl std::fmt::Display for CorruptField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CorruptField::HeaderChecksum => "the header checksum",
            CorruptField::KdfAlgorithm => "the key derivation algorithm",
            CorruptField::KdfParameters => "the key derivation parameters",
            CorruptField::RecordCount => "the record count",
            CorruptField::RecordOrder => "the order of the records",
            CorruptField::RecordPurpose => "a record's purpose",
            CorruptField::RecordAlgorithm => "a record's algorithm",
            CorruptField::Watermark => "a watermark record",
            CorruptField::WatermarkOrder => "the order of the watermark records",
            CorruptField::RecordVersion => "a key's versions",
            CorruptField::WatermarkSlot => "the key of a watermark record",
        })
    }
}

/// Each key id has exactly one current version (retirement 0), and every previous version of
/// it is older than the current one and appears once.
fn check_versions(records: &[SealedRecord]) -> Result<(), FormatError> {
    let corrupt = FormatError::Corrupt(CorruptField::RecordVersion);
    for record in records {
        let lineage = || records.iter().filter(|other| other.local == record.local);
        if lineage().count() > MAX_VERSIONS {
            return Err(corrupt);
        }
        let mut current = lineage().filter(|other| other.retires == 0);
        let (Some(current), None) = (current.next(), current.next()) else {
            return Err(corrupt);
        };
        if record.retires != 0 && record.version >= current.version {
            return Err(corrupt);
        }
        if lineage()
            .filter(|other| other.version == record.version)
            .count()
            != 1
        {
            return Err(corrupt);
        }
        if current.purpose != record.purpose || current.algorithm != record.algorithm {
            return Err(corrupt);
        }
    }
    Ok(())
}

impl StoreFile {
    /// The header alone, checked: magic, version, checksum, KDF bounds.
    pub(crate) fn parse_header(bytes: &[u8]) -> Result<StoreHeader, FormatError> {
        // Empty, or cut short within the magic: a truncated store, not some other file.
        if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) {
            return Err(FormatError::Truncated {
                length: bytes.len(),
                needed: HEADER_LEN + BODY_LEN,
            });
        }
        if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
            return Err(FormatError::NotAStore);
        }
        if bytes.len() < 10 {
            return Err(FormatError::Truncated {
                length: bytes.len(),
                needed: HEADER_LEN + BODY_LEN,
            });
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        if bytes.len() < HEADER_LEN {
            return Err(FormatError::Truncated {
                length: bytes.len(),
                needed: HEADER_LEN + BODY_LEN,
            });
        }
        if Sha256::digest(&bytes[..CHECKED_LEN])[..] != bytes[CHECKED_LEN..HEADER_LEN] {
            return Err(FormatError::Corrupt(CorruptField::HeaderChecksum));
        }
        if bytes[18] != KDF_ARGON2ID {
            return Err(FormatError::Corrupt(CorruptField::KdfAlgorithm));
        }
        let kdf = KdfParameters {
            memory_kib: u32::from_le_bytes(array(&bytes[19..23])),
            passes: u32::from_le_bytes(array(&bytes[23..27])),
            lanes: u32::from_le_bytes(array(&bytes[27..31])),
        };
        kdf.check()
            .map_err(|_| FormatError::Corrupt(CorruptField::KdfParameters))?;
        Ok(StoreHeader {
            store: array(&bytes[10..18]),
            kdf,
            salt: array(&bytes[31..47]),
            verifier: Seal {
                nonce: array(&bytes[47..71]),
                tag: array(&bytes[71..87]),
            },
        })
    }

    /// A whole file, checked for form: header, body, every record, slots strictly increasing.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        let header = Self::parse_header(bytes)?;
        let body = bytes.get(HEADER_LEN..HEADER_LEN + BODY_LEN).ok_or({
            FormatError::Truncated {
                length: bytes.len(),
                needed: HEADER_LEN + BODY_LEN,
            }
        })?;
        let sequence = u64::from_le_bytes(array(&body[0..8]));
        let record_count = u32::from_le_bytes(array(&body[8..12]));
        let watermark_count = u32::from_le_bytes(array(&body[12..16]));
        let manifest_seal = Seal {
            nonce: array(&body[16..40]),
            tag: array(&body[40..56]),
        };
        let records_len = usize::try_from(record_count)
            .ok()
            .and_then(|count| count.checked_mul(RECORD_LEN))
            .ok_or(FormatError::Corrupt(CorruptField::RecordCount))?;
        let watermarks_len = usize::try_from(watermark_count)
            .ok()
            .and_then(|count| count.checked_mul(WATERMARK_LEN))
            .ok_or(FormatError::Corrupt(CorruptField::RecordCount))?;
        let expected = records_len
            .checked_add(watermarks_len)
            .and_then(|records| records.checked_add(HEADER_LEN + BODY_LEN))
            .ok_or(FormatError::Corrupt(CorruptField::RecordCount))?;
        if bytes.len() < expected {
            return Err(FormatError::Truncated {
                length: bytes.len(),
                needed: expected,
            });
        }
        if bytes.len() > expected {
            return Err(FormatError::TrailingBytes {
                length: bytes.len(),
                expected,
            });
        }
        let records_start = HEADER_LEN + BODY_LEN;
        let watermarks_start = records_start + records_len;
        let (chunks, _) = bytes[records_start..watermarks_start].as_chunks::<RECORD_LEN>();
        let mut records = Vec::with_capacity(chunks.len());
        let mut digest = RecordsDigest::default();
        for chunk in chunks {
            let record = SealedRecord::from_bytes(chunk)?;
            if records
                .last()
                .is_some_and(|last: &SealedRecord| last.slot >= record.slot)
            {
                return Err(FormatError::Corrupt(CorruptField::RecordOrder));
            }
            digest.add(&record);
            records.push(record);
        }
        let (chunks, _) = bytes[watermarks_start..].as_chunks::<WATERMARK_LEN>();
        let mut watermarks = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let record = WatermarkRecord::from_bytes(chunk)?;
            if watermarks
                .last()
                .is_some_and(|last: &WatermarkRecord| last.order() >= record.order())
            {
                return Err(FormatError::Corrupt(CorruptField::WatermarkOrder));
            }
            digest.add_watermark(&record);
            watermarks.push(record);
        }
        check_versions(&records)?;
        for watermark in &watermarks {
            let held = records.iter().any(|record| {
                record.slot == watermark.slot
                    && record.retires == 0
                    && record.purpose == Purpose::Consensus
            });
            if !held {
                return Err(FormatError::Corrupt(CorruptField::WatermarkSlot));
            }
        }
        let (_, _, records_digest) = digest.finish();
        Ok(Self {
            header,
            manifest: ManifestFields {
                sequence,
                record_count,
                watermark_count,
                records_digest,
            },
            manifest_seal,
            records,
            watermarks,
        })
    }

    /// The file's bytes.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(
            HEADER_LEN
                + BODY_LEN
                + self.records.len() * RECORD_LEN
                + self.watermarks.len() * WATERMARK_LEN,
        );
        bytes.extend_from_slice(&self.header.to_bytes());
        bytes.extend_from_slice(&self.manifest.sequence.to_le_bytes());
        bytes.extend_from_slice(&self.manifest.record_count.to_le_bytes());
        bytes.extend_from_slice(&self.manifest.watermark_count.to_le_bytes());
        bytes.extend_from_slice(&self.manifest_seal.nonce);
        bytes.extend_from_slice(&self.manifest_seal.tag);
        for record in &self.records {
            bytes.extend_from_slice(&record.to_bytes());
        }
        for record in &self.watermarks {
            bytes.extend_from_slice(&record.to_bytes());
        }
        bytes
    }

    /// The counts and digest of this file's records as they are now (after the host changed
    /// them).
    pub(crate) fn records_digest(&self) -> RecordsSummary {
        let mut digest = RecordsDigest::default();
        for record in &self.records {
            digest.add(record);
        }
        for record in &self.watermarks {
            digest.add_watermark(record);
        }
        digest.finish()
    }
}

/// A purpose's byte in a record.
pub(crate) fn purpose_code(purpose: Purpose) -> u8 {
    match purpose {
        Purpose::Account => 0,
        Purpose::Consensus => 1,
        Purpose::NetworkDiscovery => 2,
        Purpose::NetworkHandshake => 3,
    }
}

fn purpose_from(code: u8) -> Option<Purpose> {
    Purpose::ALL.into_iter().find(|&p| purpose_code(p) == code)
}

/// An algorithm's byte in a record.
pub(crate) fn algorithm_code(algorithm: Algorithm) -> u8 {
    match algorithm {
        Algorithm::Ed25519 => 0,
        Algorithm::X25519 => 1,
    }
}

fn algorithm_from(code: u8) -> Option<Algorithm> {
    [Algorithm::Ed25519, Algorithm::X25519]
        .into_iter()
        .find(|&a| algorithm_code(a) == code)
}

/// A fixed-size array from a slice of exactly that length (every caller slices a constant range
/// of a buffer whose length was checked).
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StoreFile {
        let header = StoreHeader {
            store: [0x11; 8],
            kdf: KdfParameters {
                memory_kib: 64,
                passes: 1,
                lanes: 1,
            },
            salt: [0x22; 16],
            verifier: Seal {
                nonce: [0x33; 24],
                tag: [0x44; 16],
            },
        };
        let records = vec![
            SealedRecord {
                slot: 0,
                local: [0x55; 16],
                purpose: Purpose::Consensus,
                algorithm: Algorithm::Ed25519,
                created: 1_700_000_000,
                version: 1,
                retires: 0,
                public_key: [0x66; 32],
                sealed_secret: [0x77; 32],
                seal: Seal {
                    nonce: [0x88; 24],
                    tag: [0x99; 16],
                },
            },
            SealedRecord {
                slot: 3,
                local: [0xaa; 16],
                purpose: Purpose::NetworkHandshake,
                algorithm: Algorithm::X25519,
                created: 1_700_000_001,
                version: 1,
                retires: 0,
                public_key: [0xbb; 32],
                sealed_secret: [0xcc; 32],
                seal: Seal {
                    nonce: [0xdd; 24],
                    tag: [0xee; 16],
                },
            },
        ];
        let mut file = StoreFile {
            header,
            manifest: ManifestFields {
                sequence: 7,
                record_count: 2,
                watermark_count: 1,
                records_digest: [0; 32],
            },
            manifest_seal: Seal {
                nonce: [1; 24],
                tag: [2; 16],
            },
            records,
            watermarks: vec![WatermarkRecord {
                slot: 0,
                marks: ChainWatermarks {
                    chain: ChainId([0x12; 32]),
                    proposal: None,
                    vote: Some(Watermark {
                        epoch: 3,
                        round: 9,
                        digest: [0x34; 32],
                    }),
                    timeout: None,
                },
            }],
        };
        file.manifest.records_digest = file.records_digest().2;
        file
    }

    #[test]
    fn a_file_parses_back_to_itself_and_has_the_documented_length() {
        let file = sample();
        let bytes = file.to_bytes();
        assert_eq!(bytes.len(), 119 + 56 + 2 * 144 + 181);
        assert_eq!(StoreFile::parse(&bytes), Ok(file));
    }

    #[test]
    fn every_truncation_and_every_extra_byte_is_refused() {
        let bytes = sample().to_bytes();
        for length in 0..bytes.len() {
            assert!(
                StoreFile::parse(&bytes[..length]).is_err(),
                "length {length}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            StoreFile::parse(&longer),
            Err(FormatError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn a_flipped_bit_anywhere_in_the_header_is_refused() {
        let bytes = sample().to_bytes();
        for offset in 0..HEADER_LEN {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[offset] ^= 1 << bit;
                assert!(
                    StoreFile::parse_header(&flipped).is_err(),
                    "offset {offset} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn records_out_of_slot_order_are_refused() {
        let mut file = sample();
        file.records.swap(0, 1);
        assert_eq!(
            StoreFile::parse(&file.to_bytes()),
            Err(FormatError::Corrupt(CorruptField::RecordOrder))
        );
    }

    /// docs/store-format.md's worked example: the header of `sample()`, byte for byte.
    #[test]
    fn the_documented_header_example_is_what_the_code_writes() {
        let header = sample().header.to_bytes();
        let hex: String = header.iter().map(|b| format!("{b:02x}")).collect();
        let documented = include_str!("../../docs/store-format.md");
        let example: String = documented
            .split("<!-- header example -->")
            .nth(1)
            .unwrap_or_default()
            .lines()
            .skip_while(|line| !line.starts_with("```"))
            .skip(1)
            .take_while(|line| !line.starts_with("```"))
            .flat_map(|line| line.split_whitespace())
            .collect();
        assert_eq!(example, hex, "docs/store-format.md's header example");
    }
}
