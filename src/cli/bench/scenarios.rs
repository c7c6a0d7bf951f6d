//! Runs in the host: the scenarios room, what `keyward bench` measures, with which signers and
//! keys.
//!
//! Latency: the in-process Ed25519 and X25519 baselines, keyward sign back to back (with the
//! chosen worker count and with 1 worker), keyward sign after idle gaps, the pipe floor (a plain
//! child over pipes) back to back and after idle gaps, keyward X25519, and ssh-agent. Throughput: in-process threads against keyward with 1 worker and with one worker
//! per core, and one caller signing in batches (`sign_many`). Then the signer's CPU over an idle
//! second and its resident memory.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use ed25519_dalek::{Signer as _, SigningKey};
use keyward::{Config, KeyId, KeyService, KeySpec, Latency, Purpose, SecretService, SpawnMode};

use super::Plan;
use super::measure::{LatencyRow, ThroughputRow, process_cpu_ns};
use super::pipe_floor::PipeFloor;
use super::procfs::{IdleCpu, Memory, ProcessCpu};
use super::report::{RowIndex, format_gap, plural, spin_label};
use super::ssh_agent::SshAgent;
use super::store::StoreBench;

/// What the latency scenarios sign (what is signed does not change the cost).
const DIGEST: [u8; 32] = [0x5a; 32];
/// Caller counts of the throughput scenarios.
const CALLER_COUNTS: [usize; 3] = [1, 2, 8];
/// Caller counts of the throughput rows of each `--also-spin` setting.
const ALSO_SPIN_CALLER_COUNTS: [usize; 2] = [2, 8];
/// Digests per request of the `sign_many` throughput row: a validator's batch of votes (the
/// legend in `report.rs` names the number).
const BATCH: usize = 16;

/// One signer service with an Ed25519 and an X25519 key.
pub(super) struct Service {
    service: SecretService,
    pub(super) workers: usize,
    ed25519: KeyId,
    x25519: KeyId,
}

impl Service {
    fn spawn(config: Config) -> Result<Self> {
        let workers = config.workers();
        let service = SecretService::spawn(config).context("spawning a signer")?;
        let ed25519 = service.generate_key(KeySpec::new(Purpose::Account))?;
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

    fn sign(&self, digest: &[u8; 32]) -> Result<()> {
        std::hint::black_box(self.service.sign(self.ed25519, digest)?);
        Ok(())
    }

    fn sign_many(&self, digests: &[[u8; 32]]) -> Result<()> {
        std::hint::black_box(self.service.sign_many(self.ed25519, digests)?);
        Ok(())
    }

    pub(super) fn pid(&self) -> i32 {
        self.service.pid()
    }
}

/// Every signer the scenarios use, spawned before anything else.
pub(super) struct Signers {
    /// One fork-mode service per worker count needed: the chosen one, 1, and one per core.
    by_workers: Vec<Service>,
    /// A fork-exec service, for its memory; `None` when this program's path is unknown.
    fork_exec: Option<Service>,
    /// One service per `--also-spin` setting, with the chosen worker count.
    also_spin: Vec<(Latency, Service)>,
}

impl Signers {
    /// Call this first, while this process is small: a forked signer starts as a copy of it.
    pub(super) fn spawn(
        main_workers: usize,
        cores: usize,
        latency: Latency,
        also_spin: &[Latency],
    ) -> Result<Self> {
        let mut worker_counts = vec![main_workers, 1, cores];
        worker_counts.sort_unstable();
        worker_counts.dedup();
        let mut by_workers = Vec::new();
        for workers in worker_counts {
            by_workers.push(Service::spawn(
                Config::default()
                    .with_workers(workers)
                    .with_latency(latency),
            )?);
        }
        let fork_exec = match std::env::current_exe() {
            Ok(program) => Some(Service::spawn(
                Config::default()
                    .with_spawn_mode(SpawnMode::ForkExec { program })
                    .with_latency(latency),
            )?),
            Err(_) => None,
        };
        let mut spin_services = Vec::new();
        for &spin in also_spin {
            let service = Service::spawn(
                Config::default()
                    .with_workers(main_workers)
                    .with_latency(spin),
            )?;
            spin_services.push((spin, service));
        }
        Ok(Self {
            by_workers,
            fork_exec,
            also_spin: spin_services,
        })
    }

    pub(super) fn with_workers(&self, workers: usize) -> Result<&Service> {
        self.by_workers
            .iter()
            .find(|service| service.workers == workers)
            .ok_or_else(|| anyhow!("no service with {workers} workers"))
    }
}

/// The in-process baselines' keys.
pub(super) struct Local {
    signing: SigningKey,
    x25519: x25519_dalek::StaticSecret,
    peer: x25519_dalek::PublicKey,
}

impl Local {
    pub(super) fn new() -> Result<Self> {
        let mut seeds = [[0u8; 32]; 3];
        for seed in &mut seeds {
            getrandom::fill(seed).map_err(|error| anyhow!("no entropy: {error}"))?;
        }
        let [signing, x25519, peer] = seeds;
        Ok(Self {
            signing: SigningKey::from_bytes(&signing),
            x25519: x25519_dalek::StaticSecret::from(x25519),
            peer: x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(peer)),
        })
    }
}

/// The latency scenarios, in table order, and where the rows the targets need are. Row 0, the
/// in-process Ed25519 sign, is the baseline of every signature row.
pub(super) fn latency_scenarios<'a>(
    plan: &Plan,
    main: &'a Service,
    signers: &'a Signers,
    local: &'a Local,
    floor: &'a PipeFloor,
    agent: Option<&'a mut SshAgent>,
    store: &'a StoreBench,
) -> Result<(Vec<LatencyRow<'a>>, RowIndex)> {
    let back_to_back_per_turn = plan.per_chunk(plan.ops);
    let idle_gaps_per_turn = plan.per_chunk(plan.gap_ops);
    let gap = plan.gap;
    let mut rows = vec![LatencyRow::new(
        "in-process Ed25519 sign (32-byte digest)",
        None,
        back_to_back_per_turn,
        Box::new(|| {
            std::hint::black_box(local.signing.sign(std::hint::black_box(&DIGEST)));
            Ok(())
        }),
    )?];
    let sign_row = rows.len();
    rows.push(LatencyRow::new(
        format!(
            "keyward sign, back to back ({} worker{})",
            main.workers,
            plural(main.workers)
        ),
        Some(0),
        back_to_back_per_turn,
        Box::new(|| main.sign(&DIGEST)),
    )?);
    if main.workers != 1 {
        let one = signers.with_workers(1)?;
        rows.push(LatencyRow::new(
            "keyward sign, back to back (1 worker)",
            Some(0),
            back_to_back_per_turn,
            Box::new(|| one.sign(&DIGEST)),
        )?);
    }
    let gap_row = rows.len();
    rows.push(
        LatencyRow::new(
            format!(
                "keyward sign, {} idle gaps (gap not counted)",
                format_gap(gap)
            ),
            Some(0),
            idle_gaps_per_turn,
            Box::new(|| main.sign(&DIGEST)),
        )?
        .with_idle_gaps(gap, main.pid()),
    );
    // The floor: the same two waits with nothing of keyward's between them.
    let floor_sign = rows.len();
    rows.push(LatencyRow::new(
        "pipe floor: plain child, back to back",
        Some(0),
        back_to_back_per_turn,
        Box::new(|| {
            std::hint::black_box(floor.sign(&DIGEST)?);
            Ok(())
        }),
    )?);
    let floor_gap = rows.len();
    rows.push(
        LatencyRow::new(
            format!("pipe floor: plain child, {} idle gaps", format_gap(gap)),
            Some(0),
            idle_gaps_per_turn,
            Box::new(|| {
                std::hint::black_box(floor.sign(&DIGEST)?);
                Ok(())
            }),
        )?
        .with_idle_gaps(gap, floor.pid()),
    );
    let x25519_baseline = rows.len();
    rows.push(LatencyRow::new(
        "in-process X25519 Diffie-Hellman",
        None,
        back_to_back_per_turn,
        Box::new(|| {
            std::hint::black_box(
                local
                    .x25519
                    .diffie_hellman(std::hint::black_box(&local.peer)),
            );
            Ok(())
        }),
    )?);
    rows.push(LatencyRow::new(
        "keyward X25519 Diffie-Hellman",
        Some(x25519_baseline),
        back_to_back_per_turn,
        Box::new(|| {
            std::hint::black_box(main.service.diffie_hellman(main.x25519, &local.peer)?);
            Ok(())
        }),
    )?);
    let agent_row = match agent {
        Some(agent) => {
            rows.push(LatencyRow::new(
                "OpenSSH ssh-agent Ed25519 SIGN_REQUEST",
                Some(0),
                plan.per_chunk(plan.agent_ops),
                Box::new(move || {
                    std::hint::black_box(agent.sign(&DIGEST)?);
                    Ok(())
                }),
            )?);
            Some(rows.len() - 1)
        }
        None => None,
    };

    // The sealed store: its durable writes against a bare fsync in the same directory, and its
    // signing against signing without a store.
    let store_per_turn = plan.per_chunk(plan.agent_ops);
    let store_baseline = rows.len();
    rows.push(LatencyRow::new(
        "bare write + fsync, state-file size, same dir",
        None,
        store_per_turn,
        Box::new(move || store.bare_write()),
    )?);
    let store_write = rows.len();
    rows.push(LatencyRow::new(
        "keyward store write (generate or drop)",
        Some(store_baseline),
        store_per_turn,
        Box::new(move || store.write()),
    )?);
    let consensus_new_round = rows.len();
    rows.push(LatencyRow::new(
        "keyward consensus sign, new round (1 write)",
        Some(store_baseline),
        store_per_turn,
        Box::new(move || store.sign_new_round()),
    )?);
    let consensus_repeat = rows.len();
    rows.push(LatencyRow::new(
        "keyward consensus sign, repeat (no write)",
        Some(0),
        back_to_back_per_turn,
        Box::new(move || store.sign_repeat()),
    )?);
    let store_sign = rows.len();
    rows.push(LatencyRow::new(
        "keyward sign, back to back, sealed store",
        Some(0),
        back_to_back_per_turn,
        Box::new(move || store.sign(&DIGEST)),
    )?);

    for (spin, service) in &signers.also_spin {
        let label = spin_label(spin);
        rows.push(LatencyRow::new(
            format!("  same, back to back, spin {label}"),
            Some(0),
            back_to_back_per_turn,
            Box::new(move || service.sign(&DIGEST)),
        )?);
        rows.push(
            LatencyRow::new(
                format!("  same, {} idle gaps, spin {label}", format_gap(gap)),
                Some(0),
                idle_gaps_per_turn,
                Box::new(move || service.sign(&DIGEST)),
            )?
            .with_idle_gaps(gap, service.pid()),
        );
    }
    let index = RowIndex {
        sign: sign_row,
        gap: gap_row,
        floor_sign,
        floor_gap,
        agent: agent_row,
        store_write,
        store_sign,
        consensus_new_round,
        consensus_repeat,
    };
    Ok((rows, index))
}

/// The throughput scenarios, in table order, and the worker counts keyward is measured with.
/// Row 0 is one in-process thread.
pub(super) fn throughput_scenarios<'a>(
    signers: &'a Signers,
    local: &'a Local,
    cores: usize,
) -> Result<(Vec<ThroughputRow<'a>>, Vec<usize>)> {
    let mut rows = Vec::new();
    for callers in CALLER_COUNTS {
        rows.push(ThroughputRow::new(
            format!("in-process, {callers} thread{}", plural(callers)),
            callers,
            Target::InProcess(&local.signing),
        ));
    }
    let mut worker_counts = vec![1];
    if cores != 1 {
        worker_counts.push(cores);
    }
    for &workers in &worker_counts {
        let service = signers.with_workers(workers)?;
        for callers in CALLER_COUNTS {
            rows.push(ThroughputRow::new(
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
    // Batches answer several signatures a request: compared with the rows above, not counted
    // for the targets, which are about one signature a request.
    // With more than one worker, a batch is split among the idle ones.
    for &workers in &worker_counts {
        rows.push(
            ThroughputRow::new(
                format!(
                    "keyward sign_many x{BATCH}, {workers} worker{}, 1 caller",
                    plural(workers)
                ),
                1,
                Target::KeywardBatches(signers.with_workers(workers)?),
            )
            .not_for_targets(),
        );
    }
    for (spin, service) in &signers.also_spin {
        for callers in ALSO_SPIN_CALLER_COUNTS {
            let name = format!(
                "  same, {} worker{}, {callers} callers, spin {}",
                service.workers,
                plural(service.workers),
                spin_label(spin)
            );
            rows.push(
                ThroughputRow::new(name, callers, Target::Keyward(service)).not_for_targets(),
            );
        }
    }
    Ok((rows, worker_counts))
}

/// What a throughput scenario's callers call.
pub(super) enum Target<'a> {
    InProcess(&'a SigningKey),
    Keyward(&'a Service),
    /// `sign_many` in batches of [`BATCH`] digests (the last one shorter if need be).
    KeywardBatches(&'a Service),
}

impl Target<'_> {
    pub(super) fn run(&self, operations: usize) -> Result<()> {
        let digest = [0xa5u8; 32];
        match self {
            Target::InProcess(key) => {
                for _ in 0..operations {
                    std::hint::black_box(key.sign(std::hint::black_box(&digest)));
                }
            }
            Target::Keyward(service) => {
                for _ in 0..operations {
                    service.sign(&digest)?;
                }
            }
            Target::KeywardBatches(service) => {
                let batch = [digest; BATCH];
                let mut left = operations;
                while left > 0 {
                    let count = left.min(BATCH);
                    service.sign_many(&batch[..count])?;
                    left -= count;
                }
            }
        }
        Ok(())
    }

    /// Whether this target asks for its signatures in batches.
    pub(super) fn is_batched(&self) -> bool {
        matches!(self, Target::KeywardBatches(_))
    }

    pub(super) fn workers(&self) -> Option<usize> {
        match self {
            Target::InProcess(_) => None,
            Target::Keyward(service) | Target::KeywardBatches(service) => Some(service.workers),
        }
    }

    /// The signer's CPU time so far (all its threads), if there is a signer.
    pub(super) fn signer_cpu_ns(&self) -> Option<u64> {
        match self {
            Target::InProcess(_) => None,
            Target::Keyward(service) | Target::KeywardBatches(service) => {
                process_cpu_ns(service.pid())
            }
        }
    }
}

/// The signer's CPU use over `window` with no requests, starting right after an answer.
pub(super) fn idle_cpu(service: &Service, window: Duration) -> Result<IdleCpu> {
    // The signer has just answered; from now on nobody calls it.
    service.sign(&DIGEST)?;
    let before = ProcessCpu::read(service.pid())?;
    let started = Instant::now();
    std::thread::sleep(window);
    let after = ProcessCpu::read(service.pid())?;
    Ok(IdleCpu::between(&before, &after, started.elapsed()))
}

/// The resident memory of `service`, and of the fork-exec signer after 100 signatures (so that,
/// like the fork-mode signer after the run, it has touched what signing needs).
pub(super) fn child_memory(
    service: &Service,
    signers: &Signers,
) -> Result<(Memory, Option<Memory>)> {
    let fork = Memory::read(service.pid())?;
    let fork_exec = match &signers.fork_exec {
        Some(exec) => {
            for _ in 0..100 {
                exec.sign(&DIGEST)?;
            }
            Some(Memory::read(exec.pid())?)
        }
        None => None,
    };
    Ok((fork, fork_exec))
}
