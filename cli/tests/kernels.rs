//! `qie kernels export` / `qie kernels bench`: the export of the tiny DiT fixture accounts for
//! every launch of the plan; bad input gives one clear error, a non-zero exit and no panic;
//! bench without a GPU says why (with one, it times the export).

mod common;

use qie_ir::dsl::StaticValue;
use qie_ir::{DType, TensorType};
use qie_runtime::cuda::manifest::{Manifest, Param};
use qie_runtime::cuda::plan::PlanStep;
use qie_runtime::cuda::test_device::cuda_required;
use qie_runtime::cuda::{build_plan, StorageMode};
use qie_runtime::CompileOptions;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

const SHAPES: &str = "hidden_states=1x24x16,encoder_hidden_states=1x7x24,timestep=1";
const IMG_SHAPES: &str = "img_shapes=[[1,4,6]]";

/// Runs qie; returns (exit code, stdout, stderr). Asserts it did not panic.
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

/// `qie kernels export` of the single-image DiT fixture into `out`, plus `extra` flags.
fn export(out: &Path, extra: &[&str]) -> (i32, String, String) {
    let model = repo("models/qie/qwen_image_dit.qie");
    let config = repo("tests/fixtures/dit/single/transformer/config.json");
    let mut args = vec![
        "kernels",
        "export",
        model.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--shapes",
        SHAPES,
        "--static",
        IMG_SHAPES,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    qie(&args)
}

/// The same plan, built here: (generated-kernel launches, GEMM + attention calls, all steps).
fn plan_counts() -> (usize, usize, usize) {
    let program = qie_models::sources::load_program_file(&repo("models/qie/qwen_image_dit.qie"))
        .expect("bundled model");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("tests/fixtures/dit/single/transformer/config.json"))
            .unwrap(),
    )
    .unwrap();
    let f = |dims: &[usize]| TensorType::new(DType::F32, dims);
    let inputs = vec![
        ("hidden_states".to_string(), f(&[1, 24, 16])),
        ("encoder_hidden_states".to_string(), f(&[1, 7, 24])),
        ("timestep".to_string(), f(&[1])),
    ];
    let img = StaticValue::List(vec![StaticValue::List(
        [1, 4, 6].map(StaticValue::Int).to_vec(),
    )]);
    let graph = program
        .lower(&config, &inputs, &[("img_shapes".to_string(), img)])
        .unwrap();
    let plan = build_plan(&graph, &CompileOptions::default(), StorageMode::Bf16).unwrap();
    let kernels = plan
        .steps
        .iter()
        .filter(|s| matches!(s, PlanStep::Kernel { .. }))
        .count();
    let library = plan
        .steps
        .iter()
        .filter(|s| matches!(s, PlanStep::Gemm { .. } | PlanStep::Flash { .. }))
        .count();
    (kernels, library, plan.steps.len())
}

#[test]
fn export_writes_every_kernel_and_a_manifest_that_accounts_for_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("kernels");
    let (code, stdout, stderr) = export(&out, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("exported") && stdout.contains("qie kernels bench"),
        "{stdout}"
    );
    let m = Manifest::read(&out).expect("the manifest parses and checks");
    assert_eq!(m.storage, "bf16");
    assert_eq!(m.arch, "sm_90");
    assert!(!m.kernels.is_empty() && !m.library.is_empty());

    let (kernels, library, steps) = plan_counts();
    let launches: usize = m.kernels.iter().map(|k| k.launches).sum();
    assert_eq!(launches, kernels);
    assert_eq!(m.totals.kernel_launches, kernels);
    assert_eq!(m.totals.library_launches, library);
    assert_eq!(m.totals.plan_steps, steps);
    assert_eq!(m.totals.plan_launches, kernels + library);
    let all: usize = m.library.iter().map(|l| l.launches).sum::<usize>() + launches;
    assert_eq!(all, steps, "every step is in exactly one entry");

    let mut ids = std::collections::HashSet::new();
    for k in &m.kernels {
        assert!(ids.insert(&k.id), "duplicate id {}", k.id);
        let src = std::fs::read_to_string(out.join(&k.source)).unwrap();
        assert!(
            src.contains(&format!(
                "__global__ void __launch_bounds__({}) {}(",
                k.block[0], k.symbol
            )),
            "{}: the source does not define the kernel",
            k.id
        );
        assert!(
            src.contains("struct __align__(2) bf16_t"),
            "{}: no prelude",
            k.id
        );
        assert!(k.bytes > 0, "{}: no bytes", k.id);
        assert!(k.launches > 0 && !k.ops.is_empty(), "{}", k.id);
        let ptrs = k
            .params
            .iter()
            .filter(|p| matches!(p, Param::Ptr { .. }))
            .count();
        assert!(ptrs > 0, "{}: no buffer parameters", k.id);
    }
    // The generated elementwise/reduction kernels are counted from their programs.
    assert!(m
        .kernels
        .iter()
        .any(|k| k.kind == "reduction" && k.flops > 0));
    // The tiny fixture's head dim (16) takes the generic attention kernel: shape arguments.
    let attn = m
        .kernels
        .iter()
        .find(|k| k.kind == "generic_attention")
        .unwrap();
    assert!(attn.params.iter().any(|p| p.name() == "Sq"));
    assert!(m.library.iter().all(|l| l.bytes > 0 && l.flops > 0));
    assert!(m
        .library
        .iter()
        .any(|l| l.summary.contains("epilogue=bias")));

    if m.ptx.produced {
        for k in &m.kernels {
            let ptx = std::fs::read_to_string(out.join(k.ptx.as_ref().unwrap())).unwrap();
            let entry = ptx
                .split(&format!(".entry {}(", k.symbol))
                .nth(1)
                .unwrap_or_else(|| panic!("{}: no entry in the PTX", k.id));
            let params = entry[..entry.find(')').unwrap()].matches(".param").count();
            assert_eq!(params, k.params.len(), "{}: PTX parameters", k.id);
        }
    } else {
        // Without NVRTC this checks the fallback; on the GPU runner NVRTC must be there.
        assert!(
            !cuda_required(),
            "QIE_REQUIRE_CUDA=1 but no PTX: {}",
            m.ptx.note
        );
        assert!(m.kernels.iter().all(|k| k.ptx.is_none()));
        assert!(stdout.contains("PTX not produced"), "{stdout}");
        eprintln!("skipping the PTX checks: {}", m.ptx.note);
    }
}

#[test]
fn export_f32_storage_runs_its_gemms_through_cublaslt_in_f32() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k");
    let (code, _, stderr) = export(&out, &["--dtype", "f32", "--no-ptx"]);
    assert_eq!(code, 0, "{stderr}");
    let m = Manifest::read(&out).unwrap();
    assert_eq!(m.storage, "f32");
    assert!(!m.library.is_empty(), "f32 matmuls are cuBLASLt steps");
    assert!(
        m.library
            .iter()
            .all(|l| l.summary.contains("dtype=f32") && l.bytes > 0 && l.flops > 0),
        "{:?}",
        m.library.iter().map(|l| &l.summary).collect::<Vec<_>>()
    );
    assert!(
        !m.kernels.iter().any(|k| k.symbol.starts_with("qgemm_")),
        "no matmul is left to the generic GEMM kernel"
    );
    assert!(!m.ptx.produced && m.ptx.note.contains("--no-ptx"));
}

#[test]
fn export_refuses_a_used_folder_unless_it_replaces_an_earlier_export() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k");
    assert_eq!(export(&out, &["--no-ptx"]).0, 0);
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let (code, _, err) = export(&out, &["--no-ptx"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("holds an earlier export; pass --force"),
        "{err}"
    );
    let (code, _, err) = export(&out, &["--no-ptx", "--force"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    Manifest::read(&out).unwrap();

    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("data.bin"), "x").unwrap();
    let (code, _, err) = export(&other, &["--no-ptx", "--force"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("not empty and holds no manifest.json"),
        "{err}"
    );
    assert!(other.join("data.bin").exists());
}

#[test]
fn export_to_a_place_that_cannot_be_a_folder_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let (code, _, err) = export(&file, &["--no-ptx"]);
    assert_eq!(code, 1);
    assert!(err.contains("exists and is not a folder"), "{err}");
    let (code, _, err) = export(&file.join("sub"), &["--no-ptx"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot create"), "{err}");
}

#[test]
fn export_bad_model_shapes_or_arch_give_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k");
    let missing = dir.path().join("nope.qie");
    let (code, _, err) = qie(&[
        "kernels",
        "export",
        missing.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("nope.qie") && err.contains("not found"),
        "{err}"
    );

    let model = repo("models/qie/qwen_image_dit.qie");
    let (code, _, err) = qie(&[
        "kernels",
        "export",
        model.to_str().unwrap(),
        "--shapes",
        "hidden_states=1xx16",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("--shapes: `hidden_states`"), "{err}");

    let (code, _, err) = export(&out, &["--arch", "hopper"]);
    assert_eq!(code, 1);
    assert!(err.contains("--arch: `hopper`"), "{err}");
    assert!(!out.exists(), "nothing is written on bad input");
}

#[test]
fn bench_rejects_missing_and_corrupt_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = qie(&["kernels", "bench", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("manifest.json: cannot read"), "{err}");

    std::fs::write(
        dir.path().join("manifest.json"),
        "{\"format\": 1, \"kernels\": [",
    )
    .unwrap();
    let (code, _, err) = qie(&["kernels", "bench", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("manifest.json: invalid manifest"), "{err}");

    // A manifest whose source file was deleted.
    let out = dir.path().join("k");
    assert_eq!(export(&out, &["--no-ptx"]).0, 0);
    let m = Manifest::read(&out).unwrap();
    std::fs::remove_file(out.join(&m.kernels[0].source)).unwrap();
    let (code, _, err) = qie(&["kernels", "bench", out.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("kernel {}: source file", m.kernels[0].id))
            && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn bench_times_the_export_or_says_why_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k");
    assert_eq!(export(&out, &[]).0, 0);
    let (code, _, err) = qie(&["kernels", "bench", out.to_str().unwrap(), "--device", "cpu"]);
    assert_eq!(code, 1);
    assert!(err.contains("kernels bench needs a CUDA device"), "{err}");

    let (code, stdout, stderr) = qie(&["kernels", "bench", out.to_str().unwrap(), "--iters", "3"]);
    match qie_runtime::cuda::list_devices() {
        Ok(_) => {
            assert_eq!(code, 0, "{stderr}");
            assert!(stdout.contains("ceilings: copy"), "{stdout}");
            assert!(stdout.contains("per forward:"), "{stdout}");
            let report: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("bench.json")).unwrap())
                    .unwrap();
            let results = report["results"].as_array().unwrap();
            let m = Manifest::read(&out).unwrap();
            assert_eq!(results.len(), m.kernels.len() + m.library.len());
            for r in results {
                assert!(r["skipped"].is_null(), "{r}");
                assert!(r["median_us"].as_f64().unwrap() > 0.0, "{r}");
            }
        }
        Err(e) => {
            // Without a GPU this checks the error; on the GPU runner a device must be there.
            assert!(!cuda_required(), "QIE_REQUIRE_CUDA=1 but {e}");
            assert_eq!(code, 1);
            assert!(
                stderr.contains("--device cuda: CUDA unavailable"),
                "{stderr}"
            );
            assert!(!out.join("bench.json").exists());
            eprintln!("skipping the GPU bench: {e}");
        }
    }
}
