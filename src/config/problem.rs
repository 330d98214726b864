//! One thing wrong with a config: the key it is under and what to do about it.

use std::fmt;

/// A problem found by validation or by the environment check, shown as `key: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key (`storage.s3.part-size`), or a section (`etcd`); empty when none applies.
    pub key: String,
    /// What is wrong, and the fix.
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }

    /// A problem from an error whose message already starts with its key (`schedule: ...`).
    pub fn keyed(error: impl fmt::Display) -> Problem {
        let text = error.to_string();
        match text.split_once(": ") {
            Some((key, message)) if !key.contains(' ') => Problem::new(key, message),
            _ => Problem::new("", text),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_as_key_and_message() {
        let cases = [
            (
                Problem::new("etcd.cacert", "missing"),
                "etcd.cacert: missing",
            ),
            (Problem::new("", "no key"), "no key"),
            (
                Problem::keyed("schedule: \"x\" never fires"),
                "schedule: \"x\" never fires",
            ),
            (
                Problem::keyed("a sentence: with a colon"),
                "a sentence: with a colon",
            ),
        ];
        for (problem, shown) in cases {
            assert_eq!(problem.to_string(), shown);
        }
        assert_eq!(Problem::keyed("timezone: bad").key, "timezone");
        assert_eq!(Problem::keyed("a sentence: with a colon").key, "");
    }
}
