//! `qie lora convert` between layouts keeps every module's update.

mod common;

use qie_models::lora::{LoraFile, ModuleName};
use std::path::PathBuf;
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// Module -> (down, alpha/rank * up) of a file.
fn updates(path: &std::path::Path) -> Vec<(String, Vec<f32>, Vec<f32>)> {
    let file = LoraFile::load(path).unwrap();
    let mut v: Vec<_> = file
        .modules
        .iter()
        .map(|m| {
            let name = match &m.name {
                ModuleName::Dotted(d) => d.clone(),
                ModuleName::Flat(f) => f.clone(),
            };
            let up = m.up.iter().map(|x| x * m.alpha_scale).collect();
            (name, m.down.clone(), up)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn kohya_to_peft_and_back_to_comfyui_keeps_the_updates() {
    let dir = tempfile::tempdir().unwrap();
    let peft = dir.path().join("peft.safetensors");
    let status = Command::new(common::qie_bin())
        .args(["lora", "convert"])
        .arg(fixtures().join("lora/kohya.safetensors"))
        .args(["--to", "peft", "--out"])
        .arg(&peft)
        .arg("--model")
        .arg(fixtures().join("dit/single/transformer"))
        .status()
        .unwrap();
    assert!(status.success());
    let want = updates(&fixtures().join("lora/peft.safetensors"));
    let got = updates(&peft);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.0, w.0);
        assert_eq!(g.1, w.1, "{}", g.0);
        for (a, b) in g.2.iter().zip(&w.2) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{}: {a} vs {b}",
                g.0
            );
        }
    }
    let comfy = dir.path().join("comfy.safetensors");
    let out = Command::new(common::qie_bin())
        .args(["lora", "convert"])
        .arg(&peft)
        .args(["--to", "comfyui", "--out"])
        .arg(&comfy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(LoraFile::load(&comfy).unwrap().modules.len(), want.len());
}

#[test]
fn bad_requests_fail_with_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::qie_bin())
        .args(["lora", "convert"])
        .arg(fixtures().join("lora/peft.safetensors"))
        .args(["--to", "lokr", "--out"])
        .arg(dir.path().join("x.safetensors"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown LoRA format `lokr`"), "{err}");
    let truncated = dir.path().join("t.safetensors");
    let bytes = std::fs::read(fixtures().join("lora/peft.safetensors")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let out = Command::new(common::qie_bin())
        .args(["lora", "convert"])
        .arg(&truncated)
        .args(["--to", "kohya", "--out"])
        .arg(dir.path().join("y.safetensors"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("t.safetensors"), "{err}");
    assert!(!dir.path().join("y.safetensors").exists());
}
