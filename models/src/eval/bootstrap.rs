//! Means with 95% bootstrap intervals for comparison reports: percentile bootstrap over rows,
//! a fixed number of resamples from a fixed seed, so a report is reproducible.

/// A mean and its 95% interval over `n` values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    pub n: usize,
}

/// Resamples of [`bootstrap_mean`] in reports.
pub const RESAMPLES: usize = 2000;

/// The mean of `values` with the 2.5% and 97.5% percentiles of `resamples` resampled means;
/// `None` for no values.
pub fn bootstrap_mean(values: &[f64], resamples: usize, seed: u64) -> Option<Interval> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let mut rng = SplitMix64(seed);
    let mut means: Vec<f64> = (0..resamples.max(1))
        .map(|_| {
            let s: f64 = (0..n).map(|_| values[rng.below(n)]).sum();
            s / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (means.len() - 1) as f64).round() as usize).min(means.len() - 1)];
    Some(Interval {
        mean,
        low: at(0.025),
        high: at(0.975),
        n,
    })
}

/// splitmix64: small, fast and reproducible across platforms.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0); the modulo bias is below 2^-40 for any realistic row count.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_brackets_the_mean_and_is_reproducible() {
        let v: Vec<f64> = (0..200).map(|i| (i % 17) as f64).collect();
        let a = bootstrap_mean(&v, RESAMPLES, 7).unwrap();
        let b = bootstrap_mean(&v, RESAMPLES, 7).unwrap();
        assert_eq!(a, b);
        assert!(a.low < a.mean && a.mean < a.high, "{a:?}");
        // standard error of the mean ~ 4.9 / sqrt(200) = 0.35: the 95% interval is ~ +-0.7
        assert!((a.high - a.low) > 0.8 && (a.high - a.low) < 2.0, "{a:?}");
        assert_eq!(bootstrap_mean(&[], 10, 0), None);
        let one = bootstrap_mean(&[3.0], 10, 0).unwrap();
        assert_eq!((one.low, one.mean, one.high), (3.0, 3.0, 3.0));
    }
}
