//! `qie compare` end to end: two runs over tests/fixtures/eval (the fixture predictions, and a
//! copy of three ground truths as a "perfect" run), grouped by a row field; the report files,
//! an offline page, the tables' best markers and the bad-input errors.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(rel)
}

fn qie(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qie"))
        .args(args)
        .output()
        .expect("run qie");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "qie panicked: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

/// The fixture dataset with absolute paths and an `edit_type` field (two groups).
fn dataset(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(fixture("eval/data.jsonl")).unwrap();
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        let mut row: Value = serde_json::from_str(line).unwrap();
        for key in ["image", "back_mask"] {
            if let Some(p) = row[key].as_str() {
                row[key] = fixture(&format!("eval/{p}")).display().to_string().into();
            }
        }
        row["edit_type"] = if i % 2 == 0 { "add" } else { "remove" }.into();
        out.push_str(&format!("{row}\n"));
    }
    let path = dir.join("data.jsonl");
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn compare_writes_an_offline_report() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let perfect = dir.path().join("perfect");
    std::fs::create_dir(&perfect).unwrap();
    for name in ["cat", "dog", "sea"] {
        std::fs::copy(
            fixture(&format!("eval/gt/{name}.png")),
            perfect.join(format!("{name}.png")),
        )
        .unwrap();
    }
    let report = dir.path().join("report");
    let model = format!("model={}", fixture("eval/pred").display());
    let copy = format!("copy={}", perfect.display());
    let (code, stderr) = qie(&[
        "compare",
        "--run",
        &model,
        "--run",
        &copy,
        "--dataset",
        data.to_str().unwrap(),
        "--out",
        report.to_str().unwrap(),
        "--group-by",
        "edit_type",
        "--metrics",
        "l1,psnr,ssim",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external resources"
    );
    assert!(!html.contains("<script src"), "inline script only");
    for want in [
        "Summary",
        "By edit_type",
        "plots/l1.png",
        "plots/ssim_rows.png",
        "id=\"gallery\"",
    ] {
        assert!(html.contains(want), "index.html lacks {want}");
    }
    for f in [
        "plots/l1.png",
        "plots/psnr_rows.png",
        "images/0_gt.jpg",
        "images/0_run1.jpg",
        "runs/copy.json",
    ] {
        assert!(report.join(f).is_file(), "{f} missing");
    }
    // the perfect run is best on l1 and ssim everywhere it has values; psnr is undefined there
    let csv = std::fs::read_to_string(report.join("summary.csv")).unwrap();
    assert!(csv.contains("all,copy,l1,0,0,0,3,true"), "{csv}");
    assert!(csv.contains("all,model,psnr,"), "{csv}");
    assert!(
        !csv.contains("all,copy,psnr"),
        "copy has no defined psnr: {csv}"
    );
    assert!(
        csv.lines().any(|l| l.starts_with("add,")) && csv.lines().any(|l| l.starts_with("remove,"))
    );
    let md = std::fs::read_to_string(report.join("summary.md")).unwrap();
    assert!(md.contains("## edit_type = add"), "{md}");
    assert!(stderr.contains("copy: 3 of 6 rows not scored"), "{stderr}");
}

#[test]
fn compare_bad_input_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let out = dir.path().join("report");
    let pred = format!("a={}", fixture("eval/pred").display());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--run".into(), "nodir".into()], "expected NAME=DIR"),
        (
            vec!["--run".into(), "a=/nonexistent".into()],
            "is not a folder",
        ),
        (
            vec!["--run".into(), pred.clone(), "--run".into(), pred.clone()],
            "the name is given twice",
        ),
        (
            vec![
                "--run".into(),
                pred.clone(),
                "--group-by".into(),
                "nosuch".into(),
            ],
            "no row has that field",
        ),
        (
            vec![
                "--run".into(),
                pred.clone(),
                "--metrics".into(),
                "clip_i".into(),
            ],
            "needs --clip-model",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec![
            "compare".to_string(),
            "--dataset".into(),
            data.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ];
        args.extend(extra.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stderr) = qie(&refs);
        assert_ne!(code, 0, "{extra:?}");
        assert!(stderr.contains(want), "{extra:?}: {stderr}");
        assert!(!out.join("index.html").exists(), "{extra:?}: no report");
    }
}
