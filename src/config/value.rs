//! Values written as text in the config file: durations, sizes, and closed sets of names.
//!
//! Each has one parser (`FromStr`). The raw config holds them as [`Parsed`], which keeps the
//! text and the outcome, so a bad value becomes one [`Problem`] among all the others instead
//! of a parse error that hides them.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::problem::Problem;
use crate::units;

pub use crate::units::HumanDuration;

/// A size written as a number of bytes or with a unit: `16MiB`, `1GB`, `268435456`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(text: &str) -> Result<ByteSize, String> {
        units::parse_size(text)
            .map(ByteSize)
            .ok_or_else(|| format!("{text:?} is not a size"))
    }
}

/// A value as written (a string or a number) and what its parser made of it.
#[derive(Debug, Clone)]
pub struct Parsed<T> {
    text: String,
    value: Result<T, String>,
}

impl<T: FromStr<Err = String>> Parsed<T> {
    pub fn new(text: &str) -> Parsed<T> {
        Parsed {
            text: text.to_string(),
            value: text.parse(),
        }
    }
}

impl<T> Parsed<T> {
    /// The text as the file has it.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The value, or the parser's message.
    pub fn value(&self) -> Result<&T, &str> {
        self.value.as_ref().map_err(String::as_str)
    }
}

impl<T: Clone> Parsed<T> {
    /// The value, or `default` and a problem under `key`: the parser's message, then `hint`
    /// (`": write it like 30s"`).
    pub fn or_problem(&self, key: &str, hint: &str, default: T, problems: &mut Vec<Problem>) -> T {
        match &self.value {
            Ok(value) => value.clone(),
            Err(message) => {
                problems.push(Problem::new(key, format!("{message}{hint}")));
                default
            }
        }
    }
}

/// Reads an optional [`Parsed`] value: the default when the key is absent.
pub fn read<T: Clone>(
    value: &Option<Parsed<T>>,
    key: &str,
    hint: &str,
    default: T,
    problems: &mut Vec<Problem>,
) -> T {
    match value {
        None => default,
        Some(parsed) => parsed.or_problem(key, hint, default, problems),
    }
}

impl<'de, T: FromStr<Err = String>> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(TextVisitor)
            .map(|text| Parsed::new(&text))
    }
}

/// Accepts a string or a number as text (`part-size: 16777216`, `timeout: 30s`).
struct TextVisitor;

impl Visitor<'_> for TextVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or a number")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<String, E> {
        Ok(text.to_string())
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<String, E> {
        Ok(n.to_string())
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<String, E> {
        Ok(n.to_string())
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<String, E> {
        Ok(n.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::settings::Coordination;
    use crate::storage::s3::{LockMode, Sse};
    use std::time::Duration;

    #[test]
    fn durations() {
        let cases: &[(&str, Option<u64>)] = &[
            ("30s", Some(30)),
            ("5m", Some(300)),
            ("1h30m", Some(5400)),
            ("7d", Some(7 * 86_400)),
            (" 2m ", Some(120)),
            ("0s", Some(0)),
            ("soon", None),
            ("30", None),
            ("", None),
            ("-5s", None),
        ];
        for (text, want) in cases {
            let got = text.parse::<HumanDuration>();
            match want {
                Some(secs) => assert_eq!(
                    got,
                    Ok(HumanDuration(Duration::from_secs(*secs))),
                    "{text:?}"
                ),
                None => assert_eq!(got, Err(format!("{text:?} is not a duration")), "{text:?}"),
            }
        }
    }

    #[test]
    fn sizes() {
        let cases: &[(&str, Option<u64>)] = &[
            ("16MiB", Some(16 << 20)),
            ("1GiB", Some(1 << 30)),
            ("1GB", Some(1_000_000_000)),
            ("268435456", Some(268_435_456)),
            ("lots", None),
            ("5 parsecs", None),
        ];
        for (text, want) in cases {
            let got = text.parse::<ByteSize>().ok().map(|s| s.0);
            assert_eq!(got, *want, "{text:?}");
        }
    }

    #[test]
    fn a_value_may_be_a_string_or_a_number_and_keeps_its_text() {
        let size: Parsed<ByteSize> = serde_yaml::from_str("16777216").unwrap();
        assert_eq!(size.value(), Ok(&ByteSize(16 << 20)));
        let size: Parsed<ByteSize> = serde_yaml::from_str("lots").unwrap();
        assert_eq!(size.text(), "lots");
        assert_eq!(size.value(), Err("\"lots\" is not a size"));
        let duration: Parsed<HumanDuration> = serde_yaml::from_str("5").unwrap();
        assert!(duration.value().is_err(), "a bare number has no unit");
        assert!(serde_yaml::from_str::<Parsed<HumanDuration>>("[1, 2]").is_err());
    }

    #[test]
    fn a_bad_value_is_a_problem_under_its_key_and_the_default_is_used() {
        let mut problems = Vec::new();
        let bad = Some(Parsed::<HumanDuration>::new("soon"));
        let got = read(
            &bad,
            "hooks.timeout",
            ": write it like 60s",
            HumanDuration(Duration::from_secs(60)),
            &mut problems,
        );
        assert_eq!(got.0, Duration::from_secs(60));
        assert_eq!(
            problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["hooks.timeout: \"soon\" is not a duration: write it like 60s"]
        );
    }

    #[test]
    fn coordination_names() {
        let cases: &[(&str, Option<Coordination>)] = &[
            ("etcd-leader", Some(Coordination::EtcdLeader)),
            ("none", Some(Coordination::None)),
            ("lease", Some(Coordination::Lease)),
            ("Lease", None),
            ("leader", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Coordination>().ok(), *want, "{text:?}");
            let yaml = format!("{text:?}");
            assert_eq!(
                serde_yaml::from_str::<Coordination>(&yaml).ok(),
                *want,
                "{text:?}"
            );
        }
        let err = "leader".parse::<Coordination>().unwrap_err();
        assert!(err.starts_with("\"leader\": use etcd-leader"), "{err}");
    }

    #[test]
    fn sse_names() {
        let cases: &[(&str, Option<Sse>)] = &[
            ("AES256", Some(Sse::Aes256)),
            ("aes256", Some(Sse::Aes256)),
            ("aws:kms", Some(Sse::AwsKms)),
            ("AWS:KMS", Some(Sse::AwsKms)),
            ("Aes256", None),
            ("kms", None),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Sse>().ok(), *want, "{text:?}");
            let yaml = format!("{text:?}");
            assert_eq!(serde_yaml::from_str::<Sse>(&yaml).ok(), *want, "{text:?}");
        }
        assert_eq!(Sse::Aes256.as_str(), "AES256");
        assert_eq!(Sse::AwsKms.as_str(), "aws:kms");
        assert_eq!(
            "kms".parse::<Sse>().unwrap_err(),
            "\"kms\" is not supported: use AES256 or aws:kms"
        );
    }

    #[test]
    fn object_lock_mode_names() {
        let cases: &[(&str, Option<LockMode>)] = &[
            ("GOVERNANCE", Some(LockMode::Governance)),
            ("governance", Some(LockMode::Governance)),
            ("Compliance", Some(LockMode::Compliance)),
            ("COMPLIANCE", Some(LockMode::Compliance)),
            ("legal-hold", None),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<LockMode>().ok(), *want, "{text:?}");
            let yaml = format!("{text:?}");
            assert_eq!(
                serde_yaml::from_str::<LockMode>(&yaml).ok(),
                *want,
                "{text:?}"
            );
        }
        assert_eq!(LockMode::default().as_str(), "GOVERNANCE");
        assert_eq!(
            "legal-hold".parse::<LockMode>().unwrap_err(),
            "\"LEGAL-HOLD\": use GOVERNANCE or COMPLIANCE"
        );
    }
}
