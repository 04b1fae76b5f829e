//! A VAE config other than the released one (3 stages, 1 residual block each, z_dim 4; see
//! tools/golden/make_vae_fixtures.py `layout`): the source computes the flat `down_blocks` indices
//! and the decoder's widths from config.json, so the diffusers checkpoint loads as is and encode /
//! decode match diffusers 0.42.1.

use qie_models::qwen_image::vae::QwenImageVae;
use qie_models::qwen_image::vae_config::VaeConfig;
use qie_models::ModelOptions;
use qie_runtime::weights::WeightStore;
use qie_runtime::Tensor;
use qie_tests::{fixture, rel_l2};

const CASE: &str = "vae/layout";

fn tensor(file: &str, name: &str) -> Tensor {
    let store = WeightStore::open(fixture(&format!("{CASE}/{file}"))).unwrap();
    let shape = store.info(name).unwrap().shape.clone();
    Tensor::from_f32(&shape, store.load_f32(name).unwrap()).unwrap()
}

fn check(what: &str, out: &Tensor, reference: &Tensor) {
    assert_eq!(out.shape(), reference.shape(), "{what}: shape");
    let err = rel_l2(&out.to_f32_vec(), &reference.to_f32_vec());
    println!("{what}: rel-L2 {err:.2e}");
    assert!(err <= 1e-4, "{what}: rel-L2 {err:.3e}");
}

#[test]
fn another_layout_loads_and_matches_diffusers() {
    let dir = fixture(&format!("{CASE}/vae"));
    // Strict loading: every checkpoint tensor is read and none is missing.
    let vae = QwenImageVae::load(&dir, &ModelOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let config = VaeConfig::load(&dir.join("config.json")).unwrap();
    let names: Vec<String> = QwenImageVae::expected_weights(&config)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for name in [
        "encoder.down_blocks.0.conv1.weight",
        "encoder.down_blocks.1.resample.1.weight",
        "encoder.down_blocks.1.time_conv.weight",
        "encoder.down_blocks.2.conv1.weight",
        "encoder.down_blocks.3.resample.1.weight",
        "encoder.down_blocks.4.conv1.weight",
        "decoder.up_blocks.0.resnets.1.conv1.weight",
        "decoder.up_blocks.2.resnets.0.conv1.weight",
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }
    assert!(!names.iter().any(|n| n.starts_with("encoder.down_blocks.5")));
    assert!(!names.iter().any(|n| n.starts_with("decoder.up_blocks.3")));
    let latent = vae.encode(&tensor("inputs.safetensors", "image")).unwrap();
    check("latent", &latent, &tensor("expected.safetensors", "latent"));
    let sample = vae
        .decode(&tensor("inputs.safetensors", "latents"))
        .unwrap();
    check("sample", &sample, &tensor("expected.safetensors", "sample"));
}
