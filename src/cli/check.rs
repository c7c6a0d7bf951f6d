//! Runs in the host (the binary): `keyward check`, can this machine run the sandbox, and what to change if not.

use anyhow::Result;
use keyward::{Config, SecretService};

pub(crate) fn run() -> Result<()> {
    let report = keyward::MachineReport::gather();
    let mut problems = 0;
    let mut line = |ok: bool, what: &str, detail: String| {
        if !ok {
            problems += 1;
        }
        println!("[{}] {what}: {detail}", if ok { " ok " } else { "FAIL" });
    };
    line(
        report.seccomp_filter,
        "seccomp filters",
        if report.seccomp_filter {
            "available (the kernel reports a Seccomp field; filters load)".to_owned()
        } else {
            "not available: the kernel needs CONFIG_SECCOMP_FILTER".to_owned()
        },
    );
    line(
        report.memlock_ok(),
        "locked memory",
        match (report.memlock_limit_bytes, report.can_lock_without_limit) {
            (_, true) => "CAP_IPC_LOCK held: no limit applies".to_owned(),
            (Some(limit), false) => format!(
                "RLIMIT_MEMLOCK {} KiB; the default key limit needs about {} KiB{}",
                limit / 1024,
                report.memlock_needed_bytes / 1024,
                if report.memlock_ok() {
                    ""
                } else {
                    ": raise it (ulimit -l, or LimitMEMLOCK= in the systemd unit)"
                }
            ),
            (None, false) => "RLIMIT_MEMLOCK unlimited".to_owned(),
        },
    );
    line(
        true,
        "memfd_secret",
        if report.memfd_secret {
            "available: keys live in pages not even root can read through /proc".to_owned()
        } else {
            "not available (fallback: locked anonymous memory; boot with secretmem.enable=1 to get it)".to_owned()
        },
    );
    match SecretService::spawn(Config::default()) {
        Ok(service) => {
            let status = service.status()?;
            let sandboxed = status.seccomp_mode == Some(2) && status.no_new_privs == Some(true);
            line(
                sandboxed,
                "a real signer",
                format!(
                    "spawned pid {}: Seccomp {:?}, NoNewPrivs {:?}, CapEff {:016x}, VmLck {} kB",
                    status.pid,
                    status.seccomp_mode.unwrap_or_default(),
                    status.no_new_privs.map(u8::from).unwrap_or_default(),
                    status.effective_capabilities.unwrap_or_default(),
                    status.locked_kib.unwrap_or_default()
                ),
            );
        }
        Err(error) => line(false, "a real signer", format!("could not start: {error}")),
    }
    if problems == 0 {
        println!("\nThis machine can run keyward's sandbox.");
        Ok(())
    } else {
        anyhow::bail!("{problems} check(s) failed; see above")
    }
}
