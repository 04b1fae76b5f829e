//! Shared helpers for cross-crate tests: fixture paths and tolerance checks, and the harness of
//! the test binaries with GPU tests (`gpu_harness`, shared with the runtime's tests).

#[path = "../runtime/tests/gpu_harness/mod.rs"]
pub mod gpu_harness;

use qie_models::qwen_image::ImgShape;
use qie_runtime::weights::WeightStore;
use std::path::PathBuf;

/// `tests/fixtures/<rel>` in this checkout.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// The (ground truth, prediction) pairs of tests/fixtures/eval that the model-metric fixture
/// scripts embed, in their order: rows whose prediction exists and whose image is at least 16
/// pixels wide.
pub fn eval_pairs() -> Vec<(PathBuf, PathBuf)> {
    let text = std::fs::read_to_string(fixture("eval/data.jsonl")).unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let image = row["image"].as_str().unwrap();
        let gt = fixture(&format!("eval/{image}"));
        let name = PathBuf::from(image).file_name().unwrap().to_owned();
        let pred = fixture("eval/pred").join(name);
        if pred.exists() && qie_models::preprocess::load_rgb(&gt).unwrap().width() >= 16 {
            out.push((gt, pred));
        }
    }
    out
}

/// ||out - ref|| / ||ref|| in f64; NaN or a length mismatch gives infinity so it never passes.
pub fn rel_l2(out: &[f32], reference: &[f32]) -> f64 {
    if out.len() != reference.len() {
        return f64::INFINITY;
    }
    let mut diff = 0.0f64;
    let mut norm = 0.0f64;
    for (&o, &r) in out.iter().zip(reference) {
        if !o.is_finite() {
            return f64::INFINITY;
        }
        diff += (o as f64 - r as f64).powi(2);
        norm += (r as f64).powi(2);
    }
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

/// `img_shapes` of a DiT golden case (from its meta.json).
pub fn dit_img_shapes(case: &str) -> Vec<ImgShape> {
    let path = fixture(&format!("dit/{case}/meta.json"));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    meta["img_shapes"]
        .as_array()
        .expect("meta.json: img_shapes")
        .iter()
        .map(|s| {
            let v: Vec<usize> = s
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            [v[0], v[1], v[2]]
        })
        .collect()
}

/// A reference tensor of a DiT golden case (`sample`, `sample_bf16`, intermediates).
pub fn dit_expected(case: &str, name: &str) -> Vec<f32> {
    WeightStore::open(fixture(&format!("dit/{case}/expected.safetensors")))
        .unwrap()
        .load_f32(name)
        .unwrap()
}
