//! The upgrade plan: each preflight check and its result, the backup that is (or would be) taken,
//! and the command. `--dry-run` prints it; a real run acts on it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    Ok,
    /// Not fatal: noted in the plan (e.g. no current version with `--skip-version-check`).
    Warn,
    /// The command will not run.
    Failed,
}

impl CheckStatus {
    fn word(self) -> &'static str {
        match self {
            CheckStatus::Ok => "ok",
            CheckStatus::Warn => "warn",
            CheckStatus::Failed => "FAILED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub status: CheckStatus,
    pub detail: String,
}

impl Check {
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: CheckStatus::Ok,
            detail: detail.into(),
        }
    }
    pub fn warn(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: CheckStatus::Warn,
            detail: detail.into(),
        }
    }
    pub fn failed(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: CheckStatus::Failed,
            detail: detail.into(),
        }
    }
}

/// Everything `etcdsafe upgrade` will do, decided before anything is done.
#[derive(Debug, Clone)]
pub struct Plan {
    pub checks: Vec<Check>,
    /// Where the backup goes (`local:/var/backups/etcdsafe`).
    pub store: String,
    pub reason: String,
    pub labels: BTreeMap<String, String>,
    pub command: Vec<String>,
}

impl Plan {
    pub fn failures(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.status == CheckStatus::Failed)
            .collect()
    }

    pub fn ready(&self) -> bool {
        self.failures().is_empty()
    }

    /// Every failed check on one line: `etcd health: …; store: …`.
    pub fn failure_line(&self) -> String {
        self.failures()
            .iter()
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect::<Vec<_>>()
            .join("; ")
            .replace('\n', " ")
    }

    /// The plan as `--dry-run` prints it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "etcdsafe upgrade plan (dry run: nothing was changed)");
        let _ = writeln!(out);
        let _ = writeln!(out, "checks:");
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for check in &self.checks {
            let _ = writeln!(
                out,
                "  {:<6} {:<width$}  {}",
                check.status.word(),
                check.name,
                check.detail
            );
        }
        let _ = writeln!(out);
        let labels = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "backup:  a full backup (stream, verify, compress, encrypt, store) into {}",
            self.store
        );
        let _ = writeln!(out, "         reason: {}", self.reason);
        let _ = writeln!(out, "         labels: {labels}");
        let _ = writeln!(
            out,
            "         after the command: labels upgrade-exit-code, upgrade-duration-seconds"
        );
        let _ = writeln!(out, "command: {}", display_command(&self.command));
        let _ = writeln!(
            out,
            "         runs only once the backup is stored; terminal attached; its exit code is etcdsafe's"
        );
        let _ = writeln!(out);
        if self.ready() {
            let _ = writeln!(
                out,
                "ready: without --dry-run, etcdsafe takes the backup, then runs the command"
            );
        } else {
            let _ = writeln!(
                out,
                "refused: {} check(s) failed; neither the backup nor the command would run (exit code {})",
                self.failures().len(),
                super::EXIT_NOT_RUN
            );
        }
        out
    }
}

/// The command for a terminal: words with shell-special characters in single quotes.
pub fn display_command(argv: &[String]) -> String {
    argv.iter()
        .map(|w| {
            let plain = !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
            if plain {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// At most this many words of the command go into the `upgrade-command` label.
pub const SUMMARY_WORDS: usize = 4;

/// The first words of the command for the `upgrade-command` label, without secrets: the
/// program's file name, then the following words up to the first option (`-…`), up to
/// [`SUMMARY_WORDS`] words in all, stopping at any word that is not plainly a name or a version
/// (`=`, `:`, `@`, quotes, spaces, … could carry a credential or a URL).
pub fn command_summary(argv: &[String]) -> String {
    let mut words = Vec::new();
    for (i, word) in argv.iter().enumerate() {
        let word = if i == 0 {
            word.rsplit('/').next().unwrap_or(word)
        } else {
            word.as_str()
        };
        let plain = !word.is_empty()
            && !word.starts_with('-')
            && word.len() <= 64
            && word
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b));
        if !plain || words.len() == SUMMARY_WORDS {
            break;
        }
        words.push(word);
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn summary_keeps_the_first_words_and_no_secrets() {
        let cases = [
            (
                "kubeadm upgrade apply v1.23.3",
                "kubeadm upgrade apply v1.23.3",
            ),
            (
                "/usr/bin/kubeadm upgrade apply v1.23.3 -y",
                "kubeadm upgrade apply v1.23.3",
            ),
            (
                "kubeadm upgrade apply --config=/etc/k.yaml v1.23.3",
                "kubeadm upgrade apply",
            ),
            ("kubeadm upgrade node", "kubeadm upgrade node"),
            ("env TOKEN=s3cret kubeadm upgrade", "env"),
            ("curl https://user:pass@example.com/x", "curl"),
            ("./upgrade.sh a b c d e", "upgrade.sh a b c"),
        ];
        for (argv, want) in cases {
            assert_eq!(command_summary(&words(argv)), want, "{argv}");
        }
        assert_eq!(
            command_summary(&["sh".to_string(), "-c".to_string(), "x".to_string()]),
            "sh"
        );
    }

    #[test]
    fn display_quotes_what_a_shell_would_split() {
        let argv = vec![
            "sh".to_string(),
            "-c".to_string(),
            "echo it's done".to_string(),
            "v1.23.3".to_string(),
        ];
        assert_eq!(display_command(&argv), r"sh -c 'echo it'\''s done' v1.23.3");
    }

    #[test]
    fn render_lists_checks_and_says_whether_it_would_run() {
        let mut plan = Plan {
            checks: vec![
                Check::ok("current version", "v1.23.2"),
                Check::failed("etcd health", "member m2 does not answer"),
            ],
            store: "local:/b".to_string(),
            reason: "pre-upgrade".to_string(),
            labels: [("from", "v1.23.2"), ("to", "v1.23.3")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            command: words("kubeadm upgrade apply v1.23.3"),
        };
        let text = plan.render();
        assert!(text.contains("ok     current version  v1.23.2"), "{text}");
        assert!(text.contains("FAILED etcd health      member m2"), "{text}");
        assert!(text.contains("labels: from=v1.23.2, to=v1.23.3"), "{text}");
        assert!(
            text.contains("command: kubeadm upgrade apply v1.23.3"),
            "{text}"
        );
        assert!(text.contains("refused: 1 check(s) failed"), "{text}");
        assert_eq!(
            plan.failure_line(),
            "etcd health: member m2 does not answer"
        );
        plan.checks.pop();
        assert!(plan.render().contains("ready:"));
    }
}
