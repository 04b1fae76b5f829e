//! The per-step progress bar of `qie edit` / `qie infer` (stderr; hidden when not a terminal).

use indicatif::{ProgressBar, ProgressStyle};

pub struct StepBar {
    bar: ProgressBar,
}

impl StepBar {
    pub fn new(steps: usize) -> StepBar {
        let bar = ProgressBar::new(steps as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:40} {pos}/{len} steps [{elapsed} < {eta}, {per_sec}]",
            )
            .expect("valid template"),
        );
        StepBar { bar }
    }

    pub fn step(&mut self, step: usize, total: usize) {
        self.bar.set_length(total as u64);
        self.bar.set_position(step as u64);
    }

    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}
