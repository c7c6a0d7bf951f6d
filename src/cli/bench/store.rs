//! Runs in the host: the sealed-store scenarios of `keyward bench`. A service on a sealed store
//! in a private temporary directory, whose durable writes (a generate, then a drop of that key,
//! turn about) are timed against a bare write-and-fsync of a file of the same size in the same
//! directory; and the same service signing, to show the store costs signing nothing. The
//! directory is removed when the benchmark ends, also on a panic.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use keyward::{
    ChainId, Config, ConsensusMessage, KeyId, KeyService, KeySpec, Latency, Purpose, SecretService,
    StoreConfig, StoreCreation, UnlockSecret,
};

/// A store-backed service and the directory it lives in.
pub(super) struct StoreBench {
    service: SecretService,
    signing: KeyId,
    consensus: KeyId,
    /// The next round the consensus scenario signs.
    round: std::sync::atomic::AtomicU64,
    /// The key of the last generate, dropped by the next write.
    pending: std::sync::Mutex<Option<KeyId>>,
    bare_file: PathBuf,
    bare_bytes: Vec<u8>,
    directory: PrivateDirectory,
}

impl StoreBench {
    /// Creates a store (default key derivation) with one consensus key in a new private
    /// directory under the system's temporary directory.
    pub(super) fn new(workers: usize, latency: Latency) -> Result<Self> {
        let directory = PrivateDirectory::new()?;
        let unlock = directory.path.join("unlock");
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).map_err(|error| anyhow::anyhow!("no entropy: {error}"))?;
        let secret: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&unlock)
            .and_then(|mut file| file.write_all(secret.as_bytes()))
            .context("writing the benchmark store's unlock file")?;
        let store = StoreConfig::new(directory.path.join("store"), UnlockSecret::file(&unlock))
            .with_creation(StoreCreation::CreateNew);
        let service = SecretService::spawn(
            Config::default()
                .with_workers(workers)
                .with_latency(latency)
                .with_store(store),
        )
        .context("spawning a signer on a sealed store")?;
        let signing = service.generate_key(KeySpec::new(Purpose::NetworkDiscovery))?;
        let consensus = service.generate_key(KeySpec::new(Purpose::Consensus))?;
        // The repeat scenario's vote, signed once (and written) before it is timed.
        service.sign_consensus(consensus, &repeated_vote())?;
        // The bare write writes as many bytes as the store's state file holds at its largest in
        // this scenario (one key more than now).
        let state = std::fs::metadata(directory.path.join("store").join("keyward-store"))
            .context("reading the state file's size")?;
        let state_len = usize::try_from(state.len()).unwrap_or(usize::MAX) + 132;
        Ok(Self {
            service,
            signing,
            consensus,
            round: std::sync::atomic::AtomicU64::new(1),
            pending: std::sync::Mutex::new(None),
            bare_file: directory.path.join("store").join("bare-fsync"),
            bare_bytes: vec![0x5a; state_len],
            directory,
        })
    }

    /// One durable store write: a generate, or the drop of the key the last one made.
    pub(super) fn write(&self) -> Result<()> {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match pending.take() {
            Some(key) => self.service.drop_key(key)?,
            None => *pending = Some(self.service.generate_key(KeySpec::new(Purpose::Account))?),
        }
        Ok(())
    }

    /// A bare write of the same size: create or truncate, write, fsync.
    pub(super) fn bare_write(&self) -> Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&self.bare_file)?;
        file.write_all(&self.bare_bytes)?;
        file.sync_all()?;
        Ok(())
    }

    /// A consensus vote for the next round: the guard advances and the watermark is written
    /// durably before the signature is released.
    pub(super) fn sign_new_round(&self) -> Result<()> {
        let round = self
            .round
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let vote = ConsensusMessage::vote(CHAIN, 1, round, [0x5a; 32]);
        std::hint::black_box(self.service.sign_consensus(self.consensus, &vote)?);
        Ok(())
    }

    /// The same vote again: the guard answers with the same signature and writes nothing.
    pub(super) fn sign_repeat(&self) -> Result<()> {
        std::hint::black_box(
            self.service
                .sign_consensus(self.consensus, &repeated_vote())?,
        );
        Ok(())
    }

    /// A signature by the store-backed service.
    pub(super) fn sign(&self, digest: &[u8; 32]) -> Result<()> {
        std::hint::black_box(self.service.sign(self.signing, digest)?);
        Ok(())
    }

    /// Where the store lives.
    pub(super) fn directory(&self) -> &Path {
        &self.directory.path
    }

    /// The signer's pid.
    pub(super) fn pid(&self) -> i32 {
        self.service.pid()
    }
}

/// The chain the consensus scenarios sign for.
const CHAIN: ChainId = ChainId([0xbe; 32]);

/// The chain the repeat scenario signs for: its own, so the new rounds never pass its vote.
const REPEAT_CHAIN: ChainId = ChainId([0xef; 32]);

/// The vote the repeat scenario signs, again and again.
fn repeated_vote() -> ConsensusMessage {
    ConsensusMessage::vote(REPEAT_CHAIN, 0, 0, [0x5a; 32])
}

/// A 0700 directory under the system's temporary directory, removed on drop.
struct PrivateDirectory {
    path: PathBuf,
}

impl PrivateDirectory {
    fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("keyward-bench-{}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        Ok(Self { path })
    }
}

impl Drop for PrivateDirectory {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
