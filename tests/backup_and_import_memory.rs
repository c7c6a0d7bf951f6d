//! Property: the host's memory never holds a plaintext key while it imports a key, makes a
//! backup or restores one. A subprocess host opens a sealed store, makes a key of every
//! purpose, imports a key the scanner encrypted with the stock `age` tool to its provisioning
//! recipient, makes a backup to the scanner's age recipient, restores that backup (re-encrypted
//! by the scanner to the host's recipient), and waits; the scanner (root) reads the host's whole
//! memory through `/proc/<pid>/mem` and looks for every key's secret, raw and as the hex the
//! backup's text carries, taking the secrets from the backup itself (decrypted here with `age`).
//! Control: the host's canary is found by the same scan.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod age_util;
mod common;
mod store_util;

use common::RoleCommand;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use age_util::{age_decrypt, age_encrypt, age_is_installed, age_keygen, age_reencrypt};
use keyward::{
    AgeRecipient, Config, KeyService, KeySpec, PublicKey, Purpose, SecretMemory, SecretService,
    SpawnMode, StoreConfig, UnlockSecret,
};
use store_util::{Scratch, TEST_KDF};

const TEST: &str = "the_host_never_holds_a_plaintext_key_during_import_or_backup";

/// Played by the host under scan; talks to the scanner in `KW` lines on standard output and
/// reads its instructions from standard input.
fn play_host() {
    let mode = common::role_parameter("mode");
    let spawn_mode = match mode.as_str() {
        "fork" => SpawnMode::Fork,
        _ => SpawnMode::ForkExec {
            program: common::signer_program(),
        },
    };
    let config = Config::default()
        .with_spawn_mode(spawn_mode)
        .with_secret_memory(SecretMemory::LockedAnonymous)
        .with_store(
            StoreConfig::new(
                common::role_parameter("store"),
                UnlockSecret::file(common::role_parameter("unlock")),
            )
            .create_if_missing()
            .with_kdf(TEST_KDF),
        );
    let service = SecretService::spawn(config).unwrap();
    for purpose in Purpose::ALL {
        let key = service.generate_key(KeySpec::new(purpose)).unwrap();
        if purpose != Purpose::NetworkHandshake {
            common::assert_signs(&service, key, &[0x44; 32]);
        }
    }
    let mut canary = Box::new([0u8; 32]);
    getrandom::fill(canary.as_mut_slice()).unwrap();
    println!(
        "KW recipient {}",
        service.provisioning_recipient().unwrap().recipient
    );
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    stdin.read_line(&mut line).unwrap();
    let mut words = line.split_whitespace();
    let (import, public, backup_to, backup_out) = (
        words.next().unwrap(),
        words.next().unwrap(),
        words.next().unwrap(),
        words.next().unwrap(),
    );
    let public =
        ed25519_dalek::VerifyingKey::from_bytes(&common::unhex(public).try_into().unwrap())
            .unwrap();
    let encrypted = std::fs::read(import).unwrap();
    let imported = service
        .import_key(Purpose::Account, &PublicKey::Ed25519(public), &encrypted)
        .unwrap();
    common::assert_signs(&service, imported, &[0x45; 32]);
    let recipient: AgeRecipient = backup_to.parse().unwrap();
    let backup = service.backup(&recipient).unwrap();
    std::fs::write(backup_out, &backup).unwrap();
    // Then a restore of that backup, re-encrypted by the scanner to this store's recipient
    // (every key is held already: the signer decrypts and checks it all, and adds nothing).
    println!("KW backup-written");
    line.clear();
    stdin.read_line(&mut line).unwrap();
    let mut words = line.split_whitespace();
    let (restore_file, signed_by) = (words.next().unwrap(), words.next().unwrap());
    let restore = std::fs::read(restore_file).unwrap();
    let signed_by =
        ed25519_dalek::VerifyingKey::from_bytes(&common::unhex(signed_by).try_into().unwrap())
            .unwrap();
    let report = service.restore(&restore, &signed_by).unwrap();
    assert!(report.added.is_empty(), "{report:?}");
    println!("KW canary {}", common::hex(canary.as_slice()));
    println!("KW ready");
    line.clear();
    stdin.read_line(&mut line).unwrap();
    std::hint::black_box((&canary, &backup, &encrypted));
}

#[test]
fn the_host_never_holds_a_plaintext_key_during_import_or_backup() {
    if common::role().as_deref() == Some("host") {
        return play_host();
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test reads another process's memory, which needs root (CI runs as root)"
    );
    if !age_is_installed() {
        return;
    }
    for mode in ["fork", "fork-exec"] {
        let scratch = Scratch::new(&format!("import-memory-{mode}"));
        let unlock = scratch.unlock_file("unlock", b"memory scan\n");
        let mut child = common::rerun_self(TEST, "host")
            .parameter("mode", mode)
            .parameter("store", scratch.store().display())
            .parameter("unlock", unlock.display())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut said = |name: &str| -> String {
            for line in lines.by_ref() {
                let line = line.unwrap();
                if let Some((_, message)) = line.split_once("KW ")
                    && let Some(value) = message.strip_prefix(name)
                {
                    return value.trim().to_owned();
                }
            }
            panic!("{mode}: the host ended before it said its {name}");
        };

        // The key to import, made here and encrypted by age to the host's recipient.
        let recipient = said("recipient");
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).unwrap();
        let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
        let import_file = scratch.base.join("import.age");
        std::fs::write(
            &import_file,
            age_encrypt(
                &recipient,
                false,
                format!("{}\n", common::hex(&seed)).as_bytes(),
            ),
        )
        .unwrap();
        let operator = age_keygen(&scratch.base, "operator.txt");
        let backup_file = scratch.base.join("backup.age");
        writeln!(
            stdin,
            "{} {} {} {}",
            import_file.display(),
            common::hex(public.as_bytes()),
            operator.recipient,
            backup_file.display()
        )
        .unwrap();
        said("backup-written");
        let restore_file = scratch.base.join("restore.age");
        std::fs::write(
            &restore_file,
            age_reencrypt(&operator, &backup_file, &recipient),
        )
        .unwrap();
        let signed_by = {
            let text = String::from_utf8(age_decrypt(&operator, &backup_file).unwrap()).unwrap();
            text.lines()
                .find_map(|line| line.strip_prefix("signing-key "))
                .unwrap()
                .to_owned()
        };
        writeln!(stdin, "{} {signed_by}", restore_file.display()).unwrap();
        let canary: [u8; 32] = common::unhex(&said("canary")).try_into().unwrap();
        said("ready");

        // Every key's secret, from the backup; the imported seed must be among them.
        let text = String::from_utf8(age_decrypt(&operator, &backup_file).unwrap()).unwrap();
        let secrets: Vec<[u8; 32]> = text
            .lines()
            .filter_map(|line| line.split(" secret ").nth(1))
            .map(|hex| common::unhex(hex).try_into().unwrap())
            .collect();
        assert_eq!(secrets.len(), Purpose::ALL.len() + 1, "{mode}: {text}");
        assert!(
            secrets.contains(&seed),
            "{mode}: the import is not in the backup"
        );
        let mut needles = vec![canary];
        let mut names = vec!["the canary".to_owned()];
        for (index, secret) in secrets.iter().enumerate() {
            let hex = common::hex(secret);
            needles.push(*secret);
            names.push(format!("secret {index}"));
            for (half, part) in [&hex[..32], &hex[32..]].into_iter().enumerate() {
                needles.push(part.as_bytes().try_into().unwrap());
                names.push(format!("secret {index} as hex, half {half}"));
            }
        }
        let (found, searched) = common::scan_memory(child.id(), &needles, |_| true);
        println!("{mode}: searched {} MiB of the host", searched >> 20);
        writeln!(stdin, "exit").unwrap();
        drop(stdin);
        for line in lines {
            line.unwrap();
        }
        assert!(child.wait().unwrap().success(), "{mode}: the host failed");
        assert!(
            found.iter().any(|(index, _)| *index == 0),
            "{mode}: control failed: the canary was not found in the host"
        );
        let leaks: Vec<String> = found
            .iter()
            .filter(|(index, _)| *index != 0)
            .map(|(index, place)| format!("{} at {place}", names[*index]))
            .collect();
        assert!(leaks.is_empty(), "{mode}: found in the host: {leaks:#?}");
        seed.fill(0);
    }
}
