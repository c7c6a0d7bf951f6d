//! Runs in the host: what this machine offers the sandbox: seccomp filters, locked memory, `memfd_secret`.

use nix::sys::resource::{Resource, getrlimit};

/// The result of [`MachineReport::gather`], shown by `keyward check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineReport {
    /// The kernel supports seccomp filters with the kill-process action.
    pub seccomp_filter: bool,
    /// `memfd_secret` works here.
    pub memfd_secret: bool,
    /// `RLIMIT_MEMLOCK` in bytes (`None`: unlimited).
    pub memlock_limit_bytes: Option<u64>,
    /// This process holds `CAP_IPC_LOCK`, so the limit does not apply.
    pub can_lock_without_limit: bool,
    /// Locked bytes a signer with the default key limit needs.
    pub memlock_needed_bytes: u64,
}

impl MachineReport {
    /// Looks at this machine and this process.
    pub fn gather() -> Self {
        let actions =
            std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let effective = status
            .lines()
            .find_map(|line| line.strip_prefix("CapEff:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .unwrap_or(0);
        const CAP_IPC_LOCK: u32 = 14;
        let memlock_limit_bytes = getrlimit(Resource::RLIMIT_MEMLOCK)
            .ok()
            .and_then(|(soft, _)| (soft != libc::RLIM_INFINITY).then_some(soft));
        Self {
            seccomp_filter: status.contains("Seccomp:") && actions.contains("kill_process"),
            memfd_secret: crate::sys::memfd_secret_available(),
            memlock_limit_bytes,
            can_lock_without_limit: effective & (1 << CAP_IPC_LOCK) != 0,
            memlock_needed_bytes: crate::signer::key_store::locked_bytes_for(
                crate::Config::default().key_limit,
            ),
        }
    }

    /// Whether a signer with the default key limit can lock its memory here.
    pub fn memlock_ok(&self) -> bool {
        self.can_lock_without_limit
            || self
                .memlock_limit_bytes
                .is_none_or(|limit| limit >= self.memlock_needed_bytes)
    }
}
