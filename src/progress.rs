//! A progress line on stderr for long transfers: redrawn in place on a terminal, one line per
//! tenth otherwise (logs and pipes get a readable record, not carriage returns).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often a terminal line is redrawn.
const REDRAW: Duration = Duration::from_millis(200);

pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    started: Instant,
    last_draw: Option<Instant>,
    last_tenth: u64,
    terminal: bool,
}

impl Progress {
    /// Progress of `total` bytes, shown on stderr.
    pub fn stderr(label: impl Into<String>, total: u64) -> Progress {
        Progress {
            label: label.into(),
            total,
            done: 0,
            started: Instant::now(),
            last_draw: None,
            last_tenth: 0,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    pub fn add(&mut self, bytes: u64) {
        self.done += bytes;
        if self.terminal {
            if self.last_draw.is_none_or(|t| t.elapsed() >= REDRAW) {
                self.last_draw = Some(Instant::now());
                eprint!("\r{}\x1b[K", self.text());
                let _ = std::io::stderr().flush();
            }
        } else {
            let tenth = self.done.saturating_mul(10) / self.total.max(1);
            if tenth > self.last_tenth && tenth < 10 {
                self.last_tenth = tenth;
                eprintln!("{}", self.text());
            }
        }
    }

    /// The last line, at 100%.
    pub fn finish(&mut self) {
        if self.terminal {
            eprintln!("\r{}\x1b[K", self.text());
        } else {
            eprintln!("{}", self.text());
        }
    }

    fn text(&self) -> String {
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        let percent = (self.done.saturating_mul(100) / self.total.max(1)).min(100);
        format!(
            "{}: {} of {} ({percent}%), {}/s",
            self.label,
            crate::units::human_bytes(self.done),
            crate::units::human_bytes(self.total),
            crate::units::human_bytes((self.done as f64 / seconds) as u64)
        )
    }
}
