//! `qie edit` / `qie infer` on the tiny Plus fixture (tests/fixtures/edit/plus): the one-shot edit
//! reproduces diffusers' image; batch runs skip bad rows and resume; an interactive session is
//! saved and replays exactly; bad input gives one clear error and a non-zero exit, never a panic.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn fixture(rel: &str) -> String {
    repo("tests/fixtures/edit/plus")
        .join(rel)
        .display()
        .to_string()
}

/// The fixture shrinks the pipeline's fixed areas; these flags reproduce them.
const AREAS: [&str; 6] = [
    "--vl-area",
    "9216",
    "--vae-area",
    "16384",
    "--output-area",
    "16384",
];

/// Runs qie with `stdin`; returns (exit code, stderr). Asserts it did not panic.
fn qie(args: &[&str], stdin: &str) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qie"))
        .args(args)
        .env_remove("QIE_DEVICE")
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run qie");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "qie panicked: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn edit_args<'a>(model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "edit",
        "--model",
        model,
        "--steps",
        "3",
        "--sequential-positions",
    ];
    args.extend(AREAS);
    args.extend(extra);
    args
}

fn mean_abs_diff(a: &Path, b: &Path) -> f64 {
    let a = image::open(a).unwrap().to_rgb8();
    let b = image::open(b).unwrap().to_rgb8();
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .sum::<f64>()
        / a.as_raw().len() as f64
}

#[test]
fn one_shot_edit_matches_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let latents = dir.path().join("latents.safetensors");
    let model = fixture("model");
    let (img0, img1, noise) = (
        fixture("inputs/image_0.png"),
        fixture("inputs/image_1.png"),
        fixture("init_noise.safetensors"),
    );
    let prompt = "Put the cat from Picture 1 next to the 红色的花 in Picture 2, 保持风格一致.";
    let args = edit_args(
        &model,
        &[
            "--image",
            &img0,
            "--image",
            &img1,
            "--prompt",
            prompt,
            "--pil-vl-resize",
            "--init-noise",
            &noise,
            "--save-latents",
            latents.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let (code, stderr) = qie(&args, "");
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("text encoder") && stderr.contains("vae decode"),
        "{stderr}"
    );
    let diff = mean_abs_diff(&out, Path::new(&fixture("out.png")));
    assert!(diff <= 1.0, "mean |diff| {diff} levels");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(record["settings"]["prompt"], prompt);
    assert!(latents.exists());
}

#[test]
fn batch_skips_bad_rows_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("inputs/image_0.png"), dir.path().join("a.png")).unwrap();
    let dataset = dir.path().join("data.jsonl");
    std::fs::write(
        &dataset,
        concat!(
            r#"{"prompt": "make it blue", "edit_image": "a.png", "image": "target.png"}"#,
            "\n",
            r#"{"prompt": "missing input", "edit_image": "nope.png"}"#,
            "\n",
            r#"{"edit_image": "a.png"}"#,
            "\n",
        ),
    )
    .unwrap();
    let out_dir = dir.path().join("results");
    let model = fixture("model");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "infer",
            "--model",
            &model,
            "--steps",
            "2",
            "--dataset",
            dataset.to_str().unwrap(),
            "--out-dir",
            out_dir.to_str().unwrap(),
        ];
        args.extend(AREAS);
        args.extend(extra);
        qie(&args, "")
    };
    let (code, stderr) = run(&[]);
    assert_eq!(code, 0, "{stderr}");
    let done = out_dir.join("000000_target.png");
    assert!(
        done.exists() && done.with_extension("json").exists(),
        "{stderr}"
    );
    let errors = std::fs::read_to_string(out_dir.join("errors.jsonl")).unwrap();
    assert_eq!(errors.lines().count(), 2, "{errors}");
    assert!(
        errors.contains("nope.png") && errors.contains("missing `prompt`"),
        "{errors}"
    );
    assert!(stderr.contains("done 1, failed 1, malformed 1"), "{stderr}");

    let before = std::fs::metadata(&done).unwrap().modified().unwrap();
    let (code, stderr) = run(&["--resume"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("1 already done"), "{stderr}");
    assert_eq!(
        std::fs::metadata(&done).unwrap().modified().unwrap(),
        before
    );
}

#[test]
fn interactive_session_saves_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("session");
    let model = fixture("model");
    let img = fixture("inputs/image_0.png");
    let saved = dir.path().join("final.png");
    let saved_webp = dir.path().join("final.webp");
    let script = format!(
        "make it red\n/history\n/undo\n/seed 7\nmake it green\n/bogus\n/cfg nan\n/steps 0\n/seed -1\n/size 100000x100000\nand add a hat\n/save {}\n/save {}\n/save {}\n/quit\n",
        saved.display(),
        saved_webp.display(),
        dir.path().join("final.gif").display()
    );
    let mut args = edit_args(&model, &["--interactive", "--image", &img]);
    args.extend(["--session", session.to_str().unwrap()]);
    let (code, stderr) = qie(&args, &script);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("unknown command /bogus"), "{stderr}");
    for refused in [
        "/cfg nan: not a finite number",
        "/steps 0:",
        "/seed -1:",
        "/size: --width x --height 100000x100000",
    ] {
        assert!(stderr.contains(refused), "{refused}: {stderr}");
    }
    assert!(
        stderr.contains("/save") && stderr.contains("`.gif`"),
        "{stderr}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(session.join("session.json")).unwrap())
            .unwrap();
    let turns = json["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2, "{json}");
    assert_eq!(turns[0]["settings"]["prompt"], "make it green");
    assert_eq!(turns[0]["settings"]["seed"], 7);
    assert_eq!(turns[1]["inputs"][0], turns[0]["output"]);
    assert!(std::fs::read(&saved).unwrap().starts_with(b"\x89PNG"));
    let webp = std::fs::read(&saved_webp).unwrap();
    assert!(webp.starts_with(b"RIFF") && &webp[8..12] == b"WEBP");
    assert!(!dir.path().join("final.gif").exists());

    let mut args = edit_args(&model, &[]);
    args.extend(["--replay", session.to_str().unwrap()]);
    let (code, stderr) = qie(&args, "");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr.matches("identical").count(), 2, "{stderr}");
}

#[test]
fn out_extension_picks_the_image_format() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.JPG");
    let model = fixture("model");
    let img = fixture("inputs/image_0.png");
    let mut args = edit_args(&model, &["--image", &img, "--prompt", "x"]);
    args.extend(["--out", out.to_str().unwrap()]);
    let (code, stderr) = qie(&args, "");
    assert_eq!(code, 0, "{stderr}");
    let bytes = std::fs::read(&out).unwrap();
    assert!(
        bytes.starts_with(b"\xFF\xD8\xFF"),
        "not JPEG: {:?}",
        &bytes[..4]
    );
    assert_eq!(
        image::guess_format(&bytes).unwrap(),
        image::ImageFormat::Jpeg
    );
    assert!(out.with_extension("json").exists());
}

#[test]
fn batch_reads_a_bom_and_reports_undecodable_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("inputs/image_0.png"), dir.path().join("a.png")).unwrap();
    let dataset = dir.path().join("data.jsonl");
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend(br#"{"prompt": "make it blue", "edit_image": "a.png"}"#);
    bytes.extend(b"\n{\"prompt\": \"caf\xE9\", \"edit_image\": \"a.png\"}\n");
    bytes.extend(br#"{"prompt": "missing input", "edit_image": "nope.png"}"#);
    std::fs::write(&dataset, bytes).unwrap();
    let out_dir = dir.path().join("results");
    let model = fixture("model");
    let run = |dataset: &Path, extra: &[&str]| {
        let mut args = vec![
            "infer",
            "--model",
            &model,
            "--steps",
            "2",
            "--out-dir",
            out_dir.to_str().unwrap(),
        ];
        args.extend(AREAS);
        args.extend(["--dataset", dataset.to_str().unwrap()]);
        args.extend(extra);
        qie(&args, "")
    };
    let (code, stderr) = run(&dataset, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(out_dir.join("000000_a.png").exists(), "{stderr}");
    let errors = std::fs::read_to_string(out_dir.join("errors.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = errors
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{errors}");
    assert_eq!(lines[0]["row"], 1);
    assert!(
        lines[0]["location"]
            .as_str()
            .unwrap()
            .ends_with("data.jsonl:2")
            && lines[0]["error"].as_str().unwrap().contains("not UTF-8"),
        "{errors}"
    );
    assert!(lines[1]["error"].as_str().unwrap().contains("nope.png"));
    assert!(stderr.contains("done 1, failed 1, malformed 1"), "{stderr}");

    // A JSON array with a BOM parses as an array (its rows are judged one by one).
    let array = dir.path().join("data.json");
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend(br#"[{"edit_image": "a.png"}]"#);
    std::fs::write(&array, bytes).unwrap();
    let (code, stderr) = run(&array, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("data.json[0]: missing `prompt`"),
        "{stderr}"
    );

    // A row whose size goes over the pixel limit fails alone, before its edit allocates.
    std::fs::remove_dir_all(&out_dir).unwrap();
    let (code, stderr) = run(&dataset, &["--width", "200000"]);
    assert_eq!(code, 0, "{stderr}");
    let errors = std::fs::read_to_string(out_dir.join("errors.jsonl")).unwrap();
    assert!(
        errors.contains("data.jsonl row 0") && errors.contains("--max-pixels"),
        "{errors}"
    );
    assert!(stderr.contains("done 0, failed 2, malformed 1"), "{stderr}");
}

#[test]
fn bad_input_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("model");
    let out = dir.path().join("o.png");
    let out = out.to_str().unwrap();
    // A missing input image is named.
    let (code, stderr) = qie(
        &edit_args(
            &model,
            &["--image", "/no/such.png", "--prompt", "x", "--out", out],
        ),
        "",
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("/no/such.png"), "{stderr}");
    // A model folder without a component names it.
    let broken = dir.path().join("model");
    copy_dir(Path::new(&model), &broken);
    std::fs::remove_dir_all(broken.join("vae")).unwrap();
    let img = fixture("inputs/image_0.png");
    let (code, stderr) = qie(
        &edit_args(
            broken.to_str().unwrap(),
            &["--image", &img, "--prompt", "x", "--out", out],
        ),
        "",
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("vae"), "{stderr}");
    // A truncated DiT checkpoint names the file.
    let dit = broken.join("transformer/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&dit).unwrap();
    std::fs::write(&dit, &bytes[..bytes.len() / 2]).unwrap();
    copy_dir(&Path::new(&model).join("vae"), &broken.join("vae"));
    let (code, stderr) = qie(
        &edit_args(
            broken.to_str().unwrap(),
            &["--image", &img, "--prompt", "x", "--out", out],
        ),
        "",
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("diffusion_pytorch_model.safetensors"),
        "{stderr}"
    );
    // Wrong-shaped init noise says which shape is needed.
    let noise = dir.path().join("noise.safetensors");
    qie_runtime::weights::save_safetensors(&noise, &[("latents", vec![1, 3, 64], &[0.5f32; 192])])
        .unwrap();
    let (code, stderr) = qie(
        &edit_args(
            &model,
            &[
                "--image",
                &img,
                "--prompt",
                "x",
                "--init-noise",
                noise.to_str().unwrap(),
                "--out",
                out,
            ],
        ),
        "",
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("init noise"), "{stderr}");
    assert!(!Path::new(out).exists(), "no output is written on failure");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
