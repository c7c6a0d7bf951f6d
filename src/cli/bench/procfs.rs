//! Runs in the host: the /proc room, what the kernel says of the signer process (CPU ticks,
//! scheduler run time, resident memory) and of the machine (load average).

use std::time::Duration;

use anyhow::{Context, Result};

/// `/proc/<pid>/stat` reports CPU times in USER_HZ ticks, fixed at 100 a second on Linux.
const USER_HZ: u64 = 100;

/// A process's CPU time so far.
pub(super) struct ProcessCpu {
    /// utime + stime from `/proc/<pid>/stat`, in USER_HZ ticks (all threads).
    ticks: u64,
    /// The sum of the threads' run time from `/proc/<pid>/task/*/schedstat`, in nanoseconds, if
    /// readable: far finer than ticks.
    pub(super) sched_ns: Option<u64>,
}

impl ProcessCpu {
    pub(super) fn read(pid: i32) -> Result<Self> {
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
pub(super) struct IdleCpu {
    pub(super) ticks: u64,
    pub(super) sched_ns: Option<u64>,
    pub(super) window: Duration,
}

impl IdleCpu {
    pub(super) fn between(before: &ProcessCpu, after: &ProcessCpu, window: Duration) -> Self {
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
    pub(super) fn share_of_core(&self) -> f64 {
        let used = match self.sched_ns {
            Some(ns) => ns as f64 / 1e9,
            None => self.ticks as f64 / USER_HZ as f64,
        };
        used / self.window.as_secs_f64().max(1e-9)
    }
}

/// A process's resident memory, from `/proc/<pid>/status` (KiB).
pub(super) struct Memory {
    pub(super) pid: i32,
    pub(super) vm_rss: u64,
    pub(super) rss_anon: Option<u64>,
    pub(super) rss_file: Option<u64>,
}

impl Memory {
    pub(super) fn read(pid: i32) -> Result<Self> {
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
}

/// The 1-minute load average, as `/proc/loadavg` shows it.
pub(super) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}
