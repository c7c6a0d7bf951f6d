//! Runs in the host: `keyward bench`, what keeping the keys in a sandboxed signer costs,
//! measured side by side; this room holds the options, the plan and the order of the run.
//!
//! Every scenario runs in this one process. Latency scenarios take turns in chunks (500
//! operations by default) within each round, and throughput scenarios take turns in sub-batches,
//! so noise from anything else on the machine hits all of them alike. Ratios are computed per
//! round (a scenario against its baseline in the same round), then the median of the rounds is
//! reported; absolute times are shown for orientation only.
//!
//! The ssh-agent comparison starts a private `ssh-agent` in a private temporary directory, adds
//! a freshly generated Ed25519 key and speaks the agent protocol over its socket; the agent is
//! killed and the directory removed when the benchmark ends, also on a panic.
//!
//! Rooms: `scenarios` (what is measured), `measure` (timing, statistics, CPU clocks), `procfs`
//! (what /proc says), `ssh_agent`, `pipe_floor` (the cheapest pipe signer this machine allows,
//! the floor each latency target is shown beside), `progress` (the bar on stderr) and `report`
//! (the tables and the target lines on stdout).

mod measure;
mod pipe_floor;
mod procfs;
mod progress;
mod report;
mod scenarios;
mod ssh_agent;
mod store;

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use keyward::{Config, Latency};

use measure::{LatencyResult, LatencyRow, ThroughputResult, ThroughputRow};
use pipe_floor::PipeFloor;
pub(crate) use pipe_floor::{PipeFloorChildArgs, run_child as run_pipe_floor_child};
use progress::Progress;
use report::Report;
use scenarios::{Local, Signers};
use ssh_agent::SshAgent;

/// The options of `keyward bench`.
#[derive(Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    /// Rounds: every scenario runs in every round; ratios are taken per round, then the median.
    #[arg(long)]
    rounds: Option<usize>,
    /// Operations per latency scenario and round (the idle-gap scenario does 1/20 of this, the
    /// ssh-agent 1/100), and signatures per throughput scenario and round.
    #[arg(long)]
    ops: Option<usize>,
    /// Operations per chunk: latency scenarios take turns every this many operations.
    #[arg(long, default_value_t = 500)]
    chunk: usize,
    /// A short first look: 3 rounds of 4,000 operations (noisier than the default 5 x 20,000).
    #[arg(long)]
    quick: bool,
    /// The idle gap between requests in the idle-gap scenario, in microseconds.
    #[arg(long, default_value_t = 1000)]
    gap_us: u64,
    /// Leave out the ssh-agent comparison.
    #[arg(long)]
    no_ssh_agent: bool,
    /// Signer workers of the service the latency scenarios use [default: keyward's default].
    #[arg(long)]
    workers: Option<usize>,
    /// How long callers spin before sleeping, in microseconds [default: Latency::BALANCED].
    #[arg(long)]
    caller_spin_us: Option<u64>,
    /// How long signer workers spin after an answer, in microseconds [default: Latency::BALANCED].
    #[arg(long)]
    signer_spin_us: Option<u64>,
    /// Also measure these spin settings, side by side (repeatable): extra back-to-back,
    /// idle-gap and throughput rows, each with its own signer of the default worker count.
    #[arg(long = "also-spin", value_name = "CALLER_US:SIGNER_US", value_parser = parse_spin)]
    also_spin: Vec<Latency>,
    /// Run everything on these CPUs only (comma-separated numbers, e.g. `0`): this process and
    /// every signer and child it starts. To see what the placement of caller and signer on
    /// different CPUs costs on this machine; the in-process rows then share the same CPUs.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    cpus: Vec<usize>,
}

/// `60:100` as a caller spin of 60 µs and a signer spin of 100 µs.
fn parse_spin(text: &str) -> Result<Latency, String> {
    let (caller, signer) = text
        .split_once(':')
        .ok_or_else(|| format!("expected CALLER_US:SIGNER_US, got {text:?}"))?;
    let micros = |part: &str| {
        part.trim()
            .parse::<u64>()
            .map(Duration::from_micros)
            .map_err(|error| format!("{part:?}: {error}"))
    };
    Ok(Latency {
        caller_spin: micros(caller)?,
        signer_spin: micros(signer)?,
    })
}

/// How much work each scenario does.
struct Plan {
    rounds: usize,
    /// Chunks per round: the number of turns each latency scenario gets.
    chunks: usize,
    ops: usize,
    gap_ops: usize,
    agent_ops: usize,
    throughput_ops: usize,
    /// Sub-batches per round: the number of turns each throughput scenario gets.
    throughput_turns: usize,
    gap: Duration,
    idle_window: Duration,
}

impl Plan {
    fn new(args: &BenchArgs) -> Result<Self> {
        let (rounds, ops) = if args.quick { (3, 4_000) } else { (5, 20_000) };
        let rounds = args.rounds.unwrap_or(rounds);
        let ops = args.ops.unwrap_or(ops);
        if rounds == 0 || ops == 0 || args.chunk == 0 {
            bail!("--rounds, --ops and --chunk must be above zero");
        }
        let chunks = ops.div_ceil(args.chunk);
        Ok(Self {
            rounds,
            chunks,
            ops,
            gap_ops: (ops / 20).max(chunks),
            agent_ops: (ops / 100).max(chunks),
            throughput_ops: ops,
            throughput_turns: 4,
            gap: Duration::from_micros(args.gap_us),
            idle_window: Duration::from_secs(1),
        })
    }

    /// Operations per turn for a scenario that does `total` a round.
    fn per_chunk(&self, total: usize) -> usize {
        total.div_ceil(self.chunks)
    }

    /// Signatures per throughput turn.
    fn throughput_batch(&self) -> usize {
        self.throughput_ops.div_ceil(self.throughput_turns)
    }
}

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    let plan = Plan::new(args)?;
    if !args.cpus.is_empty() {
        // Before any signer or thread exists: each inherits this process's CPUs.
        let mut cpus = nix::sched::CpuSet::new();
        for &cpu in &args.cpus {
            cpus.set(cpu)
                .map_err(|error| anyhow::anyhow!("--cpus {cpu}: {error}"))?;
        }
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus)
            .map_err(|error| anyhow::anyhow!("--cpus {:?}: {error}", args.cpus))?;
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let latency = Latency {
        caller_spin: args
            .caller_spin_us
            .map_or(Latency::BALANCED.caller_spin, Duration::from_micros),
        signer_spin: args
            .signer_spin_us
            .map_or(Latency::BALANCED.signer_spin, Duration::from_micros),
    };
    let main_workers = args.workers.unwrap_or(Config::default().workers());
    let signers = Signers::spawn(main_workers, cores, latency, &args.also_spin)?;
    let main = signers.with_workers(main_workers)?;

    let agent = if args.no_ssh_agent {
        Err("left out (--no-ssh-agent)".to_owned())
    } else {
        SshAgent::start().map_err(|error| format!("{error:#}"))
    };
    let mut agent = match agent {
        Ok(agent) => Some(agent),
        Err(reason) => {
            eprintln!("keyward bench: ssh-agent comparison skipped: {reason}");
            None
        }
    };

    let local = Local::new()?;
    let floor = PipeFloor::start(latency)?;
    let store_bench = store::StoreBench::new(main_workers, latency)?;
    let load_before = procfs::load_average();
    println!(
        "keyward bench: sealed-store scenarios in {} (signer pid {})",
        store_bench.directory().display(),
        store_bench.pid()
    );
    println!(
        "keyward bench: {} rounds; latency scenarios take turns every {} operations; \
         {} cores; signer pid {} with {} worker(s), caller_spin {:?}, signer_spin {:?}",
        plan.rounds,
        args.chunk,
        cores,
        main.pid(),
        main.workers,
        latency.caller_spin,
        latency.signer_spin
    );

    let (mut latency_rows, row_index) = scenarios::latency_scenarios(
        &plan,
        main,
        &signers,
        &local,
        &floor,
        agent.as_mut(),
        &store_bench,
    )?;
    let (mut throughput_rows, worker_rows) =
        scenarios::throughput_scenarios(&signers, &local, cores)?;
    // Two steps after the rounds: the idle second and the memory readings.
    let mut progress = Progress::new(plan.rounds * (plan.chunks + plan.throughput_turns) + 2);
    measure_rounds(
        &plan,
        &mut latency_rows,
        &mut throughput_rows,
        &mut progress,
    )?;

    progress.show("idle child CPU (one idle second)");
    let idle = scenarios::idle_cpu(main, plan.idle_window)?;
    progress.advance();
    progress.show("child memory");
    let (fork_memory, exec_memory) = scenarios::child_memory(main, &signers)?;
    progress.advance();
    progress.finish();

    let latency: Vec<LatencyResult> = latency_rows.into_iter().map(LatencyRow::finish).collect();
    // The agent is done with: stop it before printing.
    drop(agent);
    let throughput: Vec<ThroughputResult> = throughput_rows
        .into_iter()
        .map(ThroughputRow::finish)
        .collect();

    Report {
        plan: &plan,
        cores,
        main_workers: main.workers,
        latency: &latency,
        rows: row_index,
        throughput: &throughput,
        worker_rows: &worker_rows,
        idle: &idle,
        load_before,
        load_after: procfs::load_average(),
        fork_memory: &fork_memory,
        exec_memory: exec_memory.as_ref(),
    }
    .print();
    Ok(())
}

/// A warm-up turn of every scenario (not recorded), then the rounds: in each, the latency
/// scenarios take turns chunk by chunk, then the throughput scenarios batch by batch.
fn measure_rounds(
    plan: &Plan,
    latency_rows: &mut [LatencyRow<'_>],
    throughput_rows: &mut [ThroughputRow<'_>],
    progress: &mut Progress,
) -> Result<()> {
    progress.show("warming up");
    for row in latency_rows.iter_mut() {
        row.run_turn(false)?;
    }
    for row in throughput_rows.iter() {
        row.warm_up(plan.throughput_ops / 8)?;
    }

    for round in 1..=plan.rounds {
        for chunk in 1..=plan.chunks {
            progress.show(&format!(
                "round {round}/{}: latency, turn {chunk}/{}",
                plan.rounds, plan.chunks
            ));
            for row in latency_rows.iter_mut() {
                row.run_turn(true)?;
            }
            progress.advance();
        }
        for turn in 1..=plan.throughput_turns {
            progress.show(&format!(
                "round {round}/{}: throughput, turn {turn}/{}",
                plan.rounds, plan.throughput_turns
            ));
            for row in throughput_rows.iter_mut() {
                row.run_turn(plan.throughput_batch())?;
            }
            progress.advance();
        }
        for row in latency_rows.iter_mut() {
            row.close_round();
        }
        for row in throughput_rows.iter_mut() {
            row.close_round();
        }
    }
    Ok(())
}
