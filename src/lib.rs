//! etcdsafe: verified, compressed, encrypted backups of the etcd behind a Kubernetes cluster.
//!
//! The binary (`src/main.rs`) is a thin shell over this library; tests use the library directly.
//! See `docs/ARCHITECTURE.md` for how the modules fit together.

pub mod catalog;
pub mod cli;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod drill;
pub mod etcd;
pub mod exit;
pub mod files;
pub mod fsutil;
pub mod hooks;
pub mod maintain;
pub mod metrics;
pub mod native;
pub mod output;
pub mod pipeline;
pub mod progress;
pub mod prune;
pub mod restore;
pub mod retention;
pub mod service;
pub mod snapshot;
pub mod sshsig;
pub mod storage;
pub mod tools;
pub mod units;
pub mod upgrade;

/// The version recorded in every manifest.
pub const TOOL_VERSION: &str = concat!("etcdsafe ", env!("CARGO_PKG_VERSION"));
