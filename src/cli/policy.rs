//! Runs in the host (the binary): `keyward policy`, the seccomp allowlist as a table, with the reason for each rule.

use anyhow::Result;

pub(crate) fn run() -> Result<()> {
    let policy = keyward::policy()?;
    println!(
        "The signer's seccomp allowlist ({} rules; anything else: {}).",
        policy.rules.len(),
        policy.default_action
    );
    let instructions = keyward::POLICY_PROGRAM.map_or(0, <[_]>::len);
    println!(
        "Source: sandbox/x86_64.json, compiled into the binary at build time ({instructions} BPF instructions).\n"
    );
    for rule in &policy.rules {
        println!("{:<14} {}", rule.syscall, rule.reason);
        for condition in &rule.conditions {
            println!(
                "{:<14}   only if arg{} {} {}: {}",
                "", condition.index, condition.operator, condition.value, condition.reason
            );
        }
    }
    Ok(())
}
