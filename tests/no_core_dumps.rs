//! Property: a signer killed by a core-dumping signal (SIGSEGV, SIGABRT) leaves no core file,
//! even when its parent allows unlimited cores and an ordinary process in the same place does
//! dump one; the caller is told `SignerEnded { Killed { signal } }`.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use keyward::{Error, KeyService, KeySpec, Purpose, SecretService, SignerEnd};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const TEST: &str = "a_killed_signer_leaves_no_core_file";
const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";

/// The core files in `dir`.
fn cores(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("core"))
        .collect()
}

fn remove_cores(dir: &Path) {
    for name in cores(dir) {
        std::fs::remove_file(dir.join(name)).unwrap();
    }
}

/// Played in a subprocess whose cwd is a fresh directory: unlimited core size, then the control
/// (an ordinary child killed by SIGSEGV dumps a core here), then signers killed by each signal.
fn play_crasher() {
    let (_, hard) = getrlimit(Resource::RLIMIT_CORE).unwrap();
    setrlimit(Resource::RLIMIT_CORE, hard, hard).unwrap();
    let (soft, _) = getrlimit(Resource::RLIMIT_CORE).unwrap();
    assert_eq!(
        soft,
        libc::RLIM_INFINITY,
        "the core limit could not be raised"
    );
    let dir = std::env::current_dir().unwrap();
    assert!(cores(&dir).is_empty(), "{} is not fresh", dir.display());
    println!(
        "crasher: RLIMIT_CORE unlimited, cwd {}, core_pattern {:?}",
        dir.display(),
        std::fs::read_to_string(CORE_PATTERN)
            .unwrap_or_default()
            .trim()
    );

    // Control: an ordinary (dumpable) child with the same limit and cwd dumps a core.
    let mut sleep = Command::new("sleep").arg("30").spawn().unwrap();
    kill(
        Pid::from_raw(i32::try_from(sleep.id()).unwrap()),
        Signal::SIGSEGV,
    )
    .unwrap();
    let status = sleep.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGSEGV));
    let control = cores(&dir);
    println!(
        "crasher: control sleep: core dumped {}, files {control:?}",
        status.core_dumped()
    );
    if control.is_empty() {
        println!("CONTROL no-core");
        return;
    }
    assert!(
        status.core_dumped(),
        "a core file appeared but the kernel says none was dumped"
    );
    println!("CONTROL core");
    remove_cores(&dir);

    for (mode, config) in common::spawn_modes() {
        for signal in [Signal::SIGSEGV, Signal::SIGABRT] {
            let service =
                SecretService::spawn(config.clone()).unwrap_or_else(|e| panic!("{mode}: {e}"));
            let key = service
                .generate_key(KeySpec::new(Purpose::Account))
                .unwrap();
            service.sign(key, &[1; 32]).unwrap();
            let pid = service.pid();
            // The signer would dump here: same cwd as the control.
            assert_eq!(
                std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
                dir,
                "{mode}"
            );
            kill(Pid::from_raw(pid), signal).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while service.is_running() {
                assert!(
                    Instant::now() < deadline,
                    "{mode} {signal}: the signer did not die"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            let error = service.sign(key, &[2; 32]).unwrap_err();
            assert!(
                matches!(
                    error,
                    Error::SignerEnded { end: SignerEnd::Killed { signal: s }, .. } if s == signal as i32
                ),
                "{mode} {signal}: {error:?}"
            );
            let left = cores(&dir);
            assert!(
                left.is_empty(),
                "{mode} {signal}: the signer left core files {left:?}"
            );
            println!(
                "crasher: {mode} {signal}: SignerEnded(Killed {{ signal: {} }}), no core",
                signal as i32
            );
        }
    }
    println!("SIGNERS no-core");
}

/// Puts the core pattern back when dropped.
struct RestorePattern(String);

impl Drop for RestorePattern {
    fn drop(&mut self) {
        std::fs::write(CORE_PATTERN, &self.0).unwrap();
    }
}

fn run_crasher(dir: &Path) -> String {
    let output = common::rerun_self(TEST, "crasher")
        .current_dir(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the crasher failed");
    stdout
}

#[test]
fn a_killed_signer_leaves_no_core_file() {
    if common::role().as_deref() == Some("crasher") {
        return play_crasher();
    }
    let dir = common::TempDir::new("keyward-cores");
    let mut said = run_crasher(dir.path());
    let _restore;
    if said.contains("CONTROL no-core") {
        // Cores do not land in the cwd here (a piped handler, say): point them at the temp dir
        // for the duration of the test, as root, so the control can show a core.
        assert!(
            nix::unistd::geteuid().is_root(),
            "the control dumped no core and only root can redirect cores here"
        );
        let previous = std::fs::read_to_string(CORE_PATTERN).unwrap();
        _restore = RestorePattern(previous.trim_end().to_owned());
        let pattern = format!("{}/core.%p", dir.path().display());
        std::fs::write(CORE_PATTERN, &pattern).unwrap();
        println!(
            "core_pattern was {:?}; set to {pattern:?} for this test",
            previous.trim()
        );
        remove_cores(dir.path());
        said = run_crasher(dir.path());
    }
    assert!(
        said.contains("CONTROL core"),
        "the control never dumped a core: the test would pass vacuously"
    );
    assert!(
        said.contains("SIGNERS no-core"),
        "the signer checks did not finish"
    );
}
