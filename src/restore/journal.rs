//! The restore journal: what was planned and which steps are done, written atomically
//! (temp file + fsync + rename + directory fsync) after every step.

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
    /// A point-in-time restore: the revision the backup's delta chain is applied up to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_revision: Option<i64>,
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
    #[error("restore journal {path} is not readable: {source}")]
    Bad {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
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

    /// The steps that may have changed something, in order: the done ones and the next one,
    /// which may have been interrupted half way. A rollback undoes them in reverse.
    pub fn begun(&self) -> Vec<Step> {
        let next = self.next_step();
        self.steps()
            .filter(|s| self.is_done(*s) || Some(*s) == next)
            .collect()
    }

    pub fn mark(&mut self, step: Step, path: &Path) -> Result<(), JournalError> {
        if !self.is_done(step) {
            self.done.push(step);
        }
        self.save(path)
    }

    pub fn load(path: &Path) -> Result<Option<Journal>, JournalError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| JournalError::Bad {
                        path: path.to_path_buf(),
                        source,
                    })
            }
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

/// Kept here for callers that reach it through the journal; its home is [`crate::fsutil`].
pub use crate::fsutil::write_atomic;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A journal with control-plane files to put back or not, swapping or not.
    pub(crate) fn sample_with(files: bool, swap: bool) -> Journal {
        Journal {
            swap,
            files: files.then(|| JournalFiles {
                archive: "/w/files.tar".into(),
                root: "/".into(),
                previous: "/w-previous-files".into(),
            }),
            ..sample()
        }
    }

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
            at_revision: None,
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

    /// A journal as the release before engines wrote it (no `engine`) resumes and rolls back
    /// with this version: every field reads, the engine is the stock tool it ran.
    #[test]
    fn journal_of_the_previous_release() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/journal-previous-release.json");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("\"engine\""),
            "written before engines existed"
        );
        let j = Journal::load(&path).unwrap().unwrap();
        let id = "20260101T000000.000Z-rev42";
        let work = format!("/var/lib/etcdsafe/restore-{id}");
        assert_eq!(j.format_version, FORMAT);
        assert_eq!(j.backup_id, id);
        assert_eq!(j.started_at.to_rfc3339(), "2026-01-01T00:10:00+00:00");
        assert_eq!(j.manifests_dir, Path::new("/etc/kubernetes/manifests"));
        assert_eq!(
            j.held_dir,
            super::super::held_dir(Path::new("/etc/kubernetes/manifests"))
        );
        assert_eq!(j.work_dir, Path::new(&work));
        assert!(j
            .original_etcd_yaml
            .contains("- --data-dir=/var/lib/etcd\n"));
        assert!(j.had_apiserver);
        assert_eq!(j.old_data_dir_flag, "/var/lib/etcd");
        assert_eq!(j.old_data_dir, Path::new("/var/lib/etcd"));
        assert_eq!(j.target, Path::new(&format!("/var/lib/etcd-restored-{id}")));
        assert!(!j.swap);
        assert_eq!(j.swapped_aside, None);
        assert_eq!(j.name, "cp2");
        assert_eq!(
            j.initial_cluster,
            "cp1=https://10.0.0.10:2380,cp2=https://10.0.0.11:2380,cp3=https://10.0.0.12:2380"
        );
        assert_eq!(
            j.initial_cluster_token,
            super::super::plan::restore_token(id)
        );
        assert_eq!(j.initial_advertise_peer_urls, "https://10.0.0.11:2380");
        assert_eq!(j.engine, Engine::Etcdutl, "the engine default");
        assert_eq!(j.tool, Path::new("/usr/local/bin/etcdutl"));
        assert_eq!(j.tool_kind, ToolKind::Etcdutl);
        assert_eq!(j.bump_revision, Some(1_000_000_000));
        assert_eq!(j.expected_revision, 1_000_000_042);
        assert_eq!(j.total_key, 50);
        assert_eq!(j.live_keys, Some(37));
        assert_eq!(j.apiserver_port, 6443);
        assert_eq!(
            j.files,
            Some(JournalFiles {
                archive: format!("{work}/files.tar").into(),
                root: "/".into(),
                previous: format!("{work}-previous-files-20260101T001000Z").into(),
            })
        );
        let probe = j.apiserver_readyz.clone().unwrap();
        assert_eq!(probe.url(), "https://10.0.0.11:6443/readyz");
        assert_eq!(probe.source, super::super::readyz::Source::ReadinessProbe);
        assert!(!j.rolled_back);
        assert!(j
            .other_members_command
            .starts_with(&format!("etcdsafe restore {id} ")));
        assert_eq!(j.old_cluster_id, "8e9e05c52164694d");
        assert_eq!(
            u64::from_str_radix(&j.old_cluster_id, 16).ok(),
            Some(0x8e9e05c52164694d)
        );

        // The step list: every step (files are put back), five done; resume goes on at
        // point-etcd, a rollback undoes point-etcd and everything before it, in reverse.
        assert_eq!(j.steps().collect::<Vec<_>>(), Step::ALL);
        assert_eq!(
            j.done,
            [
                Step::Fetch,
                Step::Preflight,
                Step::StopPods,
                Step::RestoreData,
                Step::RestoreFiles
            ]
        );
        assert!(!j.complete());
        assert_eq!(j.next_step(), Some(Step::PointEtcd));
        assert_eq!(
            j.begun().into_iter().rev().collect::<Vec<_>>(),
            [
                Step::PointEtcd,
                Step::RestoreFiles,
                Step::RestoreData,
                Step::StopPods,
                Step::Preflight,
                Step::Fetch
            ]
        );

        // Saved again, it keeps every field as it was (and the engine it ran).
        let mut again = serde_json::to_value(&j).unwrap();
        assert_eq!(again["engine"], "etcdutl");
        again.as_object_mut().unwrap().remove("engine");
        let before: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(again, before);
    }
}
