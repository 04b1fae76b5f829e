//! The Qwen2.5-VL language model (Qwen-Image-Edit's text encoder) against transformers 5.24
//! golden fixtures (tools/golden/make_text_model_fixtures.py). The vision tower's output is an
//! input here (`image_embeds`, dumped from the HF model run on real image-processor pixels).

use qie_models::qwen25vl::{
    rope_index, PositionMode, QwenVlConfig, QwenVlLanguageModel, RowPositions, TextEncoderInputs,
};
use qie_models::ModelOptions;
use qie_runtime::weights::{save_safetensors, WeightStore};
use qie_runtime::Tensor;
use qie_tests::{fixture, gpu_harness, gpu_tests, rel_l2};
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let timing = gpu_tests![Cuda => real_width_on_cuda]
        .into_iter()
        .map(|t| t.timing());
    let tests = gpu_tests![
        Cpu => matches_transformers_with_multimodal_rope,
            sequential_positions_match_the_diffusers_0_42_call, rope_index_matches_get_rope_index,
            language_model_prefix_of_newer_checkpoints_loads, missing_tensor_is_named,
            wrong_shape_is_named, missing_config_and_weights_are_errors,
            image_token_count_must_match_image_embeds;
        Cuda => cuda_f32_and_bf16_match_transformers;
    ];
    gpu_harness::run(tests.into_iter().chain(timing))
}

const CASES: [&str; 4] = [
    "text_batch2",
    "one_image",
    "two_images",
    "batch_images_left_pad",
];

fn encoder_dir() -> std::path::PathBuf {
    fixture("qwen25vl_text/text_encoder")
}

fn inputs(case: &str) -> TextEncoderInputs {
    TextEncoderInputs::load(&fixture(&format!(
        "qwen25vl_text/{case}/inputs.safetensors"
    )))
    .unwrap_or_else(|e| panic!("{case}: inputs: {e}"))
}

fn expected(case: &str, name: &str) -> Vec<f32> {
    WeightStore::open(fixture(&format!(
        "qwen25vl_text/{case}/expected.safetensors"
    )))
    .unwrap()
    .load_f32(name)
    .unwrap()
}

/// Keeps the hidden states of valid tokens only (left-padded cases: fully masked rows are
/// undefined; text-only batches: transformers gives padded positions 0..S-1, get_rope_index 0)
/// or everything.
fn compared(
    case: &str,
    values: &[f32],
    inputs: &TextEncoderInputs,
    hidden: usize,
    all_tokens: bool,
) -> Vec<f32> {
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("qwen25vl_text/{case}/meta.json"))).unwrap(),
    )
    .unwrap();
    if all_tokens && meta["compare"] == "all_tokens" {
        return values.to_vec();
    }
    let mask: Vec<i64> = inputs.attention_mask.iter().flatten().copied().collect();
    values
        .chunks(hidden)
        .zip(&mask)
        .filter(|(_, &m)| m != 0)
        .flat_map(|(row, _)| row.iter().copied())
        .collect()
}

fn run(model: &QwenVlLanguageModel, case: &str) -> Vec<f32> {
    let inp = inputs(case);
    let out = model
        .forward(
            &inp.input_ids,
            &inp.attention_mask,
            inp.image_embeds.as_ref(),
            &inp.grid_thw,
        )
        .unwrap_or_else(|e| panic!("{case}: forward: {e}"));
    let hidden = model.config.hidden_size;
    assert_eq!(
        out.shape(),
        &[inp.batch(), inp.seq_len(), hidden],
        "{case}: output shape"
    );
    out.to_f32_vec()
}

fn check(model: &QwenVlLanguageModel, case: &str, reference: &str) -> f64 {
    let inp = inputs(case);
    let hidden = model.config.hidden_size;
    let all = case != "text_batch2" || model.position_mode == PositionMode::Sequential;
    let out = compared(case, &run(model, case), &inp, hidden, all);
    let want = compared(case, &expected(case, reference), &inp, hidden, all);
    let err = rel_l2(&out, &want);
    println!("{case} vs {reference}: rel-L2 {err:.2e}");
    assert!(
        err <= 1e-4,
        "{case} vs {reference}: rel-L2 {err:.3e} > 1e-4"
    );
    err
}

fn load() -> QwenVlLanguageModel {
    QwenVlLanguageModel::load(&encoder_dir(), &ModelOptions::default())
        .unwrap_or_else(|e| panic!("load: {e}"))
}

fn matches_transformers_with_multimodal_rope() {
    let model = load();
    for case in CASES {
        check(&model, case, "hidden_states");
    }
}

fn sequential_positions_match_the_diffusers_0_42_call() {
    let mut model = load();
    model.position_mode = PositionMode::Sequential;
    for case in ["text_batch2", "one_image", "two_images"] {
        check(&model, case, "hidden_states_sequential");
    }
}

fn rope_index_matches_get_rope_index() {
    let config = QwenVlConfig::load(&encoder_dir().join("config.json")).unwrap();
    for case in CASES {
        let inp = inputs(case);
        let rows: Vec<RowPositions> =
            rope_index(&config, &inp.input_ids, &inp.attention_mask, &inp.grid_thw).unwrap();
        let want = WeightStore::open(fixture(&format!(
            "qwen25vl_text/{case}/expected.safetensors"
        )))
        .unwrap()
        .load_i64("position_ids")
        .unwrap();
        let (b, s) = (inp.batch(), inp.seq_len());
        for axis in 0..3 {
            for (r, row) in rows.iter().enumerate() {
                for (t, &p) in row[axis].iter().enumerate() {
                    if inp.attention_mask[r][t] != 0 {
                        assert_eq!(
                            p,
                            want[axis * b * s + r * s + t],
                            "{case}: axis {axis} row {r} token {t}"
                        );
                    }
                }
            }
        }
    }
}

/// Copies the fixture's language weights under another prefix (with the config) into `dir`,
/// letting `edit` drop or change tensors.
fn write_checkpoint(
    dir: &Path,
    prefix: &str,
    edit: impl Fn(&str, Vec<usize>, Vec<f32>) -> Option<(Vec<usize>, Vec<f32>)>,
) {
    std::fs::copy(encoder_dir().join("config.json"), dir.join("config.json")).unwrap();
    let store = WeightStore::open(encoder_dir()).unwrap();
    let mut tensors = Vec::new();
    for name in store.names() {
        let Some(rest) = name.strip_prefix("model.") else {
            continue;
        };
        let shape = store.info(name).unwrap().shape.clone();
        let values = store.load_f32(name).unwrap();
        if let Some((shape, values)) = edit(rest, shape, values) {
            tensors.push((format!("{prefix}{rest}"), shape, values));
        }
    }
    let refs: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice()))
        .collect();
    save_safetensors(dir.join("model.safetensors"), &refs).unwrap();
}

fn language_model_prefix_of_newer_checkpoints_loads() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), "model.language_model.", |_, s, v| Some((s, v)));
    let model = QwenVlLanguageModel::load(dir.path(), &ModelOptions::default()).unwrap();
    check(&model, "two_images", "hidden_states");
}

fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), "model.", |n, s, v| {
        (n != "layers.1.mlp.up_proj.weight").then_some((s, v))
    });
    let err = QwenVlLanguageModel::load(dir.path(), &ModelOptions::default())
        .err()
        .expect("load must fail");
    assert!(
        err.message.contains("model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
}

fn wrong_shape_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), "model.", |n, s, v| {
        if n == "layers.0.self_attn.k_proj.bias" {
            Some((vec![s[0] - 1], v[1..].to_vec()))
        } else {
            Some((s, v))
        }
    });
    let err = QwenVlLanguageModel::load(dir.path(), &ModelOptions::default())
        .err()
        .expect("load must fail");
    assert!(
        err.message.contains("model.layers.0.self_attn.k_proj.bias"),
        "{err}"
    );
}

fn missing_config_and_weights_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = QwenVlLanguageModel::load(dir.path(), &ModelOptions::default())
        .err()
        .unwrap();
    assert!(err.message.contains("config.json"), "{err}");
    write_checkpoint(dir.path(), "vision.", |_, s, v| Some((s, v)));
    let err = QwenVlLanguageModel::load(dir.path(), &ModelOptions::default())
        .err()
        .unwrap();
    assert!(err.message.contains("embed_tokens"), "{err}");
}

fn image_token_count_must_match_image_embeds() {
    let model = load();
    let inp = inputs("two_images");
    let embeds = inp.image_embeds.clone().unwrap();
    let hidden = model.config.hidden_size;
    let rows = embeds.shape()[0];
    let fewer = Tensor::from_f32(
        &[rows - 1, hidden],
        embeds.to_f32_vec()[..(rows - 1) * hidden].to_vec(),
    )
    .unwrap();
    let err = model
        .forward(
            &inp.input_ids,
            &inp.attention_mask,
            Some(&fewer),
            &inp.grid_thw,
        )
        .unwrap_err();
    assert!(
        err.message.contains(&format!("{rows} image tokens")),
        "{err}"
    );
    let err = model
        .forward(&inp.input_ids, &inp.attention_mask, None, &inp.grid_thw)
        .unwrap_err();
    assert!(err.message.contains("image_embeds has 0 rows"), "{err}");
    let err = model
        .forward(
            &inp.input_ids,
            &inp.attention_mask,
            Some(&embeds),
            &inp.grid_thw[..1],
        )
        .unwrap_err();
    assert!(err.message.contains("image_grid_thw"), "{err}");
}

/// The CUDA backend (the harness runs CUDA tests only where a device is found).
fn cuda(mode: qie_runtime::cuda::StorageMode) -> std::sync::Arc<dyn qie_runtime::Backend> {
    match qie_runtime::cuda::CudaBackend::new(0, mode) {
        Ok(b) => std::sync::Arc::new(b),
        Err(e) => panic!("CUDA backend ({mode:?}): {e}"),
    }
}

fn cuda_f32_and_bf16_match_transformers() {
    use qie_models::WeightPrecision;
    use qie_runtime::cuda::StorageMode;
    for (mode, precision, tolerance) in [
        (StorageMode::F32, WeightPrecision::F32, 1e-4),
        (StorageMode::Bf16, WeightPrecision::Bf16, 2e-2),
    ] {
        let backend = cuda(mode);
        let options = ModelOptions {
            backend: Some(backend),
            precision,
            ..ModelOptions::default()
        };
        let model = QwenVlLanguageModel::load(&encoder_dir(), &options).unwrap();
        for case in CASES {
            let inp = inputs(case);
            let hidden = model.config.hidden_size;
            let out = compared(case, &run(&model, case), &inp, hidden, false);
            let want = compared(case, &expected(case, "hidden_states"), &inp, hidden, false);
            let err = rel_l2(&out, &want);
            println!("cuda {mode:?} {case}: rel-L2 {err:.2e}");
            assert!(err <= tolerance, "cuda {mode:?} {case}: rel-L2 {err:.3e}");
        }
    }
}

/// Qwen2.5-VL-7B widths with random weights on the GPU: one 1024²-area image (37 x 37 tokens
/// after the merge) plus text, ~1500 tokens. QIE_TEXT_LAYERS layers (default 28). A timing that
/// needs ~20 GiB of host memory, not a check: run with --ignored.
fn real_width_on_cuda() {
    use qie_models::HostWeights;
    use qie_runtime::cuda::StorageMode;
    let backend = cuda(StorageMode::Bf16);
    let layers: usize = std::env::var("QIE_TEXT_LAYERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(28);
    let config = QwenVlConfig::from_json(serde_json::json!({
        "hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28,
        "num_key_value_heads": 4, "num_hidden_layers": layers, "vocab_size": 152064,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "vision_config": {"spatial_merge_size": 2}
    }))
    .unwrap();
    let mut weights = HostWeights::default();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for (name, shape) in QwenVlLanguageModel::expected_weights(&config).unwrap() {
        let n: usize = shape.iter().product();
        let scale = if name.ends_with("norm.weight") {
            0.0
        } else {
            0.02
        };
        let values = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                if scale == 0.0 {
                    1.0
                } else {
                    u * scale * 3.46
                }
            })
            .collect();
        weights.insert(name, values);
    }
    let options = ModelOptions {
        backend: Some(backend),
        precision: qie_models::WeightPrecision::Bf16,
        ..ModelOptions::default()
    };
    let model = QwenVlLanguageModel::from_weights(config.clone(), weights, &options).unwrap();
    let image = 37 * 37;
    let mut ids: Vec<i64> = (0..64).map(|i| 1000 + i).collect();
    ids.push(config.vision_start_token_id);
    ids.extend(std::iter::repeat_n(config.image_token_id, image));
    ids.push(config.vision_end_token_id);
    ids.extend((0..60).map(|i| 2000 + i));
    let seq = ids.len();
    let embeds: Vec<f32> = (0..image * 3584)
        .map(|i| ((i % 97) as f32 - 48.0) * 0.01)
        .collect();
    let embeds = Tensor::from_f32(&[image, 3584], embeds).unwrap();
    for run in 0..3 {
        let start = std::time::Instant::now();
        let out = model
            .forward(
                &[ids.clone()],
                &[vec![1; seq]],
                Some(&embeds),
                &[[1, 74, 74]],
            )
            .unwrap();
        let values = out.to_f32_vec();
        assert!(values.iter().all(|v| v.is_finite()), "non-finite output");
        println!(
            "run {run}: {layers} layers, {seq} tokens: {:.1} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
    }
}
