//! Runs in the signer: everything that executes inside the sandboxed signer process, and nothing
//! else. A reviewer auditing what the sandbox contains reads this folder, `wire/` (which both
//! sides compile) and `sys/` (the system calls it makes).
//!
//! A request's path on this side: `serve` (a worker reads a frame from its lane) → `dispatch`
//! (one `match` over every request) → `key_store` (the keys, in locked memory) → back through
//! `serve`. Before serving: `entry` (where the process begins) → `descriptors` (the fixed pipe
//! layout) → `hardening` (each step, in order).

pub(crate) mod descriptors;
pub(crate) mod dispatch;
pub(crate) mod entry;
pub(crate) mod guard;
pub(crate) mod hardening;
pub(crate) mod key_store;
pub(crate) mod sealing;
pub(crate) mod serve;
