//! Property: the sealed store's secrets stay sealed, on disk and in the host.
//!
//! - The store's files hold no key byte in the clear: every secret (each Ed25519 seed with its
//!   expanded scalar and nonce prefix, each X25519 scalar, clamped or not) is found by unsealing
//!   the files with a second, independent reader of the format (`store_util`), checked against
//!   its public key, and then no 16-byte window of any of them occurs in any version of any file
//!   the store directory held.
//! - The unlock secret and the key-encryption key never appear in the host's memory: a
//!   subprocess host opens a store (from an unlock file, or from an in-memory passphrase that
//!   must be gone once spawn returns) and uses its keys; a root scanner reads the host's whole
//!   memory from outside (`/proc/<pid>/mem`). The scanner computes the key-encryption key
//!   itself with Argon2id from the unlock secret and the header's salt and costs. Controls: the
//!   scan finds a canary the host holds, and the same scan finds the key-encryption key in the
//!   signer (whose key pages are locked anonymous memory, which root can read).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod store_util;

use common::RoleCommand;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Stdio};

use keyward::{
    Config, KeyService, KeySpec, Purpose, SecretMemory, SecretService, SpawnMode, StoreConfig,
    UnlockSecret,
};
use sha2::{Digest, Sha512};
use store_util::{
    PREVIOUS, RECORD_LEN, RECORDS_AT, STATE, Scratch, TEST_KDF, derive_kek, manifest_opens,
    public_of, record_count, record_range, record_secret, snapshot, verifier_opens,
};
use zeroize::Zeroizing;

fn spawn_mode(mode: &str) -> SpawnMode {
    match mode {
        "fork" => SpawnMode::Fork,
        "fork-exec" => SpawnMode::ForkExec {
            program: common::signer_program(),
        },
        other => panic!("mode {other}"),
    }
}

/// Uses a key once: signs with an Ed25519 key, agrees with an X25519 one.
fn use_key(service: &SecretService, key: keyward::KeyId) {
    match service.public_key(key).unwrap() {
        keyward::PublicKey::Ed25519(_) => common::assert_signs(service, key, &[0x5a; 32]),
        keyward::PublicKey::X25519(_) => {
            let peer = x25519_dalek::StaticSecret::from([0x33; 32]);
            let shared = service
                .diffie_hellman(key, &x25519_dalek::PublicKey::from(&peer))
                .unwrap();
            assert_ne!(shared.expose_secret(), &[0; 32]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// On disk.

/// Every 32-byte value a record's secret gives that would betray it: the secret itself and,
/// for Ed25519, both halves of SHA-512(seed) (the scalar before and after clamping, and the
/// nonce prefix); for X25519, the clamped scalar.
fn secret_forms(algorithm: u8, secret: &[u8; 32]) -> Vec<[u8; 32]> {
    let mut forms = vec![*secret];
    let clamp = |mut scalar: [u8; 32]| {
        scalar[0] &= 248;
        scalar[31] &= 127;
        scalar[31] |= 64;
        scalar
    };
    if algorithm == 0 {
        let expanded = Sha512::digest(secret);
        let scalar: [u8; 32] = expanded[..32].try_into().unwrap();
        let prefix: [u8; 32] = expanded[32..].try_into().unwrap();
        forms.extend([scalar, clamp(scalar), prefix]);
    } else {
        forms.push(clamp(*secret));
    }
    forms
}

/// Where a 16-byte window of a needle occurs in `haystack`.
fn windows_in(haystack: &[u8], windows: &HashSet<[u8; 16]>) -> Vec<usize> {
    if haystack.len() < 16 {
        return Vec::new();
    }
    (0..=haystack.len() - 16)
        .filter(|&at| windows.contains(&<[u8; 16]>::try_from(&haystack[at..at + 16]).unwrap()))
        .collect()
}

#[test]
fn the_store_files_hold_no_key_byte_in_the_clear() {
    const UNLOCK: &[u8] = b"store secrets on disk\n";
    for mode in ["fork", "fork-exec"] {
        let scratch = Scratch::new(&format!("on-disk-{mode}"));
        let unlock = scratch.unlock_file("unlock", UNLOCK);
        let store = scratch.store();
        let config = store_util::create_config(&store, &unlock).with_spawn_mode(spawn_mode(mode));
        // Every version of every file the directory held, after each change.
        let mut seen: Vec<(String, Vec<u8>)> = Vec::new();
        let mut keep = || {
            for (name, (_, bytes)) in snapshot(&store) {
                seen.push((name, bytes));
            }
        };
        let mut publics = Vec::new();
        {
            let service = SecretService::spawn(config.clone()).unwrap();
            keep();
            let mut keys = Vec::new();
            for _ in 0..2 {
                for purpose in Purpose::ALL {
                    let key = service.generate_key(KeySpec::new(purpose)).unwrap();
                    use_key(&service, key);
                    publics.push(service.public_key(key).unwrap().to_bytes());
                    keys.push(key);
                    keep();
                }
            }
            // Dropped keys: their records leave the state, but stay in older versions.
            for key in [keys[0], keys[3]] {
                service.drop_key(key).unwrap();
                keep();
            }
            let key = service
                .generate_key(KeySpec::new(Purpose::NetworkDiscovery))
                .unwrap();
            publics.push(service.public_key(key).unwrap().to_bytes());
            keep();
        }
        // Reopened by a new service, which adds a key.
        {
            let service = SecretService::spawn(config).unwrap();
            let key = service
                .generate_key(KeySpec::new(Purpose::Consensus))
                .unwrap();
            use_key(&service, key);
            publics.push(service.public_key(key).unwrap().to_bytes());
            keep();
        }

        // Unseal every version of the state and its previous copy.
        let mut secrets: BTreeMap<[u8; 32], (u8, Zeroizing<[u8; 32]>)> = BTreeMap::new();
        let mut versions = 0;
        for (name, bytes) in &seen {
            if name != STATE && name != PREVIOUS {
                continue;
            }
            versions += 1;
            let watermarks = u32::from_le_bytes(bytes[131..135].try_into().unwrap()) as usize;
            assert_eq!(
                bytes.len(),
                RECORDS_AT + record_count(bytes) * RECORD_LEN + watermarks * 181,
                "{mode}: {name}"
            );
            let kek = derive_kek(&UNLOCK[..UNLOCK.len() - 1], bytes);
            assert!(verifier_opens(&kek, bytes), "{mode}: {name}: the verifier");
            assert!(manifest_opens(&kek, bytes), "{mode}: {name}: the manifest");
            for index in 0..record_count(bytes) {
                let record = &bytes[record_range(index)];
                let secret = record_secret(&kek, bytes, index)
                    .unwrap_or_else(|| panic!("{mode}: {name}: record {index} does not open"));
                let public: [u8; 32] = record[40..72].try_into().unwrap();
                assert_eq!(
                    public_of(record[19], &secret),
                    public,
                    "{mode}: {name}: record {index}"
                );
                secrets.insert(public, (record[19], secret));
            }
        }
        // Control: every key made was found sealed, and its secret is the one behind its
        // public key (checked above).
        for public in &publics {
            assert!(
                secrets.contains_key(public),
                "{mode}: a key made was not found sealed"
            );
        }
        assert_eq!(secrets.len(), publics.len(), "{mode}");
        println!(
            "{mode}: {} keys' secrets recovered from {versions} versions of the state files",
            secrets.len()
        );

        let mut windows = HashSet::new();
        for (algorithm, secret) in secrets.values() {
            for form in secret_forms(*algorithm, secret) {
                for at in 0..=16 {
                    windows.insert(<[u8; 16]>::try_from(&form[at..at + 16]).unwrap());
                }
            }
        }
        let mut found = Vec::new();
        for (name, bytes) in &seen {
            for at in windows_in(bytes, &windows) {
                found.push(format!("{name} +{at}"));
            }
        }
        assert!(
            found.is_empty(),
            "{mode}: key bytes in the clear in the store: {found:?}"
        );

        // Control: the same search finds a secret's window planted in a file.
        let (_, (_, secret)) = secrets.iter().next().unwrap();
        let mut planted = seen.last().unwrap().1.clone();
        planted.extend_from_slice(&secret[5..21]);
        assert_eq!(windows_in(&planted, &windows).len(), 1, "{mode}: control");
        println!(
            "{mode}: {} file versions searched, no 16-byte window of any secret in them",
            seen.len()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// In the host's memory.

const MEMORY_TEST: &str = "the_host_never_holds_the_unlock_secret_or_the_key_encryption_key";

/// Played by the host under scan: opens (creates) the store, uses a key of every purpose (with
/// an unlock file: respawns, so a second signer derives the key too), says where its signer is
/// and what its canary is, and waits to be told to exit.
fn play_host() {
    let mode = common::role_parameter("mode");
    let source = common::role_parameter("source");
    let unlock_path = common::role_parameter("unlock");
    let unlock = match source.as_str() {
        "file" => UnlockSecret::file(&unlock_path),
        "passphrase" => {
            // Read straight into one buffer of the right size (no buffered reader keeps a
            // copy); the library wipes it once it has moved the bytes.
            let mut file = std::fs::File::open(&unlock_path).unwrap();
            let length = usize::try_from(file.metadata().unwrap().len()).unwrap();
            let mut passphrase = Zeroizing::new(vec![0u8; length]);
            file.read_exact(&mut passphrase).unwrap();
            drop(file);
            UnlockSecret::passphrase(passphrase)
        }
        other => panic!("source {other}"),
    };
    let config = Config::default()
        .with_spawn_mode(spawn_mode(&mode))
        // Locked anonymous key pages, which root can read: the scanner's control finds the
        // key-encryption key there.
        .with_secret_memory(SecretMemory::LockedAnonymous)
        .with_store(
            StoreConfig::new(common::role_parameter("store"), unlock)
                .create_if_missing()
                .with_kdf(TEST_KDF),
        );
    let service = SecretService::spawn(config).unwrap();
    // A canary the host really holds, for the scanner to find.
    let mut canary = Box::new([0u8; 32]);
    getrandom::fill(canary.as_mut_slice()).unwrap();
    for purpose in Purpose::ALL {
        let key = service.generate_key(KeySpec::new(purpose)).unwrap();
        use_key(&service, key);
    }
    if source == "file" {
        service.respawn().unwrap();
        for key in service.list_keys().unwrap() {
            use_key(&service, key.id);
        }
        let key = service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        use_key(&service, key);
    }
    println!("KW signer {}", service.pid());
    println!("KW canary {}", common::hex(canary.as_slice()));
    println!("KW ready");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
    std::hint::black_box(&canary);
}

struct Host {
    child: Child,
    stdin: ChildStdin,
    /// Kept open until the host exits: it prints its test result after the scan.
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    said: Vec<String>,
}

impl Host {
    fn start(mode: &str, source: &str, store: &std::path::Path, unlock: &std::path::Path) -> Self {
        let mut child = common::rerun_self(MEMORY_TEST, "host")
            .parameter("mode", mode)
            .parameter("source", source)
            .parameter("store", store.display())
            .parameter("unlock", unlock.display())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut said = Vec::new();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            // libtest may print "test ... " on the same line before the marker.
            if let Some((_, message)) = line.split_once("KW ") {
                said.push(message.to_owned());
                if message == "ready" {
                    return Host {
                        child,
                        stdin,
                        lines,
                        said,
                    };
                }
            }
        }
        let _ = child.kill();
        let status = child.wait();
        panic!("the host ended before it was ready ({status:?}): {said:?}");
    }

    fn value(&self, name: &str) -> &str {
        self.said
            .iter()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("the host did not say its {name}"))
    }

    fn exit(mut self) {
        writeln!(self.stdin, "exit").unwrap();
        self.stdin.flush().unwrap();
        for line in self.lines.by_ref() {
            line.unwrap();
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the host failed: {status}");
    }
}

/// A host that fails a check is killed and reaped.
impl Drop for Host {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What one scanned host showed: its needles' names, and where each was found in the host and
/// in its signer.
struct Scanned {
    what: String,
    names: Vec<String>,
    host: Vec<(usize, String)>,
    signer: Vec<(usize, String)>,
}

/// The needles: the unlock secret, the key-encryption key, the host's canary, then the keys'
/// secrets.
const UNLOCK_SECRET: usize = 0;
const KEK: usize = 1;
const CANARY: usize = 2;

/// Runs a host that opens a store unlocked from `source` ("file" or "passphrase") in `mode`,
/// and scans its memory and its signer's for the unlock secret, the key-encryption key (computed
/// here), its canary and the keys' secrets.
fn run_and_scan(source: &str, mode: &str) -> Scanned {
    let what = format!("{source}, {mode}");
    let scratch = Scratch::new(&format!("in-memory-{source}-{mode}"));
    // A random unlock secret, known only to this scanner and the file (never in the host's
    // environment or arguments), not ending in a newline the reader would take off.
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).unwrap();
    if matches!(secret[31], b'\n' | b'\r') {
        secret[31] = b'x';
    }
    let mut content = secret.to_vec();
    if source == "file" {
        content.push(b'\n');
    }
    let unlock = scratch.unlock_file("unlock", &content);
    let host = Host::start(mode, source, &scratch.store(), &unlock);
    let signer: u32 = host.value("signer").parse().unwrap();
    let canary: [u8; 32] = common::unhex(host.value("canary")).try_into().unwrap();

    // The key-encryption key, computed here; control: it opens the store's verifier.
    let state = std::fs::read(scratch.file(STATE)).unwrap();
    let kek = derive_kek(&secret, &state);
    assert!(
        verifier_opens(&kek, &state),
        "{what}: the KEK computed here is wrong"
    );
    // The keys' secrets too: with a store, they still never reach the host.
    let mut needles = vec![secret, *kek, canary];
    let mut names = vec![
        "the unlock secret".to_owned(),
        "the key-encryption key".to_owned(),
        "the canary".to_owned(),
    ];
    for index in 0..record_count(&state) {
        needles.push(*record_secret(&kek, &state, index).unwrap());
        names.push(format!("the secret of record {index}"));
    }

    let (host_hits, searched) = common::scan_memory(host.child.id(), &needles, |_| true);
    println!(
        "{what}: searched {} MiB of the host's memory",
        searched >> 20
    );
    for (index, place) in &host_hits {
        println!("{what}: host: {} at {place}", names[*index]);
    }
    let (signer_hits, searched) = common::scan_memory(signer, &needles[..CANARY], |_| true);
    println!(
        "{what}: searched {} MiB of the signer's memory",
        searched >> 20
    );
    for (index, place) in &signer_hits {
        println!("{what}: signer: {} at {place}", names[*index]);
    }
    host.exit();
    for needle in &mut needles {
        zeroize::Zeroize::zeroize(needle);
    }
    Scanned {
        what,
        names,
        host: host_hits,
        signer: signer_hits,
    }
}

#[test]
fn the_host_never_holds_the_unlock_secret_or_the_key_encryption_key() {
    if common::role().as_deref() == Some("host") {
        return play_host();
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test reads other processes' memory, which needs root (CI runs as root)"
    );
    for source in ["file", "passphrase"] {
        for mode in ["fork", "fork-exec"] {
            let scanned = run_and_scan(source, mode);
            let what = &scanned.what;
            assert!(
                scanned.host.iter().any(|(index, _)| *index == CANARY),
                "{what}: control failed: the host's canary was not found in its memory"
            );
            // Control for the key-encryption key: the same scan finds it in the signer.
            assert!(
                scanned.signer.iter().any(|(index, _)| *index == KEK),
                "{what}: control failed: the key-encryption key was not found in the signer"
            );
            let leaks: Vec<_> = scanned
                .host
                .iter()
                .filter(|(index, _)| *index != CANARY)
                .map(|(index, place)| format!("{} at {place}", scanned.names[*index]))
                .collect();
            assert!(leaks.is_empty(), "{what}: found in the host: {leaks:#?}");
        }
    }
}

/// The signer needs the unlock secret only to derive the key-encryption key; after that, like
/// the secret it reads from a file, an in-memory passphrase should be gone from it too (it would
/// otherwise sit for the signer's whole life in ordinary memory, which is neither locked nor
/// kept out of dumps, unlike the key it derives).
#[test]
fn the_signer_keeps_no_copy_of_the_unlock_secret_once_the_store_is_open() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test reads the signer's memory, which needs root (CI runs as root)"
    );
    let mut copies = Vec::new();
    for source in ["file", "passphrase"] {
        for mode in ["fork", "fork-exec"] {
            let scanned = run_and_scan(source, mode);
            assert!(
                scanned.signer.iter().any(|(index, _)| *index == KEK),
                "{}: control failed: the key-encryption key was not found in the signer",
                scanned.what
            );
            copies.extend(
                scanned
                    .signer
                    .iter()
                    .filter(|(index, _)| *index == UNLOCK_SECRET)
                    .map(|(_, place)| format!("{}: {place}", scanned.what)),
            );
        }
    }
    assert!(
        copies.is_empty(),
        "the unlock secret stays in the signer after the store is open: {copies:#?}"
    );
}
