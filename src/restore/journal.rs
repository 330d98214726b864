//! The restore journal: what was planned and which steps are done, written atomically
//! (temp file + fsync + rename + directory fsync) after every step.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::plan::{Step, ToolKind};
use super::steps::Engine;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Journal {
    pub format_version: u32,
    pub backup_id: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub manifests_dir: PathBuf,
    pub held_dir: PathBuf,
    /// Work dir next to the journal: the fetched snapshot.
    pub work_dir: PathBuf,
    /// The etcd.yaml bytes as found (restored byte for byte by --rollback).
    pub original_etcd_yaml: String,
    /// Whether kube-apiserver.yaml was in the manifests dir at the start.
    pub had_apiserver: bool,
    /// The `--data-dir` value and the etcd-data hostPath.
    pub old_data_dir_flag: String,
    pub old_data_dir: PathBuf,
    pub target: PathBuf,
    pub swap: bool,
    /// Where `--swap` put the old data dir.
    pub swapped_aside: Option<PathBuf>,
    pub name: String,
    pub initial_cluster: String,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: String,
    /// The engine that writes the data dir. Journals of releases before engines existed have
    /// none: they ran the stock tool below.
    #[serde(default = "Engine::before_engines")]
    pub engine: Engine,
    /// The stock tool (`engine: etcdutl`; empty with the native engine).
    pub tool: PathBuf,
    pub tool_kind: ToolKind,
    pub bump_revision: Option<u64>,
    pub expected_revision: i64,
    pub total_key: u64,
    /// Keys the restored etcd must serve (counted in the fetched snapshot).
    #[serde(default)]
    pub live_keys: Option<u64>,
    pub apiserver_port: u16,
    /// Control-plane files to put back (`--restore-files`); `None` skips that step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<JournalFiles>,
    /// How to ask kube-apiserver whether it is ready (its readinessProbe). Absent in journals of
    /// older versions: then it is read from the manifest when needed.
    #[serde(default)]
    pub apiserver_readyz: Option<super::readyz::Probe>,
    pub done: Vec<Step>,
    #[serde(default)]
    pub rolled_back: bool,
    /// The exact command for the other members (empty for a single member).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub other_members_command: String,
    /// The backed-up cluster's id (hex); the restored member must report another one. Empty:
    /// not checked.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub old_cluster_id: String,
}

/// Where `--restore-files` works.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JournalFiles {
    /// The fetched and checked archive (in the work dir).
    pub archive: PathBuf,
    /// Where the files go (`--files-root`, `/` by default).
    pub root: PathBuf,
    /// What they replaced, kept for --rollback (outlives the work dir).
    pub previous: PathBuf,
}

pub const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("restore journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("restore journal {path} is not readable: {message}")]
    Bad { path: PathBuf, message: String },
}

impl Journal {
    pub fn is_done(&self, step: Step) -> bool {
        self.done.contains(&step)
    }

    /// The steps of this restore: all of them, less restore-files when it was not asked for.
    pub fn steps(&self) -> impl Iterator<Item = Step> + '_ {
        Step::ALL
            .into_iter()
            .filter(|s| *s != Step::RestoreFiles || self.files.is_some())
    }

    pub fn complete(&self) -> bool {
        self.steps().all(|s| self.is_done(s))
    }

    /// The other members (name, peer URLs) of the restored cluster.
    pub fn other_members(&self) -> Vec<(String, String)> {
        super::plan::member_names(&self.initial_cluster)
            .into_iter()
            .filter(|(n, _)| *n != self.name)
            .collect()
    }

    /// The exact command for the other members (journals from before it was recorded: with a
    /// placeholder for the identity).
    pub fn command_for_others(&self) -> String {
        if !self.other_members_command.is_empty() {
            return self.other_members_command.clone();
        }
        format!(
            "etcdsafe restore {} --identity KEY --initial-cluster {} --yes",
            super::plan::shell_word(&self.backup_id),
            super::plan::shell_word(&self.initial_cluster)
        )
    }

    /// What to print once while this member waits for a quorum (`None` for a single member).
    pub fn quorum_note(&self, timeout: std::time::Duration) -> Option<String> {
        let others = self.other_members();
        if others.is_empty() {
            return None;
        }
        let n = others.len() + 1;
        Some(format!(
            "etcd member {} runs the restored data but serves only once {} of the {n} members do: restore the other members now ({}), from the same backup; on each, run:\n    {}\nwaiting up to {} for the quorum",
            self.name,
            super::plan::quorum(n),
            others
                .iter()
                .map(|(n, u)| format!("{n} at {u}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.command_for_others(),
            humantime::format_duration(timeout)
        ))
    }

    pub fn next_step(&self) -> Option<Step> {
        self.steps().find(|s| !self.is_done(*s))
    }

    pub fn mark(&mut self, step: Step, path: &Path) -> Result<(), JournalError> {
        if !self.is_done(step) {
            self.done.push(step);
        }
        self.save(path)
    }

    pub fn load(path: &Path) -> Result<Option<Journal>, JournalError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| JournalError::Bad {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(JournalError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), JournalError> {
        let text = serde_json::to_string_pretty(self).expect("a journal serializes");
        write_atomic(path, text.as_bytes()).map_err(|source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// temp + fsync + rename + fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Journal {
        Journal {
            format_version: FORMAT,
            backup_id: "b".into(),
            started_at: chrono::Utc::now(),
            manifests_dir: "/m".into(),
            held_dir: "/h".into(),
            work_dir: "/w".into(),
            original_etcd_yaml: "kind: Pod\n".into(),
            had_apiserver: true,
            old_data_dir_flag: "/var/lib/etcd".into(),
            old_data_dir: "/var/lib/etcd".into(),
            target: "/t".into(),
            swap: false,
            swapped_aside: None,
            name: "cp1".into(),
            initial_cluster: "cp1=http://a".into(),
            initial_cluster_token: "etcd-cluster".into(),
            initial_advertise_peer_urls: "http://a".into(),
            engine: Engine::Native,
            tool: "etcdutl".into(),
            tool_kind: ToolKind::Etcdutl,
            bump_revision: None,
            expected_revision: 5,
            total_key: 3,
            live_keys: Some(2),
            apiserver_port: 6443,
            files: None,
            apiserver_readyz: Some(super::super::readyz::Probe::defaults(6443)),
            done: vec![],
            rolled_back: false,
            other_members_command: String::new(),
            old_cluster_id: String::new(),
        }
    }

    #[test]
    fn saves_atomically_and_loads_back() {
        let dir = std::env::temp_dir().join(format!("etcdsafe-journal-{}", std::process::id()));
        let path = dir.join("j.json");
        assert_eq!(Journal::load(&path).unwrap(), None);
        let mut j = sample();
        j.mark(Step::Fetch, &path).unwrap();
        j.mark(Step::Fetch, &path).unwrap();
        let back = Journal::load(&path).unwrap().unwrap();
        assert_eq!(back, j);
        assert_eq!(back.done, vec![Step::Fetch]);
        assert_eq!(back.next_step(), Some(Step::Preflight));
        assert!(!path.with_file_name("j.json.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn journals_without_newer_fields_load() {
        let mut value = serde_json::to_value(Journal {
            apiserver_port: 7443,
            apiserver_readyz: None,
            done: vec![Step::Fetch],
            ..sample()
        })
        .unwrap();
        let fields = value.as_object_mut().unwrap();
        for newer in ["apiserverReadyz", "liveKeys", "rolledBack"] {
            assert!(fields.remove(newer).is_some(), "{newer}");
        }
        let old: Journal = serde_json::from_value(value).unwrap();
        assert_eq!(old.apiserver_readyz, None);
        assert_eq!(old.apiserver_port, 7443);
        assert_eq!(old.live_keys, None);
    }

    #[test]
    fn other_members_from_a_journal_without_the_command() {
        // A journal written before the command for the other members was recorded.
        let text = r#"{"formatVersion":1,"backupId":"b1","startedAt":"2026-01-01T00:00:00Z",
            "manifestsDir":"/m","heldDir":"/h","workDir":"/w","originalEtcdYaml":"",
            "hadApiserver":true,"oldDataDirFlag":"/var/lib/etcd","oldDataDir":"/var/lib/etcd",
            "target":"/t","swap":false,"swappedAside":null,"name":"cp2",
            "initialCluster":"cp1=https://a:2380,cp2=https://b:2380,cp3=https://c:2380",
            "initialClusterToken":"etcd-cluster","initialAdvertisePeerUrls":"https://b:2380",
            "tool":"etcdutl","toolKind":"etcdutl","bumpRevision":null,"expectedRevision":5,
            "totalKey":3,"apiserverPort":6443,"done":[]}"#;
        let mut j: Journal = serde_json::from_str(text).unwrap();
        // Written before engines existed: it ran the stock tool, and resumes with it.
        assert_eq!(j.engine, Engine::Etcdutl);
        assert_eq!(
            j.other_members(),
            vec![
                ("cp1".to_string(), "https://a:2380".to_string()),
                ("cp3".to_string(), "https://c:2380".to_string())
            ]
        );
        let fallback = "etcdsafe restore b1 --identity KEY --initial-cluster cp1=https://a:2380,cp2=https://b:2380,cp3=https://c:2380 --yes";
        assert_eq!(j.command_for_others(), fallback);
        let note = j.quorum_note(std::time::Duration::from_secs(300)).unwrap();
        assert!(
            note.starts_with("etcd member cp2 runs the restored data but serves only once 2 of the 3 members do: restore the other members now (cp1 at https://a:2380, cp3 at https://c:2380)"),
            "{note}"
        );
        assert!(note.contains(&format!("\n    {fallback}\n")), "{note}");
        assert!(note.ends_with("waiting up to 5m for the quorum"), "{note}");
        j.other_members_command = "etcdsafe restore b1 --identity /k --yes".into();
        assert_eq!(
            j.command_for_others(),
            "etcdsafe restore b1 --identity /k --yes"
        );
        j.initial_cluster = "cp2=https://b:2380".into();
        assert_eq!(j.quorum_note(std::time::Duration::from_secs(1)), None);
    }
}
