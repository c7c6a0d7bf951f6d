//! Shared by both sides: the age v1 file format (<https://age-encryption.org/v1>, the C2SP
//! `age.md` specification) for its X25519 recipient type. The signer encrypts and decrypts:
//! [`encrypt`] and [`decrypt`] write only into the caller's buffers and allocate nothing, since
//! the sandboxed signer cannot grow its memory. The host encodes and parses `age1…` recipient
//! strings ([`recipient_string`], [`parse_recipient`]) and strips ASCII armor ([`dearmor`]);
//! those may allocate.
//!
//! Written from the specification with the RustCrypto primitives keyward already uses. The tests
//! at the end show interoperability both ways with the `age` binary and run the C2SP test
//! vectors (the "testkit") that apply to an X25519 identity.
//!
//! A file is a text header then a binary payload:
//!
//! ```text
//! age-encryption.org/v1
//! -> X25519 <ephemeral share, base64>
//! <file key wrapped with ChaCha20-Poly1305, base64>
//! --- <HMAC-SHA256 of the header up to and including "---", base64>
//! <16-byte nonce><64 KiB chunks, each sealed with ChaCha20-Poly1305 (STREAM)>
//! ```
//!
//! Base64 in the header is the standard alphabet without padding, canonical; stanza bodies are
//! wrapped at 64 columns and end with a shorter (possibly empty) line.

use base64ct::{Base64, Base64Unpadded, Encoding};
use bech32::primitives::decode::{
    CharError, ChecksumError, UncheckedHrpstring, UncheckedHrpstringError,
};
use bech32::{Bech32, ByteIterExt, Fe32IterExt, Hrp};
use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

/// The version line every v1 file begins with.
const VERSION_LINE: &[u8] = b"age-encryption.org/v1\n";
/// The first argument of an X25519 recipient stanza.
const X25519_TYPE: &[u8] = b"X25519";
/// The first argument of a passphrase stanza, which must be a header's only stanza.
const SCRYPT_TYPE: &[u8] = b"scrypt";
/// HKDF info of the key that wraps the file key for an X25519 recipient.
const X25519_INFO: &[u8] = b"age-encryption.org/v1/X25519";
/// HKDF info of the header MAC's key.
const HEADER_INFO: &[u8] = b"header";
/// HKDF info of the payload key.
const PAYLOAD_INFO: &[u8] = b"payload";
/// A stanza's first line starts with this.
const STANZA_PREFIX: &[u8] = b"-> ";
/// The MAC line starts with this; the MAC covers the header through its "---".
const MAC_PREFIX: &[u8] = b"--- ";
/// Stanza bodies are wrapped at this many base64 characters (48 bytes).
const BODY_COLUMNS: usize = 64;
/// The base64 (unpadded) length of 32 bytes: a share, a wrapped file key, the MAC.
const BASE64_32_LEN: usize = 43;

/// The file key's length.
const FILE_KEY_LEN: usize = 16;
/// The payload nonce's length.
const PAYLOAD_NONCE_LEN: usize = 16;
/// Plaintext in every chunk but the last.
const CHUNK_LEN: usize = 64 * 1024;
/// A Poly1305 tag.
const TAG_LEN: usize = 16;
/// A full chunk as sealed in the file.
const SEALED_CHUNK_LEN: usize = CHUNK_LEN + TAG_LEN;

/// The header [`encrypt`] writes: the version line, one X25519 stanza (its argument line and a
/// one-line body), the MAC line.
const ENCRYPTED_HEADER_LEN: usize = VERSION_LINE.len()
    + STANZA_PREFIX.len()
    + X25519_TYPE.len()
    + 1
    + BASE64_32_LEN
    + 1
    + BASE64_32_LEN
    + 1
    + MAC_PREFIX.len()
    + BASE64_32_LEN
    + 1;

/// The ASCII armor's first and last lines.
const ARMOR_BEGIN: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";
const ARMOR_END: &[u8] = b"-----END AGE ENCRYPTED FILE-----";
/// What any PEM block begins with.
const PEM_BEGIN: &[u8] = b"-----BEGIN";
/// Armor lines are 64 base64 characters (the last may be shorter).
const ARMOR_COLUMNS: usize = 64;

/// The human-readable part of an X25519 recipient string.
const RECIPIENT_HRP: Hrp = Hrp::parse_unchecked("age");
/// The human-readable part of an X25519 identity (a secret key).
const IDENTITY_HRP: Hrp = Hrp::parse_unchecked("age-secret-key-");

/// Why an age file could not be made or opened. Sent by the signer to the host in a refusal, so
/// it is plain data; no variant carries key bytes, and the decryption errors do not say which
/// stanza or chunk failed beyond what the file's own structure shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AgeError {
    /// The input does not begin with the v1 version line.
    #[error(
        "not an age v1 file: it does not begin with the line `age-encryption.org/v1` (an armored \
         file, `-----BEGIN AGE ENCRYPTED FILE-----`, must have its armor removed first)"
    )]
    NotAnAgeFile,
    /// The header breaks the v1 grammar, or a stanza of a type this reads is malformed.
    #[error(
        "the age header is malformed (a recipient stanza, its base64 or the MAC line breaks the \
         v1 format): the file is damaged or was not written by a conforming age implementation"
    )]
    MalformedHeader,
    /// The ASCII armor is not the strict PEM form age writes.
    #[error(
        "the age ASCII armor is malformed: expected `-----BEGIN AGE ENCRYPTED FILE-----`, \
         padded base64 in lines of 64 characters, `-----END AGE ENCRYPTED FILE-----`, and \
         nothing else but whitespace around them; pass the file exactly as `age -a` wrote it"
    )]
    MalformedArmor,
    /// No X25519 stanza of the header opens with this identity.
    #[error(
        "the age file is not encrypted to this key: none of its X25519 recipient stanzas opens \
         with it"
    )]
    NoMatchingRecipient,
    /// The file key opened, but the header's MAC does not match the header.
    #[error(
        "the age header's MAC does not match: the header was altered after encryption; do not \
         trust this file"
    )]
    HeaderMacMismatch,
    /// The file ends before its final chunk (or inside its header or payload nonce).
    #[error("the age file is truncated: it ends before its final chunk; copy the whole file again")]
    Truncated,
    /// A chunk does not authenticate: altered, damaged, cut inside, or reordered.
    #[error(
        "the age payload does not authenticate: a chunk was altered, damaged or cut short, or \
         the file has bytes appended; nothing was decrypted"
    )]
    PayloadTampered,
    /// The final chunk authenticated, and bytes follow it.
    #[error(
        "the age file has bytes after its final chunk: it was appended to; nothing was decrypted"
    )]
    TrailingData,
    /// The output buffer is smaller than the result can be.
    #[error("the output buffer is smaller than the {needed} bytes this needs: pass a larger one")]
    OutputTooSmall {
        /// The bytes the output needs.
        needed: u64,
    },
    /// The recipient is a low-order point: the shared secret would be zero, known to anyone.
    #[error(
        "the recipient is a low-order X25519 point (its shared secret is zero, known to anyone): \
         encrypt to a real `age1…` recipient, as age-keygen prints it"
    )]
    LowOrderRecipient,
    /// A primitive refused an input its specification accepts. Kept so that such a refusal
    /// fails closed instead of panicking; no input reaches it.
    #[error("internal error: a cryptographic primitive refused a valid input (please report it)")]
    Internal,
}

/// Randomness for one encryption, drawn by the caller (the signer's generator), so the format
/// code is deterministic and testable.
pub(crate) struct AgeRandomness {
    /// The X25519 ephemeral secret of the one recipient stanza.
    pub(crate) ephemeral_secret: Zeroizing<[u8; 32]>,
    /// The file key: the payload key and the header MAC key derive from it.
    pub(crate) file_key: Zeroizing<[u8; FILE_KEY_LEN]>,
    /// The payload nonce (the salt of the payload key).
    pub(crate) payload_nonce: [u8; PAYLOAD_NONCE_LEN],
}

/// Exact ciphertext length for a plaintext length with one X25519 recipient: the header, the
/// payload nonce, the plaintext and a tag a chunk (an empty plaintext is one empty chunk). It
/// saturates at `usize::MAX`, which no buffer holds.
pub(crate) fn encrypted_len(plaintext_len: usize) -> usize {
    checked_encrypted_len(plaintext_len).unwrap_or(usize::MAX)
}

fn checked_encrypted_len(plaintext_len: usize) -> Option<usize> {
    let chunks = plaintext_len.div_ceil(CHUNK_LEN).max(1);
    chunks
        .checked_mul(TAG_LEN)?
        .checked_add(plaintext_len)?
        .checked_add(ENCRYPTED_HEADER_LEN + PAYLOAD_NONCE_LEN)
}

/// Encrypts `plaintext` to the X25519 `recipient` (32-byte u-coordinate) as a binary (not
/// armored) age v1 file in `out`; returns the length written ([`encrypted_len`]). Refuses a
/// low-order recipient. The plaintext is never copied: each chunk is encrypted from
/// `plaintext` straight into `out`. Nothing is written to `out` when it refuses.
pub(crate) fn encrypt(
    recipient: &[u8; 32],
    randomness: AgeRandomness,
    plaintext: &[u8],
    out: &mut [u8],
) -> Result<usize, AgeError> {
    let needed = checked_encrypted_len(plaintext.len()).ok_or(AgeError::Internal)?;
    if out.len() < needed {
        return Err(output_too_small(needed));
    }
    let ephemeral = StaticSecret::from(*randomness.ephemeral_secret);
    let share = PublicKey::from(&ephemeral);
    let shared = ephemeral.diffie_hellman(&PublicKey::from(*recipient));
    if !shared.was_contributory() {
        return Err(AgeError::LowOrderRecipient);
    }
    let wrapped = wrap_file_key(
        share.as_bytes(),
        recipient,
        shared.as_bytes(),
        &randomness.file_key,
    )?;

    let mut writer = Writer {
        out: &mut out[..needed],
        len: 0,
    };
    writer.put(VERSION_LINE)?;
    writer.put(STANZA_PREFIX)?;
    writer.put(X25519_TYPE)?;
    writer.put(b" ")?;
    writer.put_base64(share.as_bytes())?;
    writer.put(b"\n")?;
    writer.put_base64(&wrapped)?;
    writer.put(b"\n")?;
    writer.put(MAC_PREFIX.trim_ascii_end())?;
    let mac = header_hmac(&randomness.file_key, writer.written())?.finalize();
    writer.put(b" ")?;
    writer.put_base64(&mac.into_bytes())?;
    writer.put(b"\n")?;

    writer.put(&randomness.payload_nonce)?;
    let cipher = payload_cipher(&randomness.file_key, &randomness.payload_nonce)?;
    let chunks = plaintext.len().div_ceil(CHUNK_LEN).max(1);
    let mut chunk_iter = plaintext.chunks(CHUNK_LEN);
    for counter in 0..chunks {
        // `chunks(…)` yields nothing for an empty plaintext: its one chunk is empty.
        let chunk = chunk_iter.next().unwrap_or(&[]);
        let last = counter + 1 == chunks;
        let sealed = writer.take(chunk.len() + TAG_LEN)?;
        let (body, tag_out) = sealed.split_at_mut(chunk.len());
        let buffer = InOutBuf::new(chunk, body).map_err(|_| AgeError::Internal)?;
        let nonce = chunk_nonce(
            u64::try_from(counter).map_err(|_| AgeError::Internal)?,
            last,
        );
        let tag = cipher
            .encrypt_inout_detached((&nonce).into(), &[], buffer)
            .map_err(|_| AgeError::Internal)?;
        tag_out.copy_from_slice(&tag);
    }
    Ok(writer.len)
}

/// Decrypts a binary age v1 file with the X25519 identity (scalar bytes) into `out`; returns
/// the plaintext length. Nothing is written to `out` but authenticated plaintext: each chunk's
/// tag is checked before the chunk is decrypted into place. The caller sees the whole plaintext
/// or none of it: if the payload fails after some chunks opened (a later chunk tampered, the
/// file truncated or appended to), the part of `out` the plaintext would fill is zeroed before
/// the error returns. A header error or [`AgeError::OutputTooSmall`] (which says how long `out`
/// must be: the plaintext length the file's size implies) leaves `out` untouched.
pub(crate) fn decrypt(
    identity: &StaticSecret,
    file: &[u8],
    out: &mut [u8],
) -> Result<usize, AgeError> {
    let header = parse_header(identity, file)?;
    let file_key = header.file_key.ok_or(AgeError::NoMatchingRecipient)?;
    // A constant-time comparison.
    header_hmac(&file_key, header.mac_input)?
        .verify_slice(&header.mac)
        .map_err(|_| AgeError::HeaderMacMismatch)?;

    let payload = header.payload;
    let (nonce, sealed) = payload
        .split_first_chunk::<PAYLOAD_NONCE_LEN>()
        .ok_or(AgeError::Truncated)?;
    // Every chunk writes its sealed length less its tag, so this bounds what is written.
    let partial = sealed.len() % SEALED_CHUNK_LEN;
    let needed = (sealed.len() / SEALED_CHUNK_LEN) * CHUNK_LEN + partial.saturating_sub(TAG_LEN);
    let Some(out) = out.get_mut(..needed) else {
        return Err(output_too_small(needed));
    };
    let cipher = payload_cipher(&file_key, nonce)?;
    let opened = open_payload(&cipher, sealed, out);
    if opened.is_err() {
        out.zeroize();
    }
    opened
}

/// Opens the payload's chunks (after the nonce) into `out`, which is exactly as long as the
/// plaintext the payload's length implies. Chunk boundaries follow from lengths alone: every
/// chunk but the last is full, so a full chunk with more bytes after it is a middle one.
fn open_payload(
    cipher: &ChaCha20Poly1305,
    mut sealed: &[u8],
    out: &mut [u8],
) -> Result<usize, AgeError> {
    let mut written = 0;
    let mut counter: u64 = 0;
    while sealed.len() > SEALED_CHUNK_LEN {
        let (chunk, rest) = sealed.split_at(SEALED_CHUNK_LEN);
        let target = out
            .get_mut(written..written + CHUNK_LEN)
            .ok_or(AgeError::Internal)?;
        if !open_chunk(cipher, counter, false, chunk, target) {
            // A final chunk with bytes after it, or a chunk that does not authenticate.
            return Err(if open_chunk(cipher, counter, true, chunk, target) {
                AgeError::TrailingData
            } else {
                AgeError::PayloadTampered
            });
        }
        written += CHUNK_LEN;
        sealed = rest;
        counter += 1;
    }
    // What is left must be the final chunk: at least a tag, and empty only if it is the only
    // chunk (an empty plaintext).
    if sealed.len() < TAG_LEN {
        return Err(AgeError::Truncated);
    }
    if sealed.len() == TAG_LEN && counter > 0 {
        return Err(AgeError::PayloadTampered);
    }
    let plain_len = sealed.len() - TAG_LEN;
    let target = out
        .get_mut(written..written + plain_len)
        .ok_or(AgeError::Internal)?;
    if open_chunk(cipher, counter, true, sealed, target) {
        return Ok(written + plain_len);
    }
    // A full chunk that opens as a middle one: the file was cut at a chunk boundary.
    let middle =
        sealed.len() == SEALED_CHUNK_LEN && open_chunk(cipher, counter, false, sealed, target);
    Err(if middle {
        AgeError::Truncated
    } else {
        AgeError::PayloadTampered
    })
}

/// Opens one sealed chunk into `out` (its length less the tag). ChaCha20-Poly1305 checks the
/// tag before it writes: when this returns false, `out` was not written.
fn open_chunk(
    cipher: &ChaCha20Poly1305,
    counter: u64,
    last: bool,
    sealed: &[u8],
    out: &mut [u8],
) -> bool {
    let Some((ciphertext, tag)) = sealed.split_last_chunk::<TAG_LEN>() else {
        return false;
    };
    let Ok(buffer) = InOutBuf::new(ciphertext, out) else {
        return false;
    };
    let nonce = chunk_nonce(counter, last);
    cipher
        .decrypt_inout_detached((&nonce).into(), &[], buffer, tag.into())
        .is_ok()
}

/// What the header parse found: the file key if a stanza opened, the MAC and what it covers,
/// and the payload after the header.
struct Header<'a> {
    file_key: Option<Zeroizing<[u8; FILE_KEY_LEN]>>,
    mac_input: &'a [u8],
    mac: [u8; 32],
    payload: &'a [u8],
}

/// Parses the whole header and unwraps the file key with `identity` from the first X25519
/// stanza that opens. Every stanza is checked against the grammar, whatever its type.
fn parse_header<'a>(identity: &StaticSecret, file: &'a [u8]) -> Result<Header<'a>, AgeError> {
    if !file.starts_with(VERSION_LINE) {
        return Err(if !file.is_empty() && VERSION_LINE.starts_with(file) {
            AgeError::Truncated
        } else {
            AgeError::NotAnAgeFile
        });
    }
    let our_public = PublicKey::from(identity);
    let mut reader = Reader {
        bytes: file,
        pos: VERSION_LINE.len(),
    };
    let mut stanzas = 0usize;
    let mut scrypt = false;
    let mut file_key = None;
    loop {
        let line_start = reader.pos;
        let line = reader.line()?;
        if let Some(mac_text) = line.strip_prefix(MAC_PREFIX) {
            let mac = decode_32(mac_text).ok_or(AgeError::MalformedHeader)?;
            if stanzas == 0 || (scrypt && stanzas > 1) {
                return Err(AgeError::MalformedHeader);
            }
            let mac_end = line_start + MAC_PREFIX.len() - 1;
            return Ok(Header {
                file_key,
                mac_input: file.get(..mac_end).ok_or(AgeError::Internal)?,
                mac,
                payload: file.get(reader.pos..).ok_or(AgeError::Internal)?,
            });
        }
        let arguments = line
            .strip_prefix(STANZA_PREFIX)
            .ok_or(AgeError::MalformedHeader)?;
        stanzas += 1;
        let (kind, second, count) = stanza_arguments(arguments)?;
        let (first_body_line, body_lines) = read_body(&mut reader)?;
        if kind == SCRYPT_TYPE {
            scrypt = true;
        } else if kind == X25519_TYPE {
            // The spec's checks, before any decryption: two arguments, a canonical 32-byte
            // share, a 32-byte body.
            if count != 2 || body_lines != 1 {
                return Err(AgeError::MalformedHeader);
            }
            let share = decode_32(second).ok_or(AgeError::MalformedHeader)?;
            let wrapped = decode_32(first_body_line).ok_or(AgeError::MalformedHeader)?;
            if file_key.is_none() {
                file_key = unwrap_file_key(identity, &our_public, &share, &wrapped)?;
            }
        }
    }
}

/// Checks a stanza's arguments (one or more, separated by single spaces, each of visible ASCII
/// characters) and returns the first, the second (empty if none) and how many there are.
fn stanza_arguments(arguments: &[u8]) -> Result<(&[u8], &[u8], usize), AgeError> {
    let mut kind: &[u8] = &[];
    let mut second: &[u8] = &[];
    let mut count = 0;
    for argument in arguments.split(|&byte| byte == b' ') {
        if argument.is_empty() || !argument.iter().all(|byte| (0x21..=0x7e).contains(byte)) {
            return Err(AgeError::MalformedHeader);
        }
        match count {
            0 => kind = argument,
            1 => second = argument,
            _ => {}
        }
        count += 1;
    }
    Ok((kind, second, count))
}

/// Reads a stanza body: lines of 64 base64 characters ended by a shorter (possibly empty)
/// line. A full line is 48 bytes, so each line decodes on its own and canonical base64 is
/// checked without buffering the body. Returns the first line and the number of lines.
fn read_body<'a>(reader: &mut Reader<'a>) -> Result<(&'a [u8], usize), AgeError> {
    let mut scratch = [0u8; BODY_COLUMNS / 4 * 3];
    let mut next_line = || {
        let line = reader.line()?;
        if line.len() > BODY_COLUMNS || Base64Unpadded::decode(line, &mut scratch).is_err() {
            return Err(AgeError::MalformedHeader);
        }
        Ok(line)
    };
    let first = next_line()?;
    let mut line = first;
    let mut lines = 1;
    while line.len() == BODY_COLUMNS {
        line = next_line()?;
        lines += 1;
    }
    Ok((first, lines))
}

/// Decodes canonical unpadded base64 of exactly 32 bytes.
fn decode_32(text: &[u8]) -> Option<[u8; 32]> {
    let mut bytes = [0u8; 32];
    if text.len() != BASE64_32_LEN {
        return None;
    }
    let decoded = Base64Unpadded::decode(text, &mut bytes).ok()?.len();
    (decoded == 32).then_some(bytes)
}

/// The key that wraps the file key for one X25519 stanza.
fn wrap_key(
    share: &[u8; 32],
    recipient: &[u8; 32],
    shared_secret: &[u8; 32],
) -> Result<Zeroizing<[u8; 32]>, AgeError> {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(share);
    salt[32..].copy_from_slice(recipient);
    hkdf_sha256(&salt, shared_secret, X25519_INFO)
}

/// The X25519 stanza's body: the file key sealed under the wrap key with a zero nonce.
fn wrap_file_key(
    share: &[u8; 32],
    recipient: &[u8; 32],
    shared_secret: &[u8; 32],
    file_key: &[u8; FILE_KEY_LEN],
) -> Result<[u8; FILE_KEY_LEN + TAG_LEN], AgeError> {
    let key = wrap_key(share, recipient, shared_secret)?;
    let mut body = [0u8; FILE_KEY_LEN + TAG_LEN];
    let (sealed, tag_out) = body.split_at_mut(FILE_KEY_LEN);
    let buffer = InOutBuf::new(file_key, sealed).map_err(|_| AgeError::Internal)?;
    let tag = ChaCha20Poly1305::new((&*key).into())
        .encrypt_inout_detached((&[0u8; 12]).into(), &[], buffer)
        .map_err(|_| AgeError::Internal)?;
    tag_out.copy_from_slice(&tag);
    Ok(body)
}

/// The file key from one X25519 stanza, or `None` if it is not for `identity`. A low-order
/// share (an all-zero shared secret) is an error, as the spec requires.
fn unwrap_file_key(
    identity: &StaticSecret,
    our_public: &PublicKey,
    share: &[u8; 32],
    wrapped: &[u8; FILE_KEY_LEN + TAG_LEN],
) -> Result<Option<Zeroizing<[u8; FILE_KEY_LEN]>>, AgeError> {
    let shared = identity.diffie_hellman(&PublicKey::from(*share));
    if !shared.was_contributory() {
        return Err(AgeError::MalformedHeader);
    }
    let key = wrap_key(share, our_public.as_bytes(), shared.as_bytes())?;
    let (sealed, tag) = wrapped.split_at(FILE_KEY_LEN);
    let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| AgeError::Internal)?;
    let mut file_key = Zeroizing::new([0u8; FILE_KEY_LEN]);
    let buffer = InOutBuf::new(sealed, file_key.as_mut_slice()).map_err(|_| AgeError::Internal)?;
    let opened = ChaCha20Poly1305::new((&*key).into())
        .decrypt_inout_detached((&[0u8; 12]).into(), &[], buffer, tag.into())
        .is_ok();
    Ok(opened.then_some(file_key))
}

/// HMAC-SHA256 keyed for the header MAC, fed the header through its "---".
fn header_hmac(file_key: &[u8; FILE_KEY_LEN], header: &[u8]) -> Result<Hmac<Sha256>, AgeError> {
    let key = hkdf_sha256(&[], file_key, HEADER_INFO)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_slice()).map_err(|_| AgeError::Internal)?;
    mac.update(header);
    Ok(mac)
}

/// The payload's cipher: its key derives from the file key, salted with the payload nonce.
fn payload_cipher(
    file_key: &[u8; FILE_KEY_LEN],
    nonce: &[u8; PAYLOAD_NONCE_LEN],
) -> Result<ChaCha20Poly1305, AgeError> {
    let key = hkdf_sha256(nonce, file_key, PAYLOAD_INFO)?;
    Ok(ChaCha20Poly1305::new((&*key).into()))
}

/// HKDF-SHA256 (RFC 5869) to one 32-byte key.
fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8]) -> Result<Zeroizing<[u8; 32]>, AgeError> {
    let mut key = Zeroizing::new([0u8; 32]);
    // HKDF-Expand refuses only outputs longer than 255 hash lengths; 32 bytes is one.
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, key.as_mut_slice())
        .map_err(|_| AgeError::Internal)?;
    Ok(key)
}

/// The STREAM nonce of one chunk: an 11-byte big-endian counter, then 1 on the final chunk.
fn chunk_nonce(counter: u64, last: bool) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[3..11].copy_from_slice(&counter.to_be_bytes());
    nonce[11] = u8::from(last);
    nonce
}

fn output_too_small(needed: usize) -> AgeError {
    AgeError::OutputTooSmall {
        needed: u64::try_from(needed).unwrap_or(u64::MAX),
    }
}

/// Why a string is not an X25519 age recipient. Host side: it says what was wrong with what
/// the operator gave, and never repeats the string's data part (it might be a secret key).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecipientError {
    /// Not Bech32 at all: no separator, a character outside the alphabet, too short or long.
    #[error(
        "not an age recipient: one is `age1` followed by 58 lower-case letters and digits, as \
         age-keygen prints it"
    )]
    NotBech32,
    /// Upper- and lower-case letters mixed; Bech32 allows one case only.
    #[error(
        "the recipient mixes upper- and lower-case letters, which Bech32 forbids: write it in \
         lower case, as age-keygen prints it"
    )]
    MixedCase,
    /// The Bech32 checksum does not match (a Bech32m string fails it too).
    #[error(
        "the recipient's checksum does not match: a character is mistyped, missing or swapped; \
         copy it again"
    )]
    BadChecksum,
    /// The string is an age identity: a secret key.
    #[error(
        "this is an age identity, a secret key (`AGE-SECRET-KEY-1…`), not a recipient: pass its \
         public `age1…` recipient (age-keygen's `# public key:` line, or `age-keygen -y`) and \
         keep the identity secret"
    )]
    SecretKey,
    /// Valid Bech32 of another kind (a post-quantum, plugin or tag recipient, or no age string).
    #[error(
        "a `{hrp}1…` string is not an X25519 age recipient: keyward encrypts only to `age1…` \
         recipients"
    )]
    WrongKind {
        /// The human-readable part found, in lower case.
        hrp: String,
    },
    /// An `age1…` string whose data is not 32 bytes.
    #[error("the recipient holds {bytes} bytes; an X25519 age recipient holds 32")]
    WrongLength {
        /// The bytes found.
        bytes: usize,
    },
    /// The last character carries non-zero padding bits: not the canonical encoding.
    #[error(
        "the recipient is not in canonical form (its last character has non-zero padding bits): \
         copy it again from age-keygen's output"
    )]
    NotCanonical,
    /// A low-order X25519 point: every shared secret with it is zero, known to anyone. Parses
    /// (it is 32 bytes), and the signer refuses to encrypt to it.
    #[error(
        "the recipient is a low-order X25519 point (its shared secret is zero, known to anyone): \
         encrypt to a real `age1…` recipient, as age-keygen prints it"
    )]
    LowOrder,
}

/// The `age1…` recipient string of an X25519 public key: Bech32 (not Bech32m), lower case.
pub(crate) fn recipient_string(public: &[u8; 32]) -> String {
    public
        .iter()
        .copied()
        .bytes_to_fes()
        .with_checksum::<Bech32>(&RECIPIENT_HRP)
        .chars()
        .collect()
}

/// The X25519 public key of an `age1…` recipient string. Upper case is accepted as Bech32
/// requires; mixed case is not. No length limit beyond Bech32's checksum range, as age's
/// Bech32 has none (a recipient is 62 characters).
pub(crate) fn parse_recipient(text: &str) -> Result<[u8; 32], RecipientError> {
    // An identity (X25519 or post-quantum, `AGE-SECRET-KEY-PQ-1…`) pasted where a recipient
    // belongs: say so before anything else.
    if text
        .get(..IDENTITY_HRP.len())
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(IDENTITY_HRP.as_str()))
    {
        return Err(RecipientError::SecretKey);
    }
    let unchecked = UncheckedHrpstring::new(text).map_err(|error| match error {
        UncheckedHrpstringError::Char(CharError::MixedCase)
        | UncheckedHrpstringError::Hrp(bech32::primitives::hrp::Error::MixedCase) => {
            RecipientError::MixedCase
        }
        _ => RecipientError::NotBech32,
    })?;
    let hrp = unchecked.hrp();
    let wrong_kind = || RecipientError::WrongKind {
        hrp: hrp.to_lowercase(),
    };
    match unchecked.validate_checksum::<Bech32>() {
        Ok(()) => {}
        // Longer than Bech32's checksum covers: another kind (post-quantum recipients are
        // about 2000 characters), or not Bech32.
        Err(ChecksumError::CodeLength(_)) if hrp != RECIPIENT_HRP => return Err(wrong_kind()),
        Err(ChecksumError::InvalidResidue) => return Err(RecipientError::BadChecksum),
        Err(_) => return Err(RecipientError::NotBech32),
    }
    if hrp != RECIPIENT_HRP {
        return Err(wrong_kind());
    }
    let checked = unchecked.remove_checksum::<Bech32>();
    let bytes = checked.byte_iter().len();
    if bytes != 32 {
        return Err(RecipientError::WrongLength { bytes });
    }
    checked
        .validate_segwit_padding()
        .map_err(|_| RecipientError::NotCanonical)?;
    let mut public = [0u8; 32];
    for (byte, decoded) in public.iter_mut().zip(checked.byte_iter()) {
        *byte = decoded;
    }
    Ok(public)
}

/// The binary age file in `text`: a binary file (it starts with the version line) as it is,
/// an ASCII-armored one decoded. The armor is the strict PEM form age writes
/// (`-----BEGIN AGE ENCRYPTED FILE-----`, padded canonical base64 in lines of 64 characters
/// with a shorter or full last line, `-----END AGE ENCRYPTED FILE-----`); line feeds or CRLF,
/// and whitespace only before and after the block.
pub(crate) fn dearmor(text: &[u8]) -> Result<Vec<u8>, AgeError> {
    if text.starts_with(VERSION_LINE) {
        return Ok(text.to_vec());
    }
    let block = text.trim_ascii();
    if !block.starts_with(ARMOR_BEGIN) {
        // Something PEM-like (a boundary line, in any case, or one after other text) is
        // malformed armor; anything else is not age at all.
        let pem_like = block.starts_with(b"-----")
            || block
                .windows(PEM_BEGIN.len())
                .any(|window| window.eq_ignore_ascii_case(PEM_BEGIN));
        return Err(if pem_like {
            AgeError::MalformedArmor
        } else {
            AgeError::NotAnAgeFile
        });
    }
    let mut lines = block
        .split(|&byte| byte == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    if lines.next() != Some(ARMOR_BEGIN) {
        return Err(AgeError::MalformedArmor);
    }
    let mut encoded = Vec::with_capacity(block.len());
    let mut ended_short = false;
    let mut ended = false;
    for line in lines {
        if ended {
            // Anything after the end line (the block was trimmed, so this is not whitespace).
            return Err(AgeError::MalformedArmor);
        }
        if line == ARMOR_END {
            ended = true;
            continue;
        }
        // Only the last base64 line may be shorter than 64 characters, and not empty.
        if ended_short || line.is_empty() || line.len() > ARMOR_COLUMNS {
            return Err(AgeError::MalformedArmor);
        }
        ended_short = line.len() < ARMOR_COLUMNS;
        encoded.extend_from_slice(line);
    }
    if !ended {
        return Err(AgeError::MalformedArmor);
    }
    let mut decoded = vec![0u8; encoded.len() / 4 * 3];
    // Padded, canonical (base64ct rejects non-zero trailing bits), `=` only at the very end.
    let len = Base64::decode(&encoded, &mut decoded)
        .map_err(|_| AgeError::MalformedArmor)?
        .len();
    decoded.truncate(len);
    Ok(decoded)
}

/// Writes into the caller's buffer, which was checked to be long enough.
struct Writer<'a> {
    out: &'a mut [u8],
    len: usize,
}

impl Writer<'_> {
    /// The next `len` bytes of the buffer, now counted as written.
    fn take(&mut self, len: usize) -> Result<&mut [u8], AgeError> {
        let start = self.len;
        let end = start.checked_add(len).ok_or(AgeError::Internal)?;
        let region = self.out.get_mut(start..end).ok_or(AgeError::Internal)?;
        self.len = end;
        Ok(region)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), AgeError> {
        self.take(bytes.len())?.copy_from_slice(bytes);
        Ok(())
    }

    fn put_base64(&mut self, bytes: &[u8]) -> Result<(), AgeError> {
        let start = self.len;
        let region = self.out.get_mut(start..).ok_or(AgeError::Internal)?;
        let written = Base64Unpadded::encode(bytes, region)
            .map_err(|_| AgeError::Internal)?
            .len();
        self.len = start + written;
        Ok(())
    }

    fn written(&self) -> &[u8] {
        &self.out[..self.len]
    }
}

/// Reads the header line by line.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// The next line, without its line feed. A header that ends without one was cut short.
    fn line(&mut self) -> Result<&'a [u8], AgeError> {
        let rest = self.bytes.get(self.pos..).ok_or(AgeError::Internal)?;
        let end = rest
            .iter()
            .position(|&byte| byte == b'\n')
            .ok_or(AgeError::Truncated)?;
        self.pos += end + 1;
        Ok(&rest[..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    /// The plaintext lengths the round trips and the interop tests cover: empty, one byte, a
    /// partial chunk, exactly one chunk, one byte into a second chunk, three chunks.
    const SIZES: [usize; 6] = [0, 1, 65, CHUNK_LEN, CHUNK_LEN + 1, 150 * 1024];

    /// The spec's example X25519 identity and its recipient (C2SP age.md).
    const SPEC_IDENTITY: &str =
        "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX";
    const SPEC_RECIPIENT: &str = "age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj";

    fn bytes_from(seed: u8, label: &[u8]) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update([seed]);
        hash.update(label);
        hash.finalize().into()
    }

    fn randomness(seed: u8) -> AgeRandomness {
        let file_key: [u8; 16] = bytes_from(seed, b"file key")[..16].try_into().unwrap();
        let payload_nonce: [u8; 16] = bytes_from(seed, b"nonce")[..16].try_into().unwrap();
        AgeRandomness {
            ephemeral_secret: Zeroizing::new(bytes_from(seed, b"ephemeral")),
            file_key: Zeroizing::new(file_key),
            payload_nonce,
        }
    }

    fn identity(seed: u8) -> StaticSecret {
        StaticSecret::from(bytes_from(seed, b"identity"))
    }

    fn recipient(identity: &StaticSecret) -> [u8; 32] {
        PublicKey::from(identity).to_bytes()
    }

    fn plaintext(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from(i * 31 % 251).unwrap())
            .collect()
    }

    fn encrypt_to_vec(recipient: &[u8; 32], seed: u8, plaintext: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; encrypted_len(plaintext.len())];
        let len = encrypt(recipient, randomness(seed), plaintext, &mut out).unwrap();
        assert_eq!(len, out.len(), "encrypted_len is exact");
        out
    }

    /// Decrypts into a buffer of the file's length, prefilled with a marker; checks that
    /// nothing past the plaintext was touched and that a failure left no plaintext behind.
    fn decrypt_to_vec(identity: &StaticSecret, file: &[u8]) -> Result<Vec<u8>, AgeError> {
        let mut out = vec![0xa5u8; file.len()];
        match decrypt(identity, file, &mut out) {
            Ok(len) => {
                assert!(
                    out[len..].iter().all(|&byte| byte == 0xa5),
                    "wrote past the plaintext"
                );
                out.truncate(len);
                Ok(out)
            }
            Err(error) => {
                assert!(
                    out.iter().all(|&byte| byte == 0xa5 || byte == 0),
                    "a failed decryption left plaintext in the output ({error:?})"
                );
                Err(error)
            }
        }
    }

    /// The file key a seed's randomness encrypts with.
    fn file_key(seed: u8) -> [u8; 16] {
        *randomness(seed).file_key
    }

    /// The X25519 stanza (argument line and body line) of a file [`encrypt`] wrote.
    fn our_stanza(file: &[u8]) -> &[u8] {
        &file[VERSION_LINE.len()..ENCRYPTED_HEADER_LEN - (MAC_PREFIX.len() + BASE64_32_LEN + 1)]
    }

    fn base64(bytes: &[u8]) -> Vec<u8> {
        let mut text = vec![0u8; bytes.len().div_ceil(3) * 4];
        let len = Base64Unpadded::encode(bytes, &mut text).unwrap().len();
        text.truncate(len);
        text
    }

    /// A file with the header lines `stanzas` (between the version line and the MAC line), a
    /// correct MAC under `file_key`, then `payload` (nonce and chunks).
    fn with_stanzas(file_key: &[u8; 16], stanzas: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut file = VERSION_LINE.to_vec();
        file.extend_from_slice(stanzas);
        file.extend_from_slice(b"---");
        let mac = header_hmac(file_key, &file)
            .unwrap()
            .finalize()
            .into_bytes();
        file.push(b' ');
        file.extend_from_slice(&base64(&mac));
        file.push(b'\n');
        file.extend_from_slice(payload);
        file
    }

    /// A file whose payload is sealed chunk by chunk as given (plaintext, final flag), under the
    /// header and file key of `seed`'s encryption to `recipient`.
    fn with_chunks(recipient: &[u8; 32], seed: u8, chunks: &[(&[u8], bool)]) -> Vec<u8> {
        let mut file = encrypt_to_vec(recipient, seed, &[]);
        file.truncate(ENCRYPTED_HEADER_LEN + PAYLOAD_NONCE_LEN);
        let randomness = randomness(seed);
        let cipher = payload_cipher(&randomness.file_key, &randomness.payload_nonce).unwrap();
        for (counter, (plain, last)) in chunks.iter().enumerate() {
            let mut sealed = plain.to_vec();
            let nonce = chunk_nonce(u64::try_from(counter).unwrap(), *last);
            let tag = cipher
                .encrypt_inout_detached((&nonce).into(), &[], InOutBuf::from(sealed.as_mut_slice()))
                .unwrap();
            file.extend_from_slice(&sealed);
            file.extend_from_slice(&tag);
        }
        file
    }

    /// The same base64 with its last character's lowest padding bit set: the same bytes,
    /// encoded non-canonically.
    fn non_canonical(text: &[u8]) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut text = text.to_vec();
        let last = text.last_mut().unwrap();
        let index = ALPHABET.iter().position(|c| c == last).unwrap();
        assert_eq!(index & 1, 0, "already non-canonical");
        *last = ALPHABET[index | 1];
        text
    }

    // ---- round trips and the layout

    #[test]
    fn every_size_round_trips_and_encrypted_len_is_exact() {
        let identity = identity(1);
        for size in SIZES {
            let plain = plaintext(size);
            let file = encrypt_to_vec(&recipient(&identity), 2, &plain);
            let chunks = size.div_ceil(CHUNK_LEN).max(1);
            assert_eq!(file.len(), ENCRYPTED_HEADER_LEN + 16 + size + 16 * chunks);
            assert_eq!(decrypt_to_vec(&identity, &file), Ok(plain), "size {size}");
        }
    }

    #[test]
    fn the_header_has_the_layout_of_the_spec() {
        let identity = identity(1);
        let file = encrypt_to_vec(&recipient(&identity), 2, b"hello");
        let header = std::str::from_utf8(&file[..ENCRYPTED_HEADER_LEN]).unwrap();
        let lines: Vec<&str> = header.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], "age-encryption.org/v1");
        let share = lines[1].strip_prefix("-> X25519 ").unwrap();
        let ephemeral = StaticSecret::from(*randomness(2).ephemeral_secret);
        assert_eq!(
            share.as_bytes(),
            base64(PublicKey::from(&ephemeral).as_bytes())
        );
        assert_eq!(lines[2].len(), BASE64_32_LEN);
        assert_eq!(lines[3].len(), MAC_PREFIX.len() + BASE64_32_LEN);
        assert!(lines[3].starts_with("--- "));
        assert!(header.ends_with('\n'));
        assert_eq!(
            file[ENCRYPTED_HEADER_LEN..ENCRYPTED_HEADER_LEN + 16],
            randomness(2).payload_nonce
        );
    }

    #[test]
    fn encryption_is_a_function_of_the_randomness() {
        let to = recipient(&identity(1));
        let plain = plaintext(100);
        assert_eq!(
            encrypt_to_vec(&to, 2, &plain),
            encrypt_to_vec(&to, 2, &plain)
        );
        assert_ne!(
            encrypt_to_vec(&to, 2, &plain),
            encrypt_to_vec(&to, 3, &plain)
        );
    }

    #[test]
    fn decrypt_accepts_a_buffer_exactly_as_long_as_the_plaintext() {
        let identity = identity(1);
        for size in SIZES {
            let plain = plaintext(size);
            let file = encrypt_to_vec(&recipient(&identity), 2, &plain);
            let mut out = vec![0u8; size];
            assert_eq!(decrypt(&identity, &file, &mut out), Ok(size));
            assert_eq!(out, plain);
        }
    }

    #[test]
    fn a_short_output_is_refused_before_anything_is_written() {
        let identity = identity(1);
        let plain = plaintext(CHUNK_LEN + 1);
        let needed = encrypted_len(plain.len());
        let mut out = vec![0xa5u8; needed - 1];
        assert_eq!(
            encrypt(&recipient(&identity), randomness(2), &plain, &mut out),
            Err(AgeError::OutputTooSmall {
                needed: needed as u64
            })
        );
        assert!(out.iter().all(|&byte| byte == 0xa5));

        let file = encrypt_to_vec(&recipient(&identity), 2, &plain);
        let mut out = vec![0xa5u8; plain.len() - 1];
        assert_eq!(
            decrypt(&identity, &file, &mut out),
            Err(AgeError::OutputTooSmall {
                needed: plain.len() as u64
            })
        );
        assert!(out.iter().all(|&byte| byte == 0xa5));
    }

    #[test]
    fn errors_cross_the_pipe() {
        for error in [
            AgeError::NotAnAgeFile,
            AgeError::OutputTooSmall { needed: 70_000 },
            AgeError::PayloadTampered,
        ] {
            let mut buffer = [0u8; 16];
            let bytes = postcard::to_slice(&error, &mut buffer).unwrap();
            assert_eq!(postcard::from_bytes::<AgeError>(bytes), Ok(error));
        }
    }

    // ---- recipients and identities

    #[test]
    fn a_wrong_identity_finds_no_matching_recipient() {
        let file = encrypt_to_vec(&recipient(&identity(1)), 2, b"for key one");
        assert_eq!(
            decrypt_to_vec(&identity(9), &file),
            Err(AgeError::NoMatchingRecipient)
        );
    }

    #[test]
    fn low_order_recipients_are_refused() {
        // u = 0 and u = 1, the two points of order 8, and u = p - 1 (order 2 on the twist... a
        // low-order input all the same): every one makes the shared secret zero.
        let mut low_order: Vec<[u8; 32]> = vec![[0; 32]];
        let mut one = [0u8; 32];
        one[0] = 1;
        low_order.push(one);
        for hex in [
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ] {
            low_order.push(hex_bytes(hex).try_into().unwrap());
        }
        for point in low_order {
            let mut out = vec![0xa5u8; encrypted_len(4)];
            assert_eq!(
                encrypt(&point, randomness(2), b"data", &mut out),
                Err(AgeError::LowOrderRecipient),
                "{point:02x?}"
            );
            assert!(out.iter().all(|&byte| byte == 0xa5));
        }
    }

    #[test]
    fn a_low_order_share_in_a_file_is_malformed() {
        let seed = 2;
        let file = encrypt_to_vec(&recipient(&identity(1)), seed, b"data");
        let mut stanza = b"-> X25519 ".to_vec();
        stanza.extend_from_slice(&base64(&[0u8; 32]));
        stanza.push(b'\n');
        stanza.extend_from_slice(&our_stanza(&file)[10 + BASE64_32_LEN + 1..]);
        let forged = with_stanzas(&file_key(seed), &stanza, &file[ENCRYPTED_HEADER_LEN..]);
        assert_eq!(
            decrypt_to_vec(&identity(1), &forged),
            Err(AgeError::MalformedHeader)
        );
    }

    #[test]
    fn other_stanzas_and_other_recipients_are_skipped() {
        let seed = 2;
        let ours = identity(1);
        let plain = plaintext(70_000);
        let file = encrypt_to_vec(&recipient(&ours), seed, &plain);
        // The same file key wrapped for another key, with that key's randomness.
        let other = encrypt_to_vec(&recipient(&identity(7)), seed, &plain);
        let mut stanzas = b"-> grease 1 2 3\nQUJD\n".to_vec();
        stanzas.extend_from_slice(our_stanza(&other));
        stanzas.extend_from_slice(b"-> example.com/enigma arg\n");
        stanzas.extend_from_slice(&[b'A'; 64]);
        stanzas.extend_from_slice(b"\n\n");
        stanzas.extend_from_slice(our_stanza(&file));
        stanzas.extend_from_slice(b"-> x25519 lower-case-is-another-type\n\n");
        let multi = with_stanzas(&file_key(seed), &stanzas, &file[ENCRYPTED_HEADER_LEN..]);
        assert_eq!(decrypt_to_vec(&ours, &multi), Ok(plain.clone()));
        assert_eq!(decrypt_to_vec(&identity(7), &multi), Ok(plain));
        assert_eq!(
            decrypt_to_vec(&identity(8), &multi),
            Err(AgeError::NoMatchingRecipient)
        );
    }

    #[test]
    fn an_scrypt_stanza_must_be_alone() {
        let seed = 2;
        let file = encrypt_to_vec(&recipient(&identity(1)), seed, b"data");
        let scrypt =
            b"-> scrypt c2FsdHNhbHRzYWx0c2FsdA 10\nqRS0AMjdjPvZ/WT08U2KL4G+PIooA3hy38SvLpvaC1E\n";
        let mut both = our_stanza(&file).to_vec();
        both.extend_from_slice(scrypt);
        let mixed = with_stanzas(&file_key(seed), &both, &file[ENCRYPTED_HEADER_LEN..]);
        assert_eq!(
            decrypt_to_vec(&identity(1), &mixed),
            Err(AgeError::MalformedHeader)
        );
        // Alone, it is a passphrase file: not for this key.
        let alone = with_stanzas(&file_key(seed), scrypt, &file[ENCRYPTED_HEADER_LEN..]);
        assert_eq!(
            decrypt_to_vec(&identity(1), &alone),
            Err(AgeError::NoMatchingRecipient)
        );
    }

    // ---- the header

    #[test]
    fn every_bit_flip_in_the_header_is_refused() {
        let identity = identity(1);
        let file = encrypt_to_vec(&recipient(&identity), 2, b"the header is authenticated");
        for position in 0..ENCRYPTED_HEADER_LEN {
            for bit in 0..8 {
                let mut flipped = file.clone();
                flipped[position] ^= 1 << bit;
                let error = decrypt_to_vec(&identity, &flipped).expect_err("a flipped header bit");
                if position < VERSION_LINE.len() - 1 {
                    assert_eq!(error, AgeError::NotAnAgeFile, "byte {position} bit {bit}");
                }
            }
        }
    }

    #[test]
    fn a_changed_mac_or_header_is_a_mac_mismatch() {
        let seed = 2;
        let identity = identity(1);
        let file = encrypt_to_vec(&recipient(&identity), seed, b"data");
        // A bit of the MAC itself, re-encoded canonically.
        let mac_at = ENCRYPTED_HEADER_LEN - 1 - BASE64_32_LEN;
        let mut mac = decode_32(&file[mac_at..mac_at + BASE64_32_LEN]).unwrap();
        mac[5] ^= 0x10;
        let mut forged = file.clone();
        forged[mac_at..mac_at + BASE64_32_LEN].copy_from_slice(&base64(&mac));
        assert_eq!(
            decrypt_to_vec(&identity, &forged),
            Err(AgeError::HeaderMacMismatch)
        );
        // A stanza added after encryption, the MAC left as it was.
        let mut added = file[..VERSION_LINE.len()].to_vec();
        added.extend_from_slice(b"-> added\n\n");
        added.extend_from_slice(&file[VERSION_LINE.len()..]);
        assert_eq!(
            decrypt_to_vec(&identity, &added),
            Err(AgeError::HeaderMacMismatch)
        );
    }

    #[test]
    fn a_changed_wrapped_file_key_finds_no_matching_recipient() {
        let identity = identity(1);
        let file = encrypt_to_vec(&recipient(&identity), 2, b"data");
        let body_at = VERSION_LINE.len() + 10 + BASE64_32_LEN + 1;
        let mut body = decode_32(&file[body_at..body_at + BASE64_32_LEN]).unwrap();
        body[0] ^= 1;
        let mut forged = file.clone();
        forged[body_at..body_at + BASE64_32_LEN].copy_from_slice(&base64(&body));
        assert_eq!(
            decrypt_to_vec(&identity, &forged),
            Err(AgeError::NoMatchingRecipient)
        );
    }

    #[test]
    fn non_canonical_base64_is_malformed() {
        let seed = 2;
        let identity = identity(1);
        let file = encrypt_to_vec(&recipient(&identity), seed, b"data");
        let share_at = VERSION_LINE.len() + 10;
        let body_at = share_at + BASE64_32_LEN + 1;
        let mac_at = ENCRYPTED_HEADER_LEN - 1 - BASE64_32_LEN;
        for at in [share_at, body_at, mac_at] {
            let mut forged = file.clone();
            let text = non_canonical(&file[at..at + BASE64_32_LEN]);
            forged[at..at + BASE64_32_LEN].copy_from_slice(&text);
            assert_eq!(
                decrypt_to_vec(&identity, &forged),
                Err(AgeError::MalformedHeader),
                "at {at}"
            );
        }
        // Padding is not allowed in the header.
        let stanza = our_stanza(&file);
        let mut padded = stanza[..10 + BASE64_32_LEN].to_vec();
        padded.extend_from_slice(b"=\n");
        padded.extend_from_slice(&stanza[10 + BASE64_32_LEN + 1..]);
        let forged = with_stanzas(&file_key(seed), &padded, &file[ENCRYPTED_HEADER_LEN..]);
        assert_eq!(
            decrypt_to_vec(&identity, &forged),
            Err(AgeError::MalformedHeader)
        );
        // An unknown stanza's body is held to the same rule.
        let mut unknown = stanza.to_vec();
        unknown.extend_from_slice(b"-> other\n");
        unknown.extend_from_slice(&non_canonical(b"QUI"));
        unknown.push(b'\n');
        let forged = with_stanzas(&file_key(seed), &unknown, &file[ENCRYPTED_HEADER_LEN..]);
        assert_eq!(
            decrypt_to_vec(&identity, &forged),
            Err(AgeError::MalformedHeader)
        );
    }

    #[test]
    fn header_grammar_violations_are_malformed() {
        let seed = 2;
        let identity = identity(1);
        let file = encrypt_to_vec(&recipient(&identity), seed, b"data");
        let stanza = our_stanza(&file);
        let payload = &file[ENCRYPTED_HEADER_LEN..];
        let share = &stanza[10..10 + BASE64_32_LEN];
        let body = &stanza[10 + BASE64_32_LEN + 1..];
        let join = |parts: &[&[u8]]| parts.concat();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("no stanza", Vec::new()),
            ("double space", join(&[b"->  X25519 ", share, b"\n", body])),
            (
                "trailing space",
                join(&[b"-> X25519 ", share, b" \n", body]),
            ),
            ("no argument", join(&[b"->\n", body])),
            ("empty argument", join(&[b"-> \n", body])),
            (
                "extra argument",
                join(&[b"-> X25519 ", share, b" more\n", body]),
            ),
            ("missing share", join(&[b"-> X25519\n", body])),
            ("long share", join(&[b"-> X25519 ", share, b"AAAA\n", body])),
            (
                "short share",
                join(&[b"-> X25519 ", &share[..40], b"\n", body]),
            ),
            (
                "control character",
                join(&[b"-> X25519\t", share, b"\n", body]),
            ),
            (
                "non-ASCII",
                join(&[b"-> X25519 ", share, b" \xc3\xa9\n", body]),
            ),
            (
                "long body",
                join(&[b"-> X25519 ", share, b"\n", &body[..32], body]),
            ),
            (
                "long line",
                join(&[stanza, b"-> other\n", &[b'A'; 65], b"\n"]),
            ),
            (
                "no final line",
                join(&[stanza, b"-> other\n", &[b'A'; 64], b"\n"]),
            ),
            (
                "two short lines",
                join(&[stanza, b"-> other\nAAAA\nAAAA\n"]),
            ),
            ("CRLF", join(&[b"-> X25519 ", share, b"\r\n", body])),
            ("bad prefix", join(&[stanza, b"--> other\n\n"])),
            ("invalid body", join(&[stanza, b"-> other\nA*AA\n"])),
        ];
        for (name, stanzas) in cases {
            let forged = with_stanzas(&file_key(seed), &stanzas, payload);
            assert_eq!(
                decrypt_to_vec(&identity, &forged),
                Err(AgeError::MalformedHeader),
                "{name}"
            );
        }
        // The MAC line itself.
        let mac_at = ENCRYPTED_HEADER_LEN - 1 - BASE64_32_LEN;
        for (name, replace) in [
            ("no space", &b"---"[..]),
            ("two spaces", &b"---  "[..]),
            ("other dashes", &b"-- -"[..]),
        ] {
            let forged = join(&[&file[..mac_at - 4], replace, &file[mac_at..]]);
            assert_eq!(
                decrypt_to_vec(&identity, &forged),
                Err(AgeError::MalformedHeader),
                "{name}"
            );
        }
        // Another version, or none.
        for version in [
            &b"age-encryption.org/v2\n"[..],
            b"age-encryption.org/v1\r\n",
            b"",
        ] {
            let forged = join(&[version, &file[VERSION_LINE.len()..]]);
            assert_eq!(
                decrypt_to_vec(&identity, &forged),
                Err(AgeError::NotAnAgeFile)
            );
        }
    }

    // ---- the payload

    #[test]
    fn payload_bit_flips_are_tampering() {
        let identity = identity(1);
        let file = encrypt_to_vec(&recipient(&identity), 2, &plaintext(150 * 1024));
        let payload_at = ENCRYPTED_HEADER_LEN;
        let mut positions: Vec<usize> = (payload_at..payload_at + 48).collect();
        for chunk in 0..3 {
            let start = payload_at + 16 + chunk * SEALED_CHUNK_LEN;
            let end = (start + SEALED_CHUNK_LEN).min(file.len());
            positions.extend(start..start + 8);
            positions.extend(end - 24..end);
            positions.extend((start..end).step_by(4099));
        }
        for position in positions {
            let mut flipped = file.clone();
            flipped[position] ^= 0x40;
            assert_eq!(
                decrypt_to_vec(&identity, &flipped),
                Err(AgeError::PayloadTampered),
                "byte {position}"
            );
        }
    }

    #[test]
    fn truncation_is_refused_at_every_chunk_boundary_and_inside_chunks() {
        let identity = identity(1);
        let plain = plaintext(150 * 1024);
        let file = encrypt_to_vec(&recipient(&identity), 2, &plain);
        let payload_at = ENCRYPTED_HEADER_LEN + 16;
        // Inside the header and the payload nonce: every length.
        for len in 1..payload_at {
            assert_eq!(
                decrypt_to_vec(&identity, &file[..len]),
                Err(AgeError::Truncated),
                "cut at {len}"
            );
        }
        // At each chunk boundary, and within a tag's length after it.
        for boundary in [
            payload_at,
            payload_at + SEALED_CHUNK_LEN,
            payload_at + 2 * SEALED_CHUNK_LEN,
        ] {
            for len in boundary..boundary + TAG_LEN {
                assert_eq!(
                    decrypt_to_vec(&identity, &file[..len]),
                    Err(AgeError::Truncated),
                    "cut at {len}"
                );
            }
        }
        // Inside a chunk, a cut cannot be told from damage: it does not authenticate.
        for len in [
            payload_at + TAG_LEN,
            payload_at + 1000,
            payload_at + SEALED_CHUNK_LEN - 1,
            payload_at + SEALED_CHUNK_LEN + 5000,
            file.len() - 1,
        ] {
            assert_eq!(
                decrypt_to_vec(&identity, &file[..len]),
                Err(AgeError::PayloadTampered),
                "cut at {len}"
            );
        }
        assert_eq!(decrypt_to_vec(&identity, &file), Ok(plain));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let identity = identity(1);
        for (size, expected) in [
            // After a full final chunk the end is known: the chunk opens as a final one.
            (CHUNK_LEN, AgeError::TrailingData),
            (2 * CHUNK_LEN, AgeError::TrailingData),
            // After a shorter one, the bytes become part of the last chunk, which fails.
            (0, AgeError::PayloadTampered),
            (65, AgeError::PayloadTampered),
            (CHUNK_LEN + 1, AgeError::PayloadTampered),
        ] {
            let file = encrypt_to_vec(&recipient(&identity), 2, &plaintext(size));
            for extra in [1, 15, 16, 100, SEALED_CHUNK_LEN] {
                let mut longer = file.clone();
                longer.extend(std::iter::repeat_n(0x42, extra));
                assert_eq!(
                    decrypt_to_vec(&identity, &longer),
                    Err(expected),
                    "size {size} extra {extra}"
                );
            }
        }
    }

    /// A case of the final-flag test: its name, the chunks to seal (plaintext, final flag),
    /// what decryption gives.
    type FlagCase<'a> = (&'a str, Vec<(&'a [u8], bool)>, Result<Vec<u8>, AgeError>);

    #[test]
    fn the_final_flag_must_be_on_the_last_chunk_only() {
        let identity = identity(1);
        let to = recipient(&identity);
        let full = plaintext(CHUNK_LEN);
        let short = plaintext(10);
        let cases: [FlagCase; 7] = [
            (
                "well formed",
                vec![(&full, false), (&short, true)],
                Ok([&full[..], &short].concat()),
            ),
            (
                "full final chunk",
                vec![(&full, false), (&full, true)],
                Ok([&full[..], &full].concat()),
            ),
            (
                "no final flag, short",
                vec![(&short, false)],
                Err(AgeError::PayloadTampered),
            ),
            (
                "no final flag, full",
                vec![(&full, false)],
                Err(AgeError::Truncated),
            ),
            (
                "no final flag on two",
                vec![(&full, false), (&full, false)],
                Err(AgeError::Truncated),
            ),
            (
                "final flag first",
                vec![(&full, true), (&short, true)],
                Err(AgeError::TrailingData),
            ),
            (
                "empty final chunk after data",
                vec![(&full, false), (&[], true)],
                Err(AgeError::PayloadTampered),
            ),
        ];
        for (name, chunks, expected) in cases {
            let file = with_chunks(&to, 2, &chunks);
            assert_eq!(decrypt_to_vec(&identity, &file), expected, "{name}");
        }
    }

    #[test]
    fn a_failed_decryption_wipes_the_chunks_it_had_opened() {
        let identity = identity(1);
        let plain = plaintext(3 * CHUNK_LEN);
        let mut file = encrypt_to_vec(&recipient(&identity), 2, &plain);
        let last = file.len() - 1;
        file[last] ^= 1;
        let mut out = vec![0xa5u8; plain.len()];
        assert_eq!(
            decrypt(&identity, &file, &mut out),
            Err(AgeError::PayloadTampered)
        );
        // The first two chunks opened into `out` before the third failed; all of it is wiped.
        assert!(out.iter().all(|&byte| byte == 0));
        // And a final chunk followed by bytes is wiped too, though it opened.
        let mut longer = encrypt_to_vec(&recipient(&identity), 2, &plaintext(CHUNK_LEN));
        longer.push(0);
        let mut out = vec![0xa5u8; CHUNK_LEN + 1];
        assert_eq!(
            decrypt(&identity, &longer, &mut out),
            Err(AgeError::TrailingData)
        );
        assert!(out[..CHUNK_LEN].iter().all(|&byte| byte == 0));
        assert_eq!(
            out[CHUNK_LEN], 0xa5,
            "past what the file could fill: untouched"
        );
    }

    // ---- ASCII armor

    /// Armors a binary file as `age -a` does.
    fn armor(file: &[u8], line_end: &str) -> Vec<u8> {
        let mut encoded = vec![0u8; file.len().div_ceil(3) * 4];
        let encoded = Base64::encode(file, &mut encoded).unwrap();
        let mut text = format!("-----BEGIN AGE ENCRYPTED FILE-----{line_end}");
        for line in encoded.as_bytes().chunks(64) {
            text.push_str(std::str::from_utf8(line).unwrap());
            text.push_str(line_end);
        }
        text.push_str(&format!("-----END AGE ENCRYPTED FILE-----{line_end}"));
        text.into_bytes()
    }

    #[test]
    fn dearmor_passes_binary_through_and_decodes_armor() {
        let identity = identity(1);
        for size in [0, 1, 65, 1000] {
            let file = encrypt_to_vec(&recipient(&identity), 2, &plaintext(size));
            assert_eq!(dearmor(&file), Ok(file.clone()));
            assert_eq!(dearmor(&armor(&file, "\n")), Ok(file.clone()));
            assert_eq!(dearmor(&armor(&file, "\r\n")), Ok(file.clone()));
            let mut spaced = b" \n\t\r\n".to_vec();
            spaced.extend_from_slice(&armor(&file, "\n"));
            spaced.extend_from_slice(b"\n \n");
            assert_eq!(dearmor(&spaced), Ok(file.clone()));
        }
    }

    #[test]
    fn dearmor_is_strict() {
        // 301 bytes: the armor ends in "==".
        let file = encrypt_to_vec(&recipient(&identity(1)), 2, &plaintext(101));
        let good = String::from_utf8(armor(&file, "\n")).unwrap();
        assert!(good.contains("==\n"));
        assert_eq!(dearmor(good.as_bytes()), Ok(file.clone()));
        let lines: Vec<&str> = good.lines().collect();
        let rejoin = |lines: &[&str]| lines.join("\n").into_bytes();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("no end line", rejoin(&lines[..lines.len() - 1])),
            ("garbage after", [&good, "x\n"].concat().into_bytes()),
            ("garbage before", ["x\n", &good].concat().into_bytes()),
            (
                "short middle line",
                rejoin(&[
                    lines[0],
                    &lines[1][..60],
                    &lines[1][60..],
                    &lines[2..].join("\n"),
                ]),
            ),
            (
                "long line",
                rejoin(&[
                    lines[0],
                    &[lines[1], "AAAA"].concat(),
                    &lines[2..].join("\n"),
                ]),
            ),
            (
                "empty line",
                rejoin(&[lines[0], "", &lines[1..].join("\n")]),
            ),
            (
                "space at a line's end",
                rejoin(&[lines[0], &[lines[1], " "].concat(), &lines[2..].join("\n")]),
            ),
            (
                "lower-case label",
                good.replace("BEGIN AGE", "BEGIN age").into_bytes(),
            ),
            ("no padding", good.replace("==\n", "\n").into_bytes()),
            ("short padding", good.replace("==\n", "=\n").into_bytes()),
            (
                "padding on its own line",
                good.replace("==\n", "\n==\n").into_bytes(),
            ),
        ];
        for (name, text) in cases {
            assert_eq!(dearmor(&text), Err(AgeError::MalformedArmor), "{name}");
        }
        assert_eq!(dearmor(b"hello"), Err(AgeError::NotAnAgeFile));
    }

    // ---- Bech32

    /// An `AGE-SECRET-KEY-1…` identity's scalar (tests only: keyward never parses identities).
    fn parse_identity(text: &str) -> StaticSecret {
        let unchecked = UncheckedHrpstring::new(text.trim()).unwrap();
        assert!(unchecked.hrp() == IDENTITY_HRP, "not an X25519 identity");
        let checked = unchecked.validate_and_remove_checksum::<Bech32>().unwrap();
        let bytes: Vec<u8> = checked.byte_iter().collect();
        StaticSecret::from(<[u8; 32]>::try_from(bytes).unwrap())
    }

    #[test]
    fn recipient_strings_round_trip() {
        for seed in 0..20 {
            let public = recipient(&identity(seed));
            let text = recipient_string(&public);
            assert!(text.starts_with("age1") && text.len() == 62, "{text}");
            assert_eq!(text, text.to_lowercase());
            assert_eq!(parse_recipient(&text), Ok(public));
            assert_eq!(parse_recipient(&text.to_uppercase()), Ok(public));
        }
    }

    #[test]
    fn the_spec_example_identity_has_the_spec_example_recipient() {
        let identity = parse_identity(SPEC_IDENTITY);
        assert_eq!(recipient_string(&recipient(&identity)), SPEC_RECIPIENT);
        assert_eq!(parse_recipient(SPEC_RECIPIENT), Ok(recipient(&identity)));
    }

    #[test]
    fn each_recipient_error() {
        let text = recipient_string(&recipient(&identity(1)));
        let mut mixed = text.clone();
        mixed.replace_range(10..11, &text[10..11].to_uppercase());
        assert_ne!(mixed, text, "the character changed case");
        let mut typo = text.clone().into_bytes();
        typo[20] = if typo[20] == b'q' { b'p' } else { b'q' };
        let encode = |hrp: &str, data: &[u8]| {
            data.iter()
                .copied()
                .bytes_to_fes()
                .with_checksum::<Bech32>(&Hrp::parse(hrp).unwrap())
                .chars()
                .collect::<String>()
        };
        let bech32m: String = recipient(&identity(1))
            .iter()
            .copied()
            .bytes_to_fes()
            .with_checksum::<bech32::Bech32m>(&RECIPIENT_HRP)
            .chars()
            .collect();
        // 52 characters carry 260 bits: 32 bytes and 4 padding bits, here set.
        let fes: Vec<bech32::Fe32> = recipient(&identity(1))
            .iter()
            .copied()
            .bytes_to_fes()
            .collect();
        let mut padded = fes.clone();
        let last = padded.pop().unwrap();
        padded.push(bech32::Fe32::try_from(last.to_u8() | 1).unwrap());
        let non_canonical: String = padded
            .into_iter()
            .with_checksum::<Bech32>(&RECIPIENT_HRP)
            .chars()
            .collect();
        let cases: Vec<(&str, String, RecipientError)> = vec![
            ("empty", String::new(), RecipientError::NotBech32),
            ("no separator", "agexyz".into(), RecipientError::NotBech32),
            (
                "bad character",
                text.replacen('q', "b", 1),
                RecipientError::NotBech32,
            ),
            (
                "trailing newline",
                format!("{text}\n"),
                RecipientError::NotBech32,
            ),
            ("mixed case", mixed, RecipientError::MixedCase),
            (
                "typo",
                String::from_utf8(typo).unwrap(),
                RecipientError::BadChecksum,
            ),
            ("bech32m", bech32m, RecipientError::BadChecksum),
            ("identity", SPEC_IDENTITY.into(), RecipientError::SecretKey),
            (
                "lower-case identity",
                SPEC_IDENTITY.to_lowercase(),
                RecipientError::SecretKey,
            ),
            (
                "post-quantum identity",
                "AGE-SECRET-KEY-PQ-1HZLGZUPT4ETPKDEV8HSGFDCYZ4E522W0A7PU2LHT8EH9W6YLNC3SW78XKG"
                    .into(),
                RecipientError::SecretKey,
            ),
            (
                "other kind",
                encode("age1pq", &[7; 32]),
                RecipientError::WrongKind {
                    hrp: "age1pq".into(),
                },
            ),
            (
                "bitcoin address",
                "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4".into(),
                RecipientError::WrongKind { hrp: "bc".into() },
            ),
            (
                "short",
                encode("age", &[7; 31]),
                RecipientError::WrongLength { bytes: 31 },
            ),
            (
                "long",
                encode("age", &[7; 33]),
                RecipientError::WrongLength { bytes: 33 },
            ),
            ("padding bits", non_canonical, RecipientError::NotCanonical),
        ];
        for (name, text, expected) in cases {
            if name == "bad character" {
                assert_ne!(text, recipient_string(&recipient(&identity(1))));
            }
            assert_eq!(parse_recipient(&text), Err(expected), "{name}: {text:?}");
        }
    }

    #[test]
    fn recipient_errors_never_repeat_the_data() {
        let error = parse_recipient(SPEC_IDENTITY).unwrap_err().to_string();
        assert!(!error.to_uppercase().contains("GFPYYSJZ"), "{error}");
        let wrong = parse_recipient("zz1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4").unwrap_err();
        assert!(!wrong.to_string().contains("qw508d6"), "{wrong}");
    }

    // ---- the C2SP test vectors

    fn hex_bytes(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The C2SP testkit vectors that apply to an X25519 identity (tests/data/age-testkit, see
    /// its README): each must succeed with the expected payload hash or fail in the expected
    /// way. Our errors are finer than the testkit's classes in places; each class maps to a set.
    #[test]
    fn the_c2sp_test_vectors() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/age-testkit");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_none())
            .collect();
        names.sort();
        assert!(names.len() >= 80, "the vendored vectors are missing");
        let mut successes = 0;
        for path in names {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let vector = std::fs::read(&path).unwrap();
            let split = vector.windows(2).position(|w| w == b"\n\n").unwrap();
            let (fields, file) = (
                std::str::from_utf8(&vector[..split]).unwrap(),
                &vector[split + 2..],
            );
            let field = |key: &str| {
                fields
                    .lines()
                    .filter_map(|line| line.strip_prefix(key)?.strip_prefix(": "))
                    .collect::<Vec<_>>()
            };
            assert!(
                field("compressed").is_empty(),
                "{name}: compressed vectors are not vendored"
            );
            let identities: Vec<&str> = field("identity")
                .into_iter()
                .filter(|id| id.starts_with("AGE-SECRET-KEY-1"))
                .collect();
            assert!(identities.len() <= 1, "{name}");
            let identity = identities
                .first()
                .map_or_else(|| identity(0), |id| parse_identity(id));
            let expect = field("expect")[0];
            let armored = field("armored") == ["yes"];
            let binary = if armored {
                dearmor(file)
            } else {
                Ok(file.to_vec())
            };
            let result = binary.and_then(|binary| decrypt_to_vec(&identity, &binary));
            match (expect, &result) {
                ("success", Ok(plain)) => {
                    let hash = Sha256::digest(plain);
                    assert_eq!(hash.as_slice(), hex_bytes(field("payload")[0]), "{name}");
                    successes += 1;
                }
                ("no match", Err(AgeError::NoMatchingRecipient))
                | ("HMAC failure", Err(AgeError::HeaderMacMismatch))
                | ("armor failure", Err(AgeError::MalformedArmor))
                | (
                    "header failure",
                    Err(AgeError::NotAnAgeFile | AgeError::MalformedHeader | AgeError::Truncated),
                )
                | (
                    "payload failure",
                    Err(AgeError::PayloadTampered | AgeError::Truncated | AgeError::TrailingData),
                ) => {}
                _ => panic!("{name}: expected {expect}, got {result:?}"),
            }
        }
        assert!(successes >= 10, "only {successes} success vectors ran");
    }

    // ---- interoperability with the age binary

    /// Whether `age` and `age-keygen` can run. Missing, the interop tests say so loudly and
    /// return, except under CI (`CI` set), which must never skip them.
    fn age_binaries() -> bool {
        let runs = |tool: &str| {
            Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        };
        if runs("age") && runs("age-keygen") {
            return true;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "the age binary is missing and CI is set: CI must install it (apt-get install -y age)"
        );
        eprintln!(
            "SKIPPED: the age interoperability tests need the age binary: install age \
             (apt-get install -y age)"
        );
        false
    }

    /// A directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(label: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            let path = std::env::temp_dir().join(format!(
                "keyward-age-{label}-{}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn run(command: &mut Command) -> Vec<u8> {
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// A fresh age identity from age-keygen: its file, its recipient (from the `# public key:`
    /// line) and its scalar.
    fn keygen(dir: &Path) -> (PathBuf, [u8; 32], StaticSecret) {
        let path = dir.join("identity.txt");
        run(Command::new("age-keygen").arg("-o").arg(&path));
        let text = std::fs::read_to_string(&path).unwrap();
        let public = text
            .lines()
            .find_map(|line| line.strip_prefix("# public key: "))
            .unwrap();
        let recipient = parse_recipient(public).unwrap();
        let secret = text
            .lines()
            .find(|line| line.starts_with("AGE-SECRET-KEY-1"))
            .unwrap();
        let identity = parse_identity(secret);
        assert_eq!(PublicKey::from(&identity).to_bytes(), recipient);
        assert_eq!(recipient_string(&recipient), public);
        (path, recipient, identity)
    }

    #[test]
    fn age_decrypts_our_files() {
        if !age_binaries() {
            return;
        }
        let dir = TempDir::new("ours");
        let (identity_file, recipient, _) = keygen(&dir.0);
        for (seed, size) in SIZES.into_iter().enumerate() {
            let plain = plaintext(size);
            let file = encrypt_to_vec(&recipient, u8::try_from(seed).unwrap(), &plain);
            let path = dir.0.join(format!("ours-{size}.age"));
            std::fs::write(&path, &file).unwrap();
            let opened = run(Command::new("age")
                .arg("-d")
                .arg("-i")
                .arg(&identity_file)
                .arg(&path));
            assert!(opened == plain, "age opened {size} bytes differently");
        }
    }

    #[test]
    fn we_decrypt_the_files_of_age_binary_and_armored() {
        if !age_binaries() {
            return;
        }
        let dir = TempDir::new("theirs");
        let (_, recipient, identity) = keygen(&dir.0);
        let recipient = recipient_string(&recipient);
        for size in SIZES {
            let plain = plaintext(size);
            let input = dir.0.join(format!("plain-{size}"));
            std::fs::write(&input, &plain).unwrap();
            for armored in [false, true] {
                let output = dir.0.join(format!("theirs-{size}-{armored}.age"));
                let mut command = Command::new("age");
                command.arg("-r").arg(&recipient).arg("-o").arg(&output);
                if armored {
                    command.arg("-a");
                }
                run(command.arg(&input));
                let text = std::fs::read(&output).unwrap();
                assert_eq!(text.starts_with(ARMOR_BEGIN), armored);
                let file = dearmor(&text).unwrap();
                assert!(
                    decrypt_to_vec(&identity, &file).unwrap() == plain,
                    "size {size}, armored {armored}"
                );
                assert_eq!(
                    decrypt_to_vec(&self::identity(3), &file),
                    Err(AgeError::NoMatchingRecipient)
                );
            }
        }
    }
}
