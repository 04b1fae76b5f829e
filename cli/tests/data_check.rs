//! `qie data check`: a clean dataset passes with a summary; warnings (identical target/input,
//! extreme aspect) are listed without failing; every error names file and line and fails the run.

mod common;

use std::path::Path;
use std::process::Command;

/// Runs `qie data check` with `args`; returns (exit code, stdout, stderr); asserts no panic.
fn check(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(common::qie_bin())
        .arg("data")
        .arg("check")
        .args(args)
        .output()
        .expect("run qie");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "qie panicked: {stderr}");
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

fn png(dir: &Path, name: &str, w: u32, h: u32, seed: u8) {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x as u8).wrapping_add(seed), y as u8, seed])
    })
    .save(dir.join(name))
    .unwrap();
}

fn images(dir: &Path) {
    png(dir, "t.png", 200, 150, 0);
    png(dir, "a.png", 200, 150, 9);
    png(dir, "b.png", 150, 200, 17);
    png(dir, "t_copy.png", 200, 150, 0);
    png(dir, "wide.png", 500, 100, 3);
    png(dir, "tiny.png", 6, 6, 1);
    std::fs::write(dir.join("broken.png"), b"\x89PNG not really").unwrap();
}

const AREA: [&str; 2] = ["--vae-area", "40000"];

#[test]
fn a_clean_dataset_passes_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    images(dir.path());
    let data = dir.path().join("data.jsonl");
    std::fs::write(
        &data,
        concat!(
            r#"{"prompt": "make it red", "image": "t.png", "edit_image": "a.png"}"#,
            "\n",
            r#"{"prompt": "combine them", "image": "t.png", "edit_image": ["a.png", "b.png"]}"#,
            "\n",
            r#"{"prompt": "a character LoRA row", "image": "b.png"}"#,
            "\n",
        ),
    )
    .unwrap();
    let (code, out, err) = check(&[data.to_str().unwrap(), AREA[0], AREA[1]]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("rows: 3 (3 good, 0 bad)"), "{out}");
    assert!(
        out.contains("target sizes: 200x150 x2, 150x200 x1"),
        "{out}"
    );
    // 200x150 at a 40000 area: calculate_dimensions gives 224x160.
    assert!(out.contains("training sizes: 224x160 x2"), "{out}");
    assert!(out.contains("inputs per row: 0 x1, 1 x1, 2 x1"), "{out}");
    assert!(out.contains("prompt length: 11..20 characters"), "{out}");
    assert!(!out.contains("warnings"), "{out}");
}

#[test]
fn warnings_are_listed_but_do_not_fail() {
    let dir = tempfile::tempdir().unwrap();
    images(dir.path());
    let data = dir.path().join("data.json");
    std::fs::write(
        &data,
        r#"[
  {"prompt": "swapped", "image": "t.png", "edit_image": "t_copy.png"},
  {"prompt": "same file", "image": "t.png", "edit_image": "t.png"},
  {"prompt": "panorama", "image": "wide.png", "edit_image": "a.png"}
]"#,
    )
    .unwrap();
    let (code, out, err) = check(&[data.to_str().unwrap(), AREA[0], AREA[1]]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("warnings: target identical to an input 2, extreme aspect ratio 1"),
        "{out}"
    );
    assert!(out.contains("data.json[0] (line 2)"), "{out}");
    assert!(out.contains("has the same pixels as input 0"), "{out}");
    assert!(
        out.contains("data.json[1] (line 3)") && out.contains("is the same file as"),
        "{out}"
    );
    assert!(
        out.contains("data.json[2] (line 4)") && out.contains("5.0:1"),
        "{out}"
    );
}

#[test]
fn every_error_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    images(dir.path());
    let data = dir.path().join("data.jsonl");
    std::fs::write(
        &data,
        concat!(
            r#"{"prompt": "fine", "image": "t.png", "edit_image": "a.png"}"#,
            "\n",
            r#"{"prompt": "", "image": "t.png", "edit_image": "a.png"}"#,
            "\n",
            r#"{"prompt": "gone", "image": "t.png", "edit_image": "nope.png"}"#,
            "\n",
            r#"{"prompt": "joined", "image": "t.png", "edit_image": "a.png, b.png"}"#,
            "\n",
            r#"{"prompt": "listed", "image": ["t.png", "a.png"], "edit_image": "a.png"}"#,
            "\n",
            r#"{"prompt": "broken", "image": "t.png", "edit_image": "broken.png"}"#,
            "\n",
            r#"{"prompt": "tiny", "image": "tiny.png", "edit_image": "a.png"}"#,
            "\n",
            r#"{"prompt": "no target", "edit_image": "a.png"}"#,
            "\n",
            "{oops\n",
        ),
    )
    .unwrap();
    let (code, out, err) = check(&[data.to_str().unwrap(), AREA[0], AREA[1]]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("8 of 9 rows have errors"), "{err}");
    assert!(out.contains("rows: 9 (1 good, 8 bad)"), "{out}");
    let name = data.display().to_string();
    for (line, what) in [
        (2, "the prompt is empty"),
        (3, "nope.png does not exist"),
        (4, "paths joined by commas"),
        (5, "must be one path, got a list of 2"),
        (6, "cannot decode image"),
        (7, "is too small"),
        (8, "missing `image`"),
        (9, "invalid JSON"),
    ] {
        let expected = format!("{name}:{line}: ");
        let found = out
            .lines()
            .any(|l| l.trim_start().starts_with(&expected) && l.contains(what));
        assert!(found, "line {line} ({what}) not reported:\n{out}");
    }
}

#[test]
fn metadata_csv_with_list_cells() {
    let dir = tempfile::tempdir().unwrap();
    images(dir.path());
    let data = dir.path().join("metadata.csv");
    std::fs::write(
        &data,
        "image,prompt,edit_image\n\
         t.png,\"red, please\",a.png\n\
         t.png,two inputs,\"[\"\"a.png\"\", \"\"b.png\"\"]\"\n\
         t.png,python list,\"['a.png', 'b.png']\"\n\
         b.png,no inputs,\n\
         t.png,,a.png\n",
    )
    .unwrap();
    let (code, out, _) = check(&[data.to_str().unwrap(), AREA[0], AREA[1]]);
    assert_ne!(code, 0);
    assert!(out.contains("rows: 5 (4 good, 1 bad)"), "{out}");
    assert!(out.contains("inputs per row: 2 x2, 0 x1, 1 x1"), "{out}");
    assert!(out.contains("metadata.csv:6: the prompt is empty"), "{out}");
}

#[test]
fn max_pixels_caps_the_training_size() {
    let dir = tempfile::tempdir().unwrap();
    images(dir.path());
    let data = dir.path().join("data.jsonl");
    std::fs::write(
        &data,
        r#"{"prompt": "p", "image": "t.png", "edit_image": "a.png"}"#,
    )
    .unwrap();
    let (code, out, _) = check(&[data.to_str().unwrap(), "--max-pixels", "10000"]);
    assert_eq!(code, 0, "{out}");
    // 1024² area capped at 10000 px: 128x96 -> 12288 > 10000 -> 96x96.
    assert!(out.contains("training sizes: 96x96 x1"), "{out}");
    let (code, _, err) = check(&["/nonexistent/data.jsonl"]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/data.jsonl"), "{err}");
}
