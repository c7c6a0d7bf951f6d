//! Property: the signer's memory is isolated. A process of the same unprivileged uid cannot read
//! it through /proc; no secret key ever reaches the supervising (parent) process; a dropped key
//! is gone from the signer's memory; and memfd_secret pages cannot be read even by root.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use common::RoleCommand;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};

use keyward::{
    Config, KeyService, KeySpec, MachineReport, Purpose, SecretMemory, SecretService, SpawnMode,
};

/// The uid and gid of `nobody`: an unprivileged identity.
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn mode_config(mode: &str) -> Config {
    common::spawn_modes()
        .into_iter()
        .find(|(name, _)| *name == mode)
        .map(|(_, config)| config)
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// a. Same uid, unprivileged: the signer's memory is closed; an ordinary process's is not.

const SAME_UID_TEST: &str = "a_same_uid_process_cannot_read_the_signer_memory";

/// What a reader process could do with `/proc/<pid>/mem`, as one line it prints.
fn try_to_read(pid: &str) -> String {
    let mem = match std::fs::File::open(format!("/proc/{pid}/mem")) {
        Ok(mem) => mem,
        Err(error) => return format!("open-error {}", error.raw_os_error().unwrap_or(0)),
    };
    // The memory opened: read the start of the first readable mapping, if the maps say where.
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return "open-ok maps-unreadable".to_owned();
    };
    let Some(start) = maps
        .lines()
        .find(|line| {
            line.split_whitespace()
                .nth(1)
                .is_some_and(|p| p.starts_with('r'))
        })
        .and_then(|line| line.split('-').next())
        .and_then(|start| u64::from_str_radix(start, 16).ok())
    else {
        return "open-ok no-readable-mapping".to_owned();
    };
    let mut buffer = [0u8; 16];
    match mem.read_at(&mut buffer, start) {
        Ok(count) => format!("read-ok {}", common::hex(&buffer[..count])),
        Err(error) => format!("read-error {}", error.raw_os_error().unwrap_or(0)),
    }
}

/// Runs a reader: a separate process of this uid (a re-run of this test as `reader`).
fn reader_says(pid: u32) -> String {
    let output = common::rerun_self(SAME_UID_TEST, "reader")
        .parameter("target", pid.to_string())
        .output()
        .unwrap();
    assert!(output.status.success(), "the reader failed: {output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        // libtest may print "test ... " on the same line before the marker.
        .find_map(|line| line.split_once("READER ").map(|(_, answer)| answer))
        .unwrap_or_else(|| panic!("the reader said nothing: {output:?}"))
        .to_owned()
}

fn refused(answer: &str) -> bool {
    answer == format!("open-error {}", libc::EACCES)
        || answer == format!("open-error {}", libc::EPERM)
}

/// A child process killed and reaped when dropped, even if the test fails first.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Played by a process running as `nobody`: spawn the service, then have another process of the
/// same uid try to read the signer's memory, and (control) an ordinary child's memory.
fn play_unprivileged_owner() {
    let uid = nix::unistd::getuid();
    assert!(!uid.is_root(), "the owner must not run as root");
    assert_eq!(
        common::status_field("self", "CapEff").as_deref(),
        Some("0000000000000000"),
        "the owner must hold no capability (no CAP_SYS_PTRACE)"
    );
    println!("owner: uid {uid}, no capabilities");

    // Control: an ordinary process of this uid, started by this owner, is readable by a reader of
    // the same uid: its first mapping is the sleep binary's ELF header.
    let sleep = KillOnDrop(
        Command::new("sleep")
            .arg("30")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let answer = reader_says(sleep.0.id());
    println!(
        "owner: reader on an ordinary child (sleep {}): {answer}",
        sleep.0.id()
    );
    drop(sleep);
    assert!(
        answer.starts_with("read-ok 7f454c46"),
        "control: a same-uid process could not read an ordinary process's memory: {answer}"
    );

    // The signer program for fork-exec mode: the copy `nobody` can run (see below).
    let signer_program =
        common::role_parameter_if_given("signer").map_or_else(common::signer_program, Into::into);
    let modes = [
        ("fork", Config::default()),
        (
            "fork-exec",
            Config::default().with_spawn_mode(SpawnMode::ForkExec {
                program: signer_program,
            }),
        ),
    ];
    for (mode, config) in modes {
        for memory in [SecretMemory::LockedAnonymous, SecretMemory::Auto] {
            let service = SecretService::spawn(config.clone().with_secret_memory(memory))
                .unwrap_or_else(|e| panic!("{mode} {memory:?}: {e}"));
            service
                .generate_key(KeySpec::new(Purpose::Account))
                .unwrap();
            let pid = service.pid();
            let uid_line = common::status_field(&pid.to_string(), "Uid");
            assert!(
                uid_line
                    .as_deref()
                    .is_some_and(|u| u.starts_with(&uid.to_string())),
                "{mode}: the signer runs as {uid_line:?}, not as the owner's uid"
            );

            // Another process of the same uid.
            let answer = reader_says(u32::try_from(pid).unwrap());
            println!("owner: {mode} {memory:?}: reader on the signer {pid}: {answer}");
            assert!(
                refused(&answer),
                "{mode} {memory:?}: a same-uid reader got {answer}"
            );

            // The owner itself, the signer's parent, is refused too.
            let answer = try_to_read(&pid.to_string());
            println!("owner: {mode} {memory:?}: the signer's own parent: {answer}");
            assert!(
                refused(&answer),
                "{mode} {memory:?}: the parent got {answer}"
            );
        }
    }
    println!("\nOWNER DONE");
}

#[test]
fn a_same_uid_process_cannot_read_the_signer_memory() {
    match common::role().as_deref() {
        Some("owner") => return play_unprivileged_owner(),
        Some("reader") => {
            let target = common::role_parameter("target");
            println!("READER {}", try_to_read(&target));
            return;
        }
        _ => {}
    }
    // The build directory may be closed to `nobody` (a checkout under /root, say): run copies of
    // this test binary and of the signer program from a directory anyone can read.
    let copies = common::TempDir::new("keyward-same-uid");
    let open_to_all = |path: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    open_to_all(copies.path());
    let test_binary = copies.path().join("memory_isolation");
    let signer = copies.path().join("keyward");
    std::fs::copy(std::env::current_exe().unwrap(), &test_binary).unwrap();
    std::fs::copy(common::signer_program(), &signer).unwrap();
    open_to_all(&test_binary);
    open_to_all(&signer);
    let mut owner = Command::new(&test_binary);
    owner
        .args(["--exact", SAME_UID_TEST, "--nocapture", "--test-threads=1"])
        .env(common::ROLE_VAR, "owner")
        .parameter("signer", signer.display())
        .current_dir(copies.path());
    if is_root() {
        // Drop to nobody (std also clears the supplementary groups when root sets a uid).
        owner.uid(NOBODY).gid(NOBODY);
    }
    let output = owner.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the unprivileged owner failed");
    assert!(
        stdout.contains("OWNER DONE"),
        "the owner's checks did not all run"
    );
}

// ---------------------------------------------------------------------------------------------
// b. No secret reaches the parent; a dropped key is gone.
//
// The process that looks for secrets necessarily holds them once found, so it cannot be the one
// whose memory is searched. The parent is therefore a re-run of this test ("keyholder", root,
// like CI) that spawns the service and does nothing else; this test process finds the secrets in
// the signer and then searches the keyholder's whole memory for them.

const PARENT_TEST: &str = "no_secret_key_reaches_the_parent_and_a_dropped_key_is_gone";

/// Keys in the keyholder's signer: small, so the derivation scan is quick.
const KEYHOLDER_KEY_LIMIT: u32 = 8;

/// Played by the keyholder: spawn, generate one key of each purpose, use them, print what the
/// test needs (never a secret), then obey `drop` and `exit` on stdin.
fn play_keyholder() {
    let mode = common::role_parameter("mode");
    let service = SecretService::spawn(
        mode_config(&mode)
            .with_secret_memory(SecretMemory::LockedAnonymous)
            .with_key_limit(KEYHOLDER_KEY_LIMIT),
    )
    .unwrap();
    // A canary the parent really holds, for the scanner to find: proves the search of the
    // parent's memory sees its heap.
    let mut canary = Box::new([0u8; 32]);
    getrandom::fill(canary.as_mut_slice()).unwrap();
    println!("KW signer {}", service.pid());
    println!("KW canary {}", common::hex(canary.as_slice()));
    let mut keys = Vec::new();
    for purpose in Purpose::ALL {
        let key = service.generate_key(KeySpec::new(purpose)).unwrap();
        let public = service.public_key(key).unwrap();
        match public {
            keyward::PublicKey::Ed25519(verifying) if purpose == Purpose::Consensus => {
                let vote =
                    keyward::ConsensusMessage::vote(keyward::ChainId([1; 32]), 1, 1, [0x5a; 32]);
                let signature = service.sign_consensus(key, &vote).unwrap();
                verifying
                    .verify_strict(&vote.signing_bytes(), &signature)
                    .unwrap();
            }
            keyward::PublicKey::Ed25519(verifying) => {
                let signature = service.sign(key, &[0x5a; 32]).unwrap();
                verifying.verify_strict(&[0x5a; 32], &signature).unwrap();
            }
            keyward::PublicKey::X25519(_) => {
                let peer = x25519_dalek::StaticSecret::from([0x33; 32]);
                let shared = service
                    .diffie_hellman(key, &x25519_dalek::PublicKey::from(&peer))
                    .unwrap();
                assert_ne!(shared.expose_secret(), &[0; 32]);
            }
        }
        println!(
            "KW key {:?} {}",
            public.algorithm(),
            common::hex(&public.to_bytes())
        );
        keys.push(key);
    }
    assert_eq!(service.list_keys().unwrap().len(), keys.len());
    println!("KW ready");
    let mut line = String::new();
    let stdin = std::io::stdin();
    loop {
        line.clear();
        if stdin.lock().read_line(&mut line).unwrap() == 0 {
            break;
        }
        match line.trim() {
            "drop" => {
                for key in &keys {
                    service.drop_key(*key).unwrap();
                }
                assert!(service.list_keys().unwrap().is_empty());
                println!("KW dropped");
            }
            "exit" => break,
            other => panic!("unknown command {other:?}"),
        }
    }
    std::hint::black_box(&canary);
}

/// A key in the signer, as the keyholder described it.
struct Described {
    ed25519: bool,
    public: [u8; 32],
}

struct Keyholder {
    child: Child,
    stdin: ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Keyholder {
    fn start(mode: &str) -> Self {
        let mut child = common::rerun_self(PARENT_TEST, "keyholder")
            .parameter("mode", mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Keyholder {
            child,
            stdin,
            lines,
        }
    }

    /// The keyholder's `KW` lines up to and including `last`.
    fn read_until(&mut self, last: &str) -> Vec<String> {
        let mut said = Vec::new();
        for line in self.lines.by_ref() {
            let line = line.unwrap();
            // libtest may print "test ... " on the same line before the marker.
            if let Some((_, message)) = line.split_once("KW ") {
                said.push(message.to_owned());
                if message == last {
                    return said;
                }
            }
        }
        panic!("the keyholder ended before saying {last:?}: {said:?}");
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }
}

/// Looks in the signer's key mappings for a 32-byte window whose derived public key is one of
/// `keys`; returns the window for each key found (index into `keys`) and where it was.
fn derive_secrets(signer: u32, keys: &[Described]) -> Vec<(usize, [u8; 32], String)> {
    let mut found = Vec::new();
    let key_pages = common::readable_memory(signer, |m| m.has_flag("lo") && m.has_flag("dd"));
    assert!(
        !key_pages.is_empty(),
        "the signer has no locked don't-dump mapping"
    );
    for (mapping, mut bytes) in key_pages {
        for offset in 0..bytes.len().saturating_sub(31) {
            let window: [u8; 32] = bytes[offset..offset + 32].try_into().unwrap();
            if window.iter().all(|b| *b == 0) {
                continue;
            }
            let ed25519 = ed25519_dalek::SigningKey::from_bytes(&window)
                .verifying_key()
                .to_bytes();
            let x25519 =
                x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(window)).to_bytes();
            for (index, key) in keys.iter().enumerate() {
                let derived = if key.ed25519 { ed25519 } else { x25519 };
                if derived == key.public {
                    found.push((index, window, format!("{} +{offset:#x}", mapping.range())));
                }
            }
        }
        zeroize::Zeroize::zeroize(&mut bytes);
    }
    found
}

#[test]
fn no_secret_key_reaches_the_parent_and_a_dropped_key_is_gone() {
    if common::role().as_deref() == Some("keyholder") {
        return play_keyholder();
    }
    assert!(
        is_root(),
        "this test reads a non-dumpable signer's memory, which only root can (CI runs as root)"
    );
    for mode in ["fork", "fork-exec"] {
        let mut keyholder = Keyholder::start(mode);
        let said = keyholder.read_until("ready");
        let signer: u32 = said
            .iter()
            .find_map(|line| line.strip_prefix("signer "))
            .unwrap()
            .parse()
            .unwrap();
        let canary: [u8; 32] = common::unhex(
            said.iter()
                .find_map(|line| line.strip_prefix("canary "))
                .unwrap(),
        )
        .try_into()
        .unwrap();
        let keys: Vec<Described> = said
            .iter()
            .filter_map(|line| line.strip_prefix("key "))
            .map(|line| {
                let (algorithm, public) = line.split_once(' ').unwrap();
                Described {
                    ed25519: algorithm == "Ed25519",
                    public: common::unhex(public).try_into().unwrap(),
                }
            })
            .collect();
        assert_eq!(keys.len(), Purpose::ALL.len(), "{mode}");
        let parent = keyholder.child.id();

        // 1. Find every secret in the signer's key pages: proves the scanner works.
        let found = derive_secrets(signer, &keys);
        let mut secrets = Vec::new();
        for (index, _) in keys.iter().enumerate() {
            let (_, secret, place) =
                found.iter().find(|(i, ..)| *i == index).unwrap_or_else(|| {
                    panic!("{mode}: key {index} not found in the signer's key pages")
                });
            println!("{mode}: key {index} found in the signer at {place}");
            secrets.push(*secret);
        }

        // 2. The parent holds none of them. Control: the same search finds the parent's canary.
        let mut needles = secrets.clone();
        needles.push(canary);
        let mut parent_hits = Vec::new();
        let mut searched = 0usize;
        for (mapping, bytes) in common::readable_memory(parent, |_| true) {
            searched += bytes.len();
            for (index, offset) in common::occurrences(&bytes, &needles) {
                parent_hits.push((
                    index,
                    format!("{} {} +{offset:#x}", mapping.range(), mapping.path),
                ));
            }
        }
        println!(
            "{mode}: searched {} MiB of the parent's memory",
            searched >> 20
        );
        assert!(
            parent_hits.iter().any(|(index, _)| *index == secrets.len()),
            "{mode}: control failed: the parent's canary was not found in its memory"
        );
        let leaks: Vec<_> = parent_hits
            .iter()
            .filter(|(index, _)| *index < secrets.len())
            .collect();
        assert!(
            leaks.is_empty(),
            "{mode}: secret keys found in the parent: {leaks:?}"
        );

        // In the signer as a whole, each secret has exactly one copy, in the locked don't-dump
        // key pages: generating, signing and Diffie-Hellman left none on a stack or heap.
        let mut copies = Vec::new();
        for (mapping, bytes) in common::readable_memory(signer, |_| true) {
            for (index, offset) in common::occurrences(&bytes, &secrets) {
                let place = format!("{} {} +{offset:#x}", mapping.range(), mapping.path);
                println!(
                    "{mode}: key {index} at {place} [{}]",
                    mapping.flags.join(" ")
                );
                copies.push((
                    index,
                    mapping.has_flag("lo") && mapping.has_flag("dd"),
                    place,
                ));
            }
        }
        for index in 0..secrets.len() {
            let of_key: Vec<_> = copies.iter().filter(|(i, ..)| *i == index).collect();
            assert!(
                of_key.len() == 1 && of_key[0].1,
                "{mode}: key {index} should have one copy, in the key pages: {of_key:?}"
            );
        }

        // 3. After drop_key, the secrets are gone: from the key pages (no window derives any of
        // the public keys, no copy of a secret) and from the rest of the signer's memory.
        keyholder.send("drop");
        keyholder.read_until("dropped");
        let derived = derive_secrets(signer, &keys);
        assert!(
            derived.is_empty(),
            "{mode}: dropped keys still derivable: {:?}",
            derived.iter().map(|(i, _, p)| (i, p)).collect::<Vec<_>>()
        );
        let mut remaining = Vec::new();
        for (mapping, bytes) in common::readable_memory(signer, |_| true) {
            for (index, offset) in common::occurrences(&bytes, &secrets) {
                remaining.push(format!(
                    "key {index} at {} {} +{offset:#x} [{}]",
                    mapping.range(),
                    mapping.path,
                    mapping.flags.join(" ")
                ));
            }
        }
        assert!(
            remaining.is_empty(),
            "{mode}: copies of dropped keys remain in the signer: {remaining:#?}"
        );

        keyholder.send("exit");
        let status = keyholder.child.wait().unwrap();
        assert!(status.success(), "{mode}: the keyholder failed: {status}");
        for secret in &mut secrets {
            zeroize::Zeroize::zeroize(secret);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// c. memfd_secret pages: unreadable through /proc even by root.

#[test]
fn memfd_secret_pages_are_unreadable_even_by_root() {
    if !MachineReport::gather().memfd_secret {
        println!("SKIPPED: memfd_secret is not available on this kernel");
        return;
    }
    assert!(
        is_root(),
        "this test shows what root cannot read (CI runs as root)"
    );
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config.with_secret_memory(SecretMemory::MemfdSecret))
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        let who = service.pid().to_string();
        let maps = common::smaps(&who).unwrap();
        let secret: Vec<_> = maps
            .iter()
            .filter(|m| m.path.starts_with("/secretmem"))
            .collect();
        assert!(!secret.is_empty(), "{mode}: no /secretmem mapping");
        let mem = std::fs::File::open(format!("/proc/{who}/mem")).unwrap_or_else(|e| {
            panic!("{mode}: root could not even open the signer's memory: {e}")
        });
        // Control: root reads an ordinary mapping of the same signer through the same file.
        let ordinary = maps
            .iter()
            .find(|m| m.readable() && m.path == "[stack]")
            .or_else(|| {
                maps.iter().find(|m| {
                    m.readable() && !m.path.starts_with("/secretmem") && !m.path.starts_with("[v")
                })
            })
            .unwrap();
        let mut buffer = [0u8; 64];
        mem.read_exact_at(&mut buffer, ordinary.end - 64)
            .unwrap_or_else(|e| panic!("{mode}: control: root could not read {ordinary:?}: {e}"));
        for mapping in secret {
            for address in [mapping.start, mapping.end - 64] {
                let error = mem.read_exact_at(&mut buffer, address).unwrap_err();
                assert_eq!(
                    error.raw_os_error(),
                    Some(libc::EIO),
                    "{mode}: reading {mapping:?} at {address:#x}: {error}"
                );
            }
        }
    }
}
