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
        let mut buffer = [0u8; 128];
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

/// Why a backup's text was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BackupProblem {
    /// It does not begin with [`BACKUP_FIRST_LINE`], or a line is not one the format has.
    NotABackup,
    /// A line of the format whose fields are malformed; `line` counts from 1.
    MalformedLine {
        /// The line.
        line: u32,
    },
    /// No `signature` line at the end, or it does not verify under the key the operator
    /// pinned.
    SignatureInvalid,
    /// A key's secret does not give the public key on its line.
    SecretDoesNotMatch,
    /// A watermark line that does not follow its key's line, or belongs to a key that is not
    /// a consensus key.
    MarkWithoutKey,
    /// A key with watermarks on more than one chain: restored keys get their watermarks in
    /// the same write as the key, and that write carries one chain.
    TooManyChains,
}

impl core::fmt::Display for BackupProblem {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BackupProblem::NotABackup => f.write_str(
                "the decrypted file is not a keyward backup (its first line is not \
                 `keyward-backup v1`, or a line is not one the format has)",
            ),
            BackupProblem::MalformedLine { line } => {
                write!(f, "line {line} of the backup is malformed")
            }
            BackupProblem::SignatureInvalid => f.write_str(
                "the backup's signature does not verify under the signing key given: it was \
                 altered, or made by another store; check the key you pinned",
            ),
            BackupProblem::SecretDoesNotMatch => {
                f.write_str("a key's secret in the backup does not give the public key on its line")
            }
            BackupProblem::MarkWithoutKey => f.write_str(
                "a watermark line of the backup does not follow its consensus key's line",
            ),
            BackupProblem::TooManyChains => f.write_str(
                "a consensus key of the backup has watermarks on more than one chain, which a \
                 restore cannot yet write together with the key; import it with `keyward \
                 import` while no validator runs, then its watermarks with `keyward watermark \
                 import`, before the validator starts",
            ),
        }
    }
}

/// One key of a backup.
pub(crate) struct BackupKey {
    pub(crate) local: [u8; 16],
    pub(crate) purpose: Purpose,
    pub(crate) algorithm: Algorithm,
    pub(crate) public_key: [u8; 32],
    pub(crate) secret: zeroize::Zeroizing<[u8; 32]>,
}

/// One watermark of a backup.
pub(crate) struct BackupMark {
    pub(crate) local: [u8; 16],
    pub(crate) chain: crate::wire::consensus::ChainId,
    pub(crate) kind: ConsensusKind,
    pub(crate) mark: crate::wire::consensus::Watermark,
}

/// One record line of a backup.
pub(crate) enum BackupLine {
    Key(BackupKey),
    Mark(BackupMark),
}

/// A backup's text whose signature verified: its record lines, read without allocating.
pub(crate) struct VerifiedBackup<'a> {
    body: &'a [u8],
}

impl<'a> VerifiedBackup<'a> {
    /// Checks the text's shape and its signature under `signed_by`.
    pub(crate) fn verify(
        text: &'a [u8],
        signed_by: &ed25519_dalek::VerifyingKey,
    ) -> Result<Self, BackupProblem> {
        let first = BACKUP_FIRST_LINE.as_bytes();
        if !(text.starts_with(first) && text.get(first.len()) == Some(&b'\n')) {
            return Err(BackupProblem::NotABackup);
        }
        let body = text.strip_suffix(b"\n").ok_or(BackupProblem::NotABackup)?;
        let at = body
            .iter()
            .rposition(|&byte| byte == b'\n')
            .ok_or(BackupProblem::NotABackup)?;
        let (signed, last) = body.split_at(at + 1);
        let signature = last
            .strip_prefix(b"signature ")
            .and_then(hex_array::<64>)
            .ok_or(BackupProblem::SignatureInvalid)?;
        signed_by
            .verify_strict(signed, &ed25519_dalek::Signature::from_bytes(&signature))
            .map_err(|_| BackupProblem::SignatureInvalid)?;
        Ok(Self { body: signed })
    }

    /// The key and watermark lines, in order; the header lines are skipped (checked for
    /// shape only).
    pub(crate) fn lines(&self) -> impl Iterator<Item = Result<BackupLine, BackupProblem>> + '_ {
        self.body
            .split(|&byte| byte == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.is_empty())
            .skip(1)
            .filter_map(|(index, line)| {
                let number = u32::try_from(index + 1).unwrap_or(u32::MAX);
                parse_line(line, number).transpose()
            })
    }
}

/// A record line, `None` for a header line (`store`, `made`, `signing-key`).
fn parse_line(line: &[u8], number: u32) -> Result<Option<BackupLine>, BackupProblem> {
    let malformed = BackupProblem::MalformedLine { line: number };
    let mut fields = line.split(|&byte| byte == b' ');
    let mut next = || fields.next().ok_or(malformed);
    match next()? {
        b"store" | b"made" | b"signing-key" => Ok(None),
        b"key" => {
            let (_, local) = key_id(next()?).ok_or(malformed)?;
            let purpose = word_of(next()?, &Purpose::ALL, purpose_word).ok_or(malformed)?;
            let algorithm = word_of(
                next()?,
                &[Algorithm::Ed25519, Algorithm::X25519],
                algorithm_word,
            )
            .ok_or(malformed)?;
            let expect = |got: &[u8], want: &[u8]| (got == want).then_some(()).ok_or(malformed);
            expect(next()?, b"created")?;
            decimal(next()?).ok_or(malformed)?;
            expect(next()?, b"public")?;
            let public_key = hex_array::<32>(next()?).ok_or(malformed)?;
            expect(next()?, b"secret")?;
            let secret = zeroize::Zeroizing::new(hex_array::<32>(next()?).ok_or(malformed)?);
            if fields.next().is_some() || purpose.algorithm() != algorithm {
                return Err(malformed);
            }
            Ok(Some(BackupLine::Key(BackupKey {
                local,
                purpose,
                algorithm,
                public_key,
                secret,
            })))
        }
        b"watermark" => {
            let (_, local) = key_id(next()?).ok_or(malformed)?;
            let expect = |got: &[u8], want: &[u8]| (got == want).then_some(()).ok_or(malformed);
            expect(next()?, b"chain")?;
            let chain = crate::wire::consensus::ChainId(hex_array::<32>(next()?).ok_or(malformed)?);
            let kind = word_of(next()?, &ConsensusKind::ALL, kind_word).ok_or(malformed)?;
            expect(next()?, b"epoch")?;
            let epoch = decimal(next()?).ok_or(malformed)?;
            expect(next()?, b"round")?;
            let round = decimal(next()?).ok_or(malformed)?;
            expect(next()?, b"digest")?;
            let digest = hex_array::<32>(next()?).ok_or(malformed)?;
            if fields.next().is_some() {
                return Err(malformed);
            }
            Ok(Some(BackupLine::Mark(BackupMark {
                local,
                chain,
                kind,
                mark: crate::wire::consensus::Watermark {
                    epoch,
                    round,
                    digest,
                },
            })))
        }
        _ => Err(BackupProblem::NotABackup),
    }
}

/// A 48-hex-digit key id: its store id and its local id.
fn key_id(field: &[u8]) -> Option<([u8; 8], [u8; 16])> {
    let all = hex_array::<24>(field)?;
    let mut store = [0u8; 8];
    let mut local = [0u8; 16];
    store.copy_from_slice(&all[..8]);
    local.copy_from_slice(&all[8..]);
    Some((store, local))
}

/// The value among `values` whose word is `field`.
fn word_of<T: Copy>(field: &[u8], values: &[T], word: fn(T) -> &'static str) -> Option<T> {
    values
        .iter()
        .copied()
        .find(|value| word(*value).as_bytes() == field)
}

/// A decimal without sign or leading zeros (but `0`), within `u64`.
fn decimal(field: &[u8]) -> Option<u64> {
    if field.is_empty() || (field.len() > 1 && field[0] == b'0') {
        return None;
    }
    field.iter().try_fold(0u64, |value, &digit| {
        let digit = digit.checked_sub(b'0').filter(|digit| *digit < 10)?;
        value.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// `N` bytes from exactly `2N` lower-case hex digits, as the backup writes them.
fn hex_array<const N: usize>(field: &[u8]) -> Option<[u8; N]> {
    decode_hex(field, false)
}

/// `N` bytes from exactly `2N` hex digits (upper-case ones too if `either_case`), without
/// branching on their values: secrets are decoded with it. The result is not wiped: callers
/// that decode a secret put it in `Zeroizing` at once.
pub(crate) fn decode_hex<const N: usize>(field: &[u8], either_case: bool) -> Option<[u8; N]> {
    if field.len() != 2 * N {
        return None;
    }
    let case_mask = if either_case { 0x20 } else { 0 };
    let mut bytes = [0u8; N];
    let mut valid = true;
    for (byte, pair) in bytes.iter_mut().zip(field.chunks_exact(2)) {
        let (high, high_ok) = hex_value(pair[0], case_mask);
        let (low, low_ok) = hex_value(pair[1], case_mask);
        *byte = (high << 4) | low;
        valid &= high_ok & low_ok;
    }
    valid.then_some(bytes)
}

/// A hex digit's value and whether it is one, without branching on the digit; `case_mask`
/// 0x20 folds upper-case letters to lower case.
fn hex_value(digit: u8, case_mask: u8) -> (u8, bool) {
    let decimal = digit.wrapping_sub(b'0');
    let letter = (digit | case_mask).wrapping_sub(b'a');
    let is_decimal = decimal < 10;
    let is_letter = letter < 6;
    let value = (u8::from(is_decimal) * decimal) | (u8::from(is_letter) * (letter + 10));
    (value, is_decimal | is_letter)
}

#[cfg(test)]
mod reading_tests {
    use super::*;
    use ed25519_dalek::Signer as _;

    fn backup(signing: &ed25519_dalek::SigningKey) -> Vec<u8> {
        let mut buffer = vec![0u8; 4096];
        let mut writer = BackupWriter::new(&mut buffer);
        writer
            .preamble(&[1; 8], 1_765_000_000, &signing.verifying_key().to_bytes())
            .unwrap();
        let seed = [7u8; 32];
        let public = ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes();
        writer
            .key(
                &[1; 8],
                &[2; 16],
                Purpose::Consensus,
                Algorithm::Ed25519,
                5,
                &public,
                &seed,
            )
            .unwrap();
        let mut marks = ChainWatermarks::empty(crate::wire::consensus::ChainId([3; 32]));
        marks.vote = Some(crate::wire::consensus::Watermark {
            epoch: 4,
            round: 9,
            digest: [5; 32],
        });
        writer.watermarks(&[1; 8], &[2; 16], &marks).unwrap();
        let signature = signing.sign(writer.written()).to_bytes();
        writer.signature(&signature).unwrap();
        let len = writer.len();
        buffer.truncate(len);
        buffer
    }

    #[test]
    fn what_the_writer_writes_the_reader_reads_back_under_the_signing_key_only() {
        let signing = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let text = backup(&signing);
        let verified = VerifiedBackup::verify(&text, &signing.verifying_key()).unwrap();
        let lines: Vec<_> = verified.lines().collect::<Result<_, _>>().unwrap();
        assert_eq!(lines.len(), 2);
        match &lines[0] {
            BackupLine::Key(key) => {
                assert_eq!(key.local, [2; 16]);
                assert_eq!(key.purpose, Purpose::Consensus);
                assert_eq!(*key.secret, [7; 32]);
            }
            BackupLine::Mark(_) => panic!("a key first"),
        }
        match &lines[1] {
            BackupLine::Mark(mark) => {
                assert_eq!(mark.kind, ConsensusKind::Vote);
                assert_eq!((mark.mark.epoch, mark.mark.round), (4, 9));
            }
            BackupLine::Key(_) => panic!("then its watermark"),
        }
        let stranger = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
        assert!(matches!(
            VerifiedBackup::verify(&text, &stranger.verifying_key()),
            Err(BackupProblem::SignatureInvalid)
        ));
        for at in [0, 30, text.len() / 2, text.len() - 3] {
            let mut altered = text.clone();
            altered[at] ^= 0x01;
            assert!(VerifiedBackup::verify(&altered, &signing.verifying_key()).is_err());
        }
        assert!(VerifiedBackup::verify(&text[..text.len() - 1], &signing.verifying_key()).is_err());
    }

    #[test]
    fn decimals_and_hex_are_strict() {
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"18446744073709551615"), Some(u64::MAX));
        for bad in [&b""[..], b"01", b"-1", b"1a", b"18446744073709551616"] {
            assert_eq!(decimal(bad), None, "{bad:?}");
        }
        assert_eq!(hex_array::<2>(b"0aff"), Some([0x0a, 0xff]));
        for bad in [&b"0AFF"[..], b"0af", b"0afg", b"0aff0"] {
            assert_eq!(hex_array::<2>(bad), None, "{bad:?}");
        }
    }
}
