//! Command-line definitions only (clap derive); the work is in `commands`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::restore::steps::Engine;

use crate::output::Format;

#[derive(Debug, Parser)]
#[command(
    name = "etcdsafe",
    version,
    about = "Verified, compressed, encrypted backups of the etcd behind a Kubernetes cluster"
)]
pub struct Cli {
    /// Config file [default: $ETCDSAFE_CONFIG, then /etc/etcdsafe/config.yaml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log format (logs go to stderr) [default: json for the service, text for commands]
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    /// Log filter, e.g. info, debug, etcdsafe=debug [default: warn for commands, info for the service]
    #[arg(long, global = true, env = "ETCDSAFE_LOG")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// `--engine`: who writes the restored data dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineFlag {
    /// etcdsafe's own engine: no etcd binary needed, bumps revisions on every etcd version
    Native,
    /// The stock etcdutl (3.5+) or etcdctl (3.4) snapshot restore
    Etcdutl,
}

impl EngineFlag {
    /// An explicit `--engine` wins; else `--etcdutl PATH` means the stock tool; else native.
    pub fn resolve(flag: Option<EngineFlag>, etcdutl: Option<&std::path::Path>) -> Engine {
        match (flag, etcdutl) {
            (Some(EngineFlag::Native), _) => Engine::Native,
            (Some(EngineFlag::Etcdutl), _) | (None, Some(_)) => Engine::Etcdutl,
            (None, None) => Engine::Native,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take, inspect and verify snapshots
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// List and fetch stored backups
    #[command(subcommand)]
    Backups(BackupsCommand),
    /// Work with the config file
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Take a verified, off-node backup, then run an upgrade command (e.g. kubeadm upgrade apply)
    Upgrade(UpgradeArgs),
    /// Run the service: scheduled backups, retention, HTTP API and Prometheus metrics
    Run(RunArgs),
    /// Guided restore of a backup into a kubeadm control plane (resumable, reversible)
    Restore(RestoreArgs),
    /// Prove a backup restores: restore it into a throwaway etcd on loopback and check it
    Drill(DrillArgs),
    /// etcd maintenance: status, rolling health-gated defrag, NOSPACE alarms
    #[command(subcommand)]
    Maintain(MaintainCommand),
}

#[derive(Debug, Subcommand)]
pub enum MaintainCommand {
    /// Every member's size, size in use, fragmentation, quota, alarms and defrag decision
    Status {
        #[arg(short = 'w', long = "write-out", value_enum, default_value = "table")]
        write_out: Format,
    },
    /// Back up, then defragment fragmented members one at a time, followers first, leader last
    Defrag {
        /// Print the plan with reasons and change nothing
        #[arg(long)]
        dry_run: bool,
        /// Do not take the pre-maintenance backup first
        #[arg(long)]
        no_backup: bool,
        #[arg(short = 'w', long = "write-out", value_enum, default_value = "table")]
        write_out: Format,
    },
    /// List raised alarms; --disarm clears NOSPACE when every member is under its quota
    Alarms {
        #[arg(long)]
        disarm: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    /// The backup to drill: an id, or `latest`
    #[arg(default_value = "latest")]
    pub id: String,
    /// age identity file (the private key; mode 0600)
    #[arg(long, value_name = "FILE", env = "ETCDSAFE_IDENTITY_FILE")]
    pub identity: PathBuf,
    /// The etcd binary for the throwaway member [default: etcd on PATH]
    #[arg(long, value_name = "PATH")]
    pub etcd: Option<PathBuf>,
    /// The etcdutl (3.5+) or etcdctl (3.4) to restore with (implies --engine etcdutl)
    /// [default: found on PATH]
    #[arg(long, value_name = "PATH")]
    pub etcdutl: Option<PathBuf>,
    /// Who restores the snapshot [default: native, or etcdutl when --etcdutl is given]
    #[arg(long, value_enum)]
    pub engine: Option<EngineFlag>,
    /// Scratch space [default: the config's spool-dir]
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Write the outcome as a Prometheus textfile (etcdsafe_drill_last_success_timestamp_seconds)
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    /// Trust a backup that has no signature although verification.allowed-signers is set (one
    /// taken before signing was turned on); a bad signature is never trusted
    #[arg(long)]
    pub allow_unsigned: bool,
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
    pub write_out: Format,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// The backup to restore: an id, or `latest`
    pub id: Option<String>,
    /// List what can be restored (revision, age, reason) and exit
    #[arg(long, conflicts_with_all = ["resume", "rollback"])]
    pub list: bool,
    /// age identity file (the private key; mode 0600)
    #[arg(long, value_name = "FILE", env = "ETCDSAFE_IDENTITY_FILE")]
    pub identity: Option<std::path::PathBuf>,
    /// Trust a backup that has no signature although verification.allowed-signers is set (one
    /// taken before signing was turned on); a bad signature is never trusted
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Restore the database at a point of the backup's delta chain (continuous backup)
    #[command(flatten)]
    pub point: PointArgs,
    /// Restore into this new data dir [default: the manifest's data dir + "-restored-<id>"]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    /// Do not ask before each destructive step
    #[arg(long)]
    pub yes: bool,
    /// Print the plan and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Continue an interrupted restore from its journal
    #[arg(long, conflicts_with = "rollback")]
    pub resume: bool,
    /// Put the previous data dir and manifests back
    #[arg(long)]
    pub rollback: bool,
    /// The etcdutl (3.5+) or etcdctl (3.4) to restore with (implies --engine etcdutl)
    /// [default: found on PATH]
    #[arg(long, value_name = "PATH")]
    pub etcdutl: Option<std::path::PathBuf>,
    /// Who writes the restored data dir: native (etcdsafe itself; no etcd binary needed on the
    /// node) or etcdutl (the stock tool) [default: native, or etcdutl when --etcdutl is given]
    #[arg(long, value_enum)]
    pub engine: Option<EngineFlag>,
    /// Move the revision this far past the backup's and mark the old ones compacted, so every
    /// Kubernetes watch cache and informer relists (the value Kubernetes' etcd docs use)
    #[arg(long, value_name = "N", default_value_t = crate::restore::plan::BUMP_REVISION, conflicts_with = "no_bump_revision")]
    pub bump_revision: u64,
    /// Restore the revisions exactly as they were (no bump)
    #[arg(long)]
    pub no_bump_revision: bool,
    /// Every member's NAME=PEER_URL, the same on every node [default: the membership recorded in
    /// the backup when it names this member, else etcd.yaml's --initial-cluster]
    #[arg(long, value_name = "NAME=PEER_URL,...")]
    pub initial_cluster: Option<String>,
    /// The token of the restored cluster, the same on every member [default:
    /// etcdsafe-restore-<backup id>, which every member computes alike]
    #[arg(long, value_name = "TOKEN")]
    pub initial_cluster_token: Option<String>,
    /// Swap directories (old data dir renamed aside, restored dir renamed into place) instead of
    /// rewriting the etcd manifest
    #[arg(long)]
    pub swap: bool,
    /// Also put back the control-plane files kept with the backup (include-files: the PKI, the
    /// encryption config); what they replace is kept for --rollback
    #[arg(long)]
    pub restore_files: bool,
    /// Put the control-plane files back under this dir instead of / (to inspect them first)
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/",
        requires = "restore_files"
    )]
    pub files_root: std::path::PathBuf,
    /// Where the restore journal lives
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/var/lib/etcdsafe/restore-journal.json"
    )]
    pub journal: std::path::PathBuf,
    /// How long to wait for the kubelet to stop or start a static pod
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub pod_timeout: String,
}

#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    /// The Kubernetes version being upgraded to [default: the vX.Y.Z in the command]
    #[arg(long, value_name = "VERSION")]
    pub to: Option<String>,
    /// Print the plan (checks, backup, command) and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Do not check the Kubernetes version-skew policy
    #[arg(long)]
    pub skip_version_check: bool,
    /// The upgrade command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Take one backup at start even if the newest one is recent
    #[arg(long)]
    pub backup_now: bool,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Take one backup through the whole pipeline and print its id
    Save {
        /// Output: simple (the id), json (the manifest) or table
        #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
        write_out: Format,
        /// Why this backup was taken (recorded in the manifest)
        #[arg(long, default_value = "manual")]
        reason: String,
        /// A label to record, KEY=VALUE (repeatable)
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Print a snapshot file's hash, revision, keys and size, like `etcdutl snapshot status`
    Status {
        file: PathBuf,
        #[arg(short = 'w', long = "write-out", value_enum, default_value = "table")]
        write_out: Format,
    },
    /// Exit 0 only if the file is a sound etcd snapshot (structure, trailer, status)
    Verify {
        file: PathBuf,
        #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
        write_out: Format,
        /// Check a database without etcd's SHA-256 trailer (a data dir's member/snap/db):
        /// structure and status only
        #[arg(long)]
        skip_hash_check: bool,
    },
    /// Restore a snapshot (or a stored backup) into a new member data dir, natively: a
    /// drop-in for `etcdutl snapshot restore` that needs no etcd binary
    Restore(Box<SnapshotRestoreArgs>),
}

/// `etcdsafe snapshot restore`: etcdutl's flags and defaults, plus `--backup`.
#[derive(Debug, Args)]
pub struct SnapshotRestoreArgs {
    /// The snapshot file (from `etcdctl snapshot save` or `etcdsafe backups fetch`)
    #[arg(required_unless_present = "backup", conflicts_with = "backup")]
    pub snapshot: Option<PathBuf>,
    /// Restore a stored backup (an id, or `latest`) instead of a file: it is downloaded,
    /// decrypted, decompressed and checked straight into the new data dir (needs --config)
    #[arg(long, value_name = "ID|latest", requires = "identity")]
    pub backup: Option<String>,
    /// age identity file for --backup (the private key; mode 0600)
    #[arg(long, value_name = "FILE", env = "ETCDSAFE_IDENTITY_FILE")]
    pub identity: Option<PathBuf>,
    /// With --backup: trust a backup that has no signature although
    /// verification.allowed-signers is set; a bad signature is never trusted
    #[arg(long, requires = "backup")]
    pub allow_unsigned: bool,
    /// With --backup: restore the database at a point of its delta chain
    #[command(flatten)]
    pub point: PointArgs,
    /// Path to the data directory [default: <name>.etcd]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Path to the WAL directory [default: <data-dir>/member/wal]
    #[arg(long, value_name = "DIR")]
    pub wal_dir: Option<PathBuf>,
    /// Human-readable name for this member
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Initial cluster configuration for restore bootstrap
    /// [default: <name>=http://localhost:2380]
    #[arg(long, value_name = "NAME=URL,...")]
    pub initial_cluster: Option<String>,
    /// Initial cluster token for the etcd cluster during restore bootstrap
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// List of this member's peer URLs to advertise to the rest of the cluster
    #[arg(long, value_name = "URL,...", default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,
    /// Ignore the snapshot's SHA-256 trailer (needed for a db file copied from a data dir)
    #[arg(long)]
    pub skip_hash_check: bool,
    /// How far to move the revision past the snapshot's, so watchers that saw later
    /// revisions relist (needs --mark-compacted); works with every etcd version
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub bump_revision: u64,
    /// Mark the bumped revision compacted: reads and watches at older revisions fail
    #[arg(long)]
    pub mark_compacted: bool,
    /// Output: simple (one line), json or table
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
    pub write_out: Format,
}

#[derive(Debug, Subcommand)]
pub enum BackupsCommand {
    /// List the stored backups, oldest first, with their delta chains
    List {
        #[arg(short = 'w', long = "write-out", value_enum, default_value = "table")]
        write_out: Format,
        /// Print the restorable revision range of each chain (continuous backup)
        #[arg(long)]
        points: bool,
    },
    /// Download, decrypt and check a backup into a plain snapshot file
    Fetch {
        /// A backup id, or `latest`
        id: String,
        /// Where to write the snapshot (must not exist)
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        /// age identity file (the private key; mode 0600)
        #[arg(long, value_name = "FILE", env = "ETCDSAFE_IDENTITY_FILE")]
        identity: PathBuf,
        /// Trust a backup that has no signature although verification.allowed-signers is set
        /// (one taken before signing was turned on); a bad signature is never trusted
        #[arg(long)]
        allow_unsigned: bool,
        #[command(flatten)]
        point: PointArgs,
    },

    /// Re-read every stored object and check its size and SHA-256 against its manifest (no key needed)
    Audit {
        #[arg(short = 'w', long = "write-out", value_enum, default_value = "table")]
        write_out: Format,
    },
    /// Apply the retention rules: print keep/forget with reasons, and delete what is forgotten
    Prune {
        /// Print the plan and delete nothing
        #[arg(long)]
        dry_run: bool,
        #[arg(short = 'w', long = "write-out", value_enum, default_value = "table")]
        write_out: Format,
    },
}

/// `--at-revision R | --at-time RFC3339 | --at-latest`: a point covered by the delta chains
/// (continuous backup) instead of the full backup as etcd sent it.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(multiple = false)]
pub struct PointArgs {
    /// The database exactly at this revision: the full backup at or below it plus the delta
    /// segments up to it, at their original revisions
    #[arg(long, value_name = "REVISION")]
    pub at_revision: Option<i64>,
    /// The last revision sealed at or before this time (RFC 3339, e.g. 2026-12-03T14:05:00Z)
    #[arg(long, value_name = "TIME")]
    pub at_time: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// The newest sealed revision
    #[arg(long)]
    pub at_latest: bool,
}

impl PointArgs {
    /// The point asked for, if any.
    pub fn at(&self) -> Option<crate::deltas::At> {
        use crate::deltas::At;
        match (self.at_revision, self.at_time, self.at_latest) {
            (Some(r), _, _) => Some(At::Revision(r)),
            (_, Some(t), _) => Some(At::Time(t.with_timezone(&chrono::Utc))),
            (_, _, true) => Some(At::Latest),
            _ => None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config and name every problem
    Check,
}

/// `-w simple|table|json`: the library's [`Format`] stays free of clap.
impl clap::ValueEnum for Format {
    fn value_variants<'a>() -> &'a [Self] {
        &[Format::Simple, Format::Table, Format::Json]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            Format::Simple => "simple",
            Format::Table => "table",
            Format::Json => "json",
        }))
    }
}

impl UpgradeArgs {
    /// The library's request for this command line.
    pub fn request(&self) -> crate::upgrade::UpgradeRequest {
        crate::upgrade::UpgradeRequest {
            to: self.to.clone(),
            dry_run: self.dry_run,
            skip_version_check: self.skip_version_check,
            command: self.command.clone(),
        }
    }
}

impl RunArgs {
    /// The library's request for this command line.
    pub fn request(&self) -> crate::service::RunRequest {
        crate::service::RunRequest {
            backup_now: self.backup_now,
        }
    }
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    if key.is_empty() {
        return Err(format!("{text:?} has an empty key"));
    }
    Ok((key.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_flag_resolution() {
        let tool = std::path::Path::new("/usr/bin/etcdutl");
        let cases = [
            (None, None, Engine::Native),
            (None, Some(tool), Engine::Etcdutl),
            (Some(EngineFlag::Native), Some(tool), Engine::Native),
            (Some(EngineFlag::Etcdutl), None, Engine::Etcdutl),
            (Some(EngineFlag::Native), None, Engine::Native),
        ];
        for (flag, etcdutl, want) in cases {
            assert_eq!(
                EngineFlag::resolve(flag, etcdutl),
                want,
                "{flag:?} {etcdutl:?}"
            );
        }
    }
}
