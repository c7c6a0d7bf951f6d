//! The operator's `rotate` command, run as the built `keyward` binary: it rotates a key of a
//! closed store and prints the new version and public key (exit 0), which the library then
//! reports too; an unknown key exits 3 and a bad argument exits 2, each leaving the store file
//! as it was; `status` lists the versions held; a grace no clock can count is no panic and
//! leaves a store that opens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod store_util;

use std::path::PathBuf;
use std::process::Output;

use keyward::{KeyService, KeySpec, Purpose, SecretService};
use store_util::{Scratch, open_config};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `keyward rotate --store DIR --unlock-file FILE --key KEY --grace GRACE`.
fn rotate(scratch: &Scratch, unlock: &std::path::Path, key: &str, grace: &str) -> Output {
    let store = scratch.store();
    common::run_keyward(&[
        "rotate".as_ref(),
        "--store".as_ref(),
        store.as_os_str(),
        "--unlock-file".as_ref(),
        unlock.as_os_str(),
        "--key".as_ref(),
        key.as_ref(),
        "--grace".as_ref(),
        grace.as_ref(),
    ])
}

/// A store made by `keyward init`, with no service on it.
fn initialized(name: &str) -> (Scratch, PathBuf) {
    let scratch = Scratch::new(name);
    let unlock = scratch.unlock_file("unlock", b"rotate command\n");
    common::keyward_init(&scratch.store(), &unlock);
    (scratch, unlock)
}

#[test]
fn rotate_prints_the_new_version_and_public_key() {
    let (scratch, unlock) = initialized("rotate-command");
    let service = SecretService::spawn(open_config(&scratch.store(), &unlock)).unwrap();
    let key = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    let other = service
        .generate_key(KeySpec::new(Purpose::NetworkHandshake))
        .unwrap();
    let old = service.public_key(key).unwrap();
    let other_public = service.public_key(other).unwrap();
    drop(service);
    let id = format!("{key:#}");

    // Bad arguments: exit 2, the store untouched.
    let state = scratch.state();
    for (what, key, grace) in [
        ("a grace that is not a number", id.as_str(), "x"),
        ("a negative grace", id.as_str(), "-5"),
        ("a key id that is not one", "not-a-key-id", "60"),
        ("a key id one digit short", &id[..47], "60"),
    ] {
        let output = rotate(&scratch, &unlock, key, grace);
        println!("{what}: {}", text(&output.stderr).trim());
        assert_eq!(
            output.status.code(),
            Some(2),
            "{what}: {}",
            text(&output.stderr)
        );
        assert!(scratch.state() == state, "{what}: the store was written");
    }
    // A well-formed id the store does not hold: exit 3, and it says which.
    let mut unknown = id.clone();
    let last = if unknown.ends_with('0') { "1" } else { "0" };
    unknown.replace_range(47.., last);
    let output = rotate(&scratch, &unlock, &unknown, "60");
    println!("unknown key: {}", text(&output.stderr).trim());
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    assert!(text(&output.stdout).is_empty(), "{}", text(&output.stdout));
    assert!(
        scratch.state() == state,
        "an unknown key: the store was written"
    );

    // The rotation: `2 <public key hex>` alone on standard output.
    let output = rotate(&scratch, &unlock, &id, "60");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let printed = text(&output.stdout);
    let words: Vec<&str> = printed.split_whitespace().collect();
    assert_eq!(words.len(), 2, "{printed:?}");
    assert_eq!(words[0], "2", "{printed:?}");
    let new_hex = words[1];
    assert_eq!(new_hex.len(), 64, "{printed:?}");
    assert_ne!(new_hex, old.to_string(), "the public key did not change");

    // What the library finds in the store: the same id with the printed key, version 1 in
    // its grace.
    let service = SecretService::spawn(open_config(&scratch.store(), &unlock)).unwrap();
    assert_eq!(service.public_key(key).unwrap().to_string(), new_hex);
    assert_eq!(service.public_key(other).unwrap(), other_public);
    let versions = service.key_versions(key).unwrap();
    assert_eq!(
        versions
            .iter()
            .map(|v| (v.version, v.public_key.to_string(), v.retires.is_some()))
            .collect::<Vec<_>>(),
        [(1, old.to_string(), true), (2, new_hex.to_owned(), false)]
    );
    let retires = versions[0].retires.unwrap();
    let left = retires
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        left <= std::time::Duration::from_secs(61),
        "grace 60 s: retires in {left:?}"
    );
    drop(service);

    // status lists the key's versions (its exact layout is status's own business).
    let listed = common::run_keyward(&[
        "status".as_ref(),
        "--store".as_ref(),
        scratch.store().as_os_str(),
    ]);
    let listing = text(&listed.stdout);
    println!("{listing}");
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert!(listing.contains(new_hex), "status:\n{listing}");
    assert!(
        listing.contains(&old.to_string()),
        "status does not show version 1, still in its grace:\n{listing}"
    );
}

#[test]
fn rotate_with_a_grace_no_clock_can_count_is_no_panic() {
    let (scratch, unlock) = initialized("rotate-absurd-grace");
    let service = SecretService::spawn(open_config(&scratch.store(), &unlock)).unwrap();
    let key = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap();
    drop(service);
    let id = format!("{key:#}");
    // A grace no clock can count: refused as a bad argument or done, never a panic (exit 101),
    // and the store still opens.
    let output = rotate(&scratch, &unlock, &id, &u64::MAX.to_string());
    println!(
        "grace u64::MAX: exit {:?}: {}{}",
        output.status.code(),
        text(&output.stdout).trim(),
        text(&output.stderr).trim()
    );
    assert!(
        matches!(output.status.code(), Some(0 | 2 | 3)),
        "rotate --grace {}: exit {:?}: {}",
        u64::MAX,
        output.status.code(),
        text(&output.stderr)
    );
    let reopened = std::panic::catch_unwind(|| {
        SecretService::spawn(open_config(&scratch.store(), &unlock)).map(|_| ())
    });
    assert!(
        matches!(reopened, Ok(Ok(()))),
        "the store does not open after rotate --grace {}",
        u64::MAX
    );
}
