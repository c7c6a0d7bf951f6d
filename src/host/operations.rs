//! Runs in the host: the typed call path. Each operation is a type that knows its request and
//! the one answer kind that completes it, so an answer of the wrong kind is caught in one place
//! (`SignerProcess::perform`) and no method matches answers by hand. An operation that changes a
//! sealed store returns the sealed change with its output; the service writes it durably before
//! it returns (`ServiceCore::change_durably`).

use crate::wire::consensus::{ChainWatermarks, ConsensusMessage};
use crate::wire::key_types::{Algorithm, KeySpec, Purpose, StoreId, WireKeyId};
#[cfg(feature = "test-support")]
use crate::wire::messages::ForbiddenSyscall;
use crate::wire::messages::{
    Answer, KeyListing, Request, RestoreProgress, StoreChange, WireSecret, WireSignature,
};

/// One operation the signer performs.
pub(crate) trait Operation {
    /// What a caller gets when the signer performs it.
    type Output;

    /// The request that asks for it.
    fn request(&self) -> Request<'_>;

    /// Whether its answer is one key operation away, and so worth a caller's spin (see
    /// `Latency::caller_spin`). A batch of several signatures is not: its caller sleeps at once
    /// rather than spin through the signing.
    fn answer_is_quick(&self) -> bool {
        true
    }

    /// The output, from an answer that is not a refusal; `Err` says what is wrong with an
    /// answer of another kind or with impossible content. `store` is the signer's store, which
    /// every key id it hands out must name.
    fn output(&self, answer: Answer, store: StoreId) -> Result<Self::Output, &'static str>;
}

const WRONG_KIND: &str = "an answer of the wrong kind";

/// Generate a key.
pub(crate) struct GenerateKey(pub(crate) KeySpec);

impl Operation for GenerateKey {
    /// The key, its public key, and the sealed change to write (a sealed store only).
    type Output = (WireKeyId, [u8; 32], Option<StoreChange>);

    fn request(&self) -> Request<'_> {
        Request::GenerateKey { spec: self.0 }
    }

    fn output(&self, answer: Answer, store: StoreId) -> Result<Self::Output, &'static str> {
        key_added(answer, store)
    }
}

/// A key generated or imported: its id, its public key, and the sealed change that adds it (a
/// sealed store only), checked to add exactly that key.
fn key_added(
    answer: Answer,
    store: StoreId,
) -> Result<(WireKeyId, [u8; 32], Option<StoreChange>), &'static str> {
    match answer {
        Answer::KeyGenerated { key, .. } | Answer::KeyGeneratedSealed { key, .. }
            if key.store != store =>
        {
            Err("a new key named with another store")
        }
        Answer::KeyGenerated { key, public_key } => Ok((key, public_key, None)),
        Answer::KeyGeneratedSealed {
            key,
            public_key,
            change,
        } => match change.added {
            Some(added)
                if added.local == key.local
                    && added.public_key == public_key
                    && change.removes_nothing()
                    && change.watermark.is_none() =>
            {
                Ok((key, public_key, Some(change)))
            }
            _ => Err("a sealed change that does not add the new key"),
        },
        _ => Err(WRONG_KIND),
    }
}

/// Import a key an operator encrypted to the signer's provisioning recipient.
pub(crate) struct ImportKey<'a> {
    pub(crate) purpose: Purpose,
    pub(crate) claimed_public: [u8; 32],
    pub(crate) encrypted: &'a [u8],
}

impl Operation for ImportKey<'_> {
    /// As for a generate: the key, its public key, the sealed change to write.
    type Output = (WireKeyId, [u8; 32], Option<StoreChange>);

    fn request(&self) -> Request<'_> {
        Request::ImportKey {
            purpose: self.purpose,
            claimed_public: self.claimed_public,
            encrypted: self.encrypted,
        }
    }

    fn answer_is_quick(&self) -> bool {
        false
    }

    fn output(&self, answer: Answer, store: StoreId) -> Result<Self::Output, &'static str> {
        let added = key_added(answer, store)?;
        if added.1 == self.claimed_public {
            Ok(added)
        } else {
            Err("an imported key with another public key than the one claimed")
        }
    }
}

/// The signer's provisioning recipient and backup-signing key.
pub(crate) struct Provisioning;

impl Operation for Provisioning {
    /// The recipient, the signing key, and the signature over the recipient's statement.
    type Output = ([u8; 32], [u8; 32], ed25519_dalek::Signature);

    fn request(&self) -> Request<'_> {
        Request::Provisioning
    }

    fn output(&self, answer: Answer, _store: StoreId) -> Result<Self::Output, &'static str> {
        match answer {
            Answer::Provisioning {
                recipient,
                signing_key,
                r,
                s,
            } => Ok((
                recipient,
                signing_key,
                ed25519_dalek::Signature::from_components(r, s),
            )),
            _ => Err(WRONG_KIND),
        }
    }
}

/// One step of a restore.
pub(crate) struct RestoreStep<'a> {
    pub(crate) signed_by: [u8; 32],
    pub(crate) encrypted: &'a [u8],
}

impl Operation for RestoreStep<'_> {
    type Output = RestoreProgress;

    fn request(&self) -> Request<'_> {
        Request::RestoreStep {
            signed_by: self.signed_by,
            encrypted: self.encrypted,
        }
    }

    fn answer_is_quick(&self) -> bool {
        false
    }

    fn output(&self, answer: Answer, store: StoreId) -> Result<Self::Output, &'static str> {
        let progress = match answer {
            Answer::Restored(progress) => progress,
            _ => return Err(WRONG_KIND),
        };
        match progress {
            RestoreProgress::Added {
                key,
                public_key,
                change,
            } => {
                if key.store != store {
                    return Err("a restored key named with another store");
                }
                match change {
                    Some(change)
                        if !change.added.is_some_and(|added| {
                            added.local == key.local
                                && added.public_key == public_key
                                && change.removes_nothing()
                                && change
                                    .watermark
                                    .is_none_or(|watermark| watermark.slot == added.slot)
                        }) =>
                    {
                        Err("a sealed change that does not add the restored key")
                    }
                    _ => Ok(progress),
                }
            }
            RestoreProgress::Raised { key, change } => {
                if key.store != store {
                    return Err("raised watermarks of a key of another store");
                }
                match change {
                    Some(change)
                        if change.added.is_some()
                            || !change.removes_nothing()
                            || change.watermark.is_none() =>
                    {
                        Err("a sealed change that does not raise one watermark record")
                    }
                    _ => Ok(progress),
                }
            }
            RestoreProgress::Complete { .. } => Ok(progress),
        }
    }
}

/// A backup of every key, encrypted to an age X25519 recipient.
pub(crate) struct Backup(pub(crate) [u8; 32]);

impl Operation for Backup {
    /// The age file.
    type Output = Vec<u8>;

    fn request(&self) -> Request<'_> {
        Request::Backup { recipient: self.0 }
    }

    fn answer_is_quick(&self) -> bool {
        false
    }

    fn output(&self, answer: Answer, _store: StoreId) -> Result<Self::Output, &'static str> {
        match answer {
            Answer::Backup(file) => Ok(file),
            _ => Err(WRONG_KIND),
        }
    }
}

/// A key's algorithm, purpose and public key.
pub(crate) struct DescribeKey(pub(crate) WireKeyId);

impl Operation for DescribeKey {
    type Output = (Algorithm, Purpose, [u8; 32]);

    fn request(&self) -> Request<'_> {
        Request::PublicKey { key: self.0 }
    }

    fn output(&self, answer: Answer, _store: StoreId) -> Result<Self::Output, &'static str> {
        match answer {
            Answer::PublicKey {
                algorithm,
                purpose,
                public_key,
            } => Ok((algorithm, purpose, public_key)),
            _ => Err(WRONG_KIND),
        }
    }
}

/// Sign a 32-byte prehashed digest.
pub(crate) struct SignDigest<'a> {
    pub(crate) key: WireKeyId,
    pub(crate) digest: &'a [u8; 32],
}

impl Operation for SignDigest<'_> {
    type Output = ed25519_dalek::Signature;

    fn request(&self) -> Request<'_> {
        Request::SignDigest {
            key: self.key,
            digest: *self.digest,
        }
    }

    fn output(&self, answer: Answer, _store: StoreId) -> Result<Self::Output, &'static str> {
        signature_from(answer)
    }
}

/// Sign a message of any length up to the cap.
pub(crate) struct SignMessage<'a> {
    pub(crate) key: WireKeyId,
    pub(crate) message: &'a [u8],
}

impl Operation for SignMessage<'_> {
    type Output = ed25519_dalek::Signature;

    fn request(&self) -> Request<'_> {
        Request::SignMessage {
            key: self.key,
            message: self.message,
        }
    }

    fn output(&self, answer: Answer, _store: StoreId) -> Result<Self::Output, &'static str> {
        signature_from(answer)
    }
}

/// Sign several 32-byte prehashed digests with one key, in one request.
pub(crate) struct SignMany<'a> {
    pub(crate) key: WireKeyId,
    pub(crate) digests: &'a [[u8; 32]],
}

impl Operation for SignMany<'_> {
    type Output = Vec<ed25519_dalek::Signature>;

    fn request(&self) -> Request<'_> {
        Request::SignMany {
            key: self.key,
            digests: self.digests,
        }
    }

    fn answer_is_quick(&self) -> bool {
        self.digests.len() <= 1
    }

    fn output(&self, answer: Answer, _store: StoreId) -> Result<Self::Output, &'static str> {
        match answer {
            // Signatures cannot be matched to digests by anything but their place: a signer
            // that leaves one out or adds one has misplaced every signature after it.
            Answer::Signatures(signatures) if signatures.len() != self.digests.len() => {
                Err("a batch answered with another number of signatures than digests")
            }
            Answer::Signatures(signatures) => Ok(signatures
                .into_iter()
                .map(|WireSignature { r, s }| ed25519_dalek::Signature::from_components(r, s))
                .collect()),
            _ => Err(WRONG_KIND),
        }
    }
}

fn signature_from(answer: Answer) -> Result<ed25519_dalek::Signature, &'static str> {
    match answer {
        Answer::Signature { r, s } => Ok(ed25519_dalek::Signature::from_components(r, s)),
        _ => Err(WRONG_KIND),
    }
}

/// X25519 with a handshake key.
pub(crate) struct DiffieHellman {
    pub(crate) key: WireKeyId,
    pub(crate) peer_public: [u8; 32],
}

impl Operation for DiffieHellman {
    type Output = WireSecret;

    fn request(&self) -> Request<'_> {
        Request::DiffieHellman {
            key: self.key,
            peer_public: self.peer_public,
        }
    }

    fn output(&self, answer: Answer, _store: StoreId) -> Result<Self::Output, &'static str> {
        match answer {
            Answer::SharedSecret(secret) => Ok(secret),
            _ => Err(WRONG_KIND),
        }
    }
}

/// Every key held.
pub(crate) struct ListKeys;

impl Operation for ListKeys {
    type Output = Vec<KeyListing>;

    fn request(&self) -> Request<'_> {
        Request::ListKeys
    }

    fn output(&self, answer: Answer, store: StoreId) -> Result<Self::Output, &'static str> {
        match answer {
            Answer::KeyList(listings) if listings.iter().any(|l| l.key.store != store) => {
                Err("a key listed with another store")
            }
            Answer::KeyList(listings) => Ok(listings),
            _ => Err(WRONG_KIND),
        }
    }
}

/// Erase a key.
pub(crate) struct DropKey(pub(crate) WireKeyId);

impl Operation for DropKey {
    /// The sealed change to write (a sealed store only).
    type Output = Option<StoreChange>;

    fn request(&self) -> Request<'_> {
        Request::DropKey { key: self.0 }
    }

    fn output(&self, answer: Answer, _store: StoreId) -> Result<Self::Output, &'static str> {
        match answer {
            Answer::KeyDropped => Ok(None),
            Answer::KeyDroppedSealed { change }
                if change.added.is_none()
                    && change.replaced.is_none()
                    && change.removed_slots.iter().any(Option::is_some)
                    && change.watermark.is_none() =>
            {
                Ok(Some(change))
            }
            Answer::KeyDroppedSealed { .. } => Err("a sealed change that does not drop a key"),
            _ => Err(WRONG_KIND),
        }
    }
}

/// What a consensus request comes to.
pub(crate) enum ConsensusOutcome {
    /// Signed at once: a repeat of a durable watermark, or a memory-only signer.
    Signed(ed25519_dalek::Signature),
    /// The advanced watermark, sealed: write it, then release the signature.
    Persist(Box<StoreChange>),
}

/// Sign a typed consensus message, if the guard allows it.
pub(crate) struct SignConsensus {
    pub(crate) key: WireKeyId,
    pub(crate) message: ConsensusMessage,
}

impl Operation for SignConsensus {
    type Output = ConsensusOutcome;

    fn request(&self) -> Request<'_> {
        Request::SignConsensus {
            key: self.key,
            message: self.message,
        }
    }

    fn output(&self, answer: Answer, _store: StoreId) -> Result<Self::Output, &'static str> {
        match answer {
            Answer::Signature { r, s } => Ok(ConsensusOutcome::Signed(signature(r, s))),
            Answer::ConsensusSealed { change }
                if change.added.is_none()
                    && change.removes_nothing()
                    && change
                        .watermark
                        .is_some_and(|record| record.marks.chain == self.message.chain) =>
            {
                Ok(ConsensusOutcome::Persist(Box::new(change)))
            }
            Answer::ConsensusSealed { .. } => {
                Err("a sealed change that is not the message's watermark")
            }
            _ => Err(WRONG_KIND),
        }
    }
}

/// The signature of a consensus message whose watermark the host has written durably.
pub(crate) struct ReleaseConsensus {
    pub(crate) key: WireKeyId,
    pub(crate) message: ConsensusMessage,
    pub(crate) sequence: u64,
}

impl Operation for ReleaseConsensus {
    type Output = ed25519_dalek::Signature;

    fn request(&self) -> Request<'_> {
        Request::ReleaseConsensus {
            key: self.key,
            message: self.message,
            sequence: self.sequence,
        }
    }

    fn output(&self, answer: Answer, _store: StoreId) -> Result<Self::Output, &'static str> {
        match answer {
            Answer::Signature { r, s } => Ok(signature(r, s)),
            _ => Err(WRONG_KIND),
        }
    }
}

/// A consensus key's watermarks.
pub(crate) struct ListWatermarks(pub(crate) WireKeyId);

impl Operation for ListWatermarks {
    type Output = Vec<ChainWatermarks>;

    fn request(&self) -> Request<'_> {
        Request::Watermarks { key: self.0 }
    }

    fn output(&self, answer: Answer, _store: StoreId) -> Result<Self::Output, &'static str> {
        match answer {
            Answer::Watermarks(chains) => Ok(chains.into_iter().flatten().collect()),
            _ => Err(WRONG_KIND),
        }
    }
}

/// Raise a consensus key's watermarks on one chain.
pub(crate) struct RaiseWatermarks {
    pub(crate) key: WireKeyId,
    pub(crate) marks: ChainWatermarks,
}

impl Operation for RaiseWatermarks {
    type Output = Option<StoreChange>;

    fn request(&self) -> Request<'_> {
        Request::RaiseWatermarks {
            key: self.key,
            marks: self.marks,
        }
    }

    fn output(&self, answer: Answer, _store: StoreId) -> Result<Self::Output, &'static str> {
        match answer {
            Answer::WatermarksRaised { change } => Ok(change),
            _ => Err(WRONG_KIND),
        }
    }
}

fn signature(r: [u8; 32], s: [u8; 32]) -> ed25519_dalek::Signature {
    ed25519_dalek::Signature::from_components(r, s)
}

/// End a drop from a sealed store: erase the key, or put it back.
pub(crate) struct FinishDrop {
    pub(crate) key: WireKeyId,
    pub(crate) erase: bool,
}

impl Operation for FinishDrop {
    type Output = ();

    fn request(&self) -> Request<'_> {
        Request::FinishDrop {
            key: self.key,
            erase: self.erase,
        }
    }

    fn output(&self, answer: Answer, _store: StoreId) -> Result<Self::Output, &'static str> {
        match answer {
            Answer::KeyDropped => Ok(()),
            _ => Err(WRONG_KIND),
        }
    }
}

/// The sandbox tests' hook: attempt a forbidden system call.
#[cfg(feature = "test-support")]
pub(crate) struct AttemptForbiddenSyscall(pub(crate) ForbiddenSyscall);

#[cfg(feature = "test-support")]
impl Operation for AttemptForbiddenSyscall {
    type Output = i64;

    fn request(&self) -> Request<'_> {
        Request::AttemptForbiddenSyscall { call: self.0 }
    }

    fn output(&self, answer: Answer, _store: StoreId) -> Result<Self::Output, &'static str> {
        match answer {
            Answer::SurvivedForbiddenSyscall { result } => Ok(result),
            _ => Err(WRONG_KIND),
        }
    }
}

/// Give a key a new version.
pub(crate) struct RotateKey {
    pub(crate) key: WireKeyId,
    pub(crate) grace_seconds: u64,
}

impl Operation for RotateKey {
    /// The new version, its public key, the sealed change (a sealed store only).
    type Output = (u32, [u8; 32], Option<StoreChange>);

    fn request(&self) -> Request<'_> {
        Request::RotateKey {
            key: self.key,
            grace_seconds: self.grace_seconds,
        }
    }

    fn answer_is_quick(&self) -> bool {
        false
    }

    fn output(&self, answer: Answer, _store: StoreId) -> Result<Self::Output, &'static str> {
        match answer {
            Answer::KeyRotated {
                version,
                public_key,
                change,
            } => match change {
                // The new version takes the key's record; a kept previous one is added.
                Some(change)
                    if !change.replaced.is_some_and(|replaced| {
                        replaced.local == self.key.local
                            && replaced.version == version
                            && replaced.public_key == public_key
                            && replaced.retires == 0
                            && change.removed_slots.iter().all(Option::is_none)
                            && change.watermark.is_none()
                            && change.added.is_none_or(|added| {
                                added.local == self.key.local
                                    && added.version < version
                                    && added.retires != 0
                            })
                    }) =>
                {
                    Err("a sealed change that does not rotate the key")
                }
                change => Ok((version, public_key, change)),
            },
            _ => Err(WRONG_KIND),
        }
    }
}

/// End a rotation of a sealed store.
pub(crate) struct FinishRotation {
    pub(crate) key: WireKeyId,
    pub(crate) commit: bool,
}

impl Operation for FinishRotation {
    type Output = ();

    fn request(&self) -> Request<'_> {
        Request::FinishRotation {
            key: self.key,
            commit: self.commit,
        }
    }

    fn output(&self, answer: Answer, _store: StoreId) -> Result<Self::Output, &'static str> {
        match answer {
            Answer::KeyDropped => Ok(()),
            _ => Err(WRONG_KIND),
        }
    }
}

/// Erase one key's versions whose grace period is over.
pub(crate) struct PurgeRetired;

impl Operation for PurgeRetired {
    /// The key purged (none: nothing left) and the sealed change (a sealed store only).
    type Output = Option<(WireKeyId, Option<StoreChange>)>;

    fn request(&self) -> Request<'_> {
        Request::PurgeRetired
    }

    fn output(&self, answer: Answer, store: StoreId) -> Result<Self::Output, &'static str> {
        match answer {
            Answer::Purged {
                key: None,
                change: None,
            } => Ok(None),
            Answer::Purged {
                key: Some(key),
                change,
            } if key.store == store
                && change.is_none_or(|change| {
                    change.added.is_none()
                        && change.replaced.is_none()
                        && change.watermark.is_none()
                        && change.removed_slots.iter().any(Option::is_some)
                }) =>
            {
                Ok(Some((key, change)))
            }
            Answer::Purged { .. } => Err("a purge that removes no retired version"),
            _ => Err(WRONG_KIND),
        }
    }
}

/// A key's versions.
pub(crate) struct KeyVersions(pub(crate) WireKeyId);

impl Operation for KeyVersions {
    type Output = Vec<crate::wire::messages::VersionListing>;

    fn request(&self) -> Request<'_> {
        Request::KeyVersions { key: self.0 }
    }

    fn output(&self, answer: Answer, _store: StoreId) -> Result<Self::Output, &'static str> {
        match answer {
            Answer::KeyVersions(listed) => {
                let versions: Vec<_> = listed.into_iter().flatten().collect();
                let currents = versions
                    .iter()
                    .filter(|version| version.retires == 0)
                    .count();
                if currents == 1 {
                    Ok(versions)
                } else {
                    Err("a key's versions without exactly one current one")
                }
            }
            _ => Err(WRONG_KIND),
        }
    }
}

/// Sign a digest with one version of a key.
pub(crate) struct SignWithVersion {
    pub(crate) key: WireKeyId,
    pub(crate) version: u32,
    pub(crate) digest: [u8; 32],
}

impl Operation for SignWithVersion {
    type Output = ed25519_dalek::Signature;

    fn request(&self) -> Request<'_> {
        Request::SignWithVersion {
            key: self.key,
            version: self.version,
            digest: self.digest,
        }
    }

    fn output(&self, answer: Answer, _store: StoreId) -> Result<Self::Output, &'static str> {
        signature_from(answer)
    }
}

/// X25519 with one version of a handshake key.
pub(crate) struct DiffieHellmanWithVersion {
    pub(crate) key: WireKeyId,
    pub(crate) version: u32,
    pub(crate) peer_public: [u8; 32],
}

impl Operation for DiffieHellmanWithVersion {
    type Output = WireSecret;

    fn request(&self) -> Request<'_> {
        Request::DiffieHellmanWithVersion {
            key: self.key,
            version: self.version,
            peer_public: self.peer_public,
        }
    }

    fn output(&self, answer: Answer, _store: StoreId) -> Result<Self::Output, &'static str> {
        match answer {
            Answer::SharedSecret(secret) => Ok(secret),
            _ => Err(WRONG_KIND),
        }
    }
}
