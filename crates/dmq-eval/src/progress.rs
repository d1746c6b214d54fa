//! Progress reporting for long jobs: a bar with ETA on a terminal, plain periodic lines with
//! rate and ETA when the output is a log file (where a bar would print nothing useful).

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar over `total` units that falls back to log lines off a terminal.
pub struct Progress {
    bar: ProgressBar,
    label: String,
    total: u64,
    start_pos: u64,
    started: Instant,
    last_line: Instant,
    line_every: Duration,
}

impl Progress {
    /// A bar over `total` units labelled `label`, starting at position `start` (resumed jobs).
    pub fn new(label: &str, total: u64, start: u64) -> Self {
        let bar = ProgressBar::new(total).with_position(start);
        let style = ProgressStyle::with_template(
            "{prefix} {bar:36} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(label.to_string());
        let now = Instant::now();
        Self {
            bar,
            label: label.into(),
            total,
            start_pos: start,
            started: now,
            last_line: now,
            line_every: Duration::from_secs(30),
        }
    }

    /// Sets how often plain log lines are printed off a terminal (default 30 s).
    pub fn with_line_interval(mut self, every: Duration) -> Self {
        self.line_every = every;
        self
    }

    /// Moves to position `pos` with a status message (loss, error, ...).
    pub fn set(&mut self, pos: u64, msg: impl Into<String>) {
        let msg = msg.into();
        self.bar.set_position(pos);
        if self.bar.is_hidden() {
            if self.last_line.elapsed() >= self.line_every || pos == self.total {
                self.last_line = Instant::now();
                eprintln!("{}", self.line(pos, &msg));
            }
        } else {
            self.bar.set_message(msg);
        }
    }

    /// Advances by one unit with a status message.
    pub fn inc(&mut self, msg: impl Into<String>) {
        let pos = self.bar.position() + 1;
        self.set(pos, msg);
    }

    /// Units per second since this bar was created (excluding resumed units).
    pub fn rate(&self) -> f64 {
        let done = self.bar.position().saturating_sub(self.start_pos) as f64;
        done / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    /// Seconds since this bar was created.
    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn line(&self, pos: u64, msg: &str) -> String {
        let rate = self.rate();
        let eta = self.total.saturating_sub(pos) as f64 / rate.max(1e-9);
        format!(
            "{} {pos}/{} {msg}  {rate:.2}/s  ETA {}",
            self.label,
            self.total,
            format_secs(eta)
        )
    }

    /// Removes the bar (terminal) and returns the elapsed seconds.
    pub fn finish(self) -> f64 {
        self.bar.finish_and_clear();
        self.elapsed_s()
    }
}

/// `83.4` -> `"1m23s"`, `4000` -> `"1h06m"`.
pub fn format_secs(s: f64) -> String {
    if !s.is_finite() {
        return "?".into();
    }
    let s = s.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::format_secs;

    #[test]
    fn formats_durations() {
        assert_eq!(format_secs(5.4), "5s");
        assert_eq!(format_secs(83.4), "1m23s");
        assert_eq!(format_secs(4000.0), "1h06m");
        assert_eq!(format_secs(f64::NAN), "?");
    }
}

/// One [`Progress`] bar per stage of a multi-stage job (a new bar, with its own rate and
/// ETA, whenever the stage changes).
#[derive(Default)]
pub struct StageBars {
    prefix: String,
    current: Option<(String, Progress)>,
}

impl StageBars {
    /// Bars labelled `<prefix> <stage>`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            current: None,
        }
    }

    /// Moves the bar of `stage` to `done` of `total` with `message`.
    pub fn update(&mut self, stage: &str, done: u64, total: u64, message: impl Into<String>) {
        if self.current.as_ref().is_none_or(|(s, _)| s != stage) {
            self.finish();
            let bar = Progress::new(&format!("{} {stage}", self.prefix), total, 0);
            self.current = Some((stage.to_string(), bar));
        }
        if let Some((_, b)) = self.current.as_mut() {
            b.set(done, message);
        }
    }

    /// Ends the current bar.
    pub fn finish(&mut self) {
        if let Some((_, b)) = self.current.take() {
            b.finish();
        }
    }
}
