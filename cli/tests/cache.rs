//! `qie cache` on the tiny Plus fixture (CPU): a cache is written with a manifest, an existing one
//! is never overwritten without --resume, --resume skips finished rows without loading the
//! model, bad rows stop the run unless --skip-bad-rows, and shards merge.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/edit/plus")
        .join(rel)
}

/// Runs `qie cache` with `args`; returns (exit code, stderr); asserts no panic.
fn cache(args: &[&str]) -> (i32, String) {
    let out = Command::new(common::qie_bin())
        .arg("cache")
        .args(args)
        .env_remove("QIE_DEVICE")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run qie");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "qie panicked: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn dataset(dir: &Path, extra: &str) -> String {
    for (from, to) in [
        ("inputs/image_0.png", "a.png"),
        ("inputs/image_1.png", "b.png"),
        ("out.png", "t.png"),
    ] {
        std::fs::copy(fixture(from), dir.join(to)).unwrap();
    }
    let path = dir.join("data.jsonl");
    let rows = [
        r#"{"prompt": "two inputs", "image": "t.png", "edit_image": ["a.png", "b.png"]}"#,
        r#"{"prompt": "one input", "image": "t.png", "edit_image": "b.png"}"#,
        r#"{"prompt": "no input", "image": "a.png"}"#,
    ];
    std::fs::write(&path, format!("{}\n{extra}", rows.join("\n"))).unwrap();
    path.display().to_string()
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

fn args<'a>(model: &'a str, data: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--model",
        model,
        "--dataset",
        data,
        "--out",
        out,
        "--vae-area",
        "16384",
        "--vl-area",
        "9216",
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn cache_resume_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), "");
    let model = fixture("model").display().to_string();
    let out = dir.path().join("cache");
    let out_s = out.display().to_string();
    let (code, err) = cache(&args(&model, &data, &out_s, &[]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("cached 3 rows (0 reused, 0 skipped)"), "{err}");
    let m = manifest(&out);
    assert_eq!(m["complete"], true);
    assert_eq!(m["rows"].as_array().unwrap().len(), 3);
    assert_eq!(m["rows"][1]["source"], "data.jsonl:2");
    assert_eq!(m["settings"]["size"]["area"], 16384);
    assert_eq!(m["model"]["pipeline_class"], "QwenImageEditPlusPipeline");
    for row in m["rows"].as_array().unwrap() {
        assert!(out.join(row["file"].as_str().unwrap()).is_file());
    }

    let (code, err) = cache(&args(&model, &data, &out_s, &[]));
    assert_ne!(code, 0);
    assert!(err.contains("--resume"), "{err}");

    // Everything is done: the model is not even loaded.
    let (code, err) = cache(&args(&model, &data, &out_s, &["--resume"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("3 already done, 0 to encode"), "{err}");
    assert!(!err.contains("loaded the encoders"), "{err}");

    // Other settings cannot resume this cache.
    let (code, err) = cache(&args(&model, &data, &out_s, &["--resume", "--buckets"]));
    assert_ne!(code, 0);
    assert!(err.contains("buckets: false vs true"), "{err}");
}

#[test]
fn bad_rows_stop_the_run_unless_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), r#"{"prompt": "gone", "image": "nope.png"}"#);
    let model = fixture("model").display().to_string();
    let out = dir.path().join("cache");
    let out_s = out.display().to_string();
    let (code, err) = cache(&args(&model, &data, &out_s, &[]));
    assert_ne!(code, 0);
    assert!(
        err.contains("data.jsonl:4") && err.contains("nope.png") && err.contains("--skip-bad-rows"),
        "{err}"
    );
    assert!(!out.join("manifest.json").exists());
    let (code, err) = cache(&args(&model, &data, &out_s, &["--skip-bad-rows"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("cached 3 rows (0 reused, 1 skipped)"), "{err}");
    assert_eq!(manifest(&out)["skipped"][0]["index"], 3);
}

#[test]
fn shards_then_merge() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), "");
    let model = fixture("model").display().to_string();
    let out = dir.path().join("cache");
    let out_s = out.display().to_string();
    for shard in ["0/2", "1/2"] {
        let (code, err) = cache(&args(&model, &data, &out_s, &["--shard", shard]));
        assert_eq!(code, 0, "{err}");
    }
    assert!(out.join("manifest.shard-0-of-2.json").is_file());
    let (code, err) = cache(&["--merge", &out_s]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("merged 3 rows"), "{err}");
    let indices: Vec<u64> = manifest(&out)["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, [0, 1, 2]);

    for bad in ["2/2", "1", "a/b", "0/0"] {
        let (code, err) = cache(&args(&model, &data, &out_s, &["--shard", bad]));
        assert_ne!(code, 0, "--shard {bad}");
        assert!(err.contains(bad), "--shard {bad}: {err}");
    }
}
