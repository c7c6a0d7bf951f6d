//! The fork-exec signer program is opened once, when the service is spawned, checked to be a
//! regular executable file, and exec'd through that descriptor for every signer of the service:
//! what is at the path later does not matter. Shown by replacing the program with an impostor
//! after spawn (a rename over it, as an attacker with write access to its directory would): a
//! new service spawned from the path runs the impostor, but a respawn of the first service still
//! runs the real signer. And the supervisor reads the seccomp program every signer thread runs
//! under from the kernel and finds it identical to keyward's (this test runs as root, like CI;
//! without CAP_SYS_ADMIN the kernel does not show it and the status says so).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use keyward::{Config, Error, FilterCheck, SecretService, SignerEnd, SpawnError, SpawnMode};

/// A directory under cargo's scratch directory for integration tests (target/tmp), on the same
/// file system as the keyward binary, so the binary can be hard-linked into it.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fork_exec(program: &Path) -> Config {
    Config::default()
        .with_workers(1)
        .with_spawn_mode(SpawnMode::ForkExec {
            program: program.to_owned(),
        })
}

/// Makes a key and checks a verified signature: the signer serving is a real one.
fn signs(service: &SecretService) {
    common::serving_key(service);
}

/// The inode of the program the process `pid` runs.
fn running_inode(pid: i32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/exe")).unwrap().ino()
}

#[test]
fn a_respawn_after_the_program_was_replaced_still_runs_the_program_the_service_was_spawned_with() {
    let dir = ScratchDir::new("keyward-signer-program");
    let program = dir.0.join("keyward-signer");
    if std::fs::hard_link(common::signer_program(), &program).is_err() {
        std::fs::copy(common::signer_program(), &program).unwrap();
    }
    let real = std::fs::metadata(&program).unwrap().ino();

    let service = SecretService::spawn(fork_exec(&program)).unwrap();
    signs(&service);
    assert_eq!(running_inode(service.pid()), real);

    // The impostor takes the program's place at its path.
    let impostor = dir.0.join("impostor.sh");
    std::fs::write(&impostor, "#!/bin/bash\nexit 3\n").unwrap();
    std::fs::set_permissions(&impostor, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&impostor, &program).unwrap();

    // Control: what is at the path now is the impostor; a service spawned from it runs it.
    match SecretService::spawn(fork_exec(&program)) {
        Err(Error::Spawn(SpawnError::Ended(SignerEnd::Exited { code: 3 }))) => {}
        other => panic!(
            "a service spawned after the swap should run the impostor, got {:?}",
            other.map(|service| service.pid())
        ),
    }

    // The first service's respawn runs the file it was spawned with.
    let generation = service
        .respawn()
        .unwrap_or_else(|error| panic!("the respawn ran the impostor: {error}"));
    assert_eq!(generation, 2);
    signs(&service);
    assert_eq!(
        running_inode(service.pid()),
        real,
        "the respawned signer runs another file"
    );
    println!(
        "after the swap: a new service ran the impostor (exit 3); the respawned signer {} runs \
         inode {real}, the file the service was spawned with",
        service.pid()
    );
}

#[test]
fn a_signer_program_that_is_not_a_regular_executable_file_is_refused_at_spawn() {
    let dir = ScratchDir::new("keyward-not-a-program");
    let not_executable = dir.0.join("data");
    std::fs::write(&not_executable, "#!/bin/bash\nexit 0\n").unwrap();
    std::fs::set_permissions(&not_executable, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (what, path) in [
        ("a directory", dir.0.clone()),
        ("a file no one may execute", not_executable),
        ("a path with nothing there", dir.0.join("missing")),
    ] {
        match SecretService::spawn(fork_exec(&path)) {
            Err(Error::Spawn(error @ SpawnError::SignerProgram { .. })) => {
                let said = error.to_string();
                assert!(said.contains("regular, executable file"), "{what}: {said}");
                println!("{what}: {said}");
            }
            other => panic!(
                "{what}: expected SpawnError::SignerProgram, got {:?}",
                other.map(|service| service.pid())
            ),
        }
    }
}

#[test]
fn the_supervisor_finds_keywards_seccomp_program_on_every_signer_thread() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "reading a signer's seccomp program needs CAP_SYS_ADMIN (CI runs as root)"
    );
    for (mode, config) in common::spawn_modes() {
        for workers in [1, 4] {
            let service = SecretService::spawn(config.clone().with_workers(workers)).unwrap();
            signs(&service);
            let status = service.status().unwrap();
            assert_eq!(
                status.filter,
                FilterCheck::Identical,
                "{mode}, {workers} workers"
            );
            assert_eq!(status.seccomp_filters, Some(1), "{mode}, {workers} workers");
        }
    }
    // Control: an unsandboxed signer has no program to compare.
    let service =
        SecretService::spawn(Config::default().with_sandbox(keyward::Sandbox::UnsandboxedInsecure))
            .unwrap();
    assert_eq!(service.status().unwrap().filter, FilterCheck::Unsandboxed);
}
