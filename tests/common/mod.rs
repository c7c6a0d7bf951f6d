//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use keyward::{Config, SpawnMode};

/// The keyward binary cargo built for these tests: the signer program for fork-exec mode.
pub(crate) fn signer_program() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keyward"))
}

/// The two spawn modes, each with a name for assertion messages. Every API test runs against
/// both.
pub(crate) fn spawn_modes() -> Vec<(&'static str, Config)> {
    vec![
        ("fork", Config::default().with_spawn_mode(SpawnMode::Fork)),
        (
            "fork-exec",
            Config::default().with_spawn_mode(SpawnMode::ForkExec {
                program: signer_program(),
            }),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Sandbox test helpers: re-running a test in a subprocess, and reading /proc directly (the
// sandbox tests trust the kernel's files, not the library's own report).

/// The environment variable that tells a re-run test binary which role to play. Every test that
/// needs a subprocess (a host with its own process state, a scanner, an unprivileged reader)
/// re-runs its own test binary through [`rerun_self`] and asks [`role`] which part it plays.
pub(crate) const ROLE_VAR: &str = "KEYWARD_TEST_ROLE";

/// The prefix of a role's parameters in its environment (see [`RoleCommand::parameter`]).
const PARAMETER_PREFIX: &str = "KEYWARD_TEST_ROLE_";

/// The role this process was re-run for, if any.
pub(crate) fn role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}

/// A parameter the test gave this role (see [`RoleCommand::parameter`]).
pub(crate) fn role_parameter(name: &str) -> String {
    let variable = format!("{PARAMETER_PREFIX}{}", name.to_uppercase());
    std::env::var(&variable).unwrap_or_else(|_| panic!("the role was given no {name}"))
}

/// A parameter the test gave this role, if it gave one.
pub(crate) fn role_parameter_if_given(name: &str) -> Option<String> {
    std::env::var(format!("{PARAMETER_PREFIX}{}", name.to_uppercase())).ok()
}

/// Passing parameters to a role.
pub(crate) trait RoleCommand {
    /// Gives the role `name = value`, read back with [`role_parameter`].
    fn parameter(&mut self, name: &str, value: impl std::fmt::Display) -> &mut Self;
}

impl RoleCommand for std::process::Command {
    fn parameter(&mut self, name: &str, value: impl std::fmt::Display) -> &mut Self {
        self.env(
            format!("{PARAMETER_PREFIX}{}", name.to_uppercase()),
            value.to_string(),
        )
    }
}

/// A command that re-runs exactly the test `test` of this test binary (ignored or not), playing
/// `role`.
pub(crate) fn rerun_self(test: &str, role: &str) -> std::process::Command {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            test,
            "--nocapture",
            "--test-threads=1",
            "--include-ignored",
        ])
        .env(ROLE_VAR, role);
    command
}

/// Runs `role` of `test` as a host of its own, within `deadline`, and checks that it exited
/// successfully after printing `HOST DONE` (so an early, quiet exit is not taken for success).
pub(crate) fn run_host_role(test: &str, role: &str, deadline: std::time::Duration) {
    let run = run_role(test, role, &[], deadline);
    println!("{}{}", run.stdout, run.stderr);
    assert!(run.succeeded(), "the host failed: {:?}", run.status);
    assert!(
        run.stdout.contains("HOST DONE"),
        "the host's checks did not all run"
    );
}

/// `count` digests, all different, and different for each `salt`.
pub(crate) fn numbered_digests(count: usize, salt: u8) -> Vec<[u8; 32]> {
    (0..count)
        .map(|at| {
            let mut digest = [salt; 32];
            digest[..8].copy_from_slice(&(at as u64).to_le_bytes());
            digest
        })
        .collect()
}

/// An account key of `service`, checked to sign a digest that verifies under its public key:
/// the signer is known to be serving, and to be a real one.
pub(crate) fn serving_key(service: &dyn keyward::KeyService) -> keyward::KeyId {
    let key = service
        .generate_key(keyward::KeySpec::new(keyward::Purpose::Account))
        .unwrap();
    assert_signs(service, key, &[3; 32]);
    key
}

/// `service` signs `digest` with `key`, and the signature verifies under the key's public key.
/// A consensus key (which signs typed messages only) signs a vote for `digest`, each call a
/// later round, unless the service lets it sign blind.
pub(crate) fn assert_signs(
    service: &dyn keyward::KeyService,
    key: keyward::KeyId,
    digest: &[u8; 32],
) {
    static ROUND: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let info = service.key_info(key).unwrap();
    let public = *info.public_key.as_ed25519().unwrap();
    match service.sign(key, digest) {
        Err(keyward::Error::BlindSigningRefused { .. })
            if info.purpose == keyward::Purpose::Consensus =>
        {
            let round = ROUND.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let vote =
                keyward::ConsensusMessage::vote(keyward::ChainId([3; 32]), 1, round, *digest);
            let signature = service.sign_consensus(key, &vote).unwrap();
            public
                .verify_strict(&vote.signing_bytes(), &signature)
                .unwrap();
        }
        signature => public.verify_strict(digest, &signature.unwrap()).unwrap(),
    }
}

/// Bytes as lower-case hex, for a subprocess to tell the test what it holds (never a secret).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string.
pub(crate) fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// One line of `/proc/<pid>/smaps` (or `maps`): a mapping with its VmFlags if known.
#[derive(Clone, Debug)]
pub(crate) struct Mapping {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) perms: String,
    pub(crate) path: String,
    pub(crate) size_kib: u64,
    pub(crate) flags: Vec<String>,
}

impl Mapping {
    pub(crate) fn readable(&self) -> bool {
        self.perms.starts_with('r')
    }

    pub(crate) fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// The range as smaps prints it (`start-end` in lower-case hex).
    pub(crate) fn range(&self) -> String {
        format!("{:x}-{:x}", self.start, self.end)
    }
}

/// Parses `/proc/<who>/smaps` (`who` is a pid or `self`).
pub(crate) fn smaps(who: &str) -> std::io::Result<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{who}/smaps"))?;
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-')
            && !first.ends_with(':')
            && let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            let perms = words.next().unwrap_or_default().to_owned();
            // offset, device, inode, then the path (which may contain spaces).
            let path = line
                .split_whitespace()
                .skip(5)
                .collect::<Vec<_>>()
                .join(" ");
            mappings.push(Mapping {
                start,
                end,
                perms,
                path,
                size_kib: 0,
                flags: Vec::new(),
            });
        } else if first == "Size:" {
            if let Some(last) = mappings.last_mut() {
                last.size_kib = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            }
        } else if first == "VmFlags:"
            && let Some(last) = mappings.last_mut()
        {
            last.flags = words.map(str::to_owned).collect();
        }
    }
    Ok(mappings)
}

/// One field of `/proc/<who>/status`, trimmed (`None` if absent).
pub(crate) fn status_field(who: &str, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{who}/status")).ok()?;
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim().to_owned())
    })
}

/// Reads `len` bytes at `address` of process `who` through `/proc/<who>/mem`.
pub(crate) fn read_memory(who: &str, address: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(format!("/proc/{who}/mem"))?;
    let mut buffer = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let count = file.read_at(&mut buffer[done..], address + done as u64)?;
        if count == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        done += count;
    }
    Ok(buffer)
}

/// A fresh, empty directory under the system temp dir; removed with its contents on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(prefix: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).unwrap();
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every readable mapping of `pid` worth searching, with its bytes (unreadable parts skipped).
pub(crate) fn readable_memory(
    pid: u32,
    only: impl Fn(&Mapping) -> bool,
) -> Vec<(Mapping, Vec<u8>)> {
    let who = pid.to_string();
    let mem = std::fs::File::open(format!("/proc/{who}/mem")).unwrap();
    let mut regions = Vec::new();
    for mapping in smaps(&who).unwrap() {
        if !mapping.readable()
            || ["[vvar]", "[vvar_vclock]", "[vsyscall]"].contains(&mapping.path.as_str())
            || !only(&mapping)
        {
            continue;
        }
        let length = usize::try_from(mapping.end - mapping.start).unwrap();
        let mut bytes = vec![0u8; length];
        // Page by page where a whole read fails (a guard page, a hole in a file mapping).
        if mem.read_exact_at(&mut bytes, mapping.start).is_err() {
            for (index, page) in bytes.chunks_mut(4096).enumerate() {
                let address = mapping.start + 4096 * index as u64;
                if mem.read_exact_at(page, address).is_err() {
                    page.fill(0);
                }
            }
        }
        regions.push((mapping, bytes));
    }
    regions
}

/// Where each needle occurs in `haystack` (byte offsets).
pub(crate) fn occurrences(haystack: &[u8], needles: &[[u8; 32]]) -> Vec<(usize, usize)> {
    let mut first = [false; 256];
    for needle in needles {
        first[usize::from(needle[0])] = true;
    }
    let mut found = Vec::new();
    if haystack.len() < 32 {
        return found;
    }
    for offset in 0..=haystack.len() - 32 {
        if !first[usize::from(haystack[offset])] {
            continue;
        }
        let window = &haystack[offset..offset + 32];
        for (index, needle) in needles.iter().enumerate() {
            if window == needle {
                found.push((index, offset));
            }
        }
    }
    found
}

/// What a re-run of this test binary in a role did.
#[derive(Debug)]
pub(crate) struct RoleRun {
    /// Its exit status; `None` if it was still running at the deadline (it was then killed).
    pub(crate) status: Option<std::process::ExitStatus>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) elapsed: std::time::Duration,
}

impl RoleRun {
    /// Whether it exited with status 0 before the deadline.
    pub(crate) fn succeeded(&self) -> bool {
        self.status.is_some_and(|status| status.success())
    }
}

/// Runs `rerun_self(test, role)` with `environment` added, to its end or until `deadline`
/// (then kills it), and collects what it printed.
pub(crate) fn run_role(
    test: &str,
    role: &str,
    environment: &[(&str, &str)],
    deadline: std::time::Duration,
) -> RoleRun {
    use std::io::Read;
    use std::process::Stdio;
    let started = std::time::Instant::now();
    let mut command = rerun_self(test, role);
    for (name, value) in environment {
        command.parameter(name, value);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let collect = |mut pipe: Box<dyn Read + Send>| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            let _ = sender.send(String::from_utf8_lossy(&text).into_owned());
        });
        receiver
    };
    let stdout = collect(Box::new(child.stdout.take().unwrap()));
    let stderr = collect(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let elapsed = started.elapsed();
    // A process the role forked may still hold its pipes open after the role ended: wait a
    // moment for the text, not forever.
    let text = |receiver: std::sync::mpsc::Receiver<String>| {
        receiver
            .recv_timeout(std::time::Duration::from_secs(2))
            .unwrap_or_else(|_| "(the pipe was still held open by a process of the role)".into())
    };
    RoleRun {
        status,
        stdout: text(stdout),
        stderr: text(stderr),
        elapsed,
    }
}

/// Where each needle occurs in the readable memory of `pid` (the mappings `only` keeps):
/// (needle index, place), and how many bytes were searched.
pub(crate) fn scan_memory(
    pid: u32,
    needles: &[[u8; 32]],
    only: impl Fn(&Mapping) -> bool,
) -> (Vec<(usize, String)>, usize) {
    let mut hits = Vec::new();
    let mut searched = 0;
    for (mapping, bytes) in readable_memory(pid, only) {
        searched += bytes.len();
        for (index, offset) in occurrences(&bytes, needles) {
            hits.push((
                index,
                format!(
                    "{} {} +{offset:#x} [{}]",
                    mapping.range(),
                    mapping.path,
                    mapping.flags.join(" ")
                ),
            ));
        }
    }
    (hits, searched)
}

/// Runs the built `keyward` binary with `arguments` and waits for it.
pub(crate) fn run_keyward(arguments: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(arguments)
        .output()
        .unwrap()
}

/// Makes a sealed store in `store` with `keyward init`, unlocked by the secret in `unlock`;
/// panics with the command's stderr if it fails.
pub(crate) fn keyward_init(store: &std::path::Path, unlock: &std::path::Path) {
    let created = run_keyward(&[
        "init".as_ref(),
        "--store".as_ref(),
        store.as_os_str(),
        "--unlock-file".as_ref(),
        unlock.as_os_str(),
    ]);
    assert!(
        created.status.success(),
        "keyward init: {}",
        String::from_utf8_lossy(&created.stderr)
    );
}

/// Waits for the start of the next second (and 5 ms more). A sealed store keeps whole seconds
/// and rounds a retirement time down, so a grace begun late in a second is cut short by up to
/// that second; begun at its start, a 1 s grace lasts about one.
pub(crate) fn sleep_to_the_start_of_a_second() {
    let into = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::thread::sleep(
        std::time::Duration::from_nanos(u64::from(1_000_000_000 - into))
            + std::time::Duration::from_millis(5),
    );
}
