//! The process exit codes, in one table (documented in the README). `main` maps every outcome
//! to one of these through [`Exit::code`]; nothing else picks a number.

/// Why the process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// The command did what it was asked.
    Success = 0,
    /// The operation failed (the message says what and how to fix it).
    Failed = 1,
    /// Bad usage or a bad config: nothing was attempted (the argument parser's own code for usage
    /// errors).
    Usage = 2,
    /// `etcdsafe restore` stopped between steps (a test hook or a person): run it again with
    /// `--resume`, or `--rollback`.
    RestoreStopped = 3,
    /// `etcdsafe upgrade`: a preflight check or the pre-upgrade backup failed, so the upgrade
    /// command was NOT run.
    UpgradeNotRun = 4,
    /// Interrupted by SIGINT (Ctrl-C) or SIGTERM: 128 + the signal, as shells report it.
    Interrupted = 130,
    Terminated = 143,
}

impl Exit {
    pub const ALL: [Exit; 7] = [
        Exit::Success,
        Exit::Failed,
        Exit::Usage,
        Exit::RestoreStopped,
        Exit::UpgradeNotRun,
        Exit::Interrupted,
        Exit::Terminated,
    ];

    pub const fn code(self) -> u8 {
        self as u8
    }

    /// One line for the README's table and `--help`.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Success => "success",
            Exit::Failed => "the operation failed",
            Exit::Usage => "bad usage or config: nothing was attempted",
            Exit::RestoreStopped => {
                "restore stopped between steps: resume with --resume (or --rollback)"
            }
            Exit::UpgradeNotRun => {
                "upgrade preflight or backup failed: the upgrade command was NOT run"
            }
            Exit::Interrupted => "interrupted (SIGINT)",
            Exit::Terminated => "terminated (SIGTERM)",
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> std::process::ExitCode {
        std::process::ExitCode::from(e.code())
    }
}

/// What kind of failure an error is, as `main` sees it: bad config and usage exit
/// [`Exit::Usage`]; everything else [`Exit::Failed`].
pub fn for_config_error(is_config_error: bool) -> Exit {
    if is_config_error {
        Exit::Usage
    } else {
        Exit::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_match_the_constants_others_use() {
        let mut codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Exit::ALL.len());
        let table = [
            (Exit::Success, 0),
            (Exit::Failed, 1),
            (Exit::Usage, 2),
            (Exit::RestoreStopped, 3),
            (Exit::UpgradeNotRun, 4),
            (Exit::Interrupted, 130),
            (Exit::Terminated, 143),
        ];
        for (exit, code) in table {
            assert_eq!(exit.code(), code, "{exit:?}");
        }
        assert_eq!(crate::restore::EXIT_STOPPED, Exit::RestoreStopped.code());
        assert_eq!(crate::upgrade::EXIT_NOT_RUN, Exit::UpgradeNotRun.code());
    }

    #[test]
    fn config_errors_are_usage_errors() {
        assert_eq!(for_config_error(true), Exit::Usage);
        assert_eq!(for_config_error(false), Exit::Failed);
    }
}
