//! The operator's key-lifecycle commands, run as the built `keyward` binary with the stock `age`
//! tool: `provision-key` prints a recipient `age` encrypts to, `import` brings the key in
//! (exit 0) and refuses it a second time (exit 3), `backup` writes a file `age -d` reads; usage
//! errors exit 2. No secret reaches standard output or standard error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod age_util;
mod common;
mod store_util;

use std::ffi::OsStr;
use std::process::Output;

use age_util::{age_decrypt, age_encrypt, age_is_installed, age_keygen};
use keyward::{KeyService, PublicKey, SecretService};
use store_util::{Scratch, open_config};

/// `keyward <command> --store DIR --unlock-file FILE <more>`.
fn on_store(command: &str, scratch: &Scratch, unlock: &std::path::Path, more: &[&OsStr]) -> Output {
    let store = scratch.store();
    let mut arguments: Vec<&OsStr> = vec![
        command.as_ref(),
        "--store".as_ref(),
        store.as_os_str(),
        "--unlock-file".as_ref(),
        unlock.as_os_str(),
    ];
    arguments.extend_from_slice(more);
    common::run_keyward(&arguments)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn provision_import_and_backup_from_the_command_line() {
    if !age_is_installed() {
        return;
    }
    let scratch = Scratch::new("lifecycle-commands");
    let unlock = scratch.unlock_file("unlock", b"lifecycle commands\n");
    common::keyward_init(&scratch.store(), &unlock);

    // provision-key: the recipient alone on standard output.
    let provisioned = on_store("provision-key", &scratch, &unlock, &[]);
    assert!(
        provisioned.status.success(),
        "{}",
        text(&provisioned.stderr)
    );
    let recipient = text(&provisioned.stdout).trim().to_owned();
    assert!(recipient.starts_with("age1"), "{recipient}");
    assert!(text(&provisioned.stderr).contains("age -r"));

    // import: a consensus seed encrypted by age to that recipient.
    let seed = [0x61; 32];
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    let key_file = scratch.base.join("consensus.age");
    std::fs::write(
        &key_file,
        age_encrypt(&recipient, true, common::hex(&seed).as_bytes()),
    )
    .unwrap();
    let public_hex = common::hex(public.as_bytes());
    let import = |file: &std::path::Path| {
        on_store(
            "import",
            &scratch,
            &unlock,
            &[
                "--purpose".as_ref(),
                "consensus".as_ref(),
                "--public".as_ref(),
                public_hex.as_ref(),
                "--in".as_ref(),
                file.as_os_str(),
            ],
        )
    };
    let imported = import(&key_file);
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    let key_id = text(&imported.stdout).trim().to_owned();
    assert_eq!(key_id.len(), 48, "{key_id}");
    // A second time: refused, exit 3, and it says why.
    let again = import(&key_file);
    assert_eq!(again.status.code(), Some(3), "{}", text(&again.stderr));
    assert!(
        text(&again.stderr).contains("already held"),
        "{}",
        text(&again.stderr)
    );
    // A file that is not age: refused, exit 3.
    let junk = scratch.base.join("junk");
    std::fs::write(&junk, b"not an age file").unwrap();
    assert_eq!(import(&junk).status.code(), Some(3));
    // A public key that does not parse: usage, exit 2.
    let bad_public = on_store(
        "import",
        &scratch,
        &unlock,
        &[
            "--purpose".as_ref(),
            "account".as_ref(),
            "--public".as_ref(),
            "xyz".as_ref(),
            "--in".as_ref(),
            key_file.as_os_str(),
        ],
    );
    assert_eq!(bad_public.status.code(), Some(2));

    // backup: to an operator's recipient; age reads it; the imported key is in it.
    let operator = age_keygen(&scratch.base, "operator.txt");
    let backup_file = scratch.base.join("store.backup.age");
    let backup = |to: &str, out: &std::path::Path| {
        on_store(
            "backup",
            &scratch,
            &unlock,
            &[
                "--to".as_ref(),
                to.as_ref(),
                "--out".as_ref(),
                out.as_os_str(),
            ],
        )
    };
    let backed_up = backup(&operator.recipient, &backup_file);
    assert!(backed_up.status.success(), "{}", text(&backed_up.stderr));
    let plain = text(&age_decrypt(&operator, &backup_file).unwrap());
    let line = plain
        .lines()
        .find(|line| line.starts_with(&format!("key {key_id} consensus ed25519")))
        .unwrap_or_else(|| panic!("the imported key is not in the backup:\n{plain}"));
    assert!(line.contains(&format!(
        "public {public_hex} secret {}",
        common::hex(&seed)
    )));
    // An existing output file is not replaced (exit 2); a bad recipient is usage (exit 2).
    let existing = backup(&operator.recipient, &backup_file);
    assert_eq!(
        existing.status.code(),
        Some(2),
        "{}",
        text(&existing.stderr)
    );
    let bad = scratch.base.join("bad.age");
    let not_a_recipient = backup("age1notarecipient", &bad);
    assert_eq!(not_a_recipient.status.code(), Some(2));
    assert!(!bad.exists(), "a refused backup left a file");
    let identity = std::fs::read_to_string(&operator.file).unwrap();
    let secret_key = identity
        .lines()
        .find(|line| line.starts_with("AGE-SECRET-KEY-"))
        .unwrap();
    let an_identity = backup(secret_key, &bad);
    assert_eq!(an_identity.status.code(), Some(2));
    assert!(
        !text(&an_identity.stderr).contains(secret_key),
        "the error repeats the secret key it was given"
    );

    // No secret on any output: not the imported seed, not any backed-up secret.
    let secrets: Vec<String> = plain
        .lines()
        .filter_map(|line| line.split(" secret ").nth(1))
        .map(str::to_owned)
        .collect();
    assert!(!secrets.is_empty());
    for output in [&provisioned, &imported, &again, &backed_up] {
        for secret in &secrets {
            assert!(!text(&output.stdout).contains(secret.as_str()));
            assert!(!text(&output.stderr).contains(secret.as_str()));
        }
    }

    // The library sees what the commands did.
    let service = SecretService::spawn(open_config(&scratch.store(), &unlock)).unwrap();
    let listed = service.list_keys().unwrap();
    assert!(
        listed.iter().any(|info| format!("{:#}", info.id) == key_id
            && info.public_key == PublicKey::Ed25519(public))
    );
}
