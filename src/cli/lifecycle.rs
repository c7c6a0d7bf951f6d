//! Runs in the host (the binary): the key lifecycle's operator commands on a sealed store.
//! `provision-key` prints the store's provisioning recipient, `import` brings in a key an
//! operator encrypted to it with the stock `age` tool, `backup` writes every key encrypted
//! (inside the signer) to an operator's age recipient. Each opens the store the way a validator
//! does, so each needs the store's lock: stop the validator first.
//!
//! Exit codes: 0 done; 1 could not be done (the store did not open, a file could not be read
//! or written); 2 a usage error (clap's, a recipient or public key that does not parse, an
//! output file that exists); 3 the signer refused the import, and nothing was stored. Nothing
//! secret is printed or logged: recipients, public keys, key ids and file names only.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use keyward::{AgeRecipient, Error, KeyService, PublicKey, Purpose};

use crate::cli::store_access::{StoreArgs, open_store};

/// Stop the validator before any of these: they need the store's lock.
const LOCKED_HINT: &str = " (stop the validator that uses it first)";

/// The largest age file `import` reads: a key's file is a few hundred bytes.
const MAX_IMPORT_BYTES: u64 = 64 * 1024;

/// The options of `keyward provision-key`.
#[derive(Args, Debug)]
pub(crate) struct ProvisionArgs {
    #[command(flatten)]
    store: StoreArgs,
}

/// The options of `keyward import`.
#[derive(Args, Debug)]
pub(crate) struct ImportArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// What the key is for (its algorithm follows: Ed25519, or X25519 for network-handshake).
    #[arg(long, value_enum)]
    purpose: PurposeArg,
    /// The key's public key, 64 hex digits: the signer refuses the import unless the secret's
    /// public key is this one.
    #[arg(long, value_name = "HEX")]
    public: String,
    /// The age file (binary or armored) holding the secret key, encrypted to the recipient
    /// `keyward provision-key` prints.
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
}

/// The options of `keyward rotate`.
#[derive(Args, Debug)]
pub(crate) struct RotateArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The key to rotate: its id, 48 hex digits (as `keyward status` lists it).
    #[arg(long, value_name = "ID")]
    key: keyward::KeyId,
    /// How long the previous version stays usable (by the calls that name a version), in
    /// seconds; 0 erases it at once.
    #[arg(long, value_name = "SECONDS")]
    grace: u64,
}

/// The options of `keyward restore`.
#[derive(Args, Debug)]
pub(crate) struct RestoreArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The backup, decrypted on the offline machine and re-encrypted to this store's
    /// provisioning recipient (`age -d -i IDENTITY BACKUP | age -r RECIPIENT -o FILE`).
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// The backup-signing key (64 hex digits) of the store the backup came from, as pinned
    /// when the backup was made: the restore is refused unless it signed the backup.
    #[arg(long, value_name = "HEX")]
    signed_by: String,
}

/// The options of `keyward backup`.
#[derive(Args, Debug)]
pub(crate) struct BackupArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The age X25519 recipient (`age1…`, as `age-keygen` prints it) to encrypt to.
    #[arg(long, value_name = "RECIPIENT")]
    to: String,
    /// Where to write the backup (created with mode 0600; an existing file is not replaced).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PurposeArg {
    Account,
    Consensus,
    NetworkDiscovery,
    NetworkHandshake,
}

impl From<PurposeArg> for Purpose {
    fn from(purpose: PurposeArg) -> Self {
        match purpose {
            PurposeArg::Account => Purpose::Account,
            PurposeArg::Consensus => Purpose::Consensus,
            PurposeArg::NetworkDiscovery => Purpose::NetworkDiscovery,
            PurposeArg::NetworkHandshake => Purpose::NetworkHandshake,
        }
    }
}

/// How a command failed: its exit code and the whole message for standard error.
struct Failure(u8, String);

fn finish(outcome: Result<(), Failure>) -> ! {
    // The service (and its signer) is gone by now: exiting skips no clean-up.
    match outcome {
        Ok(()) => std::process::exit(0),
        Err(Failure(code, message)) => {
            eprintln!("error: {message}");
            std::process::exit(i32::from(code))
        }
    }
}

pub(crate) fn provision(arguments: &ProvisionArgs) -> ! {
    finish((|| {
        let service = open_store(&arguments.store, LOCKED_HINT).map_err(|m| Failure(1, m))?;
        let provisioning = service
            .provisioning_recipient()
            .map_err(|error| Failure(1, format!("the signer gave no recipient: {error}")))?;
        println!("{}", provisioning.recipient);
        eprintln!(
            "the provisioning recipient of store {}: encrypt a key to it with\n  \
             age -r {} -o KEY.age KEY\n\
             and import it with `keyward import`. Signed by the store's backup-signing key\n  \
             {}\n\
             signature over (\"{}\", store id, recipient): {}",
            hex(&provisioning.store),
            provisioning.recipient,
            hex(provisioning.signing_key.as_bytes()),
            String::from_utf8_lossy(keyward::PROVISIONING_LABEL),
            hex(&provisioning.signature.to_bytes()),
        );
        Ok(())
    })())
}

pub(crate) fn import(arguments: &ImportArgs) -> ! {
    finish((|| {
        let purpose = Purpose::from(arguments.purpose);
        let claimed = public_key(purpose, &arguments.public)?;
        let encrypted = read_limited(&arguments.input, MAX_IMPORT_BYTES)?;
        let service = open_store(&arguments.store, LOCKED_HINT).map_err(|m| Failure(1, m))?;
        let key = service
            .import_key(purpose, &claimed, &encrypted)
            .map_err(|error| {
                let code = match error {
                    Error::ImportUndecryptable { .. }
                    | Error::ImportMalformed
                    | Error::ImportPublicKeyMismatch { .. }
                    | Error::KeyAlreadyHeld { .. }
                    | Error::PurposeAlgorithmMismatch { .. }
                    | Error::KeyLimitReached { .. } => 3,
                    _ => 1,
                };
                Failure(code, because("the import was refused", error))
            })?;
        println!("{key:#}");
        eprintln!("imported a {purpose} key with public key {claimed}; it is durable in the store");
        Ok(())
    })())
}

pub(crate) fn backup(arguments: &BackupArgs) -> ! {
    finish((|| {
        let recipient: AgeRecipient = arguments.to.parse().map_err(|error| {
            Failure(
                2,
                // Not repeated: what was given may be a secret key pasted by mistake.
                because("--to is not an age recipient", error),
            )
        })?;
        // Created before the store is opened: an existing file is refused before any work.
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&arguments.out)
            .map_err(|error| {
                let code = if error.kind() == std::io::ErrorKind::AlreadyExists {
                    2
                } else {
                    1
                };
                Failure(
                    code,
                    because(
                        format!("could not create {}", arguments.out.display()),
                        error,
                    ),
                )
            })?;
        let written = (|| {
            let service = open_store(&arguments.store, LOCKED_HINT).map_err(|m| Failure(1, m))?;
            let keys = service
                .list_keys()
                .map_err(|error| Failure(1, because("could not list the keys", error)))?
                .len();
            let file = service
                .backup(&recipient)
                .map_err(|error| Failure(1, because("the backup failed", error)))?;
            let signing = service
                .provisioning_recipient()
                .map_err(|error| Failure(1, because("no backup-signing key", error)))?
                .signing_key;
            out.write_all(&file)
                .and_then(|()| out.sync_all())
                .map_err(|error| {
                    Failure(
                        1,
                        because(
                            format!("could not write {}", arguments.out.display()),
                            error,
                        ),
                    )
                })?;
            eprintln!(
                "backed up {keys} keys to {} ({} bytes, age, encrypted to {recipient});\n\
                 read it with `age -d -i IDENTITY {}`; it is signed by the store's \
                 backup-signing key {}",
                arguments.out.display(),
                file.len(),
                arguments.out.display(),
                hex(signing.as_bytes()),
            );
            Ok(())
        })();
        if written.is_err() {
            // No half-written or empty backup is left to be mistaken for one.
            let _ = std::fs::remove_file(&arguments.out);
        }
        written
    })())
}

pub(crate) fn rotate(arguments: &RotateArgs) -> ! {
    finish((|| {
        let service = open_store(&arguments.store, LOCKED_HINT).map_err(|m| Failure(1, m))?;
        let rotated = service
            .rotate_key(
                arguments.key,
                std::time::Duration::from_secs(arguments.grace),
            )
            .map_err(|error| {
                let code = match error {
                    Error::GraceTooLong { .. } => 2,
                    Error::UnknownKey(_)
                    | Error::VersionLimit { .. }
                    | Error::KeyLimitReached { .. } => 3,
                    _ => 1,
                };
                Failure(code, because("the rotation was refused", error))
            })?;
        println!("{} {}", rotated.version, rotated.public_key);
        eprintln!(
            "key {:#} is at version {} now, durable in the store; the previous version {}",
            arguments.key,
            rotated.version,
            if arguments.grace == 0 {
                "was erased".to_owned()
            } else {
                format!(
                    "stays usable by version for {} s, then is erased",
                    arguments.grace
                )
            }
        );
        Ok(())
    })())
}

pub(crate) fn restore(arguments: &RestoreArgs) -> ! {
    finish((|| {
        let signed_by = hex32(&arguments.signed_by)
            .and_then(|bytes| ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok())
            .ok_or_else(|| {
                Failure(
                    2,
                    format!(
                        "--signed-by {:?} is not an Ed25519 public key in 64 hex digits",
                        arguments.signed_by
                    ),
                )
            })?;
        let encrypted = read_limited(&arguments.input, keyward::MAX_MESSAGE_LEN as u64 * 2)?;
        let service = open_store(&arguments.store, LOCKED_HINT).map_err(|m| Failure(1, m))?;
        let report = service.restore(&encrypted, &signed_by).map_err(|error| {
            let code = match error {
                Error::ImportUndecryptable { .. }
                | Error::ImportTooLarge { .. }
                | Error::RestoreRefused { .. }
                | Error::KeyLimitReached { .. } => 3,
                _ => 1,
            };
            Failure(code, because("the restore was refused", error))
        })?;
        for (key, public) in &report.added {
            println!("{key:#} {public}");
        }
        eprintln!(
            "restored: {} keys added, {} held already had their watermarks raised; the backup \
             holds {} keys and {} watermarks, all durable in the store now",
            report.added.len(),
            report.raised,
            report.keys_in_backup,
            report.marks_in_backup
        );
        Ok(())
    })())
}

/// 32 bytes from 64 hex digits.
fn hex32(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(bytes)
}

/// The claimed public key for `purpose`, from 64 hex digits.
fn public_key(purpose: Purpose, text: &str) -> Result<PublicKey, Failure> {
    let usage = |why: &str| Failure(2, format!("--public {text:?}: {why}"));
    let bytes = hex32(text).ok_or_else(|| usage("not 64 hex digits"))?;
    match purpose.algorithm() {
        keyward::Algorithm::Ed25519 => ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(PublicKey::Ed25519)
            .map_err(|_| usage("not an Ed25519 public key")),
        keyward::Algorithm::X25519 => Ok(PublicKey::X25519(x25519_dalek::PublicKey::from(bytes))),
        _ => Err(usage("an algorithm this build does not know")),
    }
}

fn read_limited(path: &std::path::Path, limit: u64) -> Result<Vec<u8>, Failure> {
    let failed = |error: std::io::Error| {
        Failure(
            1,
            because(format!("could not read {}", path.display()), error),
        )
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(limit + 1).read_to_end(&mut bytes))
        .map_err(failed)?;
    if bytes.len() as u64 > limit {
        return Err(Failure(
            3,
            format!(
                "{} is larger than {limit} bytes, more than the file can be; nothing was stored",
                path.display()
            ),
        ));
    }
    Ok(bytes)
}

fn because(what: impl std::fmt::Display, error: impl std::fmt::Display) -> String {
    format!("{what}: {error}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
