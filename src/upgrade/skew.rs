//! The version-skew decision for a control-plane upgrade, as a pure function.
//!
//! Policy (<https://kubernetes.io/releases/version-skew-policy/> and kubeadm's upgrade docs,
//! <https://kubernetes.io/docs/tasks/administer-cluster/kubeadm/kubeadm-upgrade/>):
//!
//! | from → to                         | decision                                   |
//! |-----------------------------------|--------------------------------------------|
//! | same version                      | allowed: a re-apply (kubeadm allows it)    |
//! | higher patch, same minor          | allowed                                    |
//! | pre-release → its release         | allowed (same minor, higher)               |
//! | next minor (any patch/pre-release)| allowed                                    |
//! | two or more minors up             | refused: kubeadm upgrades one minor at a time |
//! | any downgrade (minor, patch, pre) | refused                                    |
//! | a different major                 | refused: no skew policy across majors      |
//!
//! Every refusal cites the policy and names `--skip-version-check`.

use std::fmt;

use super::version::Version;

pub const SKEW_POLICY_URL: &str = "https://kubernetes.io/releases/version-skew-policy/";

/// An allowed move, and what kind it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkewOk {
    /// The same version again (`kubeadm upgrade apply` re-applies it).
    Reapply,
    /// A later patch or pre-release within the same minor.
    Patch,
    /// The next minor version.
    NextMinor,
}

impl fmt::Display for SkewOk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkewOk::Reapply => "same version: a re-apply",
            SkewOk::Patch => "a patch upgrade within the same minor version",
            SkewOk::NextMinor => "one minor version up",
        })
    }
}

/// Why an upgrade is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkewRefusal {
    #[error("kubeadm upgrades one minor version at a time: {current} -> {target} skips {}; see {SKEW_POLICY_URL} — or pass --skip-version-check", skipped.join(", "))]
    SkipsMinor {
        current: Version,
        target: Version,
        /// The minors jumped over, `v1.23`.
        skipped: Vec<String>,
    },
    #[error("{current} -> {target} is a downgrade; Kubernetes and kubeadm do not support downgrading the control plane (restore a backup instead); see {SKEW_POLICY_URL} — or pass --skip-version-check")]
    Downgrade { current: Version, target: Version },
    #[error("{current} -> {target} changes the major version; the version-skew policy only covers upgrades within one major version; see {SKEW_POLICY_URL} — or pass --skip-version-check")]
    MajorChange { current: Version, target: Version },
}

/// Decides whether going from `current` to `target` is within the version-skew policy.
pub fn check_skew(current: &Version, target: &Version) -> Result<SkewOk, SkewRefusal> {
    if current.major != target.major {
        return Err(SkewRefusal::MajorChange {
            current: current.clone(),
            target: target.clone(),
        });
    }
    if target < current {
        return Err(SkewRefusal::Downgrade {
            current: current.clone(),
            target: target.clone(),
        });
    }
    if target == current {
        return Ok(SkewOk::Reapply);
    }
    match target.minor - current.minor {
        0 => Ok(SkewOk::Patch),
        1 => Ok(SkewOk::NextMinor),
        _ => Err(SkewRefusal::SkipsMinor {
            current: current.clone(),
            target: target.clone(),
            skipped: (current.minor + 1..target.minor)
                .map(|minor| format!("v{}.{minor}", current.major))
                .collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    enum Want {
        Ok(SkewOk),
        Skips(&'static [&'static str]),
        Downgrade,
        Major,
    }

    #[test]
    fn skew_decisions() {
        use Want::*;
        let cases: &[(&str, &str, Want)] = &[
            // patch upgrades within a minor
            ("v1.23.2", "v1.23.3", Ok(SkewOk::Patch)),
            ("v1.23.0", "v1.23.17", Ok(SkewOk::Patch)),
            ("1.23.2", "v1.23.3", Ok(SkewOk::Patch)),
            ("v1.23.2", "1.23.3", Ok(SkewOk::Patch)),
            // one minor up, whatever the patch
            ("v1.22.5", "v1.23.0", Ok(SkewOk::NextMinor)),
            ("v1.22.17", "v1.23.3", Ok(SkewOk::NextMinor)),
            ("v1.22.0", "v1.23.9", Ok(SkewOk::NextMinor)),
            // two or more minors: refused, naming what is skipped
            ("v1.22.5", "v1.24.0", Skips(&["v1.23"])),
            ("v1.21.0", "v1.24.1", Skips(&["v1.22", "v1.23"])),
            ("v1.22.5", "v1.24.0-rc.1", Skips(&["v1.23"])),
            // downgrades: minor, patch, pre-release
            ("v1.23.3", "v1.22.9", Downgrade),
            ("v1.23.3", "v1.23.2", Downgrade),
            ("v1.24.0", "v1.24.0-rc.1", Downgrade),
            ("v1.24.0-rc.2", "v1.24.0-rc.1", Downgrade),
            ("v1.24.0-beta.0", "v1.24.0-alpha.3", Downgrade),
            // same version: a re-apply, allowed
            ("v1.23.3", "v1.23.3", Ok(SkewOk::Reapply)),
            ("1.23.3", "v1.23.3", Ok(SkewOk::Reapply)),
            ("v1.24.0-rc.1", "v1.24.0-rc.1", Ok(SkewOk::Reapply)),
            // pre-releases compare below the release
            ("v1.23.5", "v1.24.0-rc.1", Ok(SkewOk::NextMinor)),
            ("v1.23.5", "v1.24.0-alpha.0", Ok(SkewOk::NextMinor)),
            ("v1.24.0-rc.1", "v1.24.0", Ok(SkewOk::Patch)),
            ("v1.24.0-alpha.1", "v1.24.0-beta.0", Ok(SkewOk::Patch)),
            ("v1.24.0-rc.1", "v1.25.0", Ok(SkewOk::NextMinor)),
            ("v1.23.3", "v1.23.4-rc.0", Ok(SkewOk::Patch)),
            // major changes
            ("v1.23.3", "v2.0.0", Major),
            ("v2.0.0", "v1.30.0", Major),
        ];
        for (from, to, want) in cases {
            let current = Version::parse(from).unwrap();
            let target = Version::parse(to).unwrap();
            let got = check_skew(&current, &target);
            match (want, &got) {
                (Ok(kind), Result::Ok(k)) => assert_eq!(k, kind, "{from} -> {to}"),
                (Skips(minors), Err(SkewRefusal::SkipsMinor { skipped, .. })) => {
                    assert_eq!(skipped, minors, "{from} -> {to}")
                }
                (Downgrade, Err(SkewRefusal::Downgrade { .. })) => {}
                (Major, Err(SkewRefusal::MajorChange { .. })) => {}
                _ => panic!("{from} -> {to}: wanted {want:?}, got {got:?}"),
            }
            if let Err(refusal) = got {
                let text = refusal.to_string();
                assert!(text.contains(SKEW_POLICY_URL), "{text}");
                assert!(text.contains("--skip-version-check"), "{text}");
            }
        }
    }

    #[test]
    fn the_minor_skip_message_reads_as_documented() {
        let err = check_skew(
            &Version::parse("v1.22.5").unwrap(),
            &Version::parse("v1.24.0").unwrap(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "kubeadm upgrades one minor version at a time: v1.22.5 -> v1.24.0 skips v1.23; \
             see https://kubernetes.io/releases/version-skew-policy/ — or pass --skip-version-check"
        );
    }

    #[test]
    fn garbage_never_reaches_the_decision() {
        for text in ["v1.23", "latest", "v1.23.x", "", "1.2.3.4"] {
            assert!(Version::parse(text).is_err(), "{text}");
        }
    }
}
