//! The progress bar: drawn on stderr only when stderr is a terminal (and
//! `--no-progress` was not given), so logs and pipes stay clean and stdout
//! carries only the JSON summary.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// A progress bar that may be absent; every method is a no-op then.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new(wanted: bool) -> Self {
        let bar = (wanted && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{prefix:>10} [{bar:32}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        Self { bar }
    }

    /// Starts a new phase: a name and how many steps it has.
    pub fn phase(&self, name: &'static str, len: u64) {
        if let Some(bar) = &self.bar {
            bar.set_prefix(name);
            bar.set_length(len);
            bar.set_position(0);
            bar.set_message("");
        }
    }

    pub fn set(&self, pos: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
        }
    }

    /// Sets the text after the bar; `msg` runs only when a bar is drawn.
    pub fn message(&self, msg: impl FnOnce() -> String) {
        if let Some(bar) = &self.bar {
            bar.set_message(msg());
        }
    }

    /// Prints a line on stderr without breaking the bar.
    pub fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
