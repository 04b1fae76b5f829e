//! Per-metric summaries over the scored rows: mean, standard deviation (population, as numpy's
//! default `std`), and how many rows had a defined value.

use std::collections::BTreeMap;

use super::metric::Metric;
use super::score::RowScore;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
    /// Rows whose value is undefined (e.g. PSNR of identical images), left out of the mean.
    pub undefined: usize,
}

pub fn summarize(metrics: &[Metric], rows: &[RowScore]) -> BTreeMap<Metric, Stats> {
    let mut out = BTreeMap::new();
    for &m in metrics {
        let mut values = Vec::new();
        let mut undefined = 0;
        for r in rows {
            match r.values.get(&m) {
                Some(Some(v)) => values.push(*v),
                Some(None) => undefined += 1,
                None => {}
            }
        }
        let n = values.len();
        let mean = if n > 0 {
            values.iter().sum::<f64>() / n as f64
        } else {
            f64::NAN
        };
        let var = if n > 0 {
            values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64
        } else {
            f64::NAN
        };
        out.insert(
            m,
            Stats {
                mean,
                std: var.sqrt(),
                n,
                undefined,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn undefined_values_are_counted_not_averaged() {
        let row = |v: Option<f64>| RowScore {
            index: 0,
            pred: PathBuf::new(),
            gt: PathBuf::new(),
            values: [(Metric::Psnr, v)].into_iter().collect(),
        };
        let rows = [row(Some(10.0)), row(Some(20.0)), row(None)];
        let s = summarize(&[Metric::Psnr, Metric::L1], &rows);
        let p = s[&Metric::Psnr];
        assert_eq!((p.mean, p.std, p.n, p.undefined), (15.0, 5.0, 2, 1));
        assert_eq!(s[&Metric::L1].n, 0);
        assert!(s[&Metric::L1].mean.is_nan());
    }
}
