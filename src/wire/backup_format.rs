//! Shared by both sides: the plaintext of a backup (what `age -d` shows an operator) and the
//! statement a signer signs over its provisioning recipient. The signer writes both without
//! allocating, into a buffer it was given; `docs/backup-format.md` gives the bytes, precisely
//! enough for an operator's own tool to read a backup and check its signature.
//!
//! A backup is text, one record a line, fields separated by one space, numbers in decimal,
//! bytes in lower-case hex:
//!
//! ```text
//! keyward-backup v1
//! store <store id, 16 hex>
//! made <seconds since the Unix epoch>
//! signing-key <the backup-signing Ed25519 public key, 64 hex>
//! key <key id, 48 hex> <purpose> <algorithm> created <seconds> public <64 hex> secret <64 hex>
//! watermark <key id, 48 hex> chain <64 hex> <kind> epoch <n> round <n> digest <64 hex>
//! signature <128 hex>
//! ```
//!
//! The signature is Ed25519 (RFC 8032, pure) by the signing key over every byte before the
//! `signature` line, that line's start included as the newline ending the line before it.

use crate::wire::consensus::{ChainWatermarks, ConsensusKind};
use crate::wire::key_types::{Algorithm, Purpose, StoreId};

/// The first line of every backup.
pub const BACKUP_FIRST_LINE: &str = "keyward-backup v1";

/// What a signer's backup-signing key signs to vouch for its provisioning recipient: this
/// label, the store id, the recipient's 32 bytes.
pub const PROVISIONING_LABEL: &[u8] = b"keyward/v1 provisioning recipient";

/// The length of a [`provisioning_statement`].
pub const PROVISIONING_STATEMENT_LEN: usize = PROVISIONING_LABEL.len() + 8 + 32;

/// The bytes a signer signs over its provisioning recipient (see [`PROVISIONING_LABEL`]), so
/// an operator who pinned the signing key can check a recipient before encrypting a key to it.
pub fn provisioning_statement(
    store: &[u8; 8],
    recipient: &[u8; 32],
) -> [u8; PROVISIONING_STATEMENT_LEN] {
    let mut statement = [0u8; PROVISIONING_STATEMENT_LEN];
    let (label, rest) = statement.split_at_mut(PROVISIONING_LABEL.len());
    label.copy_from_slice(PROVISIONING_LABEL);
    let (store_bytes, recipient_bytes) = rest.split_at_mut(8);
    store_bytes.copy_from_slice(store);
    recipient_bytes.copy_from_slice(recipient);
    statement
}

/// A purpose's word in a backup.
pub(crate) fn purpose_word(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::Account => "account",
        Purpose::Consensus => "consensus",
        Purpose::NetworkDiscovery => "network-discovery",
        Purpose::NetworkHandshake => "network-handshake",
    }
}

/// An algorithm's word in a backup.
pub(crate) fn algorithm_word(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Ed25519 => "ed25519",
        Algorithm::X25519 => "x25519",
    }
}

/// A consensus kind's word in a backup.
pub(crate) fn kind_word(kind: ConsensusKind) -> &'static str {
    match kind {
        ConsensusKind::Proposal => "proposal",
        ConsensusKind::Vote => "vote",
        ConsensusKind::Timeout => "timeout",
    }
}

/// The buffer is full: the backup does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BufferFull;

/// Writes a backup's text into a fixed buffer, never past its end and never allocating.
pub(crate) struct BackupWriter<'a> {
    buffer: &'a mut [u8],
    len: usize,
}

impl<'a> BackupWriter<'a> {
    pub(crate) fn new(buffer: &'a mut [u8]) -> Self {
        Self { buffer, len: 0 }
    }

    /// The bytes written so far.
    pub(crate) fn written(&self) -> &[u8] {
        &self.buffer[..self.len]
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn room(&mut self, count: usize) -> Result<&mut [u8], BufferFull> {
        let end = self.len.checked_add(count).ok_or(BufferFull)?;
        let room = self.buffer.get_mut(self.len..end).ok_or(BufferFull)?;
        self.len = end;
        Ok(room)
    }

    fn text(&mut self, text: &str) -> Result<(), BufferFull> {
        self.room(text.len())?.copy_from_slice(text.as_bytes());
        Ok(())
    }

    /// Lower-case hex, in constant time: secrets are written with it.
    fn hex(&mut self, bytes: &[u8]) -> Result<(), BufferFull> {
        let room = self.room(bytes.len() * 2)?;
        for (pair, byte) in room.chunks_exact_mut(2).zip(bytes) {
            pair[0] = hex_digit(byte >> 4);
            pair[1] = hex_digit(byte & 0x0f);
        }
        Ok(())
    }

    fn decimal(&mut self, mut value: u64) -> Result<(), BufferFull> {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            // A digit: below ten.
            digits[start] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        self.room(digits.len() - start)?
            .copy_from_slice(&digits[start..]);
        Ok(())
    }

    /// The first four lines.
    pub(crate) fn preamble(
        &mut self,
        store: &StoreId,
        made: u64,
        signing_key: &[u8; 32],
    ) -> Result<(), BufferFull> {
        self.text(BACKUP_FIRST_LINE)?;
        self.text("\nstore ")?;
        self.hex(store)?;
        self.text("\nmade ")?;
        self.decimal(made)?;
        self.text("\nsigning-key ")?;
        self.hex(signing_key)?;
        self.text("\n")
    }

    /// One key's line.
    #[allow(clippy::too_many_arguments, reason = "one field of the line each")]
    pub(crate) fn key(
        &mut self,
        store: &StoreId,
        local: &[u8; 16],
        purpose: Purpose,
        algorithm: Algorithm,
        created: u64,
        public_key: &[u8; 32],
        secret: &[u8; 32],
    ) -> Result<(), BufferFull> {
        self.text("key ")?;
        self.hex(store)?;
        self.hex(local)?;
        self.text(" ")?;
        self.text(purpose_word(purpose))?;
        self.text(" ")?;
        self.text(algorithm_word(algorithm))?;
        self.text(" created ")?;
        self.decimal(created)?;
        self.text(" public ")?;
        self.hex(public_key)?;
        self.text(" secret ")?;
        self.hex(secret)?;
        self.text("\n")
    }

    /// One line for each kind a key has signed on one chain.
    pub(crate) fn watermarks(
        &mut self,
        store: &StoreId,
        local: &[u8; 16],
        marks: &ChainWatermarks,
    ) -> Result<(), BufferFull> {
        for kind in ConsensusKind::ALL {
            let Some(mark) = marks.of(kind) else {
                continue;
            };
            self.text("watermark ")?;
            self.hex(store)?;
            self.hex(local)?;
            self.text(" chain ")?;
            self.hex(&marks.chain.0)?;
            self.text(" ")?;
            self.text(kind_word(kind))?;
            self.text(" epoch ")?;
            self.decimal(mark.epoch)?;
            self.text(" round ")?;
            self.decimal(mark.round)?;
            self.text(" digest ")?;
            self.hex(&mark.digest)?;
            self.text("\n")?;
        }
        Ok(())
    }

    /// The last line: the signature over everything before it.
    pub(crate) fn signature(&mut self, signature: &[u8; 64]) -> Result<(), BufferFull> {
        self.text("signature ")?;
        self.hex(signature)?;
        self.text("\n")
    }
}

/// A nibble's lower-case hex digit without a branch or a table lookup on its value.
fn hex_digit(nibble: u8) -> u8 {
    let nibble = nibble & 0x0f;
    // 0xff when the nibble is above 9, else 0: ('a' - '0' - 10) = 39 is added only then.
    let above_nine = 0u8.wrapping_sub(9u8.wrapping_sub(nibble) >> 7);
    b'0' + nibble + (above_nine & 39)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits_are_the_usual_ones() {
        // 37 bytes (0, 7, ..., 252): 74 digits.
        let mut buffer = [0u8; 74];
        let mut writer = BackupWriter::new(&mut buffer);
        let bytes: Vec<u8> = (0..=255u8).step_by(7).collect();
        writer.hex(&bytes).unwrap();
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(writer.written(), expected.as_bytes());
    }

    #[test]
    fn decimals_are_the_usual_ones() {
        for value in [0, 7, 10, 1_765_000_000, u64::MAX] {
            let mut buffer = [0u8; 32];
            let mut writer = BackupWriter::new(&mut buffer);
            writer.decimal(value).unwrap();
            assert_eq!(writer.written(), value.to_string().as_bytes());
        }
    }

    #[test]
    fn a_full_buffer_is_an_error_and_never_overrun() {
        let mut buffer = [0u8; 20];
        let mut writer = BackupWriter::new(&mut buffer);
        assert_eq!(
            writer.preamble(&[1; 8], 5, &[2; 32]),
            Err(BufferFull),
            "the preamble is longer than 20 bytes"
        );
        assert!(writer.len() <= 20);
    }

    #[test]
    fn the_provisioning_statement_is_label_store_recipient() {
        let statement = provisioning_statement(&[3; 8], &[4; 32]);
        assert_eq!(&statement[..PROVISIONING_LABEL.len()], PROVISIONING_LABEL);
        assert_eq!(&statement[PROVISIONING_LABEL.len()..][..8], &[3; 8]);
        assert_eq!(&statement[PROVISIONING_LABEL.len() + 8..], &[4; 32]);
    }
}
