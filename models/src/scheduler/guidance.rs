//! Classifier-free guidance as the Qwen-Image pipelines combine the two DiT predictions.

use crate::ModelError;

/// diffusers' true CFG: `comb = uncond + scale * (cond - uncond)`; with `rescale` (what the
/// diffusers pipelines always do) every token of `comb` (a vector over the last axis, `dim` long)
/// is then scaled to the norm of the same token of `cond`: `comb * (||cond|| / ||comb||)`.
/// `rescale = false` is the plain CFG DiffSynth-Studio uses. A token whose combined prediction is
/// exactly zero is left at zero (diffusers would produce NaN there).
pub fn true_cfg(
    cond: &[f32],
    uncond: &[f32],
    scale: f32,
    rescale: bool,
    dim: usize,
) -> Result<Vec<f32>, ModelError> {
    if cond.len() != uncond.len() {
        return Err(ModelError::new(format!(
            "cfg: conditional prediction has {} elements, unconditional {}",
            cond.len(),
            uncond.len()
        )));
    }
    if dim == 0 || !cond.len().is_multiple_of(dim) {
        return Err(ModelError::new(format!(
            "cfg: {} elements are not a whole number of {dim}-wide tokens",
            cond.len()
        )));
    }
    let mut comb: Vec<f32> = cond
        .iter()
        .zip(uncond)
        .map(|(&c, &u)| u + scale * (c - u))
        .collect();
    if rescale {
        for (token, c) in comb.chunks_mut(dim).zip(cond.chunks(dim)) {
            let cond_norm = l2_norm(c);
            let comb_norm = l2_norm(token);
            if comb_norm > 0.0 {
                let ratio = cond_norm / comb_norm;
                token.iter_mut().for_each(|x| *x *= ratio);
            }
        }
    }
    Ok(comb)
}

/// Plain CFG (DiffSynth-Studio): `uncond + scale * (cond - uncond)`.
pub fn plain_cfg(
    cond: &[f32],
    uncond: &[f32],
    scale: f32,
    dim: usize,
) -> Result<Vec<f32>, ModelError> {
    true_cfg(cond, uncond, scale, false, dim)
}

/// `torch.norm` of one token, accumulated in f64 and rounded to f32 like the f32 result.
fn l2_norm(x: &[f32]) -> f32 {
    x.iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum::<f64>()
        .sqrt() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescaled_tokens_keep_the_conditional_norm() {
        let cond = [3.0, 4.0, 1.0, 0.0];
        let uncond = [1.0, 1.0, 0.5, 0.5];
        let out = true_cfg(&cond, &uncond, 4.0, true, 2).unwrap();
        let n0 = (out[0] * out[0] + out[1] * out[1]).sqrt();
        assert!((n0 - 5.0).abs() < 1e-5);
        let plain = plain_cfg(&cond, &uncond, 4.0, 2).unwrap();
        assert_eq!(plain, vec![9.0, 13.0, 2.5, -1.5]);
    }

    #[test]
    fn mismatched_inputs_error() {
        assert!(true_cfg(&[1.0; 4], &[1.0; 3], 2.0, true, 2).is_err());
        assert!(true_cfg(&[1.0; 4], &[1.0; 4], 2.0, true, 3).is_err());
    }
}
