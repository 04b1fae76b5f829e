//! Sigma-schedule arithmetic shared by the scheduler and the pipelines: numpy's `linspace`, the
//! pipelines' default sigmas and `calculate_shift` (mu from the image token count).

/// `numpy.linspace(start, stop, num)` in f64, element for element (endpoint included).
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let div = (num - 1) as f64;
            let delta = stop - start;
            let step = delta / div;
            let mut y: Vec<f64> = (0..num)
                .map(|i| {
                    if step == 0.0 {
                        i as f64 / div * delta + start
                    } else {
                        i as f64 * step + start
                    }
                })
                .collect();
            y[num - 1] = stop;
            y
        }
    }
}

/// The Qwen-Image pipelines' default sigmas: `np.linspace(1.0, 1 / n, n)`, as the scheduler
/// receives them (cast to f32).
pub fn qwen_default_sigmas(num_steps: usize) -> Vec<f32> {
    linspace(1.0, 1.0 / num_steps as f64, num_steps)
        .into_iter()
        .map(|s| s as f32)
        .collect()
}

/// The Qwen-Image-Layered pipeline's default sigmas: `np.linspace(1.0, 0, n + 1)[:-1]`.
pub fn layered_default_sigmas(num_steps: usize) -> Vec<f32> {
    let mut s = linspace(1.0, 0.0, num_steps + 1);
    s.pop();
    s.into_iter().map(|s| s as f32).collect()
}

/// diffusers' `calculate_shift`: mu grows linearly with the image token count, from `base_shift`
/// at `base_seq_len` tokens to `max_shift` at `max_seq_len` tokens (same f64 operation order).
pub fn calculate_shift(
    image_seq_len: usize,
    base_seq_len: usize,
    max_seq_len: usize,
    base_shift: f64,
    max_shift: f64,
) -> f64 {
    let m = (max_shift - base_shift) / (max_seq_len as f64 - base_seq_len as f64);
    let b = base_shift - m * base_seq_len as f64;
    image_seq_len as f64 * m + b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_hits_both_ends() {
        let y = linspace(1.0, 0.02, 50);
        assert_eq!(y[0], 1.0);
        assert_eq!(y[49], 0.02);
        assert_eq!(linspace(3.0, 5.0, 1), vec![3.0]);
        assert!(linspace(0.0, 1.0, 0).is_empty());
    }

    #[test]
    fn shift_interpolates_between_base_and_max() {
        assert!((calculate_shift(256, 256, 8192, 0.5, 0.9) - 0.5).abs() < 1e-12);
        assert!((calculate_shift(8192, 256, 8192, 0.5, 0.9) - 0.9).abs() < 1e-12);
    }
}
