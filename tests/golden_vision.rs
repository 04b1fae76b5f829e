//! The Qwen2.5-VL vision tower against transformers 5.24.0 golden fixtures
//! (tools/golden/make_vision_fixtures.py), plus the loader's error paths.

use qie_models::qwen25vl::vision::QwenVisionTower;
use qie_models::{ModelOptions, WeightPrecision};
use qie_runtime::weights::{save_safetensors, WeightStore};
use qie_runtime::Tensor;
use qie_tests::{fixture, rel_l2};
use std::path::Path;

fn text_encoder() -> std::path::PathBuf {
    fixture("qwen25vl_vision/text_encoder")
}

/// (pixel_values, grid_thw, expected image_embeds) of a case.
fn case(name: &str) -> (Tensor, Vec<[usize; 3]>, Tensor) {
    let store = WeightStore::open(fixture(&format!("qwen25vl_vision/{name}.safetensors"))).unwrap();
    let tensor = |key: &str| {
        let shape = store.info(key).unwrap().shape.clone();
        Tensor::from_f32(&shape, store.load_f32(key).unwrap()).unwrap()
    };
    let grid = store
        .load_i64("image_grid_thw")
        .unwrap()
        .chunks(3)
        .map(|g| [g[0] as usize, g[1] as usize, g[2] as usize])
        .collect();
    (tensor("pixel_values"), grid, tensor("image_embeds"))
}

fn check(tower: &QwenVisionTower, name: &str, tolerance: f64) {
    let (pixels, grid, expected) = case(name);
    let out = tower
        .forward(&pixels, &grid)
        .unwrap_or_else(|e| panic!("{name}: forward: {e}"));
    assert_eq!(out.shape(), expected.shape(), "{name}: output shape");
    let err = rel_l2(&out.to_f32_vec(), &expected.to_f32_vec());
    println!("{name}: rel-L2 {err:.2e}");
    assert!(err <= tolerance, "{name}: rel-L2 {err:.3e} > {tolerance:e}");
}

fn load(dir: &Path) -> Result<QwenVisionTower, String> {
    QwenVisionTower::load(dir, &ModelOptions::default()).map_err(|e| e.to_string())
}

#[test]
fn two_images_of_different_sizes() {
    let tower = load(&text_encoder()).unwrap();
    check(&tower, "two_images", 1e-4);
}

#[test]
fn single_image() {
    let tower = load(&text_encoder()).unwrap();
    check(&tower, "single_image", 1e-4);
    // The plan is cached per grid: a second call with another grid compiles another one.
    check(&tower, "two_images", 1e-4);
}

#[test]
fn bf16_weights_stay_close() {
    let options = ModelOptions {
        precision: WeightPrecision::Bf16,
        ..ModelOptions::default()
    };
    let tower = QwenVisionTower::load(&text_encoder(), &options).unwrap();
    check(&tower, "two_images", 2e-2);
}

/// Copies the fixture's text_encoder/ to a temporary folder, passing every tensor through `edit`
/// (name, shape, values) -> Some(new) or None to drop it.
fn rewritten(
    edit: impl Fn(&str, Vec<usize>, Vec<f32>) -> Option<(String, Vec<usize>, Vec<f32>)>,
) -> tempfile::TempDir {
    let src = text_encoder();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let store = WeightStore::open(&src).unwrap();
    let mut tensors = Vec::new();
    for name in store.names() {
        let shape = store.info(name).unwrap().shape.clone();
        if let Some(t) = edit(name, shape, store.load_f32(name).unwrap()) {
            tensors.push(t);
        }
    }
    let refs: Vec<(&str, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.as_slice()))
        .collect();
    save_safetensors(dir.path().join("model.safetensors"), &refs).unwrap();
    dir
}

#[test]
fn model_visual_prefix_of_newer_saves_loads() {
    let dir = rewritten(|name, shape, values| {
        let name = match name.strip_prefix("visual.") {
            Some(rest) => format!("model.visual.{rest}"),
            None => name.to_string(),
        };
        Some((name, shape, values))
    });
    let tower = load(dir.path()).unwrap();
    check(&tower, "single_image", 1e-4);
}

#[test]
fn missing_tensor_is_named() {
    let dir = rewritten(|name, shape, values| {
        (name != "visual.blocks.2.mlp.up_proj.bias").then(|| (name.to_string(), shape, values))
    });
    let err = load(dir.path()).err().expect("a missing tensor must fail");
    assert!(err.contains("visual.blocks.2.mlp.up_proj.bias"), "{err}");
}

#[test]
fn wrong_shape_is_named() {
    let dir = rewritten(|name, shape, values| {
        if name == "visual.merger.mlp.2.weight" {
            let rows = shape[0] / 2;
            Some((
                name.to_string(),
                vec![rows, shape[1]],
                values[..rows * shape[1]].to_vec(),
            ))
        } else {
            Some((name.to_string(), shape, values))
        }
    });
    let err = load(dir.path())
        .err()
        .expect("a mis-shaped tensor must fail");
    assert!(err.contains("visual.merger.mlp.2.weight"), "{err}");
}

#[test]
fn no_vision_weights_at_all() {
    let dir = rewritten(|name, shape, values| {
        (!name.starts_with("visual.")).then(|| (name.to_string(), shape, values))
    });
    let err = load(dir.path()).err().expect("no vision weights must fail");
    assert!(err.contains("visual"), "{err}");
}

#[test]
fn missing_config_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = load(dir.path()).err().expect("no config.json must fail");
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn grid_that_does_not_match_pixel_values() {
    let tower = load(&text_encoder()).unwrap();
    let (pixels, _, _) = case("single_image");
    // 120 rows; this grid covers 112 patches.
    let err = tower
        .forward(&pixels, &[[1, 14, 8]])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("112 patches") && err.contains("120 rows"),
        "{err}"
    );
    let err = tower
        .forward(&pixels, &[[1, 15, 8]])
        .unwrap_err()
        .to_string();
    assert!(err.contains("spatial_merge_size"), "{err}");
    let err = tower.forward(&pixels, &[]).unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");
    let wrong_width = Tensor::from_f32(&[4, 10], vec![0.5; 40]).unwrap();
    let err = tower
        .forward(&wrong_width, &[[1, 2, 2]])
        .unwrap_err()
        .to_string();
    assert!(err.contains("pixel_values must be"), "{err}");
}

#[test]
fn expected_weights_use_relative_names_and_5d_patch_embed() {
    let tower = load(&text_encoder()).unwrap();
    let names = QwenVisionTower::expected_weights(&tower.config).unwrap();
    let patch = names
        .iter()
        .find(|(n, _)| n == "patch_embed.proj.weight")
        .expect("patch_embed.proj.weight");
    assert_eq!(patch.1, vec![32, 3, 2, 14, 14]);
    // 4 blocks x 12 tensors + patch embed + merger (ln_q, 2 linears with bias).
    assert_eq!(names.len(), 4 * 12 + 1 + 5);
}
