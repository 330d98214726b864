//! etcdsafe: verified, compressed, encrypted backups of the etcd behind a Kubernetes cluster.
//!
//! The binary (`src/main.rs`) is a thin shell over this library; tests use the library directly.
//! See `docs/ARCHITECTURE.md` for how the modules fit together.
//!
//! # Errors
//!
//! Every module has its own `thiserror` enum. The rules, which a reviewer checks:
//! - A message names **the thing** (the path, endpoint, bucket, key, backup id, member or flag),
//!   **what went wrong**, and **the fix** a person at 3 a.m. can apply ("…: chmod 600 it",
//!   "…: pass --skip-hash-check", "…: restore into a new or empty directory").
//! - One variant per condition; no catch-all `String` variants. A cause from another crate or
//!   module is kept as `#[source]` (or `#[from]`), never flattened into text, so `main` can
//!   print the whole chain once on one line. A `String` field may name a thing (a path, key,
//!   member) or hold what a remote said (S3's or the API server's message, kept with its status
//!   and code); a parser's problem is its own enum (`sshsig::FormatError`).
//! - Code decides on variants (and on error codes, e.g. gRPC's or an HTTP status, on io error
//!   kinds, on a cause found by walking `source()` and downcasting), never on message text.
//!   Text a peer sends as data (etcd's `StatusResponse.errors`) is parsed once, where it
//!   arrives, into a type (`etcd::health::ReportedError`).
//! - The library returns typed errors; `anyhow` and `clap` live only in the binary (`main.rs`,
//!   `cli.rs`, `src/commands/`), and `main` maps an error to its exit code in one place
//!   (`exit.rs`).
//! - Secrets never appear in a message.

pub mod catalog;
pub mod cli;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod deltas;
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
pub mod schedule;
pub mod service;
pub mod snapshot;
pub mod sshsig;
pub mod storage;
pub mod tools;
pub mod units;
pub mod upgrade;

/// The version recorded in every manifest.
pub const TOOL_VERSION: &str = concat!("etcdsafe ", env!("CARGO_PKG_VERSION"));
