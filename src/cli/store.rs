//! Runs in the host (the binary): `keyward init` and `keyward status`, the operator's commands
//! for a sealed key store. `init` creates a store by starting a signer on it (the signer draws
//! the store id and salt, reads the unlock secret itself and seals the empty store; this process
//! writes the file and never reads the unlock secret); `status` reads the store's clear fields
//! without unlocking it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use keyward::{
    Config, KdfParameters, SecretService, StoreConfig, StoreCreation, StoreListing, UnlockSecret,
};

/// Exit code of a command whose store operation failed (every `StoreError`, and a signer that
/// could not start).
const FAILED: u8 = 1;
/// Exit code of a command used wrongly (as clap's own usage errors).
const USAGE: u8 = 2;

/// `keyward init`'s arguments.
#[derive(clap::Args)]
#[command(after_help = "\
The unlock secret has no default: --unlock-file is required, and without it init says where the \
secret should live and exits with code 2, creating nothing. The store is only as safe as the \
place its unlock secret lives, which keyward cannot guess: it belongs apart from the store \
directory (a systemd credential, or a 0600 file on another mount), not beside it. Services that \
open the store need the same secret: StoreConfig::new(DIR, UnlockSecret::file(FILE)).

The signer reads the file itself (this command only makes its path absolute) and refuses one \
that group or others may read (mode 0600 or 0400 expected). One trailing newline (\\n or \\r\\n) is \
ignored; a file of more than 4096 bytes, or an empty one, is refused. Losing the unlock secret \
loses every key in the store.

Exit codes: 0 created; 1 the store could not be created (the message says why: it already \
exists, the directory's parent is missing, a mode is wrong, the unlock secret cannot be read, \
...); 2 usage.")]
pub(crate) struct InitArgs {
    /// The store directory to create (mode 0700; its parent must exist). Refused if it already
    /// holds a store.
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// The file holding the unlock secret, read by the signer (never by this process). Required:
    /// see below.
    #[arg(long, value_name = "FILE")]
    unlock_file: Option<PathBuf>,
}

/// `keyward status`'s arguments.
#[derive(clap::Args)]
#[command(after_help = "\
status reads the state file's clear fields without the unlock secret and without the store's \
lock (it works while a service runs on the store). Nothing it shows is authenticated: the seals \
are checked only when a signer opens the store with its unlock secret. No secret is shown: in \
the file every secret is sealed.

Exit codes: 0 listed; 1 the store could not be read (the message says why); 2 usage.")]
pub(crate) struct StatusArgs {
    /// The store directory.
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
}

/// `keyward init`: creates the store, then says what it made and where its unlock secret is.
pub(crate) fn init(arguments: &InitArgs) -> ExitCode {
    let store = absolute(&arguments.store);
    let Some(unlock_file) = &arguments.unlock_file else {
        let store = store.display();
        for line in [
            "keyward init: no unlock secret given; nothing was created.".to_owned(),
            String::new(),
            "The store's keys are sealed under a key derived from an unlock secret that the".into(),
            "signer reads from a file. Make that file first, apart from the store directory:"
                .into(),
            String::new(),
            "- a systemd credential (LoadCredentialEncrypted= or LoadCredential= in the".into(),
            "  validator's unit; the file is then $CREDENTIALS_DIRECTORY/NAME), or".into(),
            "- a file of mode 0600, owned by the validator's user, on another mount than".into(),
            format!("  {store}, for example:"),
            "  (umask 077 && head -c 32 /dev/urandom | base64 > /path/to/keyward-unlock)".into(),
            String::new(),
            format!("then run: keyward init --store {store} --unlock-file /path/to/keyward-unlock"),
        ] {
            eprintln!("{line}");
        }
        return ExitCode::from(USAGE);
    };
    let unlock_file = absolute(unlock_file);
    let config = Config::default().with_store(
        StoreConfig::new(&store, UnlockSecret::file(&unlock_file))
            .with_creation(StoreCreation::CreateNew),
    );
    let started = std::time::Instant::now();
    match SecretService::spawn(config) {
        // Dropping the service shuts its signer down; the store was written before spawn
        // returned.
        Ok(service) => drop(service),
        Err(error) => {
            eprintln!("keyward init: the store was not created: {error}");
            if matches!(error, keyward::Error::Spawn(_)) {
                eprintln!("(`keyward check` says whether this machine can run the signer)");
            }
            return ExitCode::from(FAILED);
        }
    }
    let elapsed = started.elapsed();
    let listing = match StoreListing::read(&store) {
        Ok(listing) => listing,
        Err(error) => {
            eprintln!("keyward init: the store was created but cannot be read back: {error}");
            return ExitCode::from(FAILED);
        }
    };
    println!(
        "Created a sealed key store ({:.1} s).",
        elapsed.as_secs_f64()
    );
    println!("  directory:       {}", store.display());
    println!("  state file:      {}", listing.state_file.display());
    println!("  store id:        {}", listing.store_id);
    println!("  format version:  {}", listing.format_version);
    println!("  key derivation:  {}", kdf_text(listing.kdf));
    println!(
        "  unlock secret:   read by the signer from {} (never by this process)",
        unlock_file.display()
    );
    println!(
        "\nEvery service that opens this store needs the same unlock secret, from the same place:\n  \
         Config::default().with_store(StoreConfig::new({:?}, UnlockSecret::file({:?})))\n\
         Keep the unlock secret apart from the store (a systemd credential, or a 0600 file on\n\
         another mount) and back it up apart from the store's backups: a copy of the store is\n\
         useless without it, and without it the keys cannot be recovered.",
        store.display().to_string(),
        unlock_file.display().to_string()
    );
    ExitCode::SUCCESS
}

/// `keyward status`: the store's keys as its file lists them, without unlocking it.
pub(crate) fn status(arguments: &StatusArgs) -> ExitCode {
    let store = absolute(&arguments.store);
    let listing = match StoreListing::read(&store) {
        Ok(listing) => listing,
        Err(error) => {
            eprintln!("keyward status: {error}");
            return ExitCode::from(FAILED);
        }
    };
    println!("keyward store {}", store.display());
    println!("  state file:      {}", listing.state_file.display());
    println!("  store id:        {}", listing.store_id);
    println!("  format version:  {}", listing.format_version);
    println!("  sequence number: {}", listing.sequence);
    println!("  key derivation:  {}", kdf_text(listing.kdf));
    let current = listing.keys.iter().filter(|key| key.retires == 0).count();
    println!("  keys:            {current}");
    if listing.keys.len() > current {
        println!(
            "  previous versions in their grace period: {}",
            listing.keys.len() - current
        );
    }
    if !listing.keys.is_empty() {
        println!(
            "\n  {:<18} {:<48}  {:<7}  {:<9}  {:<64}  CREATED (UTC)",
            "PURPOSE", "KEY ID", "VERSION", "ALGORITHM", "PUBLIC KEY"
        );
        for key in &listing.keys {
            let retires = if key.retires == 0 {
                String::new()
            } else {
                format!("  retires {}", utc(key.retires))
            };
            println!(
                "  {:<18} {:#}  {:<7}  {:<9}  {}  {}{retires}",
                key.purpose.to_string(),
                key.id,
                key.version,
                key.algorithm.to_string(),
                hex(&key.public_key),
                utc(key.created)
            );
        }
    }
    println!(
        "\nRead from the file as it is on disk, without the unlock secret: not authenticated.\n\
         Its seals are checked only when a signer opens the store with the unlock secret (every\n\
         service started on it does, and refuses a file that does not check). No secret is shown:\n\
         in the file every secret key is sealed."
    );
    ExitCode::SUCCESS
}

fn kdf_text(kdf: KdfParameters) -> String {
    format!(
        "Argon2id v0x13, {} KiB, {} passes, {} lanes",
        kdf.memory_kib, kdf.passes, kdf.lanes
    )
}

/// A path made absolute against the current directory (without touching the file system, so a
/// path that does not exist yet stays as given): the signer reads the unlock secret by this
/// path, and the operator is told where things are.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Seconds since the Unix epoch as an RFC 3339 UTC time (`2023-11-14T22:13:20Z`): the civil
/// date from a day count (Howard Hinnant's `civil_from_days`), to need no date crate.
fn utc(seconds: u64) -> String {
    let days = seconds / 86_400;
    let of_day = seconds % 86_400;
    // Days since 0000-03-01, in 400-year eras of 146,097 days.
    let shifted = days + 719_468;
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3_600,
        of_day % 3_600 / 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn times_print_as_rfc_3339_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
        // A leap day, the day after it, and the last second of a century year that is a leap
        // year (2000) and of one that is not (2100).
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(951_868_800), "2000-03-01T00:00:00Z");
        assert_eq!(utc(978_307_199), "2000-12-31T23:59:59Z");
        assert_eq!(utc(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(utc(4_107_542_400), "2100-03-01T00:00:00Z");
    }
}
