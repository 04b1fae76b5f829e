//! The Qwen-Image VAE against diffusers 0.42.1 golden fixtures (tools/golden/make_vae_fixtures.py),
//! plus the errors a broken `vae/` folder must give.

use qie_models::qwen_image::vae::QwenImageVae;
use qie_models::qwen_image::vae_config::VaeConfig;
use qie_models::qwen_image::vae_tiling::VaeTiling;
use qie_models::{HostWeights, ModelOptions, WeightPrecision};
use qie_runtime::weights::{save_safetensors, WeightStore};
use qie_runtime::Tensor;
use qie_tests::{fixture, rel_l2};
use std::path::Path;

const CASE: &str = "vae/tiny";

fn load_vae(precision: WeightPrecision) -> QwenImageVae {
    let options = ModelOptions {
        precision,
        ..ModelOptions::default()
    };
    QwenImageVae::load(&fixture(&format!("{CASE}/vae")), &options)
        .unwrap_or_else(|e| panic!("load: {e}"))
}

fn tensor(file: &str, name: &str) -> Tensor {
    let store = WeightStore::open(fixture(&format!("{CASE}/{file}"))).unwrap();
    let shape = store
        .info(name)
        .unwrap_or_else(|| panic!("{file}: no `{name}`"))
        .shape
        .clone();
    Tensor::from_f32(&shape, store.load_f32(name).unwrap()).unwrap()
}

fn input(name: &str) -> Tensor {
    tensor("inputs.safetensors", name)
}

fn expected(name: &str) -> Tensor {
    tensor("expected.safetensors", name)
}

fn check(what: &str, out: &Tensor, reference: &Tensor, tolerance: f64) {
    assert_eq!(out.shape(), reference.shape(), "{what}: shape");
    let err = rel_l2(&out.to_f32_vec(), &reference.to_f32_vec());
    println!("{what}: rel-L2 {err:.2e}");
    assert!(
        err <= tolerance,
        "{what}: rel-L2 {err:.3e} > {tolerance:.0e}"
    );
}

fn tiling() -> VaeTiling {
    let path = fixture(&format!("{CASE}/meta.json"));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let t = &meta["tiling"];
    let get = |k: &str| t[k].as_u64().unwrap() as usize;
    VaeTiling {
        tile_sample_min_height: get("tile_sample_min_height"),
        tile_sample_min_width: get("tile_sample_min_width"),
        tile_sample_stride_height: get("tile_sample_stride_height"),
        tile_sample_stride_width: get("tile_sample_stride_width"),
    }
}

#[test]
fn encode_gives_the_posterior_mean() {
    let vae = load_vae(WeightPrecision::F32);
    let latent = vae.encode(&input("image")).unwrap();
    check("encode", &latent, &expected("latent"), 1e-4);
}

#[test]
fn decode_batch_of_two_clamped() {
    let vae = load_vae(WeightPrecision::F32);
    let sample = vae.decode(&input("latents")).unwrap();
    check("decode", &sample, &expected("sample"), 1e-4);
    assert!(sample.to_f32_vec().iter().all(|v| v.abs() <= 1.0));
}

#[test]
fn tiled_decode_matches_diffusers_enable_tiling() {
    let vae = load_vae(WeightPrecision::F32);
    let sample = vae
        .decode_tiled(&input("latents_tiled"), &tiling())
        .unwrap();
    check("tiled decode", &sample, &expected("sample_tiled"), 1e-4);
}

#[test]
fn tiled_decode_of_a_latent_within_one_tile_is_the_plain_decode() {
    let vae = load_vae(WeightPrecision::F32);
    let sample = vae
        .decode_tiled(&input("latents"), &VaeTiling::default())
        .unwrap();
    check("tiling off", &sample, &expected("sample"), 1e-4);
}

#[test]
fn latent_normalisation_matches_the_edit_pipelines() {
    let vae = load_vae(WeightPrecision::F32);
    let normalized = vae.normalize_latents(&expected("latent"));
    check(
        "normalize",
        &normalized,
        &expected("latent_normalized"),
        1e-6,
    );
    let raw = vae.denormalize_latents(&input("latents"));
    check("denormalize", &raw, &expected("latents_denormalized"), 1e-6);
    let back = vae.normalize_latents(&raw);
    check("round trip", &back, &input("latents"), 1e-6);
}

#[test]
fn bf16_weights_match_torch() {
    let vae = load_vae(WeightPrecision::Bf16);
    let latent = vae.encode(&input("image")).unwrap();
    let sample = vae.decode(&input("latents")).unwrap();
    // Same arithmetic as the reference (bf16-rounded weights, f32 math) ...
    check(
        "encode bf16 weights",
        &latent,
        &expected("latent_bf16w"),
        1e-4,
    );
    check(
        "decode bf16 weights",
        &sample,
        &expected("sample_bf16w"),
        1e-4,
    );
    // ... and within the bf16 tolerance of PyTorch running natively in bf16.
    check(
        "encode vs torch bf16",
        &latent,
        &expected("latent_bf16"),
        2e-2,
    );
    check(
        "decode vs torch bf16",
        &sample,
        &expected("sample_bf16"),
        2e-2,
    );
}

#[test]
fn from_weights_with_random_weights_runs() {
    let config = VaeConfig::load(&fixture(&format!("{CASE}/vae/config.json"))).unwrap();
    let mut weights = HostWeights::default();
    let expected = QwenImageVae::expected_weights(&config).unwrap();
    for (i, (name, shape)) in expected.iter().enumerate() {
        let n: usize = shape.iter().product();
        let values = (0..n)
            .map(|j| ((i * 7919 + j * 104729) % 1000) as f32 / 5000.0 - 0.1)
            .collect();
        weights.insert(name.clone(), values);
    }
    let vae = QwenImageVae::from_weights(config, weights, &ModelOptions::default()).unwrap();
    let sample = vae.decode(&input("latents")).unwrap();
    assert_eq!(sample.shape(), &[2, 3, 48, 64]);
    assert!(sample.to_f32_vec().iter().all(|v| v.is_finite()));
}

/// A copy of the fixture's vae/ folder whose weights `edit` changes (name -> shape and values).
fn broken_copy(
    dir: &Path,
    edit: impl Fn(&str, Vec<usize>, Vec<f32>) -> Option<(Vec<usize>, Vec<f32>)>,
) {
    let src = fixture(&format!("{CASE}/vae"));
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let store = WeightStore::open(&src).unwrap();
    let mut tensors = Vec::new();
    for name in store.names() {
        let shape = store.info(name).unwrap().shape.clone();
        if let Some(t) = edit(name, shape, store.load_f32(name).unwrap()) {
            tensors.push((name.to_string(), t.0, t.1));
        }
    }
    let refs: Vec<(&str, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.as_slice()))
        .collect();
    save_safetensors(dir.join("diffusion_pytorch_model.safetensors"), &refs).unwrap();
}

fn load_error(dir: &Path) -> String {
    match QwenImageVae::load(dir, &ModelOptions::default()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_weight_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let gone = "decoder.mid_block.attentions.0.to_qkv.weight";
    broken_copy(dir.path(), |name, s, v| (name != gone).then_some((s, v)));
    let err = load_error(dir.path());
    assert!(err.contains("missing") && err.contains(gone), "{err}");
}

#[test]
fn wrong_shape_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad = "encoder.conv_in.weight";
    broken_copy(dir.path(), |name, s, v| {
        if name == bad {
            // a 2-D conv kernel instead of the causal conv3d's 5-D one
            Some((vec![s[0], s[1], s[3], s[4]], v[..s[0] * s[1] * 9].to_vec()))
        } else {
            Some((s, v))
        }
    });
    let err = load_error(dir.path());
    assert!(err.contains("mis-shaped") && err.contains(bad), "{err}");
}

#[test]
fn missing_or_malformed_config_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("no config.json"), "{err}");
    std::fs::write(dir.path().join("config.json"), "{\"z_dim\": 16,").unwrap();
    let err = load_error(dir.path());
    assert!(
        err.contains("config.json") && err.contains("invalid JSON"),
        "{err}"
    );
}

#[test]
fn bad_inputs_are_errors() {
    let vae = load_vae(WeightPrecision::F32);
    let odd = Tensor::from_f32(&[1, 3, 12, 16], vec![0.5; 3 * 12 * 16]).unwrap();
    let err = vae.encode(&odd).unwrap_err().to_string();
    assert!(err.contains("multiples of 8"), "{err}");
    let wrong = Tensor::from_f32(&[1, 4, 2, 2], vec![0.5; 16]).unwrap();
    let err = vae.decode(&wrong).unwrap_err().to_string();
    assert!(err.contains("latents"), "{err}");
}

/// The released VAE at 1024x1024 plans for CUDA (passes, fusion, memory plan, kernel sources; no
/// GPU needed), so it lowers to ops the CUDA backend has.
#[test]
fn released_size_plans_for_cuda() {
    use qie_models::qwen_image::vae::{lower_decoder, lower_encoder};
    use qie_runtime::cuda::{build_plan, StorageMode};
    let config = VaeConfig::released();
    for (what, graph) in [
        ("encoder", lower_encoder(&config, 1, 1024, 1024).unwrap()),
        (
            "decoder",
            lower_decoder(&config, 1, 128, 128, true).unwrap(),
        ),
    ] {
        let plan = build_plan(
            &graph,
            &qie_runtime::CompileOptions::default(),
            StorageMode::Bf16,
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        println!(
            "{what}: {} nodes, {} params bound, arena {:.2} GiB, {}",
            graph.len(),
            plan.params.len(),
            plan.arena_bytes as f64 / (1u64 << 30) as f64,
            plan.stats
        );
    }
}
