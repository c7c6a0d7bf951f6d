//! Property: a sandboxed signer that attempts any forbidden system call is killed by the kernel
//! (SIGSYS, the whole process), the caller is told `SignerEnded { SandboxViolation }`, and
//! `respawn()` gives a working signer. A control shows the same attempts go through without the
//! filter, so these tests can fail.
#![cfg(feature = "test-support")]
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::time::{Duration, Instant};

use keyward::{
    Config, Error, ForbiddenSyscall, KeyService, KeySpec, Purpose, Sandbox, SecretService,
    SignerEnd,
};

/// Two workers at least, so that a `kill_thread` action (which would kill only the worker that
/// made the call) would leave the process alive and this call would time out instead of
/// reporting `SandboxViolation`: the test tells kill-process from kill-thread.
const WORKERS: usize = 2;

/// Short enough that a kill-thread filter (the process living on) fails fast, long enough for a
/// loaded machine.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

fn configs() -> Vec<(&'static str, Config)> {
    common::spawn_modes()
        .into_iter()
        .map(|(mode, config)| {
            (
                mode,
                config
                    .with_workers(WORKERS)
                    .with_request_timeout(REQUEST_TIMEOUT),
            )
        })
        .collect()
}

fn process_exists(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn sign_and_verify(service: &SecretService, _mode: &str) {
    common::serving_key(service);
}

/// Spawn, generate a key, attempt `call`: the signer must die by SIGSYS, every later call must
/// fail with `SignerEnded`, and a respawned signer must work. In both spawn modes.
fn assert_killed_by_sandbox(call: ForbiddenSyscall) {
    for (mode, config) in configs() {
        let service = SecretService::spawn(config).unwrap_or_else(|e| panic!("{mode}: {e}"));
        let status = service.status().unwrap();
        assert_eq!(
            status.seccomp_mode,
            Some(2),
            "{mode}: not sandboxed before the attempt"
        );
        let key = service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        service.sign(key, &[1; 32]).unwrap();
        let pid = service.pid();
        let generation = service.generation();

        let started = Instant::now();
        let error = service.attempt_forbidden_syscall(call).unwrap_err();
        assert!(
            matches!(
                error,
                Error::SignerEnded {
                    end: SignerEnd::SandboxViolation,
                    generation: g,
                } if g == generation
            ),
            "{mode} {call:?}: expected SignerEnded(SandboxViolation), got {error:?}"
        );
        assert!(
            started.elapsed() < REQUEST_TIMEOUT,
            "{mode} {call:?}: the end was noticed only after {:?}",
            started.elapsed()
        );
        assert!(!service.is_running(), "{mode} {call:?}");
        // Reaped by the supervisor: the process is gone, not a zombie.
        assert!(
            !process_exists(pid),
            "{mode} {call:?}: pid {pid} still exists"
        );

        // Every later call fails the same way, whichever operation it is.
        let later = service.sign(key, &[2; 32]).unwrap_err();
        assert!(
            matches!(
                later,
                Error::SignerEnded {
                    end: SignerEnd::SandboxViolation,
                    ..
                }
            ),
            "{mode} {call:?}: later sign: {later:?}"
        );
        let later = service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap_err();
        assert!(
            matches!(later, Error::SignerEnded { .. }),
            "{mode} {call:?}: later generate: {later:?}"
        );

        // A respawned signer works; the old key is refused as belonging to the dead signer.
        let new_generation = service.respawn().unwrap();
        assert_eq!(new_generation, generation + 1, "{mode} {call:?}");
        assert_ne!(service.pid(), pid, "{mode} {call:?}");
        assert!(service.is_running());
        assert_eq!(service.status().unwrap().seccomp_mode, Some(2), "{mode}");
        assert!(matches!(
            service.sign(key, &[4; 32]),
            Err(Error::KeyFromEndedSigner { .. })
        ));
        sign_and_verify(&service, mode);
    }
}

macro_rules! denial_tests {
    ($($name:ident => $call:ident,)*) => {
        $(
            #[test]
            fn $name() {
                assert_killed_by_sandbox(ForbiddenSyscall::$call);
            }
        )*

        /// Every variant of `ForbiddenSyscall` has a test above (the match is exhaustive, so a
        /// new variant fails to compile until it is added here).
        #[test]
        fn every_forbidden_syscall_variant_is_tested() {
            let listed = [$(ForbiddenSyscall::$call),*];
            for call in listed {
                match call {
                    ForbiddenSyscall::Open
                    | ForbiddenSyscall::OpenAt
                    | ForbiddenSyscall::Socket
                    | ForbiddenSyscall::Execve
                    | ForbiddenSyscall::Ptrace
                    | ForbiddenSyscall::Fork
                    | ForbiddenSyscall::Clone
                    | ForbiddenSyscall::MmapExecutable
                    | ForbiddenSyscall::Mprotect
                    | ForbiddenSyscall::X32Write
                    | ForbiddenSyscall::I386IntX80 => {}
                }
            }
            assert_eq!(listed.len(), 11);
        }
    };
}

denial_tests! {
    open_kills_the_signer => Open,
    openat_kills_the_signer => OpenAt,
    socket_kills_the_signer => Socket,
    execve_kills_the_signer => Execve,
    ptrace_kills_the_signer => Ptrace,
    fork_kills_the_signer => Fork,
    clone_kills_the_signer => Clone,
    executable_mmap_kills_the_signer => MmapExecutable,
    mprotect_kills_the_signer => Mprotect,
    x32_write_kills_the_signer => X32Write,
    i386_int_0x80_kills_the_signer => I386IntX80,
}

/// A violation on a worker thread other than the signer's first one ends the whole process: the
/// filter's action is kill-process, not kill-thread. Three caller threads keep lanes busy so the
/// attempt lands on another worker's lane; every caller then sees the same end.
#[test]
fn a_violation_on_any_worker_ends_the_whole_signer() {
    for (mode, config) in common::spawn_modes() {
        let service =
            SecretService::spawn(config.with_workers(4).with_request_timeout(REQUEST_TIMEOUT))
                .unwrap_or_else(|e| panic!("{mode}: {e}"));
        let key = service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        let results = std::thread::scope(|scope| {
            let hammers: Vec<_> = (0..3)
                .map(|_| {
                    scope.spawn(|| {
                        loop {
                            if let Err(error) = service.sign(key, &[5; 32]) {
                                return error;
                            }
                        }
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(50));
            let attempt = service
                .attempt_forbidden_syscall(ForbiddenSyscall::Socket)
                .unwrap_err();
            let mut errors = vec![attempt];
            errors.extend(hammers.into_iter().map(|h| h.join().unwrap()));
            errors
        });
        for error in results {
            assert!(
                matches!(error, Error::SignerEnded { .. }),
                "{mode}: a caller saw {error:?} instead of the signer's end"
            );
            if let Error::SignerEnded { end, .. } = error {
                assert_eq!(end, SignerEnd::SandboxViolation, "{mode}");
            }
        }
        assert!(!service.is_running());
    }
}

/// Control: without the filter (`Sandbox::UnsandboxedInsecure`) the same attempts do NOT kill the
/// signer: it answers `Ok(result)` with what the kernel returned, and keeps serving. The denial
/// tests above would therefore fail if the filter were missing.
///
/// Left out: `Fork`, `Clone` and `Execve`, which without a filter really fork or exec the signer
/// (root is not held back by RLIMIT_NPROC=0), leaving two processes on one pipe or none.
#[test]
fn control_without_the_filter_the_same_attempts_do_not_kill_the_signer() {
    let harmless = [
        ForbiddenSyscall::Open,
        ForbiddenSyscall::OpenAt,
        ForbiddenSyscall::Socket,
        ForbiddenSyscall::Ptrace,
        ForbiddenSyscall::MmapExecutable,
        ForbiddenSyscall::Mprotect,
        ForbiddenSyscall::X32Write,
        ForbiddenSyscall::I386IntX80,
    ];
    for (mode, config) in configs() {
        let service = SecretService::spawn(config.with_sandbox(Sandbox::UnsandboxedInsecure))
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        let status = service.status().unwrap();
        assert_eq!(
            status.seccomp_mode,
            Some(0),
            "{mode}: the control must be unfiltered"
        );
        assert_eq!(
            status.no_new_privs,
            Some(true),
            "{mode}: other hardening still applies"
        );
        let key = service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        let pid = service.pid();
        for call in harmless {
            let result = service.attempt_forbidden_syscall(call);
            assert!(
                result.is_ok(),
                "{mode} {call:?}: without the filter the signer should answer, got {result:?}"
            );
            assert!(service.is_running(), "{mode} {call:?}");
            assert_eq!(service.pid(), pid, "{mode} {call:?}");
            service
                .sign(key, &[6; 32])
                .unwrap_or_else(|e| panic!("{mode} {call:?}: signer unusable after: {e}"));
        }
        assert_eq!(service.generation(), 1, "{mode}: nothing was respawned");
    }
}
