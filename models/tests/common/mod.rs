//! A `qie train` setup on the tiny Plus pipeline (tests/fixtures/edit/plus/model, CPU): a
//! four-row dataset from the fixture images, its cache, and a LoRA run config over it.

#![allow(dead_code)]

use qie_models::cache::{plan_cache, CacheJob, CacheSettings, ModelIdentity};
use qie_models::data::SizeRule;
use qie_models::hub::{model_paths_from_folder, ModelPaths};
use qie_models::pipeline::{EditStages, Flavour};
use qie_models::train::config::LoraSection;
use qie_models::train::TrainConfig;
use qie_models::ModelOptions;
use std::path::{Path, PathBuf};

/// The fixture shrinks the pipeline's areas (see tests/fixtures/edit/plus/settings.json).
pub const VAE_AREA: usize = 16384;
pub const VL_AREA: usize = 9216;

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/edit/plus")
        .join(rel)
}

pub fn model_paths() -> ModelPaths {
    model_paths_from_folder(&fixture("model")).unwrap()
}

/// Rows: 0 and 1 one control image each, 2 another control image, 3 none.
pub fn make_cache(dir: &Path) -> PathBuf {
    for (from, to) in [
        ("inputs/image_0.png", "a.png"),
        ("inputs/image_1.png", "b.png"),
        ("out.png", "t.png"),
    ] {
        std::fs::copy(fixture(from), dir.join(to)).unwrap();
    }
    let data = dir.join("data.jsonl");
    std::fs::write(
        &data,
        [
            r#"{"prompt": "make it blue", "image": "t.png", "edit_image": "a.png"}"#,
            r#"{"prompt": "make it red", "image": "b.png", "edit_image": "a.png"}"#,
            r#"{"prompt": "sunset", "image": "a.png", "edit_image": "b.png"}"#,
            r#"{"prompt": "a character, no control image", "image": "b.png"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let cache = dir.join("cache");
    let job = CacheJob {
        dataset: data,
        out: cache.clone(),
        model: ModelIdentity::of_model_dir(&fixture("model")).unwrap(),
        settings: CacheSettings {
            flavour: Flavour::Plus,
            size: SizeRule {
                area: VAE_AREA,
                max_pixels: None,
                buckets: false,
            },
            vl_area: VL_AREA,
            text_positions: "multimodal".into(),
            vl_resize: "torchvision".into(),
            precision: "f32".into(),
        },
        resume: false,
        shard: None,
        skip_bad_rows: false,
    };
    let stages = EditStages::load(&model_paths(), &ModelOptions::default()).unwrap();
    plan_cache(job)
        .unwrap()
        .run(stages.encoder(), &mut |_, _, _| {})
        .unwrap();
    cache
}

/// A rank-4 LoRA run of `steps` steps on `cache`, writing into `out`, without checkpoints
/// between.
pub fn lora_config(cache: &Path, out: &Path, steps: u64) -> TrainConfig {
    let mut c = TrainConfig::default();
    c.model.path = Some(fixture("model"));
    c.data.cache = Some(cache.to_path_buf());
    c.output.dir = Some(out.to_path_buf());
    c.output.save_every = 0;
    c.train.steps = Some(steps);
    c.train.lr = 1e-2;
    c.train.seed = 5;
    c.lora = Some(LoraSection {
        rank: 4,
        ..LoraSection::default()
    });
    c
}
