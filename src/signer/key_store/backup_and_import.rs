//! Runs in the signer: the store's own two keys (the provisioning key operators encrypt keys to,
//! and the backup-signing key that vouches for backups and for the provisioning recipient),
//! importing a key an operator encrypted to the provisioning recipient, and writing a backup
//! encrypted to an operator's age recipient. Plaintext exists only in the locked scratch
//! buffer, and is wiped as soon as it has been read or encrypted; the host sees ciphertext.
//!
//! With a sealed store both keys are derived from the key-encryption key (HKDF-SHA256, the store
//! id as salt, a label per key as info): the same store and unlock secret give the same
//! recipient after every restart, so an operator can encrypt a key on another machine and
//! import it later, and nothing has to be added to the store file. A memory-only signer draws
//! them at start; they end with it.

use ed25519_dalek::Signer as _;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::{KeyStore, SecretKey, now_seconds};
use crate::wire::age_format::{self, AgeError, AgeRandomness};
use crate::wire::backup_format::{
    BackupKey, BackupLine, BackupProblem, BackupWriter, VerifiedBackup, decode_hex,
    provisioning_statement,
};
use crate::wire::consensus::{ChainWatermarks, ConsensusKind};
use crate::wire::key_types::{KeySpec, Purpose, WireKeyId};
use crate::wire::messages::{Refusal, RestoreProgress, StoreChange};

/// The most bytes of backup text (or of an import's plaintext): what one answer frame can
/// carry once encrypted, with room for the age header and the frame's own fields. About 250
/// keys without watermarks.
pub(super) const SCRATCH_LEN: usize = 60 * 1024;

/// HKDF info of the provisioning key's seed (an X25519 scalar).
const PROVISIONING_INFO: &[u8] = b"keyward/v1 provisioning x25519";

/// HKDF info of the backup-signing key's seed (an Ed25519 seed).
const BACKUP_SIGNING_INFO: &[u8] = b"keyward/v1 backup signing ed25519";

/// The store's own keys, in locked memory.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(super) struct StoreIdentity {
    provisioning: [u8; 32],
    backup_signing: [u8; 32],
}

impl StoreIdentity {
    pub(super) fn empty() -> Self {
        Self {
            provisioning: [0; 32],
            backup_signing: [0; 32],
        }
    }

    pub(super) fn set(&mut self, provisioning: &[u8; 32], backup_signing: &[u8; 32]) {
        self.provisioning = *provisioning;
        self.backup_signing = *backup_signing;
    }
}

/// An Ed25519 signature as its R and S halves, as answers carry it.
type SignatureHalves = ([u8; 32], [u8; 32]);

impl KeyStore {
    pub(super) fn identity_mut(&mut self) -> &mut StoreIdentity {
        // `new` always makes exactly one identity cell.
        &mut self.identity.as_mut_slice()[0]
    }

    fn identity(&self) -> &StoreIdentity {
        &self.identity.as_slice()[0]
    }

    /// A sealed store's identity, derived from its key-encryption key (see the module's doc).
    pub(super) fn derive_identity_from_the_sealer(&mut self) {
        let Some(sealed) = &self.sealed else {
            return;
        };
        let provisioning = sealed.sealer.derive_seed(&self.id, PROVISIONING_INFO);
        let backup_signing = sealed.sealer.derive_seed(&self.id, BACKUP_SIGNING_INFO);
        self.identity_mut().set(&provisioning, &backup_signing);
    }

    fn backup_signing_key(&self) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&self.identity().backup_signing)
    }

    /// The provisioning recipient (X25519 public key), the backup-signing public key, and that
    /// key's signature over the recipient's statement, as its two halves.
    pub(crate) fn provisioning(&self) -> ([u8; 32], [u8; 32], SignatureHalves) {
        let provisioning = x25519_dalek::StaticSecret::from(self.identity().provisioning);
        let recipient = x25519_dalek::PublicKey::from(&provisioning).to_bytes();
        let signing = self.backup_signing_key();
        let signature = signing.sign(&provisioning_statement(&self.id, &recipient));
        (
            recipient,
            signing.verifying_key().to_bytes(),
            (
                signature.r_bytes().to_owned(),
                signature.s_bytes().to_owned(),
            ),
        )
    }

    /// Imports the key an operator encrypted to the provisioning recipient, for `purpose`, if
    /// its public key is `claimed_public` and no held key has it; answered like a generate.
    pub(crate) fn import(
        &mut self,
        purpose: Purpose,
        claimed_public: &[u8; 32],
        encrypted: &[u8],
    ) -> Result<(WireKeyId, [u8; 32], Option<StoreChange>), Refusal> {
        self.free_slot()?;
        let spec = KeySpec::new(purpose);
        let provisioning = x25519_dalek::StaticSecret::from(self.identity().provisioning);
        let scratch = &mut self.scratch.as_mut_slice()[0];
        let decrypted = age_format::decrypt(&provisioning, encrypted, scratch);
        drop(provisioning);
        let seed = decrypted.map(|len| {
            let seed = parse_secret(&scratch[..len]);
            scratch[..len].zeroize();
            seed
        });
        let seed = seed
            .map_err(|error| Refusal::ImportUndecryptable { error })?
            .ok_or(Refusal::ImportMalformed)?;
        let (_, public_key) = SecretKey::from_bytes(spec.algorithm, &seed);
        if public_key != *claimed_public {
            return Err(Refusal::ImportPublicKeyMismatch);
        }
        let held = self
            .records
            .as_slice()
            .iter()
            .flatten()
            .find(|record| record.public_key == public_key);
        if let Some(held) = held {
            return Err(Refusal::KeyAlreadyHeld {
                key: WireKeyId {
                    store: self.id,
                    local: held.id,
                },
            });
        }
        self.insert(spec, &seed)
    }

    /// Writes every key (with its watermarks) as a backup's text, signs it, and encrypts it to
    /// `recipient`; returns the length of the age file now at the start of
    /// [`backup_bytes`](Self::backup_bytes).
    pub(crate) fn backup(&mut self, recipient: &[u8; 32]) -> Result<usize, Refusal> {
        // The file key and the ephemeral secret come from the generator: fresh entropy first,
        // so that whoever once read the generator's state cannot open the next backup.
        self.reseed_from_the_kernel()?;
        let signing = self.backup_signing_key();
        let randomness = AgeRandomness {
            ephemeral_secret: self.generator().draw::<32>(),
            file_key: self.generator().draw::<16>(),
            payload_nonce: *self.generator().draw::<16>(),
        };
        let Self {
            records,
            scratch,
            guards,
            id,
            backup_out,
            ..
        } = self;
        let keys = records.as_slice().iter().flatten().count();
        let too_large = Refusal::BackupTooLarge {
            keys: u32::try_from(keys).unwrap_or(u32::MAX),
            cap: u32::try_from(SCRATCH_LEN).unwrap_or(u32::MAX),
        };
        let scratch = &mut scratch.as_mut_slice()[0];
        let mut writer = BackupWriter::new(scratch);
        let written = (|| {
            writer.preamble(id, now_seconds(), &signing.verifying_key().to_bytes())?;
            for (record, chains) in records.as_slice().iter().zip(guards.iter()) {
                // Current versions only: a previous one is in its grace period, on its way out.
                let Some(record) = record.as_ref().filter(|record| record.is_current()) else {
                    continue;
                };
                let (algorithm, secret) = match &record.secret {
                    SecretKey::Ed25519(key) => (crate::Algorithm::Ed25519, key.as_bytes()),
                    SecretKey::X25519(key) => (crate::Algorithm::X25519, key.as_bytes()),
                };
                writer.key(
                    id,
                    &record.id,
                    record.purpose,
                    algorithm,
                    record.created,
                    &record.public_key,
                    secret,
                )?;
                for chain in chains.iter().flatten() {
                    writer.watermarks(id, &record.id, &chain.marks)?;
                }
            }
            let signature = signing.sign(writer.written()).to_bytes();
            writer.signature(&signature)
        })();
        let len = writer.len();
        // The answer carries the whole file: one that would not fit in a frame is refused here.
        let fits = age_format::encrypted_len(len) <= backup_out.len() - 64;
        let encrypted = match written {
            Ok(()) if !fits => Err(too_large),
            Ok(()) => age_format::encrypt(recipient, randomness, &scratch[..len], backup_out)
                .map_err(|error| match error {
                    AgeError::LowOrderRecipient => Refusal::BackupRecipientInvalid,
                    _ => too_large,
                }),
            Err(_) => Err(too_large),
        };
        scratch[..len].zeroize();
        encrypted
    }

    /// One step of a restore (see `Request::RestoreStep`): decrypts the backup with the
    /// provisioning key into the scratch buffer, checks its signature under `signed_by` and
    /// every key's secret against its public key, and does the first thing not yet done.
    pub(crate) fn restore_step(
        &mut self,
        signed_by: &[u8; 32],
        encrypted: &[u8],
    ) -> Result<RestoreProgress, Refusal> {
        let refused = |problem| Refusal::RestoreRefused { problem };
        let signed_by = ed25519_dalek::VerifyingKey::from_bytes(signed_by)
            .map_err(|_| refused(BackupProblem::SignatureInvalid))?;
        let provisioning = x25519_dalek::StaticSecret::from(self.identity().provisioning);
        let decrypted = age_format::decrypt(
            &provisioning,
            encrypted,
            &mut self.scratch.as_mut_slice()[0],
        );
        drop(provisioning);
        let len = decrypted.map_err(|error| Refusal::ImportUndecryptable { error })?;
        let action = self.next_restore_action(len, &signed_by);
        self.scratch.as_mut_slice()[0][..len].zeroize();
        match action? {
            RestoreAction::Add { key, marks } => {
                let spec = KeySpec {
                    purpose: key.purpose,
                    algorithm: key.algorithm,
                };
                let (key, public_key, change) =
                    self.insert_with_watermarks(spec, &key.secret, marks)?;
                Ok(RestoreProgress::Added {
                    key,
                    public_key,
                    change,
                })
            }
            RestoreAction::Raise { key, marks } => {
                let change = self.raise_watermarks(&key, &marks)?;
                Ok(RestoreProgress::Raised { key, change })
            }
            RestoreAction::Complete { keys, marks } => {
                Ok(RestoreProgress::Complete { keys, marks })
            }
        }
    }

    /// The first thing a restore has left to do, from the backup's text in the scratch buffer.
    fn next_restore_action(
        &self,
        len: usize,
        signed_by: &ed25519_dalek::VerifyingKey,
    ) -> Result<RestoreAction, Refusal> {
        let refused = |problem| Refusal::RestoreRefused { problem };
        let backup = VerifiedBackup::verify(&self.scratch.as_slice()[0][..len], signed_by)
            .map_err(refused)?;
        // The whole backup is checked before anything is done.
        let (mut keys, mut marks) = (0u32, 0u32);
        let mut pending: Option<(BackupKey, Option<ChainWatermarks>)> = None;
        let mut first_action = None;
        let settle = |pending: Option<(BackupKey, Option<ChainWatermarks>)>,
                      first: &mut Option<RestoreAction>|
         -> Result<(), Refusal> {
            if let Some((key, key_marks)) = pending
                && first.is_none()
            {
                *first = self.restore_action(key, key_marks)?;
            }
            Ok(())
        };
        for line in backup.lines() {
            match line.map_err(refused)? {
                BackupLine::Key(key) => {
                    keys = keys.saturating_add(1);
                    let (_, public_key) = SecretKey::from_bytes(key.algorithm, &key.secret);
                    if public_key != key.public_key {
                        return Err(refused(BackupProblem::SecretDoesNotMatch));
                    }
                    settle(pending.take(), &mut first_action)?;
                    pending = Some((key, None));
                }
                BackupLine::Mark(mark) => {
                    marks = marks.saturating_add(1);
                    let Some((key, key_marks)) = pending
                        .as_mut()
                        .filter(|(key, _)| key.local == mark.local)
                        .filter(|(key, _)| key.purpose == Purpose::Consensus)
                    else {
                        return Err(refused(BackupProblem::MarkWithoutKey));
                    };
                    let _ = key;
                    let chain = key_marks.get_or_insert(ChainWatermarks::empty(mark.chain));
                    if chain.chain != mark.chain {
                        return Err(refused(BackupProblem::TooManyChains));
                    }
                    chain.set(mark.kind, Some(mark.mark));
                }
            }
        }
        settle(pending.take(), &mut first_action)?;
        Ok(first_action.unwrap_or(RestoreAction::Complete { keys, marks }))
    }

    /// What a backup's key calls for: adding it (with its watermarks), raising the watermarks
    /// of the held copy, or nothing.
    fn restore_action(
        &self,
        key: BackupKey,
        marks: Option<ChainWatermarks>,
    ) -> Result<Option<RestoreAction>, Refusal> {
        let held = self
            .records
            .as_slice()
            .iter()
            .enumerate()
            .find_map(|(slot, record)| {
                record
                    .as_ref()
                    .filter(|record| record.public_key == key.public_key && !record.dropping)
                    .map(|record| (slot, record.id, record.is_current()))
            });
        let Some((slot, local, current)) = held else {
            return Ok(Some(RestoreAction::Add { key, marks }));
        };
        // Held as a previous version of another key: not restored again, and its watermarks
        // are that key's (its current version's slot).
        let (Some(marks), true) = (marks, current) else {
            return Ok(None);
        };
        let held_marks = self.guards[slot]
            .iter()
            .flatten()
            .find(|guard| guard.marks.chain == marks.chain)
            .map(|guard| guard.marks);
        let higher = ConsensusKind::ALL.iter().any(|kind| {
            match (held_marks.and_then(|held| held.of(*kind)), marks.of(*kind)) {
                (None, Some(_)) => true,
                (Some(held), Some(offered)) => offered.position() > held.position(),
                _ => false,
            }
        });
        Ok(higher.then_some(RestoreAction::Raise {
            key: WireKeyId {
                store: self.id,
                local,
            },
            marks,
        }))
    }

    /// The age file the last [`backup`](Self::backup) wrote.
    pub(crate) fn backup_bytes(&self, len: usize) -> &[u8] {
        &self.backup_out[..len.min(self.backup_out.len())]
    }
}

/// What a restore step does.
enum RestoreAction {
    Add {
        key: BackupKey,
        marks: Option<ChainWatermarks>,
    },
    Raise {
        key: WireKeyId,
        marks: ChainWatermarks,
    },
    Complete {
        keys: u32,
        marks: u32,
    },
}

/// An imported key's 32 secret bytes from its plaintext: exactly 32 bytes, or 64 hex digits
/// (either case) with an optional `\n` or `\r\n`. Anything else is `None`.
fn parse_secret(plaintext: &[u8]) -> Option<zeroize::Zeroizing<[u8; 32]>> {
    let mut secret = zeroize::Zeroizing::new([0u8; 32]);
    if let Ok(raw) = <&[u8; 32]>::try_from(plaintext) {
        secret.copy_from_slice(raw);
        return Some(secret);
    }
    let digits = plaintext
        .strip_suffix(b"\r\n")
        .or_else(|| plaintext.strip_suffix(b"\n"))
        .unwrap_or(plaintext);
    *secret = decode_hex(digits, true)?;
    Some(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest backup the signer can write (the scratch buffer's worth of text, encrypted),
    /// with the largest id, fits in the buffer it is encrypted into and in the answer room its
    /// request reserves.
    #[test]
    fn the_largest_backup_fits_in_one_answer_frame() {
        use crate::wire::messages::{Answer, AnswerFrame, Request};
        use crate::wire::{FRAME_HEADER_LEN, MAX_FRAME_LEN};
        let file = vec![0xff; age_format::encrypted_len(SCRATCH_LEN)];
        assert!(file.len() <= MAX_FRAME_LEN, "{}", file.len());
        let frame = AnswerFrame::<(), &[u8; 32], (), &[u8]> {
            id: u64::MAX,
            answer: Answer::Backup(&file),
        };
        let payload = postcard::to_allocvec(&frame).unwrap();
        let room = Request::Backup {
            recipient: [0xff; 32],
        }
        .largest_answer_frame();
        assert!(
            FRAME_HEADER_LEN + payload.len() <= room,
            "{} > {room}",
            FRAME_HEADER_LEN + payload.len()
        );
    }

    #[test]
    fn an_import_plaintext_is_raw_or_hex() {
        let secret: [u8; 32] = std::array::from_fn(|i| u8::try_from(i * 37 % 251).unwrap());
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(*parse_secret(&secret).unwrap(), secret);
        assert_eq!(*parse_secret(hex.as_bytes()).unwrap(), secret);
        assert_eq!(
            *parse_secret(format!("{hex}\n").as_bytes()).unwrap(),
            secret
        );
        assert_eq!(
            *parse_secret(format!("{}\r\n", hex.to_uppercase()).as_bytes()).unwrap(),
            secret
        );
        for bad in [
            &secret[..31],
            &[0u8; 33][..],
            format!("{hex}\n\n").as_bytes(),
            format!("{}g", &hex[..63]).as_bytes(),
            format!(" {}", &hex[..63]).as_bytes(),
            b"",
        ] {
            assert!(parse_secret(bad).is_none(), "{bad:?}");
        }
    }
}
