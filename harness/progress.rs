//! Everything the harness shows while it runs: one factory for every bar.
//!
//! With `--progress never`, or `auto` when stderr is not a terminal, every bar is
//! hidden and no escape code is written; messages still reach stderr as plain
//! lines. When bars are drawn, messages go through [`MultiProgress::println`] so
//! they do not tear the bars. A finished bar leaves one line saying what its stage
//! did and how long it took.
//!
//! Bars are cheap to update (indicatif redraws at most ~20 times a second), and
//! workers report once per batch, not once per change.

use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::DrawProgress;

/// Where the harness's progress and messages go.
pub struct Ui {
    multi: Option<MultiProgress>,
}

/// One bar: a stage, a worker, or the apply total.
pub struct Bar {
    bar: ProgressBar,
    started: Instant,
}

const BYTES_TEMPLATE: &str =
    "{prefix:>10} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} eta {eta:>4} {msg}";
const COUNT_TEMPLATE: &str = "{prefix:>10} [{bar:30}] {pos:>10}/{len:<10} {msg}";

impl Ui {
    pub fn new(draw: DrawProgress) -> Ui {
        let target = match draw {
            DrawProgress::No => None,
            DrawProgress::OnTerminal => Some(ProgressDrawTarget::stderr()),
            // indicatif hides bars on a non-terminal; a TermLike target is
            // always drawn, which is what `--progress always` asks for.
            DrawProgress::Forced => Some(ProgressDrawTarget::term_like_with_hz(
                Box::new(console::Term::stderr()),
                20,
            )),
        };
        Ui {
            multi: target.map(MultiProgress::with_draw_target),
        }
    }

    /// Prints a line on stderr, above the bars when they are drawn.
    pub fn message(&self, text: &str) {
        match &self.multi {
            Some(m) => {
                if m.println(text).is_err() {
                    eprintln!("{text}");
                }
            }
            None => eprintln!("{text}"),
        }
    }

    /// Prints the run's last lines, below every bar (all bars are finished by
    /// then, so nothing redraws over them).
    pub fn final_message(&self, text: &str) {
        eprintln!("{text}");
    }

    fn bar(&self, prefix: &str, total: u64, template: &str) -> Bar {
        let bar = match &self.multi {
            Some(m) => {
                let style = ProgressStyle::with_template(template)
                    .expect("progress template is valid")
                    .progress_chars("=> ");
                let bar = m.add(ProgressBar::new(total).with_style(style));
                bar.set_prefix(prefix.to_string());
                bar.enable_steady_tick(Duration::from_millis(200));
                bar
            }
            None => ProgressBar::hidden(),
        };
        Bar {
            bar,
            started: Instant::now(),
        }
    }

    /// A bar counting bytes.
    pub fn bytes_bar(&self, prefix: &str, total: u64) -> Bar {
        self.bar(prefix, total, BYTES_TEMPLATE)
    }

    /// A bar counting items (merge partitions).
    pub fn count_bar(&self, prefix: &str, total: u64) -> Bar {
        self.bar(prefix, total, COUNT_TEMPLATE)
    }
}

impl Bar {
    pub fn set(&self, position: u64) {
        self.bar.set_position(position);
    }

    /// Starts the bar over with a new length (a worker that takes another chunk).
    pub fn restart(&self, length: u64) {
        self.bar.set_length(length);
        self.bar.set_position(0);
        self.bar.reset_eta();
    }

    pub fn set_message(&self, message: String) {
        self.bar.set_message(message);
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Ends the bar, leaving `record` and the elapsed time as its last line.
    pub fn finish(&self, record: &str) {
        if self.bar.is_hidden() {
            return;
        }
        let prefix = self.bar.prefix();
        self.bar
            .set_style(ProgressStyle::with_template("{prefix:>10} {msg}").expect("valid"));
        self.bar.set_prefix(prefix);
        self.bar
            .finish_with_message(format!("{record} in {:.2?}", self.elapsed()));
    }
}
