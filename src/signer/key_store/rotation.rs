//! Runs in the signer: key rotation. A rotation gives a key a new version (a fresh secret, drawn
//! after a reseed from the kernel) under the same key id, in the key's own slot, so the
//! consensus watermarks kept per slot stay with it; the previous version moves to a free slot
//! with the second its grace period ends, usable only by the calls that name a version, and is
//! erased once that second has passed (`purge_retired`).
//!
//! With a sealed store a rotation is one sealed change (the new version replaces the record in
//! the key's slot, the previous one is added in its new slot) and finishes in two steps, like a
//! drop: the host writes the change, then says whether it is durable (`finish_rotation`); if
//! not, the previous version is put back as it was, and the new one is erased.

use zeroize::Zeroizing;

use super::{Edit, KeyRecord, KeyStore, SecretKey, now_seconds};
use crate::wire::key_types::WireKeyId;
use crate::wire::messages::{Refusal, StoreChange, VersionListing};
use crate::wire::store_format::{MAX_VERSIONS, Seal, SealedRecord};

/// How many previous versions of one key may be in their grace period at once.
pub(crate) const MAX_PREVIOUS_VERSIONS: u32 = 2;
const _: () = assert!(MAX_PREVIOUS_VERSIONS as usize + 1 == MAX_VERSIONS);

impl KeyRecord {
    /// The record's 32 secret bytes, to seal it again for another slot.
    fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(match &self.secret {
            SecretKey::Ed25519(key) => *key.as_bytes(),
            SecretKey::X25519(key) => *key.as_bytes(),
        })
    }

    /// Whether this is a previous version whose grace period is over at `now`.
    fn retired_at(&self, now: u64) -> bool {
        self.retires != 0 && self.retires <= now
    }
}

impl KeyStore {
    /// Rotates `key`: returns its new version, the new public key and, for a sealed store, the
    /// sealed change to write. The previous version is kept for `grace_seconds` (0: erased at
    /// once, or once the change is durable).
    pub(crate) fn rotate(
        &mut self,
        key: &WireKeyId,
        grace_seconds: u64,
    ) -> Result<(u32, [u8; 32], Option<StoreChange>), Refusal> {
        let current = self.slot_of(key)?;
        let lineage = || {
            self.records
                .as_slice()
                .iter()
                .flatten()
                .filter(|record| record.id == key.local)
        };
        if lineage().any(|record| record.undo.is_some()) {
            return Err(Refusal::RotationPending);
        }
        let previous = lineage()
            .filter(|record| record.retires != 0 && !record.dropping)
            .count();
        let keep = grace_seconds > 0;
        if keep && previous >= MAX_PREVIOUS_VERSIONS as usize {
            return Err(Refusal::VersionLimit {
                cap: MAX_PREVIOUS_VERSIONS,
            });
        }
        // A sealed store keeps the previous version until the write is acknowledged, even
        // with no grace period: it is what a failed write puts back.
        let moved_to = if keep || self.sealed.is_some() {
            Some(self.free_slot()?)
        } else {
            None
        };
        self.reseed_from_the_kernel()?;
        let seed = self.generator().draw::<32>();
        let new_nonce = *self.generator().draw::<24>();
        let moved_nonce = *self.generator().draw::<24>();
        let now = now_seconds();
        let Some(mut old) = self.records.as_mut_slice()[current].take() else {
            return Err(Refusal::UnknownKey);
        };
        let algorithm = old.algorithm();
        let Some(version) = old.version.checked_add(1) else {
            self.records.as_mut_slice()[current] = Some(old);
            return Err(Refusal::VersionLimit {
                cap: MAX_PREVIOUS_VERSIONS,
            });
        };
        let (secret, public_key) = SecretKey::from_bytes(algorithm, &seed);
        let slot_number = |index: usize| u16::try_from(index).unwrap_or(u16::MAX);
        let sealed_record =
            |slot, record: &KeyRecord, public_key, created, version, retires| SealedRecord {
                slot,
                local: record.id,
                purpose: record.purpose,
                algorithm,
                created,
                version,
                retires,
                public_key,
                sealed_secret: [0; 32],
                seal: Seal {
                    nonce: [0; 24],
                    tag: [0; 16],
                },
            };
        let mut replaced = None;
        if let Some(sealed) = &self.sealed {
            let mut record = sealed_record(slot_number(current), &old, public_key, now, version, 0);
            sealed
                .sealer
                .seal_record(&self.id, &mut record, &seed, new_nonce);
            replaced = Some(record);
        }
        let fresh = KeyRecord {
            id: old.id,
            purpose: old.purpose,
            secret,
            public_key,
            created: now,
            version,
            retires: 0,
            sealed: replaced.map(|record| (record.sealed_secret, record.seal)),
            dropping: false,
            erased: false,
            undo: None,
        };
        self.records.as_mut_slice()[current] = Some(fresh);
        let mut added = None;
        if let Some(moved_to) = moved_to {
            // The clock's second has begun already: one more, so that a grace period is never
            // shorter than asked (it may be up to a second longer).
            old.retires = if keep {
                now.saturating_add(grace_seconds).saturating_add(1)
            } else {
                now
            };
            if let Some(sealed) = &self.sealed {
                let mut record = sealed_record(
                    slot_number(moved_to),
                    &old,
                    old.public_key,
                    old.created,
                    old.version,
                    old.retires,
                );
                sealed
                    .sealer
                    .seal_record(&self.id, &mut record, &old.secret_bytes(), moved_nonce);
                old.undo = old.sealed;
                old.sealed = Some((record.sealed_secret, record.seal));
                if keep {
                    added = Some(record);
                } else {
                    // Out of the file at once; erased when the write is acknowledged.
                    old.dropping = true;
                }
            }
            self.records.as_mut_slice()[moved_to] = Some(old);
        }
        let change = self.seal_change(Edit {
            added,
            replaced,
            ..Edit::default()
        });
        Ok((version, public_key, change))
    }

    /// Ends a rotation of a sealed store: `commit` once the host has written its change (a
    /// previous version kept for no grace period is erased now); otherwise the previous
    /// version is the current one again, as it was, and the new one is erased.
    pub(crate) fn finish_rotation(&mut self, key: &WireKeyId, commit: bool) -> Result<(), Refusal> {
        let current = self.slot_of(key)?;
        let moved = self
            .records
            .as_slice()
            .iter()
            .position(|record| {
                record
                    .as_ref()
                    .is_some_and(|record| record.id == key.local && record.undo.is_some())
            })
            .ok_or(Refusal::NotReleasable)?;
        if commit {
            let dropped = self.records.as_mut_slice()[moved]
                .as_mut()
                .is_some_and(|record| {
                    record.undo = None;
                    record.dropping
                });
            if dropped {
                self.erase(moved);
            }
            return Ok(());
        }
        let Some(mut previous) = self.records.as_mut_slice()[moved].take() else {
            return Err(Refusal::NotReleasable);
        };
        previous.sealed = previous.undo.take();
        previous.retires = 0;
        previous.dropping = false;
        // The new version's record is dropped here (the dalek types wipe themselves); the
        // slot's watermarks stay.
        self.records.as_mut_slice()[current] = Some(previous);
        Ok(())
    }

    /// Erases the previous versions of one key whose grace period is over: returns the key
    /// and, for a sealed store, the change that removes their records (their secrets are wiped
    /// now; the records go once the host has written it, by `finish_drop`). `None`: nothing
    /// is left to purge.
    pub(crate) fn purge_retired(&mut self) -> Option<(WireKeyId, Option<StoreChange>)> {
        let now = now_seconds();
        let local = self
            .records
            .as_slice()
            .iter()
            .flatten()
            .find(|record| record.retired_at(now) && !record.dropping && record.undo.is_none())
            .map(|record| record.id)?;
        let mut removed = [None; MAX_VERSIONS];
        let mut next = removed.iter_mut();
        for index in 0..self.records.as_slice().len() {
            let Some(record) = self.records.as_mut_slice()[index].as_mut() else {
                continue;
            };
            if record.id != local
                || !record.retired_at(now)
                || record.dropping
                || record.undo.is_some()
            {
                continue;
            }
            if self.sealed.is_none() {
                self.erase(index);
                continue;
            }
            // Wiped now; the record itself stays until the host has written the state
            // without it (its sealed bytes are all that is left).
            let algorithm = record.algorithm();
            record.secret = SecretKey::from_bytes(algorithm, &[0; 32]).0;
            record.erased = true;
            record.dropping = true;
            if let Some(place) = next.next() {
                *place = Some(u16::try_from(index).unwrap_or(u16::MAX));
            }
        }
        let key = WireKeyId {
            store: self.id,
            local,
        };
        let change = self.seal_change(Edit {
            removed,
            ..Edit::default()
        });
        Some((key, change))
    }

    /// One version of `key`, if it may still be used: the current one, or a previous one in
    /// its grace period.
    fn find_version(&self, key: &WireKeyId, version: u32) -> Result<&KeyRecord, Refusal> {
        self.slot_of(key)?;
        let record = self
            .records
            .as_slice()
            .iter()
            .flatten()
            .find(|record| record.id == key.local && record.version == version && !record.dropping)
            .ok_or(Refusal::UnknownVersion)?;
        if record.erased || record.retired_at(now_seconds()) {
            return Err(Refusal::VersionRetired);
        }
        Ok(record)
    }

    /// Every version of `key` held and not retired, by version.
    pub(crate) fn versions(
        &self,
        key: &WireKeyId,
    ) -> Result<[Option<VersionListing>; MAX_VERSIONS], Refusal> {
        self.slot_of(key)?;
        let now = now_seconds();
        let mut listed = [None; MAX_VERSIONS];
        let held = self.records.as_slice().iter().flatten().filter(|record| {
            record.id == key.local && !record.dropping && !record.erased && !record.retired_at(now)
        });
        for (place, record) in listed.iter_mut().zip(held) {
            *place = Some(VersionListing {
                version: record.version,
                public_key: record.public_key,
                created: record.created,
                retires: record.retires,
            });
        }
        listed.sort_unstable_by_key(|listing| listing.map_or(u32::MAX, |listing| listing.version));
        Ok(listed)
    }

    /// Signs `message` with one version of `key` (blind signing: the purpose's rule applies).
    pub(crate) fn sign_with_version(
        &self,
        key: &WireKeyId,
        version: u32,
        message: &[u8],
    ) -> Result<([u8; 32], [u8; 32]), Refusal> {
        let signer = self.blind_signer_of(self.find_version(key, version)?)?;
        Ok(signer.sign(message))
    }

    /// X25519 with one version of the handshake key `key`.
    pub(crate) fn diffie_hellman_with_version(
        &self,
        key: &WireKeyId,
        version: u32,
        peer_public: &[u8; 32],
    ) -> Result<Zeroizing<[u8; 32]>, Refusal> {
        super::diffie_hellman_with(self.find_version(key, version)?, peer_public)
    }
}
