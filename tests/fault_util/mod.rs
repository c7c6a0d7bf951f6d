//! Helpers for the fault, hostile-input and soak tests: process states from `/proc`, signals,
//! deadlines. (Subprocess roles use the one harness in `common`.)
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// One field of a `/proc/.../status` file, trimmed.
pub(crate) fn status_field(path: impl AsRef<Path>, name: &str) -> Option<String> {
    let status = std::fs::read_to_string(path).ok()?;
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim().to_owned())
    })
}

/// The fields of `/proc/<pid>/stat` after the command name: index 0 is the state, 1 the ppid.
fn stat_fields(path: impl AsRef<Path>) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (_, after) = stat.rsplit_once(')')?;
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// The process's state letter (`R`, `S`, `T`, `Z`, ...), or `None` if it has no `/proc` entry
/// (it ended and was reaped).
pub(crate) fn process_state(pid: i32) -> Option<char> {
    stat_fields(format!("/proc/{pid}/stat"))?
        .first()?
        .chars()
        .next()
}

/// The process's parent pid, if it exists.
pub(crate) fn parent_of(pid: i32) -> Option<i32> {
    stat_fields(format!("/proc/{pid}/stat"))?
        .get(1)?
        .parse()
        .ok()
}

/// Whether the process is gone: no `/proc` entry, or a zombie (dead, waiting to be reaped by
/// whoever is its parent now).
pub(crate) fn is_dead(pid: i32) -> bool {
    matches!(process_state(pid), None | Some('Z' | 'X'))
}

/// Whether the process has been reaped: its `/proc` entry is gone.
pub(crate) fn is_reaped(pid: i32) -> bool {
    process_state(pid).is_none()
}

/// Whether every thread of the process is stopped (by a signal or a tracer).
pub(crate) fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut count = 0;
    for task in tasks {
        let Ok(task) = task else { return false };
        let state = stat_fields(task.path().join("stat"))
            .and_then(|fields| fields.first().and_then(|state| state.chars().next()));
        if !matches!(state, Some('T' | 't')) {
            return false;
        }
        count += 1;
    }
    count > 0
}

/// Polls `condition` every millisecond until it holds or `timeout` passes; whether it held.
pub(crate) fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends `signal` to `pid`, which must be a live child of this process (checked first, so a
/// reused pid is never signalled). Returns whether it was sent.
pub(crate) fn signal_child(pid: i32, signal: Signal) -> bool {
    let ours = i32::try_from(std::process::id()).unwrap();
    if parent_of(pid) != Some(ours) || is_dead(pid) {
        return false;
    }
    nix::sys::signal::kill(Pid::from_raw(pid), signal).is_ok()
}

/// This process's resident set size, in KiB.
pub(crate) fn own_rss_kib() -> u64 {
    let value = status_field("/proc/self/status", "VmRSS").unwrap();
    value.trim_end_matches("kB").trim().parse().unwrap()
}

/// A small deterministic generator (xorshift64*), so failures replay from the printed seed.
#[derive(Clone, Debug)]
pub(crate) struct Xorshift(u64);

impl Xorshift {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..bound` (`bound` > 0).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    pub(crate) fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        out
    }
}
