//! Property: the kernel's own view of a running signer (`/proc/<pid>/status` and `smaps`, read
//! here directly) shows it hardened: seccomp filter mode, no-new-privs, no capabilities, locked
//! memory, and key pages that are locked and left out of core dumps (wiped on fork for locked
//! anonymous memory, `/secretmem` for memfd_secret). `SignerStatus` must agree with the kernel.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use keyward::{
    Config, KeyMemory, KeyService, KeySpec, MachineReport, Purpose, Sandbox, SecretMemory,
    SecretService,
};

/// The memory kinds to check here: locked anonymous always, memfd_secret where the kernel has it.
fn memory_kinds() -> Vec<SecretMemory> {
    let mut kinds = vec![SecretMemory::LockedAnonymous, SecretMemory::Auto];
    if MachineReport::gather().memfd_secret {
        kinds.push(SecretMemory::MemfdSecret);
    } else {
        println!("memfd_secret is not available on this kernel: its checks are skipped");
    }
    kinds
}

fn field(pid: &str, name: &str) -> String {
    common::status_field(pid, name)
        .unwrap_or_else(|| panic!("/proc/{pid}/status has no {name} field"))
}

fn kib(value: &str) -> u64 {
    value.trim_end_matches("kB").trim().parse().unwrap()
}

fn check_signer(what: &str, config: Config, memory: SecretMemory, workers: usize) {
    let service = SecretService::spawn(config.with_secret_memory(memory).with_workers(workers))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    for purpose in Purpose::ALL {
        service.generate_key(KeySpec::new(purpose)).unwrap();
    }
    let pid = service.pid();
    let who = pid.to_string();

    // /proc/<pid>/status, read here.
    assert_eq!(field(&who, "Seccomp"), "2", "{what}: seccomp filter mode");
    assert_eq!(field(&who, "Seccomp_filters"), "1", "{what}");
    assert_eq!(field(&who, "NoNewPrivs"), "1", "{what}");
    for capabilities in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(
            field(&who, capabilities),
            "0000000000000000",
            "{what}: {capabilities}"
        );
    }
    // Signal hygiene: no handler of the host's survives (none caught, none ignored, none blocked).
    // The one exception is glibc's own: signals 32 and 33 (SIGCANCEL, SIGSETXID) are reserved by
    // glibc, which refuses to reset them and keeps its internal handler on 33.
    let glibc_reserved: u64 = (1 << 31) | (1 << 32);
    for signals in ["SigCgt", "SigIgn", "SigBlk"] {
        let mask = u64::from_str_radix(&field(&who, signals), 16).unwrap();
        assert_eq!(
            mask & !glibc_reserved,
            0,
            "{what}: {signals} is {mask:016x}"
        );
    }
    let locked = kib(&field(&who, "VmLck"));
    assert!(locked > 0, "{what}: VmLck is {locked} kB");
    assert_eq!(
        field(&who, "Threads"),
        workers.to_string(),
        "{what}: one thread per worker, nothing else"
    );

    // /proc/<pid>/fd: only /dev/null on 0..=2 and the lane pipes on their fixed numbers (requests
    // from 3, answers from 19). Whatever else the host had open, including `PLANTED`, is gone.
    let mut expected_fds: Vec<(i32, &str)> =
        vec![(0, "/dev/null"), (1, "/dev/null"), (2, "/dev/null")];
    let lanes = i32::try_from(workers).unwrap();
    expected_fds.extend((3..3 + lanes).map(|fd| (fd, "pipe:")));
    expected_fds.extend((19..19 + lanes).map(|fd| (fd, "pipe:")));
    let mut fds: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{who}/fd"))
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let fd = entry.file_name().to_string_lossy().parse().unwrap();
            let target = std::fs::read_link(entry.path()).unwrap();
            (fd, target.to_string_lossy().into_owned())
        })
        .collect();
    fds.sort();
    assert_eq!(
        fds.iter().map(|(fd, _)| *fd).collect::<Vec<_>>(),
        expected_fds.iter().map(|(fd, _)| *fd).collect::<Vec<_>>(),
        "{what}: the signer's descriptors are {fds:?}"
    );
    for ((fd, target), (_, expected)) in fds.iter().zip(&expected_fds) {
        assert!(target.starts_with(expected), "{what}: fd {fd} is {target}");
    }

    // /proc/<pid>/limits: no core, one descriptor (taken), no new process, no file growth; the
    // hard limits too, so they cannot be raised again.
    let limits = std::fs::read_to_string(format!("/proc/{who}/limits")).unwrap();
    for (name, value) in [
        ("Max core file size", "0"),
        ("Max open files", "1"),
        ("Max processes", "0"),
        ("Max file size", "0"),
    ] {
        let line = limits
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("{what}: no {name} in /proc/{who}/limits"));
        let numbers: Vec<&str> = line[name.len()..].split_whitespace().take(2).collect();
        assert_eq!(numbers, [value, value], "{what}: {line}");
    }

    // /proc/<pid>/smaps, read here: the key pages.
    let maps = common::smaps(&who).unwrap();
    let expected_memory = match memory {
        SecretMemory::LockedAnonymous => KeyMemory::LockedAnonymous,
        _ if MachineReport::gather().memfd_secret => KeyMemory::MemfdSecret,
        _ => KeyMemory::LockedAnonymous,
    };
    let key_maps: Vec<&common::Mapping> = match expected_memory {
        KeyMemory::MemfdSecret => maps
            .iter()
            .filter(|m| m.path.starts_with("/secretmem"))
            .collect(),
        _ => maps
            .iter()
            .filter(|m| m.has_flag("lo") && m.has_flag("dd"))
            .collect(),
    };
    assert!(!key_maps.is_empty(), "{what}: no key mapping in smaps");
    for mapping in &key_maps {
        assert!(mapping.has_flag("lo"), "{what}: {mapping:?} not locked");
        assert!(mapping.has_flag("dd"), "{what}: {mapping:?} not don't-dump");
        assert!(mapping.perms.starts_with("rw"), "{what}: {mapping:?}");
        assert!(
            !mapping.perms.contains('x'),
            "{what}: {mapping:?} executable"
        );
        match expected_memory {
            KeyMemory::MemfdSecret => {
                assert!(
                    mapping.perms.ends_with('s'),
                    "{what}: {mapping:?} not shared"
                );
            }
            _ => {
                assert!(
                    mapping.has_flag("wf"),
                    "{what}: {mapping:?} not wipe-on-fork"
                );
                assert!(mapping.path.is_empty(), "{what}: {mapping:?} not anonymous");
            }
        }
    }
    let key_kib: u64 = key_maps.iter().map(|m| m.size_kib).sum();
    assert!(
        locked >= key_kib,
        "{what}: VmLck {locked} kB does not cover the {key_kib} kB of key pages"
    );
    if expected_memory == KeyMemory::MemfdSecret {
        // With memfd_secret nothing else needs to hold keys: no anonymous locked mapping.
        assert!(
            !maps
                .iter()
                .any(|m| m.has_flag("lo") && !m.path.starts_with("/secretmem")),
            "{what}: locked memory outside /secretmem"
        );
    }

    // SignerStatus agrees with what the kernel files say.
    let status = service.status().unwrap();
    assert_eq!(status.pid, pid);
    assert_eq!(status.seccomp_mode, Some(2), "{what}");
    assert_eq!(status.seccomp_filters, Some(1), "{what}");
    assert_eq!(status.no_new_privs, Some(true), "{what}");
    assert_eq!(status.effective_capabilities, Some(0), "{what}");
    assert_eq!(status.permitted_capabilities, Some(0), "{what}");
    assert_eq!(
        status.locked_kib,
        Some(kib(&field(&who, "VmLck"))),
        "{what}"
    );
    assert_eq!(
        status.threads,
        Some(u32::try_from(workers).unwrap()),
        "{what}"
    );
    assert_eq!(status.key_memory, expected_memory, "{what}");
    let reported: Vec<String> = status
        .key_mappings
        .iter()
        .map(|m| m.range.clone())
        .collect();
    let ours: Vec<String> = key_maps.iter().map(|m| m.range()).collect();
    assert_eq!(
        reported, ours,
        "{what}: SignerStatus lists other key mappings"
    );
    for (theirs, ours) in status.key_mappings.iter().zip(&key_maps) {
        assert_eq!(theirs.locked, ours.has_flag("lo"));
        assert_eq!(theirs.dont_dump, ours.has_flag("dd"));
        assert_eq!(theirs.wipe_on_fork, ours.has_flag("wf"));
        assert_eq!(theirs.secretmem, ours.path.starts_with("/secretmem"));
        assert_eq!(theirs.size_kib, ours.size_kib);
    }
}

/// A descriptor this (host) process holds without close-on-exec, so that both a forked and an
/// exec'd signer would inherit it unless they close it.
const PLANTED: i32 = 200;

#[test]
fn the_kernel_shows_the_signer_hardened() {
    let dev_zero = nix::fcntl::open(
        "/dev/zero",
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    // Deliberately never closed: it must stay open while signers are spawned.
    let planted = nix::fcntl::fcntl(&dev_zero, nix::fcntl::FcntlArg::F_DUPFD(PLANTED)).unwrap();
    assert!(planted >= PLANTED);
    assert!(std::path::Path::new(&format!("/proc/self/fd/{planted}")).exists());
    let flags = nix::fcntl::fcntl(&dev_zero, nix::fcntl::FcntlArg::F_GETFD).unwrap();
    assert_eq!(flags & libc::FD_CLOEXEC, 0);
    for (mode, config) in common::spawn_modes() {
        for memory in memory_kinds() {
            for workers in [1, 4] {
                check_signer(
                    &format!("{mode}, {memory:?}, {workers} workers"),
                    config.clone(),
                    memory,
                    workers,
                );
            }
        }
    }
}

/// Control: the same reading of /proc shows an unfiltered signer as such (Seccomp 0), and this
/// test process (the supervisor) as neither filtered nor stripped: the checks above read the
/// signer's own files and can fail.
#[test]
fn control_the_same_reading_tells_an_unfiltered_process_apart() {
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config.with_sandbox(Sandbox::UnsandboxedInsecure))
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        let who = service.pid().to_string();
        assert_eq!(field(&who, "Seccomp"), "0", "{mode}");
        assert_eq!(service.status().unwrap().seccomp_mode, Some(0), "{mode}");
        // The rest of the hardening does not depend on the filter.
        assert_eq!(field(&who, "NoNewPrivs"), "1", "{mode}");
        assert_eq!(field(&who, "CapEff"), "0000000000000000", "{mode}");
    }
    assert_eq!(field("self", "Seccomp"), "0");
    // Rust's runtime ignores SIGPIPE in this process: the signer's SigIgn of 0 above is its own.
    assert_ne!(field("self", "SigIgn"), "0000000000000000");
    assert_eq!(field("self", "NoNewPrivs"), "0");
    let own_locked = common::smaps("self")
        .unwrap()
        .into_iter()
        .filter(|m| m.has_flag("lo") && m.has_flag("dd"))
        .count();
    assert_eq!(
        own_locked, 0,
        "the supervisor holds no locked don't-dump pages"
    );
}
