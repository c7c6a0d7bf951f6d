//! `keyward bench`: what keeping the keys in a sandboxed signer costs, measured side by side.
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

use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use ed25519_dalek::{Signer as _, SigningKey};
use keyward::{Config, KeyId, KeyService, KeySpec, Latency, Purpose, SecretService, SpawnMode};

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
}

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    let plan = Plan::new(args)?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let default_config = Config::default();
    let latency = Latency {
        caller_spin: args
            .caller_spin_us
            .map_or(Latency::BALANCED.caller_spin, Duration::from_micros),
        signer_spin: args
            .signer_spin_us
            .map_or(Latency::BALANCED.signer_spin, Duration::from_micros),
    };
    let main_workers = args.workers.unwrap_or(default_config.workers());

    // Signers first, while this process is small: a forked signer starts as a copy of it.
    let mut worker_counts = vec![main_workers, 1, cores];
    worker_counts.sort_unstable();
    worker_counts.dedup();
    let mut services = Vec::new();
    for &workers in &worker_counts {
        services.push(Service::spawn(
            Config::default()
                .with_workers(workers)
                .with_latency(latency),
        )?);
    }
    let exec_service = match std::env::current_exe() {
        Ok(program) => Some(Service::spawn(
            Config::default()
                .with_spawn_mode(SpawnMode::ForkExec { program })
                .with_latency(latency),
        )?),
        Err(_) => None,
    };
    let mut alternatives = Vec::new();
    for &spin in &args.also_spin {
        alternatives.push((
            spin,
            Service::spawn(
                Config::default()
                    .with_workers(main_workers)
                    .with_latency(spin),
            )?,
        ));
    }
    let service_with = |workers: usize| {
        services
            .iter()
            .find(|service| service.workers == workers)
            .ok_or_else(|| anyhow!("no service with {workers} workers"))
    };
    let main = service_with(main_workers)?;
    let one = service_with(1)?;
    let all_cores = service_with(cores)?;

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
    let load_before = load_average();
    println!(
        "keyward bench: {} rounds; latency scenarios take turns every {} operations; \
         {} cores; signer pid {} with {} worker(s), caller_spin {:?}, signer_spin {:?}",
        plan.rounds,
        args.chunk,
        cores,
        main.service.pid(),
        main.workers,
        latency.caller_spin,
        latency.signer_spin
    );

    // Latency scenarios. Row 0 is the baseline of every signature row.
    let digest = [0x5au8; 32];
    let gap = plan.gap;
    let peer = x25519_dalek::PublicKey::from(&local.peer);
    let mut rows: Vec<LatencyRow<'_>> = Vec::new();
    rows.push(LatencyRow::new(
        "in-process Ed25519 sign (32-byte digest)",
        None,
        plan.per_chunk(plan.ops),
        Box::new(|| {
            std::hint::black_box(local.signing.sign(std::hint::black_box(&digest)));
            Ok(())
        }),
    ));
    let sign_row = rows.len();
    rows.push(LatencyRow::new(
        format!(
            "keyward sign, back to back ({} worker{})",
            main.workers,
            plural(main.workers)
        ),
        Some(0),
        plan.per_chunk(plan.ops),
        Box::new(|| {
            std::hint::black_box(main.service.sign(main.ed25519, &digest)?);
            Ok(())
        }),
    ));
    if main.workers != 1 {
        rows.push(LatencyRow::new(
            "keyward sign, back to back (1 worker)",
            Some(0),
            plan.per_chunk(plan.ops),
            Box::new(|| {
                std::hint::black_box(one.service.sign(one.ed25519, &digest)?);
                Ok(())
            }),
        ));
    }
    let gap_row = rows.len();
    let mut gap_scenario = LatencyRow::new(
        format!(
            "keyward sign, {} idle gaps (gap not counted)",
            format_gap(gap)
        ),
        Some(0),
        plan.per_chunk(plan.gap_ops),
        Box::new(|| {
            std::hint::black_box(main.service.sign(main.ed25519, &digest)?);
            Ok(())
        }),
    );
    gap_scenario.gap = Some(gap);
    gap_scenario.watch_cpu = Some(main.service.pid());
    rows.push(gap_scenario);
    let x25519_baseline = rows.len();
    rows.push(LatencyRow::new(
        "in-process X25519 Diffie-Hellman",
        None,
        plan.per_chunk(plan.ops),
        Box::new(|| {
            std::hint::black_box(local.x25519.diffie_hellman(std::hint::black_box(&peer)));
            Ok(())
        }),
    ));
    rows.push(LatencyRow::new(
        "keyward X25519 Diffie-Hellman",
        Some(x25519_baseline),
        plan.per_chunk(plan.ops),
        Box::new(|| {
            std::hint::black_box(main.service.diffie_hellman(main.x25519, &peer)?);
            Ok(())
        }),
    ));
    let agent_row = match agent.as_mut() {
        Some(agent) => {
            rows.push(LatencyRow::new(
                "OpenSSH ssh-agent Ed25519 SIGN_REQUEST",
                Some(0),
                plan.per_chunk(plan.agent_ops),
                Box::new(move || {
                    std::hint::black_box(agent.sign(&digest)?);
                    Ok(())
                }),
            ));
            Some(rows.len() - 1)
        }
        None => None,
    };

    for (spin, service) in &alternatives {
        let label = spin_label(spin);
        rows.push(LatencyRow::new(
            format!("  same, back to back, spin {label}"),
            Some(0),
            plan.per_chunk(plan.ops),
            Box::new(move || {
                std::hint::black_box(service.service.sign(service.ed25519, &digest)?);
                Ok(())
            }),
        ));
        let mut gap_scenario = LatencyRow::new(
            format!("  same, {} idle gaps, spin {label}", format_gap(gap)),
            Some(0),
            plan.per_chunk(plan.gap_ops),
            Box::new(move || {
                std::hint::black_box(service.service.sign(service.ed25519, &digest)?);
                Ok(())
            }),
        );
        gap_scenario.gap = Some(gap);
        gap_scenario.watch_cpu = Some(service.service.pid());
        rows.push(gap_scenario);
    }

    // Throughput scenarios. Index 0 is one in-process thread.
    let mut throughput: Vec<ThroughputRow<'_>> = Vec::new();
    for callers in [1, 2, 8] {
        throughput.push(ThroughputRow::new(
            format!("in-process, {callers} thread{}", plural(callers)),
            callers,
            Target::InProcess(&local.signing),
        ));
    }
    let mut worker_rows = vec![1];
    if cores != 1 {
        worker_rows.push(cores);
    }
    for &workers in &worker_rows {
        let service = if workers == 1 { one } else { all_cores };
        for callers in [1, 2, 8] {
            throughput.push(ThroughputRow::new(
                format!(
                    "keyward, {workers} worker{}, {callers} caller{}",
                    plural(workers),
                    plural(callers)
                ),
                callers,
                Target::Keyward(service),
            ));
        }
    }

    for (spin, service) in &alternatives {
        for callers in [2, 8] {
            let mut row = ThroughputRow::new(
                format!(
                    "  same, {} worker{}, {callers} callers, spin {}",
                    service.workers,
                    plural(service.workers),
                    spin_label(spin)
                ),
                callers,
                Target::Keyward(service),
            );
            row.counts_for_targets = false;
            throughput.push(row);
        }
    }

    for row in &mut rows {
        row.samples.reserve(row.per_chunk * plan.chunks);
    }
    let latency_turns = plan.rounds * plan.chunks;
    let throughput_turns = plan.rounds * plan.throughput_turns;
    let mut progress = Progress::new(latency_turns + throughput_turns + 2);

    // Warm-up: one turn of everything, not recorded.
    progress.show("warming up");
    for row in &mut rows {
        row.run_turn(false)?;
    }
    for row in &mut throughput {
        run_batch(
            &row.target,
            row.callers,
            (plan.throughput_ops / 8).max(row.callers),
        )?;
    }

    for round in 0..plan.rounds {
        for chunk in 0..plan.chunks {
            progress.show(&format!(
                "round {}/{}: latency, turn {}/{}",
                round + 1,
                plan.rounds,
                chunk + 1,
                plan.chunks
            ));
            for row in &mut rows {
                row.run_turn(true)?;
            }
            progress.advance(1);
        }
        for turn in 0..plan.throughput_turns {
            progress.show(&format!(
                "round {}/{}: throughput, turn {}/{}",
                round + 1,
                plan.rounds,
                turn + 1,
                plan.throughput_turns
            ));
            let batch = plan.throughput_ops.div_ceil(plan.throughput_turns);
            for row in &mut throughput {
                let signer_before = row.target.signer_cpu_ns();
                let batch_run = run_batch(&row.target, row.callers, batch)?;
                let signer_after = row.target.signer_cpu_ns();
                row.elapsed += batch_run.elapsed;
                row.done += batch;
                row.caller_cpu_ns += batch_run.caller_cpu_ns;
                row.signer_cpu_ns += signer_after
                    .zip(signer_before)
                    .map_or(0, |(after, before)| after.saturating_sub(before));
            }
            progress.advance(1);
        }
        for row in &mut rows {
            row.close_round();
        }
        for row in &mut throughput {
            row.close_round();
        }
    }

    // Idle: the signer has just answered; from now on nobody calls it.
    progress.show("idle child CPU (one idle second)");
    main.service.sign(main.ed25519, &digest)?;
    let before = ProcessCpu::read(main.service.pid())?;
    let idle_started = Instant::now();
    std::thread::sleep(plan.idle_window);
    let after = ProcessCpu::read(main.service.pid())?;
    let idle = IdleCpu::between(&before, &after, idle_started.elapsed());
    progress.advance(1);

    progress.show("child memory");
    let fork_memory = Memory::read(main.service.pid())?;
    let exec_memory = match &exec_service {
        Some(service) => {
            for _ in 0..100 {
                service.service.sign(service.ed25519, &digest)?;
            }
            Some(Memory::read(service.service.pid())?)
        }
        None => None,
    };
    progress.advance(1);
    progress.finish();

    let latency: Vec<LatencyResult> = rows.into_iter().map(LatencyRow::finish).collect();
    drop(agent);
    let throughput: Vec<ThroughputResult> =
        throughput.into_iter().map(ThroughputRow::finish).collect();

    print_report(&Report {
        plan: &plan,
        cores,
        main_workers: main.workers,
        latency: &latency,
        rows: RowIndex {
            sign: sign_row,
            gap: gap_row,
            agent: agent_row,
        },
        throughput: &throughput,
        worker_rows: &worker_rows,
        idle: &idle,
        load_before,
        load_after: load_average(),
        fork_memory: &fork_memory,
        exec_memory: exec_memory.as_ref(),
    });
    Ok(())
}

/// One signer service with an Ed25519 and an X25519 key.
struct Service {
    service: SecretService,
    workers: usize,
    ed25519: KeyId,
    x25519: KeyId,
}

impl Service {
    fn spawn(config: Config) -> Result<Self> {
        let workers = config.workers();
        let service = SecretService::spawn(config).context("spawning a signer")?;
        let ed25519 = service.generate_key(KeySpec::new(Purpose::Consensus))?;
        let x25519 = service.generate_key(KeySpec::new(Purpose::NetworkHandshake))?;
        // What is timed must be real work: check one signature.
        let digest = [1u8; 32];
        let signature = service.sign(ed25519, &digest)?;
        service
            .public_key(ed25519)?
            .as_ed25519()
            .context("a consensus key has an Ed25519 public key")?
            .verify_strict(&digest, &signature)
            .context("a signature from the signer did not verify")?;
        Ok(Self {
            service,
            workers,
            ed25519,
            x25519,
        })
    }
}

/// The in-process baselines' keys.
struct Local {
    signing: SigningKey,
    x25519: x25519_dalek::StaticSecret,
    peer: x25519_dalek::StaticSecret,
}

impl Local {
    fn new() -> Result<Self> {
        let mut seeds = [[0u8; 32]; 3];
        for seed in &mut seeds {
            getrandom::fill(seed).map_err(|error| anyhow!("no entropy: {error}"))?;
        }
        let [signing, x25519, peer] = seeds;
        Ok(Self {
            signing: SigningKey::from_bytes(&signing),
            x25519: x25519_dalek::StaticSecret::from(x25519),
            peer: x25519_dalek::StaticSecret::from(peer),
        })
    }
}

type Operation<'a> = Box<dyn FnMut() -> Result<()> + 'a>;

/// A single-caller latency scenario while it is being measured.
struct LatencyRow<'a> {
    name: String,
    /// The row this one is compared with; `None` for a baseline.
    baseline: Option<usize>,
    per_chunk: usize,
    /// Sleep this long before each operation (not counted).
    gap: Option<Duration>,
    /// Measure this process's CPU time across each turn.
    watch_cpu: Option<i32>,
    operation: Operation<'a>,
    samples: Vec<u64>,
    medians: Vec<f64>,
    p99s: Vec<f64>,
    cpu_ns: u64,
    wall_ns: u64,
    /// CPU time of the calling thread over the watched turns.
    caller_cpu_ns: u64,
}

impl<'a> LatencyRow<'a> {
    fn new(
        name: impl Into<String>,
        baseline: Option<usize>,
        per_chunk: usize,
        operation: Operation<'a>,
    ) -> Self {
        Self {
            name: name.into(),
            baseline,
            per_chunk,
            gap: None,
            watch_cpu: None,
            operation,
            samples: Vec::new(),
            medians: Vec::new(),
            p99s: Vec::new(),
            cpu_ns: 0,
            wall_ns: 0,
            caller_cpu_ns: 0,
        }
    }

    /// One turn: `per_chunk` operations, each timed on its own.
    fn run_turn(&mut self, record: bool) -> Result<()> {
        let watched = self
            .watch_cpu
            .filter(|_| record)
            .and_then(|pid| Some((pid, ProcessCpu::read(pid).ok()?.sched_ns?)));
        let caller_before = this_thread_cpu_ns();
        let started = Instant::now();
        for _ in 0..self.per_chunk {
            if let Some(gap) = self.gap {
                std::thread::sleep(gap);
            }
            let start = Instant::now();
            (self.operation)()?;
            let elapsed = start.elapsed();
            if record {
                self.samples.push(nanos(elapsed));
            }
        }
        if let Some((pid, before)) = watched
            && let Some(after) = ProcessCpu::read(pid).ok().and_then(|cpu| cpu.sched_ns)
        {
            self.cpu_ns += after.saturating_sub(before);
            self.wall_ns += nanos(started.elapsed());
            self.caller_cpu_ns += this_thread_cpu_ns().saturating_sub(caller_before);
        }
        Ok(())
    }

    fn close_round(&mut self) {
        self.samples.sort_unstable();
        self.medians.push(percentile(&self.samples, 50));
        self.p99s.push(percentile(&self.samples, 99));
        self.samples.clear();
    }

    fn finish(self) -> LatencyResult {
        LatencyResult {
            name: self.name,
            baseline: self.baseline,
            medians: self.medians,
            p99s: self.p99s,
            child_cpu: (self.wall_ns > 0).then(|| self.cpu_ns as f64 / self.wall_ns as f64),
            caller_cpu: (self.wall_ns > 0).then(|| self.caller_cpu_ns as f64 / self.wall_ns as f64),
        }
    }
}

/// A latency scenario's numbers, per round (nanoseconds).
struct LatencyResult {
    name: String,
    baseline: Option<usize>,
    medians: Vec<f64>,
    p99s: Vec<f64>,
    /// The signer's CPU time over wall time across this scenario's turns, if watched.
    child_cpu: Option<f64>,
    /// The calling thread's share of a core over the same turns.
    caller_cpu: Option<f64>,
}

/// What a throughput scenario's callers call.
enum Target<'a> {
    InProcess(&'a SigningKey),
    Keyward(&'a Service),
}

impl Target<'_> {
    fn run(&self, operations: usize) -> Result<()> {
        let digest = [0xa5u8; 32];
        match self {
            Target::InProcess(key) => {
                for _ in 0..operations {
                    std::hint::black_box(key.sign(std::hint::black_box(&digest)));
                }
            }
            Target::Keyward(service) => {
                for _ in 0..operations {
                    std::hint::black_box(service.service.sign(service.ed25519, &digest)?);
                }
            }
        }
        Ok(())
    }

    fn workers(&self) -> Option<usize> {
        match self {
            Target::InProcess(_) => None,
            Target::Keyward(service) => Some(service.workers),
        }
    }

    /// The signer's CPU time so far (all its threads), if there is a signer.
    fn signer_cpu_ns(&self) -> Option<u64> {
        match self {
            Target::InProcess(_) => None,
            Target::Keyward(service) => {
                let pid = nix::unistd::Pid::from_raw(service.service.pid());
                nix::time::clock_getcpuclockid(pid)
                    .and_then(nix::time::clock_gettime)
                    .ok()
                    .map(timespec_ns)
            }
        }
    }
}

/// The CPU time the calling thread has run (nanoseconds; 0 if unreadable). The CPU clocks are
/// exact to the call; /proc's run times lag by up to a scheduler tick for a running thread.
fn this_thread_cpu_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(0, timespec_ns)
}

fn timespec_ns(time: nix::sys::time::TimeSpec) -> u64 {
    let nanos = i128::from(time.tv_sec()) * 1_000_000_000 + i128::from(time.tv_nsec());
    u64::try_from(nanos).unwrap_or(0)
}

/// One throughput batch: its wall time and the CPU its caller threads used.
struct BatchRun {
    elapsed: Duration,
    caller_cpu_ns: u64,
}

/// `operations` signatures shared among `callers` threads, started together; the wall time
/// from the first caller's start to the last caller's end (each caller takes its own times, so
/// a main thread that is slow to be scheduled does not shorten the measurement).
fn run_batch(target: &Target<'_>, callers: usize, operations: usize) -> Result<BatchRun> {
    let barrier = Barrier::new(callers);
    let spans = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..callers)
            .map(|caller| {
                let share = operations / callers + usize::from(caller < operations % callers);
                let barrier = &barrier;
                scope.spawn(move || -> Result<(Instant, Instant, u64)> {
                    barrier.wait();
                    let cpu_before = this_thread_cpu_ns();
                    let start = Instant::now();
                    target.run(share)?;
                    let end = Instant::now();
                    Ok((start, end, this_thread_cpu_ns().saturating_sub(cpu_before)))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .map_err(|_| anyhow!("a benchmark thread panicked"))?
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let first = spans.iter().map(|(start, _, _)| *start).min();
    let last = spans.iter().map(|(_, end, _)| *end).max();
    let caller_cpu_ns = spans.iter().map(|(_, _, cpu)| cpu).sum();
    match (first, last) {
        (Some(first), Some(last)) => Ok(BatchRun {
            elapsed: last.duration_since(first),
            caller_cpu_ns,
        }),
        _ => bail!("a batch without callers"),
    }
}

/// A throughput scenario while it is being measured.
struct ThroughputRow<'a> {
    name: String,
    callers: usize,
    target: Target<'a>,
    elapsed: Duration,
    done: usize,
    rates: Vec<f64>,
    counts_for_targets: bool,
    /// CPU time of the caller threads and of the signer over the recorded batches.
    caller_cpu_ns: u64,
    signer_cpu_ns: u64,
    cpu_done: usize,
}

impl<'a> ThroughputRow<'a> {
    fn new(name: String, callers: usize, target: Target<'a>) -> Self {
        Self {
            name,
            callers,
            target,
            elapsed: Duration::ZERO,
            done: 0,
            rates: Vec::new(),
            counts_for_targets: true,
            caller_cpu_ns: 0,
            signer_cpu_ns: 0,
            cpu_done: 0,
        }
    }

    fn close_round(&mut self) {
        self.rates
            .push(self.done as f64 / self.elapsed.as_secs_f64().max(1e-9));
        self.cpu_done += self.done;
        self.elapsed = Duration::ZERO;
        self.done = 0;
    }

    fn finish(self) -> ThroughputResult {
        ThroughputResult {
            name: self.name,
            callers: self.callers,
            workers: self.target.workers(),
            rates: self.rates,
            counts_for_targets: self.counts_for_targets,
            caller_cpu_us_per_signature: self.caller_cpu_ns as f64
                / 1e3
                / self.cpu_done.max(1) as f64,
            signer_cpu_us_per_signature: self.signer_cpu_ns as f64
                / 1e3
                / self.cpu_done.max(1) as f64,
        }
    }
}

/// A throughput scenario's signatures per second, per round.
struct ThroughputResult {
    name: String,
    callers: usize,
    /// Signer workers; `None` for in-process.
    workers: Option<usize>,
    rates: Vec<f64>,
    /// False for the rows of `--also-spin` settings.
    counts_for_targets: bool,
    /// CPU each signature cost the calling threads (the signing itself, for in-process rows).
    caller_cpu_us_per_signature: f64,
    /// CPU each signature cost the signer process (0 for in-process rows).
    signer_cpu_us_per_signature: f64,
}

/// `/proc/<pid>/stat` reports CPU times in USER_HZ ticks, fixed at 100 a second on Linux.
const USER_HZ: u64 = 100;

/// A process's CPU time so far.
struct ProcessCpu {
    /// utime + stime from `/proc/<pid>/stat`, in USER_HZ ticks (all threads).
    ticks: u64,
    /// The sum of the threads' run time from `/proc/<pid>/task/*/schedstat`, in nanoseconds, if
    /// readable: far finer than ticks.
    sched_ns: Option<u64>,
}

impl ProcessCpu {
    fn read(pid: i32) -> Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // The command name may hold spaces and parentheses: fields are counted after the last ')'.
        let (_, rest) = stat
            .rsplit_once(')')
            .context("an unexpected /proc/<pid>/stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
        let field = |number: usize| -> Result<u64> {
            fields
                .get(number - 3)
                .context("a short /proc/<pid>/stat")?
                .parse()
                .context("an unexpected /proc/<pid>/stat field")
        };
        let ticks = field(14)? + field(15)?;
        Ok(Self {
            ticks,
            sched_ns: Self::sched_ns(pid),
        })
    }

    fn sched_ns(pid: i32) -> Option<u64> {
        let mut total = 0u64;
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            let schedstat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            total += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(total)
    }
}

/// The signer's CPU use across an idle window.
struct IdleCpu {
    ticks: u64,
    sched_ns: Option<u64>,
    window: Duration,
}

impl IdleCpu {
    fn between(before: &ProcessCpu, after: &ProcessCpu, window: Duration) -> Self {
        Self {
            ticks: after.ticks.saturating_sub(before.ticks),
            sched_ns: after
                .sched_ns
                .zip(before.sched_ns)
                .map(|(after, before)| after.saturating_sub(before)),
            window,
        }
    }

    /// The share of one core, from the finest source available.
    fn share_of_core(&self) -> f64 {
        let used = match self.sched_ns {
            Some(ns) => ns as f64 / 1e9,
            None => self.ticks as f64 / USER_HZ as f64,
        };
        used / self.window.as_secs_f64().max(1e-9)
    }
}

/// A process's resident memory, from `/proc/<pid>/status` (KiB).
struct Memory {
    pid: i32,
    vm_rss: u64,
    rss_anon: Option<u64>,
    rss_file: Option<u64>,
}

impl Memory {
    fn read(pid: i32) -> Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let field = |name: &str| -> Option<u64> {
            status.lines().find_map(|line| {
                let value = line.strip_prefix(name)?.strip_prefix(':')?;
                value.split_whitespace().next()?.parse().ok()
            })
        };
        Ok(Self {
            pid,
            vm_rss: field("VmRSS").context("no VmRSS in /proc/<pid>/status")?,
            rss_anon: field("RssAnon"),
            rss_file: field("RssFile"),
        })
    }

    fn describe(&self) -> String {
        let mut text = format!("VmRSS {} kB", group_digits(self.vm_rss));
        if let (Some(anon), Some(file)) = (self.rss_anon, self.rss_file) {
            text += &format!(
                " (RssAnon {} kB, RssFile {} kB)",
                group_digits(anon),
                group_digits(file)
            );
        }
        text
    }
}

/// A progress bar on stderr (a line per stage when stderr is not a terminal).
struct Progress {
    total: usize,
    done: usize,
    started: Instant,
    terminal: bool,
    stage: String,
}

impl Progress {
    fn new(total: usize) -> Self {
        Self {
            total: total.max(1),
            done: 0,
            started: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            stage: String::new(),
        }
    }

    fn show(&mut self, label: &str) {
        let mut stderr = std::io::stderr().lock();
        if self.terminal {
            const WIDTH: usize = 30;
            let filled = WIDTH * self.done / self.total;
            let percent = 100 * self.done / self.total;
            let left = if self.done == 0 {
                String::new()
            } else {
                let elapsed = self.started.elapsed().as_secs_f64();
                let left = elapsed / self.done as f64 * (self.total - self.done) as f64;
                format!(" ~{left:.0} s left")
            };
            let _ = write!(
                stderr,
                "\r\x1b[2K[{}{}] {percent:>3}%{left}  {label}",
                "#".repeat(filled),
                "-".repeat(WIDTH - filled)
            );
            let _ = stderr.flush();
        } else {
            let stage = label.split(':').next().unwrap_or(label);
            if stage != self.stage {
                self.stage = stage.to_owned();
                let _ = writeln!(stderr, "keyward bench: {stage}");
            }
        }
    }

    fn advance(&mut self, steps: usize) {
        self.done = (self.done + steps).min(self.total);
    }

    fn finish(&mut self) {
        let mut stderr = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(stderr, "\r\x1b[2K");
        }
        let _ = writeln!(
            stderr,
            "keyward bench: measured in {:.1} s",
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// The ssh-agent message numbers used here (draft-miller-ssh-agent).
const SSH_AGENTC_REQUEST_IDENTITIES: u8 = 11;
const SSH_AGENT_IDENTITIES_ANSWER: u8 = 12;
const SSH_AGENTC_SIGN_REQUEST: u8 = 13;
const SSH_AGENT_SIGN_RESPONSE: u8 = 14;
/// The largest agent answer accepted.
const MAX_AGENT_MESSAGE: usize = 256 * 1024;

/// A private OpenSSH agent holding one freshly generated Ed25519 key, spoken to over its socket.
/// Dropping it kills the agent and removes its directory (also when unwinding from a panic).
pub(crate) struct SshAgent {
    stream: UnixStream,
    public: [u8; 32],
    /// A whole SIGN_REQUEST; the digest sits at `data_at`.
    request: Vec<u8>,
    data_at: usize,
    answer: Vec<u8>,
    /// Declared last, so it drops last: the connection closes before the agent is killed.
    _guard: AgentGuard,
}

/// Kills the agent and removes the private directory.
struct AgentGuard {
    dir: PathBuf,
    agent: Option<Child>,
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl SshAgent {
    /// Starts the agent and adds a new key; fails (with the reason) if OpenSSH is not installed.
    pub(crate) fn start() -> Result<Self> {
        let mut tools = Vec::new();
        for tool in ["ssh-agent", "ssh-keygen", "ssh-add"] {
            tools.push(
                find_program(tool)
                    .with_context(|| format!("{tool} is not installed (not found in PATH)"))?,
            );
        }
        let [agent_program, keygen, add] = <[PathBuf; 3]>::try_from(tools)
            .map_err(|_| anyhow!("three programs were looked up"))?;
        let mut tag = [0u8; 8];
        getrandom::fill(&mut tag).map_err(|error| anyhow!("no entropy: {error}"))?;
        let dir = std::env::temp_dir().join(format!(
            "keyward-bench-{}-{:016x}",
            std::process::id(),
            u64::from_le_bytes(tag)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let mut guard = AgentGuard {
            dir: dir.clone(),
            agent: None,
        };
        let key = dir.join("id_ed25519");
        let generated = Command::new(&keygen)
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "keyward-bench", "-f"])
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("running ssh-keygen")?;
        if !generated.success() {
            bail!("ssh-keygen failed: {generated}");
        }
        let socket = dir.join("agent.sock");
        let agent = guard.agent.insert(
            Command::new(&agent_program)
                .arg("-D")
                .arg("-a")
                .arg(&socket)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting ssh-agent")?,
        );
        let stream = connect_when_ready(&socket, agent)?;
        let added = Command::new(&add)
            .arg("-q")
            .arg(&key)
            .env("SSH_AUTH_SOCK", &socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running ssh-add")?;
        if !added.success() {
            bail!("ssh-add failed: {added}");
        }
        let mut agent = Self {
            stream,
            public: [0; 32],
            request: Vec::new(),
            data_at: 0,
            answer: Vec::new(),
            _guard: guard,
        };
        let blob = agent.ed25519_identity()?;
        let mut body = vec![SSH_AGENTC_SIGN_REQUEST];
        put_string(&mut body, &blob)?;
        put_string(&mut body, &[0u8; 32])?;
        body.extend_from_slice(&0u32.to_be_bytes()); // flags
        agent.request = framed(&body)?;
        agent.data_at = agent.request.len() - 4 - 32;
        // What is timed must be real work: check one signature.
        let digest = [3u8; 32];
        let signature = agent.sign(&digest)?;
        ed25519_dalek::VerifyingKey::from_bytes(&agent.public)
            .context("the agent's public key")?
            .verify_strict(&digest, &ed25519_dalek::Signature::from_bytes(&signature))
            .context("a signature from ssh-agent did not verify")?;
        Ok(agent)
    }

    /// Asks for the agent's identities; keeps the first Ed25519 key's public key and returns
    /// its blob.
    fn ed25519_identity(&mut self) -> Result<Vec<u8>> {
        let request = framed(&[SSH_AGENTC_REQUEST_IDENTITIES])?;
        self.transact(&request)?;
        let mut answer = Cursor(&self.answer);
        if answer.byte()? != SSH_AGENT_IDENTITIES_ANSWER {
            bail!("ssh-agent did not list its identities");
        }
        for _ in 0..answer.u32()? {
            let blob = answer.string()?;
            let _comment = answer.string()?;
            let mut key = Cursor(blob);
            if key.string()? == b"ssh-ed25519" {
                self.public = key
                    .string()?
                    .try_into()
                    .context("an Ed25519 public key that is not 32 bytes")?;
                return Ok(blob.to_vec());
            }
        }
        bail!("ssh-agent holds no Ed25519 key")
    }

    /// Signs a 32-byte digest; returns the raw 64-byte Ed25519 signature.
    pub(crate) fn sign(&mut self, digest: &[u8; 32]) -> Result<[u8; 64]> {
        self.request[self.data_at..self.data_at + 32].copy_from_slice(digest);
        let request = std::mem::take(&mut self.request);
        let sent = self.transact(&request);
        self.request = request;
        sent?;
        let mut answer = Cursor(&self.answer);
        if answer.byte()? != SSH_AGENT_SIGN_RESPONSE {
            bail!("ssh-agent refused to sign");
        }
        let mut signature = Cursor(answer.string()?);
        if signature.string()? != b"ssh-ed25519" {
            bail!("ssh-agent answered with a signature that is not Ed25519");
        }
        signature
            .string()?
            .try_into()
            .context("an Ed25519 signature that is not 64 bytes")
    }

    /// Sends one framed message and reads the answer's body into `self.answer`.
    fn transact(&mut self, request: &[u8]) -> Result<()> {
        self.stream
            .write_all(request)
            .context("writing to ssh-agent")?;
        let mut length = [0u8; 4];
        self.stream
            .read_exact(&mut length)
            .context("reading from ssh-agent")?;
        let length = usize::try_from(u32::from_be_bytes(length))?;
        if length == 0 || length > MAX_AGENT_MESSAGE {
            bail!("ssh-agent sent a message of {length} bytes");
        }
        self.answer.resize(length, 0);
        self.stream
            .read_exact(&mut self.answer)
            .context("reading from ssh-agent")
    }
}

/// Connects to the agent's socket once it is listening (within five seconds).
fn connect_when_ready(socket: &Path, agent: &mut Child) -> Result<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match UnixStream::connect(socket) {
            Ok(stream) => return Ok(stream),
            Err(error) => {
                if let Some(status) = agent.try_wait()? {
                    bail!("ssh-agent exited at start: {status}");
                }
                if Instant::now() >= deadline {
                    return Err(error).context("ssh-agent's socket did not appear");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// An agent-protocol message: a big-endian u32 length, then the body.
fn framed(body: &[u8]) -> Result<Vec<u8>> {
    let mut message = u32::try_from(body.len())?.to_be_bytes().to_vec();
    message.extend_from_slice(body);
    Ok(message)
}

/// An SSH `string`: a big-endian u32 length, then the bytes.
fn put_string(out: &mut Vec<u8>, bytes: &[u8]) -> Result<()> {
    out.extend_from_slice(&u32::try_from(bytes.len())?.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Reads SSH wire types from a message.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8]> {
        if self.0.len() < count {
            bail!("a truncated ssh-agent message");
        }
        let (taken, rest) = self.0.split_at(count);
        self.0 = rest;
        Ok(taken)
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn string(&mut self) -> Result<&'a [u8]> {
        let length = usize::try_from(self.u32()?)?;
        self.take(length)
    }
}

/// Where the rows the targets need are.
struct RowIndex {
    sign: usize,
    gap: usize,
    agent: Option<usize>,
}

/// Everything measured, ready to print.
struct Report<'a> {
    plan: &'a Plan,
    cores: usize,
    main_workers: usize,
    latency: &'a [LatencyResult],
    rows: RowIndex,
    throughput: &'a [ThroughputResult],
    worker_rows: &'a [usize],
    idle: &'a IdleCpu,
    load_before: String,
    load_after: String,
    fork_memory: &'a Memory,
    exec_memory: Option<&'a Memory>,
}

impl Report<'_> {
    /// The median over rounds of `row`'s per-round value over its baseline's.
    fn latency_ratio(&self, row: usize, p99: bool) -> f64 {
        let this = &self.latency[row];
        let pick = |result: &'_ LatencyResult| -> Vec<f64> {
            if p99 {
                result.p99s.clone()
            } else {
                result.medians.clone()
            }
        };
        match this.baseline {
            None => 1.0,
            Some(baseline) => per_round_ratio(&pick(this), &pick(&self.latency[baseline])),
        }
    }

    fn in_process_rates(&self, callers: usize) -> Option<&ThroughputResult> {
        self.throughput
            .iter()
            .find(|row| row.workers.is_none() && row.callers == callers)
    }

    /// The best keyward throughput with `workers` workers, as a ratio to one in-process thread,
    /// and the number of callers that reached it.
    fn best_throughput(&self, workers: usize) -> Option<(f64, usize)> {
        let one_thread = self.in_process_rates(1)?;
        self.throughput
            .iter()
            .filter(|row| row.counts_for_targets && row.workers == Some(workers))
            .map(|row| (per_round_ratio(&row.rates, &one_thread.rates), row.callers))
            .max_by(|a, b| a.0.total_cmp(&b.0))
    }
}

fn print_report(report: &Report<'_>) {
    let plan = report.plan;
    println!();
    println!(
        "Latency, one caller ({} rounds of {} operations; idle-gap scenario {}, ssh-agent {})",
        plan.rounds,
        group_digits(plan.ops as u64),
        group_digits(plan.gap_ops as u64),
        plan.agent_ops
    );
    println!(
        "{:<50} {:>10} {:>10} {:>7} {:>9} {:>10}",
        "scenario", "median µs", "p99 µs", "ratio", "p99 ratio", "ops/s"
    );
    for (index, row) in report.latency.iter().enumerate() {
        let median = median_of(&row.medians);
        let p99 = median_of(&row.p99s);
        println!(
            "{:<50} {:>10.1} {:>10.1} {:>7.2} {:>9.2} {:>10}",
            row.name,
            median / 1e3,
            p99 / 1e3,
            report.latency_ratio(index, false),
            report.latency_ratio(index, true),
            group_digits_f(1e9 / median.max(1.0)),
        );
    }

    println!();
    println!(
        "Throughput ({} signatures per scenario and round, in {} turns)",
        group_digits(plan.throughput_ops as u64),
        plan.throughput_turns
    );
    println!(
        "{:<50} {:>10} {:>22} {:>24} {:>22}",
        "scenario",
        "sigs/s",
        "vs 1 in-process thread",
        "vs as many in-process",
        "CPU µs/sig call+signer"
    );
    for row in report.throughput {
        let one = report
            .in_process_rates(1)
            .map_or(f64::NAN, |one| per_round_ratio(&row.rates, &one.rates));
        let same = report
            .in_process_rates(row.callers)
            .map_or(f64::NAN, |same| per_round_ratio(&row.rates, &same.rates));
        println!(
            "{:<50} {:>10} {:>22.2} {:>24.2} {:>22}",
            row.name,
            group_digits_f(median_of(&row.rates)),
            one,
            same,
            format!(
                "{:.1}+{:.1}",
                row.caller_cpu_us_per_signature, row.signer_cpu_us_per_signature
            )
        );
    }

    println!();
    println!(
        "Signer child (pid {}, fork mode, {} worker{}, after the run)",
        report.fork_memory.pid,
        report.main_workers,
        plural(report.main_workers)
    );
    let idle = report.idle;
    println!(
        "  idle CPU over {:.2} s starting right after an answer: utime+stime +{} tick{} of 10 ms; \
         scheduler run time {}; {:.3}% of a core",
        idle.window.as_secs_f64(),
        idle.ticks,
        if idle.ticks == 1 { "" } else { "s" },
        idle.sched_ns.map_or("unreadable".to_owned(), |ns| format!(
            "{:.0} µs",
            ns as f64 / 1e3
        )),
        100.0 * idle.share_of_core()
    );
    for row in report.latency {
        if let Some(share) = row.child_cpu {
            println!(
                "  one request per {} idle gap: signer {:.1}% of a core, calling thread {:.1}% ({})",
                format_gap(plan.gap),
                100.0 * share,
                100.0 * row.caller_cpu.unwrap_or(f64::NAN),
                row.name.trim()
            );
        }
    }
    println!("  resident memory: {}", report.fork_memory.describe());
    if let Some(exec) = report.exec_memory {
        println!("  (fork-exec mode, pid {}: {})", exec.pid, exec.describe());
    }

    println!();
    println!("Targets (ratios from this run)");
    let target = |met: bool, text: String| {
        println!("  [{}] {text}", if met { "met    " } else { "NOT MET" });
    };
    let sign = report.latency_ratio(report.rows.sign, false);
    target(
        sign <= 1.3,
        format!("one caller back to back, median: {sign:.2}x in-process (<= 1.30x)"),
    );
    let sign_p99 = report.latency_ratio(report.rows.sign, true);
    target(
        sign_p99 <= 1.6,
        format!("one caller back to back, p99: {sign_p99:.2}x in-process p99 (<= 1.60x)"),
    );
    let gap = report.latency_ratio(report.rows.gap, false);
    target(
        gap <= 3.0,
        format!(
            "one caller, {} idle gaps, median: {gap:.2}x in-process (<= 3.00x)",
            format_gap(plan.gap)
        ),
    );
    for &workers in report.worker_rows {
        let needed = if workers == 1 { 0.9 } else { 1.7 };
        match report.best_throughput(workers) {
            Some((ratio, callers)) => target(
                ratio >= needed,
                format!(
                    "throughput, {workers} worker{}: {ratio:.2}x one in-process thread with \
                     {callers} caller{} (>= {needed:.2}x)",
                    plural(workers),
                    plural(callers)
                ),
            ),
            None => target(
                false,
                format!("throughput, {workers} workers: not measured"),
            ),
        }
    }
    if report.cores == 1 {
        println!("  [n/a    ] throughput, workers = cores: this machine has one core");
    }
    match report.rows.agent {
        Some(agent) => {
            let faster = per_round_ratio(
                &report.latency[agent].medians,
                &report.latency[report.rows.sign].medians,
            );
            target(
                faster >= 20.0,
                format!("faster than ssh-agent Ed25519 signing: {faster:.1}x (>= 20x)"),
            );
        }
        None => println!("  [skipped] faster than ssh-agent: no ssh-agent comparison in this run"),
    }
    let idle_share = 100.0 * idle.share_of_core();
    target(
        idle_share < 1.0,
        format!("idle child CPU: {idle_share:.3}% of a core (< 1%)"),
    );
    let rss = report.fork_memory.vm_rss;
    target(
        rss <= 4096,
        format!(
            "child resident memory: {} kB (<= 4,096 kB)",
            group_digits(rss)
        ),
    );

    println!();
    println!(
        "Machine load (1-minute average): {} before the run, {} after it (this benchmark's own \
         threads included), on {} cores. A load above about 0.5 before the run means other work \
         shared the CPUs: ratios get noisier; run again when the machine is quiet.",
        report.load_before, report.load_after, report.cores
    );
    println!();
    for line in HOW_TO_READ {
        println!("{line}");
    }
}

/// The legend printed under the tables.
const HOW_TO_READ: &[&str] = &[
    "How to read this:",
    "  - All scenarios ran in this one process, taking turns in chunks, so machine noise hit",
    "    them alike. Each ratio is taken per round (a scenario over its baseline in the same",
    "    round: in-process Ed25519 sign; in-process X25519 for the X25519 row), then the median",
    "    of the rounds is shown. Quote ratios; absolute times differ from run to run.",
    "  - 'p99 ratio' is the scenario's p99 over the baseline's p99. In the idle-gap row only the",
    "    request is timed, not the sleep before it: the cost of a request that finds both sides",
    "    asleep.",
    "  - Throughput: fixed batches shared among N caller threads; 'vs as many in-process' is",
    "    against N in-process threads. One caller waits for each answer before it sends the",
    "    next, so it cannot keep a worker busy; several callers can.",
    "  - Idle CPU: the signer's CPU time across one second without requests, from the",
    "    scheduler's per-thread run time (ns) where readable; utime+stime ticks are shown too,",
    "    but one tick is already 1% of that second.",
    "  - Options: --quick for a short look, --rounds/--ops for more, --workers, --caller-spin-us",
    "    and --signer-spin-us to try other settings.",
];

/// The median over rounds of `values[r] / baseline[r]`.
fn per_round_ratio(values: &[f64], baseline: &[f64]) -> f64 {
    let ratios: Vec<f64> = values
        .iter()
        .zip(baseline)
        .map(|(value, base)| value / base)
        .collect();
    median_of(&ratios)
}

/// The median of per-round values.
fn median_of(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if !n.is_multiple_of(2) => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The nearest-rank `percent` percentile of sorted samples.
fn percentile(sorted: &[u64], percent: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = (sorted.len() - 1) * percent / 100;
    sorted[index] as f64
}

/// The 1-minute load average, as `/proc/loadavg` shows it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn spin_label(spin: &Latency) -> String {
    format!(
        "{}/{} µs",
        spin.caller_spin.as_micros(),
        spin.signer_spin.as_micros()
    )
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

fn format_gap(gap: Duration) -> String {
    if gap.as_micros().is_multiple_of(1000) {
        format!("{} ms", gap.as_millis())
    } else {
        format!("{} µs", gap.as_micros())
    }
}

/// 1234567 as "1,234,567".
fn group_digits(value: u64) -> String {
    let digits = value.to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// A non-negative float, rounded, as grouped digits.
fn group_digits_f(value: f64) -> String {
    if !value.is_finite() || value < 0.0 {
        return "-".to_owned();
    }
    let rounded = format!("{value:.0}");
    rounded.parse::<u64>().map_or(rounded, group_digits)
}
