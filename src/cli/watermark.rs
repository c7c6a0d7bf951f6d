//! Runs in the host (the binary): `keyward watermark export|import`, a store's double-sign
//! protection carried to another machine or from another signer as a JSON document
//! (`keyward::WatermarkInterchange`; the format is in docs/consensus-format.md).
//!
//! Both open the store the way a validator does (a signer process unseals it), so both need the
//! store's lock: while a validator runs on the store they fail, which is the interchange's own
//! rule (EIP-3076's too): export and import only while nothing signs with the keys, so that no
//! watermark moves between reading and writing the document.
//!
//! Exit codes: 0 done; 1 could not be done (the store did not open, a file could not be read or
//! written); 2 a usage error (clap's, or an export that needs `--chain`); 3 the document was
//! refused, and nothing was imported. Nothing secret is printed: public keys, chain ids,
//! epochs, rounds and digests only.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, Subcommand};
use keyward::{
    ChainId, ConsensusKind, Error, ImportReport, MarkImport, SecretService, Watermark,
    WatermarkInterchange,
};

use crate::cli::store_access::{StoreArgs, open_store};

/// The largest document `import` reads: far above the largest store's (1,024 keys of about
/// 600 bytes each), far below what would hurt to hold in memory.
const MAX_DOCUMENT_BYTES: u64 = 4 << 20;

/// The options of `keyward watermark`.
#[derive(Args, Debug)]
pub(crate) struct WatermarkArgs {
    #[command(subcommand)]
    command: WatermarkCommand,
}

#[derive(Subcommand, Debug)]
enum WatermarkCommand {
    /// Write the consensus keys' watermarks on one chain as a JSON interchange document.
    Export {
        #[command(flatten)]
        store: StoreArgs,
        /// The chain (64 hex digits). May be left out when the store's keys have signed on
        /// exactly one chain.
        #[arg(long, value_name = "HEX")]
        chain: Option<ChainId>,
        /// Write the document here instead of to standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Raise the store's watermarks to a JSON interchange document's, where the document's
    /// are higher; never lowers one. Nothing is imported unless the whole document is valid.
    Import {
        #[command(flatten)]
        store: StoreArgs,
        /// The document to import.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
    },
}

/// How a subcommand failed, by exit code; each with the whole message for standard error.
enum Failure {
    /// Exit 1: it could not be done.
    Failed(String),
    /// Exit 2: the command needs other arguments.
    Usage(String),
    /// Exit 3: the document was refused; nothing was imported.
    Refused(String),
}

/// `what` failed because of `error`: one line. keyward's errors already carry their cause in
/// their message, so the chain is not printed again.
fn because(what: impl std::fmt::Display, error: impl std::fmt::Display) -> String {
    format!("{what}: {error}")
}

pub(crate) fn run(arguments: &WatermarkArgs) -> Result<()> {
    let outcome = match &arguments.command {
        WatermarkCommand::Export { store, chain, out } => export(store, *chain, out.as_deref()),
        WatermarkCommand::Import { store, input } => import(store, input),
    };
    // The service (and its signer) is gone by now: exiting skips no clean-up.
    let (code, message) = match outcome {
        Ok(()) => return Ok(()),
        Err(Failure::Failed(message)) => (1, message),
        Err(Failure::Usage(message)) => (2, message),
        Err(Failure::Refused(message)) => (3, message),
    };
    eprintln!("error: {message}");
    std::process::exit(code)
}

fn export(store: &StoreArgs, chain: Option<ChainId>, out: Option<&Path>) -> Result<(), Failure> {
    let service = open(store)?;
    let chain = match chain {
        Some(chain) => chain,
        None => {
            let chains = WatermarkInterchange::chains(&service)
                .map_err(|error| Failure::Failed(because("could not read the chains", error)))?;
            match chains.as_slice() {
                [chain] => *chain,
                [] => {
                    return Err(Failure::Usage(
                        "the store's consensus keys have no watermarks on any chain yet; name the chain with --chain HEX to export a document without any".to_owned(),
                    ));
                }
                several => {
                    let list: Vec<String> = several.iter().map(ChainId::to_string).collect();
                    return Err(Failure::Usage(format!(
                        "the store's consensus keys have watermarks on {} chains and a document covers one: name it with --chain HEX (one of {})",
                        several.len(),
                        list.join(", ")
                    )));
                }
            }
        }
    };
    let document = WatermarkInterchange::export(&service, chain)
        .map_err(|error| Failure::Failed(because("could not read the watermarks", error)))?;
    drop(service);
    let text = document.to_json();
    let written = match out {
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|error| because("could not write the document to standard output", error))
        }
        Some(path) => write_file(path, text.as_bytes()).map_err(|error| {
            because(
                format!("could not write the document to {}", path.display()),
                error,
            )
        }),
    };
    written.map_err(Failure::Failed)?;
    let signed = document
        .keys
        .iter()
        .filter(|key| {
            ConsensusKind::ALL
                .iter()
                .any(|&kind| key.of(kind).is_some())
        })
        .count();
    eprintln!(
        "exported the watermarks of {} consensus key(s) on chain {chain} ({signed} with any){}",
        document.keys.len(),
        out.map(|path| format!(" to {}", path.display()))
            .unwrap_or_default()
    );
    Ok(())
}

fn import(store: &StoreArgs, input: &Path) -> Result<(), Failure> {
    let refused = |error: &dyn std::fmt::Display| {
        Failure::Refused(because(
            format!("{} was refused, nothing was imported", input.display()),
            error,
        ))
    };
    let text = read_document(input)?;
    // Checked before the store is opened: a document that cannot be read costs no unlock.
    let document = WatermarkInterchange::from_json(&text).map_err(|error| refused(&error))?;
    let service = open(store)?;
    let report = match document.import(&service) {
        Ok(report) => report,
        Err(Error::Interchange(error)) => return Err(refused(&error)),
        Err(error) => {
            return Err(Failure::Failed(because(
                "the import failed (each watermark raised before the failure is durable; importing the document again is safe)",
                error,
            )));
        }
    };
    drop(service);
    print_report(&report);
    Ok(())
}

/// Opens the store as a validator would. A store holding keys beyond the default key limit is
/// opened again with the limit it names.
fn open(store: &StoreArgs) -> Result<SecretService, Failure> {
    open_store(
        store,
        " (stop the validator that uses it first: watermarks are exchanged only while nothing signs with the keys)",
    )
    .map_err(Failure::Failed)
}

fn read_document(input: &Path) -> Result<String, Failure> {
    let failed = |error: std::io::Error| {
        Failure::Failed(because(
            format!("could not read {}", input.display()),
            error,
        ))
    };
    let file = std::fs::File::open(input).map_err(failed)?;
    let mut bytes = Vec::new();
    file.take(MAX_DOCUMENT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    if bytes.len() as u64 > MAX_DOCUMENT_BYTES {
        return Err(Failure::Refused(format!(
            "{} is larger than {MAX_DOCUMENT_BYTES} bytes, more than any store's watermarks take; nothing was imported",
            input.display()
        )));
    }
    String::from_utf8(bytes).map_err(|_| {
        Failure::Refused(format!(
            "{} is not UTF-8 text, so not a JSON document; nothing was imported",
            input.display()
        ))
    })
}

/// Writes `bytes` to `path` and makes them durable; a partial file (a crash midway) is not a
/// valid document, so import would refuse it rather than read part of it.
fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn print_report(report: &ImportReport) {
    println!("chain {}", report.chain);
    let mut conflicts = 0;
    for key in &report.keys {
        println!("key {}", hex(&key.public_key));
        for kind in ConsensusKind::ALL {
            let mark = key.of(kind);
            let line = match mark {
                MarkImport::NotOffered => "not in the document".to_owned(),
                MarkImport::Raised { from: None, to } => format!("raised from none to {}", at(&to)),
                MarkImport::Raised {
                    from: Some(from),
                    to,
                } => {
                    format!("raised from {} to {}", at(&from), at(&to))
                }
                MarkImport::Kept { held, offered } if mark.is_conflicting() => {
                    conflicts += 1;
                    format!(
                        "kept at {}; CONFLICT: the document has digest {} at the same epoch and round, so this key has signed two different {kind}s there",
                        at(&held),
                        hex(&offered.digest)
                    )
                }
                MarkImport::Kept { held, offered } if held == offered => {
                    format!("kept at {}: the store already has it", at(&held))
                }
                MarkImport::Kept { held, offered } => format!(
                    "kept at {}: the document's {} is lower",
                    at(&held),
                    position(&offered)
                ),
            };
            println!("  {:<8} {line}", kind.to_string());
        }
    }
    println!(
        "{} watermark(s) raised, {} kept (the store's was at or above the document's), for {} key(s)",
        report.raised(),
        report.kept(),
        report.keys.len()
    );
    if conflicts > 0 {
        eprintln!(
            "warning: {conflicts} watermark(s) conflict with the document: the same key signed different digests at one epoch and round in two places; the store kept its own"
        );
    }
}

fn at(mark: &Watermark) -> String {
    format!("{} (digest {})", position(mark), hex(&mark.digest))
}

fn position(mark: &Watermark) -> String {
    format!("epoch {} round {}", mark.epoch, mark.round)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
