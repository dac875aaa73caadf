//! Progress bars for long one-shot work (`run --until-drained`, `sync`, `replay`, `backfill`): drawn
//! on stderr only when it is a terminal (indicatif hides them otherwise), and never in JSON-log mode,
//! where stderr is a machine's log stream even on a terminal.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `total` steps in `template` (indicatif's template syntax), hidden in JSON-log mode.
pub fn bar(total: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("# "));
    }
    quiet_for_json_logs(bar)
}

fn quiet_for_json_logs(bar: ProgressBar) -> ProgressBar {
    if crate::logging::json_logs() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

/// A spinner for a one-shot run: events published, rows landed and new, dead letters, as the
/// metrics count them, refreshed five times a second until [`RunProgress::finish`].
pub struct RunProgress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl RunProgress {
    pub fn start() -> RunProgress {
        let bar = quiet_for_json_logs(ProgressBar::new_spinner());
        if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}") {
            bar.set_style(style);
        }
        let ticking = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                ticking.set_message(totals_line());
                ticking.tick();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        RunProgress { bar, ticker }
    }

    /// Stops the spinner and leaves the final totals on the terminal (a run shorter than a tick
    /// still shows what it did).
    pub fn finish(self) {
        self.ticker.abort();
        self.bar.finish_with_message(totals_line());
    }
}

/// The process's totals so far, in words.
fn totals_line() -> String {
    let totals = crate::metrics::global().totals();
    format!(
        "published {}, landed {} ({} new), dead-lettered {}",
        totals.published, totals.offered, totals.landed_new, totals.dead_lettered
    )
}
