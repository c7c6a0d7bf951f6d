//! A host that catches every signal it can (1 to SIGRTMAX, the real-time ones included) does not
//! pass one of its handlers to the signer: the kernel shows the signer catching nothing, in both
//! spawn modes, but glibc's own handler on signal 33 (SIGSETXID), which glibc installs in every
//! process, the signer's own libc included, and which no program can change through glibc. A
//! forked signer starts as a copy of the host, handlers and all, so this is the signer's own reset
//! at work (`sys::reset_signal_handlers`), up to and including SIGRTMAX.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Installing the host's handlers takes `libc::sigaction`, which is unsafe (see the SAFETY
// comment); the library itself installs none.
#![allow(unsafe_code)]

mod common;

use std::time::Duration;

use keyward::{KeyService, KeySpec, Purpose, SecretService};

const TEST: &str = "handlers_the_host_installs_on_every_signal_never_reach_the_signer";

/// glibc keeps signals 32 and 33 (SIGCANCEL, SIGSETXID) for itself and refuses handlers on them.
const GLIBC_RESERVED: [i32; 2] = [32, 33];

extern "C" fn host_handler(_signal: libc::c_int) {}

/// The signals a process can install a handler on: all but SIGKILL, SIGSTOP and glibc's own.
fn catchable() -> Vec<i32> {
    (1..=libc::SIGRTMAX())
        .filter(|&signal| {
            signal != libc::SIGKILL && signal != libc::SIGSTOP && !GLIBC_RESERVED.contains(&signal)
        })
        .collect()
}

/// A `SigCgt`-style mask with the bit of each signal set (signal n is bit n - 1).
fn mask_of(signals: &[i32]) -> u64 {
    signals
        .iter()
        .fold(0, |mask, &signal| mask | 1 << (signal - 1))
}

fn caught(who: &str) -> u64 {
    u64::from_str_radix(&common::status_field(who, "SigCgt").unwrap(), 16).unwrap()
}

/// Played in a subprocess: catch every catchable signal, then spawn in each mode and read the
/// signer's `SigCgt` from the kernel.
fn play_host_catching_every_signal() {
    for signal in catchable() {
        // SAFETY: `action` is a fully initialised sigaction naming a handler that does nothing
        // (so it is async-signal-safe), with an empty mask; sigaction only reads it.
        let installed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = host_handler as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        assert_eq!(installed, 0, "signal {signal}");
    }
    let wanted = mask_of(&catchable());
    let host = caught("self");
    assert_eq!(
        host & wanted,
        wanted,
        "the host's own SigCgt is {host:016x}"
    );
    assert_ne!(wanted & (1 << (libc::SIGRTMAX() - 1)), 0);
    let mut failures = Vec::new();
    for (mode, config) in common::spawn_modes() {
        let service = SecretService::spawn(config).unwrap();
        // The signer serves with the host's handlers installed around it.
        let key = service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        service.sign(key, &[1; 32]).unwrap();
        let signer = caught(&service.pid().to_string());
        println!("{mode}: the host catches {host:016x}; the signer catches {signer:016x}");
        let from_the_host = signer & !mask_of(&GLIBC_RESERVED);
        if from_the_host != 0 {
            let kept: Vec<i32> = (1..=64)
                .filter(|n| from_the_host & (1 << (n - 1)) != 0)
                .collect();
            println!("{mode}: the signer still catches signals {kept:?}");
            failures.push(mode);
        }
    }
    assert_eq!(
        failures,
        [] as [&str; 0],
        "modes whose signer catches a signal"
    );
    println!("HOST DONE");
}

#[test]
fn handlers_the_host_installs_on_every_signal_never_reach_the_signer() {
    if common::role().as_deref() == Some("catching-host") {
        return play_host_catching_every_signal();
    }
    common::run_host_role(TEST, "catching-host", Duration::from_secs(60));
}
