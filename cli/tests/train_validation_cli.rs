//! `qie train` validation from flags and from train.toml on the tiny Plus fixture (CPU): the
//! flags override the file, the images land under OUT/validation/step-<step>/, and bad values
//! are one clear error naming the flag or the `[validation]` key.

mod common;

use std::path::{Path, PathBuf};

use common::{plus_fixture as fixture, run_qie as qie};

/// A 2-row dataset and its cache (small areas so the CPU run is quick).
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
            r#"{"prompt": "sunset", "image": "a.png", "edit_image": ["b.png", "a.png"]}"#,
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

/// train.toml: 3 LoRA steps, validation of row 0 every 3 steps with 2 denoising steps.
fn write_config(dir: &Path, cache: &Path) -> PathBuf {
    let path = dir.join("train.toml");
    let text = format!(
        "[model]\npath = {model:?}\n[data]\ncache = {cache:?}\n[train]\nsteps = 3\nlr = 1e-3\n\
         [lora]\nrank = 4\n[validation]\nevery = 3\nrows = [0]\nsteps = 2\ncfg = 2.5\nseed = 4\n",
        model = fixture("model").to_str().unwrap(),
        cache = cache.to_str().unwrap(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn flags_override_the_validation_section() {
    let dir = tempfile::tempdir().unwrap();
    let cache = make_cache(dir.path());
    let config = write_config(dir.path(), &cache);
    let config = config.to_str().unwrap();

    // The file alone: validation after step 3 (every 3, and the last step).
    let out = dir.path().join("file");
    let (code, err) = qie(&["train", "--config", config, "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(listing(&out.join("validation")), ["step-3"]);
    assert_eq!(
        listing(&out.join("validation/step-3")),
        ["grid.png", "row-0.png"]
    );
    assert!(err.contains("validation edits in"), "{err}");

    // Flags: every 2 steps, rows 1 and 0 (two control images in row 1).
    let out = dir.path().join("flags");
    let (code, err) = qie(&[
        "train",
        "--config",
        config,
        "--out",
        out.to_str().unwrap(),
        "--validate-every",
        "2",
        "--validate-rows",
        "1, 0",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(listing(&out.join("validation")), ["step-2", "step-3"]);
    assert_eq!(
        listing(&out.join("validation/step-2")),
        ["grid.png", "row-0.png", "row-1.png"]
    );
    let resolved = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(
        resolved.contains("every = 2") && resolved.contains("rows = [\n    1,\n    0,\n]"),
        "{resolved}"
    );

    // Flags without a section: the defaults (row 0).
    let out = dir.path().join("bare");
    let (code, err) = qie(&[
        "train",
        "--model",
        fixture("model").to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--lora-rank",
        "2",
        "--steps",
        "1",
        "--validate-every",
        "5",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        listing(&out.join("validation/step-1")),
        ["grid.png", "row-0.png"]
    );
}

#[test]
fn bad_validation_flags_give_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cache = make_cache(dir.path());
    let config = write_config(dir.path(), &cache);
    let base = |out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut args = vec![
            "train",
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (code, err) = qie(&args);
        assert_ne!(code, 0, "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?}: nothing is written");
        err
    };
    let err = base("a", &["--validate-rows", "0,7"]);
    assert!(
        err.contains("[validation] rows: row 7 is past the end"),
        "{err}"
    );
    let err = base("b", &["--validate-every", "0"]);
    assert!(err.contains("[validation] every must be >= 1"), "{err}");
    let err = base("c", &["--validate-rows", "0,x"]);
    assert!(
        err.contains("--validate-rows: `x` is not a row number"),
        "{err}"
    );
    // The file's values are checked too.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("steps = 2", "steps = 0")).unwrap();
    let err = base("d", &[]);
    assert!(err.contains("[validation] steps 0"), "{err}");
    std::fs::write(&config, text.replace("cfg = 2.5", "cfg = nan")).unwrap();
    let err = base("e", &[]);
    assert!(err.contains("[validation] cfg NaN"), "{err}");
    // --validate-rows alone, without a section to add them to.
    let out = dir.path().join("f");
    let (code, err) = qie(&[
        "train",
        "--model",
        fixture("model").to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--lora-rank",
        "2",
        "--steps",
        "1",
        "--validate-rows",
        "0",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--validate-rows: give --validate-every"),
        "{err}"
    );
}
