//! Benchmark helpers: simple wall-clock statistics (random models live in qie_models::qwen_image::random).

use std::time::{Duration, Instant};

/// Runs `f` `runs` times and returns each duration.
pub fn time_runs(runs: usize, mut f: impl FnMut()) -> Vec<Duration> {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect()
}

pub fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}
