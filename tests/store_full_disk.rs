//! A store whose disk is full or read-only: the write that needs the disk fails with a typed
//! error naming the path and the errno, no earlier key is lost or stops working, and the store
//! reopens with exactly the keys it had. The disk is a small tmpfs mounted for the test (the
//! tests run as root, like CI); without the right to mount, each test says so loudly and
//! returns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod store_util;

use keyward::{
    Error, KeyService, KeySpec, Purpose, SecretService, StoreCreation, StoreError, WriteStep,
};
use store_util::{
    KeySet, StoreBase, assert_all_sign, assert_all_sign_unwritable, assert_signs_as, describe,
    key_set,
};

use store_util::tmpfs::{Tmpfs, fill};

/// A service on the store in the tmpfs (created there if `creation` says so).
fn spawn(base: &StoreBase, disk: &Tmpfs, creation: StoreCreation) -> SecretService {
    SecretService::spawn(base.config_at(&disk.path, creation))
        .unwrap_or_else(|error| panic!("opening the store on the tmpfs: {error}"))
}

/// A store on the tmpfs with one key of each purpose; the running service and its keys.
fn store_with_keys(base: &StoreBase, disk: &Tmpfs) -> (SecretService, KeySet) {
    let service = spawn(base, disk, StoreCreation::CreateNew);
    for purpose in Purpose::ALL {
        service.generate_key(KeySpec::new(purpose)).unwrap();
    }
    let keys = key_set(&service);
    assert_eq!(keys.len(), Purpose::ALL.len());
    (service, keys)
}

/// Asserts `result` is the failed write of the temporary state file with `errno`, naming the
/// file in the store directory.
fn assert_write_failed<T: std::fmt::Debug>(
    result: keyward::Result<T>,
    disk: &Tmpfs,
    errno: i32,
    what: &str,
) {
    match result {
        Err(Error::Store(StoreError::WriteFailed {
            path,
            step,
            errno: found,
        })) => {
            assert_eq!(found, errno, "{what}: errno");
            assert_eq!(step, WriteStep::WriteTemporary, "{what}: step");
            assert_eq!(path, disk.path.join("keyward-store.new"), "{what}: path");
            // The message a caller logs names the path and the system's words for the errno.
            let message = Error::Store(StoreError::WriteFailed { path, step, errno }).to_string();
            let words = std::io::Error::from_raw_os_error(errno).to_string();
            let words = words.split(" (os error").next().unwrap();
            assert!(
                message.contains(&disk.path.display().to_string()) && message.contains(words),
                "{what}: {message}"
            );
        }
        other => panic!("{what}: expected a failed write (errno {errno}), got {other:?}"),
    }
}

/// The checks after a failed generate: the running service holds exactly `keys`, each signing,
/// and a reopened one (the disk as it is) too.
fn assert_keys_kept(
    base: &StoreBase,
    disk: &Tmpfs,
    service: SecretService,
    keys: &KeySet,
    what: &str,
    unwritable: Option<i32>,
) {
    assert_eq!(
        key_set(&service),
        *keys,
        "{what}: the running service after the failed write\nexpected:\n  {}",
        describe(keys)
    );
    let signs = |service: &SecretService, digest| match unwritable {
        Some(errno) => assert_all_sign_unwritable(service, keys, digest, errno),
        None => assert_all_sign(service, keys, digest),
    };
    signs(&service, 0x21);
    drop(service);
    let service = spawn(base, disk, StoreCreation::OpenExisting);
    assert_eq!(
        key_set(&service),
        *keys,
        "{what}: the reopened store\nexpected:\n  {}",
        describe(keys)
    );
    signs(&service, 0x22);
}

/// A new key on a store that has room again, and it survives a reopen with the others.
fn assert_generate_works_and_lasts(base: &StoreBase, disk: &Tmpfs, keys: &KeySet, what: &str) {
    let service = spawn(base, disk, StoreCreation::OpenExisting);
    let fresh = service
        .generate_key(KeySpec::new(Purpose::Consensus))
        .unwrap_or_else(|error| panic!("{what}: generate with room again: {error}"));
    let public = service.public_key(fresh).unwrap().to_string();
    drop(service);
    let service = spawn(base, disk, StoreCreation::OpenExisting);
    let mut expected = keys.clone();
    expected.insert(format!("{fresh:#}"), (Purpose::Consensus, public.clone()));
    assert_eq!(key_set(&service), expected, "{what}: after reopening");
    assert_signs_as(&service, &format!("{fresh:#}"), &public, 0x23);
    assert_all_sign(&service, &expected, 0x24);
}

#[test]
fn a_full_disk_fails_generate_with_enospc_and_loses_no_key() {
    let base = StoreBase::new("full-disk");
    let Some(disk) = Tmpfs::mount(&base, "64k") else {
        return;
    };
    let (service, keys) = store_with_keys(&base, &disk);
    let filler = fill(&disk.path);
    assert_write_failed(
        service.generate_key(KeySpec::new(Purpose::Consensus)),
        &disk,
        libc::ENOSPC,
        "generate on a full disk",
    );
    // Failed writes are not retried behind the caller's back, and a second one fails the same.
    assert_write_failed(
        service.generate_key(KeySpec::new(Purpose::Account)),
        &disk,
        libc::ENOSPC,
        "a second generate on a full disk",
    );
    // The disk is still full: reopening needs to read, not write.
    assert_keys_kept(
        &base,
        &disk,
        service,
        &keys,
        "a full disk",
        Some(libc::ENOSPC),
    );
    std::fs::remove_file(filler).unwrap();
    assert_generate_works_and_lasts(&base, &disk, &keys, "a full disk freed");
}

/// A drop whose write fails is reported failed ("the operation was not done"): the key must
/// then still be there, usable by the running service, and still stored after the service's
/// next write succeeds and after a reopen. (A drop the caller was told failed must not take
/// effect later, silently, with an unrelated write.)
#[test]
fn a_drop_that_fails_on_a_full_disk_is_not_done() {
    let base = StoreBase::new("full-disk-drop");
    let Some(disk) = Tmpfs::mount(&base, "64k") else {
        return;
    };
    let (service, keys) = store_with_keys(&base, &disk);
    let (victim, (_, public)) = keys
        .iter()
        .find(|(_, (purpose, _))| *purpose == Purpose::Account)
        .map(|(id, held)| (id.clone(), held.clone()))
        .unwrap();
    let filler = fill(&disk.path);
    assert_write_failed(
        service.drop_key(victim.parse().unwrap()),
        &disk,
        libc::ENOSPC,
        "drop on a full disk",
    );
    let listed_after_failure = key_set(&service).contains_key(&victim);
    let signs_after_failure = service.sign(victim.parse().unwrap(), &[0x31; 32]).is_ok();
    // Room again: the same service's next write succeeds.
    std::fs::remove_file(filler).unwrap();
    let fresh = service
        .generate_key(KeySpec::new(Purpose::Account))
        .unwrap_or_else(|error| panic!("generate with room again: {error}"));
    let fresh_public = service.public_key(fresh).unwrap().to_string();
    drop(service);
    let service = spawn(&base, &disk, StoreCreation::OpenExisting);
    let found = key_set(&service);
    let stored_after_next_write = found.contains_key(&victim);
    assert!(
        listed_after_failure && signs_after_failure && stored_after_next_write,
        "a drop reported failed (ENOSPC) was done anyway: after the failure the running \
         service lists the key: {listed_after_failure}, signs with it: {signs_after_failure}; \
         after its next successful write and a reopen the store holds it: \
         {stored_after_next_write}\nstore after reopening:\n  {}",
        describe(&found)
    );
    let mut expected = keys.clone();
    expected.insert(format!("{fresh:#}"), (Purpose::Account, fresh_public));
    assert_eq!(
        found, expected,
        "after the failed drop, a generate and a reopen"
    );
    assert_signs_as(&service, &victim, &public, 0x32);
}

/// The store's file system turns read-only under a running service (as ext4 does on an I/O
/// error with errors=remount-ro): generate fails with EROFS naming the file, and every earlier
/// key still signs; once writable again, the store reopens with exactly those keys and takes a
/// new one.
#[test]
fn a_read_only_disk_fails_generate_with_erofs_and_loses_no_key() {
    let base = StoreBase::new("ro-disk");
    let Some(disk) = Tmpfs::mount(&base, "1m") else {
        return;
    };
    let (service, keys) = store_with_keys(&base, &disk);
    disk.make_read_only();
    assert_write_failed(
        service.generate_key(KeySpec::new(Purpose::Consensus)),
        &disk,
        libc::EROFS,
        "generate on a read-only disk",
    );
    assert_eq!(key_set(&service), keys, "the running service after EROFS");
    assert_all_sign_unwritable(&service, &keys, 0x41, libc::EROFS);
    drop(service);
    disk.make_writable();
    assert_keys_kept(
        &base,
        &disk,
        spawn(&base, &disk, StoreCreation::OpenExisting),
        &keys,
        "after EROFS, writable again",
        None,
    );
    assert_generate_works_and_lasts(&base, &disk, &keys, "after EROFS, writable again");
}

/// A validator restarting on a file system that went read-only: the store cannot take a new key,
/// but it opens, and its keys sign (the disk holds them; only writing is impossible).
#[test]
fn a_store_on_a_read_only_disk_reopens_with_its_keys() {
    let base = StoreBase::new("ro-reopen");
    let Some(disk) = Tmpfs::mount(&base, "1m") else {
        return;
    };
    let (service, keys) = store_with_keys(&base, &disk);
    drop(service);
    disk.make_read_only();
    let service = SecretService::spawn(base.config_at(&disk.path, StoreCreation::OpenExisting))
        .unwrap_or_else(|error| {
            panic!("a store on a read-only file system does not reopen: {error:?}")
        });
    assert_eq!(key_set(&service), keys, "the store reopened read-only");
    assert_all_sign_unwritable(&service, &keys, 0x51, libc::EROFS);
    assert_write_failed(
        service.generate_key(KeySpec::new(Purpose::Consensus)),
        &disk,
        libc::EROFS,
        "generate on a store reopened read-only",
    );
    assert_keys_kept(
        &base,
        &disk,
        service,
        &keys,
        "read-only reopen",
        Some(libc::EROFS),
    );
}
