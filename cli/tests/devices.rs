//! `qie devices` and `--device`: the backends compiled in, the devices found or why none was,
//! and clear errors for devices that cannot be used.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(rel)
}

fn qie(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(common::qie_bin())
        .args(args)
        .env_remove("QIE_DEVICE")
        .output()
        .expect("run qie");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "qie panicked: {stderr}");
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

#[test]
fn devices_lists_backends_and_devices_or_the_reason() {
    let (code, stdout, stderr) = qie(&["devices"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("backends: cpu, cuda"), "{stdout}");
    match qie_runtime::cuda::list_devices() {
        Ok(devs) => assert!(
            stdout.contains(&format!("cuda:0  {}", devs[0].name)),
            "{stdout}"
        ),
        Err(e) => assert!(stdout.contains(&e.reason), "{stdout}"),
    }
}

fn forward_on(device: &str, out: &Path) -> (i32, String, String) {
    let case = fixture("dit/single");
    let shapes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(case.join("meta.json")).unwrap()).unwrap();
    let shapes: Vec<String> = shapes["img_shapes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("x")
        })
        .collect();
    qie(&[
        "forward",
        "dit",
        "--weights",
        case.join("transformer").to_str().unwrap(),
        "--inputs",
        case.join("inputs.safetensors").to_str().unwrap(),
        "--img-shapes",
        &shapes.join(","),
        "--out",
        out.to_str().unwrap(),
        "--device",
        device,
        "--dtype",
        "bf16",
        "--compare",
        case.join("expected.safetensors").to_str().unwrap(),
        "--tolerance",
        "2e-2",
    ])
}

#[test]
fn forward_on_cuda_runs_or_says_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sample.safetensors");
    let (code, stdout, stderr) = forward_on("cuda", &out);
    match qie_runtime::cuda::list_devices() {
        Ok(_) => {
            assert_eq!(code, 0, "{stderr}");
            assert!(stderr.contains("dit on cuda:0"), "{stderr}");
            assert!(stdout.contains("rel-L2"), "{stdout}");
        }
        Err(_) => {
            assert_ne!(code, 0);
            assert!(
                stderr.contains("--device cuda: CUDA unavailable"),
                "{stderr}"
            );
            assert!(!out.exists());
        }
    }
}

#[test]
fn unknown_device_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = forward_on("tpu", &dir.path().join("x.safetensors"));
    assert_ne!(code, 0);
    assert!(stderr.contains("unknown device 'tpu'"), "{stderr}");
}
