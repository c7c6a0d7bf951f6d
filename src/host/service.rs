//! Runs in the host: the validator's handle, [`SecretService`]. It owns the current signer
//! process, checks key ids before anything crosses the pipe, turns answers into typed results and
//! refusals into errors that say what to do, and replaces the signer when asked (or
//! automatically).
//!
//! Over 400 lines on purpose: the service, the core its key handles share, and the refusal to
//! error mapping are one idea; the `KeyService` impl for `SecretService` only forwards.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::host::config::{Config, RestartPolicy, SpawnMode};
use crate::host::error::{Error, Result};
use crate::host::key_handle::KeySigner;
use crate::host::key_service::KeyService;
use crate::host::keys::{KeyId, KeyInfo, KeyVersion, PublicKey, SharedSecret};
use crate::host::operations::{self, Operation};
use crate::host::provisioning::{AgeRecipient, ProvisioningRecipient, RestoreReport};
use crate::host::signer_process::{CallFailure, SignerProcess};
use crate::host::signer_program::SignerProgram;
use crate::host::status::SignerStatus;
use crate::host::store::{AdoptError, HostStore, SignerLaunch};
use crate::wire::consensus::{ChainWatermarks, ConsensusMessage};
use crate::wire::key_types::{KeySpec, Purpose, StoreId, WireKeyId};
use crate::wire::messages::StoreChange;
use crate::wire::messages::{Refusal, RestoreProgress};
use crate::wire::store_format::StoreFile;
use crate::wire::{MAX_BATCH, MAX_MESSAGE_LEN};

/// How many ended signers' stores a service remembers, to tell a key of an ended signer from a
/// key it never had. Beyond this, an old key is reported as unknown.
const ENDED_STORES_REMEMBERED: usize = 1024;

/// The isolated key service: a handle to a sandboxed signer process that holds every key.
///
/// `SecretService` is `Send + Sync`: share it (by reference or in an `Arc`) and call it from as
/// many threads as you like, through [`KeyService`]. The signer is shut down and reaped, and
/// its keys erased, when the service and every [`KeySigner`] made from it have been dropped.
pub struct SecretService {
    core: Arc<ServiceCore>,
}

/// What a service and its key handles share.
pub(crate) struct ServiceCore {
    config: Config,
    /// The fork-exec signer program, opened when the service was spawned (`None` in fork mode).
    program: Option<SignerProgram>,
    /// The process that spawned the service. A copy of the service in a process forked from it
    /// refuses every call: its pipes and request ids are the original's.
    creator: u32,
    /// Tells a forked copy apart without a system call a request.
    fork_sentinel: crate::sys::ForkSentinel,
    current: RwLock<Arc<SignerProcess>>,
    respawning: Mutex<()>,
    generations: AtomicU32,
    /// The stores of this service's ended signers, with their generations, newest last.
    ended_stores: Mutex<VecDeque<(StoreId, u32)>>,
    /// The sealed store, if the keys are kept on disk.
    store: Option<HostStore>,
    /// Rotations begun (counted before the request is sent): see
    /// [`KeyService::rotations_begun`].
    rotations: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for SecretService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.core.fmt(f)
    }
}

impl std::fmt::Debug for ServiceCore {
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
    ///
    /// In fork-exec mode the signer program is opened here, once, and checked to be a regular,
    /// executable file ([`SpawnError::SignerProgram`](crate::SpawnError::SignerProgram) if not);
    /// this signer and every respawned one run that file, whatever is at the path later.
    pub fn spawn(config: Config) -> Result<Self> {
        config.validate()?;
        let program = match &config.spawn_mode {
            SpawnMode::Fork => None,
            SpawnMode::ForkExec { program } => Some(SignerProgram::open(program)?),
        };
        let (store, signer) = match &config.store {
            None => (
                None,
                SignerProcess::spawn(&config, program.as_ref(), 1, None)?,
            ),
            Some(store_config) => {
                let (store, launch) = HostStore::open(store_config)?;
                let signer = start_sealed(&config, program.as_ref(), 1, &store, launch)?;
                (Some(store), signer)
            }
        };
        let service = Self {
            core: Arc::new(ServiceCore {
                config,
                program,
                creator: std::process::id(),
                fork_sentinel: crate::sys::ForkSentinel::new(),
                current: RwLock::new(Arc::new(signer)),
                respawning: Mutex::new(()),
                generations: AtomicU32::new(1),
                ended_stores: Mutex::new(VecDeque::new()),
                store,
                rotations: std::sync::atomic::AtomicU64::new(0),
            }),
        };
        if service.core.store.is_some() {
            service.retire_on_time()?;
        }
        Ok(service)
    }

    /// For a store just opened: purges the previous versions whose grace period ended while no
    /// service ran, and sets a purge for the end of each grace period still running.
    fn retire_on_time(&self) -> Result<()> {
        // Best effort: on a full or read-only disk the retired versions stay refused and
        // wiped in the signer, and the store still opens; a later purge removes their records.
        let _ = self.core.purge_retired();
        let mut pending = Vec::new();
        for key in self.core.list_keys()? {
            pending.extend(
                self.core
                    .key_versions(key.id)?
                    .iter()
                    .filter_map(|version| version.retires),
            );
        }
        pending.sort_unstable();
        pending.dedup();
        for retires in pending {
            schedule_purge(&self.core, retires);
        }
        Ok(())
    }

    /// A [`signature::Signer`] for one Ed25519 key, for code that takes a `Signer`: it owns a
    /// share of the service, so it can be stored, cloned and moved into other threads.
    pub fn signing_key(&self, key: KeyId) -> Result<KeySigner> {
        KeySigner::new(Arc::clone(&self.core) as Arc<dyn KeyService>, key)
    }

    /// What the kernel says about the current signer (`/proc/<pid>/status` and `smaps`).
    pub fn status(&self) -> Result<SignerStatus> {
        self.core.check_process()?;
        self.core.signer().status().map_err(Error::Status)
    }

    /// The current signer's generation: 1, then one more per respawn.
    pub fn generation(&self) -> u32 {
        self.core.signer().generation()
    }

    /// The current signer's process id.
    pub fn pid(&self) -> i32 {
        self.core.signer().pid()
    }

    /// Whether the current signer is still serving (it has not ended or been killed).
    pub fn is_running(&self) -> bool {
        !self.core.signer().has_ended()
    }

    /// Starts a new signer in place of the current one, which is shut down (or, if it already
    /// ended, reaped). Returns the new generation.
    ///
    /// Without a store, every key of the old signer is gone; its ids are refused with
    /// [`Error::KeyFromEndedSigner`]. With a store, the new signer opens the store as it is on
    /// disk: every key whose generation returned is there, under the same id.
    pub fn respawn(&self) -> Result<u32> {
        self.core.check_process()?;
        let _respawning = self
            .core
            .respawning
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.core.replace_signer()
    }

    /// The consensus key `key`'s watermarks: per chain it has signed on, the highest proposal,
    /// vote and timeout signed (for the interchange export).
    pub fn watermarks(&self, key: KeyId) -> Result<Vec<ChainWatermarks>> {
        self.core.watermarks(key)
    }

    /// Raises the consensus key `key`'s watermarks on one chain to at least `marks`: each
    /// kind's watermark becomes the higher of the two, never lower (the interchange import).
    /// With a sealed store, durable before it returns.
    pub fn raise_watermarks(&self, key: KeyId, marks: &ChainWatermarks) -> Result<()> {
        self.core.raise_watermarks(key, marks)
    }

    /// This signer's provisioning recipient: encrypt an existing secret key to it with the
    /// stock `age` tool, then [`import_key`](Self::import_key) it. With a sealed store it is
    /// the same after every restart (derived from the store's key-encryption key inside the
    /// signer); without one it lives as long as the signer.
    pub fn provisioning_recipient(&self) -> Result<ProvisioningRecipient> {
        self.core.check_process()?;
        let signer = self.core.signer();
        let (recipient, signing_key, signature) = self
            .core
            .perform(&signer, &operations::Provisioning)?
            .map_err(|refusal| refusal_error(&signer, refusal, None, "provisioning_recipient"))?;
        let signing_key = ed25519_dalek::VerifyingKey::from_bytes(&signing_key).map_err(|_| {
            signer.verdict(CallFailure::Misbehaved(
                "a backup-signing key that is not an Ed25519 point",
            ))
        })?;
        let provisioning = ProvisioningRecipient {
            recipient: AgeRecipient(recipient),
            store: signer.store(),
            signing_key,
            signature,
        };
        if !provisioning.is_signed_by(&signing_key) {
            return Err(signer.verdict(CallFailure::Misbehaved(
                "a provisioning recipient its signing key did not sign",
            )));
        }
        Ok(provisioning)
    }

    /// Imports an existing secret key for `purpose`: `encrypted` is an age file (binary or
    /// ASCII-armored) that holds the key's 32 secret bytes (an Ed25519 seed or an X25519
    /// scalar; raw, or as 64 hex digits), encrypted to this signer's
    /// [`provisioning_recipient`](Self::provisioning_recipient). The signer decrypts it,
    /// derives its public key and keeps it only if that is `claimed_public` and no key held
    /// has it; with a sealed store it is durable before this returns. The host never sees the
    /// secret.
    ///
    /// Errors, each leaving everything as it was: [`Error::PurposeAlgorithmMismatch`] (the
    /// claimed key is of another algorithm than the purpose uses), [`Error::ImportUndecryptable`],
    /// [`Error::ImportMalformed`], [`Error::ImportPublicKeyMismatch`], [`Error::KeyAlreadyHeld`].
    pub fn import_key(
        &self,
        purpose: Purpose,
        claimed_public: &PublicKey,
        encrypted: &[u8],
    ) -> Result<KeyId> {
        self.core.import_key(purpose, claimed_public, encrypted)
    }

    /// A backup of every key this signer holds (with each consensus key's watermarks), as an
    /// age file encrypted inside the signer to `recipient`, and signed inside it (before
    /// encryption) by the store's backup-signing key. The operator reads it with the stock
    /// `age` tool and the recipient's identity; `docs/backup-format.md` gives its text.
    pub fn backup(&self, recipient: &AgeRecipient) -> Result<Vec<u8>> {
        self.core.check_process()?;
        let signer = self.core.signer();
        self.core
            .perform(&signer, &operations::Backup(recipient.0))?
            .map_err(|refusal| refusal_error(&signer, refusal, None, "backup"))
    }

    /// Restores a backup into this signer's store: `encrypted` is a backup (as
    /// [`backup`](Self::backup) writes it) that the operator decrypted offline and re-encrypted
    /// to this signer's [`provisioning_recipient`](Self::provisioning_recipient); `signed_by`
    /// is the backup-signing key the operator pinned for the store it came from. The signer
    /// checks the signature and every key's secret against its public key before it keeps
    /// anything, then adds each key not held, with its watermarks in the same durable write
    /// (so a restored consensus key is never without them, even after a crash), and raises
    /// the watermarks of keys already held. Restored keys get new ids. Running it again after
    /// a failure or a crash finishes the job: keys already held are not added twice.
    pub fn restore(
        &self,
        encrypted: &[u8],
        signed_by: &ed25519_dalek::VerifyingKey,
    ) -> Result<RestoreReport> {
        self.core.restore(encrypted, signed_by)
    }

    /// Rotates `key`: a new version with a fresh secret (drawn inside the signer after fresh
    /// kernel entropy is mixed in) under the same key id; the plain calls use it from now on.
    /// With a sealed store it is durable before this returns. The previous version stays usable
    /// for `grace` through [`sign_with_version`](Self::sign_with_version) and
    /// [`diffie_hellman_with_version`](Self::diffie_hellman_with_version) (a handshake key's
    /// peers may still use its old public key), then is erased (its record purged from the
    /// store, its secret wiped from the signer); with no grace it is erased at once. A
    /// consensus key keeps its watermarks: they belong to the key, not to a version. At most
    /// two previous versions are kept at once ([`Error::VersionLimit`]), and each takes a place
    /// of the key limit until it is erased (with a sealed store, so does the previous version
    /// of a rotation with no grace period, until the rotation's write is done).
    pub fn rotate_key(&self, key: KeyId, grace: std::time::Duration) -> Result<KeyVersion> {
        let rotated = self.core.rotate_key(key, grace)?;
        if let Some(retires) = rotated.1 {
            schedule_purge(&self.core, retires);
        }
        Ok(rotated.0)
    }

    /// The versions of `key` the signer holds, oldest first; the last is the current one
    /// (`retires` is `None`). Versions whose grace period is over are purged first.
    pub fn key_versions(&self, key: KeyId) -> Result<Vec<KeyVersion>> {
        self.core.key_versions(key)
    }

    /// Signs a 32-byte digest with one version of `key`: the current one, or a previous one in
    /// its grace period (blind signing: the purpose's rule applies, as for
    /// [`sign`](KeyService::sign)).
    pub fn sign_with_version(
        &self,
        key: KeyId,
        version: u32,
        digest: &[u8; 32],
    ) -> Result<ed25519_dalek::Signature> {
        self.core.sign_with_version(key, version, digest)
    }

    /// X25519 with one version of the handshake key `key`: the current one, or a previous one
    /// in its grace period.
    pub fn diffie_hellman_with_version(
        &self,
        key: KeyId,
        version: u32,
        peer_public: &x25519_dalek::PublicKey,
    ) -> Result<SharedSecret> {
        self.core
            .diffie_hellman_with_version(key, version, peer_public)
    }

    /// Test builds only: makes the signer attempt a forbidden system call.
    ///
    /// Under the sandbox the signer dies of SIGSYS and this returns
    /// `Error::SignerEnded { end: SignerEnd::SandboxViolation, .. }`. `Ok(result)` means the
    /// signer made the call and survived (no filter): `result` is what the kernel returned.
    #[cfg(feature = "test-support")]
    #[doc(hidden)]
    pub fn attempt_forbidden_syscall(&self, call: crate::ForbiddenSyscall) -> Result<i64> {
        let signer = self.core.signer();
        self.core
            .perform(&signer, &operations::AttemptForbiddenSyscall(call))?
            .map_err(|refusal| refusal_error(&signer, refusal, None, "attempt_forbidden_syscall"))
    }
}

impl ServiceCore {
    fn signer(&self) -> Arc<SignerProcess> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Refuses a call from a process forked from the one that spawned the service.
    fn check_process(&self) -> Result<()> {
        if !self.fork_sentinel.in_a_forked_copy() {
            return Ok(());
        }
        Err(Error::ForkedProcess {
            creator: self.creator,
            this: std::process::id(),
        })
    }

    fn replace_signer(&self) -> Result<u32> {
        let generation = self.generations.fetch_add(1, Ordering::AcqRel) + 1;
        // With a store, its copy stays locked until the new signer is in place: a change in
        // flight finishes with the old signer first, and none starts until the copy is the new
        // signer's (read back from disk).
        let mut store_copy = self.store.as_ref().map(HostStore::lock_file);
        let fresh = match &self.store {
            None => SignerProcess::spawn(&self.config, self.program.as_ref(), generation, None)?,
            Some(store) => {
                let launch = store.launch(None)?;
                let (signer, file) = start_sealed_signer(
                    &self.config,
                    self.program.as_ref(),
                    generation,
                    store,
                    launch,
                )?;
                if let Some(copy) = store_copy.as_mut() {
                    **copy = Some((generation, file));
                }
                signer
            }
        };
        let fresh = Arc::new(fresh);
        let old = std::mem::replace(
            &mut *self
                .current
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            fresh,
        );
        let mut ended = self
            .ended_stores
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if ended.len() == ENDED_STORES_REMEMBERED {
            ended.pop_front();
        }
        // A sealed store outlives its signers: its keys are the new signer's.
        if self.store.is_none() {
            ended.push_back((old.store(), old.generation()));
        }
        drop(store_copy);
        // The old signer is shut down when its last in-flight call lets go of it.
        drop(old);
        Ok(generation)
    }

    /// Performs a change (a generate, a drop, a raise of watermarks) and, with a sealed store,
    /// writes the sealed change durably before returning: the caller hears of a new key only
    /// once it is on disk. `change_of` picks the sealed change out of the output (`required`:
    /// a signer with a store must send one). `settle` then tells the signer whether the change
    /// was written (a drop erases the key only once it is; a generate whose write failed is
    /// forgotten). With `revert`, a failed write puts the store's copy back as it was, which
    /// `settle` puts the signer back to as well.
    fn change_durably<O: Operation>(
        &self,
        operation: &O,
        required: bool,
        change_of: impl Fn(&O::Output) -> Option<StoreChange>,
        settle: impl Fn(&SignerProcess, &O::Output, bool),
        revert: bool,
    ) -> Result<Changed<O::Output>> {
        let Some(store) = &self.store else {
            let signer = self.signer();
            let result = self.perform(&signer, operation)?;
            if let Ok(output) = &result
                && change_of(output).is_some()
            {
                return Err(signer.verdict(CallFailure::Misbehaved(
                    "a sealed change from a signer without a store",
                )));
            }
            return Ok((signer, result));
        };
        self.under_store_lock(store, |signer, file| {
            let output = match signer.perform(operation)? {
                Ok(output) => output,
                Err(refusal) => return Ok(Err(refusal)),
            };
            let Some(change) = change_of(&output) else {
                if required {
                    return Err(signer.verdict(CallFailure::Misbehaved(
                        "no sealed change from a signer with a store",
                    )));
                }
                return Ok(Ok(output));
            };
            let before = revert.then(|| file.clone());
            match write_change(store, file, signer, &change) {
                Ok(()) => {
                    settle(signer, &output, true);
                    Ok(Ok(output))
                }
                Err(Error::Store(error)) => {
                    if let Some(before) = before {
                        *file = before;
                    }
                    settle(signer, &output, false);
                    Err(Error::Store(error))
                }
                Err(error) => Err(error),
            }
        })
    }

    /// Runs `work` on the current signer with the store's copy locked (one change at a time,
    /// and never across a respawn); restarts an ended signer afterwards if so configured.
    fn under_store_lock<T>(
        &self,
        store: &HostStore,
        work: impl FnOnce(&Arc<SignerProcess>, &mut StoreFile) -> Result<T>,
    ) -> Result<(Arc<SignerProcess>, T)> {
        let mut copy = store.lock_file();
        let signer = self.signer();
        let outcome = match copy.as_mut() {
            Some((generation, file)) if *generation == signer.generation() => work(&signer, file),
            Some(_) => Err(Error::Internal(
                "the store's copy belongs to another signer",
            )),
            None => Err(Error::Internal("a sealed store with no copy of its file")),
        };
        drop(copy);
        match outcome {
            Ok(done) => Ok((signer, done)),
            Err(error) => {
                if self.config.restart == RestartPolicy::Automatic && signer.has_ended() {
                    self.restart_after(&signer);
                }
                Err(error)
            }
        }
    }

    /// A consensus key's watermarks on every chain it has signed on (or had raised by an
    /// import).
    fn watermarks(&self, key: KeyId) -> Result<Vec<ChainWatermarks>> {
        let signer = self.signer_for(key)?;
        self.perform(&signer, &operations::ListWatermarks(key.wire()))?
            .map_err(|refusal| refusal_error(&signer, refusal, Some(key), "watermarks"))
    }

    /// Raises a consensus key's watermarks on one chain (never lowers one); durable before it
    /// returns.
    fn raise_watermarks(&self, key: KeyId, marks: &ChainWatermarks) -> Result<()> {
        self.signer_for(key)?;
        let operation = operations::RaiseWatermarks {
            key: key.wire(),
            marks: *marks,
        };
        // A raised watermark stays raised in the signer even if its write fails (the safe side),
        // so the copy keeps the change too.
        let (signer, raised) =
            self.change_durably(&operation, false, |change| *change, |_, _, _| {}, false)?;
        raised
            .map(|_| ())
            .map_err(|refusal| refusal_error(&signer, refusal, Some(key), "raise_watermarks"))
    }

    /// The current signer, if `key` belongs to its store.
    fn signer_for(&self, key: KeyId) -> Result<Arc<SignerProcess>> {
        self.check_process()?;
        let signer = self.signer();
        if key.store() == signer.store() {
            return Ok(signer);
        }
        let ended = self
            .ended_stores
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .find(|(store, _)| *store == key.store())
            .map(|&(_, generation)| generation);
        Err(match ended {
            Some(ended) => Error::KeyFromEndedSigner {
                key,
                ended,
                current: signer.generation(),
            },
            None => Error::UnknownKey(key),
        })
    }

    /// Performs `operation` on `signer`; restarts an ended signer if so configured.
    fn perform<O: Operation>(
        &self,
        signer: &Arc<SignerProcess>,
        operation: &O,
    ) -> Result<Result<O::Output, Refusal>> {
        let result = signer.perform(operation);
        if result.is_err() && self.config.restart == RestartPolicy::Automatic && signer.has_ended()
        {
            self.restart_after(signer);
        }
        result
    }

    /// [`SignerProcess::perform_spread`], with the same restart as [`Self::perform`].
    fn perform_spread<O: Operation>(
        &self,
        signer: &Arc<SignerProcess>,
        operations: &[O],
    ) -> Result<Vec<Result<O::Output, Refusal>>> {
        let result = signer.perform_spread(operations);
        if result.is_err() && self.config.restart == RestartPolicy::Automatic && signer.has_ended()
        {
            self.restart_after(signer);
        }
        result
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

    /// A public key from the signer's bytes; a point that does not decode means the signer is
    /// not to be trusted.
    fn public_key_from(
        &self,
        signer: &SignerProcess,
        algorithm: crate::Algorithm,
        bytes: [u8; 32],
    ) -> Result<PublicKey> {
        PublicKey::from_wire(algorithm, bytes).ok_or_else(|| {
            signer.verdict(CallFailure::Misbehaved(
                "a public key that is not a valid point",
            ))
        })
    }
}

/// The fewest digests worth a part of their own: below this, a second round trip costs more
/// than signing them beside the rest saves.
const DIGESTS_PER_PART: usize = 4;

/// Into how many parts a batch of `digests` is split, with `idle_lanes` workers free: one per
/// idle worker, each of at least [`DIGESTS_PER_PART`] digests; one if only one worker is free.
fn spread_parts(digests: usize, idle_lanes: usize) -> usize {
    idle_lanes.min(digests / DIGESTS_PER_PART).max(1)
}

/// Purges `core`'s retired versions at `retires`, from a thread that holds the service only
/// weakly (a dropped service is not kept alive, and its thread just ends).
fn schedule_purge(core: &Arc<ServiceCore>, retires: std::time::SystemTime) {
    let core = Arc::downgrade(core);
    let _ = std::thread::Builder::new()
        .name("keyward-retire".into())
        .spawn(move || {
            let wait = retires
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            // A second later: retirement is to the second, by the signer's clock.
            std::thread::sleep(wait + std::time::Duration::from_secs(1));
            if let Some(core) = core.upgrade() {
                let _ = core.purge_retired();
            }
        });
}

impl ServiceCore {
    /// See [`SecretService::rotate_key`]; also says when the previous version retires.
    fn rotate_key(
        &self,
        key: KeyId,
        grace: std::time::Duration,
    ) -> Result<(KeyVersion, Option<std::time::SystemTime>)> {
        self.signer_for(key)?;
        if grace > MAX_GRACE {
            return Err(Error::GraceTooLong { max: MAX_GRACE });
        }
        // Versions already retired make room first (best effort: a purge that cannot be
        // written leaves them refused and wiped, and the rotation says what it needs).
        let _ = self.purge_retired();
        let grace_seconds = grace
            .as_secs()
            .saturating_add(u64::from(grace.subsec_nanos() > 0));
        self.rotations.fetch_add(1, Ordering::SeqCst);
        let (signer, rotated) = self.change_durably(
            &operations::RotateKey {
                key: key.wire(),
                grace_seconds,
            },
            true,
            |(_, _, change)| *change,
            |signer, _, written| {
                // Committed once the change is on disk; otherwise the previous version is
                // current again, as the host's copy of the file says.
                let _ = signer.perform(&operations::FinishRotation {
                    key: key.wire(),
                    commit: written,
                });
            },
            true,
        )?;
        let (version, _, _) =
            rotated.map_err(|refusal| refusal_error(&signer, refusal, Some(key), "rotate_key"))?;
        let versions = self.key_versions(key)?;
        let current = versions
            .iter()
            .find(|listed| listed.version == version)
            .copied()
            .ok_or_else(|| {
                signer.verdict(CallFailure::Misbehaved(
                    "a rotation whose new version is not listed",
                ))
            })?;
        let retires = versions
            .iter()
            .filter_map(|listed| listed.retires)
            .max()
            .filter(|_| grace_seconds > 0);
        Ok((current, retires))
    }

    /// Erases every previous version whose grace period is over, one key at a time, each
    /// durable before the next.
    fn purge_retired(&self) -> Result<()> {
        for _ in 0..=crate::wire::MAX_KEY_LIMIT {
            let (signer, purged) = self.change_durably(
                &operations::PurgeRetired,
                false,
                |purged| purged.and_then(|(_, change)| change),
                |signer, purged, written| {
                    if let Some((key, Some(_))) = purged {
                        let _ = signer.perform(&operations::FinishDrop {
                            key: *key,
                            erase: written,
                        });
                    }
                },
                true,
            )?;
            match purged {
                Ok(None) => return Ok(()),
                Ok(Some(_)) => {}
                Err(refusal) => return Err(refusal_error(&signer, refusal, None, "purge")),
            }
        }
        Err(self
            .signer()
            .verdict(CallFailure::Misbehaved("a purge that never ends")))
    }

    /// See [`SecretService::key_versions`].
    fn key_versions(&self, key: KeyId) -> Result<Vec<KeyVersion>> {
        let signer = self.signer_for(key)?;
        // Best effort: a retired version is not listed whether or not its record could be
        // removed yet (a full disk), so a listing does not fail for a write.
        let _ = self.purge_retired();
        let algorithm = self.key_info(key)?.public_key.algorithm();
        let listed = self
            .perform(&signer, &operations::KeyVersions(key.wire()))?
            .map_err(|refusal| refusal_error(&signer, refusal, Some(key), "key_versions"))?;
        let at = |seconds| {
            std::time::UNIX_EPOCH
                .checked_add(std::time::Duration::from_secs(seconds))
                .ok_or_else(|| {
                    signer.verdict(CallFailure::Misbehaved(
                        "a version's time that no clock can hold",
                    ))
                })
        };
        listed
            .into_iter()
            .map(|listed| {
                Ok(KeyVersion {
                    version: listed.version,
                    public_key: self.public_key_from(&signer, algorithm, listed.public_key)?,
                    created: at(listed.created)?,
                    retires: match listed.retires {
                        0 => None,
                        retires => Some(at(retires)?),
                    },
                })
            })
            .collect()
    }

    /// See [`SecretService::sign_with_version`].
    fn sign_with_version(
        &self,
        key: KeyId,
        version: u32,
        digest: &[u8; 32],
    ) -> Result<ed25519_dalek::Signature> {
        let signer = self.signer_for(key)?;
        let operation = operations::SignWithVersion {
            key: key.wire(),
            version,
            digest: *digest,
        };
        self.perform(&signer, &operation)?
            .map_err(|refusal| version_error(&signer, refusal, key, version, "sign_with_version"))
    }

    /// See [`SecretService::diffie_hellman_with_version`].
    fn diffie_hellman_with_version(
        &self,
        key: KeyId,
        version: u32,
        peer_public: &x25519_dalek::PublicKey,
    ) -> Result<SharedSecret> {
        let signer = self.signer_for(key)?;
        let operation = operations::DiffieHellmanWithVersion {
            key: key.wire(),
            version,
            peer_public: peer_public.to_bytes(),
        };
        let secret = self.perform(&signer, &operation)?.map_err(|refusal| {
            version_error(
                &signer,
                refusal,
                key,
                version,
                "diffie_hellman_with_version",
            )
        })?;
        Ok(SharedSecret::new(secret))
    }

    /// See [`SecretService::restore`]: one signer step at a time, each step's change durable
    /// before the next.
    fn restore(
        &self,
        encrypted: &[u8],
        signed_by: &ed25519_dalek::VerifyingKey,
    ) -> Result<RestoreReport> {
        self.check_process()?;
        let encrypted = crate::wire::age_format::dearmor(encrypted)
            .map_err(|error| Error::ImportUndecryptable { error })?;
        if encrypted.len() > MAX_MESSAGE_LEN {
            return Err(Error::ImportTooLarge {
                len: encrypted.len(),
                cap: MAX_MESSAGE_LEN,
            });
        }
        let step = operations::RestoreStep {
            signed_by: signed_by.to_bytes(),
            encrypted: &encrypted,
        };
        let mut report = RestoreReport::default();
        // Each step adds a key or raises a key's watermarks: twice the most keys, and the end.
        for _ in 0..=2 * crate::wire::MAX_KEY_LIMIT {
            let (signer, progress) = self.change_durably(
                &step,
                false,
                |progress| match progress {
                    RestoreProgress::Added { change, .. }
                    | RestoreProgress::Raised { change, .. } => *change,
                    RestoreProgress::Complete { .. } => None,
                },
                |signer, progress, written| {
                    if let RestoreProgress::Added { key, .. } = progress {
                        forget_unless_written(signer, key, written);
                    }
                },
                true,
            )?;
            match progress {
                Ok(RestoreProgress::Added { key, .. }) => {
                    let key = KeyId(key);
                    report.added.push((key, self.key_info(key)?.public_key));
                }
                Ok(RestoreProgress::Raised { .. }) => report.raised += 1,
                Ok(RestoreProgress::Complete { keys, marks }) => {
                    report.keys_in_backup = keys;
                    report.marks_in_backup = marks;
                    return Ok(report);
                }
                Err(Refusal::ImportUndecryptable { error }) => {
                    return Err(Error::ImportUndecryptable { error });
                }
                Err(Refusal::RestoreRefused { problem }) => {
                    return Err(Error::RestoreRefused { problem });
                }
                Err(refusal) => return Err(refusal_error(&signer, refusal, None, "restore")),
            }
        }
        Err(self
            .signer()
            .verdict(CallFailure::Misbehaved("a restore that never completes")))
    }

    /// See [`SecretService::import_key`]: a generate whose secret the operator brought, with
    /// the same durable write and the same undo when the write fails.
    fn import_key(
        &self,
        purpose: Purpose,
        claimed_public: &PublicKey,
        encrypted: &[u8],
    ) -> Result<KeyId> {
        self.check_process()?;
        if claimed_public.algorithm() != purpose.algorithm() {
            return Err(Error::PurposeAlgorithmMismatch {
                spec: KeySpec {
                    purpose,
                    algorithm: claimed_public.algorithm(),
                },
            });
        }
        if encrypted.len() > MAX_IMPORT_LEN {
            return Err(Error::ImportTooLarge {
                len: encrypted.len(),
                cap: MAX_IMPORT_LEN,
            });
        }
        // An armored file is decoded here: armor is only base64 of the ciphertext.
        let encrypted = crate::wire::age_format::dearmor(encrypted)
            .map_err(|error| Error::ImportUndecryptable { error })?;
        let claimed = claimed_public.to_bytes();
        let (signer, imported) = self.change_durably(
            &operations::ImportKey {
                purpose,
                claimed_public: claimed,
                encrypted: &encrypted,
            },
            true,
            |(_, _, change)| *change,
            |signer, (key, _, _), written| forget_unless_written(signer, key, written),
            true,
        )?;
        match imported {
            Ok((key, _public_key, _change)) => Ok(KeyId(key)),
            Err(Refusal::ImportUndecryptable { error }) => {
                Err(Error::ImportUndecryptable { error })
            }
            Err(Refusal::ImportMalformed) => Err(Error::ImportMalformed),
            Err(Refusal::ImportPublicKeyMismatch) => Err(Error::ImportPublicKeyMismatch {
                claimed: Box::new(*claimed_public),
            }),
            Err(Refusal::KeyAlreadyHeld { key }) if key.store == signer.store() => {
                Err(Error::KeyAlreadyHeld { key: KeyId(key) })
            }
            Err(refusal) => Err(refusal_error(&signer, refusal, None, "import_key")),
        }
    }
}

impl KeyService for ServiceCore {
    fn rotations_begun(&self) -> u64 {
        self.rotations.load(Ordering::SeqCst)
    }

    fn generate_key(&self, spec: KeySpec) -> Result<KeyId> {
        self.check_process()?;
        let (signer, generated) = self.change_durably(
            &operations::GenerateKey(spec),
            true,
            |(_, _, change)| *change,
            |signer, (key, _, _), written| forget_unless_written(signer, key, written),
            true,
        )?;
        match generated {
            Ok((key, _public_key, _change)) => Ok(KeyId(key)),
            Err(Refusal::PurposeAlgorithmMismatch) => Err(Error::PurposeAlgorithmMismatch { spec }),
            Err(refusal) => Err(refusal_error(&signer, refusal, None, "generate_key")),
        }
    }

    fn key_info(&self, key: KeyId) -> Result<KeyInfo> {
        let signer = self.signer_for(key)?;
        let (algorithm, purpose, public_key) = self
            .perform(&signer, &operations::DescribeKey(key.wire()))?
            .map_err(|refusal| refusal_error(&signer, refusal, Some(key), "key_info"))?;
        Ok(KeyInfo {
            id: key,
            purpose,
            public_key: self.public_key_from(&signer, algorithm, public_key)?,
        })
    }

    fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        self.check_process()?;
        let signer = self.signer();
        let listings = self
            .perform(&signer, &operations::ListKeys)?
            .map_err(|refusal| refusal_error(&signer, refusal, None, "list_keys"))?;
        listings
            .into_iter()
            .map(|listing| {
                Ok(KeyInfo {
                    id: KeyId(listing.key),
                    purpose: listing.purpose,
                    public_key: self.public_key_from(
                        &signer,
                        listing.algorithm,
                        listing.public_key,
                    )?,
                })
            })
            .collect()
    }

    fn drop_key(&self, key: KeyId) -> Result<()> {
        // Checked against the current signer; the change itself goes to the signer current when
        // the store's copy is locked (the same one, unless a respawn came between).
        self.signer_for(key)?;
        let (signer, dropped) = self.change_durably(
            &operations::DropKey(key.wire()),
            true,
            |change| *change,
            |signer, _, written| {
                // Erased once the state without it is on disk; put back if it could not be
                // written (the copy went back to the state that holds it).
                let _ = signer.perform(&operations::FinishDrop {
                    key: key.wire(),
                    erase: written,
                });
            },
            true,
        )?;
        dropped
            .map(|_| ())
            .map_err(|refusal| refusal_error(&signer, refusal, Some(key), "drop_key"))
    }

    fn sign(&self, key: KeyId, digest: &[u8; 32]) -> Result<ed25519_dalek::Signature> {
        let signer = self.signer_for(key)?;
        let operation = operations::SignDigest {
            key: key.wire(),
            digest,
        };
        self.perform(&signer, &operation)?
            .map_err(|refusal| refusal_error(&signer, refusal, Some(key), "sign"))
    }

    fn sign_message(&self, key: KeyId, message: &[u8]) -> Result<ed25519_dalek::Signature> {
        if message.len() > MAX_MESSAGE_LEN {
            return Err(Error::MessageTooLong {
                length: message.len(),
                cap: MAX_MESSAGE_LEN,
            });
        }
        let signer = self.signer_for(key)?;
        let operation = operations::SignMessage {
            key: key.wire(),
            message,
        };
        self.perform(&signer, &operation)?
            .map_err(|refusal| refusal_error(&signer, refusal, Some(key), "sign_message"))
    }

    fn sign_many(&self, key: KeyId, digests: &[[u8; 32]]) -> Result<Vec<ed25519_dalek::Signature>> {
        if digests.is_empty() || digests.len() > MAX_BATCH {
            return Err(Error::BatchSize {
                length: digests.len(),
                cap: MAX_BATCH,
            });
        }
        let signer = self.signer_for(key)?;
        let parts = spread_parts(digests.len(), signer.idle_lanes());
        if parts <= 1 {
            let operation = operations::SignMany {
                key: key.wire(),
                digests,
            };
            return self
                .perform(&signer, &operation)?
                .map_err(|refusal| refusal_error(&signer, refusal, Some(key), "sign_many"));
        }
        // Idle workers sign parts of the batch side by side.
        let operations: Vec<operations::SignMany<'_>> = digests
            .chunks(digests.len().div_ceil(parts))
            .map(|part| operations::SignMany {
                key: key.wire(),
                digests: part,
            })
            .collect();
        let mut signatures = Vec::with_capacity(digests.len());
        for part in self.perform_spread(&signer, &operations)? {
            signatures.extend(
                part.map_err(|refusal| refusal_error(&signer, refusal, Some(key), "sign_many"))?,
            );
        }
        Ok(signatures)
    }

    fn sign_consensus(
        &self,
        key: KeyId,
        message: &ConsensusMessage,
    ) -> Result<ed25519_dalek::Signature> {
        let signer = self.signer_for(key)?;
        let operation = operations::SignConsensus {
            key: key.wire(),
            message: *message,
        };
        let refused = |signer: &SignerProcess, refusal| match refusal {
            Refusal::WouldDoubleSign { rule, watermark } => Error::WouldDoubleSign {
                key,
                kind: message.kind,
                epoch: message.epoch,
                round: message.round,
                rule,
                watermark,
            },
            refusal => refusal_error(signer, refusal, Some(key), "sign_consensus"),
        };
        let Some(store) = &self.store else {
            // Memory only: the guard holds for this signer's life; nothing is written.
            return match self.perform(&signer, &operation)? {
                Ok(operations::ConsensusOutcome::Signed(signature)) => Ok(signature),
                Ok(operations::ConsensusOutcome::Persist(_)) => Err(signer.verdict(
                    CallFailure::Misbehaved("a sealed change from a signer without a store"),
                )),
                Err(refusal) => Err(refused(&signer, refusal)),
            };
        };
        // Check and advance in the signer, write, then release: all under the store's lock, so
        // no other change comes between this watermark's write and its signature.
        let (_, signature) = self.under_store_lock(store, |signer, file| {
            let change = match signer.perform(&operation)? {
                Ok(operations::ConsensusOutcome::Signed(signature)) => return Ok(signature),
                Ok(operations::ConsensusOutcome::Persist(change)) => change,
                Err(refusal) => return Err(refused(signer, refusal)),
            };
            write_change(store, file, signer, &change)?;
            let release = operations::ReleaseConsensus {
                key: key.wire(),
                message: *message,
                sequence: change.manifest.sequence,
            };
            signer
                .perform(&release)?
                .map_err(|refusal| refused(signer, refusal))
        })?;
        Ok(signature)
    }

    fn diffie_hellman(
        &self,
        key: KeyId,
        peer_public: &x25519_dalek::PublicKey,
    ) -> Result<SharedSecret> {
        let signer = self.signer_for(key)?;
        let operation = operations::DiffieHellman {
            key: key.wire(),
            peer_public: peer_public.to_bytes(),
        };
        let secret = self
            .perform(&signer, &operation)?
            .map_err(|refusal| refusal_error(&signer, refusal, Some(key), "diffie_hellman"))?;
        Ok(SharedSecret::new(secret))
    }
}

/// The service's API, served by its signer process.
impl KeyService for SecretService {
    fn rotations_begun(&self) -> u64 {
        self.core.rotations_begun()
    }

    fn generate_key(&self, spec: KeySpec) -> Result<KeyId> {
        self.core.generate_key(spec)
    }

    fn key_info(&self, key: KeyId) -> Result<KeyInfo> {
        self.core.key_info(key)
    }

    fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        self.core.list_keys()
    }

    fn drop_key(&self, key: KeyId) -> Result<()> {
        self.core.drop_key(key)
    }

    fn sign(&self, key: KeyId, digest: &[u8; 32]) -> Result<ed25519_dalek::Signature> {
        self.core.sign(key, digest)
    }

    fn sign_message(&self, key: KeyId, message: &[u8]) -> Result<ed25519_dalek::Signature> {
        self.core.sign_message(key, message)
    }

    fn sign_many(&self, key: KeyId, digests: &[[u8; 32]]) -> Result<Vec<ed25519_dalek::Signature>> {
        self.core.sign_many(key, digests)
    }

    fn sign_consensus(
        &self,
        key: KeyId,
        message: &ConsensusMessage,
    ) -> Result<ed25519_dalek::Signature> {
        self.core.sign_consensus(key, message)
    }

    fn diffie_hellman(
        &self,
        key: KeyId,
        peer_public: &x25519_dalek::PublicKey,
    ) -> Result<SharedSecret> {
        self.core.diffie_hellman(key, peer_public)
    }
}

/// The error for a refusal of a call that names a version.
fn version_error(
    signer: &SignerProcess,
    refusal: Refusal,
    key: KeyId,
    version: u32,
    operation: &'static str,
) -> Error {
    match refusal {
        Refusal::UnknownVersion => Error::UnknownVersion { key, version },
        Refusal::VersionRetired => Error::VersionRetired { key, version },
        refusal => refusal_error(signer, refusal, Some(key), operation),
    }
}

/// After the write of a change that added `key` (generated, imported or restored): if it is
/// not on disk, the signer forgets the key, and the drop's own change is not written either (the
/// host's copy went back to the state before the add).
fn forget_unless_written(signer: &SignerProcess, key: &WireKeyId, written: bool) {
    if !written {
        let _ = signer.perform(&operations::DropKey(*key));
        let _ = signer.perform(&operations::FinishDrop {
            key: *key,
            erase: true,
        });
    }
}

/// The longest grace period a rotation may give the previous version: ten years (a longer one
/// is no grace period but a second key).
pub(crate) const MAX_GRACE: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 86_400);

/// The largest age file an import takes: one key's file is a few hundred bytes (the header, a
/// stanza a recipient, 32 to 66 bytes of payload).
pub(crate) const MAX_IMPORT_LEN: usize = 4096;

/// The error for a refusal; `key` names the key the request was about.
fn refusal_error(
    signer: &SignerProcess,
    refusal: Refusal,
    key: Option<KeyId>,
    operation: &'static str,
) -> Error {
    match (refusal, key) {
        (Refusal::UnknownKey, Some(key)) => Error::UnknownKey(key),
        (Refusal::WrongAlgorithm { algorithm, needed }, Some(key)) => Error::WrongKeyType {
            key,
            algorithm,
            operation,
            needed,
        },
        (Refusal::LowOrderPoint, _) => Error::LowOrderPoint,
        (Refusal::NotAConsensusKey { purpose }, Some(key)) => {
            Error::NotAConsensusKey { key, purpose }
        }
        (Refusal::BlindSigningRefused { purpose }, Some(key)) => Error::BlindSigningRefused {
            key,
            purpose,
            operation,
        },
        (Refusal::ChainLimit { cap }, Some(key)) => Error::ChainLimit { key, cap },
        (Refusal::KeyLimitReached { limit }, _) => Error::KeyLimitReached { limit },
        (Refusal::NoFreshEntropy { errno }, _) => Error::NoFreshEntropy { errno },
        (Refusal::VersionLimit { cap }, Some(key)) => Error::VersionLimit { key, cap },
        (Refusal::BackupTooLarge { keys, cap }, _) => Error::BackupTooLarge { keys, cap },
        (Refusal::BackupRecipientInvalid, _) => Error::BadRecipient {
            error: crate::wire::age_format::RecipientError::LowOrder,
        },
        (Refusal::MalformedRequest | Refusal::RequestIdNotIncreasing, _) => Error::Internal(
            "the signer could not decode a request from this library: build both from one source",
        ),
        (Refusal::NotInThisBuild, _) => Error::Internal(
            "the signer was built without a request this library sent: build both from one source",
        ),
        // The host checks a message's length and a batch's size before sending them, and only a
        // key's request can be refused for its key: a signer that says otherwise is not to be
        // trusted.
        (
            Refusal::MessageTooLong { .. }
            | Refusal::BatchSize { .. }
            | Refusal::UnknownKey
            | Refusal::WrongAlgorithm { .. }
            | Refusal::PurposeAlgorithmMismatch
            | Refusal::NotAConsensusKey { .. }
            | Refusal::BlindSigningRefused { .. }
            | Refusal::ChainLimit { .. }
            | Refusal::WouldDoubleSign { .. }
            | Refusal::NotReleasable
            | Refusal::ImportUndecryptable { .. }
            | Refusal::ImportMalformed
            | Refusal::ImportPublicKeyMismatch
            | Refusal::KeyAlreadyHeld { .. }
            | Refusal::RestoreRefused { .. }
            | Refusal::UnknownVersion
            | Refusal::VersionRetired
            | Refusal::VersionLimit { .. }
            | Refusal::RotationPending,
            _,
        ) => signer.verdict(CallFailure::Misbehaved(
            "a refusal that does not fit the request",
        )),
    }
}

/// Starts a signer on a sealed store and takes it in: the store it opened is the one the host
/// read, or the one it created is written before the signer serves anything.
fn start_sealed_signer(
    config: &Config,
    program: Option<&SignerProgram>,
    generation: u32,
    store: &HostStore,
    launch: SignerLaunch,
) -> Result<(SignerProcess, StoreFile)> {
    let (settings, expected) = launch.into_parts();
    let signer = SignerProcess::spawn(config, program, generation, Some((store, settings)))
        .map_err(|error| match error {
            crate::host::error::SpawnError::Store(error) => Error::Store(error),
            error => Error::Spawn(error),
        })?;
    match store.adopt(expected, signer.sealed_summary()) {
        Ok(file) => Ok((signer, file)),
        Err(AdoptError::Signer(what)) => Err(signer.verdict(CallFailure::Misbehaved(what))),
        // The signer is shut down as it drops: its new store was never written.
        Err(AdoptError::Store(error)) => Err(Error::Store(error)),
    }
}

/// Applies a sealed change to the store's copy and writes it durably. A change that does not
/// fit the copy means the signer is not to be trusted.
fn write_change(
    store: &HostStore,
    file: &mut StoreFile,
    signer: &SignerProcess,
    change: &StoreChange,
) -> Result<()> {
    HostStore::apply(file, change).map_err(|what| signer.verdict(CallFailure::Misbehaved(what)))?;
    store.write(file).map_err(Error::Store)
}

/// What a change gives its caller: the signer it was made on (for the refusal's error) and its
/// output or refusal.
type Changed<T> = (Arc<SignerProcess>, Result<T, Refusal>);

/// The first signer of a service with a sealed store.
fn start_sealed(
    config: &Config,
    program: Option<&SignerProgram>,
    generation: u32,
    store: &HostStore,
    launch: SignerLaunch,
) -> Result<SignerProcess> {
    let (signer, file) = start_sealed_signer(config, program, generation, store, launch)?;
    *store.lock_file() = Some((generation, file));
    Ok(signer)
}
