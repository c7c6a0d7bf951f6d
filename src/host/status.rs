//! Runs in the host: what the kernel says about a running signer, read from `/proc/<pid>/status`
//! and `/proc/<pid>/smaps`. This is the kernel's view, not the signer's claim.
//!
//! Over 400 lines on purpose: the kernel's view is read and folded in one place, so that
//! `status()`, the check before a signer may serve, and `keyward demo` mean the same by
//! "hardened".
//!
//! Every read goes through [`read_while_alive`], so that it is never a read of another process
//! that was given the signer's pid after the signer was reaped.

use std::fmt;
use std::os::fd::BorrowedFd;

use crate::sys;

use crate::wire::key_types::KeyMemory;

/// One mapping of the signer that holds keys, as `/proc/<pid>/smaps` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyMapping {
    /// The address range, as smaps prints it.
    pub range: String,
    /// Size in KiB.
    pub size_kib: u64,
    /// `lo`: locked in RAM.
    pub locked: bool,
    /// `dd`: left out of core dumps.
    pub dont_dump: bool,
    /// `wf`: wiped in a forked child.
    pub wipe_on_fork: bool,
    /// A `memfd_secret` mapping (`/secretmem`).
    pub secretmem: bool,
}

/// The signer's process status, as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignerStatus {
    /// The signer's pid.
    pub pid: i32,
    /// The signer's generation within its service.
    pub generation: u32,
    /// `Seccomp:` 0 none, 1 strict, 2 filter; the lowest of any thread.
    pub seccomp_mode: Option<u32>,
    /// `Seccomp_filters:` how many filters are stacked.
    pub seccomp_filters: Option<u32>,
    /// Whether the supervisor compared the signer's seccomp program with keyward's, and how that
    /// went, when the signer became ready.
    pub filter: FilterCheck,
    /// `NoNewPrivs:`, true only if every thread has it.
    pub no_new_privs: Option<bool>,
    /// `VmLck:` in KiB.
    pub locked_kib: Option<u64>,
    /// `VmRSS:` in KiB.
    pub resident_kib: Option<u64>,
    /// `CapEff:` the effective capability mask, the union over all threads.
    pub effective_capabilities: Option<u64>,
    /// `CapPrm:` the permitted capability mask, the union over all threads.
    pub permitted_capabilities: Option<u64>,
    /// `Threads:`.
    pub threads: Option<u32>,
    /// Where the keys live, as the signer reported when it became ready.
    pub key_memory: KeyMemory,
    /// The signer's key mappings in smaps (locked and don't-dump, or secretmem).
    pub key_mappings: Vec<KeyMapping>,
}

impl SignerStatus {
    /// Reads the process's status, and every thread's: seccomp mode, no-new-privileges and
    /// capabilities are per thread, so each is reported for the weakest thread (the lowest
    /// seccomp mode, no-new-privileges only if every thread has it, the union of capabilities).
    pub(crate) fn read(
        pid: i32,
        pidfd: BorrowedFd<'_>,
        generation: u32,
        key_memory: KeyMemory,
        filter: FilterCheck,
    ) -> std::io::Result<Self> {
        let ((process, weakest), smaps) = read_while_alive(pidfd, || {
            let threads = WeakestThread::read(pid)?;
            let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
            Ok((threads, smaps))
        })?;
        let number = |name: &str| field(&process, name).and_then(|v| v.parse::<u32>().ok());
        let kib = |name: &str| {
            field(&process, name)
                .and_then(|value| value.trim_end_matches("kB").trim().parse::<u64>().ok())
        };
        Ok(Self {
            pid,
            generation,
            seccomp_mode: weakest.seccomp_mode,
            seccomp_filters: weakest.seccomp_filters,
            filter,
            no_new_privs: weakest.no_new_privs,
            locked_kib: kib("VmLck"),
            resident_kib: kib("VmRSS"),
            effective_capabilities: weakest.effective_capabilities,
            permitted_capabilities: weakest.permitted_capabilities,
            threads: number("Threads"),
            key_memory,
            key_mappings: key_mappings(&smaps),
        })
    }
}

/// Whether the kernel shows any thread of `pid` stopped (`T`, by a signal, or `t`, by a
/// debugger), from `/proc/<pid>/task/*/stat`. The caller checks through the process's pidfd that
/// `pid` still names its process after the read.
pub(crate) fn any_thread_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| {
                // The state follows the command name, which is in parentheses and may itself
                // hold spaces or parentheses: read after the last ')'.
                let after = &stat[stat.rfind(')')? + 1..];
                after.split_whitespace().next().map(str::to_owned)
            })
            .is_some_and(|state| matches!(state.as_str(), "T" | "t"))
    })
}

/// The per-thread hardening fields of a process, each for its weakest thread: the lowest
/// seccomp mode and filter count, no-new-privileges only if every thread has it, the union of
/// the capability masks. `None` where a thread lacks the field.
struct WeakestThread {
    seccomp_mode: Option<u32>,
    seccomp_filters: Option<u32>,
    /// The highest filter count of any thread (with the lowest: exactly one on every thread).
    most_seccomp_filters: Option<u32>,
    no_new_privs: Option<bool>,
    effective_capabilities: Option<u64>,
    permitted_capabilities: Option<u64>,
}

impl WeakestThread {
    /// Reads `/proc/<pid>/status` and every `/proc/<pid>/task/*/status`; returns the process's
    /// status text with the fold.
    fn read(pid: i32) -> std::io::Result<(String, Self)> {
        let process = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let mut threads = vec![process.clone()];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                // A thread that ended since the listing has nothing left to weaken.
                if let Ok(status) = std::fs::read_to_string(task.path().join("status")) {
                    threads.push(status);
                }
            }
        }
        let weakest = |name: &str, fold: fn(u64, u64) -> u64, parse: fn(&str) -> Option<u64>| {
            threads
                .iter()
                .map(|status| field(status, name).and_then(|value| parse(&value)))
                .try_fold(None, |folded: Option<u64>, value| {
                    let value = value?;
                    Some(Some(folded.map_or(value, |folded| fold(folded, value))))
                })
                .flatten()
        };
        let decimal = |value: &str| value.parse::<u64>().ok();
        let hexadecimal = |value: &str| u64::from_str_radix(value, 16).ok();
        let mask = |name: &str| weakest(name, |a, b| a | b, hexadecimal);
        let fold = Self {
            seccomp_mode: weakest("Seccomp", u64::min, decimal)
                .and_then(|mode| u32::try_from(mode).ok()),
            seccomp_filters: weakest("Seccomp_filters", u64::min, decimal)
                .and_then(|count| u32::try_from(count).ok()),
            most_seccomp_filters: weakest("Seccomp_filters", u64::max, decimal)
                .and_then(|count| u32::try_from(count).ok()),
            no_new_privs: weakest("NoNewPrivs", u64::min, decimal).map(|value| value == 1),
            effective_capabilities: mask("CapEff"),
            permitted_capabilities: mask("CapPrm"),
        };
        Ok((process, fold))
    }
}

/// Checks, from the kernel's view of every thread of `pid`, that the signer is hardened:
/// seccomp filter mode with exactly one filter, no-new-privileges, and no effective or permitted
/// capability on any thread. Returns the first weakness found. (The same reading as
/// [`SignerStatus`].)
pub(crate) fn confirm_hardened(pid: i32, pidfd: BorrowedFd<'_>) -> Result<(), String> {
    let (_, weakest) = read_while_alive(pidfd, || WeakestThread::read(pid))
        .map_err(|error| format!("/proc/{pid}/status is unreadable ({error})"))?;
    let shown = |value: Option<String>| value.unwrap_or_else(|| "(missing)".to_owned());
    let checks = [
        (
            "Seccomp",
            weakest.seccomp_mode == Some(2),
            shown(weakest.seccomp_mode.map(|mode| mode.to_string())),
            "2",
        ),
        (
            // Exactly one: keyward's. A second filter stacked by the signer could only narrow
            // what the first allows, but it would be a filter nobody here compiled or compared.
            "Seccomp_filters",
            weakest.seccomp_filters == Some(1) && weakest.most_seccomp_filters == Some(1),
            match (weakest.seccomp_filters, weakest.most_seccomp_filters) {
                (Some(least), Some(most)) if least == most => least.to_string(),
                (Some(least), Some(most)) => format!("{least} to {most}"),
                _ => "(missing)".to_owned(),
            },
            "1",
        ),
        (
            "NoNewPrivs",
            weakest.no_new_privs == Some(true),
            shown(weakest.no_new_privs.map(|set| u8::from(set).to_string())),
            "1",
        ),
        (
            "CapEff",
            weakest.effective_capabilities == Some(0),
            shown(
                weakest
                    .effective_capabilities
                    .map(|mask| format!("{mask:016x}")),
            ),
            "0",
        ),
        (
            "CapPrm",
            weakest.permitted_capabilities == Some(0),
            shown(
                weakest
                    .permitted_capabilities
                    .map(|mask| format!("{mask:016x}")),
            ),
            "0",
        ),
    ];
    for (name, hardened, value, wanted) in checks {
        if !hardened {
            return Err(format!(
                "its weakest thread has {name} {value}, not {wanted}"
            ));
        }
    }
    Ok(())
}

/// Whether the supervisor compared the seccomp program the signer runs under with the one it
/// compiled, when the signer became ready.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FilterCheck {
    /// Read from the kernel for every signer thread (`PTRACE_SECCOMP_GET_FILTER`): identical,
    /// instruction for instruction, to the program keyward compiled from its policy.
    Identical,
    /// The kernel would not show the program to this process, so only the seccomp mode (2) and
    /// the number of filters (1) on every thread were checked; says why. Reading another
    /// process's filter takes `CAP_SYS_ADMIN`, ptrace permission over it, and no seccomp filter
    /// on the reader.
    NotCompared(String),
    /// The signer runs without a filter (`Sandbox::UnsandboxedInsecure`).
    Unsandboxed,
}

impl fmt::Display for FilterCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterCheck::Identical => {
                f.write_str("identical to keyward's on every thread (read from the kernel)")
            }
            FilterCheck::NotCompared(why) => write!(f, "not compared: {why}"),
            FilterCheck::Unsandboxed => f.write_str("none (Sandbox::UnsandboxedInsecure)"),
        }
    }
}

/// Compares the seccomp program every thread of `pid` runs under with `expected`, as the kernel
/// shows it. `Err` names a thread whose program differs, or one that could not be stopped and
/// released (the caller must then end the signer).
pub(crate) fn compare_filter(
    pid: i32,
    pidfd: BorrowedFd<'_>,
    expected: &[sys::Instruction],
) -> Result<FilterCheck, String> {
    let tids: Vec<i32> = read_while_alive(pidfd, || {
        Ok(std::fs::read_dir(format!("/proc/{pid}/task"))?
            .flatten()
            .filter_map(|task| task.file_name().to_str()?.parse().ok())
            .collect())
    })
    .map_err(|error| format!("/proc/{pid}/task is unreadable ({error})"))?;
    for &tid in &tids {
        match sys::read_seccomp_filter(tid) {
            sys::FilterRead::Program(program) if program == expected => {}
            sys::FilterRead::Program(program) => {
                return Err(format!(
                    "thread {tid} runs under a seccomp program of {} instructions that is not the \
                     one keyward compiled ({} instructions)",
                    program.len(),
                    expected.len()
                ));
            }
            sys::FilterRead::Refused(errno) => {
                return Ok(FilterCheck::NotCompared(format!(
                    "the kernel would not show it to this process ({})",
                    std::io::Error::from_raw_os_error(errno)
                )));
            }
            sys::FilterRead::Stuck(errno) => {
                return Err(format!(
                    "thread {tid} could not be stopped and released to read its seccomp program \
                     ({})",
                    std::io::Error::from_raw_os_error(errno)
                ));
            }
        }
    }
    // The threads read were the signer's only if it still exists: a tid, like a pid, is given
    // to another once its process has been reaped.
    read_while_alive(pidfd, || Ok(()))
        .map_err(|error| format!("the signer ended during the check ({error})"))?;
    if tids.is_empty() {
        return Err(format!("/proc/{pid}/task lists no thread"));
    }
    Ok(FilterCheck::Identical)
}

/// Runs `read` (of files under `/proc/<pid>/`) and returns what it read only if `pid` named the
/// process behind `pidfd` for the whole read.
///
/// A pid names its process until the process is reaped; then the number may be given to
/// another. keyward reaps the signer only after it has ended, but the host can reap it first
/// (SIGCHLD set to SIG_IGN, or a wait for any child), so a read by pid could read a stranger.
/// Signal 0 through the pidfd succeeds while the process exists, as a zombie too, and fails once
/// it has been reaped; the pidfd itself never names another process. If it succeeds after the
/// read, the process existed until then, so every file read was its own. (It is also asked
/// before, so that a process reaped already is not read at all.) The other choice, the `Pid:`
/// line of `/proc/self/fdinfo/<pidfd>`, is the same point-in-time check and takes an extra
/// file read each time.
fn read_while_alive<T>(
    pidfd: BorrowedFd<'_>,
    read: impl FnOnce() -> std::io::Result<T>,
) -> std::io::Result<T> {
    let alive = || {
        sys::pidfd_send_signal(pidfd, 0).map_err(|error| {
            std::io::Error::new(
                error.kind(),
                format!("the signer has ended and been reaped ({error})"),
            )
        })
    };
    alive()?;
    let value = read()?;
    alive()?;
    Ok(value)
}

/// The value of one `Name:` line of a status file.
fn field(status: &str, name: &str) -> Option<String> {
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim().to_owned())
    })
}

/// The mappings that are locked and don't-dump, or secretmem: where keys live.
fn key_mappings(smaps: &str) -> Vec<KeyMapping> {
    let mut mappings = Vec::new();
    let mut current: Option<(String, bool, u64)> = None;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            let secretmem = line.contains("/secretmem");
            current = Some((first.to_owned(), secretmem, 0));
        } else if first == "Size:" {
            if let Some((_, _, size)) = current.as_mut() {
                *size = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            }
        } else if first == "VmFlags:" {
            let flags: Vec<&str> = words.collect();
            if let Some((range, secretmem, size_kib)) = current.take() {
                let locked = flags.contains(&"lo");
                let dont_dump = flags.contains(&"dd");
                if secretmem || (locked && dont_dump) {
                    mappings.push(KeyMapping {
                        range,
                        size_kib,
                        locked,
                        dont_dump,
                        wipe_on_fork: flags.contains(&"wf"),
                        secretmem,
                    });
                }
            }
        }
    }
    mappings
}

impl fmt::Display for SignerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |value: Option<String>| value.unwrap_or_else(|| "unknown".to_owned());
        writeln!(f, "  pid               {}", self.pid)?;
        writeln!(
            f,
            "  Seccomp           {}{}",
            show(self.seccomp_mode.map(|m| m.to_string())),
            match self.seccomp_mode {
                Some(2) => " (filter: allowlist, kill on anything else)",
                Some(0) => " (NONE: not sandboxed)",
                _ => "",
            }
        )?;
        writeln!(f, "  seccomp program   {}", self.filter)?;
        writeln!(
            f,
            "  NoNewPrivs        {}",
            show(self.no_new_privs.map(|v| u8::from(v).to_string()))
        )?;
        writeln!(
            f,
            "  CapEff / CapPrm   {} / {}",
            show(self.effective_capabilities.map(|m| format!("{m:016x}"))),
            show(self.permitted_capabilities.map(|m| format!("{m:016x}")))
        )?;
        writeln!(
            f,
            "  VmLck / VmRSS     {} / {}",
            show(self.locked_kib.map(|k| format!("{k} kB"))),
            show(self.resident_kib.map(|k| format!("{k} kB")))
        )?;
        writeln!(f, "  key memory        {}", self.key_memory)?;
        for mapping in &self.key_mappings {
            let mut flags = Vec::new();
            if mapping.secretmem {
                flags.push("secretmem");
            }
            if mapping.locked {
                flags.push("locked");
            }
            if mapping.dont_dump {
                flags.push("dont-dump");
            }
            if mapping.wipe_on_fork {
                flags.push("wipe-on-fork");
            }
            writeln!(
                f,
                "  key pages         {} kB [{}]",
                mapping.size_kib,
                flags.join(", ")
            )?;
        }
        Ok(())
    }
}
