//! Progress on stderr: live bars on a terminal; plain timestamped lines when stderr is
//! not a terminal or CI is set, so logs stay readable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub struct Progress {
    bars: Option<MultiProgress>,
    started: Instant,
}

/// One line of work (a target, a VM, a check) in the shared display.
pub struct Task {
    name: String,
    bar: Option<ProgressBar>,
    started: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Self {
        let interactive = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        Self {
            bars: interactive.then(MultiProgress::new),
            started: Instant::now(),
        }
    }

    pub fn task(&self, name: &str) -> Task {
        let bar = self.bars.as_ref().map(|bars| {
            let bar = bars.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:<10} [{elapsed:>4}] {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(name.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Task {
            name: name.to_string(),
            bar,
            started: self.started,
        }
    }
}

impl Task {
    /// A step worth a line in a log as well as on a bar.
    pub fn step(&self, message: impl Into<String>) {
        let message = message.into();
        match &self.bar {
            Some(bar) => bar.set_message(message),
            None => self.line(&message),
        }
    }

    /// Frequent detail (e.g. each crate compiled): shown on a bar, not logged.
    pub fn detail(&self, message: impl Into<String>) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.into());
        }
    }

    pub fn finish(&self, message: impl Into<String>) {
        let message = message.into();
        match &self.bar {
            Some(bar) => bar.finish_with_message(message),
            None => self.line(&message),
        }
    }

    fn line(&self, message: &str) {
        eprintln!(
            "[{:>7.1}s] {:<10} {message}",
            self.started.elapsed().as_secs_f64(),
            self.name
        );
    }
}
