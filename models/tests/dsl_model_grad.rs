//! The generic DSL model on a tiny source: forward and forward + backward plans are cached apart,
//! and the gradients of a scalar loss (params and an input) match central finite differences of
//! the forward plan on the CPU.

use qie_models::dsl_model::{
    DslModel, DslProgram, DslSource, Gradients, GraphKind, ShapeKey, Specialisation,
};
use qie_models::{HostWeights, ModelOptions};
use qie_runtime::Tensor;
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

const SOURCE: &str = r#"
module Tiny() {
    sub fc = Linear(config.dim, config.hidden);
    param scale[config.hidden];
    fn forward(x: f32[B, config.dim], target: f32[B, config.hidden]) {
        let h = tanh(fc(x)) * scale;
        let d = h - target;
        output y = h;
        output loss = sum(d * d);
    }
}
entry Tiny;
"#;

const DIM: usize = 3;
const HIDDEN: usize = 4;
const BATCH: usize = 2;
/// Checkpoint prefix the weights are stored under (the model strips it when binding).
const PREFIX: &str = "net.";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Batch(usize);

impl ShapeKey for Batch {}

/// Deterministic values in [-1, 1).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn params() -> Vec<(&'static str, Vec<f32>)> {
    vec![
        ("fc.weight", values(1, HIDDEN * DIM)),
        ("fc.bias", values(2, HIDDEN)),
        ("scale", values(3, HIDDEN)),
    ]
}

fn inputs() -> HashMap<String, Tensor> {
    HashMap::from([
        (
            "x".to_string(),
            Tensor::from_f32(&[BATCH, DIM], values(4, BATCH * DIM)).unwrap(),
        ),
        (
            "target".to_string(),
            Tensor::from_f32(&[BATCH, HIDDEN], values(5, BATCH * HIDDEN)).unwrap(),
        ),
    ])
}

fn model(source: &Path, params: &[(&str, Vec<f32>)]) -> DslModel<Batch> {
    let config = json!({"dim": DIM, "hidden": HIDDEN});
    let program = DslProgram::load("tiny model", DslSource::File(source), config).unwrap();
    let mut weights = HostWeights::default();
    for (name, v) in params {
        weights.insert(format!("{PREFIX}{name}"), v.clone());
    }
    let probe = Specialisation::of_bindings(&inputs());
    DslModel::from_weights(program, &probe, weights, PREFIX, &ModelOptions::default()).unwrap()
}

fn loss(model: &DslModel<Batch>, inputs: &HashMap<String, Tensor>) -> f64 {
    let spec = Specialisation::of_bindings(inputs);
    let mut out = model.forward(&Batch(BATCH), &spec, inputs).unwrap();
    let loss = out.take("loss").unwrap();
    assert_eq!(loss.shape(), &[] as &[usize]);
    loss.to_f32_vec()[0] as f64
}

fn source_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("tiny.qie");
    std::fs::write(&path, SOURCE).unwrap();
    path
}

fn gradients() -> Gradients {
    Gradients {
        loss: "loss".to_string(),
        params: vec!["fc.weight".to_string(), "scale".to_string()],
        inputs: vec!["x".to_string()],
        objective: None,
        checkpoint: None,
    }
}

#[test]
fn gradients_match_finite_differences() {
    let dir = tempfile::tempdir().unwrap();
    let source = source_file(dir.path());
    let base = model(&source, &params());
    let inputs = inputs();
    let spec = Specialisation::of_bindings(&inputs);
    let kind = GraphKind::ForwardBackward(gradients());
    let mut out = base.run(&kind, &Batch(BATCH), &spec, &inputs).unwrap();

    // The forward outputs come along unchanged.
    let l = out.take("loss").unwrap().to_f32_vec()[0] as f64;
    assert!((l - loss(&base, &inputs)).abs() <= 1e-6 * l.abs().max(1.0));
    assert!(l > 1e-2, "a loss of {l} would make the check weak");

    let h = 1e-2;
    let close = |fd: f64, g: f64, what: &str| {
        assert!(
            (fd - g).abs() <= 2e-3 * g.abs().max(1.0),
            "{what}: gradient {g}, central difference {fd}"
        );
    };
    let mut checked = 0;
    for leaf in ["fc.weight", "scale"] {
        let g = out
            .take(&Gradients::output_name(leaf))
            .unwrap()
            .to_f32_vec();
        let p = params();
        let index = p.iter().position(|(n, _)| *n == leaf).unwrap();
        assert_eq!(g.len(), p[index].1.len(), "{leaf}");
        for (i, &gi) in g.iter().enumerate() {
            let shifted = |d: f32| {
                let mut p = params();
                p[index].1[i] += d;
                loss(&model(&source, &p), &inputs)
            };
            let fd = (shifted(h as f32) - shifted(-h as f32)) / (2.0 * h);
            close(fd, gi as f64, &format!("{leaf}[{i}]"));
            checked += 1;
        }
    }
    let gx = out.take(&Gradients::output_name("x")).unwrap().to_f32_vec();
    assert_eq!(gx.len(), BATCH * DIM);
    for (i, &gi) in gx.iter().enumerate() {
        let shifted = |d: f32| {
            let mut b = inputs.clone();
            let mut x = b["x"].to_f32_vec();
            x[i] += d;
            b.insert("x".to_string(), Tensor::from_f32(&[BATCH, DIM], x).unwrap());
            loss(&base, &b)
        };
        let fd = (shifted(h as f32) - shifted(-h as f32)) / (2.0 * h);
        close(fd, gi as f64, &format!("x[{i}]"));
        checked += 1;
    }
    assert_eq!(checked, HIDDEN * DIM + HIDDEN + BATCH * DIM);
    // Only the chosen leaves get gradients.
    assert!(out.take(&Gradients::output_name("fc.bias")).is_err());
}

#[test]
fn forward_and_backward_plans_are_cached_apart() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(&source_file(dir.path()), &params());
    let spec = Specialisation::of_bindings(&inputs());
    let backward = GraphKind::ForwardBackward(gradients());
    let key = Batch(BATCH);
    let f1 = m.plan(&GraphKind::Forward, &key, &spec).unwrap();
    let b1 = m.plan(&backward, &key, &spec).unwrap();
    assert!(!Arc::ptr_eq(&f1, &b1));
    assert!(Arc::ptr_eq(
        &f1,
        &m.plan(&GraphKind::Forward, &key, &spec).unwrap()
    ));
    assert!(Arc::ptr_eq(&b1, &m.plan(&backward, &key, &spec).unwrap()));
}

#[test]
fn bad_gradient_requests_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(&source_file(dir.path()), &params());
    let spec = Specialisation::of_bindings(&inputs());
    let mut g = gradients();
    g.params.push("nope.weight".to_string());
    let err = m
        .plan(&GraphKind::ForwardBackward(g), &Batch(BATCH), &spec)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("tiny model") && err.contains("nope.weight"),
        "{err}"
    );
    let mut g = gradients();
    g.loss = "y".to_string();
    let err = m
        .plan(&GraphKind::ForwardBackward(g), &Batch(BATCH), &spec)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("\"y\"") && err.contains("one element"),
        "{err}"
    );
}

#[test]
fn missing_weights_are_named_with_the_checkpoint_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let source = source_file(dir.path());
    let program = DslProgram::load(
        "tiny model",
        DslSource::File(&source),
        json!({"dim": DIM, "hidden": HIDDEN}),
    )
    .unwrap();
    let mut weights = HostWeights::default();
    for (name, v) in params().into_iter().filter(|(n, _)| *n != "scale") {
        weights.insert(format!("{PREFIX}{name}"), v);
    }
    let probe = Specialisation::of_bindings(&inputs());
    let err =
        DslModel::<Batch>::from_weights(program, &probe, weights, PREFIX, &ModelOptions::default())
            .err()
            .unwrap()
            .to_string();
    assert!(err.contains("net.scale"), "{err}");
}

#[test]
fn an_updated_weight_changes_the_next_forward() {
    let dir = tempfile::tempdir().unwrap();
    let source = source_file(dir.path());
    let mut m = model(&source, &params());
    let inputs = inputs();
    let before = loss(&m, &inputs);
    assert_eq!(
        m.weights_version(),
        Some(0),
        "the first run uploads the weights"
    );
    let p = params();
    let doubled: Vec<f32> = p[2].1.iter().map(|v| v * 2.0).collect();
    m.update_weight("scale", &doubled).unwrap();
    assert_eq!(m.weights_version(), Some(1));
    let after = loss(&m, &inputs);
    let mut q = params();
    q[2].1 = doubled;
    let fresh = loss(&model(&source, &q), &inputs);
    assert!(
        (after - fresh).abs() <= 1e-6 * fresh.abs(),
        "{after} vs {fresh}"
    );
    assert!((after - before).abs() > 1e-3, "the update was not seen");
    // Refused updates name the weight and change nothing.
    let err = m.update_weight("scale", &[1.0]).unwrap_err().to_string();
    assert!(
        err.contains("net.scale") && err.contains("1 values"),
        "{err}"
    );
    assert!(m.update_weight("nope", &[1.0]).is_err());
    assert_eq!(m.weights_version(), Some(1));
}
