//! Benchmark helpers: random weights at real shapes and simple wall-clock statistics.

use qie_models::qwen_image::{DitConfig, DitWeights};
use std::time::{Duration, Instant};

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
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Random weights for every tensor the model expects: matrices ~ U(-1/sqrt(fan_in), ..), vectors
/// near 1 for norms, small elsewhere.
pub fn random_weights(expected: &[(String, Vec<usize>)]) -> DitWeights {
    let mut weights = DitWeights::default();
    for (i, (name, shape)) in expected.iter().enumerate() {
        let n: usize = shape.iter().product();
        let values = if shape.len() == 2 {
            random_values(n, i as u64 + 1, 1.0 / (shape[1] as f32).sqrt())
        } else if name.contains("norm") {
            random_values(n, i as u64 + 1, 0.1)
                .into_iter()
                .map(|v| 1.0 + v)
                .collect()
        } else {
            random_values(n, i as u64 + 1, 0.02)
        };
        weights.insert(name.clone(), values);
    }
    weights
}

/// Runs `f` `runs` times and returns each duration.
pub fn time_runs(runs: usize, mut f: impl FnMut()) -> Vec<Duration> {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect()
}

pub fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}
