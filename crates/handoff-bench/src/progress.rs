//! The progress bar on standard error: one bar at a time, hidden with `--json`.

use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar that can be restarted for each phase, or a silent one. Clones share it.
#[derive(Clone)]
pub struct Bar {
    bar: Arc<Mutex<Option<ProgressBar>>>,
    hidden: bool,
}

impl Bar {
    pub fn new(hidden: bool) -> Bar {
        Bar {
            bar: Arc::new(Mutex::new(None)),
            hidden,
        }
    }

    /// Starts a phase of `total` steps named `what`.
    pub fn start(&self, what: &str, total: u64) {
        let bar = if self.hidden {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix:>18} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        };
        bar.set_prefix(what.to_owned());
        let mut slot = self.bar.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = slot.replace(bar) {
            old.finish_and_clear();
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(bar) = &*self.bar.lock().unwrap_or_else(|p| p.into_inner()) {
            bar.inc(n);
        }
    }

    pub fn set(&self, position: u64, message: String) {
        if let Some(bar) = &*self.bar.lock().unwrap_or_else(|p| p.into_inner()) {
            bar.set_position(position);
            bar.set_message(message);
        }
    }

    /// Ends the phase, leaving its last line on the terminal.
    pub fn finish(&self) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
            bar.finish();
        }
    }

    /// A line of narration between phases (nothing with `--json`).
    pub fn note(&self, line: &str) {
        if !self.hidden {
            eprintln!("[bench] {line}");
        }
    }
}
