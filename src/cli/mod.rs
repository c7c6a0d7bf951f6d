//! Runs in the host: the subcommands of the `keyward` binary.

pub(crate) mod bench;
pub(crate) mod check;
pub(crate) mod demo;
pub(crate) mod lifecycle;
pub(crate) mod policy;
pub(crate) mod store;
pub(crate) mod store_access;
pub(crate) mod watermark;
