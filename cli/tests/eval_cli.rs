//! `qie eval` end to end on tests/fixtures/eval (+ the tiny DINO / DINOv2 / CLIP / SigLIP models of
//! tests/fixtures/eval_models): eval.json / eval.csv contents, the missing prediction listed and
//! counted, and bad input (unknown metric or template field, a model metric without its model,
//! missing folders, a dataset without ground truth) as one clear error with a non-zero exit.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(rel)
}

/// Runs qie; returns (exit code, stdout, stderr). Asserts it did not panic.
fn qie(args: &[&str]) -> (i32, String, String) {
    qie_with_env(args, &[])
}

fn qie_with_env(args: &[&str], env: &[(&str, &Path)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qie"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .output()
        .expect("run qie");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "qie panicked: {stderr}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        stderr,
    )
}

fn eval(extra: &[&str], out: &Path) -> (i32, String, String) {
    let pred = fixture("eval/pred");
    let data = fixture("eval/data.jsonl");
    let mut args = vec![
        "eval",
        "--pred-dir",
        pred.to_str().unwrap(),
        "--dataset",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    qie(&args)
}

#[test]
fn eval_writes_json_csv_and_lists_the_missing_prediction() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run/eval.json");
    let dino = fixture("eval_models/dino");
    let dinov2 = fixture("eval_models/dinov2");
    let clip = fixture("eval_models/clip");
    let siglip = fixture("eval_models/siglip");
    let dreamsim = fixture("dreamsim/models");
    let (code, stdout, stderr) = eval(
        &[
            "--dino-model",
            dino.to_str().unwrap(),
            "--dinov2-model",
            dinov2.to_str().unwrap(),
            "--clip-model",
            clip.to_str().unwrap(),
            "--siglip-model",
            siglip.to_str().unwrap(),
            "--dreamsim-model",
            dreamsim.to_str().unwrap(),
            "--batch-size",
            "3",
        ],
        &out,
    );
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5, "six rows, one prediction missing");
    let missing = report["missing"].as_array().unwrap();
    assert_eq!(missing.len(), 1);
    assert_eq!(missing[0]["index"], 4);
    assert_eq!(missing[0]["what"], "prediction");
    assert!(stderr.contains("1 of 6 rows not scored"), "{stderr}");
    // identical images: psnr undefined (null), counted; the other rows have a value
    let same = rows.iter().find(|r| r["index"] == 3).unwrap();
    assert!(same["psnr"].is_null());
    assert_eq!(same["l1"], 0.0);
    assert!((same["dino"].as_f64().unwrap() - 1.0).abs() < 1e-6);
    assert_eq!(report["summary"]["psnr"]["undefined"], 1);
    assert_eq!(report["summary"]["psnr"]["n"], 4);
    // bg metrics only on the rows with back_mask (dog, sea, same)
    assert_eq!(report["summary"]["bg_l1"]["n"], 3);
    assert_eq!(report["summary"]["dino"]["n"], 5);
    assert_eq!(report["summary"]["clip_i"]["n"], 5);
    assert_eq!(report["summary"]["dinov2"]["n"], 5);
    assert_eq!(report["summary"]["siglip"]["n"], 5);
    assert!((same["siglip"].as_f64().unwrap() - 1.0).abs() < 1e-6);
    // DreamSim is a distance: 0 for identical images, positive for the edited ones
    assert_eq!(report["summary"]["dreamsim"]["n"], 5);
    assert!(same["dreamsim"].as_f64().unwrap().abs() < 1e-6);
    let other = rows.iter().find(|r| r["index"] == 0).unwrap();
    assert!(other["dreamsim"].as_f64().unwrap() > 1e-4, "{other}");
    assert!(report["settings"]["dreamsim_model"]
        .as_str()
        .unwrap()
        .ends_with("models"));
    assert!(report["settings"]["siglip_model"]
        .as_str()
        .unwrap()
        .ends_with("siglip"));
    assert_eq!(
        report["summary"]["clip_t"]["n"], 5,
        "clip_t with the prompts"
    );
    assert_eq!(report["settings"]["mask_mode"], "select");
    // clip_t alone embeds the predictions itself; with clip_i it reuses clip_i's: the same scores
    let alone = dir.path().join("alone/eval.json");
    let clip_arg = clip.to_str().unwrap();
    let (code, _, stderr) = eval(&["--metrics", "clip_t", "--clip-model", clip_arg], &alone);
    assert_eq!(code, 0, "{stderr}");
    let alone: Value = serde_json::from_str(&std::fs::read_to_string(&alone).unwrap()).unwrap();
    for (a, b) in rows.iter().zip(alone["rows"].as_array().unwrap()) {
        let (a, b) = (a["clip_t"].as_f64().unwrap(), b["clip_t"].as_f64().unwrap());
        assert!((a - b).abs() < 1e-6, "clip_t {a} vs {b}");
    }
    // the summary table and the CSV
    assert!(
        stdout.contains("5 of 6 rows scored") && stdout.contains("clip_i"),
        "{stdout}"
    );
    let csv = std::fs::read_to_string(dir.path().join("run/eval.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(
        header.starts_with("index,pred,gt,l1,l2,psnr,ssim,bg_l1"),
        "{header}"
    );
    assert_eq!(csv.lines().count(), 6);
}

#[test]
fn bad_arguments_are_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("eval.json");
    for (args, want) in [
        (vec!["--metrics", "l1,lpips"], "unknown metric \"lpips\""),
        (vec!["--metrics", "dino"], "metric dino needs --dino-model"),
        (vec!["--pred-name", "{idx}.png"], "unknown field `{idx}`"),
        (
            vec!["--gt-dir", "/nonexistent/gt"],
            "--gt-dir /nonexistent/gt: not a folder",
        ),
        (vec!["--batch-size", "0", "--metrics", "l1"], "--batch-size"),
        (vec!["--clip-model", "/nonexistent/clip"], "--clip-model"),
        (
            vec!["--dreamsim-model", "/nonexistent/dreamsim"],
            "/nonexistent/dreamsim: not a folder",
        ),
    ] {
        let (code, _, stderr) = eval(&args, &out);
        assert_ne!(code, 0, "{args:?} must fail");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?}: no report on bad arguments");
    }
}

#[test]
fn a_dataset_without_ground_truth_or_predictions_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"x\", \"edit_image\": \"a.png\"}\n{\"prompt\": 3}\n",
    )
    .unwrap();
    let out = dir.path().join("eval.json");
    let pred = fixture("eval/pred");
    let (code, _, stderr) = qie(&[
        "eval",
        "--pred-dir",
        pred.to_str().unwrap(),
        "--dataset",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("no ground truth"), "{stderr}");
    assert!(stderr.contains("data.jsonl:2"), "{stderr}");
    assert!(stderr.contains("no usable rows"), "{stderr}");

    // rows fine, but no prediction folder content matches: listed, then a non-zero exit
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let data = fixture("eval/data.jsonl");
    let (code, _, stderr) = qie(&[
        "eval",
        "--pred-dir",
        empty.to_str().unwrap(),
        "--dataset",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("no row could be scored"), "{stderr}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report["missing"].as_array().unwrap().len(), 6);
}

#[test]
fn a_sweep_scores_every_run_and_tabulates_the_differing_settings() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("results");
    for (name, steps) in [("steps8", 8), ("steps20", 20)] {
        let run = runs.join(name);
        std::fs::create_dir_all(&run).unwrap();
        for f in ["cat", "dog", "sea"] {
            std::fs::copy(
                fixture(&format!("eval/pred/{f}.png")),
                run.join(format!("{f}.png")),
            )
            .unwrap();
        }
        let record = serde_json::json!({"model": "m", "settings": {"steps": steps, "cfg": 4.0}});
        std::fs::write(run.join("run.json"), record.to_string()).unwrap();
    }
    let pattern = format!("{}/*", runs.display());
    let out = dir.path().join("sweep.json");
    let data = fixture("eval/data.jsonl");
    let (code, stdout, stderr) = qie(&[
        "eval",
        "--runs",
        &pattern,
        "--dataset",
        data.to_str().unwrap(),
        "--metrics",
        "l1,ssim",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(runs.join("steps8/eval.json").is_file() && runs.join("steps20/eval.csv").is_file());
    let sweep: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let table = sweep["runs"].as_array().unwrap();
    assert_eq!(table.len(), 2);
    // only the setting that differs is a column; both runs scored the same three rows
    let settings = table[0]["settings"].as_object().unwrap();
    assert_eq!(settings.keys().collect::<Vec<_>>(), vec!["settings.steps"]);
    assert_eq!(table[0]["scored"], 3);
    assert_eq!(
        table[0]["summary"]["l1"]["mean"],
        table[1]["summary"]["l1"]["mean"]
    );
    let csv = std::fs::read_to_string(dir.path().join("sweep.csv")).unwrap();
    assert!(
        csv.starts_with("run,settings.steps,l1,ssim,scored,missing"),
        "{csv}"
    );
    assert!(stdout.contains("2 runs"), "{stdout}");

    let nothing = format!("{}/nosuch*", runs.display());
    let (code, _, stderr) = qie(&[
        "eval",
        "--runs",
        &nothing,
        "--dataset",
        data.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("no folder matches"), "{stderr}");
}

#[test]
fn an_elongated_image_loses_only_its_model_metric_and_csv_out_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let strip = image::RgbImage::from_fn(2, 300, |_, y| image::Rgb([(y % 256) as u8, 9, 9]));
    strip.save(dir.path().join("gt.png")).unwrap();
    let pred_dir = dir.path().join("pred");
    std::fs::create_dir(&pred_dir).unwrap();
    strip.save(pred_dir.join("gt.png")).unwrap();
    let data = dir.path().join("data.jsonl");
    std::fs::write(&data, "{\"prompt\": \"p\", \"image\": \"gt.png\"}\n").unwrap();
    let out = dir.path().join("eval.json");
    let dino = fixture("eval_models/dino");
    let (code, _, stderr) = qie(&[
        "eval",
        "--pred-dir",
        pred_dir.to_str().unwrap(),
        "--dataset",
        data.to_str().unwrap(),
        "--dino-model",
        dino.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report["rows"][0]["l1"], 0.0);
    assert!(report["rows"][0].get("dino").is_none());
    assert_eq!(report["missing"][0]["what"], "dino");
    assert!(report["missing"][0]["message"]
        .as_str()
        .unwrap()
        .contains("too elongated"));
    assert!(stderr.contains("lack a model metric"), "{stderr}");

    let csv_out = dir.path().join("scores.csv");
    let (code, _, stderr) = qie(&[
        "eval",
        "--pred-dir",
        pred_dir.to_str().unwrap(),
        "--dataset",
        data.to_str().unwrap(),
        "--out",
        csv_out.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("name the JSON report"), "{stderr}");
}

#[test]
fn a_hub_id_is_read_from_the_offline_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = cache.join("models--facebook--dino-vits16");
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("eval_models/dino").join(f), snapshot.join(f)).unwrap();
    }
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let out = dir.path().join("eval.json");
    let (pred, data) = (fixture("eval/pred"), fixture("eval/data.jsonl"));
    let args = [
        "eval",
        "--pred-dir",
        pred.to_str().unwrap(),
        "--dataset",
        data.to_str().unwrap(),
        "--metrics",
        "dino",
        "--dino-model",
        "facebook/dino-vits16",
        "--out",
        out.to_str().unwrap(),
    ];
    let env = [
        ("HF_HUB_CACHE", cache.as_path()),
        ("HF_HUB_OFFLINE", Path::new("1")),
    ];
    let (code, _, stderr) = qie_with_env(&args, &env);
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report["summary"]["dino"]["n"], 5);
    // an id the cache lacks: one error naming the flag and the offline setting
    let mut missing = args;
    missing[8] = "facebook/dinov2-base";
    missing[7] = "--dino-model";
    let (code, _, stderr) = qie_with_env(&missing, &env);
    assert_ne!(code, 0);
    assert!(stderr.contains("HF_HUB_OFFLINE"), "{stderr}");
}
