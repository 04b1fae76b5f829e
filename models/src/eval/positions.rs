//! Resampling a ViT's learned position table to another patch grid, as transformers'
//! `interpolate_pos_encoding` does for DINOv2: the patch rows as a [dim, n, n] image through
//! `F.interpolate(size=(m, m), mode="bicubic", align_corners=False)` (Keys' cubic with A = -0.75,
//! source `(dst + 0.5) * n / m - 0.5`, edge samples clamped), the CLS row kept as it is.

/// `table` is [cls + n * n, dim] (row-major, `cls` leading rows kept); returns [cls + m * m, dim].
pub fn resample_positions(table: &[f32], cls: usize, n: usize, m: usize, dim: usize) -> Vec<f32> {
    assert_eq!(table.len(), (cls + n * n) * dim, "position table size");
    let taps = taps(n, m);
    let patch = &table[cls * dim..];
    let mut out = Vec::with_capacity((cls + m * m) * dim);
    out.extend_from_slice(&table[..cls * dim]);
    let at = |y: usize, x: usize| &patch[(y * n + x) * dim..(y * n + x + 1) * dim];
    let mut row = vec![0f32; dim];
    for (ys, yw) in &taps {
        for (xs, xw) in &taps {
            row.iter_mut().for_each(|v| *v = 0.0);
            for (&y, &wy) in ys.iter().zip(yw) {
                for (&x, &wx) in xs.iter().zip(xw) {
                    let w = wy * wx;
                    for (o, &v) in row.iter_mut().zip(at(y, x)) {
                        *o += w * v;
                    }
                }
            }
            out.extend_from_slice(&row);
        }
    }
    out
}

/// For each of the `m` outputs: its four source indices (clamped to the edge) and weights.
fn taps(n: usize, m: usize) -> Vec<([usize; 4], [f32; 4])> {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = n as f32 / m as f32;
    (0..m)
        .map(|d| {
            let src = scale * (d as f32 + 0.5) - 0.5;
            let base = src.floor();
            let t = src - base;
            let base = base as i64;
            let index = |k: i64| (base + k).clamp(0, n as i64 - 1) as usize;
            (
                [index(-1), index(0), index(1), index(2)],
                [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)],
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_grid_is_an_identity() {
        let table: Vec<f32> = (0..(1 + 9) * 2).map(|i| i as f32).collect();
        let out = resample_positions(&table, 1, 3, 3, 2);
        for (a, b) in out.iter().zip(&table) {
            assert!((a - b).abs() < 1e-5, "{a} {b}");
        }
    }

    #[test]
    fn constant_tables_stay_constant_and_weights_sum_to_one() {
        let table = vec![2.5f32; (1 + 37 * 37) * 3];
        let out = resample_positions(&table, 1, 37, 16, 3);
        assert_eq!(out.len(), (1 + 256) * 3);
        assert!(out.iter().all(|v| (v - 2.5).abs() < 1e-5));
        for (_, w) in taps(37, 16).iter().chain(&taps(5, 16)) {
            assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }
}
