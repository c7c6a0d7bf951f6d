//! What the choice of spawn mode means, shown on real signers (SECURITY.md, "Choosing a spawn
//! mode"): a forked signer is a copy of the host (same address layout, a copy of the host's
//! memory and environment); a fork-exec signer is a fresh program image (its own layout, none of
//! the host's memory, an empty environment). Reads the signer's memory through /proc, so it
//! runs as root, like CI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use keyward::SecretService;

/// Where the C library's first mapping starts in process `who`: a stand-in for the layout ASLR
/// randomises (the mmap base).
fn libc_base(who: &str) -> u64 {
    common::smaps(who)
        .unwrap()
        .iter()
        .filter(|mapping| {
            let file = mapping.path.rsplit('/').next().unwrap_or_default();
            file.starts_with("libc.so") || file.starts_with("libc-")
        })
        .map(|mapping| mapping.start)
        .min()
        .unwrap_or_else(|| panic!("no libc mapping in /proc/{who}/smaps"))
}

fn stack_start(who: &str) -> u64 {
    common::smaps(who)
        .unwrap()
        .iter()
        .find(|mapping| mapping.path == "[stack]")
        .map(|mapping| mapping.start)
        .unwrap_or_else(|| panic!("no [stack] in /proc/{who}/smaps"))
}

#[test]
fn a_forked_signer_has_the_host_layout_and_a_fork_exec_signer_its_own() {
    let randomised = std::fs::read_to_string("/proc/sys/kernel/randomize_va_space").unwrap();
    assert_ne!(
        randomised.trim(),
        "0",
        "ASLR is off on this machine (kernel.randomize_va_space=0): fork-exec cannot give a \
         fresh layout here"
    );
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config).unwrap();
        let signer = service.pid().to_string();
        let same_libc = libc_base(&signer) == libc_base("self");
        let same_stack = stack_start(&signer) == stack_start("self");
        match mode {
            "fork" => assert!(
                same_libc && same_stack,
                "a forked signer should keep the host's layout"
            ),
            _ => assert!(
                !same_libc && !same_stack,
                "{mode}: the signer shares the host's layout (libc {same_libc}, stack {same_stack})"
            ),
        }
    }
}

#[test]
fn a_forked_signer_holds_a_copy_of_host_memory_and_a_fork_exec_signer_none() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "reading a signer's memory needs root (CI runs as root)"
    );
    // Something the host holds in its heap at spawn time, like a validator's other secrets.
    let mut host_secret = Box::new([0u8; 32]);
    getrandom(&mut host_secret[..]);
    let host_secret = std::hint::black_box(host_secret);
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config).unwrap();
        let signer = u32::try_from(service.pid()).unwrap();
        let found = common::readable_memory(signer, |_| true)
            .iter()
            .any(|(_, bytes)| !common::occurrences(bytes, &[*host_secret]).is_empty());
        match mode {
            "fork" => assert!(
                found,
                "a forked signer should hold a copy of the host's heap"
            ),
            _ => assert!(
                !found,
                "{mode}: the host's secret is in the signer's memory"
            ),
        }
    }
    // The control that the search works: the host itself holds it.
    let in_host = common::readable_memory(std::process::id(), |_| true)
        .iter()
        .any(|(_, bytes)| !common::occurrences(bytes, &[*host_secret]).is_empty());
    assert!(
        in_host,
        "the search did not find the secret in the host itself"
    );
}

#[test]
fn a_fork_exec_signer_starts_with_an_empty_environment() {
    let host = std::fs::read(format!("/proc/{}/environ", std::process::id())).unwrap();
    assert!(!host.is_empty(), "the control needs a host environment");
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config).unwrap();
        let environment = std::fs::read(format!("/proc/{}/environ", service.pid())).unwrap();
        match mode {
            "fork" => assert_eq!(environment, host, "a forked signer keeps the host's"),
            _ => assert!(
                environment.is_empty(),
                "{mode}: the signer has an environment: {:?}",
                String::from_utf8_lossy(&environment)
            ),
        }
    }
}

/// Random bytes from the kernel, without adding a dependency to the tests.
fn getrandom(buffer: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(buffer)
        .unwrap();
}
