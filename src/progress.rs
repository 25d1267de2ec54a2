//! A progress bar for plans with many map writes, so that programming tens
//! of thousands of frontends does not look like a hang. `Plan::apply`
//! only reports through the `Progress` trait; whether and how a bar is
//! drawn is decided here.

use std::{
    io::{self, IsTerminal as _},
    sync::atomic::{AtomicBool, Ordering},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Plans with at least this many map writes get a bar. Smaller plans finish
/// before a bar would be worth looking at (10,000 writes are about 1,500
/// frontends with two backends each).
pub const BAR_THRESHOLD: usize = 50_000;

/// The bar is moved once this many writes more are done: a map write
/// costs about a microsecond, and updating the bar on each one would cost
/// more than the write. (indicatif also limits redraws to 20 per second.)
const UPDATE_EVERY: usize = 512;

/// Off until `enable`: `-q` turns bars off, and the decision is made once
/// for the whole process, like the log level, rather than carried through
/// every caller of `transaction::change` down to the map writes.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Allows bars for the rest of the process (not with `-q`).
pub fn enable(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Told how far a sequence of writes has got.
pub trait Progress {
    /// `done` writes are finished.
    fn advance(&mut self, done: usize);
}

/// The bar of one plan's map writes: drawn on stderr when it is a terminal,
/// bars are enabled and the plan is large; otherwise it draws nothing.
/// Dropping it erases the bar, leaving the summary line that follows.
pub struct MapWrites {
    bar: Option<ProgressBar>,
    /// The writes the bar shows done.
    shown: usize,
}

impl MapWrites {
    pub fn new(total: usize) -> Self {
        let shown = shows_bar(total, ENABLED.load(Ordering::Relaxed), io::stderr().is_terminal());
        let bar = shown.then(|| {
            let style = ProgressStyle::with_template("writing maps {wide_bar} {pos}/{len} ({eta} left)")
                .expect("a valid template");
            ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr()).with_style(style)
        });
        Self { bar, shown: 0 }
    }
}

impl Progress for MapWrites {
    /// `done` grows by one write or by a batch of them (`Plan::apply`).
    fn advance(&mut self, done: usize) {
        if let Some(bar) = &self.bar
            && done >= self.shown + UPDATE_EVERY
        {
            bar.set_position(done as u64);
            self.shown = done;
        }
    }
}

impl Drop for MapWrites {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn shows_bar(total: usize, enabled: bool, terminal: bool) -> bool {
    enabled && terminal && total >= BAR_THRESHOLD
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_large_plans_on_a_terminal_without_q_show_a_bar() {
        assert!(shows_bar(BAR_THRESHOLD, true, true));
        assert!(!shows_bar(BAR_THRESHOLD - 1, true, true));
        assert!(!shows_bar(BAR_THRESHOLD, false, true), "-q");
        assert!(!shows_bar(BAR_THRESHOLD, true, false), "stderr is not a terminal");
    }
}
