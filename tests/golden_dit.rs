//! The Qwen-Image DiT against diffusers 0.42.1 golden fixtures (tools/golden/make_dit_fixtures.py).

use qie_models::qwen_image::{DitInputs, DitOptions, QwenImageDit, WeightPrecision};
use qie_tests::{dit_expected as expected, dit_img_shapes as img_shapes, fixture, rel_l2};

fn run_case(case: &str, precision: WeightPrecision) -> Vec<f32> {
    let options = DitOptions {
        precision,
        ..DitOptions::default()
    };
    let dit = QwenImageDit::load(&fixture(&format!("dit/{case}/transformer")), &options)
        .unwrap_or_else(|e| panic!("{case}: load: {e}"));
    let inputs = DitInputs::load(
        &fixture(&format!("dit/{case}/inputs.safetensors")),
        img_shapes(case),
    )
    .unwrap_or_else(|e| panic!("{case}: inputs: {e}"));
    let sample = dit
        .forward(&inputs)
        .unwrap_or_else(|e| panic!("{case}: forward: {e}"));
    let hs = inputs.hidden_states.shape();
    assert_eq!(
        sample.shape(),
        &[hs[0], hs[1], 4 * dit.config.out_channels],
        "{case}: sample shape"
    );
    sample.to_f32_vec()
}

fn check_f32(case: &str) {
    let out = run_case(case, WeightPrecision::F32);
    let err = rel_l2(&out, &expected(case, "sample"));
    println!("{case}: rel-L2 {err:.2e}");
    assert!(err <= 1e-4, "{case}: rel-L2 {err:.3e} > 1e-4");
}

#[test]
fn single_image() {
    check_f32("single");
}

#[test]
fn multiple_reference_images_of_different_sizes_with_padded_text() {
    check_f32("multi_ref");
}

#[test]
fn zero_cond_t_2511() {
    check_f32("zero_cond_t");
}

#[test]
fn sharded_checkpoint() {
    check_f32("sharded");
}

#[test]
fn batch_of_two_with_different_masks() {
    check_f32("batch2");
}

#[test]
fn additional_t_cond() {
    check_f32("additional_t_cond");
}

#[test]
fn layered_variant_source_selected_by_config() {
    check_f32("layer3d_rope");
}

#[test]
fn bf16_weights_upcast_match_f32_reference() {
    check_f32("bf16");
}

#[test]
fn bf16_path_matches_torch_bf16() {
    let out = run_case("bf16", WeightPrecision::Bf16);
    let err = rel_l2(&out, &expected("bf16", "sample_bf16"));
    println!("bf16 vs torch bf16: rel-L2 {err:.2e}");
    assert!(err <= 2e-2, "rel-L2 {err:.3e} > 2e-2");
}
