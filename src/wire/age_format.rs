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

// The signer's age requests and the host's commands that call this module land next (issue 15).
#![allow(
    dead_code,
    reason = "the signer's and the host's callers land next (issue 15)"
)]

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
/// Armor lines are 64 base64 characters (the last may be shorter).
const ARMOR_COLUMNS: usize = 64;

/// The human-readable part of an X25519 recipient string.
const RECIPIENT_HRP: Hrp = Hrp::parse_unchecked("age");
/// The human-readable part of an X25519 identity (a secret key).
const IDENTITY_HRP: Hrp = Hrp::parse_unchecked("age-secret-key-");
/// The human-readable part of a post-quantum hybrid identity (a secret key).
const HYBRID_IDENTITY_HRP: Hrp = Hrp::parse_unchecked("age-secret-key-pq-");

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
/// the plaintext length. Only authenticated plaintext is ever written to `out` (each chunk's tag
/// is checked before it is decrypted into place), and on any failure everything written is
/// wiped, so the caller sees the whole plaintext or none of it. `out` must hold the plaintext
/// length the file's size implies ([`AgeError::OutputTooSmall`] says how much).
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
/// plaintext the payload's length implies.
fn open_payload(
    cipher: &ChaCha20Poly1305,
    mut sealed: &[u8],
    out: &mut [u8],
) -> Result<usize, AgeError> {
    let mut written = 0;
    let mut counter: u64 = 0;
    loop {
        if sealed.len() < TAG_LEN {
            // Nothing (or less than a tag) after the last chunk that opened as a middle one.
            return Err(AgeError::Truncated);
        }
        if sealed.len() > SEALED_CHUNK_LEN {
            // A full chunk with more after it: a middle chunk.
            let (chunk, rest) = sealed.split_at(SEALED_CHUNK_LEN);
            let target = out
                .get_mut(written..written + CHUNK_LEN)
                .ok_or(AgeError::Internal)?;
            if open_chunk(cipher, counter, false, chunk, target) {
                written += CHUNK_LEN;
                sealed = rest;
                counter += 1;
                continue;
            }
            // A final chunk with bytes after it?
            if open_chunk(cipher, counter, true, chunk, target) {
                return Err(AgeError::TrailingData);
            }
            return Err(AgeError::PayloadTampered);
        }
        // The rest is the final chunk. It may be empty only if the whole plaintext is.
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
        if sealed.len() == SEALED_CHUNK_LEN && open_chunk(cipher, counter, false, sealed, target) {
            return Err(AgeError::Truncated);
        }
        return Err(AgeError::PayloadTampered);
    }
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
    // An identity pasted where a recipient belongs: say so before anything else.
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
    if hrp == IDENTITY_HRP || hrp == HYBRID_IDENTITY_HRP {
        return Err(RecipientError::SecretKey);
    }
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
        return Err(AgeError::NotAnAgeFile);
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
