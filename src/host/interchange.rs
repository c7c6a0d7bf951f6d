//! Runs in the host: the watermark interchange, a JSON document that carries a store's
//! double-sign protection to another machine or from another signer (in the spirit of
//! Ethereum's EIP-3076 slashing-protection interchange). The format is specified in
//! `docs/consensus-format.md`.
//!
//! One document covers one chain: its metadata names the format, the format's version and the
//! chain id; its data lists, per consensus public key, the highest proposal, vote and timeout
//! signed on that chain. Every integer is a decimal string (a JSON number is a 64-bit float in
//! many readers, and epochs and rounds are u64). Parsing is strict: a field the format does not
//! have, a wrong length, a non-canonical integer or a public key listed twice refuses the whole
//! document, since a mistyped field silently dropped would be a watermark silently lost.
//!
//! An import only ever raises a watermark (`SecretService::raise_watermarks` keeps the higher of
//! the two, per kind): the document cannot lower the protection a store already has. Every
//! entry is checked against the store before the first watermark is raised, so a document that
//! names a key the store does not hold changes nothing.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::host::error::{Error, Result};
use crate::host::key_service::KeyService;
use crate::host::keys::KeyId;
use crate::host::service::SecretService;
use crate::wire::consensus::{ChainId, ChainWatermarks, ConsensusKind, Watermark};
use crate::wire::key_types::Purpose;
use crate::wire::store_format::MAX_CHAINS_PER_KEY;

/// The value of `metadata.interchange_format` in every watermark interchange document.
pub const INTERCHANGE_FORMAT: &str = "keyward-watermarks";

/// The version of the interchange format this keyward reads and writes
/// (`metadata.interchange_format_version`).
pub const INTERCHANGE_FORMAT_VERSION: &str = "1";

/// A watermark interchange document: one chain's watermarks for a set of consensus keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatermarkInterchange {
    /// The chain every watermark in the document is for.
    pub chain: ChainId,
    /// Per consensus key, its watermarks on the chain; each public key at most once.
    pub keys: Vec<KeyWatermarks>,
}

/// One consensus key's watermarks on the document's chain (`None`: never signed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyWatermarks {
    /// The key's Ed25519 public key: how a document names a key (key ids belong to one store).
    pub public_key: [u8; 32],
    /// The highest proposal signed.
    pub proposal: Option<Watermark>,
    /// The highest vote signed.
    pub vote: Option<Watermark>,
    /// The highest timeout signed.
    pub timeout: Option<Watermark>,
}

impl KeyWatermarks {
    /// The watermark of `kind`.
    pub fn of(&self, kind: ConsensusKind) -> Option<Watermark> {
        match kind {
            ConsensusKind::Proposal => self.proposal,
            ConsensusKind::Vote => self.vote,
            ConsensusKind::Timeout => self.timeout,
        }
    }

    /// These watermarks as a store keeps them, on `chain`.
    pub fn on(&self, chain: ChainId) -> ChainWatermarks {
        ChainWatermarks {
            chain,
            proposal: self.proposal,
            vote: self.vote,
            timeout: self.timeout,
        }
    }

    fn offers_any(&self) -> bool {
        ConsensusKind::ALL
            .iter()
            .any(|&kind| self.of(kind).is_some())
    }
}

/// Why a watermark interchange document was refused. Nothing was imported.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InterchangeError {
    /// Not JSON, or not of the document's shape: a missing or unknown field, a field given
    /// twice, a value of the wrong JSON type.
    #[error("the document is not a well-formed watermark interchange: {0}")]
    Malformed(String),

    /// `metadata.interchange_format` is missing or names another format.
    #[error(
        "not a keyward watermark interchange: metadata.interchange_format is {}, expected \"{INTERCHANGE_FORMAT}\"",
        quoted(found)
    )]
    UnknownFormat {
        /// What the document has there.
        found: Option<String>,
    },

    /// `metadata.interchange_format_version` is missing or a version this keyward does not read.
    #[error(
        "metadata.interchange_format_version is {}; this keyward reads version \"{INTERCHANGE_FORMAT_VERSION}\"",
        quoted(found)
    )]
    UnsupportedVersion {
        /// What the document has there.
        found: Option<String>,
    },

    /// A hex field holds something other than hex digits (or starts with `0x`, which the format
    /// does not use).
    #[error("{field} is not hex: digits 0-9 and a-f only, without a 0x prefix")]
    BadHex {
        /// Where, as a path in the document (`data[0].public_key`).
        field: String,
    },

    /// A hex field has the wrong number of digits.
    #[error("{field} has {found} hex digits; it takes {expected} ({} bytes)", expected / 2)]
    WrongLength {
        /// Where, as a path in the document.
        field: String,
        /// How many digits it takes.
        expected: usize,
        /// How many it has.
        found: usize,
    },

    /// An integer field is not a canonical decimal from 0 to 2^64 - 1 (digits only, no sign,
    /// no leading zero, no exponent).
    #[error(
        "{field} is \"{found}\": integers are decimal strings from \"0\" to \"18446744073709551615\", digits only, without leading zeros"
    )]
    NotADecimal {
        /// Where, as a path in the document.
        field: String,
        /// What it holds (cut to 40 characters).
        found: String,
    },

    /// The same public key has two entries: which one holds is not the document's to leave to
    /// chance.
    #[error(
        "data[{first}] and data[{second}] are both for public key {}: a key has one entry per document",
        hex(public_key)
    )]
    DuplicateKey {
        /// The public key.
        public_key: [u8; 32],
        /// Its first entry.
        first: usize,
        /// Its second entry.
        second: usize,
    },

    /// The store holds no key with this public key. Keys are not moved by the interchange;
    /// import into the store that holds the key.
    #[error(
        "the store holds no key with public key {} (data[{index}])",
        hex(public_key)
    )]
    UnknownKey {
        /// The public key.
        public_key: [u8; 32],
        /// Its entry.
        index: usize,
    },

    /// The store's key with this public key is not a consensus key: it has no watermarks.
    #[error(
        "the store's key with public key {} (data[{index}]) is a {purpose} key, not a consensus key",
        hex(public_key)
    )]
    NotAConsensusKey {
        /// The public key.
        public_key: [u8; 32],
        /// Its entry.
        index: usize,
        /// The key's purpose.
        purpose: Purpose,
    },

    /// The key already keeps watermarks for as many chains as it can, and this is another.
    #[error(
        "the key with public key {} (data[{index}]) already keeps watermarks for {cap} other chains",
        hex(public_key)
    )]
    ChainLimit {
        /// The public key.
        public_key: [u8; 32],
        /// Its entry.
        index: usize,
        /// The most chains per key.
        cap: u32,
    },
}

fn quoted(found: &Option<String>) -> String {
    match found {
        Some(found) => format!("\"{}\"", cut(found)),
        None => "missing".to_owned(),
    }
}

/// At most 40 characters of a value quoted back in an error.
fn cut(text: &str) -> String {
    text.chars().take(40).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// What an import did with one watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkImport {
    /// The document has none for this kind.
    NotOffered,
    /// Raised: the store's watermark was lower (or there was none).
    Raised {
        /// The store's watermark before.
        from: Option<Watermark>,
        /// The store's watermark now (the document's).
        to: Watermark,
    },
    /// Left as it was: the store's watermark was already at or above the document's.
    Kept {
        /// The store's watermark.
        held: Watermark,
        /// The document's.
        offered: Watermark,
    },
}

impl MarkImport {
    /// Kept at the same epoch and round with another digest: the key has signed two different
    /// messages of this kind at one position (one in each place the document and the store
    /// came from). The store keeps its own; an operator should find out why.
    pub fn is_conflicting(&self) -> bool {
        matches!(self, MarkImport::Kept { held, offered }
            if held.position() == offered.position() && held.digest != offered.digest)
    }
}

/// What an import did for one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyImport {
    /// The key's public key, as the document names it.
    pub public_key: [u8; 32],
    /// The key in the store.
    pub key: KeyId,
    /// Its proposal watermark.
    pub proposal: MarkImport,
    /// Its vote watermark.
    pub vote: MarkImport,
    /// Its timeout watermark.
    pub timeout: MarkImport,
}

impl KeyImport {
    /// What happened to the watermark of `kind`.
    pub fn of(&self, kind: ConsensusKind) -> MarkImport {
        match kind {
            ConsensusKind::Proposal => self.proposal,
            ConsensusKind::Vote => self.vote,
            ConsensusKind::Timeout => self.timeout,
        }
    }
}

/// What an import did, per key, in the document's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportReport {
    /// The document's chain.
    pub chain: ChainId,
    /// Per key of the document.
    pub keys: Vec<KeyImport>,
}

impl ImportReport {
    /// How many watermarks were raised.
    pub fn raised(&self) -> usize {
        self.count(|mark| matches!(mark, MarkImport::Raised { .. }))
    }

    /// How many were left because the store's was at or above the document's.
    pub fn kept(&self) -> usize {
        self.count(|mark| matches!(mark, MarkImport::Kept { .. }))
    }

    fn count(&self, counted: impl Fn(&MarkImport) -> bool) -> usize {
        self.keys
            .iter()
            .flat_map(|key| ConsensusKind::ALL.map(|kind| key.of(kind)))
            .filter(|mark| counted(mark))
            .count()
    }
}

impl WatermarkInterchange {
    /// The watermarks of every consensus key of `service` on `chain` (a key that never signed
    /// there is listed with none), in the service's key order.
    ///
    /// Export while nothing signs with these keys (EIP-3076's rule): a watermark raised after
    /// the export is not in the document. The sealed store's lock enforces it for a store: a
    /// running validator holds it, so a second service cannot open the store.
    pub fn export(service: &SecretService, chain: ChainId) -> Result<Self> {
        let mut keys = Vec::new();
        for info in service.list_keys()? {
            if info.purpose != Purpose::Consensus {
                continue;
            }
            let Some(public_key) = info.public_key.as_ed25519() else {
                return Err(Error::Internal("a consensus key that is not Ed25519"));
            };
            let marks = service
                .watermarks(info.id)?
                .into_iter()
                .find(|marks| marks.chain == chain)
                .unwrap_or(ChainWatermarks::empty(chain));
            keys.push(KeyWatermarks {
                public_key: public_key.to_bytes(),
                proposal: marks.proposal,
                vote: marks.vote,
                timeout: marks.timeout,
            });
        }
        Ok(Self { chain, keys })
    }

    /// Every chain on which a consensus key of `service` has a watermark, in order.
    pub fn chains(service: &SecretService) -> Result<Vec<ChainId>> {
        let mut chains = Vec::new();
        for info in service.list_keys()? {
            if info.purpose == Purpose::Consensus {
                chains.extend(service.watermarks(info.id)?.iter().map(|marks| marks.chain));
            }
        }
        chains.sort_unstable();
        chains.dedup();
        Ok(chains)
    }

    /// Raises the watermarks of `service`'s keys to the document's, where the document's are
    /// higher; never lowers one. Each raise is durable (with a sealed store) before the next.
    ///
    /// Every entry is checked first (each public key once, each a consensus key the store
    /// holds, the chain one each key can take): if any is refused, nothing is raised and the
    /// error is [`Error::Interchange`]. Import while nothing signs with these keys.
    pub fn import(&self, service: &SecretService) -> Result<ImportReport> {
        check_unique(&self.keys)?;
        let held: HashMap<[u8; 32], (KeyId, Purpose)> = service
            .list_keys()?
            .into_iter()
            .map(|info| (info.public_key.to_bytes(), (info.id, info.purpose)))
            .collect();
        // Every entry is checked before the first raise: a refused document changes nothing.
        let mut plan = Vec::with_capacity(self.keys.len());
        for (index, entry) in self.keys.iter().enumerate() {
            let public_key = entry.public_key;
            let &(key, purpose) = held
                .get(&public_key)
                .ok_or(InterchangeError::UnknownKey { public_key, index })?;
            if purpose != Purpose::Consensus {
                return Err(InterchangeError::NotAConsensusKey {
                    public_key,
                    index,
                    purpose,
                }
                .into());
            }
            let chains = service.watermarks(key)?;
            let before = chains
                .iter()
                .find(|marks| marks.chain == self.chain)
                .copied();
            if before.is_none() && entry.offers_any() && chains.len() >= MAX_CHAINS_PER_KEY {
                return Err(InterchangeError::ChainLimit {
                    public_key,
                    index,
                    cap: u32::try_from(MAX_CHAINS_PER_KEY).unwrap_or(u32::MAX),
                }
                .into());
            }
            plan.push((key, before.unwrap_or(ChainWatermarks::empty(self.chain))));
        }
        let mut report = Vec::with_capacity(plan.len());
        for (entry, (key, before)) in self.keys.iter().zip(plan) {
            // A key with nothing offered is not asked: there is nothing to raise.
            let after = if entry.offers_any() {
                service.raise_watermarks(key, &entry.on(self.chain))?;
                service
                    .watermarks(key)?
                    .into_iter()
                    .find(|marks| marks.chain == self.chain)
                    .ok_or(Error::Internal("a raised chain's watermarks are missing"))?
            } else {
                before
            };
            let outcome = |kind| outcome(before.of(kind), after.of(kind), entry.of(kind));
            report.push(KeyImport {
                public_key: entry.public_key,
                key,
                proposal: outcome(ConsensusKind::Proposal)?,
                vote: outcome(ConsensusKind::Vote)?,
                timeout: outcome(ConsensusKind::Timeout)?,
            });
        }
        Ok(ImportReport {
            chain: self.chain,
            keys: report,
        })
    }

    /// Reads a document, strictly: see [`InterchangeError`] for everything refused.
    pub fn from_json(text: &str) -> std::result::Result<Self, InterchangeError> {
        // The format and its version first, read leniently, so that another format (an
        // EIP-3076 file, a later version) is named as such rather than as an unknown field.
        let probe: Probe = serde_json::from_str(text).map_err(malformed)?;
        let metadata = probe.metadata.unwrap_or_default();
        if metadata.interchange_format.as_deref() != Some(INTERCHANGE_FORMAT) {
            return Err(InterchangeError::UnknownFormat {
                found: metadata.interchange_format,
            });
        }
        if metadata.interchange_format_version.as_deref() != Some(INTERCHANGE_FORMAT_VERSION) {
            return Err(InterchangeError::UnsupportedVersion {
                found: metadata.interchange_format_version,
            });
        }
        let document: RawDocument = serde_json::from_str(text).map_err(malformed)?;
        let chain = ChainId(parse_hex("metadata.chain_id", &document.metadata.chain_id)?);
        let mut keys = Vec::with_capacity(document.data.len());
        for (index, entry) in document.data.iter().enumerate() {
            let field = |name: &str| format!("data[{index}].{name}");
            let mark = |name: &str, raw: &Option<RawWatermark>| {
                raw.as_ref()
                    .map(|raw| parse_watermark(&field(name), raw))
                    .transpose()
            };
            keys.push(KeyWatermarks {
                public_key: parse_hex(&field("public_key"), &entry.public_key)?,
                proposal: mark("proposal", &entry.proposal)?,
                vote: mark("vote", &entry.vote)?,
                timeout: mark("timeout", &entry.timeout)?,
            });
        }
        check_unique(&keys)?;
        Ok(Self { chain, keys })
    }

    /// The document as JSON (two-space indents, a final newline), as `from_json` reads it.
    pub fn to_json(&self) -> String {
        let mark = |mark: Option<Watermark>| {
            mark.map(|mark| RawWatermark {
                epoch: mark.epoch.to_string(),
                round: mark.round.to_string(),
                digest: hex(&mark.digest),
            })
        };
        let document = RawDocument {
            metadata: RawMetadata {
                interchange_format: INTERCHANGE_FORMAT.to_owned(),
                interchange_format_version: INTERCHANGE_FORMAT_VERSION.to_owned(),
                chain_id: hex(&self.chain.0),
            },
            data: self
                .keys
                .iter()
                .map(|key| RawEntry {
                    public_key: hex(&key.public_key),
                    proposal: mark(key.proposal),
                    vote: mark(key.vote),
                    timeout: mark(key.timeout),
                })
                .collect(),
        };
        // Strings, options and vectors only: serialising cannot fail.
        let mut text = serde_json::to_string_pretty(&document).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// `import`'s verdict on one kind, from the store's watermark before and after the raise and
/// the document's. After a raise the store's watermark is at or above the document's; a signer
/// that says otherwise did not do what `raise_watermarks` promises, and the report would lie.
fn outcome(
    before: Option<Watermark>,
    after: Option<Watermark>,
    offered: Option<Watermark>,
) -> Result<MarkImport> {
    let Some(offered) = offered else {
        return Ok(MarkImport::NotOffered);
    };
    match after {
        Some(after) if after.position() < offered.position() => Err(Error::Internal(
            "an imported watermark was not raised to the document's",
        )),
        Some(after) if before != Some(after) => Ok(MarkImport::Raised {
            from: before,
            to: after,
        }),
        Some(held) => Ok(MarkImport::Kept { held, offered }),
        None => Err(Error::Internal(
            "an imported watermark was not raised to the document's",
        )),
    }
}

fn check_unique(keys: &[KeyWatermarks]) -> std::result::Result<(), InterchangeError> {
    let mut seen: HashMap<[u8; 32], usize> = HashMap::with_capacity(keys.len());
    for (second, key) in keys.iter().enumerate() {
        if let Some(&first) = seen.get(&key.public_key) {
            return Err(InterchangeError::DuplicateKey {
                public_key: key.public_key,
                first,
                second,
            });
        }
        seen.insert(key.public_key, second);
    }
    Ok(())
}

fn malformed(error: serde_json::Error) -> InterchangeError {
    InterchangeError::Malformed(error.to_string())
}

fn parse_watermark(
    field: &str,
    raw: &RawWatermark,
) -> std::result::Result<Watermark, InterchangeError> {
    Ok(Watermark {
        epoch: parse_decimal(&format!("{field}.epoch"), &raw.epoch)?,
        round: parse_decimal(&format!("{field}.round"), &raw.round)?,
        digest: parse_hex(&format!("{field}.digest"), &raw.digest)?,
    })
}

/// A canonical decimal u64: what `u64::to_string` writes, nothing else (no sign, no leading
/// zero, no space), so one value has one spelling.
fn parse_decimal(field: &str, text: &str) -> std::result::Result<u64, InterchangeError> {
    let canonical = !text.is_empty()
        && text.bytes().all(|byte| byte.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical
        .then(|| text.parse::<u64>().ok())
        .flatten()
        .ok_or_else(|| InterchangeError::NotADecimal {
            field: field.to_owned(),
            found: cut(text),
        })
}

/// 32 bytes as 64 hex digits, either case, no prefix.
fn parse_hex(field: &str, text: &str) -> std::result::Result<[u8; 32], InterchangeError> {
    let bad_hex = || InterchangeError::BadHex {
        field: field.to_owned(),
    };
    if text.starts_with("0x") || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(bad_hex());
    }
    let mut bytes = [0u8; 32];
    if text.len() != 2 * bytes.len() {
        return Err(InterchangeError::WrongLength {
            field: field.to_owned(),
            expected: 2 * bytes.len(),
            found: text.len(),
        });
    }
    for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).map_err(|_| bad_hex())?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| bad_hex())?;
    }
    Ok(bytes)
}

/// A chain id from its 64 hex digits (as `Display` prints it), for command lines and
/// configuration files.
impl std::str::FromStr for ChainId {
    type Err = InterchangeError;

    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        parse_hex("the chain id", text).map(ChainId)
    }
}

// The document's shape as serde reads it: every leaf a string, checked afterwards, so that each
// mistake gets its own error naming the field.

/// The lenient first look: only the metadata's format and version, everything else ignored.
#[derive(Deserialize)]
struct Probe {
    metadata: Option<ProbeMetadata>,
}

#[derive(Default, Deserialize)]
struct ProbeMetadata {
    interchange_format: Option<String>,
    interchange_format_version: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    metadata: RawMetadata,
    data: Vec<RawEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetadata {
    interchange_format: String,
    interchange_format_version: String,
    chain_id: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    public_key: String,
    // Required, though it may be null: a missing kind is more likely a typo than a choice.
    #[serde(deserialize_with = "Option::deserialize")]
    proposal: Option<RawWatermark>,
    #[serde(deserialize_with = "Option::deserialize")]
    vote: Option<RawWatermark>,
    #[serde(deserialize_with = "Option::deserialize")]
    timeout: Option<RawWatermark>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatermark {
    epoch: String,
    round: String,
    digest: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_have_one_spelling() {
        for good in ["0", "1", "18446744073709551615"] {
            assert!(parse_decimal("x", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "01",
            "+1",
            "-1",
            " 1",
            "1 ",
            "1.0",
            "1e3",
            "18446744073709551616",
            "0x10",
        ] {
            assert!(
                matches!(
                    parse_decimal("x", bad),
                    Err(InterchangeError::NotADecimal { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_document_reads_back_as_written() {
        let document = WatermarkInterchange {
            chain: ChainId([0xab; 32]),
            keys: vec![KeyWatermarks {
                public_key: [7; 32],
                proposal: None,
                vote: Some(Watermark {
                    epoch: 1,
                    round: u64::MAX,
                    digest: [9; 32],
                }),
                timeout: None,
            }],
        };
        assert_eq!(
            WatermarkInterchange::from_json(&document.to_json()).unwrap(),
            document
        );
    }
}
