//! Runs in the host: the seccomp policy, reviewable data in `sandbox/<arch>.json`. `build.rs`
//! compiles it into a BPF program at build time (a policy that does not compile fails the build);
//! the binary carries that program and the JSON it came from, the same in every build profile.
//! The supervisor hands the program to the signer before fork; the signer only applies it.

use serde::Deserialize;

use crate::host::error::SpawnError;

/// The policy for this architecture, as the JSON a reviewer reads.
#[cfg(target_arch = "x86_64")]
pub const POLICY_JSON: Option<&str> = Some(include_str!("../../sandbox/x86_64.json"));
/// There is no policy for this architecture.
#[cfg(not(target_arch = "x86_64"))]
pub const POLICY_JSON: Option<&str> = None;

/// The program `build.rs` compiled from the same file as [`POLICY_JSON`].
#[cfg(target_arch = "x86_64")]
mod built {
    include!(concat!(env!("OUT_DIR"), "/seccomp_program.rs"));
}

/// The seccomp program the signer loads, compiled by `build.rs` from [`POLICY_JSON`] with
/// seccompiler: one `(code, jt, jf, k)` tuple per BPF instruction, in order.
#[cfg(target_arch = "x86_64")]
pub const POLICY_PROGRAM: Option<&[(u16, u8, u8, u32)]> = Some(&built::PROGRAM);
/// There is no policy, and so no program, for this architecture.
#[cfg(not(target_arch = "x86_64"))]
pub const POLICY_PROGRAM: Option<&[(u16, u8, u8, u32)]> = None;

/// The name of the filter inside the policy file.
const FILTER_NAME: &str = "signer";

/// Whether the signer runs under its seccomp filter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Sandbox {
    /// Every hardening step including the seccomp allowlist. The default, in every profile.
    #[default]
    Enforced,
    /// Every hardening step except the seccomp filter. For architectures without a policy file
    /// and for debugging only: a compromised signer could then make any system call. Spawning
    /// prints a warning to stderr.
    UnsandboxedInsecure,
}

/// The built-in filter, or why there is none.
pub(crate) fn compiled_filter() -> Result<Vec<seccompiler::sock_filter>, SpawnError> {
    let Some(program) = POLICY_PROGRAM else {
        return Err(SpawnError::UnsupportedArchitecture(std::env::consts::ARCH));
    };
    Ok(program
        .iter()
        .map(|&(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
        .collect())
}

/// One allowed system call as the policy states it, for people to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRule {
    /// The system call's name.
    pub syscall: String,
    /// Why it is allowed: the call site that needs it.
    pub reason: String,
    /// Each argument condition with its own comment (all must hold).
    pub conditions: Vec<PolicyCondition>,
}

/// One argument condition of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyCondition {
    /// The argument, from 0.
    pub index: u8,
    /// The comparison, as written in the policy (`eq`, `ge`, `le`, `masked_eq`, ...).
    pub operator: String,
    /// The value compared against.
    pub value: u64,
    /// Why.
    pub reason: String,
}

/// The policy as a whole, for people to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// What the kernel does to any call no rule allows (`kill_process`).
    pub default_action: String,
    /// The allowed calls.
    pub rules: Vec<PolicyRule>,
}

#[derive(Deserialize)]
struct JsonFilter {
    default_action: serde_json::Value,
    filter: Vec<JsonRule>,
}

#[derive(Deserialize)]
struct JsonRule {
    syscall: String,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    args: Vec<JsonCondition>,
}

#[derive(Deserialize)]
struct JsonCondition {
    index: u8,
    op: serde_json::Value,
    val: u64,
    #[serde(default)]
    comment: String,
}

/// Reads the embedded policy for display (`keyward policy`) and review tests.
pub fn policy() -> Result<Policy, SpawnError> {
    let Some(json) = POLICY_JSON else {
        return Err(SpawnError::UnsupportedArchitecture(std::env::consts::ARCH));
    };
    let mut filters: std::collections::HashMap<String, JsonFilter> =
        serde_json::from_str(json).map_err(|error| SpawnError::Policy(error.to_string()))?;
    let filter = filters
        .remove(FILTER_NAME)
        .ok_or_else(|| SpawnError::Policy(format!("no filter named {FILTER_NAME:?}")))?;
    let describe = |value: &serde_json::Value| match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    Ok(Policy {
        default_action: describe(&filter.default_action),
        rules: filter
            .filter
            .into_iter()
            .map(|rule| PolicyRule {
                syscall: rule.syscall,
                reason: rule.comment,
                conditions: rule
                    .args
                    .into_iter()
                    .map(|condition| PolicyCondition {
                        index: condition.index,
                        operator: describe(&condition.op),
                        value: condition.val,
                        reason: condition.comment,
                    })
                    .collect(),
            })
            .collect(),
    })
}
