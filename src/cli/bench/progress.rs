//! Runs in the host: the progress room, a bar on stderr while `keyward bench` measures.
//!
//! The bar is drawn only when stderr is a terminal (indicatif hides it otherwise); a log then
//! gets one plain line per stage instead. It is redrawn only when told to, between turns: a
//! steady tick would add a drawing thread to the machine being measured.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar's look: kept from the hand-written bar it replaced.
const TEMPLATE: &str = "[{bar:30}] {percent:>3}% ~{eta} left  {msg}";

pub(super) struct Progress {
    bar: ProgressBar,
    /// The last stage announced with a plain line, when the bar is hidden.
    stage: String,
}

impl Progress {
    /// A bar of `total` steps on stderr.
    pub(super) fn new(total: usize) -> Self {
        let bar = ProgressBar::with_draw_target(
            Some(u64::try_from(total).unwrap_or(u64::MAX)),
            ProgressDrawTarget::stderr(),
        );
        // The template is a constant; should it ever be refused, indicatif's default look will do.
        if let Ok(style) = ProgressStyle::with_template(TEMPLATE) {
            bar.set_style(style.progress_chars("#-"));
        }
        Self {
            bar,
            stage: String::new(),
        }
    }

    /// Shows what runs now, e.g. `round 1/5: latency, turn 2/40` (the stage is what comes before
    /// the first ':').
    pub(super) fn show(&mut self, label: &str) {
        if self.bar.is_hidden() {
            let stage = label.split(':').next().unwrap_or(label);
            if stage != self.stage {
                self.stage = stage.to_owned();
                eprintln!("keyward bench: {stage}");
            }
        } else {
            self.bar.set_message(label.to_owned());
        }
    }

    pub(super) fn advance(&self) {
        self.bar.inc(1);
    }

    /// Clears the bar and says how long the measuring took.
    pub(super) fn finish(&self) {
        self.bar.finish_and_clear();
        eprintln!(
            "keyward bench: measured in {:.1} s",
            self.bar.elapsed().as_secs_f64()
        );
    }
}
