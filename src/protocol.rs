//! Every message that crosses the pipe between the supervisor and the signer, the protocol
//! version, the frame cap, and the exit codes by which a signer says why it stopped.
//!
//! Messages are postcard-encoded and carried in length-prefixed frames (see `transport`). A
//! request carries an id; its answer carries the same id, so answers are matched to callers
//! whatever order they arrive in. Within one lane the supervisor sends ids in increasing order,
//! and the signer refuses an id that does not increase.

use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};

use crate::keys::{Algorithm, KeySpec, LocalKeyId, Purpose};
use crate::status::KeyMemory;

/// The protocol version both sides must speak; checked when a signer starts.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest frame payload either side accepts, checked before anything is allocated or
/// decoded. The largest legitimate message is a key listing at the largest key limit.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// The length prefix of a frame: a little-endian `u32`.
pub(crate) const FRAME_HEADER_LEN: usize = 4;

/// The most keys one signer may be configured to hold.
pub const MAX_KEY_LIMIT: u32 = 1024;

/// The most signer workers (lanes) one signer may run.
pub const MAX_WORKERS: usize = 16;

/// Exit codes a signer uses, so the supervisor can say why it stopped.
pub(crate) mod exit_code {
    /// The request pipe reached end of file: the supervisor closed it. A normal shutdown.
    pub(crate) const SHUTDOWN: i32 = 0;
    /// The request stream can no longer be trusted (frame over the cap, undecodable frame
    /// header, truncated frame).
    pub(crate) const CORRUPT_REQUEST_STREAM: i32 = 65;
    /// The signer panicked; its panic hook ends the process with this code.
    pub(crate) const PANICKED: i32 = 70;
    /// A hardening step failed before a message could be sent about it.
    pub(crate) const HARDENING_FAILED: i32 = 71;
    /// `execve` of the signer program failed (fork-exec mode).
    pub(crate) const EXEC_FAILED: i32 = 72;
    /// The process that forked the signer was gone before the death signal was armed.
    pub(crate) const PARENT_CHANGED: i32 = 73;
    /// Reading requests or writing answers failed.
    pub(crate) const PIPE_FAILED: i32 = 74;
    /// The bootstrap message of an exec'd signer was missing or malformed.
    pub(crate) const BAD_BOOTSTRAP: i32 = 75;
}

/// Which kind of memory holds the signer's keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SecretMemory {
    /// `memfd_secret` where the kernel offers it, else locked anonymous memory.
    #[default]
    Auto,
    /// Only `memfd_secret`: pages removed from the kernel's direct map, which not even root can
    /// read through `/proc/<pid>/mem`. Spawning fails where the kernel lacks it.
    MemfdSecret,
    /// Anonymous memory, locked (`mlock`), excluded from core dumps and wiped on fork.
    LockedAnonymous,
}

/// What the exec'd signer needs to know, sent as the first frame on lane 0. A forked signer gets
/// the same values in memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SignerSettings {
    pub(crate) workers: u8,
    pub(crate) key_limit: u32,
    pub(crate) secret_memory: SecretMemory,
    pub(crate) signer_spin_micros: u32,
    pub(crate) parent_pid: i32,
    pub(crate) sandboxed: bool,
}

/// The first frame an exec'd signer reads: the version, then the settings and the seccomp
/// program the supervisor compiled (each instruction as code, jt, jf, k).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Bootstrap {
    pub(crate) protocol_version: u32,
    pub(crate) settings: SignerSettings,
    pub(crate) filter: Vec<(u16, u8, u8, u32)>,
}

/// A request from the supervisor to the signer. One variant per operation; the signer handles
/// them in one exhaustive `match` (see `dispatch`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Generate a key for a purpose; answered with `KeyGenerated`.
    GenerateKey { spec: KeySpec },
    /// The public half of a key; answered with `PublicKey`.
    PublicKey { key: LocalKeyId },
    /// Sign a 32-byte prehashed digest with an Ed25519 key; answered with `Signature`.
    Sign { key: LocalKeyId, digest: [u8; 32] },
    /// X25519 with a handshake key and a peer's public key; answered with `SharedSecret`.
    DiffieHellman {
        key: LocalKeyId,
        peer_public: [u8; 32],
    },
    /// Every key held; answered with `KeyList`.
    ListKeys,
    /// Erase a key; answered with `KeyDropped`.
    DropKey { key: LocalKeyId },
    /// Test builds only: make the signer attempt a forbidden system call.
    #[cfg(feature = "sandbox-test-hooks")]
    AttemptForbiddenSyscall { call: ForbiddenSyscall },
}

/// A system call the sandbox must forbid; used only by the sandbox tests.
#[cfg(feature = "sandbox-test-hooks")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum ForbiddenSyscall {
    Open,
    OpenAt,
    Socket,
    Execve,
    Ptrace,
    Fork,
    Clone,
    MmapExecutable,
    Mprotect,
    X32Write,
    I386IntX80,
}

/// A request with its id, as it travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RequestFrame {
    pub(crate) id: u64,
    pub(crate) request: Request,
}

/// One key in a `KeyList` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyListing {
    pub(crate) key: LocalKeyId,
    pub(crate) purpose: Purpose,
    pub(crate) algorithm: Algorithm,
    pub(crate) public_key: [u8; 32],
}

/// An answer from the signer. `L` is the key listing: a `Vec` when decoded by the supervisor, a
/// borrowed view of the key store when encoded by the signer (which allocates nothing once
/// sandboxed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Response<L = Vec<KeyListing>> {
    /// Sent once per lane when the signer is hardened and serving.
    Ready {
        protocol_version: u32,
        key_memory: KeyMemory,
    },
    /// Sent instead of `Ready` when a hardening step failed; the signer then exits.
    HardeningFailed {
        step: HardeningStep,
        errno: i32,
    },
    /// Sent instead of `Ready` by an exec'd signer whose bootstrap had another version.
    VersionMismatch {
        protocol_version: u32,
    },
    KeyGenerated {
        key: LocalKeyId,
        public_key: [u8; 32],
    },
    PublicKey {
        algorithm: Algorithm,
        purpose: Purpose,
        public_key: [u8; 32],
    },
    /// An Ed25519 signature as its two halves (serde has no 64-byte arrays).
    Signature {
        r: [u8; 32],
        s: [u8; 32],
    },
    SharedSecret(WireSecret),
    KeyList(L),
    KeyDropped,
    /// The request was understood and refused; the signer carries on.
    Refused(Refusal),
    /// Test builds only: the signer made the forbidden call and lived to report what the kernel
    /// returned, which means no filter covers it.
    #[cfg(feature = "sandbox-test-hooks")]
    SurvivedForbiddenSyscall {
        result: i64,
    },
}

/// A Diffie-Hellman result on its way to the caller: wiped when dropped (an answer waiting for
/// another caller, a decoded frame) and redacted when a response is printed.
#[derive(
    Clone, PartialEq, Eq, Serialize, Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop,
)]
#[serde(transparent)]
pub(crate) struct WireSecret(pub(crate) [u8; 32]);

impl std::fmt::Debug for WireSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WireSecret([REDACTED])")
    }
}

/// A response with the id of the request it answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ResponseFrame<L = Vec<KeyListing>> {
    pub(crate) id: u64,
    pub(crate) response: Response<L>,
}

/// Why the signer refused a request. None of these ends the signer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Refusal {
    UnknownKey,
    /// The key exists but has the wrong algorithm for the operation.
    WrongAlgorithm {
        algorithm: Algorithm,
        needed: Algorithm,
    },
    PurposeAlgorithmMismatch,
    /// The peer's X25519 point gives an all-zero shared secret.
    LowOrderPoint,
    KeyLimitReached {
        limit: u32,
    },
    /// A well-framed request whose body did not decode.
    MalformedRequest,
    /// A request id not greater than the previous one on this lane.
    RequestIdNotIncreasing,
}

/// A step of the signer's hardening; named in the error when that step fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HardeningStep {
    /// Arming the parent-death signal and checking the parent is still the one that forked.
    ParentDeathSignal,
    /// Moving the pipes to fixed descriptors and closing every other inherited descriptor.
    DescriptorHygiene,
    /// Restoring default signal handlers and an empty signal mask.
    SignalHygiene,
    /// Core limit 0 and not dumpable.
    NoCoreDumps,
    /// Mapping locked, don't-dump memory for keys.
    SecretMemory,
    /// Seeding the key generator from the operating system.
    Entropy,
    /// Starting the signer's worker threads.
    Workers,
    /// Dropping every capability.
    Capabilities,
    /// Setting no-new-privileges.
    NoNewPrivileges,
    /// Limiting new files, processes and file size to zero.
    ResourceLimits,
    /// Loading the seccomp filter.
    SeccompFilter,
}

impl std::fmt::Display for HardeningStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HardeningStep::ParentDeathSignal => "arming the parent-death signal",
            HardeningStep::DescriptorHygiene => "closing inherited file descriptors",
            HardeningStep::SignalHygiene => "resetting signal handlers",
            HardeningStep::NoCoreDumps => "disabling core dumps",
            HardeningStep::SecretMemory => "mapping locked memory for keys",
            HardeningStep::Entropy => "seeding the key generator from the OS",
            HardeningStep::Workers => "starting signer workers",
            HardeningStep::Capabilities => "dropping capabilities",
            HardeningStep::NoNewPrivileges => "setting no-new-privileges",
            HardeningStep::ResourceLimits => "setting resource limits",
            HardeningStep::SeccompFilter => "loading the seccomp filter",
        })
    }
}

/// Serializes a key listing from anything that can iterate it twice (once to count: postcard
/// needs the length first), without allocating.
pub(crate) struct ListingView<I>(pub(crate) I);

impl<I> Serialize for ListingView<I>
where
    I: Iterator<Item = KeyListing> + Clone,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let count = self.0.clone().count();
        let mut sequence = serializer.serialize_seq(Some(count))?;
        for listing in self.0.clone() {
            sequence.serialize_element(&listing)?;
        }
        sequence.end()
    }
}

/// Why a frame payload could not be decoded as a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestDecodeError {
    /// Not even the id could be read: the stream cannot be trusted.
    NoId,
    /// The id was read but the body was not a valid request (unknown variant, short or
    /// trailing bytes): answer a refusal to this id.
    Body { id: u64 },
}

/// Decodes a request frame payload, borrowing from it and allocating nothing.
pub(crate) fn decode_request(payload: &[u8]) -> Result<RequestFrame, RequestDecodeError> {
    let (id, body) =
        postcard::take_from_bytes::<u64>(payload).map_err(|_| RequestDecodeError::NoId)?;
    match postcard::take_from_bytes::<Request>(body) {
        Ok((request, [])) => Ok(RequestFrame { id, request }),
        _ => Err(RequestDecodeError::Body { id }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diffie_hellman_answer_prints_without_its_secret() {
        let secret = [0xab_u8; 32];
        let frame = ResponseFrame::<()> {
            id: 7,
            response: Response::SharedSecret(WireSecret(secret)),
        };
        let printed = format!("{frame:?}");
        assert!(printed.contains("REDACTED"), "{printed}");
        assert!(
            !printed.contains("171"),
            "the secret's bytes are printed: {printed}"
        );
        // Redaction changes only the printing: the bytes still travel.
        let mut buffer = [0u8; 64];
        let length = postcard::to_slice(&frame, &mut buffer).map(|bytes| bytes.len());
        let encoded = &buffer[..length.unwrap_or(0)];
        assert!(encoded.windows(32).any(|window| window == secret));
    }
}
