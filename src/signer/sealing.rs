//! Runs in the signer: the sealed store's key-encryption key and its three seals (the header's
//! verifier, each record's secret, the manifest that binds a write's sequence number and its
//! records). The key-encryption key is derived here from the unlock secret with Argon2id, kept
//! in locked memory, and never leaves this module; the host sees only what it seals.
//!
//! XChaCha20-Poly1305 with a random 192-bit nonce per seal: nonces need no counter that would
//! itself have to survive crashes, and a collision is out of reach (2^-96 after 2^48 seals).

use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::{AeadInOut, KeyInit, XChaCha20Poly1305};
use zeroize::{Zeroize, Zeroizing};

use crate::sys::{SecretCells, SecretMemoryBacking};
use crate::wire::key_types::StoreId;
use crate::wire::startup::StoreProblem;
use crate::wire::store_format::{
    KdfParameters, ManifestFields, Seal, SealedRecord, StoreHeader, VERIFIER_LABEL,
};

/// The longest unlock secret read (a passphrase, or a systemd credential): 4 KiB.
pub(crate) const MAX_UNLOCK_SECRET_LEN: usize = 4096;

/// The key-encryption key, in locked memory, and the seals made with it.
pub(crate) struct Sealer {
    key: SecretCells<[u8; 32]>,
}

impl Sealer {
    /// Derives the key-encryption key from `unlock` and the header's salt and cost parameters.
    pub(crate) fn derive(
        unlock: &[u8],
        kdf: KdfParameters,
        salt: &[u8; 16],
        backing: SecretMemoryBacking,
    ) -> Result<Self, StoreProblem> {
        if unlock.is_empty() {
            return Err(StoreProblem::UnlockSecretEmpty);
        }
        kdf.check().map_err(|_| StoreProblem::KdfFailed)?;
        let params = argon2::Params::new(kdf.memory_kib, kdf.passes, kdf.lanes, Some(32))
            .map_err(|_| StoreProblem::KdfFailed)?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key =
            SecretCells::new(1, backing, || [0u8; 32]).map_err(|error| StoreProblem::Memory {
                errno: error.raw_os_error().unwrap_or(0),
            })?;
        // Allocated before the sandbox (which forbids growing memory), wiped and freed before it.
        let mut blocks = vec![argon2::Block::default(); argon.params().block_count()];
        let derived = argon.hash_password_into_with_memory(
            unlock,
            salt,
            &mut key.as_mut_slice()[0],
            &mut blocks,
        );
        blocks.zeroize();
        drop(blocks);
        derived.map_err(|_| StoreProblem::KdfFailed)?;
        Ok(Self { key })
    }

    /// A 32-byte seed for one of the store's own keys (its provisioning and backup-signing
    /// keys), derived from the key-encryption key with HKDF-SHA256 (RFC 5869): the store id as
    /// salt, `info` naming the key. The same store and unlock secret give the same seed after
    /// every restart; nothing without the key-encryption key can compute it.
    pub(crate) fn derive_seed(&self, store: &StoreId, info: &[u8]) -> Zeroizing<[u8; 32]> {
        let hkdf = hkdf::Hkdf::<sha2::Sha256>::new(Some(store), &self.key.as_slice()[0]);
        let mut seed = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit: expanding cannot fail.
        let _ = hkdf.expand(info, seed.as_mut_slice());
        seed
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.key.as_slice()[0]).into())
    }

    /// Seals `secret` in place under `nonce` with `associated_data`; returns the tag.
    fn seal(&self, nonce: &[u8; 24], associated_data: &[u8], secret: &mut [u8]) -> [u8; 16] {
        let tag = self.cipher().encrypt_inout_detached(
            nonce.into(),
            associated_data,
            InOutBuf::from(secret),
        );
        // Encryption fails only for inputs longer than XChaCha20 can count (256 GiB).
        tag.map_or([0; 16], Into::into)
    }

    /// Opens `sealed` in place; false (and `sealed` left as it was) if it is not authentic.
    fn open(&self, seal: &Seal, associated_data: &[u8], sealed: &mut [u8]) -> bool {
        self.cipher()
            .decrypt_inout_detached(
                (&seal.nonce).into(),
                associated_data,
                InOutBuf::from(sealed),
                (&seal.tag).into(),
            )
            .is_ok()
    }

    /// The header's verifier: a seal of nothing over the header's first fields.
    pub(crate) fn verifier(&self, header: &StoreHeader, nonce: [u8; 24]) -> Seal {
        let tag = self.seal(&nonce, &verifier_data(header), &mut []);
        Seal { nonce, tag }
    }

    /// Whether the header's verifier opens: the unlock secret is the store's.
    pub(crate) fn verifies(&self, header: &StoreHeader) -> bool {
        self.open(&header.verifier, &verifier_data(header), &mut [])
    }

    /// Seals a record's secret; the record's clear fields are bound as associated data.
    pub(crate) fn seal_record(
        &self,
        store: &StoreId,
        record: &mut SealedRecord,
        secret: &[u8; 32],
        nonce: [u8; 24],
    ) {
        let mut sealed = Zeroizing::new(*secret);
        record.seal.nonce = nonce;
        let data = record.associated_data(store);
        record.seal.tag = self.seal(&nonce, &data, sealed.as_mut_slice());
        record.sealed_secret = *sealed;
    }

    /// A record's secret, if its seal is authentic.
    pub(crate) fn open_record(
        &self,
        store: &StoreId,
        record: &SealedRecord,
    ) -> Option<Zeroizing<[u8; 32]>> {
        let mut secret = Zeroizing::new(record.sealed_secret);
        let data = record.associated_data(store);
        self.open(&record.seal, &data, secret.as_mut_slice())
            .then_some(secret)
    }

    /// The manifest seal of one write.
    pub(crate) fn seal_manifest(
        &self,
        header_checksum: &[u8; 32],
        manifest: &ManifestFields,
        nonce: [u8; 24],
    ) -> Seal {
        let tag = self.seal(&nonce, &manifest.associated_data(header_checksum), &mut []);
        Seal { nonce, tag }
    }

    /// Whether a manifest seal is authentic.
    pub(crate) fn manifest_opens(
        &self,
        header_checksum: &[u8; 32],
        manifest: &ManifestFields,
        seal: &Seal,
    ) -> bool {
        self.open(seal, &manifest.associated_data(header_checksum), &mut [])
    }
}

fn verifier_data(header: &StoreHeader) -> [u8; VERIFIER_LABEL.len() + 47] {
    let mut data = [0u8; VERIFIER_LABEL.len() + 47];
    data[..VERIFIER_LABEL.len()].copy_from_slice(VERIFIER_LABEL);
    data[VERIFIER_LABEL.len()..].copy_from_slice(&header.verified_bytes());
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::key_types::{Algorithm, Purpose};

    const SMALL: KdfParameters = KdfParameters {
        memory_kib: 64,
        passes: 1,
        lanes: 1,
    };

    fn sealer(unlock: &[u8]) -> Sealer {
        Sealer::derive(
            unlock,
            SMALL,
            &[5; 16],
            SecretMemoryBacking::LockedAnonymous,
        )
        .unwrap_or_else(|problem| panic!("{problem:?}"))
    }

    fn header(sealer: &Sealer) -> StoreHeader {
        let mut header = StoreHeader {
            store: [1; 8],
            kdf: SMALL,
            salt: [5; 16],
            verifier: Seal {
                nonce: [0; 24],
                tag: [0; 16],
            },
        };
        header.verifier = sealer.verifier(&header, [9; 24]);
        header
    }

    #[test]
    fn the_verifier_tells_the_right_unlock_secret_from_a_wrong_one() {
        let right = sealer(b"correct horse");
        let header = header(&right);
        assert!(right.verifies(&header));
        assert!(!sealer(b"correct horsf").verifies(&header));
        assert!(matches!(
            Sealer::derive(b"", SMALL, &[5; 16], SecretMemoryBacking::LockedAnonymous),
            Err(StoreProblem::UnlockSecretEmpty)
        ));
    }

    #[test]
    fn a_record_opens_only_unchanged_and_only_in_its_store() {
        let sealer = sealer(b"unlock");
        let mut record = SealedRecord {
            slot: 2,
            local: [3; 16],
            purpose: Purpose::Account,
            algorithm: Algorithm::Ed25519,
            created: 42,
            version: 1,
            retires: 0,
            public_key: [4; 32],
            sealed_secret: [0; 32],
            seal: Seal {
                nonce: [0; 24],
                tag: [0; 16],
            },
        };
        let secret = [0x5a; 32];
        sealer.seal_record(&[1; 8], &mut record, &secret, [6; 24]);
        assert_ne!(
            record.sealed_secret, secret,
            "the secret is not in the clear"
        );
        assert_eq!(
            sealer.open_record(&[1; 8], &record).as_deref(),
            Some(&secret)
        );
        assert!(
            sealer.open_record(&[2; 8], &record).is_none(),
            "another store"
        );
        let mut moved = record;
        moved.slot = 3;
        assert!(
            sealer.open_record(&[1; 8], &moved).is_none(),
            "another slot"
        );
        let mut flipped = record;
        flipped.sealed_secret[0] ^= 1;
        assert!(
            sealer.open_record(&[1; 8], &flipped).is_none(),
            "a flipped bit"
        );
    }

    #[test]
    fn a_manifest_binds_its_sequence_number() {
        let sealer = sealer(b"unlock");
        let manifest = ManifestFields {
            sequence: 5,
            record_count: 1,
            watermark_count: 0,
            records_digest: [7; 32],
        };
        let seal = sealer.seal_manifest(&[8; 32], &manifest, [1; 24]);
        assert!(sealer.manifest_opens(&[8; 32], &manifest, &seal));
        let older = ManifestFields {
            sequence: 4,
            ..manifest
        };
        assert!(!sealer.manifest_opens(&[8; 32], &older, &seal));
    }
}
