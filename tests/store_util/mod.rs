//! Helpers for the sealed-store tests: scratch stores, snapshots of a store directory, the file's
//! layout, and a second, independent reader and sealer of the format (Argon2id and
//! XChaCha20-Poly1305 straight from the RustCrypto crates, written from docs/store-format.md and
//! the design brief, not from keyward's own code), so a test can unseal a file to find its
//! secrets, or re-seal a manifest the way only a holder of the unlock secret could.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub(crate) mod tmpfs;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::{AeadInOut, KeyInit, XChaCha20Poly1305};
use keyward::{
    Config, KdfParameters, KeyId, KeyService, Purpose, SpawnMode, StoreConfig, StoreCreation,
    StoreError, UnlockSecret,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Argon2id at its smallest: the tests exercise the format, not the cost.
pub(crate) const TEST_KDF: KdfParameters = KdfParameters {
    memory_kib: 64,
    passes: 1,
    lanes: 1,
};

// The layout (all integers little-endian).
pub(crate) const HEADER_LEN: usize = 119;
pub(crate) const BODY_LEN: usize = 56;
pub(crate) const RECORD_LEN: usize = 144;
pub(crate) const WATERMARK_LEN: usize = 181;
/// Where the records start.
pub(crate) const RECORDS_AT: usize = HEADER_LEN + BODY_LEN;

/// The header's fields: name and byte range.
pub(crate) const HEADER_FIELDS: [(&str, std::ops::Range<usize>); 11] = [
    ("magic", 0..8),
    ("format version", 8..10),
    ("store id", 10..18),
    ("kdf algorithm", 18..19),
    ("kdf memory KiB", 19..23),
    ("kdf passes", 23..27),
    ("kdf lanes", 27..31),
    ("salt", 31..47),
    ("verifier nonce", 47..71),
    ("verifier tag", 71..87),
    ("header checksum", 87..119),
];

/// The body's fields, as offsets in the file.
pub(crate) const BODY_FIELDS: [(&str, std::ops::Range<usize>); 5] = [
    ("sequence", 119..127),
    ("record count", 127..131),
    ("watermark count", 131..135),
    ("manifest nonce", 135..159),
    ("manifest tag", 159..175),
];

/// A record's fields, as offsets in the record.
pub(crate) const RECORD_FIELDS: [(&str, std::ops::Range<usize>); 11] = [
    ("slot", 0..2),
    ("key id", 2..18),
    ("purpose", 18..19),
    ("algorithm", 19..20),
    ("created", 20..28),
    ("version", 28..32),
    ("retires", 32..40),
    ("public key", 40..72),
    ("nonce", 72..96),
    ("sealed secret", 96..128),
    ("tag", 128..144),
];

/// The state file's name in a store directory.
pub(crate) const STATE: &str = "keyward-store";
pub(crate) const PREVIOUS: &str = "keyward-store.previous";
pub(crate) const ID: &str = "keyward-store.id";
pub(crate) const LOCK: &str = "keyward.lock";

/// A scratch directory for one test (mode 0700), removed with its contents on drop. It holds
/// the unlock files and, in `store/`, the store directory (which keyward creates).
pub(crate) struct Scratch {
    pub(crate) base: PathBuf,
}

impl Scratch {
    pub(crate) fn new(name: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let base = std::env::temp_dir().join(format!(
            "keyward-store-test-{}-{}-{name}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
        Scratch { base }
    }

    /// The store directory (not created here).
    pub(crate) fn store(&self) -> PathBuf {
        self.base.join("store")
    }

    /// A file of the store directory.
    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.store().join(name)
    }

    /// An unlock file named `name` holding exactly `content`, for `UnlockSecret::file`.
    pub(crate) fn unlock_file(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.base.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// The state file's bytes.
    pub(crate) fn state(&self) -> Vec<u8> {
        std::fs::read(self.file(STATE)).unwrap()
    }

    /// Replaces the state file's bytes (keeping its inode and mode).
    pub(crate) fn set_state(&self, bytes: &[u8]) {
        std::fs::write(self.file(STATE), bytes).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// A config for the store in `directory` unlocked by the file at `unlock`, which opens an
/// existing store only.
pub(crate) fn open_config(directory: &Path, unlock: &Path) -> Config {
    Config::default()
        .with_store(StoreConfig::new(directory, UnlockSecret::file(unlock)).with_kdf(TEST_KDF))
}

/// A config that creates the store if it is missing.
pub(crate) fn create_config(directory: &Path, unlock: &Path) -> Config {
    Config::default().with_store(
        StoreConfig::new(directory, UnlockSecret::file(unlock))
            .create_if_missing()
            .with_kdf(TEST_KDF),
    )
}

/// Every entry of a directory: name → (mode, bytes) for a file, (mode, "<dir>") otherwise.
pub(crate) type Snapshot = BTreeMap<String, (u32, Vec<u8>)>;

pub(crate) fn snapshot(directory: &Path) -> Snapshot {
    let mut files = Snapshot::new();
    let Ok(entries) = std::fs::read_dir(directory) else {
        return files;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let metadata = std::fs::symlink_metadata(entry.path()).unwrap();
        let content = if metadata.is_file() {
            std::fs::read(entry.path()).unwrap()
        } else if metadata.is_symlink() {
            format!("<symlink {:?}>", std::fs::read_link(entry.path()).unwrap()).into_bytes()
        } else {
            b"<not a file>".to_vec()
        };
        files.insert(
            entry.file_name().to_string_lossy().into_owned(),
            (metadata.mode(), content),
        );
    }
    files
}

/// The store error of a spawn that must fail; panics (naming `what`) on success or another
/// error.
pub(crate) fn store_error(
    result: keyward::Result<keyward::SecretService>,
    what: &str,
) -> StoreError {
    match result {
        Err(keyward::Error::Store(error)) => error,
        Err(other) => panic!("{what}: not a store error: {other:?} ({other})"),
        Ok(service) => panic!("{what}: the store opened: {service:?}"),
    }
}

/// A short name for an error's kind, for tables: the variant, with a format error's or a
/// tampered part's variant, without paths or numbers.
pub(crate) fn kind(error: &StoreError) -> String {
    use keyward::{FormatError, TamperedPart};
    match error {
        StoreError::Format { error, .. } => match error {
            FormatError::NotAStore => "Format(NotAStore)".into(),
            FormatError::UnsupportedVersion(_) => "Format(UnsupportedVersion)".into(),
            FormatError::Truncated { .. } => "Format(Truncated)".into(),
            FormatError::TrailingBytes { .. } => "Format(TrailingBytes)".into(),
            FormatError::Corrupt(field) => format!("Format(Corrupt({field:?}))"),
        },
        StoreError::Tampered { part, .. } => match part {
            TamperedPart::Manifest => "Tampered(Manifest)".into(),
            TamperedPart::Record { .. } => "Tampered(Record)".into(),
            TamperedPart::PublicKey { .. } => "Tampered(PublicKey)".into(),
            TamperedPart::DuplicateKey => "Tampered(DuplicateKey)".into(),
            other => format!("Tampered({other:?})"),
        },
        StoreError::WrongUnlockSecret { .. } => "WrongUnlockSecret".into(),
        StoreError::ForeignStore { .. } => "ForeignStore".into(),
        StoreError::KeyLimitTooSmall { .. } => "KeyLimitTooSmall".into(),
        other => {
            let debug = format!("{other:?}");
            debug
                .split([' ', '{', '('])
                .next()
                .unwrap_or_default()
                .to_owned()
        }
    }
}

/// Recomputes the header checksum (bytes 87..119: SHA-256 of bytes 0..87).
pub(crate) fn fix_checksum(file: &mut [u8]) {
    let checksum = Sha256::digest(&file[..87]);
    file[87..119].copy_from_slice(&checksum);
}

/// The number of key records a file's length leaves room for, after its watermark records (its
/// watermark count, 181 bytes each, at the end).
pub(crate) fn record_count(file: &[u8]) -> usize {
    let watermarks = u32_at(file, 131) as usize * WATERMARK_LEN;
    (file.len() - RECORDS_AT - watermarks) / RECORD_LEN
}

/// Record `index`'s byte range in the file.
pub(crate) fn record_range(index: usize) -> std::ops::Range<usize> {
    RECORDS_AT + index * RECORD_LEN..RECORDS_AT + (index + 1) * RECORD_LEN
}

fn u32_at(file: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(file[at..at + 4].try_into().unwrap())
}

/// The header's store id, in hex as the id file holds it.
pub(crate) fn store_id_hex(file: &[u8]) -> String {
    file[10..18].iter().map(|b| format!("{b:02x}")).collect()
}

/// The key-encryption key: Argon2id (v0x13) of the unlock secret with the header's salt and
/// costs, 32 bytes.
pub(crate) fn derive_kek(unlock: &[u8], file: &[u8]) -> Zeroizing<[u8; 32]> {
    let params = argon2::Params::new(
        u32_at(file, 19),
        u32_at(file, 23),
        u32_at(file, 27),
        Some(32),
    )
    .unwrap();
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut kek = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(unlock, &file[31..47], kek.as_mut_slice())
        .unwrap();
    kek
}

fn cipher(kek: &[u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(kek.into())
}

fn open(kek: &[u8; 32], nonce: &[u8], associated: &[u8], data: &mut [u8], tag: &[u8]) -> bool {
    let nonce: &[u8; 24] = nonce.try_into().unwrap();
    let tag: &[u8; 16] = tag.try_into().unwrap();
    cipher(kek)
        .decrypt_inout_detached(nonce.into(), associated, InOutBuf::from(data), tag.into())
        .is_ok()
}

fn seal(kek: &[u8; 32], nonce: &[u8], associated: &[u8], data: &mut [u8]) -> [u8; 16] {
    let nonce: &[u8; 24] = nonce.try_into().unwrap();
    cipher(kek)
        .encrypt_inout_detached(nonce.into(), associated, InOutBuf::from(data))
        .unwrap()
        .into()
}

/// Whether the header's verifier opens under `kek` (the seal of nothing, associated data
/// "keyward-store/v1 verifier" || header bytes 0..47).
pub(crate) fn verifier_opens(kek: &[u8; 32], file: &[u8]) -> bool {
    let mut associated = b"keyward-store/v1 verifier".to_vec();
    associated.extend_from_slice(&file[..47]);
    open(kek, &file[47..71], &associated, &mut [], &file[71..87])
}

fn record_associated_data(store_id: &[u8], record: &[u8]) -> Vec<u8> {
    let mut associated = b"keyward-store/v1 record".to_vec();
    associated.extend_from_slice(store_id);
    associated.extend_from_slice(&1u16.to_le_bytes());
    associated.extend_from_slice(&record[..72]);
    associated
}

/// Record `index`'s secret (an Ed25519 seed or an X25519 scalar), if its seal opens under
/// `kek` in the store the file's header names.
pub(crate) fn record_secret(
    kek: &[u8; 32],
    file: &[u8],
    index: usize,
) -> Option<Zeroizing<[u8; 32]>> {
    let record = &file[record_range(index)];
    let associated = record_associated_data(&file[10..18], record);
    let mut secret = Zeroizing::new([0u8; 32]);
    secret.copy_from_slice(&record[96..128]);
    open(
        kek,
        &record[72..96],
        &associated,
        secret.as_mut_slice(),
        &record[128..144],
    )
    .then_some(secret)
}

/// Seals `secret` into record `index` under its clear part and nonce as they are now.
pub(crate) fn reseal_record(kek: &[u8; 32], file: &mut [u8], index: usize, secret: &[u8; 32]) {
    let range = record_range(index);
    let associated = record_associated_data(&file[10..18], &file[range.clone()]);
    let mut sealed = *secret;
    let tag = seal(
        kek,
        &file[range.start + 72..range.start + 96],
        &associated,
        &mut sealed,
    );
    file[range.start + 96..range.start + 128].copy_from_slice(&sealed);
    file[range.start + 128..range.end].copy_from_slice(&tag);
}

/// Sets the record count from the file's length and re-seals the manifest over the header
/// checksum, sequence, count and records as they are now (same nonce): what only a holder of
/// the key-encryption key can do.
pub(crate) fn reseal_manifest(kek: &[u8; 32], file: &mut [u8]) {
    let count = u32::try_from(record_count(file)).unwrap();
    file[127..131].copy_from_slice(&count.to_le_bytes());
    let mut associated = b"keyward-store/v1 manifest".to_vec();
    associated.extend_from_slice(&file[87..119]);
    associated.extend_from_slice(&file[119..135]);
    associated.extend_from_slice(&Sha256::digest(&file[RECORDS_AT..]));
    let tag = seal(kek, &file[135..159], &associated, &mut []);
    file[159..175].copy_from_slice(&tag);
}

/// Whether the manifest seal opens under `kek`.
pub(crate) fn manifest_opens(kek: &[u8; 32], file: &[u8]) -> bool {
    let mut associated = b"keyward-store/v1 manifest".to_vec();
    associated.extend_from_slice(&file[87..119]);
    associated.extend_from_slice(&file[119..135]);
    associated.extend_from_slice(&Sha256::digest(&file[RECORDS_AT..]));
    open(kek, &file[135..159], &associated, &mut [], &file[159..175])
}

/// The public key a record's secret gives, by the record's algorithm byte (0 Ed25519,
/// 1 X25519).
pub(crate) fn public_of(algorithm: u8, secret: &[u8; 32]) -> [u8; 32] {
    match algorithm {
        0 => ed25519_dalek::SigningKey::from_bytes(secret)
            .verifying_key()
            .to_bytes(),
        1 => x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*secret)).to_bytes(),
        other => panic!("algorithm byte {other}"),
    }
}

/// A fresh directory (mode 0700, as the store requires of its own directory and expects of its
/// parent's neighbourhood) holding an unlock file; the store lives in its `store` subdirectory
/// unless a test puts it elsewhere. Removed with its contents on drop.
pub(crate) struct StoreBase {
    pub(crate) base: PathBuf,
}

impl StoreBase {
    pub(crate) fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let base =
            std::env::temp_dir().join(format!("keyward-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        // The store refuses a directory open to group or others; the temp dir's own mode
        // depends on the umask, so the test sets it.
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(base.join("unlock"), b"correct horse battery staple\n").unwrap();
        std::fs::set_permissions(base.join("unlock"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        Self { base }
    }

    /// A base that already exists (a role's view of its test's base): not removed on drop.
    pub(crate) fn existing(base: impl Into<PathBuf>) -> std::mem::ManuallyDrop<Self> {
        std::mem::ManuallyDrop::new(Self { base: base.into() })
    }

    /// The default store directory.
    pub(crate) fn store(&self) -> PathBuf {
        self.base.join("store")
    }

    pub(crate) fn unlock(&self) -> UnlockSecret {
        UnlockSecret::file(self.base.join("unlock"))
    }

    /// A fork-mode service's config for the store in `directory`, created if `creation` says so.
    pub(crate) fn config_at(&self, directory: &Path, creation: StoreCreation) -> Config {
        Config::default()
            .with_spawn_mode(SpawnMode::Fork)
            .with_store(
                StoreConfig::new(directory, self.unlock())
                    .with_creation(creation)
                    .with_kdf(TEST_KDF),
            )
    }

    /// The config that creates the default store if it is missing.
    pub(crate) fn create_config(&self) -> Config {
        self.config_at(&self.store(), StoreCreation::CreateIfMissing)
    }

    /// The config that only opens the default store: a missing or unreadable store is an
    /// error, never silently a new one.
    pub(crate) fn open_config(&self) -> Config {
        self.config_at(&self.store(), StoreCreation::OpenExisting)
    }
}

impl Drop for StoreBase {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// A key as a test tracks it: its purpose and its public key in hex.
pub(crate) type Held = (Purpose, String);

/// Keys by their full id (`{:#}`), sorted, so that two sets print and compare readably.
pub(crate) type KeySet = BTreeMap<String, Held>;

/// What `service` holds, from `list_keys`, each key checked against `key_info` too.
pub(crate) fn key_set(service: &dyn KeyService) -> KeySet {
    let mut set = KeySet::new();
    for info in service.list_keys().unwrap() {
        let again = service.key_info(info.id).unwrap();
        assert_eq!(again, info, "key_info disagrees with list_keys");
        let previous = set.insert(
            format!("{:#}", info.id),
            (info.purpose, info.public_key.to_string()),
        );
        assert!(previous.is_none(), "{:#} listed twice", info.id);
    }
    set
}

/// The purpose `Debug` prints, read back.
pub(crate) fn purpose_named(name: &str) -> Purpose {
    *Purpose::ALL
        .iter()
        .find(|purpose| format!("{purpose:?}") == name)
        .unwrap_or_else(|| panic!("no purpose {name}"))
}

/// Signs a digest with the Ed25519 key `id` and verifies it under `public_hex`, the public key
/// the test recorded when the key was made (not what the service says now).
pub(crate) fn assert_signs_as(service: &dyn KeyService, id: &str, public_hex: &str, digest: u8) {
    let key: KeyId = id.parse().unwrap();
    // A consensus key signs typed messages only.
    if service
        .key_info(key)
        .is_ok_and(|info| info.purpose == Purpose::Consensus)
    {
        return assert_votes_as(service, id, public_hex, digest);
    }
    let public: [u8; 32] = crate::common::unhex(public_hex).try_into().unwrap();
    let verifying = ed25519_dalek::VerifyingKey::from_bytes(&public).unwrap();
    let message = [digest; 32];
    let signature = service
        .sign(key, &message)
        .unwrap_or_else(|error| panic!("{id} no longer signs: {error}"));
    verifying
        .verify_strict(&message, &signature)
        .unwrap_or_else(|error| panic!("{id}'s signature does not verify: {error}"));
}

/// Signs a consensus vote (each call a later round) with the consensus key `id` and verifies
/// it under `public_hex`.
pub(crate) fn assert_votes_as(service: &dyn KeyService, id: &str, public_hex: &str, digest: u8) {
    static ROUND: AtomicU64 = AtomicU64::new(1);
    let key: KeyId = id.parse().unwrap();
    let public: [u8; 32] = crate::common::unhex(public_hex).try_into().unwrap();
    let verifying = ed25519_dalek::VerifyingKey::from_bytes(&public).unwrap();
    let round = ROUND.fetch_add(1, Ordering::Relaxed);
    let vote = keyward::ConsensusMessage::vote(keyward::ChainId([7; 32]), 1, round, [digest; 32]);
    let signature = service
        .sign_consensus(key, &vote)
        .unwrap_or_else(|error| panic!("{id} no longer signs: {error}"));
    verifying
        .verify_strict(&vote.signing_bytes(), &signature)
        .unwrap_or_else(|error| panic!("{id}'s signature does not verify: {error}"));
}

/// Signs with every Ed25519 key of `keys` (a consensus key signs a vote), each verified under
/// its recorded public key.
pub(crate) fn assert_all_sign(service: &dyn KeyService, keys: &KeySet, digest: u8) {
    for (id, (purpose, public)) in keys {
        if *purpose == Purpose::Consensus {
            assert_votes_as(service, id, public, digest);
        } else if purpose.algorithm() == keyward::Algorithm::Ed25519 {
            assert_signs_as(service, id, public, digest);
        }
    }
}

/// On a disk that cannot be written: every key but a consensus key signs; a consensus key is
/// refused a new round, since its watermark must be durable before it signs (the write fails,
/// typed, naming the errno `errno`).
pub(crate) fn assert_all_sign_unwritable(
    service: &dyn KeyService,
    keys: &KeySet,
    digest: u8,
    errno: i32,
) {
    for (id, (purpose, public)) in keys {
        if *purpose == Purpose::Consensus {
            let key: KeyId = id.parse().unwrap();
            // Each attempt a later round: a refused write leaves the watermark advanced in the
            // signer (the safe side), so a lower round would be refused by the guard instead.
            static ATTEMPT: AtomicU64 = AtomicU64::new(1);
            let vote = keyward::ConsensusMessage::vote(
                keyward::ChainId([7; 32]),
                u64::MAX,
                ATTEMPT.fetch_add(1, Ordering::Relaxed),
                [digest; 32],
            );
            let refused = service.sign_consensus(key, &vote);
            assert!(
                matches!(
                    &refused,
                    Err(keyward::Error::Store(StoreError::WriteFailed { errno: e, .. })) if *e == errno
                ),
                "{id}: a new round on an unwritable disk: {refused:?}"
            );
        } else if purpose.algorithm() == keyward::Algorithm::Ed25519 {
            assert_signs_as(service, id, public, digest);
        }
    }
}

/// A readable line per key, for assertion messages.
pub(crate) fn describe(keys: &KeySet) -> String {
    if keys.is_empty() {
        return "(none)".to_owned();
    }
    keys.iter()
        .map(|(id, (purpose, public))| format!("{id} {purpose:?} {public}"))
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// The prefix of every line a subprocess host prints for its test (libtest's own output shares
/// the stream).
pub(crate) const HOST_MARK: &str = "#> ";

/// Runs a subprocess host (`command`, a role re-run of the test binary), waits until it prints
/// `READY`, lets `kill` end it (the test's SIGKILL, or the host's own crash hook), then returns
/// everything it printed, after checking it died of SIGKILL.
pub(crate) fn run_host_until_killed(
    mut command: std::process::Command,
    case: &str,
    kill: impl FnOnce(&mut std::process::Child) -> std::process::ExitStatus,
) -> String {
    use std::io::{BufRead, BufReader, Read};
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, received) = mpsc::channel::<String>();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut line = Vec::new();
        loop {
            line.clear();
            match stdout.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if lines
                        .send(String::from_utf8_lossy(&line).into_owned())
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut printed = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !printed
        .lines()
        .any(|line| line.ends_with(&format!("{HOST_MARK}READY")))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => printed.push_str(&line),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{case}: the host did not get ready\nstdout:\n{printed}\nstderr:\n{}",
                    stderr_reader.join().unwrap()
                );
            }
        }
    }
    let status = kill(&mut child);
    // Everything the host wrote before it died is in the pipe; the reader stops at its end.
    loop {
        match received.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => printed.push_str(&line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{case}: the host's stdout stayed open after it was killed")
            }
        }
    }
    reader.join().unwrap();
    let stderr = stderr_reader.join().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "{case}: the host ended before the kill ({status:?})\nstdout:\n{printed}\nstderr:\n{stderr}"
    );
    printed
}
