//! Property: the seccomp policy file is the reviewed allowlist: it parses, kills by default, every
//! rule and condition says why, and every call site a comment names exists in the source; no
//! dangerous call is in it, read and write are confined to the lane pipes, the binary embeds
//! exactly the file on disk and the program build.rs compiled from it is, instruction by
//! instruction, what seccompiler compiles from it at run time; and the kernel enforces its
//! argument conditions (probed in throw-away processes under the built-in program).
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use common::RoleCommand;

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;

use keyward::{MAX_WORKERS, POLICY_JSON, POLICY_PROGRAM, PolicyCondition, policy};

/// The file as the crate embeds it, by the same path `src/host/sandbox_policy.rs` uses.
const FILE_AT_BUILD: &str = include_str!("../sandbox/x86_64.json");

/// Calls the signer must never be able to make.
const DENIED: [&str; 24] = [
    "open",
    "openat",
    "openat2",
    "socket",
    "connect",
    "execve",
    "execveat",
    "ptrace",
    "fork",
    "vfork",
    "clone",
    "clone3",
    "mprotect",
    "mmap",
    "process_vm_readv",
    "process_vm_writev",
    "kill",
    "tgkill",
    "prctl",
    "seccomp",
    "bpf",
    "memfd_create",
    "io_uring_setup",
    "ioctl",
];

/// The whole reviewed allowlist. Adding a call means changing this list, in review.
const ALLOWED: [&str; 9] = [
    "read",
    "write",
    "poll",
    "futex",
    "sched_yield",
    "restart_syscall",
    "clock_gettime",
    "getrandom",
    "exit_group",
];

/// The first request pipe (`src/signer/descriptors.rs::REQUEST_FD_BASE`) and the first response
/// pipe (`RESPONSE_FD_BASE`).
const REQUEST_FD_BASE: u64 = 3;
const RESPONSE_FD_BASE: u64 = REQUEST_FD_BASE + MAX_WORKERS as u64;

fn condition(index: u8, operator: &str, value: u64) -> (u8, String, u64) {
    (index, operator.to_owned(), value)
}

fn shape(conditions: &[PolicyCondition]) -> BTreeSet<(u8, String, u64)> {
    conditions
        .iter()
        .map(|c| (c.index, c.operator.clone(), c.value))
        .collect()
}

#[test]
fn the_policy_parses_and_kills_by_default() {
    let policy = policy().unwrap();
    assert_eq!(policy.default_action, "kill_process");
    assert!(!policy.rules.is_empty());
    let raw: serde_json::Value = serde_json::from_str(POLICY_JSON.unwrap()).unwrap();
    assert_eq!(raw["signer"]["filter_action"], "allow");
    assert_eq!(raw["signer"]["default_action"], "kill_process");
    assert_eq!(
        raw.as_object().unwrap().len(),
        1,
        "one filter, named signer"
    );
    // It compiles for this architecture, as the supervisor compiles it.
    let compiled = seccompiler::compile_from_json(
        POLICY_JSON.unwrap().as_bytes(),
        seccompiler::TargetArch::x86_64,
    )
    .unwrap();
    assert!(!compiled["signer"].is_empty());
}

#[test]
fn every_rule_and_condition_says_why() {
    for rule in policy().unwrap().rules {
        assert!(
            !rule.reason.trim().is_empty(),
            "{}: a rule without a comment",
            rule.syscall
        );
        for condition in &rule.conditions {
            assert!(
                !condition.reason.trim().is_empty(),
                "{}: argument {} has no comment",
                rule.syscall,
                condition.index
            );
        }
    }
}

#[test]
fn no_denied_call_is_allowed_and_nothing_unreviewed_is() {
    let allowed: BTreeSet<String> = policy()
        .unwrap()
        .rules
        .into_iter()
        .map(|rule| rule.syscall)
        .collect();
    for denied in DENIED {
        assert!(!allowed.contains(denied), "{denied} is allowed");
    }
    let reviewed: BTreeSet<String> = ALLOWED.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(
        allowed, reviewed,
        "the allowlist changed: review it and this test"
    );
}

#[test]
fn read_and_write_are_confined_to_the_lane_pipes() {
    let rules = policy().unwrap().rules;
    let for_call = |name: &str| {
        rules
            .iter()
            .filter(|r| r.syscall == name)
            .collect::<Vec<_>>()
    };

    let read = for_call("read");
    assert_eq!(read.len(), 1, "one read rule");
    assert_eq!(
        shape(&read[0].conditions),
        BTreeSet::from([
            condition(0, "ge", REQUEST_FD_BASE),
            condition(0, "le", REQUEST_FD_BASE + MAX_WORKERS as u64 - 1),
        ])
    );
    assert_eq!(REQUEST_FD_BASE + MAX_WORKERS as u64 - 1, 18);

    let write = for_call("write");
    assert_eq!(write.len(), 1, "one write rule");
    assert_eq!(
        shape(&write[0].conditions),
        BTreeSet::from([
            condition(0, "ge", RESPONSE_FD_BASE),
            condition(0, "le", RESPONSE_FD_BASE + MAX_WORKERS as u64 - 1),
        ])
    );
    assert_eq!(
        (RESPONSE_FD_BASE, RESPONSE_FD_BASE + MAX_WORKERS as u64 - 1),
        (19, 34)
    );

    // futex: private wait-bitset and private wake only, never unconditioned.
    let futex = for_call("futex");
    assert!(!futex.is_empty());
    let mut operations = BTreeSet::new();
    for rule in futex {
        assert_eq!(
            rule.conditions.len(),
            1,
            "futex must be narrowed by its operation"
        );
        let only = &rule.conditions[0];
        assert_eq!((only.index, only.operator.as_str()), (1, "eq"));
        operations.insert(only.value);
    }
    // FUTEX_WAKE | FUTEX_PRIVATE_FLAG, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG.
    assert_eq!(operations, BTreeSet::from([129, 137]));

    // getrandom: 32 bytes at most, blocking reads of the initialised pool only (flags 0).
    let getrandom = for_call("getrandom");
    assert_eq!(getrandom.len(), 1, "one getrandom rule");
    assert_eq!(
        shape(&getrandom[0].conditions),
        BTreeSet::from([condition(1, "le", 32), condition(2, "eq", 0)])
    );

    // Only calls that grant nothing go unconditioned.
    for rule in &rules {
        if rule.conditions.is_empty() {
            assert!(
                [
                    "poll",
                    "sched_yield",
                    "restart_syscall",
                    "clock_gettime",
                    "exit_group"
                ]
                .contains(&rule.syscall.as_str()),
                "{} is allowed with any arguments",
                rule.syscall
            );
        }
    }

    // Argument comparisons are on 32 bits, as the kernel reads an fd, a futex operation or
    // getrandom's flags; getrandom's count is a size_t, compared on 64 bits, so a count above
    // 2^32 cannot pass for a small one.
    let raw: serde_json::Value = serde_json::from_str(POLICY_JSON.unwrap()).unwrap();
    for rule in raw["signer"]["filter"].as_array().unwrap() {
        for argument in rule["args"].as_array().into_iter().flatten() {
            let width = if rule["syscall"] == "getrandom" && argument["index"] == 1 {
                "qword"
            } else {
                "dword"
            };
            assert_eq!(argument["type"], width, "{rule}");
        }
    }
}

#[test]
fn the_binary_embeds_the_file_on_disk() {
    assert_eq!(POLICY_JSON, Some(FILE_AT_BUILD));
    let on_disk = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sandbox/x86_64.json"),
    )
    .unwrap();
    assert_eq!(POLICY_JSON.unwrap(), on_disk);
}

/// The switch from compiling the policy at run time to compiling it in build.rs changed nothing:
/// seccompiler, run here on the same JSON, gives the same program, instruction by instruction.
#[test]
fn the_built_in_program_is_what_seccompiler_compiles_from_the_file() {
    let built = POLICY_PROGRAM.expect("x86_64 has a built-in program");
    let mut filters = seccompiler::compile_from_json(
        POLICY_JSON.unwrap().as_bytes(),
        seccompiler::TargetArch::x86_64,
    )
    .unwrap();
    let at_run_time = filters.remove("signer").unwrap();
    assert!(filters.is_empty(), "one filter, named signer");
    for (index, (built, compiled)) in built.iter().zip(&at_run_time).enumerate() {
        assert_eq!(
            *built,
            (compiled.code, compiled.jt, compiled.jf, compiled.k),
            "instruction {index} differs"
        );
    }
    assert_eq!(
        built.len(),
        at_run_time.len(),
        "the programs differ in length"
    );
}

// ---------------------------------------------------------------------------------------------
// The comments name call sites that exist. The format (sandbox/README.md, "What a reviewer
// checks"): a call site or constant is named by its file and item, `src/<file>.rs::function`,
// `src/<file>.rs::Type::method` or `src/<file>.rs::CONSTANT`; any other Rust path in a comment is
// the standard library's (`std::...`).

/// A source path a text names: a file under `src/` (or a folder), and the items named in it.
#[derive(Debug)]
struct SourceReference {
    text: String,
    file: String,
    items: Vec<String>,
}

/// The `src/...` references in `text`, and every other Rust path (`a::b`) in it.
fn references_in(text: &str) -> (Vec<SourceReference>, Vec<String>) {
    let mut sources = Vec::new();
    let mut other_paths = Vec::new();
    let tokens = text.split(|c: char| !(c.is_ascii_alphanumeric() || "_:/.".contains(c)));
    for token in tokens {
        let token = token.trim_end_matches(['.', ':']);
        if let Some(at) = token.find("src/") {
            let token = &token[at..];
            let (file, items) = match token.find(".rs") {
                Some(end) => {
                    let (file, rest) = token.split_at(end + ".rs".len());
                    let items = rest
                        .strip_prefix("::")
                        .map(|items| items.split("::").map(str::to_owned).collect())
                        .unwrap_or_default();
                    (file, items)
                }
                None => (token, Vec::new()),
            };
            sources.push(SourceReference {
                text: token.to_owned(),
                file: file.to_owned(),
                items,
            });
        } else if token.contains("::") {
            other_paths.push(token.to_owned());
        }
    }
    (sources, other_paths)
}

/// Whether `source` declares `name` with one of `keywords` (`fn name`, `const name`, ...), as
/// whole words.
fn declares(source: &str, keywords: &[&str], name: &str) -> bool {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    keywords.iter().any(|keyword| {
        let needle = format!("{keyword} {name}");
        source.match_indices(&needle).any(|(at, _)| {
            let before = source[..at].chars().next_back();
            let after = source[at + needle.len()..].chars().next();
            !before.is_some_and(is_word) && !after.is_some_and(is_word)
        })
    })
}

/// Why `reference` does not resolve in this source tree, if it does not.
fn unresolved(reference: &SourceReference) -> Option<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join(&reference.file);
    if reference.items.is_empty() {
        return (!path.exists()).then(|| format!("{}: no such path", reference.text));
    }
    let Ok(source) = std::fs::read_to_string(&path) else {
        return Some(format!("{}: no file {}", reference.text, reference.file));
    };
    let (last, qualifiers) = reference.items.split_last()?;
    for qualifier in qualifiers {
        if !declares(
            &source,
            &["struct", "enum", "trait", "impl", "mod"],
            qualifier,
        ) {
            return Some(format!(
                "{}: {} declares no type {qualifier}",
                reference.text, reference.file
            ));
        }
    }
    let kinds = [
        "fn", "const", "static", "struct", "enum", "trait", "type", "mod",
    ];
    (!declares(&source, &kinds, last)).then(|| {
        format!(
            "{}: {} has no fn, const or type named {last}",
            reference.text, reference.file
        )
    })
}

#[test]
fn every_call_site_a_policy_comment_names_exists() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for rule in policy().unwrap().rules {
        let comments = std::iter::once(("rule", &rule.reason))
            .chain(rule.conditions.iter().map(|c| ("condition", &c.reason)));
        for (what, comment) in comments {
            let (sources, other_paths) = references_in(comment);
            if what == "rule" && !sources.iter().any(|r| !r.items.is_empty()) {
                failures.push(format!(
                    "{}: the rule's comment names no call site as src/<file>.rs::<function>",
                    rule.syscall
                ));
            }
            for path in other_paths.iter().filter(|p| !p.starts_with("std::")) {
                failures.push(format!(
                    "{} ({what}): {path:?} is not a call site this test can check; name it as \
                     src/<file>.rs::<function> (or std::... for the standard library)",
                    rule.syscall
                ));
            }
            for reference in &sources {
                checked += 1;
                if let Some(why) = unresolved(reference) {
                    failures.push(format!("{} ({what}): {why}", rule.syscall));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(checked >= ALLOWED.len(), "only {checked} references found");
}

#[test]
fn every_source_path_the_sandbox_readme_names_exists() {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sandbox/README.md"),
    )
    .unwrap();
    let (sources, _) = references_in(&readme);
    assert!(!sources.is_empty());
    let failures: Vec<String> = sources.iter().filter_map(unresolved).collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The checker itself: a name that is gone, a file that is gone and an unchecked module path
/// are all caught; the forms the policy uses resolve.
#[test]
fn the_call_site_check_catches_a_name_that_is_gone() {
    let resolves = |text: &str| {
        let (sources, _) = references_in(text);
        assert_eq!(sources.len(), 1, "{text}");
        unresolved(&sources[0])
    };
    assert_eq!(
        resolves("src/wire/framing.rs::FrameReader::read_frame:"),
        None
    );
    assert_eq!(
        resolves("(src/signer/descriptors.rs::REQUEST_FD_BASE)"),
        None
    );
    assert_eq!(resolves("src/signer/ holds the signer"), None);
    assert!(resolves("src/wire/framing.rs::wait_readable").is_some());
    assert!(resolves("src/wire/framing.rs::NoSuchType::read_frame").is_some());
    assert!(resolves("src/transport.rs::wait_for").is_some());
    assert!(resolves("src/child.rs").is_some());
    let (_, other_paths) = references_in("transport::wait_readable and std::thread::yield_now");
    assert_eq!(
        other_paths,
        ["transport::wait_readable", "std::thread::yield_now"]
    );
}

// ---------------------------------------------------------------------------------------------
// The kernel enforces the conditions: each probe runs in a re-run of this test that loads the
// built-in program on its own thread, makes one call, then `exit_group(SURVIVED)`.

const PROBE_TEST: &str = "the_kernel_enforces_the_argument_conditions";
const SURVIVED: i32 = 42;

/// (name, syscall number, arguments, allowed?)
type Probe = (&'static str, libc::c_long, [libc::c_long; 6], bool);

fn probes() -> Vec<Probe> {
    // Reads and writes of zero bytes: a real fd returns at once, a closed one gives EBADF; either
    // way the call returned, which is what "allowed" means.
    let io = |fd: libc::c_long| [fd, 0, 0, 0, 0, 0];
    // futex(uaddr, op, val = 1 (never the word's value, so a wait returns EAGAIN), ...,
    // val3 = FUTEX_BITSET_MATCH_ANY). The address is filled in by the probe.
    let futex = |op: libc::c_long| [0, op, 1, 0, 0, 0xffff_ffff];
    vec![
        (
            "read from the first request pipe (3)",
            libc::SYS_read,
            io(3),
            true,
        ),
        (
            "read from the last request pipe (18)",
            libc::SYS_read,
            io(18),
            true,
        ),
        ("read from stdin (0)", libc::SYS_read, io(0), false),
        ("read from stderr (2)", libc::SYS_read, io(2), false),
        (
            "read from the first response pipe (19)",
            libc::SYS_read,
            io(19),
            false,
        ),
        (
            "write to the first response pipe (19)",
            libc::SYS_write,
            io(19),
            true,
        ),
        (
            "write to the last response pipe (34)",
            libc::SYS_write,
            io(34),
            true,
        ),
        ("write to stdout (1)", libc::SYS_write, io(1), false),
        ("write to stderr (2)", libc::SYS_write, io(2), false),
        (
            "write to a request pipe (18)",
            libc::SYS_write,
            io(18),
            false,
        ),
        (
            "write above the response pipes (35)",
            libc::SYS_write,
            io(35),
            false,
        ),
        ("futex wake, private", libc::SYS_futex, futex(129), true),
        (
            "futex wait-bitset, private",
            libc::SYS_futex,
            futex(137),
            true,
        ),
        ("futex wake, shared", libc::SYS_futex, futex(1), false),
        ("futex wait, private", libc::SYS_futex, futex(128), false),
        (
            "futex cmp-requeue, private",
            libc::SYS_futex,
            futex(132),
            false,
        ),
        (
            "futex wait-bitset, private, realtime clock",
            libc::SYS_futex,
            futex(393),
            false,
        ),
        ("poll on nothing", libc::SYS_poll, [0; 6], true),
        (
            "clock_gettime(CLOCK_MONOTONIC)",
            libc::SYS_clock_gettime,
            [1, 0, 0, 0, 0, 0],
            true,
        ),
        ("getpid", libc::SYS_getpid, [0; 6], false),
        ("close(0)", libc::SYS_close, [0; 6], false),
        ("brk(0)", libc::SYS_brk, [0; 6], false),
        ("munmap of nothing", libc::SYS_munmap, [0; 6], false),
        (
            "madvise(DONTNEED)",
            libc::SYS_madvise,
            [0, 0, 4, 0, 0, 0],
            false,
        ),
        ("rt_sigprocmask", libc::SYS_rt_sigprocmask, [0; 6], false),
        ("sched_yield", libc::SYS_sched_yield, [0; 6], true),
        // With nothing to restart the kernel answers EINTR; what matters is that it is not killed.
        ("restart_syscall", libc::SYS_restart_syscall, [0; 6], true),
        (
            "getrandom of 32 bytes, no flags (the reseed)",
            libc::SYS_getrandom,
            [0, 32, 0, 0, 0, 0],
            true,
        ),
        (
            "getrandom of 2^32 + 16 bytes (a count that is small only on 32 bits)",
            libc::SYS_getrandom,
            [0, (1 << 32) + 16, 0, 0, 0, 0],
            false,
        ),
        (
            "getrandom of 33 bytes",
            libc::SYS_getrandom,
            [0, 33, 0, 0, 0, 0],
            false,
        ),
        (
            "getrandom, GRND_NONBLOCK",
            libc::SYS_getrandom,
            [0, 32, 1, 0, 0, 0],
            false,
        ),
        (
            "getrandom, GRND_RANDOM",
            libc::SYS_getrandom,
            [0, 32, 2, 0, 0, 0],
            false,
        ),
        (
            "getrandom, GRND_INSECURE",
            libc::SYS_getrandom,
            [0, 32, 4, 0, 0, 0],
            false,
        ),
        ("exit (one thread only)", libc::SYS_exit, [0; 6], false),
    ]
}

/// Loads the policy on this thread, makes the probe's call, and ends the process.
#[allow(unsafe_code)]
fn play_probe(name: &str) -> ! {
    let (_, number, mut arguments, _) = probes().into_iter().find(|p| p.0 == name).unwrap();
    let word = Box::new(0u32);
    let mut buffer = [0u8; 64];
    match number {
        libc::SYS_read | libc::SYS_write => arguments[1] = buffer.as_ptr() as libc::c_long,
        libc::SYS_getrandom => arguments[0] = buffer.as_mut_ptr() as libc::c_long,
        libc::SYS_futex => arguments[0] = std::ptr::from_ref(&*word) as libc::c_long,
        libc::SYS_clock_gettime => {
            arguments[1] = Box::into_raw(Box::new([0u64; 2])) as libc::c_long
        }
        _ => {}
    }
    // The program the signer loads, as build.rs compiled it.
    let filter: Vec<seccompiler::sock_filter> = POLICY_PROGRAM
        .unwrap()
        .iter()
        .map(|&(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
        .collect();
    seccompiler::apply_filter(&filter).unwrap();
    let [a, b, c, d, e, f] = arguments;
    // SAFETY: every pointer argument points at live memory of this function that is large enough
    // for the call (a 64-byte buffer for zero-byte reads and writes and reads of entropy, a u32 futex word, a
    // timespec); the others are integers. Forbidden calls never run: the kernel kills the process.
    let _ = unsafe { libc::syscall(number, a, b, c, d, e, f) };
    // SAFETY: exit_group takes an integer and never returns.
    unsafe { libc::syscall(libc::SYS_exit_group, SURVIVED) };
    unreachable!("exit_group returned")
}

#[test]
fn the_kernel_enforces_the_argument_conditions() {
    if common::role().as_deref() == Some("probe") {
        play_probe(&common::role_parameter("probe"));
    }
    let mut failures = Vec::new();
    for (name, _, _, allowed) in probes() {
        let status = common::rerun_self(PROBE_TEST, "probe")
            .parameter("probe", name)
            .output()
            .unwrap()
            .status;
        let outcome = match (status.code(), status.signal()) {
            (Some(SURVIVED), _) => "allowed",
            (_, Some(libc::SIGSYS)) => "killed by SIGSYS",
            _ => "something else",
        };
        println!("{name}: {outcome} ({status})");
        let expected = if allowed {
            "allowed"
        } else {
            "killed by SIGSYS"
        };
        if outcome != expected {
            failures.push(format!("{name}: expected {expected}, got {status}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
