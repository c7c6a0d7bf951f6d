//! Shared by both sides of the boundary: what crosses the pipe between the host and the
//! sandboxed signer, and how it is framed. Both the host and the signer compile this code; it
//! holds no secret and makes no decision about one.

pub(crate) mod age_format;
pub(crate) mod backup_format;
pub(crate) mod consensus;
pub(crate) mod framing;
pub(crate) mod key_types;
pub(crate) mod messages;
pub(crate) mod startup;
pub(crate) mod store_format;

/// The protocol version both sides must speak; checked when a signer starts. Version 2: start-up
/// messages apart from answers, key ids with their store, message signing. Version 3: signing a
/// batch of digests in one request (`SignMany`). Version 4: the sealed store (its settings and
/// summary at start-up, the sealed changes that answer a generate or a drop). Version 5: fresh
/// entropy refusal, provisioning, import, backup and restore (`NoFreshEntropy`; `Provisioning`,
/// `ImportKey`, `Backup` and `RestoreStep`, their answers and refusals).
pub const PROTOCOL_VERSION: u32 = 5;

/// The largest frame payload either side accepts, checked before anything is allocated or
/// decoded. The largest legitimate frames are a key listing at the largest key limit and a
/// message to sign at [`MAX_MESSAGE_LEN`].
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// The length prefix of a frame: a little-endian `u32`.
pub(crate) const FRAME_HEADER_LEN: usize = 4;

/// The longest message [`sign_message`](crate::KeyService::sign_message) signs: the frame cap
/// less 1 KiB for the request's id, kind and key.
pub const MAX_MESSAGE_LEN: usize = MAX_FRAME_LEN - 1024;

/// The most digests [`sign_many`](crate::KeyService::sign_many) signs in one call. Its answer
/// carries 64 bytes a signature in one frame, so about a thousand would fit; 512 (a 32 KiB
/// answer, half the frame cap) leaves the rest of the answer buffer for other callers' answers
/// written in the same burst. Split a larger batch.
pub const MAX_BATCH: usize = 512;

// A batch's request (32 bytes a digest) and its answer (64 bytes a signature) each fit in one
// frame with room to spare for the id, the kind, the key and the lengths.
const _: () = assert!(MAX_BATCH * 32 + 64 <= MAX_FRAME_LEN);
const _: () = assert!(MAX_BATCH * 64 + 64 <= MAX_FRAME_LEN);

/// The most keys one signer may be configured to hold.
pub const MAX_KEY_LIMIT: u32 = 1024;

/// The most signer workers (lanes) one signer may run.
pub const MAX_WORKERS: usize = 16;
