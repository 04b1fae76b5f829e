//! Every bundled reference-image positional-encoding variant (models/qie/variants/) trains on the
//! CPU: the tiny multi_ref DiT loaded with the variant's source and a rank-2 LoRA on to_q, three
//! in-memory rows, three steps with finite losses. OmniGen2's new image_index_embedding (a
//! parameter the checkpoint lacks) is created at load, trained with the LoRA factors, and changes.

use qie_models::qwen_image::{DitOptions, QwenImageDit};
use qie_models::train::{
    AdamWConfig, InMemoryData, LoopSettings, LrSchedule, TimestepScheme, TrainSample, Trainer,
};
use qie_runtime::Tensor;
use serde_json::json;
use std::path::PathBuf;

const VARIANTS: [&str; 6] = [
    "kontext_shared_frame.qie",
    "flux2_scaled_frame.qie",
    "uno_diagonal.qie",
    "dreamomni2_width_shift.qie",
    "omnigen2_index_embedding.qie",
    "diffsynth_aligned_grid.qie",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Deterministic values in [-1, 1).
fn values(seed: u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ seed.wrapping_mul(0xD6E8_FEB8_6659_FD93);
            let x = (x ^ (x >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A row with the fixture's grids: target 1x4x6, references 1x6x4 and 1x2x2; 7 text tokens.
fn row(seed: u64) -> TrainSample {
    let t = |shape: &[usize], s: u64| {
        Tensor::from_f32(shape, values(s, shape.iter().product())).unwrap()
    };
    TrainSample {
        target: t(&[1, 24, 16], seed),
        target_grid: [1, 4, 6],
        references: Some(t(&[1, 28, 16], seed + 1000)),
        reference_grids: vec![[1, 6, 4], [1, 2, 2]],
        prompt_embeds: t(&[1, 7, 24], seed + 2000),
        prompt_mask: vec![true; 7],
        source: format!("row{seed}"),
    }
}

fn settings() -> LoopSettings {
    LoopSettings {
        steps: 3,
        batch_size: 1,
        grad_accum: 1,
        lr: 1e-2,
        schedule: LrSchedule::Constant,
        optimizer: AdamWConfig::default(),
        max_grad_norm: Some(1.0),
        seed: 3,
        // Uniform: weight 1 everywhere (DiffSynth's weighting is 0 at its extreme timestep).
        timesteps: TimestepScheme::Uniform,
    }
}

fn load(variant: &str) -> QwenImageDit {
    let options = DitOptions {
        source: Some(root().join("qie/variants").join(variant)),
        ..DitOptions::default()
    };
    QwenImageDit::load_with_adapter(
        &root().join("../tests/fixtures/dit/multi_ref/transformer"),
        &options,
        Some(&json!({"rank": 2, "targets": ["to_q"]})),
    )
    .unwrap_or_else(|e| panic!("{variant}: {e}"))
}

/// LoRA factors and the weights the variant adds (what `qie train --variant` trains).
fn trainable(dit: &QwenImageDit) -> Vec<String> {
    let created = dit.created_weights();
    dit.model_weights()
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| n.contains(".lora_") || created.contains(n))
        .collect()
}

#[test]
fn each_variant_trains_three_steps() {
    let data = InMemoryData((0..3).map(row).collect());
    for variant in VARIANTS {
        let mut dit = load(variant);
        let names = trainable(&dit);
        assert!(
            names.iter().any(|n| n.contains("to_q.lora_A.")),
            "{variant}: no LoRA factor on to_q in {names:?}"
        );
        let embedding = "ref_embedding.image_index_embedding".to_string();
        let omnigen2 = variant.starts_with("omnigen2");
        assert_eq!(
            dit.created_weights().contains(&embedding),
            omnigen2,
            "{variant}: created weights {:?}",
            dit.created_weights()
        );
        let before = omnigen2.then(|| dit.weight_f32(&embedding).unwrap());
        let mut trainer = Trainer::new(&dit, names.clone(), settings())
            .unwrap_or_else(|e| panic!("{variant}: {e}"));
        for _ in 0..3 {
            let r = trainer
                .train_step(&mut dit, &data)
                .unwrap_or_else(|e| panic!("{variant}: {e}"));
            assert!(r.loss.is_finite() && r.grad_norm > 0.0, "{variant}: {r:?}");
        }
        if let Some(before) = before {
            assert!(names.contains(&embedding), "{variant}: {names:?}");
            assert_eq!(before.len(), 5 * 32);
            // normal(0.02): non-zero, small.
            assert!(before.iter().any(|v| *v != 0.0) && before.iter().all(|v| v.abs() < 0.2));
            let after = dit.weight_f32(&embedding).unwrap();
            let change = |rows: std::ops::Range<usize>| {
                rows.flat_map(|r| r * 32..(r + 1) * 32)
                    .map(|i| ((after[i] - before[i]) / before[i]).abs())
                    .fold(0.0f32, f32::max)
            };
            // The two reference images' rows (0 and 1) receive gradient; the absent images' rows
            // only shrink by AdamW's weight decay.
            let (used, unused) = (change(0..2), change(2..5));
            assert!(
                used > 10.0 * unused && used > 1e-2,
                "{variant}: image_index_embedding rows moved by {used:.2e} (used) vs {unused:.2e} (unused)"
            );
        }
    }
}
