//! Values for a weight the checkpoint lacks, from the initialiser its `.qie` source declares
//! (`param w[..] = normal(0.02);`). Deterministic: every tensor draws from a Philox stream keyed by
//! a stable hash of its checkpoint name mixed with a user seed, so the same name and seed give the
//! same values on every run and machine, independently of load order.
//!
//! The streams do not reproduce torch's generator (nothing can, short of running torch); they
//! reproduce torch's distributions and bounds.

use crate::scheduler::noise::{gaussian_noise, philox4x32_10};
use qie_ir::ParamInit;
use rayon::prelude::*;

/// FNV-1a, 64 bit: stable across Rust versions and platforms (unlike `DefaultHasher`).
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The Philox key of the tensor `name` under `seed`.
pub fn tensor_seed(name: &str, seed: u64) -> u64 {
    // splitmix64's finaliser decorrelates nearby seeds before mixing in the name.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) ^ stable_hash(name)
}

/// `n` uniforms in [0, 1) for `key`: element `i` uses 24 bits of Philox block `i / 4`.
fn unit_uniform(n: usize, key: u64) -> Vec<f32> {
    let key = [key as u32, (key >> 32) as u32];
    let mut out = vec![0.0f32; n];
    out.par_chunks_mut(4096)
        .enumerate()
        .for_each(|(chunk, values)| {
            let first_block = chunk as u64 * 1024;
            for (j, quad) in values.chunks_mut(4).enumerate() {
                let b = first_block + j as u64;
                let r = philox4x32_10([b as u32, (b >> 32) as u32, 1, 0], key);
                for (v, bits) in quad.iter_mut().zip(r) {
                    *v = (bits >> 8) as f32 / (1u32 << 24) as f32;
                }
            }
        });
    out
}

/// The f32 values of the weight `name` of `shape`, created with `init` under `seed`.
pub fn init_values(init: &ParamInit, name: &str, shape: &[usize], seed: u64) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let key = tensor_seed(name, seed);
    match *init {
        ParamInit::Zeros => vec![0.0; n],
        ParamInit::Ones => vec![1.0; n],
        ParamInit::Normal { std } => {
            let std = std as f32;
            let mut v = gaussian_noise(key, &[n]);
            v.par_iter_mut().for_each(|x| *x *= std);
            v
        }
        ParamInit::Uniform { .. } | ParamInit::KaimingUniform { .. } => {
            let (lo, hi) = init.uniform_range(shape).expect("a uniform initialiser");
            let (lo, width) = (lo as f32, (hi - lo) as f32);
            let mut v = unit_uniform(n, key);
            v.par_iter_mut().for_each(|x| *x = lo + width * *x);
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_std(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt())
    }

    #[test]
    fn distributions_have_torch_moments_and_bounds() {
        let normal = init_values(&ParamInit::Normal { std: 0.02 }, "w", &[200, 100], 0);
        let (m, s) = mean_std(&normal);
        assert!(m.abs() < 1e-3 && (s - 0.02).abs() < 1e-3, "{m} {s}");

        let a = 5f64.sqrt();
        let k = init_values(&ParamInit::KaimingUniform { a }, "w", &[64, 400], 0);
        let bound = 1.0 / 20.0; // 1/sqrt(fan_in) for a = sqrt(5)
        assert!(k.iter().all(|&x| x.abs() <= bound as f32));
        let (m, s) = mean_std(&k);
        // U(-b, b) has std b/sqrt(3).
        assert!(
            m.abs() < 1e-3 && (s - bound / 3f64.sqrt()).abs() < 1e-3,
            "{m} {s}"
        );

        let u = init_values(&ParamInit::Uniform { lo: 2.0, hi: 3.0 }, "w", &[1000], 0);
        assert!(u.iter().all(|&x| (2.0..=3.0).contains(&x)));
        assert_eq!(init_values(&ParamInit::Zeros, "w", &[3], 0), vec![0.0; 3]);
        assert_eq!(init_values(&ParamInit::Ones, "w", &[2, 2], 0), vec![1.0; 4]);
    }

    #[test]
    fn values_depend_on_name_and_seed_only() {
        let init = ParamInit::Normal { std: 1.0 };
        let a = init_values(&init, "blocks.0.lora_A.weight", &[4, 8], 7);
        assert_eq!(a, init_values(&init, "blocks.0.lora_A.weight", &[4, 8], 7));
        assert_ne!(a, init_values(&init, "blocks.1.lora_A.weight", &[4, 8], 7));
        assert_ne!(a, init_values(&init, "blocks.0.lora_A.weight", &[4, 8], 8));
        // The hash is pinned: changing it would silently change every created weight.
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
