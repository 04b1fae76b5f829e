//! Resampling kernels exactly as Pillow's libImaging/Resample.c defines them (double precision).

use std::f64::consts::PI;

/// The resampling filters the Qwen-Image-Edit inputs use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Keys cubic with a = -0.5 (PIL `BICUBIC`, torchvision antialiased bicubic).
    Bicubic,
    /// Sinc windowed by sinc(x/3) (PIL `LANCZOS`).
    Lanczos,
    /// The same cubic written as torch's `cubic_convolution1/2` (other rounding order).
    BicubicTorch,
}

impl Filter {
    /// Half-width of the kernel at scale 1.
    pub fn support(self) -> f64 {
        match self {
            Filter::Bicubic | Filter::BicubicTorch => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    pub fn eval(self, x: f64) -> f64 {
        match self {
            Filter::Bicubic => bicubic(x),
            Filter::Lanczos => lanczos(x),
            Filter::BicubicTorch => bicubic_torch(x),
        }
    }
}

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

fn bicubic_torch(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * PI;
    x.sin() / x
}

fn lanczos(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// Per output pixel: the first input index, how many inputs it reads, and their weights
/// (normalised to sum 1), laid out with a fixed stride `ksize`.
pub struct Coefficients {
    pub ksize: usize,
    pub bounds: Vec<(usize, usize)>,
    pub weights: Vec<f64>,
}

/// Pillow's `precompute_coeffs` for the input span `[in0, in1)` (a float box, as Pillow passes it).
pub fn precompute(
    in_size: usize,
    in0: f32,
    in1: f32,
    out_size: usize,
    filter: Filter,
) -> Coefficients {
    let scale = (in1 - in0) as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let inv_filterscale = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0.0f64; out_size * ksize];
    for xx in 0..out_size {
        let center = in0 as f64 + (xx as f64 + 0.5) * scale;
        // C truncates toward zero; negative starts clamp to 0 either way.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        // torch clamps the rare precision overshoot to ksize; Pillow never reaches it in practice.
        let count = ((xmax - xmin).max(0) as usize).min(ksize);
        let k = &mut weights[xx * ksize..xx * ksize + count];
        let mut total = 0.0;
        for (x, w) in k.iter_mut().enumerate() {
            *w = filter.eval((x as f64 + xmin as f64 - center + 0.5) * inv_filterscale);
            total += *w;
        }
        if total != 0.0 {
            for w in k.iter_mut() {
                *w /= total;
            }
        }
        bounds.push((xmin as usize, count));
    }
    Coefficients {
        ksize,
        bounds,
        weights,
    }
}

/// Rounds weights to fixed point with `bits` fractional bits, half away from zero like Pillow.
pub fn to_fixed(weights: &[f64], bits: u32) -> Vec<i32> {
    let one = (1u32 << bits) as f64;
    weights
        .iter()
        .map(|&w| {
            if w < 0.0 {
                (-0.5 + w * one) as i32
            } else {
                (0.5 + w * one) as i32
            }
        })
        .collect()
}
