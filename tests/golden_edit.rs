//! End-to-end golden test of the edit pipelines against diffusers 0.42.1 (tests/fixtures/edit/,
//! made by tools/golden/make_edit_fixtures.py): same inputs and initial noise give the same
//! prompt embeddings, the same timestep, noise prediction (after CFG) and latents at every
//! denoising step, checked in step order so a regression names its first wrong step, the same
//! final latents (rel-L2 <= 1e-4) and 8-bit image (mean |diff| <= 1 level).

use qie_models::hub::model_paths_from_folder;
use qie_models::lora::LoraSet;
use qie_models::pipeline::{EditPipeline, EditSettings};
use qie_models::preprocess::{load_rgb, ImageBackend, RgbImage};
use qie_models::qwen25vl::PositionMode;
use qie_models::ModelOptions;
use qie_runtime::weights::WeightStore;
use qie_runtime::Tensor;
use qie_tests::{fixture, rel_l2};
use std::path::Path;

struct Case {
    pipeline: EditPipeline,
    settings: EditSettings,
    images: Vec<RgbImage>,
    noise: Tensor,
    expected: WeightStore,
}

fn load_case(name: &str, positions: PositionMode) -> Case {
    let dir = fixture(&format!("edit/{name}"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("settings.json")).unwrap()).unwrap();
    let mut pipeline = EditPipeline::load(
        model_paths_from_folder(&dir.join("model")).unwrap(),
        &ModelOptions::default(),
        &LoraSet::default(),
    )
    .unwrap();
    // The fixture ran diffusers 0.42.1 on transformers 5.24 (1-D text positions) with the PIL
    // image-processor backend (no torchvision in the reference environment).
    pipeline.set_text_positions(positions);
    pipeline.set_vl_resize(ImageBackend::Pil);
    let settings = EditSettings {
        prompt: json["prompt"].as_str().unwrap().to_string(),
        negative_prompt: json["negative_prompt"].as_str().map(str::to_string),
        steps: json["num_inference_steps"].as_u64().unwrap() as usize,
        cfg: json["true_cfg_scale"].as_f64().unwrap() as f32,
        // The fixture shrinks the pipelines' fixed areas (Plus: vl/vae/output; Edit: one area).
        vl_area: area(&json, "vl_area"),
        vae_area: area(&json, "vae_area"),
        output_area: area(&json, "output_area"),
        ..EditSettings::default()
    };
    let images = json["input_images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| load_rgb(dir.join(p.as_str().unwrap())).unwrap())
        .collect();
    let noise_store = WeightStore::open(dir.join("init_noise.safetensors")).unwrap();
    let shape = noise_store.info("latents").unwrap().shape.clone();
    let noise = Tensor::from_f32(&shape, noise_store.load_f32("latents").unwrap()).unwrap();
    let expected = WeightStore::open(dir.join("expected.safetensors")).unwrap();
    Case {
        pipeline,
        settings,
        images,
        noise,
        expected,
    }
}

fn area(json: &serde_json::Value, key: &str) -> Option<usize> {
    json[key]
        .as_u64()
        .or_else(|| json["area"].as_u64())
        .map(|v| v as usize)
}

fn check(what: &str, got: &[f32], expected: &[f32], tol: f64) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{what}: non-finite output"
    );
    let err = rel_l2(got, expected);
    eprintln!("{what}: rel-L2 {err:.3e}");
    assert!(err <= tol, "{what}: rel-L2 {err:.3e} > {tol:.0e}");
}

/// What the pipeline showed its observer at one step.
struct Step {
    timestep: f32,
    noise_pred: Vec<f32>,
    latents: Vec<f32>,
}

/// Row `i` of a stacked per-step fixture tensor ([steps, ...]).
fn step_row(all: &[f32], steps: usize, i: usize) -> &[f32] {
    let n = all.len() / steps;
    &all[i * n..(i + 1) * n]
}

/// Every step against diffusers' (`scheduler.step` arguments and results), in order.
fn check_steps(name: &str, steps: &[Step], expected: &WeightStore) {
    let timesteps = expected.load_f32("timesteps_per_call").unwrap();
    assert_eq!(steps.len(), timesteps.len(), "{name}: number of steps");
    let noise_preds = expected.load_f32("noise_pred_per_step").unwrap();
    let latents = expected.load_f32("latents_per_step").unwrap();
    for (i, step) in steps.iter().enumerate() {
        let t = step.timestep / 1000.0;
        assert!(
            (t - timesteps[i]).abs() <= 1e-6,
            "{name}: step {i} timestep {t}, want {}",
            timesteps[i]
        );
        let n = steps.len();
        check(
            &format!("{name}: step {i} noise_pred"),
            &step.noise_pred,
            step_row(&noise_preds, n, i),
            1e-4,
        );
        check(
            &format!("{name}: step {i} latents"),
            &step.latents,
            step_row(&latents, n, i),
            1e-4,
        );
    }
}

fn end_to_end(name: &str) {
    let case = load_case(name, PositionMode::Sequential);
    let mut steps = Vec::new();
    let out = case
        .pipeline
        .edit_observed(&case.images, &case.settings, Some(&case.noise), &mut |s| {
            assert_eq!(s.step, steps.len() + 1, "{name}: steps in order");
            steps.push(Step {
                timestep: s.timestep,
                noise_pred: s.noise_pred.to_f32_vec(),
                latents: s.latents.to_f32_vec(),
            });
        })
        .unwrap();
    check_steps(name, &steps, &case.expected);
    let expected = |n: &str| case.expected.load_f32(n).unwrap();
    check(
        &format!("{name}: final latents"),
        &out.latents.to_f32_vec(),
        &expected("final_latents_packed"),
        1e-4,
    );
    let want = load_rgb(fixture(&format!("edit/{name}")).join("out.png")).unwrap();
    assert_eq!(
        want.dimensions(),
        out.image.dimensions(),
        "{name}: output size"
    );
    let diff: f64 = want
        .as_raw()
        .iter()
        .zip(out.image.as_raw())
        .map(|(&a, &b)| (a as f64 - b as f64).abs())
        .sum::<f64>()
        / want.as_raw().len() as f64;
    eprintln!("{name}: image mean |diff| {diff:.4} levels");
    assert!(diff <= 1.0, "{name}: image mean |diff| {diff} levels");
}

fn prompt_embeds(name: &str, positions: PositionMode, suffix: &str) {
    let case = load_case(name, positions);
    let dir = fixture(&format!("edit/{name}"));
    let condition: Vec<RgbImage> = (0..case.images.len())
        .map(|i| condition_image(&case.expected, i, &dir))
        .collect();
    let neg = case.settings.negative_prompt.clone().unwrap();
    let embeds = case
        .pipeline
        .encode_text(&condition, &[&case.settings.prompt, &neg])
        .unwrap();
    let expected = |n: &str| case.expected.load_f32(n).unwrap();
    check(
        &format!("{name}: prompt embeds{suffix}"),
        &embeds[0].to_f32_vec(),
        &expected(&format!("pos_prompt_embeds{suffix}")),
        1e-4,
    );
    check(
        &format!("{name}: negative prompt embeds{suffix}"),
        &embeds[1].to_f32_vec(),
        &expected(&format!("neg_prompt_embeds{suffix}")),
        1e-4,
    );
}

/// The VL-area image the pipeline fed the processor (uint8 HWC in the fixture).
fn condition_image(expected: &WeightStore, i: usize, _dir: &Path) -> RgbImage {
    let name = format!("condition_image_{i}");
    let shape = expected.info(&name).unwrap().shape.clone();
    let bytes = expected.bytes(&name).unwrap().to_vec();
    RgbImage::from_raw(shape[1] as u32, shape[0] as u32, bytes).unwrap()
}

#[test]
fn plus_end_to_end() {
    end_to_end("plus");
}

#[test]
fn edit_end_to_end() {
    end_to_end("edit");
}

#[test]
fn plus_prompt_embeds_sequential_positions() {
    prompt_embeds("plus", PositionMode::Sequential, "");
}

#[test]
fn plus_prompt_embeds_multimodal_positions() {
    prompt_embeds("plus", PositionMode::Multimodal, "_mrope");
}

#[test]
fn edit_prompt_embeds_multimodal_positions() {
    prompt_embeds("edit", PositionMode::Multimodal, "_mrope");
}

/// The per-step check names the first wrong step: the fixture's own steps pass, and a 1% error
/// in step 1's noise prediction is reported as step 1.
#[test]
fn a_wrong_step_is_named() {
    let expected = WeightStore::open(fixture("edit/edit").join("expected.safetensors")).unwrap();
    let timesteps = expected.load_f32("timesteps_per_call").unwrap();
    let noise_preds = expected.load_f32("noise_pred_per_step").unwrap();
    let latents = expected.load_f32("latents_per_step").unwrap();
    let n = timesteps.len();
    let mut steps: Vec<Step> = (0..n)
        .map(|i| Step {
            timestep: timesteps[i] * 1000.0,
            noise_pred: step_row(&noise_preds, n, i).to_vec(),
            latents: step_row(&latents, n, i).to_vec(),
        })
        .collect();
    check_steps("edit", &steps, &expected);
    steps[1].noise_pred.iter_mut().for_each(|v| *v *= 1.01);
    let err = std::panic::catch_unwind(|| check_steps("edit", &steps, &expected)).unwrap_err();
    let message = err.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("step 1 noise_pred: rel-L2 1.000e-2 > 1e-4"),
        "{message}"
    );
}
