//! Criterion benchmarks: signing through keyward against signing in-process (and against
//! OpenSSH's ssh-agent), group by group, side by side.
//!
//! `cargo bench --bench signing` (add a filter such as `-- sign` to run one group). Criterion
//! runs one benchmark after another, so machine noise can land on one and not its neighbour; for
//! ratios taken per round with all scenarios interleaved, run `keyward bench`.
//!
//! Groups:
//! - `sign`: Ed25519 sign of a 32-byte digest, one caller, back to back.
//! - `sign-idle-gaps`: the same with a 1 ms sleep before each request; only the request is
//!   timed (`iter_custom`), so this is the cost of a request that finds both sides asleep.
//! - `x25519`: Diffie-Hellman in-process and through keyward.
//! - `throughput`: fixed batches shared among 1, 2 and 8 caller threads, against as many
//!   in-process threads; keyward with one worker and with one worker per core.
//! - `ssh-agent`: a private ssh-agent with a fresh Ed25519 key, spoken to over its socket;
//!   skipped with a message when OpenSSH is not installed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use ed25519_dalek::{Signer as _, SigningKey};
use keyward::{Config, KeyId, KeyService, KeySpec, Purpose, SecretService};

// The ssh-agent client of `keyward bench`, shared rather than copied.
#[path = "../src/cli/bench/ssh_agent.rs"]
mod cli_bench;

const DIGEST: [u8; 32] = [0x5a; 32];
const IDLE_GAP: Duration = Duration::from_millis(1);
/// Signatures per throughput iteration, shared among the callers.
const BATCH: u64 = 256;

/// A signer service and its keys.
struct Signer {
    service: SecretService,
    ed25519: KeyId,
    x25519: KeyId,
}

impl Signer {
    fn spawn(workers: usize) -> Self {
        let service = SecretService::spawn(Config::default().with_workers(workers)).unwrap();
        let ed25519 = service
            .generate_key(KeySpec::new(Purpose::Account))
            .unwrap();
        let x25519 = service
            .generate_key(KeySpec::new(Purpose::NetworkHandshake))
            .unwrap();
        let signature = service.sign(ed25519, &DIGEST).unwrap();
        let public = service.public_key(ed25519).unwrap();
        public
            .as_ed25519()
            .unwrap()
            .verify_strict(&DIGEST, &signature)
            .expect("keyward's signature verifies");
        Self {
            service,
            ed25519,
            x25519,
        }
    }

    fn sign(&self) {
        black_box(self.service.sign(self.ed25519, black_box(&DIGEST)).unwrap());
    }
}

/// Everything the groups share: signers spawned first, while this process is small.
struct Fixture {
    default_workers: usize,
    cores: usize,
    signers: Vec<(usize, Signer)>,
    signing: SigningKey,
    x25519: x25519_dalek::StaticSecret,
    peer: x25519_dalek::PublicKey,
}

impl Fixture {
    fn new() -> Self {
        let default_workers = Config::default().workers();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let mut worker_counts = vec![default_workers, 1, cores];
        worker_counts.sort_unstable();
        worker_counts.dedup();
        let signers = worker_counts
            .into_iter()
            .map(|workers| (workers, Signer::spawn(workers)))
            .collect();
        let mut seeds = [[0u8; 32]; 3];
        for seed in &mut seeds {
            getrandom::fill(seed).unwrap();
        }
        Self {
            default_workers,
            cores,
            signers,
            signing: SigningKey::from_bytes(&seeds[0]),
            x25519: x25519_dalek::StaticSecret::from(seeds[1]),
            peer: x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(seeds[2])),
        }
    }

    fn signer(&self, workers: usize) -> &Signer {
        &self
            .signers
            .iter()
            .find(|(count, _)| *count == workers)
            .unwrap()
            .1
    }

    fn default_signer(&self) -> &Signer {
        self.signer(self.default_workers)
    }
}

fn sign(criterion: &mut Criterion, fixture: &Fixture) {
    let mut group = criterion.benchmark_group("sign");
    group.bench_function("in-process", |b| {
        b.iter(|| fixture.signing.sign(black_box(&DIGEST)))
    });
    group.bench_function("keyward", |b| b.iter(|| fixture.default_signer().sign()));
    group.finish();
}

/// Times `operation` only, after a sleep of `IDLE_GAP` before each call.
fn time_after_gaps(iterations: u64, mut operation: impl FnMut()) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iterations {
        std::thread::sleep(IDLE_GAP);
        let start = Instant::now();
        operation();
        total += start.elapsed();
    }
    total
}

fn sign_idle_gaps(criterion: &mut Criterion, fixture: &Fixture) {
    let mut group = criterion.benchmark_group("sign-idle-gaps");
    // Every iteration sleeps 1 ms first: a small budget (about 2,000 requests) keeps the
    // group to a few seconds.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("in-process", |b| {
        b.iter_custom(|iterations| {
            time_after_gaps(iterations, || {
                black_box(fixture.signing.sign(black_box(&DIGEST)));
            })
        })
    });
    group.bench_function("keyward", |b| {
        b.iter_custom(|iterations| time_after_gaps(iterations, || fixture.default_signer().sign()))
    });
    group.finish();
}

fn x25519(criterion: &mut Criterion, fixture: &Fixture) {
    let mut group = criterion.benchmark_group("x25519");
    group.bench_function("in-process", |b| {
        b.iter(|| fixture.x25519.diffie_hellman(black_box(&fixture.peer)))
    });
    group.bench_function("keyward", |b| {
        let signer = fixture.default_signer();
        b.iter(|| {
            signer
                .service
                .diffie_hellman(signer.x25519, black_box(&fixture.peer))
                .unwrap()
        })
    });
    group.finish();
}

/// `operations` signatures shared among `callers` threads started together; the wall time from
/// the first caller's start to the last caller's end.
fn run_batch(callers: usize, operations: u64, sign: &(dyn Fn() + Sync)) -> Duration {
    let callers_u64 = u64::try_from(callers).unwrap();
    let barrier = Barrier::new(callers);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..callers_u64)
            .map(|caller| {
                let share = operations / callers_u64 + u64::from(caller < operations % callers_u64);
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..share {
                        sign();
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let first = spans.iter().map(|span| span.0).min().unwrap();
    let last = spans.iter().map(|span| span.1).max().unwrap();
    last - first
}

fn throughput(criterion: &mut Criterion, fixture: &Fixture) {
    let mut group = criterion.benchmark_group("throughput");
    group
        .throughput(Throughput::Elements(BATCH))
        .sample_size(10)
        .measurement_time(Duration::from_secs(2));
    let in_process = || {
        black_box(fixture.signing.sign(black_box(&DIGEST)));
    };
    let mut worker_counts = vec![1];
    if fixture.cores != 1 {
        worker_counts.push(fixture.cores);
    }
    for callers in [1, 2, 8] {
        group.bench_with_input(
            BenchmarkId::new("in-process", callers),
            &callers,
            |b, &callers| {
                b.iter_custom(|iterations| run_batch(callers, iterations * BATCH, &in_process))
            },
        );
        for &workers in &worker_counts {
            let signer = fixture.signer(workers);
            let through_keyward = || signer.sign();
            group.bench_with_input(
                BenchmarkId::new(
                    format!(
                        "keyward-{workers}-worker{}",
                        if workers == 1 { "" } else { "s" }
                    ),
                    callers,
                ),
                &callers,
                |b, &callers| {
                    b.iter_custom(|iterations| {
                        run_batch(callers, iterations * BATCH, &through_keyward)
                    })
                },
            );
        }
    }
    group.finish();
}

fn ssh_agent(criterion: &mut Criterion, fixture: &Fixture) {
    let mut agent = match cli_bench::SshAgent::start() {
        Ok(agent) => agent,
        Err(error) => {
            println!("ssh-agent benchmark skipped: {error:#}");
            return;
        }
    };
    let mut group = criterion.benchmark_group("ssh-agent");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(2));
    group.bench_function("in-process", |b| {
        b.iter(|| fixture.signing.sign(black_box(&DIGEST)))
    });
    group.bench_function("keyward", |b| b.iter(|| fixture.default_signer().sign()));
    group.bench_function("ssh-agent", |b| {
        b.iter(|| agent.sign(black_box(&DIGEST)).unwrap())
    });
    group.finish();
    // Dropping the agent kills it and removes its directory (a panic above unwinds through the
    // same drop).
    drop(agent);
}

fn main() {
    let fixture = Fixture::new();
    let mut criterion = Criterion::default().configure_from_args();
    sign(&mut criterion, &fixture);
    sign_idle_gaps(&mut criterion, &fixture);
    x25519(&mut criterion, &fixture);
    throughput(&mut criterion, &fixture);
    ssh_agent(&mut criterion, &fixture);
    criterion.final_summary();
}
