//! Helpers shared by the CUDA tests: random bf16 data, poisoning, error norms.
#![allow(dead_code)]

use half::bf16;

/// xorshift64*: deterministic per seed, fresh data per test.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// Approximately standard normal (sum of 4 uniforms, rescaled).
    pub fn normal(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.uniform()).sum();
        s * (3.0f32 / 4.0).sqrt()
    }
}

/// `n` bf16 values drawn from `scale * normal`, and their exact f64 values.
pub fn random_bf16(rng: &mut Rng, n: usize, scale: f32) -> (Vec<bf16>, Vec<f64>) {
    let v: Vec<bf16> = (0..n)
        .map(|_| bf16::from_f32(rng.normal() * scale))
        .collect();
    let f = v.iter().map(|x| x.to_f64()).collect();
    (v, f)
}

pub fn to_f64(v: &[bf16]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// ||out - ref|| / ||ref||; infinite when any output is NaN or infinite.
pub fn rel_l2(out: &[f64], reference: &[f64]) -> f64 {
    assert_eq!(out.len(), reference.len());
    if out.iter().any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = out
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b) * (a - b))
        .sum();
    let den: f64 = reference.iter().map(|b| b * b).sum();
    (num / den.max(1e-300)).sqrt()
}

/// bf16 NaN bit pattern, for poisoning outputs before a run.
pub const BF16_NAN: u16 = 0x7fc0;

pub fn poison_bf16(n: usize) -> Vec<u16> {
    vec![BF16_NAN; n]
}

pub fn gelu_tanh(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}
