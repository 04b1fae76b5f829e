//! `[model] init_seed` seeds the parameters a variant adds (OmniGen2's image_index_embedding,
//! `normal(0.02)`): the same seed creates the same values, another seed other values, in the
//! DiT and in a `qie train` run; a resumed run takes the trained values from its checkpoint
//! whatever the seed says.

mod common;

use common::{fixture, lora_config, make_cache};
use qie_models::qwen_image::{DitOptions, QwenImageDit};
use qie_models::train::run::TrainRun;
use qie_models::train::TrainConfig;
use std::path::{Path, PathBuf};

const EMBEDDING: &str = "ref_embedding.image_index_embedding";

fn variant() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("qie/variants/omnigen2_index_embedding.qie")
}

fn embedding(init_seed: u64) -> Vec<f32> {
    let options = DitOptions {
        source: Some(variant()),
        init_seed,
        ..DitOptions::default()
    };
    let dit = QwenImageDit::load(&fixture("model/transformer"), &options).unwrap();
    assert!(dit.created_weights().iter().any(|n| n == EMBEDDING));
    dit.weight_f32(EMBEDDING).unwrap()
}

#[test]
fn the_init_seed_decides_the_new_parameters() {
    let (a, b, c) = (embedding(0), embedding(0), embedding(3));
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(c.iter().any(|v| *v != 0.0) && c.iter().all(|v| v.abs() < 0.2));
}

/// The variant's new parameter alone, trained for `steps` steps.
fn variant_config(cache: &Path, out: &Path, steps: u64, init_seed: u64) -> TrainConfig {
    let mut c = lora_config(cache, out, steps);
    c.lora = None;
    c.model.variant = Some(variant());
    c.model.init_seed = init_seed;
    c
}

fn train(config: TrainConfig, resume: Option<&Path>) -> Vec<u8> {
    let out = config.output.dir.clone().unwrap();
    let mut run = TrainRun::prepare(config, None, resume).unwrap();
    while !run.is_done() {
        run.step_once().unwrap();
    }
    run.finish().unwrap();
    std::fs::read(out.join("trained_weights.safetensors")).unwrap()
}

#[test]
fn runs_follow_the_init_seed_and_resume_keeps_the_trained_values() {
    let dir = tempfile::tempdir().unwrap();
    let cache = make_cache(dir.path());
    let run = |name: &str, steps, seed| variant_config(&cache, &dir.path().join(name), steps, seed);
    let a = train(run("a", 2, 1), None);
    assert_eq!(a, train(run("b", 2, 1), None), "same init_seed");
    assert_ne!(a, train(run("c", 2, 2), None), "another init_seed");
    // One step, then resumed to two with another seed: the checkpoint's values win.
    train(run("d", 1, 1), None);
    let resumed = train(run("d", 2, 9), Some(&dir.path().join("d")));
    assert_eq!(a, resumed, "resumed run");
}
