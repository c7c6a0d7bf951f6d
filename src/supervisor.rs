//! The validator's handle: [`SecretService`]. It owns the current signer process, checks key
//! ids before anything crosses the pipe, turns answers into typed results and refusals into
//! errors that say what to do, and replaces the signer when asked (or automatically).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::config::{Config, RestartPolicy};
use crate::error::{Error, Result, SignerEnd};
use crate::keys::{Algorithm, KeyId, KeyInfo, KeySpec, PublicKey, SharedSecret};
use crate::protocol::{Refusal, Request, Response};
use crate::signer_process::SignerProcess;
use crate::status::SignerStatus;

/// The isolated key service: a handle to a sandboxed signer process that holds every key.
///
/// `SecretService` is `Send + Sync`: share it (by reference or in an `Arc`) and call it from as
/// many threads as you like. Dropping it ends and reaps the signer; its keys are erased with it.
pub struct SecretService {
    config: Config,
    service: u64,
    current: RwLock<Arc<SignerProcess>>,
    respawning: Mutex<()>,
    generations: AtomicU32,
}

impl std::fmt::Debug for SecretService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let signer = self.signer();
        f.debug_struct("SecretService")
            .field("generation", &signer.generation())
            .field("pid", &signer.pid())
            .finish_non_exhaustive()
    }
}

impl SecretService {
    /// Starts a signer with `config` and waits until it is hardened and ready.
    pub fn spawn(config: Config) -> Result<Self> {
        config.validate()?;
        let mut tag = [0u8; 8];
        getrandom::fill(&mut tag).map_err(|error| {
            Error::Io(std::io::Error::other(format!(
                "no entropy for the service tag: {error}"
            )))
        })?;
        let signer = SignerProcess::spawn(&config, 1)?;
        Ok(Self {
            config,
            service: u64::from_le_bytes(tag),
            current: RwLock::new(Arc::new(signer)),
            respawning: Mutex::new(()),
            generations: AtomicU32::new(1),
        })
    }

    fn signer(&self) -> Arc<SignerProcess> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Generates a key for `spec` inside the signer and returns its handle.
    pub fn generate_key(&self, spec: KeySpec) -> Result<KeyId> {
        let signer = self.signer();
        match self.call(&signer, Request::GenerateKey { spec })? {
            Response::KeyGenerated { key, .. } => Ok(KeyId {
                service: self.service,
                generation: signer.generation(),
                local: key,
            }),
            Response::Refused(Refusal::PurposeAlgorithmMismatch) => {
                Err(Error::PurposeAlgorithmMismatch { spec })
            }
            Response::Refused(refusal) => Err(refusal_error(refusal, None, "generate")),
            _ => Err(wrong_answer(&signer)),
        }
    }

    /// The public key of `key`.
    pub fn public_key(&self, key: KeyId) -> Result<PublicKey> {
        Ok(self.key_info(key)?.public_key)
    }

    /// `key`'s id, purpose and public key.
    pub fn key_info(&self, key: KeyId) -> Result<KeyInfo> {
        let signer = self.checked_signer(key)?;
        match self.call(&signer, Request::PublicKey { key: key.local })? {
            Response::PublicKey {
                algorithm,
                purpose,
                public_key,
            } => Ok(KeyInfo {
                id: key,
                purpose,
                public_key: PublicKey::from_wire(algorithm, public_key)
                    .ok_or_else(|| wrong_answer(&signer))?,
            }),
            Response::Refused(refusal) => Err(refusal_error(refusal, Some(key), "public_key")),
            _ => Err(wrong_answer(&signer)),
        }
    }

    /// Signs a 32-byte prehashed digest with the Ed25519 key `key` (pure Ed25519 over those 32
    /// bytes: verify with `VerifyingKey::verify_strict(digest, &signature)`).
    pub fn sign(&self, key: KeyId, digest: &[u8; 32]) -> Result<ed25519_dalek::Signature> {
        let signer = self.checked_signer(key)?;
        let request = Request::Sign {
            key: key.local,
            digest: *digest,
        };
        match self.call(&signer, request)? {
            Response::Signature { r, s } => Ok(ed25519_dalek::Signature::from_components(r, s)),
            Response::Refused(refusal) => Err(refusal_error(refusal, Some(key), "sign")),
            _ => Err(wrong_answer(&signer)),
        }
    }

    /// X25519 Diffie-Hellman between the handshake key `key` and a peer's public key. A peer
    /// point of low order (which would make the secret all zeros) is refused.
    pub fn diffie_hellman(
        &self,
        key: KeyId,
        peer_public: &x25519_dalek::PublicKey,
    ) -> Result<SharedSecret> {
        let signer = self.checked_signer(key)?;
        let request = Request::DiffieHellman {
            key: key.local,
            peer_public: peer_public.to_bytes(),
        };
        match self.call(&signer, request)? {
            Response::SharedSecret(secret) => Ok(SharedSecret::new(secret.0)),
            Response::Refused(refusal) => Err(refusal_error(refusal, Some(key), "diffie_hellman")),
            _ => Err(wrong_answer(&signer)),
        }
    }

    /// Every key the current signer holds: id, purpose, public key.
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let signer = self.signer();
        match self.call(&signer, Request::ListKeys)? {
            Response::KeyList(listings) => listings
                .into_iter()
                .map(|listing| {
                    Ok(KeyInfo {
                        id: KeyId {
                            service: self.service,
                            generation: signer.generation(),
                            local: listing.key,
                        },
                        purpose: listing.purpose,
                        public_key: PublicKey::from_wire(listing.algorithm, listing.public_key)
                            .ok_or_else(|| wrong_answer(&signer))?,
                    })
                })
                .collect(),
            Response::Refused(refusal) => Err(refusal_error(refusal, None, "list_keys")),
            _ => Err(wrong_answer(&signer)),
        }
    }

    /// Erases `key` in the signer. Later use of `key` fails with [`Error::UnknownKey`].
    pub fn drop_key(&self, key: KeyId) -> Result<()> {
        let signer = self.checked_signer(key)?;
        match self.call(&signer, Request::DropKey { key: key.local })? {
            Response::KeyDropped => Ok(()),
            Response::Refused(refusal) => Err(refusal_error(refusal, Some(key), "drop_key")),
            _ => Err(wrong_answer(&signer)),
        }
    }

    /// A [`signature::Signer`] for one Ed25519 key, for code that takes a `Signer`. It signs
    /// messages that are 32-byte digests; any other length is an error.
    pub fn signing_key(&self, key: KeyId) -> Result<KeySigner<'_>> {
        match self.public_key(key)? {
            PublicKey::Ed25519(verifying_key) => Ok(KeySigner {
                service: self,
                key,
                verifying_key,
            }),
            PublicKey::X25519(_) => Err(Error::WrongKeyType {
                key,
                algorithm: Algorithm::X25519,
                operation: "signing_key",
                needed: Algorithm::Ed25519,
            }),
        }
    }

    /// What the kernel says about the current signer (`/proc/<pid>/status` and `smaps`).
    pub fn status(&self) -> Result<SignerStatus> {
        Ok(self.signer().status()?)
    }

    /// The current signer's generation: 1, then one more per respawn.
    pub fn generation(&self) -> u32 {
        self.signer().generation()
    }

    /// The current signer's process id.
    pub fn pid(&self) -> i32 {
        self.signer().pid()
    }

    /// Whether the current signer is still serving (it has not ended or been killed).
    pub fn is_running(&self) -> bool {
        !self.signer().has_ended()
    }

    /// Starts a new signer in place of the current one, which is shut down (or, if it already
    /// ended, reaped). Every key of the old signer is gone; its ids are refused with
    /// [`Error::KeyFromEndedSigner`]. Returns the new generation.
    pub fn respawn(&self) -> Result<u32> {
        let _respawning = self
            .respawning
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.replace_signer()
    }

    fn replace_signer(&self) -> Result<u32> {
        let generation = self.generations.fetch_add(1, Ordering::AcqRel) + 1;
        let fresh = Arc::new(SignerProcess::spawn(&self.config, generation)?);
        let old = std::mem::replace(
            &mut *self
                .current
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            fresh,
        );
        // The old signer is shut down when its last in-flight call lets go of it.
        drop(old);
        Ok(generation)
    }

    /// The current signer, if `key` belongs to it.
    fn checked_signer(&self, key: KeyId) -> Result<Arc<SignerProcess>> {
        let signer = self.signer();
        if key.service != self.service {
            return Err(Error::UnknownKey(key));
        }
        if key.generation != signer.generation() {
            return Err(Error::KeyFromEndedSigner {
                key,
                current: signer.generation(),
            });
        }
        Ok(signer)
    }

    fn call(&self, signer: &Arc<SignerProcess>, request: Request) -> Result<Response> {
        match signer.call(request) {
            Ok(response) => Ok(response),
            Err(failure) => {
                let error = signer.error_for(failure);
                if self.config.restart == RestartPolicy::Automatic && signer.has_ended() {
                    self.restart_after(signer);
                }
                Err(error)
            }
        }
    }

    /// Automatic restart: replace `ended` unless another caller already did.
    fn restart_after(&self, ended: &Arc<SignerProcess>) {
        let _respawning = self
            .respawning
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if Arc::ptr_eq(&self.signer(), ended) {
            // If this fails the old signer stays in place and the next call reports it ended.
            let _ = self.replace_signer();
        }
    }

    /// Test builds only: makes the signer attempt a forbidden system call.
    ///
    /// Under the sandbox the signer dies of SIGSYS and this returns
    /// `Error::SignerEnded { end: SignerEnd::SandboxViolation, .. }`. `Ok(result)` means the
    /// signer made the call and survived (no filter): `result` is what the kernel returned.
    #[cfg(feature = "sandbox-test-hooks")]
    #[doc(hidden)]
    pub fn attempt_forbidden_syscall(
        &self,
        call: crate::protocol::ForbiddenSyscall,
    ) -> Result<i64> {
        let signer = self.signer();
        match self.call(&signer, Request::AttemptForbiddenSyscall { call })? {
            Response::SurvivedForbiddenSyscall { result } => Ok(result),
            _ => Err(Error::Protocol(
                "the signer answered a forbidden-call attempt with something else",
            )),
        }
    }
}

/// The error for a refusal; `key` names the key the request was about.
fn refusal_error(refusal: Refusal, key: Option<KeyId>, operation: &'static str) -> Error {
    match (refusal, key) {
        (Refusal::UnknownKey, Some(key)) => Error::UnknownKey(key),
        (Refusal::WrongAlgorithm { algorithm, needed }, Some(key)) => Error::WrongKeyType {
            key,
            algorithm,
            operation,
            needed,
        },
        (Refusal::LowOrderPoint, _) => Error::LowOrderPoint,
        (Refusal::KeyLimitReached { limit }, _) => Error::KeyLimitReached { limit },
        (Refusal::MalformedRequest | Refusal::RequestIdNotIncreasing, _) => Error::Protocol(
            "the signer could not decode a request from this library: build both from one source",
        ),
        _ => Error::Protocol("the signer refused a request for a reason that does not fit it"),
    }
}

/// The signer answered with the wrong kind of message: it cannot be trusted any more.
fn wrong_answer(signer: &SignerProcess) -> Error {
    signer.kill(SignerEnd::ProtocolViolation);
    Error::Protocol("an answer of the wrong kind")
}

/// A [`signature::Signer`] backed by one Ed25519 key in the signer.
///
/// Signs messages that are exactly 32 bytes (a prehashed digest), as pure Ed25519 over those
/// bytes; any other message fails with an error whose source is [`Error::NotADigest`].
#[derive(Debug)]
pub struct KeySigner<'a> {
    service: &'a SecretService,
    key: KeyId,
    verifying_key: ed25519_dalek::VerifyingKey,
}

impl KeySigner<'_> {
    /// The key this signer uses.
    pub fn key_id(&self) -> KeyId {
        self.key
    }
}

impl signature::Signer<ed25519_dalek::Signature> for KeySigner<'_> {
    fn try_sign(&self, message: &[u8]) -> Result<ed25519_dalek::Signature, signature::Error> {
        let digest: &[u8; 32] = message
            .try_into()
            .map_err(|_| signature::Error::from_source(Error::NotADigest(message.len())))?;
        self.service
            .sign(self.key, digest)
            .map_err(signature::Error::from_source)
    }
}

impl signature::Keypair for KeySigner<'_> {
    type VerifyingKey = ed25519_dalek::VerifyingKey;

    fn verifying_key(&self) -> Self::VerifyingKey {
        self.verifying_key
    }
}
