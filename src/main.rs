//! Runs in the host: the `keyward` command, a thin face over the library.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cli;

/// keyward: an isolated key service for validator nodes.
#[derive(Parser)]
#[command(version, about)]
struct Arguments {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Spawn the signer, generate the validator's four keys, sign, verify, agree on a secret,
    /// show what the kernel says about the sandbox, then show keys surviving a restart in a
    /// sealed store made for the demo (and removed after).
    Demo,
    /// Create a sealed key store in DIR, unlocked by the secret in --unlock-file (required).
    Init(cli::store::InitArgs),
    /// List the keys of the sealed store in DIR as its file shows them (without unlocking it:
    /// not authenticated; no secret is shown).
    Status(cli::store::StatusArgs),
    /// Print the signer's seccomp allowlist with the reason for each rule.
    Policy,
    /// Tell whether this machine can run the sandbox, and what to change if not.
    Check,
    /// Measure what the process boundary costs: keyward against in-process signing and
    /// ssh-agent, side by side (latency, throughput, idle CPU, memory), against the targets.
    Bench(cli::bench::BenchArgs),
    /// Export or import a store's consensus watermarks (double-sign protection) as a JSON
    /// interchange document, while no validator uses the store.
    Watermark(cli::watermark::WatermarkArgs),
    /// Print the store's provisioning recipient (an age X25519 recipient, signed by the
    /// store's backup-signing key) to encrypt existing keys to for `import`.
    ProvisionKey(cli::lifecycle::ProvisionArgs),
    /// Import a secret key encrypted (with the stock `age` tool) to the store's provisioning
    /// recipient; refused unless its public key is the one given.
    Import(cli::lifecycle::ImportArgs),
    /// Write every key of the store, with its watermarks, encrypted inside the signer to an
    /// age recipient and signed by the store's backup-signing key.
    Backup(cli::lifecycle::BackupArgs),
    /// Restore a backup, re-encrypted to the store's provisioning recipient, into the store:
    /// every key not held is added with its watermarks; refused unless --signed-by signed it.
    Restore(cli::lifecycle::RestoreArgs),
    /// Give a key of the store a new version (a fresh secret, same key id); the previous one
    /// stays usable for --grace seconds, then is erased.
    Rotate(cli::lifecycle::RotateArgs),
    /// `keyward bench`'s pipe-floor child (a plain signer over pipes, no sandbox).
    #[command(name = "bench-pipe-floor-child", hide = true)]
    BenchPipeFloorChild(cli::bench::PipeFloorChildArgs),
}

fn main() -> Result<ExitCode> {
    // First: if this process was exec'd as a signer, become one (never returns).
    keyward::run_signer_if_requested();
    match Arguments::parse().command {
        Command::Demo => cli::demo::run().map(|()| ExitCode::SUCCESS),
        Command::Init(arguments) => Ok(cli::store::init(&arguments)),
        Command::Status(arguments) => Ok(cli::store::status(&arguments)),
        Command::Policy => cli::policy::run().map(|()| ExitCode::SUCCESS),
        Command::Check => cli::check::run().map(|()| ExitCode::SUCCESS),
        Command::Bench(arguments) => cli::bench::run(&arguments).map(|()| ExitCode::SUCCESS),
        Command::Watermark(arguments) => {
            cli::watermark::run(&arguments).map(|()| ExitCode::SUCCESS)
        }
        Command::ProvisionKey(arguments) => cli::lifecycle::provision(&arguments),
        Command::Import(arguments) => cli::lifecycle::import(&arguments),
        Command::Backup(arguments) => cli::lifecycle::backup(&arguments),
        Command::Restore(arguments) => cli::lifecycle::restore(&arguments),
        Command::Rotate(arguments) => cli::lifecycle::rotate(&arguments),
        Command::BenchPipeFloorChild(arguments) => {
            cli::bench::run_pipe_floor_child(&arguments).map(|()| ExitCode::SUCCESS)
        }
    }
}
