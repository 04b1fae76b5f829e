//! `qie cache` then `qie train` on the tiny Plus fixture (CPU): a LoRA run writes the diffusers
//! adapter file, train.jsonl, TensorBoard events and checkpoints; a run stopped and resumed logs
//! the same losses as the uninterrupted run; a truncated cache file is a clear error.

mod common;

use qie_models::lora::{LoraFile, LoraFormat};
use qie_models::tensorboard::{read_events, ValueKind};
use qie_models::train::log::read_log;
use std::path::{Path, PathBuf};

use common::{plus_fixture as fixture, run_qie as qie};

/// A 3-row dataset and its cache (small areas so the CPU run is quick).
fn make_cache(dir: &Path) -> PathBuf {
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
        ]
        .join("\n"),
    )
    .unwrap();
    let cache = dir.join("cache");
    let (code, err) = qie(&[
        "cache",
        "--model",
        fixture("model").to_str().unwrap(),
        "--dataset",
        data.to_str().unwrap(),
        "--out",
        cache.to_str().unwrap(),
        "--vae-area",
        "16384",
        "--vl-area",
        "9216",
    ]);
    assert_eq!(code, 0, "{err}");
    cache
}

fn train(cache: &Path, out: &Path, extra: &[&str]) -> (i32, String) {
    let model = fixture("model");
    let mut args = vec![
        "train",
        "--model",
        model.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--lora-rank",
        "4",
        "--lr",
        "1e-3",
    ];
    args.extend_from_slice(extra);
    qie(&args)
}

fn losses(out: &Path) -> Vec<f64> {
    read_log(&out.join("train.jsonl"))
        .unwrap()
        .iter()
        .map(|r| r["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn lora_training_writes_every_output_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cache = make_cache(dir.path());
    let out = dir.path().join("run");
    let (code, err) = train(&cache, &out, &["--steps", "4", "--save-every", "2"]);
    assert_eq!(code, 0, "{err}");

    // The adapter, in diffusers' layout, with every default target of both blocks.
    let lora = LoraFile::load(&out.join("pytorch_lora_weights.safetensors")).unwrap();
    assert_eq!(lora.format, LoraFormat::Peft);
    assert_eq!(lora.modules.len(), 2 * 12);
    assert!(lora.modules.iter().all(|m| m.rank == 4));
    assert!(
        lora.modules.iter().any(|m| m.up.iter().any(|&v| v != 0.0)),
        "training moved B away from its zero initialisation"
    );

    // train.jsonl: one record per step with the documented fields.
    let log = read_log(&out.join("train.jsonl")).unwrap();
    assert_eq!(log.len(), 4);
    for (i, r) in log.iter().enumerate() {
        assert_eq!(r["step"].as_u64(), Some(i as u64 + 1));
        for key in ["loss", "lr", "grad_norm", "step_s"] {
            assert!(r[key].as_f64().is_some_and(f64::is_finite), "{key}: {r}");
        }
    }

    // TensorBoard: the loss scalars parse back with their steps.
    let tb = std::fs::read_dir(out.join("tensorboard"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let steps: Vec<i64> = read_events(&tb)
        .unwrap()
        .iter()
        .flat_map(|e| e.values.iter().map(move |v| (e.step, v)))
        .filter(|(_, v)| v.tag == "train/loss" && matches!(v.kind, ValueKind::Scalar(_)))
        .map(|(s, _)| s)
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4]);
    assert!(out.join("checkpoint-2/state.json").exists());
    assert!(out.join("checkpoint-4/state.json").exists());
    assert!(out.join("config.toml").exists());

    // Stop after 2 steps, resume to 4: the same losses, step for step.
    let split = dir.path().join("split");
    let (code, err) = train(&cache, &split, &["--steps", "2"]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = qie(&["train", "--resume", split.to_str().unwrap(), "--steps", "4"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(losses(&split), losses(&out), "resumed run");

    // Gradient checkpointing recomputes the blocks: the same losses (up to rounding).
    let gc = dir.path().join("gc");
    let (code, err) = train(&cache, &gc, &["--steps", "4", "--gradient-checkpointing"]);
    assert_eq!(code, 0, "{err}");
    for (a, b) in losses(&gc).iter().zip(losses(&out)) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
    }
    let resolved = std::fs::read_to_string(gc.join("config.toml")).unwrap();
    assert!(
        resolved.contains("gradient_checkpointing = true"),
        "{resolved}"
    );
}

#[test]
fn bad_training_input_gives_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cache = make_cache(dir.path());
    // Nothing to train.
    let (code, err) = qie(&[
        "train",
        "--model",
        fixture("model").to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
        "--out",
        dir.path().join("x").to_str().unwrap(),
        "--steps",
        "1",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("nothing to train"), "{err}");
    // Targets that match no layer.
    let (code, err) = train(
        &cache,
        &dir.path().join("y"),
        &["--steps", "1", "--lora-targets", "nope"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("match no linear layer"), "{err}");
    // A truncated cache row.
    let row = std::fs::read_dir(cache.join("rows"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .unwrap();
    let bytes = std::fs::read(&row).unwrap();
    std::fs::write(&row, &bytes[..bytes.len() / 2]).unwrap();
    let (code, err) = train(&cache, &dir.path().join("z"), &["--steps", "3"]);
    assert_ne!(code, 0);
    let name = row.file_name().unwrap().to_string_lossy().to_string();
    assert!(err.contains(&name), "the error names the file: {err}");
}
