//! Shared by both sides, and exported: consensus messages as keyward signs them. The signer
//! builds the bytes it signs itself, from the typed fields, so a signature for one kind of
//! message, one chain or one round can never be taken for another; a verifier rebuilds the same
//! bytes with [`ConsensusMessage::signing_bytes`] (or from `docs/consensus-format.md`) and checks
//! a plain Ed25519 signature over them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The first bytes of every consensus message keyward signs: the format's name and version.
pub const CONSENSUS_DOMAIN: &[u8; 20] = b"keyward-consensus/v1";

/// The length of the bytes a consensus signature covers.
pub const CONSENSUS_SIGNING_LEN: usize = CONSENSUS_DOMAIN.len() + 1 + 32 + 8 + 8 + 32;

/// Which chain a message is for: 32 bytes the chain fixes once (its genesis hash, or a hash of
/// its name). A key's watermarks are kept per chain.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "test-support", derive(arbitrary::Arbitrary))]
pub struct ChainId(pub [u8; 32]);

impl fmt::Debug for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainId({self})")
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// What kind of consensus message is signed. Each kind has its own watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "test-support", derive(arbitrary::Arbitrary))]
pub enum ConsensusKind {
    /// A block proposal.
    Proposal,
    /// A vote for a block.
    Vote,
    /// A timeout: the round is given up on.
    Timeout,
}

impl ConsensusKind {
    /// Every kind, in the order of their watermarks.
    pub const ALL: [ConsensusKind; 3] = [
        ConsensusKind::Proposal,
        ConsensusKind::Vote,
        ConsensusKind::Timeout,
    ];

    /// The kind's byte in the signed bytes (and its index among the watermarks, plus one).
    pub fn code(self) -> u8 {
        match self {
            ConsensusKind::Proposal => 1,
            ConsensusKind::Vote => 2,
            ConsensusKind::Timeout => 3,
        }
    }

    pub(crate) fn index(self) -> usize {
        usize::from(self.code() - 1)
    }
}

impl fmt::Display for ConsensusKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConsensusKind::Proposal => "proposal",
            ConsensusKind::Vote => "vote",
            ConsensusKind::Timeout => "timeout",
        })
    }
}

/// A consensus message: what is signed, for which chain, at which epoch and round, and the
/// 32-byte digest of what is proposed, voted for, or timed out on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "test-support", derive(arbitrary::Arbitrary))]
pub struct ConsensusMessage {
    /// The chain.
    pub chain: ChainId,
    /// The epoch (validator set period); compared before the round.
    pub epoch: u64,
    /// The round within the epoch.
    pub round: u64,
    /// The kind of message.
    pub kind: ConsensusKind,
    /// The digest of the block (or, for a timeout, of what the chain's timeout covers).
    pub digest: [u8; 32],
}

impl ConsensusMessage {
    /// A proposal of the block with `digest`.
    pub fn proposal(chain: ChainId, epoch: u64, round: u64, digest: [u8; 32]) -> Self {
        Self::new(chain, epoch, round, ConsensusKind::Proposal, digest)
    }

    /// A vote for the block with `digest`.
    pub fn vote(chain: ChainId, epoch: u64, round: u64, digest: [u8; 32]) -> Self {
        Self::new(chain, epoch, round, ConsensusKind::Vote, digest)
    }

    /// A timeout of the round.
    pub fn timeout(chain: ChainId, epoch: u64, round: u64, digest: [u8; 32]) -> Self {
        Self::new(chain, epoch, round, ConsensusKind::Timeout, digest)
    }

    /// A message of any kind.
    pub fn new(
        chain: ChainId,
        epoch: u64,
        round: u64,
        kind: ConsensusKind,
        digest: [u8; 32],
    ) -> Self {
        Self {
            chain,
            epoch,
            round,
            kind,
            digest,
        }
    }

    /// Where the message stands: epoch, then round.
    pub fn position(&self) -> (u64, u64) {
        (self.epoch, self.round)
    }

    /// The bytes the signature covers: [`CONSENSUS_DOMAIN`], the kind's byte, the chain id, the
    /// epoch and the round (big-endian, so byte order is numeric order), the digest. Fixed
    /// width: no two messages share their bytes.
    pub fn signing_bytes(&self) -> [u8; CONSENSUS_SIGNING_LEN] {
        let mut bytes = [0u8; CONSENSUS_SIGNING_LEN];
        let (domain, rest) = bytes.split_at_mut(CONSENSUS_DOMAIN.len());
        domain.copy_from_slice(CONSENSUS_DOMAIN);
        rest[0] = self.kind.code();
        rest[1..33].copy_from_slice(&self.chain.0);
        rest[33..41].copy_from_slice(&self.epoch.to_be_bytes());
        rest[41..49].copy_from_slice(&self.round.to_be_bytes());
        rest[49..81].copy_from_slice(&self.digest);
        bytes
    }
}

/// The highest message of one kind a key has signed on one chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "test-support", derive(arbitrary::Arbitrary))]
pub struct Watermark {
    /// Its epoch.
    pub epoch: u64,
    /// Its round.
    pub round: u64,
    /// The digest signed there.
    pub digest: [u8; 32],
}

impl Watermark {
    /// Where it stands: epoch, then round.
    pub fn position(&self) -> (u64, u64) {
        (self.epoch, self.round)
    }
}

/// A key's watermarks on one chain, one per kind (`None`: never signed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "test-support", derive(arbitrary::Arbitrary))]
pub struct ChainWatermarks {
    /// The chain.
    pub chain: ChainId,
    /// The highest proposal signed.
    pub proposal: Option<Watermark>,
    /// The highest vote signed.
    pub vote: Option<Watermark>,
    /// The highest timeout signed.
    pub timeout: Option<Watermark>,
}

impl ChainWatermarks {
    /// None signed yet on `chain`.
    pub fn empty(chain: ChainId) -> Self {
        Self {
            chain,
            proposal: None,
            vote: None,
            timeout: None,
        }
    }

    /// The watermark of `kind`.
    pub fn of(&self, kind: ConsensusKind) -> Option<Watermark> {
        match kind {
            ConsensusKind::Proposal => self.proposal,
            ConsensusKind::Vote => self.vote,
            ConsensusKind::Timeout => self.timeout,
        }
    }

    pub(crate) fn set(&mut self, kind: ConsensusKind, mark: Option<Watermark>) {
        match kind {
            ConsensusKind::Proposal => self.proposal = mark,
            ConsensusKind::Vote => self.vote = mark,
            ConsensusKind::Timeout => self.timeout = mark,
        }
    }
}

/// Which rule of the double-sign guard refused a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum GuardRule {
    /// The message is below the watermark of its kind.
    BelowWatermark,
    /// The message is at the watermark of its kind with another digest.
    ConflictingDigest,
    /// A vote at or below a round this key already timed out.
    VoteAfterTimeout,
    /// A timeout below a round this key already voted in.
    TimeoutBelowVote,
}

impl fmt::Display for GuardRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GuardRule::BelowWatermark => "it is below the highest message of its kind already signed",
            GuardRule::ConflictingDigest => {
                "a message of its kind was already signed at this epoch and round with another digest"
            }
            GuardRule::VoteAfterTimeout => "a vote at or below a round this key has timed out",
            GuardRule::TimeoutBelowVote => "a timeout below a round this key has voted in",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_bytes_differ_in_every_field_and_are_fixed_width() {
        let base = ConsensusMessage::vote(ChainId([1; 32]), 2, 3, [4; 32]);
        let variants = [
            ConsensusMessage {
                chain: ChainId([9; 32]),
                ..base
            },
            ConsensusMessage { epoch: 5, ..base },
            ConsensusMessage { round: 5, ..base },
            ConsensusMessage {
                kind: ConsensusKind::Proposal,
                ..base
            },
            ConsensusMessage {
                kind: ConsensusKind::Timeout,
                ..base
            },
            ConsensusMessage {
                digest: [5; 32],
                ..base
            },
        ];
        for variant in variants {
            assert_ne!(variant.signing_bytes(), base.signing_bytes(), "{variant:?}");
        }
        assert_eq!(base.signing_bytes().len(), 101);
        assert!(
            base.signing_bytes()
                .starts_with(b"keyward-consensus/v1\x02")
        );
    }
}
