//! Parsing and printing of sizes and durations as operators write them ("16MiB", "48h").

use std::time::Duration;

/// A duration written like `30s`, `5m`, `1h30m` or `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The one duration parser (surrounding blanks ignored), keeping the parser's own error,
    /// which says what is wrong ("unknown time unit", "expected number").
    pub fn parse(text: &str) -> Result<HumanDuration, humantime::DurationError> {
        humantime::parse_duration(text.trim()).map(HumanDuration)
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = String;
    fn from_str(text: &str) -> Result<HumanDuration, String> {
        HumanDuration::parse(text).map_err(|_| format!("{text:?} is not a duration"))
    }
}

/// Parses a byte size: a plain number of bytes, or a number with an SI (kB, MB, GB) or
/// IEC (KiB, MiB, GiB) suffix. Returns `None` when the text is not a size.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "kB" | "K" | "KB" => 1000,
        "M" | "MB" => 1000 * 1000,
        "G" | "GB" => 1000 * 1000 * 1000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        _ => return None,
    };
    let bytes = number * factor as f64;
    (bytes.is_finite() && bytes >= 0.0).then_some(bytes as u64)
}

/// Parses a duration such as `30s`, `5m`, `48h`, `1h30m` or `7d`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    humantime::parse_duration(text.trim()).ok()
}

/// Formats a byte count the way etcd's tools do (go-humanize `Bytes`: SI units, "20 kB", "1.1 GB").
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let exp = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let exp = exp.min(UNITS.len() - 1);
    let value = (n as f64 / 1000f64.powi(exp as i32) * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[exp])
    } else {
        format!("{value:.0} {}", UNITS[exp])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let cases = [
            ("16MiB", Some(16 << 20)),
            ("5MB", Some(5_000_000)),
            ("1024", Some(1024)),
            ("1.5GiB", Some(3 << 29)),
            ("2 GiB", Some(2 << 30)),
            ("lots", None),
            ("12XB", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text), want, "{text}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("48h"), Some(Duration::from_secs(48 * 3600)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn human_bytes_matches_go_humanize() {
        let cases = [
            (0, "0 B"),
            (9, "9 B"),
            (20480, "20 kB"),
            (1_100_000_000, "1.1 GB"),
            (2_500_000, "2.5 MB"),
            (999_999, "1000 kB"),
        ];
        for (n, want) in cases {
            assert_eq!(human_bytes(n), want, "{n}");
        }
    }
}
