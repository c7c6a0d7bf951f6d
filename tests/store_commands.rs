//! The operator's commands for a sealed store, run as the built `keyward` binary: `init` creates
//! a store and says where its unlock secret is read from; `status` lists the keys the store's
//! file holds, with the public keys the library reports; each failure is a clear message and a
//! nonzero exit code, and leaves the store as it was.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keyward::{Config, KeyService, KeySpec, Purpose, SecretService, StoreConfig, UnlockSecret};

/// A fresh directory of mode 0700 for one test, holding a 0600 unlock secret file.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "keyward-test-{}-commands-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut unlock = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path.join("unlock"))
            .unwrap();
        std::io::Write::write_all(&mut unlock, b"correct horse battery staple\n").unwrap();
        Self(path)
    }

    fn store(&self) -> PathBuf {
        self.0.join("store")
    }

    fn unlock(&self) -> PathBuf {
        self.0.join("unlock")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn keyward(arguments: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(arguments)
        .output()
        .unwrap()
}

fn init(scratch: &Scratch) -> Output {
    keyward(&[
        "init".as_ref(),
        "--store".as_ref(),
        scratch.store().as_os_str(),
        "--unlock-file".as_ref(),
        scratch.unlock().as_os_str(),
    ])
}

fn status(store: &Path) -> Output {
    keyward(&["status".as_ref(), "--store".as_ref(), store.as_os_str()])
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The value of a `  name:   value` line of the output.
fn field(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|line| line.trim_start().strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name:?} line in:\n{text}"))
        .trim()
        .to_owned()
}

#[test]
fn init_creates_a_store_that_status_lists_with_no_keys() {
    let scratch = Scratch::new("empty");
    let created = init(&scratch);
    let text = stdout(&created);
    assert!(created.status.success(), "{text}\n{}", stderr(&created));
    let store_id = field(&text, "store id");
    assert_eq!(store_id.len(), 16, "{text}");
    assert!(store_id.chars().all(|c| c.is_ascii_hexdigit()), "{text}");
    assert_eq!(
        field(&text, "key derivation"),
        "Argon2id v0x13, 65536 KiB, 3 passes, 4 lanes"
    );
    assert!(
        field(&text, "unlock secret").contains(&scratch.unlock().display().to_string()),
        "init says where the unlock secret was read from:\n{text}"
    );
    assert!(
        !text.contains("correct horse"),
        "init printed the unlock secret:\n{text}"
    );
    // What init made: the directory closed to group and others, the store id file.
    let mode = std::fs::metadata(scratch.store())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "store directory mode {mode:o}");
    let id_file = std::fs::read_to_string(scratch.store().join("keyward-store.id")).unwrap();
    assert_eq!(id_file, format!("{store_id}\n"));

    let listed = status(&scratch.store());
    let listing = stdout(&listed);
    assert!(listed.status.success(), "{listing}\n{}", stderr(&listed));
    assert_eq!(field(&listing, "store id"), store_id);
    assert_eq!(field(&listing, "format version"), "1");
    assert_eq!(field(&listing, "sequence number"), "0");
    assert_eq!(field(&listing, "keys"), "0");
    assert!(listing.contains("not authenticated"), "{listing}");
}

#[test]
fn status_lists_the_keys_generated_through_the_library_with_their_public_keys() {
    let scratch = Scratch::new("keys");
    let created = init(&scratch);
    assert!(created.status.success(), "{}", stderr(&created));
    let store_id = field(&stdout(&created), "store id");
    let config = Config::default().with_store(StoreConfig::new(
        scratch.store(),
        UnlockSecret::file(scratch.unlock()),
    ));
    let keys: Vec<_> = {
        let service = SecretService::spawn(config.clone()).unwrap();
        let keys: Vec<_> = Purpose::ALL
            .iter()
            .map(|&purpose| {
                let id = service.generate_key(KeySpec::new(purpose)).unwrap();
                (purpose, id, service.public_key(id).unwrap())
            })
            .collect();
        // A key generated and dropped is not listed.
        let dropped = service
            .generate_key(KeySpec::new(Purpose::Consensus))
            .unwrap();
        service.drop_key(dropped).unwrap();
        // status reads the file while this service holds the store's lock.
        let listed = status(&scratch.store());
        assert!(listed.status.success(), "{}", stderr(&listed));
        assert_eq!(field(&stdout(&listed), "keys"), "4");
        assert!(!stdout(&listed).contains(&format!("{dropped:#}")));
        keys
    };
    let listed = status(&scratch.store());
    let listing = stdout(&listed);
    assert!(listed.status.success(), "{listing}\n{}", stderr(&listed));
    assert_eq!(field(&listing, "keys"), "4");
    // Four generates and one generate and drop: six sealed changes after the empty store.
    assert_eq!(field(&listing, "sequence number"), "6");
    for (purpose, id, public) in &keys {
        let id = format!("{id:#}");
        assert!(id.starts_with(&store_id), "{id} is not in store {store_id}");
        let row = listing
            .lines()
            .find(|line| line.contains(&id))
            .unwrap_or_else(|| panic!("{id} is not listed:\n{listing}"));
        let columns: Vec<_> = row
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            columns[..5],
            [
                purpose.to_string(),
                id.clone(),
                "1".to_owned(),
                public.algorithm().to_string(),
                public.to_string()
            ],
            "{row}"
        );
        assert!(columns[5].ends_with('Z') && columns[5].len() == 20, "{row}");
    }
    // The same keys open again: the listing named what the store holds.
    let service = SecretService::spawn(config).unwrap();
    assert_eq!(service.list_keys().unwrap().len(), 4);
}

#[test]
fn init_on_an_existing_store_fails_clearly_and_changes_nothing() {
    let scratch = Scratch::new("twice");
    assert!(init(&scratch).status.success());
    let state = scratch.store().join("keyward-store");
    let before = std::fs::read(&state).unwrap();
    let again = init(&scratch);
    assert!(!again.status.success());
    assert_eq!(again.status.code(), Some(1));
    let message = stderr(&again);
    assert!(
        message.contains("already holds a keyward store") && message.contains("not created"),
        "{message}"
    );
    assert_eq!(
        std::fs::read(&state).unwrap(),
        before,
        "the store was changed"
    );
}

#[test]
fn status_of_a_missing_directory_fails_clearly() {
    let scratch = Scratch::new("missing");
    let missing = scratch.0.join("nowhere");
    let listed = status(&missing);
    assert_eq!(listed.status.code(), Some(1));
    let message = stderr(&listed);
    assert!(
        message.contains("does not exist") && message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(!missing.exists(), "status created the directory");
}

#[test]
fn status_of_a_directory_without_a_store_fails_clearly() {
    let scratch = Scratch::new("no-store");
    let listed = status(&scratch.0);
    assert_eq!(listed.status.code(), Some(1));
    let message = stderr(&listed);
    assert!(message.contains("holds no keyward store"), "{message}");
}

#[test]
fn init_without_an_unlock_file_says_where_it_must_live_and_creates_nothing() {
    let scratch = Scratch::new("no-unlock");
    let refused = keyward(&[
        "init".as_ref(),
        "--store".as_ref(),
        scratch.store().as_os_str(),
    ]);
    assert_eq!(refused.status.code(), Some(2));
    let message = stderr(&refused);
    assert!(
        message.contains("no unlock secret given") && message.contains("--unlock-file"),
        "{message}"
    );
    assert!(message.contains("systemd credential"), "{message}");
    assert!(!scratch.store().exists(), "init created the directory");
}

#[test]
fn init_refuses_an_unlock_file_that_group_or_others_may_read() {
    let scratch = Scratch::new("open-unlock");
    std::fs::set_permissions(scratch.unlock(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = init(&scratch);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    let message = stderr(&refused);
    assert!(
        message.contains("0644") && message.contains("0600"),
        "{message}"
    );
    assert!(!scratch.store().join("keyward-store").exists());
}

#[test]
fn init_with_an_unreadable_unlock_file_fails_clearly() {
    let scratch = Scratch::new("unreadable");
    let missing = scratch.0.join("no-such-secret");
    let refused = keyward(&[
        "init".as_ref(),
        "--store".as_ref(),
        scratch.store().as_os_str(),
        "--unlock-file".as_ref(),
        missing.as_os_str(),
    ]);
    assert_eq!(refused.status.code(), Some(1));
    let message = stderr(&refused);
    assert!(
        message.contains("could not read the unlock secret")
            && message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(!scratch.store().join("keyward-store").exists());
}
