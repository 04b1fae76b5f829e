//! Bad input to the CLI: one clear error naming what is wrong, a non-zero exit, no panic, and no
//! damage to files already written.

use qie_runtime::weights::{save_safetensors, WeightStore};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(rel)
}

const SHAPES: &str = "1x4x6,1x6x4,1x2x2";

/// Runs qie; returns (exit code, stderr). Asserts it did not panic.
fn qie(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qie"))
        .args(args)
        .output()
        .expect("run qie");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "qie panicked: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn forward(weights: &Path, inputs: &Path, shapes: &str, out: &Path) -> (i32, String) {
    qie(&[
        "forward",
        "dit",
        "--weights",
        weights.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--img-shapes",
        shapes,
        "--out",
        out.to_str().unwrap(),
    ])
}

/// The multi_ref inputs with `edit` applied to the list of (name, shape, values).
fn write_inputs(
    dir: &Path,
    edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>),
) -> PathBuf {
    let store = WeightStore::open(fixture("dit/multi_ref/inputs.safetensors")).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = store
        .names()
        .into_iter()
        .map(|n| {
            (
                n.to_string(),
                store.info(n).unwrap().shape.clone(),
                store.load_f32(n).unwrap_or_else(|_| {
                    store
                        .load_i64(n)
                        .unwrap()
                        .into_iter()
                        .map(|v| v as f32)
                        .collect()
                }),
            )
        })
        .collect();
    edit(&mut tensors);
    let path = dir.join("inputs.safetensors");
    let refs: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice()))
        .collect();
    save_safetensors(&path, &refs).unwrap();
    path
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn missing_input_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(dir.path(), |t| t.retain(|(n, _, _)| n != "timestep"));
    let (code, err) = forward(
        &fixture("dit/multi_ref/transformer"),
        &inputs,
        SHAPES,
        &dir.path().join("o.safetensors"),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("missing input tensor `timestep`"), "{err}");
}

#[test]
fn wrong_input_shape_is_named_with_the_expected_shape() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(dir.path(), |t| {
        let ehs = t
            .iter_mut()
            .find(|(n, _, _)| n == "encoder_hidden_states")
            .unwrap();
        ehs.1 = vec![1, 9, 12];
        ehs.2.truncate(9 * 12);
    });
    let (code, err) = forward(
        &fixture("dit/multi_ref/transformer"),
        &inputs,
        SHAPES,
        &dir.path().join("o.safetensors"),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("`encoder_hidden_states` has shape [1, 9, 12], expected [1, S_txt, 24]"),
        "{err}"
    );
}

#[test]
fn img_shapes_that_do_not_cover_the_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = fixture("dit/multi_ref/inputs.safetensors");
    let (code, err) = forward(
        &fixture("dit/multi_ref/transformer"),
        &inputs,
        "1x4x6,1x6x4",
        &dir.path().join("o.safetensors"),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("cover 48 tokens but `hidden_states` has 52"),
        "{err}"
    );
    let (code, err) = forward(
        &fixture("dit/multi_ref/transformer"),
        &inputs,
        "1x4",
        &dir.path().join("o.safetensors"),
    );
    assert_eq!(code, 1);
    assert!(err.contains("--img-shapes: `1x4` is not FxHxW"), "{err}");
}

#[test]
fn truncated_checkpoint_names_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("transformer");
    copy_dir(&fixture("dit/multi_ref/transformer"), &weights);
    let file = weights.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let (code, err) = forward(
        &weights,
        &fixture("dit/multi_ref/inputs.safetensors"),
        SHAPES,
        &dir.path().join("o.safetensors"),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("diffusion_pytorch_model.safetensors")
            && err.contains("truncated")
            && err.contains("tensor '"),
        "{err}"
    );
}

#[test]
fn missing_and_misshaped_weights_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("transformer");
    std::fs::create_dir_all(&weights).unwrap();
    std::fs::copy(
        fixture("dit/multi_ref/transformer/config.json"),
        weights.join("config.json"),
    )
    .unwrap();
    let store = WeightStore::open(fixture("dit/multi_ref/transformer")).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for name in store.names() {
        if name == "proj_out.bias" {
            continue;
        }
        let mut shape = store.info(name).unwrap().shape.clone();
        let mut values = store.load_f32(name).unwrap();
        if name == "img_in.weight" {
            shape[1] += 1;
            values.extend(std::iter::repeat_n(0.5, shape[0]));
        }
        tensors.push((name.to_string(), shape, values));
    }
    let refs: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice()))
        .collect();
    save_safetensors(weights.join("diffusion_pytorch_model.safetensors"), &refs).unwrap();
    let (code, err) = forward(
        &weights,
        &fixture("dit/multi_ref/inputs.safetensors"),
        SHAPES,
        &dir.path().join("o.safetensors"),
    );
    assert_eq!(code, 1);
    assert!(err.contains("proj_out.bias"), "{err}");
    assert!(
        err.contains("img_in.weight") && err.contains("[32, 16]") && err.contains("[32, 17]"),
        "{err}"
    );
}

#[test]
fn a_failed_run_leaves_an_existing_output_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    std::fs::write(&out, b"earlier results").unwrap();
    let inputs = write_inputs(dir.path(), |t| t.retain(|(n, _, _)| n != "hidden_states"));
    let (code, _) = forward(&fixture("dit/multi_ref/transformer"), &inputs, SHAPES, &out);
    assert_eq!(code, 1);
    assert_eq!(std::fs::read(&out).unwrap(), b"earlier results");
}

#[test]
fn a_good_run_matches_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    let (code, err) = qie(&[
        "forward",
        "dit",
        "--weights",
        fixture("dit/multi_ref/transformer").to_str().unwrap(),
        "--inputs",
        fixture("dit/multi_ref/inputs.safetensors")
            .to_str()
            .unwrap(),
        "--img-shapes",
        SHAPES,
        "--out",
        out.to_str().unwrap(),
        "--compare",
        fixture("dit/multi_ref/expected.safetensors")
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let sample = WeightStore::open(&out).unwrap();
    assert_eq!(sample.info("sample").unwrap().shape, vec![1, 52, 16]);
}

#[test]
fn malformed_dsl_reports_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("bad.qie");
    std::fs::write(
        &src,
        "module M() {\n    fn forward(x: f32[N]) {\n        output y = x +* 2;\n    }\n}\n",
    )
    .unwrap();
    let (code, err) = qie(&["compile", src.to_str().unwrap(), "--shapes", "x=4"]);
    assert_eq!(code, 1);
    assert!(err.contains("bad.qie:3:"), "{err}");
    assert!(err.contains('^'), "{err}");
}

#[test]
fn unknown_input_in_compile_shapes_lists_the_inputs() {
    let (code, err) = qie(&[
        "compile",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/qie/qwen_image_dit.qie")
            .to_str()
            .unwrap(),
        "--config",
        fixture("dit/single/transformer/config.json")
            .to_str()
            .unwrap(),
        "--shapes",
        "latents=1x24x16",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no input `latents`") && err.contains("hidden_states"),
        "{err}"
    );
}

#[test]
fn compile_prints_every_stage() {
    let out = Command::new(env!("CARGO_BIN_EXE_qie"))
        .args([
            "compile",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../models/qie/qwen_image_dit.qie")
                .to_str()
                .unwrap(),
            "--config",
            fixture("dit/single/transformer/config.json")
                .to_str()
                .unwrap(),
            "--shapes",
            "hidden_states=1x24x16,encoder_hidden_states=1x7x24,timestep=1",
            "--static",
            "img_shapes=[[1,4,6]]",
            "--dump-ir",
            "--dump-fusion",
            "--dump-memplan",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "== IR after lowering",
        "= matmul",
        "== fusion",
        "== memory plan",
        "compiled:",
    ] {
        assert!(stdout.contains(needle), "missing `{needle}` in output");
    }
}

#[test]
fn bench_dit_runs_a_real_width_block_and_rejects_bad_sizes() {
    let out = Command::new(env!("CARGO_BIN_EXE_qie"))
        .args([
            "bench", "dit", "--device", "cpu", "--size", "128", "--layers", "1", "--txt", "8",
            "--runs", "1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("bench dit on cpu: 1 layers")
            && stdout.contains("(128 image + 8 text tokens)"),
        "{stdout}"
    );
    let (code, err) = qie(&["bench", "dit", "--size", "100"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--size must be a positive multiple of 16"),
        "{err}"
    );
}

#[test]
fn img_shapes_that_overflow_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for shapes in ["99999999x99999999x9999999", "1x4x6,1x2048x1024"] {
        let (code, err) = forward(
            &fixture("dit/multi_ref/transformer"),
            &fixture("dit/multi_ref/inputs.safetensors"),
            shapes,
            &dir.path().join("o.safetensors"),
        );
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("--img-shapes") && err.contains("image tokens") && err.contains("limit"),
            "{shapes}: {err}"
        );
    }
}

fn edit_image() -> String {
    fixture("edit/plus/inputs/image_0.png")
        .display()
        .to_string()
}

/// `qie edit` with a model that does not exist: an error that is not about the model shows the
/// flags were refused before anything was loaded.
fn edit_without_model(extra: &[&str]) -> (i32, String) {
    let image = edit_image();
    let mut args = vec![
        "edit",
        "--model",
        "/no/such/model",
        "--image",
        &image,
        "--prompt",
        "x",
    ];
    args.extend(extra);
    qie(&args)
}

#[test]
fn non_finite_and_negative_numbers_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    let out = out.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--cfg", "NaN"], "--cfg"),
        (&["--cfg", "inf"], "--cfg"),
        (&["--cfg=-2"], "--cfg"),
        (&["--steps", "0"], "--steps"),
        (&["--steps=-3"], "--steps"),
        (&["--steps", "1000000000"], "--steps"),
        (&["--seed=-1"], "--seed"),
        (&["--seed", "1.5"], "--seed"),
        (&["--width", "0"], "--width"),
        (&["--height=-16"], "--height"),
        (&["--sigmas", "1,NaN,0.5"], "--sigmas"),
        (&["--sigmas", "1.5,0.5"], "--sigmas"),
        (&["--vl-area", "0"], "--vl-area"),
        (&["--vae-area", "nan"], "--vae-area"),
        (&["--output-area=-1"], "--output-area"),
        (&["--max-pixels", "0"], "--max-pixels"),
        (&["--lora", "x.safetensors:nan"], "--lora"),
        (&["--lora", "x.safetensors:inf"], "--lora"),
    ];
    for (flags, name) in cases {
        let mut extra = flags.to_vec();
        extra.extend(["--out", out]);
        let (code, err) = edit_without_model(&extra);
        assert_ne!(code, 0, "{flags:?}");
        assert!(
            err.contains(name) && !err.contains("/no/such/model"),
            "{flags:?}: {err}"
        );
        // `qie infer` shares the flags.
        let mut args = vec![
            "infer",
            "--model",
            "/no/such/model",
            "--dataset",
            "/no/such.jsonl",
            "--out-dir",
            dir.path().to_str().unwrap(),
        ];
        args.extend(flags.iter());
        let (code, err) = qie(&args);
        assert_ne!(code, 0, "infer {flags:?}");
        assert!(
            err.contains(name) && !err.contains("/no/such"),
            "infer {flags:?}: {err}"
        );
    }
    assert!(!Path::new(out).exists());
    let others: &[(&[&str], &str)] = &[
        (&["bench", "dit", "--layers", "0"], "--layers"),
        (&["bench", "dit", "--runs=-1"], "--runs"),
        (&["bench", "dit", "--size", "1048576"], "--size"),
        (&["bench", "edit", "--cfg", "nan"], "--cfg"),
        (&["bench", "edit", "--size", "100000"], "--size"),
        (&["bench", "edit", "--steps", "0"], "--steps"),
        (
            &["forward", "vae-decode", "--tolerance", "NaN"],
            "--tolerance",
        ),
        (
            &["forward", "text-encoder", "--tolerance=-1"],
            "--tolerance",
        ),
    ];
    for (args, name) in others {
        let (code, err) = qie(args);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(name), "{args:?}: {err}");
    }
    let (code, err) = qie(&[
        "forward",
        "dit",
        "--weights",
        "/no/such",
        "--inputs",
        "/no/such",
        "--img-shapes",
        SHAPES,
        "--out",
        out,
        "--tolerance",
        "nan",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--tolerance"), "{err}");
}

#[test]
fn sizes_over_the_pixel_limit_are_refused_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    let out = out.to_str().unwrap();
    let (code, err) =
        edit_without_model(&["--width", "100000", "--height", "100000", "--out", out]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("100000x100000") && err.contains("--max-pixels"),
        "{err}"
    );
    // One side given: the other follows the input's aspect (96x64), and the product counts.
    let (code, err) = edit_without_model(&["--width", "32768", "--out", out]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("32768x832") && err.contains("--max-pixels"),
        "{err}"
    );
    let (code, err) = edit_without_model(&["--vae-area", "100000000", "--out", out]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--vae-area") && err.contains("--max-pixels"),
        "{err}"
    );
    // Raising the limit lets the size through to the next check (the model).
    let (code, err) = edit_without_model(&[
        "--width",
        "32768",
        "--max-pixels",
        "200000000",
        "--out",
        out,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/no/such/model"), "{err}");
    let (code, err) = qie(&[
        "infer",
        "--model",
        "/no/such/model",
        "--dataset",
        "/no/such.jsonl",
        "--out-dir",
        dir.path().to_str().unwrap(),
        "--width",
        "100000",
        "--height",
        "100000",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--max-pixels") && !err.contains("/no/such"),
        "{err}"
    );
    assert!(!Path::new(out).exists());
}

#[test]
fn an_unknown_output_extension_is_refused_before_running() {
    for out in ["o.gif", "o", "o.png.tmp"] {
        let (code, err) = edit_without_model(&["--out", out]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("--out") && err.contains(out) && err.contains(".jpg"),
            "{out}: {err}"
        );
    }
}

#[test]
fn a_replayed_session_with_bad_settings_is_refused_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let session = serde_json::json!({
        "model": "m",
        "loras": [],
        "settings": {},
        "current": ["turn_000.png"],
        "turns": [
            {"settings": {"prompt": "a"}, "inputs": ["in.png"], "output": "turn_000.png", "previous": []},
            {"settings": {"prompt": "b", "width": 100000, "height": 100000}, "inputs": ["turn_000.png"], "output": "turn_001.png", "previous": []}
        ]
    });
    std::fs::write(dir.path().join("session.json"), session.to_string()).unwrap();
    let (code, err) = qie(&[
        "edit",
        "--model",
        "/no/such/model",
        "--replay",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("session.json: turn 2") && err.contains("--max-pixels"),
        "{err}"
    );
}
