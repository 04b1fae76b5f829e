//! Vectorisable slice kernels, compiled three times (AVX-512, AVX2+FMA, baseline) and chosen at
//! run time. The bodies are plain loops that LLVM vectorises for the enabled features;
//! transcendental functions use polynomial approximations (about 1e-7 relative error) so that
//! they vectorise too.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Baseline,
    Avx2,
    Avx512,
}

/// The best instruction set of this machine (`QIE_CPU_SIMD=avx2|baseline` lowers it).
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = std::env::var("QIE_CPU_SIMD").unwrap_or_default();
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 = std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512dq")
                && std::is_x86_feature_detected!("avx512vl");
            let avx2 =
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            if avx512 && cap.is_empty() {
                return Level::Avx512;
            }
            if avx2 && cap != "baseline" {
                return Level::Avx2;
            }
        }
        let _ = cap;
        Level::Baseline
    })
}

/// Defines `pub fn name(args)` that runs `body` compiled for the best available level.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn inner($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn v512($($arg: $ty),*) $(-> $ret)? { inner($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v256($($arg: $ty),*) $(-> $ret)? { inner($($arg),*) }
                match $crate::cpu::simd::level() {
                    // SAFETY: the level was detected on this machine.
                    $crate::cpu::simd::Level::Avx512 => unsafe { v512($($arg),*) },
                    $crate::cpu::simd::Level::Avx2 => unsafe { v256($($arg),*) },
                    $crate::cpu::simd::Level::Baseline => inner($($arg),*),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                inner($($arg),*)
            }
        }
    };
}
pub(crate) use multiversion;

/// `e^x` for f32 (Cephes-style range reduction and polynomial; ~1 ulp), vectorisable.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const HI: f32 = 88.72283;
    const LO: f32 = -87.33654;
    // Not `clamp`: NaN must map to a bound here (the result is fixed up below).
    #[allow(clippy::manual_clamp)]
    let xc = x.max(LO).min(HI);
    // floor(y) without a libm call: truncate, then step down for negative non-integers.
    let y = xc * std::f32::consts::LOG2_E + 0.5;
    // SAFETY: |y| < 130 after the clamp (NaN was clamped to a bound too).
    let t = unsafe { y.to_int_unchecked::<i32>() };
    let ni = if (t as f32) > y { t - 1 } else { t };
    let n = ni as f32;
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let pow2 = f32::from_bits(((ni + 127) << 23) as u32);
    let v = y * pow2;
    if x > HI {
        f32::INFINITY
    } else if x < LO {
        0.0
    } else if x.is_nan() {
        x
    } else {
        v
    }
}

#[inline(always)]
pub fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    // Large |x|: (e^{2|x|} - 1) / (e^{2|x|} + 1); small |x|: odd Taylor series (error < 1e-7
    // relative for |x| < 0.3).
    let e = exp_f32(2.0 * a.min(20.0));
    let big = (e - 1.0) / (e + 1.0);
    let x2 = x * x;
    let small = x
        * (1.0
            + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))));
    if a < 0.3 {
        small
    } else if x < 0.0 {
        -big
    } else {
        big
    }
}

/// NaN-propagating maximum (the reference's semantics).
#[inline(always)]
pub fn max_f32(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if a > b {
        a
    } else {
        b
    }
}

#[inline(always)]
pub fn min_f32(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if a < b {
        a
    } else {
        b
    }
}

multiversion! {
    /// `x[i] = exp(x[i] - sub)`, returns the sum of the results.
    pub fn exp_sub_sum(x: &mut [f32], sub: f32) -> f32 {
        let mut acc = [0f32; 16];
        let mut chunks = x.chunks_exact_mut(16);
        for c in &mut chunks {
            for l in 0..16 {
                let e = exp_f32(c[l] - sub);
                c[l] = e;
                acc[l] += e;
            }
        }
        let mut s = 0.0;
        for v in chunks.into_remainder() {
            let e = exp_f32(*v - sub);
            *v = e;
            s += e;
        }
        s + acc.iter().sum::<f32>()
    }
}

multiversion! {
    /// Maximum of a slice (NaN propagates; -inf for an empty slice).
    pub fn max_slice(x: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; 16];
        let mut nan = false;
        let mut chunks = x.chunks_exact(16);
        for c in &mut chunks {
            for l in 0..16 {
                nan |= c[l].is_nan();
                acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
            }
        }
        let mut m = f32::NEG_INFINITY;
        for &v in chunks.remainder() {
            nan |= v.is_nan();
            m = if v > m { v } else { m };
        }
        for a in acc {
            m = if a > m { a } else { m };
        }
        if nan {
            f32::NAN
        } else {
            m
        }
    }
}

multiversion! {
    /// Sum of a slice accumulated in f64 (eight independent lanes).
    pub fn sum_f64(x: &[f32]) -> f64 {
        let mut acc = [0f64; 8];
        let mut chunks = x.chunks_exact(8);
        for c in &mut chunks {
            for l in 0..8 {
                acc[l] += c[l] as f64;
            }
        }
        let mut s = 0.0;
        for &v in chunks.remainder() {
            s += v as f64;
        }
        s + acc.iter().sum::<f64>()
    }
}

multiversion! {
    /// `x[i] *= s`.
    pub fn scale(x: &mut [f32], s: f32) {
        for v in x {
            *v *= s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_accuracy() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn tanh_accuracy() {
        let mut x = -10.0f32;
        while x < 10.0 {
            let want = (x as f64).tanh();
            let got = tanh_f32(x) as f64;
            assert!(
                (got - want).abs() <= 6e-7 * want.abs().max(1e-3),
                "tanh({x}) = {got}, want {want}"
            );
            x += 0.00731;
        }
    }

    #[test]
    fn reductions() {
        let v: Vec<f32> = (0..1001).map(|i| (i as f32 * 0.37).sin()).collect();
        let want: f64 = v.iter().map(|&x| x as f64).sum();
        assert!((sum_f64(&v) - want).abs() < 1e-9);
        let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(max_slice(&v), m);
        let mut e = v.clone();
        let s = exp_sub_sum(&mut e, 1.0);
        let want: f64 = v.iter().map(|&x| (x as f64 - 1.0).exp()).sum();
        assert!(((s as f64) - want).abs() / want < 1e-5);
    }
}
