//! Loading a program whose source declares initialisers: weights the checkpoint lacks are created
//! (deterministically, reported by name), weights it has are read, and a missing weight without an
//! initialiser is still an error naming it. Both `DslModel::load` (files) and `from_weights`.

use qie_ir::ParamInit;
use qie_models::dsl_model::{DslModel, DslProgram, DslSource, ShapeKey, Specialisation};
use qie_models::host_weights::init::init_values;
use qie_models::{HostWeights, ModelOptions};
use qie_runtime::weights::{save_safetensors, CheckMode, WeightStore};
use qie_runtime::Tensor;
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

const SOURCE: &str = r#"
module Tiny() {
    param base[4];
    param down[2, 4] = kaiming_uniform(sqrt(5.0));
    param up[4, 2] = zeros;
    param embed[2, 4] = normal(0.02);
    fn forward(x: f32[2, 4]) {
        output base_out = x + base;
        output down_out = x + down;
        output up_out = swapaxes(x, 0, 1) + up;
        output embed_out = x + embed;
    }
}
"#;

const PREFIX: &str = "net.";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key;

impl ShapeKey for Key {}

fn program(dir: &Path, seed: u64) -> DslProgram {
    let path = dir.join("tiny.qie");
    std::fs::write(&path, SOURCE).unwrap();
    DslProgram::load("tiny", DslSource::File(&path), json!({}))
        .unwrap()
        .with_init_seed(seed)
}

fn zeros() -> HashMap<String, Tensor> {
    HashMap::from([(
        "x".to_string(),
        Tensor::from_f32(&[2, 4], vec![0.0; 8]).unwrap(),
    )])
}

/// The values of every param, read back through a forward run on zero inputs.
fn weights_of(model: &DslModel<Key>) -> HashMap<String, Vec<f32>> {
    let inputs = zeros();
    let spec = Specialisation::of_bindings(&inputs);
    let out = model.forward(&Key, &spec, &inputs).unwrap().into_map();
    out.into_iter()
        .map(|(k, t)| (k.trim_end_matches("_out").to_string(), t.to_f32_vec()))
        .collect()
}

fn store(dir: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> WeightStore {
    let path = dir.join("w.safetensors");
    let named: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, s, v)| (format!("{PREFIX}{n}"), s.clone(), v.as_slice()))
        .collect();
    save_safetensors(&path, &named).unwrap();
    WeightStore::open(&path).unwrap()
}

fn load(dir: &Path, seed: u64, store: &WeightStore) -> Result<DslModel<Key>, String> {
    let probe = Specialisation::of_bindings(&zeros());
    let options = ModelOptions::default();
    DslModel::load(
        program(dir, seed),
        &probe,
        store,
        PREFIX,
        CheckMode::Strict,
        &options,
    )
    .map_err(|e| e.to_string())
}

const BASE: [f32; 4] = [1.0, -2.0, 3.0, 0.5];

#[test]
fn missing_weights_with_initialisers_are_created() {
    let dir = tempfile::tempdir().unwrap();
    let up = vec![0.25f32; 8];
    let store = store(
        dir.path(),
        &[
            ("base", vec![4], BASE.to_vec()),
            ("up", vec![4, 2], up.clone()),
        ],
    );
    let model = load(dir.path(), 7, &store).unwrap();
    // `up` has an initialiser but the checkpoint holds it: read, not created.
    assert_eq!(model.created_weights(), ["down", "embed"]);
    let w = weights_of(&model);
    assert_eq!(w["base"], BASE.repeat(2));
    assert_eq!(w["up"], up);
    let kaiming = ParamInit::KaimingUniform { a: 5f64.sqrt() };
    assert_eq!(w["down"], init_values(&kaiming, "down", &[2, 4], 7));
    assert!(w["down"].iter().all(|v| v.abs() <= 0.5) && w["down"].iter().any(|v| *v != 0.0));
    let normal = ParamInit::Normal { std: 0.02 };
    assert_eq!(w["embed"], init_values(&normal, "embed", &[2, 4], 7));

    // Deterministic for a seed, different for another one.
    let again = weights_of(&load(dir.path(), 7, &store).unwrap());
    assert_eq!(again, w);
    let other = weights_of(&load(dir.path(), 8, &store).unwrap());
    assert_ne!(other["down"], w["down"]);
    assert_eq!(other["base"], w["base"]);
}

#[test]
fn from_weights_creates_the_same_values() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), &[("base", vec![4], BASE.to_vec())]);
    let from_files = weights_of(&load(dir.path(), 3, &store).unwrap());

    let mut host = HostWeights::default();
    host.insert(format!("{PREFIX}base"), BASE.to_vec());
    let probe = Specialisation::of_bindings(&zeros());
    let model: DslModel<Key> = DslModel::from_weights(
        program(dir.path(), 3),
        &probe,
        host,
        PREFIX,
        &ModelOptions::default(),
    )
    .unwrap();
    assert_eq!(model.created_weights(), ["down", "up", "embed"]);
    let w = weights_of(&model);
    assert_eq!(w["up"], vec![0.0; 8]);
    assert_eq!(w["down"], from_files["down"]);
    assert_eq!(w["embed"], from_files["embed"]);
}

#[test]
fn a_missing_weight_without_initialiser_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), &[("up", vec![4, 2], vec![0.0; 8])]);
    let msg = load(dir.path(), 0, &store).err().expect("base is missing");
    assert!(msg.contains("net.base"), "{msg}");
    assert!(!msg.contains("net.down"), "{msg}");

    let probe = Specialisation::of_bindings(&zeros());
    let err = DslModel::<Key>::from_weights(
        program(dir.path(), 0),
        &probe,
        HostWeights::default(),
        PREFIX,
        &ModelOptions::default(),
    )
    .err()
    .expect("base is missing");
    assert!(
        err.to_string().contains("missing weight `net.base`"),
        "{err}"
    );
}
