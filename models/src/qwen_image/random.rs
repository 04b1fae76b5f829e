//! A Qwen-Image DiT with random weights at the real shapes (benchmarks, full-size GPU checks) and
//! random inputs for it; no checkpoint needed.

use super::{DitConfig, DitInputs, DitWeights};
use crate::host_weights::HostTensor;
use crate::WeightPrecision;
use qie_runtime::Tensor;

/// The real Qwen-Image-Edit DiT config with `layers` blocks.
pub fn real_dit_config(layers: usize, zero_cond_t: bool) -> DitConfig {
    DitConfig::from_json(serde_json::json!({
        "_class_name": "QwenImageTransformer2DModel",
        "patch_size": 2,
        "in_channels": 64,
        "out_channels": 16,
        "num_layers": layers,
        "attention_head_dim": 128,
        "num_attention_heads": 24,
        "joint_attention_dim": 3584,
        "guidance_embeds": false,
        "axes_dims_rope": [16, 56, 56],
        "zero_cond_t": zero_cond_t,
    }))
    .expect("valid config")
}

/// Deterministic pseudo-random values in [-scale, scale) (xorshift; fast enough for GBs of weights).
pub fn random_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    random_map(n, seed, scale, |v| v)
}

/// [`random_values`] passed through `f` element by element (no f32 copy of the whole tensor).
fn random_map<T>(n: usize, seed: u64, scale: f32, f: impl Fn(f32) -> T) -> Vec<T> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            f(((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale)
        })
        .collect()
}

/// [`random_weights_as`] stored as f32.
pub fn random_weights(expected: &[(String, Vec<usize>)]) -> DitWeights {
    random_weights_as(expected, WeightPrecision::F32)
}

/// Random weights for every tensor the model expects: matrices ~ U(-1/sqrt(fan_in), ..), vectors
/// near 1 for norms, small elsewhere. Tensors are generated in parallel (the real DiT has 20B
/// values); each one's values depend only on its index, so the result is deterministic. With
/// [`WeightPrecision::Bf16`] they are created as bf16 directly (41 GB for the real DiT instead
/// of 82 GB), equal to the f32 values rounded to bf16.
pub fn random_weights_as(
    expected: &[(String, Vec<usize>)],
    precision: WeightPrecision,
) -> DitWeights {
    use rayon::prelude::*;
    let tensors: Vec<(String, HostTensor)> = expected
        .par_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n: usize = shape.iter().product();
            let seed = i as u64 + 1;
            let (scale, offset) = if shape.len() == 2 {
                (1.0 / (shape[1] as f32).sqrt(), 0.0)
            } else if name.contains("norm") {
                (0.1, 1.0)
            } else {
                (0.02, 0.0)
            };
            let tensor = match precision {
                WeightPrecision::F32 => HostTensor::F32(random_map(n, seed, scale, |v| offset + v)),
                WeightPrecision::Bf16 => HostTensor::Bf16(random_map(n, seed, scale, |v| {
                    half::bf16::from_f32(offset + v)
                })),
            };
            (name.clone(), tensor)
        })
        .collect();
    let mut weights = DitWeights::default();
    for (name, tensor) in tensors {
        weights.insert_tensor(name, tensor);
    }
    weights
}

/// Random inputs for one edit: a target image of `side` x `side` patches, `refs` reference images
/// of the same size, `txt` text tokens (all valid), timestep 0.7.
pub fn random_inputs(config: &DitConfig, side: usize, refs: usize, txt: usize) -> DitInputs {
    let s_img = (1 + refs) * side * side;
    let (c, d) = (config.in_channels, config.joint_attention_dim);
    DitInputs {
        hidden_states: Tensor::from_f32(&[1, s_img, c], random_values(s_img * c, 7, 1.0))
            .expect("shape"),
        encoder_hidden_states: Tensor::from_f32(&[1, txt, d], random_values(txt * d, 8, 1.0))
            .expect("shape"),
        encoder_hidden_states_mask: Some(
            Tensor::from_bool(&[1, txt], vec![true; txt]).expect("shape"),
        ),
        timestep: Tensor::from_f32(&[1], vec![0.7]).expect("shape"),
        additional_t_cond: None,
        img_shapes: vec![[1, side, side]; 1 + refs],
    }
}
