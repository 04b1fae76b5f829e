//! Seeded Gaussian noise made on the host: Philox4x32-10 (a counter-based generator, so any
//! element can be computed independently and in parallel) plus the Box-Muller transform.
//!
//! The same seed gives the same noise on every run and machine (up to the last bit of the
//! platform's f64 `ln`/`sin`/`cos`, which the rounding to f32 almost always hides). It does NOT
//! reproduce `torch.randn`; runs that must match PyTorch pass the initial noise in explicitly.

use rayon::prelude::*;

const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds (Salmon et al., SC'11; the Random123 reference).
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(PHILOX_W0);
            k[1] = k[1].wrapping_add(PHILOX_W1);
        }
        let p0 = (PHILOX_M0 as u64) * (c[0] as u64);
        let p1 = (PHILOX_M1 as u64) * (c[2] as u64);
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k[1],
            p0 as u32,
        ];
    }
    c
}

/// `shape.iter().product()` standard normal f32 values for `seed`, row-major. Element `2i` and
/// `2i + 1` come from Philox block `i` (counter = i), so a prefix of a larger request is identical.
pub fn gaussian_noise(seed: u64, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let key = [seed as u32, (seed >> 32) as u32];
    let mut out = vec![0.0f32; n];
    out.par_chunks_mut(2048)
        .enumerate()
        .for_each(|(chunk, values)| {
            let first_pair = chunk * 1024;
            for (j, pair) in values.chunks_mut(2).enumerate() {
                let (a, b) = normal_pair(first_pair as u64 + j as u64, key);
                pair[0] = a;
                if pair.len() > 1 {
                    pair[1] = b;
                }
            }
        });
    out
}

/// Two independent N(0, 1) values from one Philox block: 53-bit uniforms in (0, 1], Box-Muller.
fn normal_pair(index: u64, key: [u32; 2]) -> (f32, f32) {
    let r = philox4x32_10([index as u32, (index >> 32) as u32, 0, 0], key);
    let u1 = unit_open_zero(r[0], r[1]);
    let u2 = unit_open_zero(r[2], r[3]);
    let radius = (-2.0 * u1.ln()).sqrt();
    let angle = std::f64::consts::TAU * u2;
    ((radius * angle.cos()) as f32, (radius * angle.sin()) as f32)
}

/// A uniform f64 in (0, 1] from 53 of the 64 bits (never 0, so `ln` is finite).
fn unit_open_zero(hi: u32, lo: u32) -> f64 {
    let bits = (((hi as u64) << 32) | lo as u64) >> 11;
    (bits as f64 + 1.0) / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_matches_random123_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn noise_is_deterministic_and_standard_normal() {
        let a = gaussian_noise(42, &[4, 16, 1000]);
        assert_eq!(a, gaussian_noise(42, &[4, 16, 1000]));
        assert_ne!(a[..100], gaussian_noise(43, &[100])[..]);
        assert_eq!(a[..4097], gaussian_noise(42, &[4097])[..]);
        let n = a.len() as f64;
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
        assert!(a.iter().all(|x| x.is_finite()));
    }
}
