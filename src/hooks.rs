//! Commands run around each snapshot (`hooks.pre-snapshot` / `hooks.post-snapshot`).
//!
//! A hook is an argv, run without a shell, in its own process group, with stdin closed and the
//! caller's extra environment (`ETCDSAFE_BACKUP_ID`, `ETCDSAFE_RESULT`, …). Its stdout and stderr
//! are captured (the last [`OUTPUT_LIMIT`] bytes of each) and logged. When it outlives its
//! timeout the whole process group gets SIGTERM, then SIGKILL after [`KILL_GRACE`]; a hook that
//! is cancelled (the caller's future dropped) is killed the same way, at once.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// How much of each of stdout and stderr is kept: the last 64 KiB.
pub const OUTPUT_LIMIT: usize = 64 * 1024;
/// Between SIGTERM and SIGKILL when a hook times out.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long output is still read after the hook exits (a background child may hold the pipes).
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// How a hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOutcome {
    /// The config key, `hooks.pre-snapshot`.
    pub hook: String,
    /// The exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    pub duration: Duration,
    /// The last [`OUTPUT_LIMIT`] bytes of stdout (lossy UTF-8).
    pub stdout: String,
    pub stderr: String,
    /// Bytes dropped from the front of stdout / stderr to stay within the limit.
    pub stdout_dropped: u64,
    pub stderr_dropped: u64,
}

impl HookOutcome {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// `exit code 3`, `signal 9`.
    pub fn status_text(&self) -> String {
        match (self.exit_code, self.signal) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            (None, None) => "an unknown status".to_string(),
        }
    }

    /// Turns a non-zero exit into [`HookError::Failed`], for hooks whose failure must stop
    /// what follows (`hooks.pre-snapshot`).
    pub fn into_result(self) -> Result<HookOutcome, HookError> {
        if self.success() {
            Ok(self)
        } else {
            Err(HookError::Failed {
                hook: self.hook.clone(),
                status: self.status_text(),
                stderr: last_line(&self.stderr),
                outcome: Box::new(self),
            })
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error(
        "{hook}: the command is empty: give it as a list, e.g. [/usr/local/bin/notify, --backup]"
    )]
    Empty { hook: String },
    #[error("{hook}: cannot start {}: {source}{hint}", program.display())]
    Spawn {
        hook: String,
        program: PathBuf,
        #[source]
        source: std::io::Error,
        hint: String,
    },
    #[error("{hook}: waiting for {} failed: {source}", program.display())]
    Wait {
        hook: String,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{hook}: {} did not finish within {timeout:?} and was killed with its process group{stderr}: make it faster, or raise hooks.timeout", program.display())]
    TimedOut {
        hook: String,
        program: PathBuf,
        timeout: Duration,
        /// `: <last stderr line>` or empty.
        stderr: String,
        outcome: Box<HookOutcome>,
    },
    #[error("{hook} failed with {status}{stderr}: fix the command, or remove it from {hook}")]
    Failed {
        hook: String,
        status: String,
        /// `: <last stderr line>` or empty.
        stderr: String,
        outcome: Box<HookOutcome>,
    },
}

impl HookError {
    /// The config key of the hook (`hooks.pre-snapshot`).
    pub fn hook(&self) -> &str {
        match self {
            HookError::Empty { hook }
            | HookError::Spawn { hook, .. }
            | HookError::Wait { hook, .. }
            | HookError::TimedOut { hook, .. }
            | HookError::Failed { hook, .. } => hook,
        }
    }

    /// What the hook did before it failed, when it ran at all.
    pub fn outcome(&self) -> Option<&HookOutcome> {
        match self {
            HookError::TimedOut { outcome, .. } | HookError::Failed { outcome, .. } => {
                Some(outcome)
            }
            _ => None,
        }
    }
}

/// `pre-snapshot` → `hooks.pre-snapshot`; a full key is kept as it is.
pub fn hook_key(name: &str) -> String {
    if name.starts_with("hooks.") {
        name.to_string()
    } else {
        format!("hooks.{name}")
    }
}

/// Runs one hook and waits for it, at most `timeout` (plus [`KILL_GRACE`] to kill it).
///
/// Returns the outcome for any exit, zero or not (see [`HookOutcome::into_result`]); errors when
/// it cannot start, or times out (then it has been killed, with its process group).
pub async fn run_hook(
    name: &str,
    argv: &[String],
    timeout: Duration,
    env: &[(String, String)],
) -> Result<HookOutcome, HookError> {
    let hook = hook_key(name);
    let Some((program, args)) = argv.split_first().filter(|(p, _)| !p.is_empty()) else {
        return Err(HookError::Empty { hook });
    };
    let program = PathBuf::from(program);
    let mut command = tokio::process::Command::new(&program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = command.spawn().map_err(|source| HookError::Spawn {
        hint: spawn_hint(&source, &hook),
        hook: hook.clone(),
        program: program.clone(),
        source,
    })?;
    // The child leads its own process group, whose id is its pid.
    let mut group = GroupGuard(child.id().map(|pid| pid as libc::pid_t));
    let stdout = Capture::start(child.stdout.take());
    let stderr = Capture::start(child.stderr.take());
    info!(hook = %hook, program = %program.display(), "hook started");

    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let (status, timed_out) = match waited {
        Ok(Ok(status)) => (Some(status), false),
        Ok(Err(source)) => {
            group.kill(libc::SIGKILL);
            return Err(HookError::Wait {
                hook,
                program,
                source,
            });
        }
        Err(_) => {
            group.kill(libc::SIGTERM);
            let status = match tokio::time::timeout(KILL_GRACE, child.wait()).await {
                Ok(Ok(status)) => Some(status),
                _ => None,
            };
            // Whatever is left in the group (the hook's own children) goes too.
            group.kill(libc::SIGKILL);
            let status = match status {
                Some(s) => Some(s),
                None => child.wait().await.ok(),
            };
            (status, true)
        }
    };
    if !timed_out {
        // The hook is done; anything it left running in the background is its business.
        group.disarm();
    }
    let duration = started.elapsed();
    let (stdout, stdout_dropped) = stdout.finish().await;
    let (stderr, stderr_dropped) = stderr.finish().await;
    let outcome = HookOutcome {
        hook: hook.clone(),
        exit_code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        duration,
        stdout,
        stderr,
        stdout_dropped,
        stderr_dropped,
    };
    let seconds = duration.as_secs_f64();
    if timed_out {
        warn!(hook = %hook, duration_seconds = seconds, timeout_seconds = timeout.as_secs_f64(),
            stdout = %outcome.stdout, stderr = %outcome.stderr, "hook timed out and was killed");
        return Err(HookError::TimedOut {
            hook,
            program,
            timeout,
            stderr: last_line(&outcome.stderr),
            outcome: Box::new(outcome),
        });
    }
    if outcome.success() {
        info!(hook = %hook, duration_seconds = seconds, stdout = %outcome.stdout,
            stderr = %outcome.stderr, "hook finished");
    } else {
        warn!(hook = %hook, status = %outcome.status_text(), duration_seconds = seconds,
            stdout = %outcome.stdout, stderr = %outcome.stderr, "hook failed");
    }
    Ok(outcome)
}

fn spawn_hint(error: &std::io::Error, hook: &str) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => format!(
            ": no such program; hooks run without a shell, so give the full path to an executable as the first word of {hook}"
        ),
        std::io::ErrorKind::PermissionDenied => {
            format!(": not executable by this user; chmod +x it, or fix the path in {hook}")
        }
        _ => String::new(),
    }
}

/// `: <the last non-empty line>`, at most 200 characters, or empty.
fn last_line(text: &str) -> String {
    match text.lines().rev().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => {
            let line: String = line.chars().take(200).collect();
            format!(": {line}")
        }
        None => String::new(),
    }
}

/// Kills the hook's process group when dropped while armed (cancellation, timeout, errors).
struct GroupGuard(Option<libc::pid_t>);

impl GroupGuard {
    fn kill(&self, signal: libc::c_int) {
        if let Some(pgid) = self.0 {
            // SAFETY: killpg has no memory-safety preconditions; ESRCH (already gone) is fine.
            unsafe {
                libc::killpg(pgid, signal);
            }
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill(libc::SIGKILL);
    }
}

/// The last [`OUTPUT_LIMIT`] bytes of a stream, and how many were dropped before them.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    dropped: u64,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > 2 * OUTPUT_LIMIT {
            self.trim();
        }
    }

    fn trim(&mut self) {
        if self.bytes.len() > OUTPUT_LIMIT {
            let excess = self.bytes.len() - OUTPUT_LIMIT;
            self.bytes.drain(..excess);
            self.dropped += excess as u64;
        }
    }
}

struct Capture {
    tail: Arc<Mutex<Tail>>,
    task: Option<JoinHandle<()>>,
}

impl Capture {
    fn start<R: AsyncRead + Unpin + Send + 'static>(reader: Option<R>) -> Capture {
        let tail = Arc::new(Mutex::new(Tail::default()));
        let task = reader.map(|mut reader| {
            let tail = tail.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    match reader.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => tail.lock().expect("tail lock").push(&buf[..n]),
                    }
                }
            })
        });
        Capture { tail, task }
    }

    /// What was read, after the stream ends or [`DRAIN_WAIT`] passes.
    async fn finish(mut self) -> (String, u64) {
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(DRAIN_WAIT, &mut task).await.is_err() {
                task.abort();
            }
        }
        let mut tail = self.tail.lock().expect("tail lock");
        tail.trim();
        (
            String::from_utf8_lossy(&tail.bytes).into_owned(),
            tail.dropped,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    fn sh(script: &str) -> Vec<String> {
        argv(&["/bin/sh", "-c", script])
    }

    #[tokio::test]
    async fn success_captures_output_and_passes_env() {
        let env = vec![
            (
                "ETCDSAFE_BACKUP_ID".to_string(),
                "20261124T193012.345Z-rev12".to_string(),
            ),
            ("ETCDSAFE_RESULT".to_string(), "success".to_string()),
        ];
        let outcome = run_hook(
            "post-snapshot",
            &sh("echo id=$ETCDSAFE_BACKUP_ID result=$ETCDSAFE_RESULT; echo warn >&2"),
            Duration::from_secs(10),
            &env,
        )
        .await
        .unwrap();
        assert!(outcome.success());
        assert_eq!(outcome.hook, "hooks.post-snapshot");
        assert_eq!(outcome.exit_code, Some(0));
        assert_eq!(
            outcome.stdout,
            "id=20261124T193012.345Z-rev12 result=success\n"
        );
        assert_eq!(outcome.stderr, "warn\n");
        assert!(outcome.duration < Duration::from_secs(10));
        assert!(outcome.clone().into_result().is_ok());
    }

    #[tokio::test]
    async fn no_shell_is_involved() {
        // `$HOME` and `;` reach the program as they are.
        let outcome = run_hook(
            "pre-snapshot",
            &argv(&["/bin/echo", "$HOME;", "x"]),
            Duration::from_secs(10),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(outcome.stdout, "$HOME; x\n");
    }

    #[tokio::test]
    async fn non_zero_exit_is_reported_with_its_code() {
        let outcome = run_hook(
            "hooks.pre-snapshot",
            &sh("echo starting; echo 'disk not mounted' >&2; exit 3"),
            Duration::from_secs(10),
            &[],
        )
        .await
        .unwrap();
        assert!(!outcome.success());
        assert_eq!(outcome.exit_code, Some(3));
        assert_eq!(outcome.signal, None);
        assert_eq!(outcome.stdout, "starting\n");
        let err = outcome.into_result().unwrap_err();
        let text = err.to_string();
        assert_eq!(err.hook(), "hooks.pre-snapshot");
        assert!(
            text.starts_with("hooks.pre-snapshot failed with exit code 3: disk not mounted"),
            "{text}"
        );
        assert!(err.outcome().is_some());
    }

    #[tokio::test]
    async fn timeout_kills_the_hook_and_its_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        let script = format!(
            "sleep 60 & echo $! > {}; echo waiting >&2; sleep 60",
            pidfile.display()
        );
        let started = Instant::now();
        let err = run_hook(
            "pre-snapshot",
            &sh(&script),
            Duration::from_millis(500),
            &[],
        )
        .await
        .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        let text = err.to_string();
        assert!(text.contains("hooks.pre-snapshot"), "{text}");
        assert!(text.contains("did not finish within 500ms"), "{text}");
        assert!(text.contains("hooks.timeout"), "{text}");
        assert!(text.contains(": waiting"), "the last stderr line: {text}");
        let outcome = err.outcome().expect("what it did");
        assert_eq!(outcome.signal, Some(libc::SIGTERM));
        // The background `sleep 60` was in the hook's process group and is gone too.
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // A killed process may linger as a zombie until its new parent reaps it.
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(") ")
                        .map(|(_, rest)| rest.chars().next().unwrap())
                });
            match state {
                None | Some('Z') | Some('X') => break,
                Some(other) => {
                    assert!(
                        Instant::now() < deadline,
                        "grandchild {pid} still running ({other})"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    #[tokio::test]
    async fn a_hook_ignoring_sigterm_is_killed() {
        let started = Instant::now();
        let err = run_hook(
            "post-snapshot",
            &sh("trap '' TERM; while :; do sleep 0.1; done"),
            Duration::from_millis(200),
            &[],
        )
        .await
        .unwrap_err();
        assert!(matches!(err, HookError::TimedOut { .. }), "{err}");
        assert_eq!(err.outcome().unwrap().signal, Some(libc::SIGKILL));
        assert!(started.elapsed() < KILL_GRACE + Duration::from_secs(5));
    }

    #[tokio::test]
    async fn missing_binary_names_the_hook_and_the_fix() {
        let err = run_hook(
            "pre-snapshot",
            &argv(&["/nonexistent/notify", "--x"]),
            Duration::from_secs(5),
            &[],
        )
        .await
        .unwrap_err();
        assert!(matches!(err, HookError::Spawn { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with("hooks.pre-snapshot: cannot start /nonexistent/notify"),
            "{text}"
        );
        assert!(text.contains("full path"), "{text}");

        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("notify.sh");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        let err = run_hook(
            "post-snapshot",
            &[script.display().to_string()],
            Duration::from_secs(5),
            &[],
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("chmod +x"), "{err}");
    }

    #[tokio::test]
    async fn empty_command_is_refused() {
        let err = run_hook("pre-snapshot", &[], Duration::from_secs(5), &[])
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("hooks.pre-snapshot: the command is empty"),
            "{err}"
        );
        let err = run_hook("pre-snapshot", &argv(&[""]), Duration::from_secs(5), &[])
            .await
            .unwrap_err();
        assert!(matches!(err, HookError::Empty { .. }));
    }

    #[tokio::test]
    async fn output_is_bounded_to_the_last_64_kib() {
        // 200 000 bytes of 'a', then a marker line at the very end.
        let outcome = run_hook(
            "post-snapshot",
            &sh("head -c 200000 /dev/zero | tr '\\0' a; echo; echo END"),
            Duration::from_secs(10),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(outcome.stdout.len(), OUTPUT_LIMIT);
        assert!(outcome.stdout.ends_with("a\nEND\n"));
        assert_eq!(outcome.stdout_dropped, 200_000 + 5 - OUTPUT_LIMIT as u64);
    }

    #[tokio::test]
    async fn a_background_child_holding_the_pipe_does_not_hang_the_hook() {
        let started = Instant::now();
        let outcome = run_hook(
            "post-snapshot",
            &sh("sleep 5 & echo done"),
            Duration::from_secs(20),
            &[],
        )
        .await
        .unwrap();
        assert!(outcome.success());
        assert_eq!(outcome.stdout, "done\n");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
}
