//! Schedule math as pure functions: parsing the cron expression the way the scheduler does,
//! the interval between runs, and whether the newest backup is overdue. `now` is passed in.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("schedule: {text:?} is not a cron expression ({source}): write 5 fields like \"0 */6 * * *\" (minute hour day month weekday), or 6-7 with seconds first")]
    BadCron {
        text: String,
        #[source]
        source: croner::errors::CronError,
    },
    #[error("schedule: {text:?} never fires")]
    NeverFires { text: String },
    #[error("timezone: {text:?} is not an IANA time zone name like UTC or Europe/Berlin")]
    BadTimezone { text: String },
}

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    text: String,
    with_seconds: String,
    timezone: Tz,
    cron: Cron,
}

impl Schedule {
    /// Parses standard 5-field cron (6 and 7 fields, seconds first, accepted too) in a time zone.
    pub fn parse(text: &str, timezone: &str) -> Result<Schedule, ScheduleError> {
        let timezone: Tz = timezone.parse().map_err(|_| ScheduleError::BadTimezone {
            text: timezone.to_string(),
        })?;
        let trimmed = text.trim();
        let fields = trimmed.split_whitespace().count();
        let with_seconds = if fields == 5 {
            format!("0 {trimmed}")
        } else {
            trimmed.to_string()
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .dom_and_dow(true)
            .build()
            .parse(&with_seconds)
            .map_err(|source| ScheduleError::BadCron {
                text: text.to_string(),
                source,
            })?;
        let schedule = Schedule {
            text: trimmed.to_string(),
            with_seconds,
            timezone,
            cron,
        };
        if schedule.next_after(Utc::now()).is_none() {
            return Err(ScheduleError::NeverFires {
                text: text.to_string(),
            });
        }
        Ok(schedule)
    }

    /// The expression as configured.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The expression with a seconds field, as tokio-cron-scheduler wants it.
    pub fn with_seconds(&self) -> &str {
        &self.with_seconds
    }

    pub fn timezone(&self) -> Tz {
        self.timezone
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.timezone), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The gap between the two fire times after `now`: how often backups are expected.
    pub fn interval_at(&self, now: DateTime<Utc>) -> Duration {
        let first = self.next_after(now);
        let second = first.and_then(|f| self.next_after(f));
        match (first, second) {
            (Some(a), Some(b)) => (b - a).to_std().unwrap_or(Duration::ZERO),
            _ => Duration::ZERO,
        }
    }

    /// Whether a run is due now because the newest backup is older than one interval (a node that
    /// restarted does not wait hours for the next tick). No backup at all is overdue.
    pub fn is_overdue(&self, newest: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        match newest {
            None => true,
            Some(newest) => {
                let age = (now - newest).to_std().unwrap_or(Duration::ZERO);
                age > self.interval_at(now)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, h, m, 0).unwrap()
    }

    #[test]
    fn parses_5_6_and_7_fields() {
        let cases = [
            ("0 */6 * * *", "0 0 */6 * * *"),
            ("*/10 * * * * *", "*/10 * * * * *"),
            ("0 0 3 * * * *", "0 0 3 * * * *"),
        ];
        for (text, want) in cases {
            let s = Schedule::parse(text, "UTC").unwrap();
            assert_eq!(s.with_seconds(), want);
        }
    }

    #[test]
    fn rejects_nonsense_and_names_the_fix() {
        let err = Schedule::parse("every day", "UTC").unwrap_err().to_string();
        assert!(err.contains("5 fields"), "{err}");
        let err = Schedule::parse("0 * * * *", "Mars/Olympus")
            .unwrap_err()
            .to_string();
        assert!(err.contains("timezone"), "{err}");
    }

    #[test]
    fn next_and_interval() {
        let table = [
            // (schedule, now, next, interval seconds)
            ("0 */6 * * *", at(1, 0), at(6, 0), 6 * 3600),
            ("0 */6 * * *", at(6, 0), at(12, 0), 6 * 3600),
            (
                "30 2 * * *",
                at(3, 0),
                Utc.with_ymd_and_hms(2026, 11, 25, 2, 30, 0).unwrap(),
                86400,
            ),
            ("*/15 * * * *", at(10, 7), at(10, 15), 900),
        ];
        for (text, now, next, interval) in table {
            let s = Schedule::parse(text, "UTC").unwrap();
            assert_eq!(s.next_after(now), Some(next), "{text} at {now}");
            assert_eq!(s.interval_at(now), Duration::from_secs(interval), "{text}");
        }
    }

    #[test]
    fn timezone_shifts_fire_times() {
        let s = Schedule::parse("0 2 * * *", "Europe/Berlin").unwrap();
        // 02:00 in Berlin in November (CET, UTC+1) is 01:00 UTC.
        assert_eq!(s.next_after(at(0, 0)), Some(at(1, 0)));
    }

    #[test]
    fn overdue_when_older_than_one_interval() {
        let s = Schedule::parse("0 */6 * * *", "UTC").unwrap();
        let now = at(12, 30);
        let table = [
            (None, true),
            (Some(at(12, 0)), false),
            (Some(at(7, 0)), false),
            (Some(at(6, 29)), true),
            (Some(at(13, 0)), false), // dated in the future: not overdue
        ];
        for (newest, want) in table {
            assert_eq!(s.is_overdue(newest, now), want, "{newest:?}");
        }
    }
}
