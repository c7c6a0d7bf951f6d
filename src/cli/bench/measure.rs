//! Runs in the host: the measuring room, timing of the scenarios turn by turn, their statistics
//! per round, and the CPU clocks of the calling threads and the signer.
//!
//! Latencies go into an HDR histogram per scenario and round (nanoseconds, 3 significant
//! digits): its memory is fixed when the scenario is built, so nothing is allocated or sorted
//! while the scenarios take turns, and the median and p99 it gives are within 0.1% of the exact
//! nearest-rank values.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use hdrhistogram::Histogram;

use super::procfs::ProcessCpu;
use super::scenarios::Target;

/// Significant decimal digits the latency histograms keep.
const LATENCY_DIGITS: u8 = 3;
/// The longest latency the histograms tell apart; a longer one counts as this long. A minute
/// is far past any request that did not fail.
const LONGEST_LATENCY_NS: u64 = 60 * 1_000_000_000;

pub(super) type Operation<'a> = Box<dyn FnMut() -> Result<()> + 'a>;

/// A single-caller latency scenario while it is being measured.
pub(super) struct LatencyRow<'a> {
    name: String,
    /// The row this one is compared with; `None` for a baseline.
    baseline: Option<usize>,
    per_chunk: usize,
    /// Operations run untimed at the start of each turn (see `run_turn`).
    warm_up: usize,
    /// Sleep this long before each operation (not counted).
    gap: Option<Duration>,
    /// Measure this process's CPU time across each turn.
    watch_cpu: Option<i32>,
    operation: Operation<'a>,
    /// This round's latencies, in nanoseconds.
    latencies: Histogram<u64>,
    medians: Vec<f64>,
    p99s: Vec<f64>,
    watched_cpu_ns: u64,
    wall_ns: u64,
    /// CPU time of the calling thread over the watched turns.
    caller_cpu_ns: u64,
}

impl<'a> LatencyRow<'a> {
    pub(super) fn new(
        name: impl Into<String>,
        baseline: Option<usize>,
        per_chunk: usize,
        operation: Operation<'a>,
    ) -> Result<Self> {
        let latencies = Histogram::new_with_bounds(1, LONGEST_LATENCY_NS, LATENCY_DIGITS)
            .context("creating a latency histogram")?;
        Ok(Self {
            name: name.into(),
            baseline,
            per_chunk,
            warm_up: (per_chunk / 10).max(1),
            gap: None,
            watch_cpu: None,
            operation,
            latencies,
            medians: Vec::new(),
            p99s: Vec::new(),
            watched_cpu_ns: 0,
            wall_ns: 0,
            caller_cpu_ns: 0,
        })
    }

    /// Sleeps `gap` before each operation and watches the CPU time of the process `signer_pid`.
    pub(super) fn with_idle_gaps(mut self, gap: Duration, signer_pid: i32) -> Self {
        self.gap = Some(gap);
        self.watch_cpu = Some(signer_pid);
        self
    }

    /// One turn: a tenth of `per_chunk` operations untimed, then `per_chunk` operations, each
    /// timed on its own.
    ///
    /// The untimed start is there because the scenarios take turns: a turn begins after the
    /// other scenarios' turns, with this scenario's signer asleep and its threads wherever the
    /// scheduler left them, and its first requests pay for that switch (a run with one turn per
    /// round showed back-to-back p99 at 1.10x in-process, where turns of 500 without this start
    /// showed 8.62x). What a row shows is its own steady state; the cost of a request that finds
    /// the signer asleep is the idle-gap row's.
    pub(super) fn run_turn(&mut self, record: bool) -> Result<()> {
        for _ in 0..self.warm_up {
            if let Some(gap) = self.gap {
                std::thread::sleep(gap);
            }
            (self.operation)()?;
        }
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
                self.latencies.saturating_record(nanos(elapsed));
            }
        }
        if let Some((pid, before)) = watched
            && let Some(after) = ProcessCpu::read(pid).ok().and_then(|cpu| cpu.sched_ns)
        {
            self.watched_cpu_ns += after.saturating_sub(before);
            self.wall_ns += nanos(started.elapsed());
            self.caller_cpu_ns += this_thread_cpu_ns().saturating_sub(caller_before);
        }
        Ok(())
    }

    pub(super) fn close_round(&mut self) {
        let (median, p99) = if self.latencies.is_empty() {
            (f64::NAN, f64::NAN)
        } else {
            (
                self.latencies.value_at_quantile(0.50) as f64,
                self.latencies.value_at_quantile(0.99) as f64,
            )
        };
        self.medians.push(median);
        self.p99s.push(p99);
        self.latencies.reset();
    }

    pub(super) fn finish(self) -> LatencyResult {
        let share_of_wall = |ns: u64| (self.wall_ns > 0).then(|| ns as f64 / self.wall_ns as f64);
        LatencyResult {
            child_cpu: share_of_wall(self.watched_cpu_ns),
            caller_cpu: share_of_wall(self.caller_cpu_ns),
            name: self.name,
            baseline: self.baseline,
            medians: self.medians,
            p99s: self.p99s,
        }
    }
}

/// A latency scenario's numbers, per round (nanoseconds).
pub(super) struct LatencyResult {
    pub(super) name: String,
    pub(super) baseline: Option<usize>,
    pub(super) medians: Vec<f64>,
    pub(super) p99s: Vec<f64>,
    /// The signer's CPU time over wall time across this scenario's turns, if watched.
    pub(super) child_cpu: Option<f64>,
    /// The calling thread's share of a core over the same turns.
    pub(super) caller_cpu: Option<f64>,
}

/// A throughput scenario while it is being measured.
pub(super) struct ThroughputRow<'a> {
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
    pub(super) fn new(name: String, callers: usize, target: Target<'a>) -> Self {
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

    /// Shown for comparison only: the targets do not look at this row.
    pub(super) fn not_for_targets(mut self) -> Self {
        self.counts_for_targets = false;
        self
    }

    /// One batch, not recorded.
    pub(super) fn warm_up(&self, operations: usize) -> Result<()> {
        run_batch(&self.target, self.callers, operations.max(self.callers)).map(|_| ())
    }

    /// One recorded turn: a batch of `operations` signatures.
    pub(super) fn run_turn(&mut self, operations: usize) -> Result<()> {
        let signer_before = self.target.signer_cpu_ns();
        let batch = run_batch(&self.target, self.callers, operations)?;
        let signer_after = self.target.signer_cpu_ns();
        self.elapsed += batch.elapsed;
        self.done += operations;
        self.caller_cpu_ns += batch.caller_cpu_ns;
        self.signer_cpu_ns += signer_after
            .zip(signer_before)
            .map_or(0, |(after, before)| after.saturating_sub(before));
        Ok(())
    }

    pub(super) fn close_round(&mut self) {
        self.rates
            .push(self.done as f64 / self.elapsed.as_secs_f64().max(1e-9));
        self.cpu_done += self.done;
        self.elapsed = Duration::ZERO;
        self.done = 0;
    }

    pub(super) fn finish(self) -> ThroughputResult {
        let micros_per_signature = |ns: u64| ns as f64 / 1e3 / self.cpu_done.max(1) as f64;
        ThroughputResult {
            callers: self.callers,
            workers: self.target.workers(),
            counts_for_targets: self.counts_for_targets,
            batched: self.target.is_batched(),
            caller_cpu_us_per_signature: micros_per_signature(self.caller_cpu_ns),
            signer_cpu_us_per_signature: micros_per_signature(self.signer_cpu_ns),
            name: self.name,
            rates: self.rates,
        }
    }
}

/// A throughput scenario's signatures per second, per round.
pub(super) struct ThroughputResult {
    pub(super) name: String,
    pub(super) callers: usize,
    /// Signer workers; `None` for in-process.
    pub(super) workers: Option<usize>,
    pub(super) rates: Vec<f64>,
    /// False for the rows of `--also-spin` settings and for batches.
    pub(super) counts_for_targets: bool,
    /// Signatures asked for 16 digests a request (`sign_many`).
    pub(super) batched: bool,
    /// CPU each signature cost the calling threads (the signing itself, for in-process rows).
    pub(super) caller_cpu_us_per_signature: f64,
    /// CPU each signature cost the signer process (0 for in-process rows).
    pub(super) signer_cpu_us_per_signature: f64,
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

/// The CPU time the calling thread has run (nanoseconds; 0 if unreadable). The CPU clocks are
/// exact to the call; /proc's run times lag by up to a scheduler tick for a running thread.
fn this_thread_cpu_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(0, timespec_ns)
}

/// The CPU time a process has run so far, all its threads (nanoseconds), if readable.
pub(super) fn process_cpu_ns(pid: i32) -> Option<u64> {
    nix::time::clock_getcpuclockid(nix::unistd::Pid::from_raw(pid))
        .and_then(nix::time::clock_gettime)
        .ok()
        .map(timespec_ns)
}

fn timespec_ns(time: nix::sys::time::TimeSpec) -> u64 {
    let nanos = i128::from(time.tv_sec()) * 1_000_000_000 + i128::from(time.tv_nsec());
    u64::try_from(nanos).unwrap_or(0)
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The median over rounds of `values[r] / baseline[r]`.
pub(super) fn per_round_ratio(values: &[f64], baseline: &[f64]) -> f64 {
    let ratios: Vec<f64> = values
        .iter()
        .zip(baseline)
        .map(|(value, base)| value / base)
        .collect();
    median_of(&ratios)
}

/// The median of per-round values.
pub(super) fn median_of(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if !n.is_multiple_of(2) => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}
