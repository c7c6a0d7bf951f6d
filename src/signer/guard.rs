//! Runs in the signer: the double-sign guard's rules, in one pure function. The key store calls
//! it under its write lock, advances the watermark in the same critical section, and releases a
//! signature only once the advanced watermark is durable (see `key_store`).
//!
//! Per key and chain, each kind (proposal, vote, timeout) has a watermark: the highest
//! (epoch, round) signed and the digest signed there. A message is signed if it is above its
//! kind's watermark; a repeat of exactly the watermark's message gets the same signature
//! (Ed25519 is deterministic); anything else at or below is refused. Between kinds, SafetyRules'
//! rule: a round timed out is never voted in afterwards (a vote must be above the last timeout),
//! while a round voted in may still be timed out (a timeout must not be below the last vote).
//! Proposals are independent of votes and timeouts.

use crate::wire::consensus::{ChainWatermarks, ConsensusKind, ConsensusMessage, GuardRule};

/// What the guard says of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Above the watermark: advance it, then sign.
    Advance,
    /// Exactly the watermark's message: sign again (the same signature).
    Repeat,
    /// Refused, by this rule.
    Refuse(GuardRule),
}

/// Judges `message` against a key's watermarks on its chain.
pub(crate) fn judge(marks: &ChainWatermarks, message: &ConsensusMessage) -> Verdict {
    let position = message.position();
    if let Some(own) = marks.of(message.kind) {
        if position < own.position() {
            return Verdict::Refuse(GuardRule::BelowWatermark);
        }
        if position == own.position() {
            return if own.digest == message.digest {
                Verdict::Repeat
            } else {
                Verdict::Refuse(GuardRule::ConflictingDigest)
            };
        }
    }
    match message.kind {
        ConsensusKind::Vote => {
            if marks
                .timeout
                .is_some_and(|timeout| position <= timeout.position())
            {
                return Verdict::Refuse(GuardRule::VoteAfterTimeout);
            }
        }
        ConsensusKind::Timeout => {
            if marks.vote.is_some_and(|vote| position < vote.position()) {
                return Verdict::Refuse(GuardRule::TimeoutBelowVote);
            }
        }
        ConsensusKind::Proposal => {}
    }
    Verdict::Advance
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::consensus::{ChainId, Watermark};

    const CHAIN: ChainId = ChainId([1; 32]);

    fn marks(vote: Option<(u64, u64, u8)>, timeout: Option<(u64, u64, u8)>) -> ChainWatermarks {
        let mark = |(epoch, round, digest): (u64, u64, u8)| Watermark {
            epoch,
            round,
            digest: [digest; 32],
        };
        ChainWatermarks {
            chain: CHAIN,
            proposal: None,
            vote: vote.map(mark),
            timeout: timeout.map(mark),
        }
    }

    #[test]
    fn each_rule_of_the_guard() {
        let vote = |epoch, round, digest| ConsensusMessage::vote(CHAIN, epoch, round, [digest; 32]);
        let timeout =
            |epoch, round, digest| ConsensusMessage::timeout(CHAIN, epoch, round, [digest; 32]);
        let at = marks(Some((2, 5, 7)), None);
        assert_eq!(judge(&at, &vote(2, 6, 1)), Verdict::Advance, "above");
        assert_eq!(
            judge(&at, &vote(3, 0, 1)),
            Verdict::Advance,
            "a later epoch"
        );
        assert_eq!(judge(&at, &vote(2, 5, 7)), Verdict::Repeat, "the same");
        assert_eq!(
            judge(&at, &vote(2, 5, 8)),
            Verdict::Refuse(GuardRule::ConflictingDigest)
        );
        assert_eq!(
            judge(&at, &vote(2, 4, 7)),
            Verdict::Refuse(GuardRule::BelowWatermark)
        );
        assert_eq!(
            judge(&at, &vote(1, 9, 7)),
            Verdict::Refuse(GuardRule::BelowWatermark),
            "an earlier epoch"
        );
        assert_eq!(
            judge(&at, &timeout(2, 5, 1)),
            Verdict::Advance,
            "time out a voted round"
        );
        assert_eq!(
            judge(&at, &timeout(2, 4, 1)),
            Verdict::Refuse(GuardRule::TimeoutBelowVote)
        );
        let timed_out = marks(Some((2, 5, 7)), Some((2, 6, 1)));
        assert_eq!(
            judge(&timed_out, &vote(2, 6, 3)),
            Verdict::Refuse(GuardRule::VoteAfterTimeout)
        );
        assert_eq!(judge(&timed_out, &vote(2, 7, 3)), Verdict::Advance);
        let proposal = ConsensusMessage::proposal(CHAIN, 2, 1, [9; 32]);
        assert_eq!(
            judge(&timed_out, &proposal),
            Verdict::Advance,
            "proposals are apart"
        );
    }
}
