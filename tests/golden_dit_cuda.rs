//! The Qwen-Image DiT on the CUDA backend against the diffusers 0.42.1 golden fixtures (the same
//! cases as `golden_dit.rs`, which runs them on the CPU).
//!
//! - bf16 storage (the GPU path): rel-L2 <= 2e-2 against `sample` (f32 torch), and against
//!   `sample_bf16` (torch run natively in bf16) for the bf16 case;
//! - f32 storage (generic kernels): rel-L2 <= 1e-4 against `sample`, which checks the whole
//!   plan (every generated kernel, GEMM and attention) without bf16 noise.
//!
//! Without a GPU those tests are reported ignored, with the reason; `dit_plans_for_cuda` still
//! plans the DiT of every fixture, and `dit_kernels_compile` compiles its kernels where NVRTC is
//! installed (ignored where it is not).

use qie_models::qwen_image::{DitInputs, DitOptions, QwenImageDit};
use qie_runtime::cuda::{build_plan, CudaBackend, KernelCache, StorageMode};
use qie_runtime::{Backend, CompileOptions};
use qie_tests::{
    dit_expected as expected, dit_img_shapes as img_shapes, fixture, gpu_harness, gpu_tests, rel_l2,
};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

fn main() -> ExitCode {
    gpu_harness::run(gpu_tests![
        Cpu => dit_plans_for_cuda;
        Nvrtc => dit_kernels_compile;
        Cuda => all_cases_bf16_storage, bf16_case_matches_torch_bf16, all_cases_f32_storage;
    ])
}

const CASES: [&str; 8] = [
    "single",
    "multi_ref",
    "zero_cond_t",
    "sharded",
    "batch2",
    "additional_t_cond",
    "layer3d_rope",
    "bf16",
];

fn backend(mode: StorageMode) -> Arc<dyn Backend> {
    static F32: OnceLock<Arc<dyn Backend>> = OnceLock::new();
    static BF16: OnceLock<Arc<dyn Backend>> = OnceLock::new();
    let cell = match mode {
        StorageMode::F32 => &F32,
        StorageMode::Bf16 => &BF16,
    };
    cell.get_or_init(|| match CudaBackend::new(0, mode) {
        Ok(b) => Arc::new(b),
        Err(e) => panic!("CUDA backend ({mode:?}): {e}"),
    })
    .clone()
}

fn load(case: &str, backend: Option<Arc<dyn Backend>>) -> (QwenImageDit, DitInputs) {
    let options = DitOptions {
        backend,
        compile: CompileOptions {
            poison: true,
            ..CompileOptions::default()
        },
        ..DitOptions::default()
    };
    let dit = QwenImageDit::load(&fixture(&format!("dit/{case}/transformer")), &options)
        .unwrap_or_else(|e| panic!("{case}: load: {e}"));
    let inputs = DitInputs::load(
        &fixture(&format!("dit/{case}/inputs.safetensors")),
        img_shapes(case),
    )
    .unwrap_or_else(|e| panic!("{case}: inputs: {e}"));
    (dit, inputs)
}

/// Runs `case` twice on the backend (the second run reuses the plan and the cached weights) and
/// returns rel-L2 against each named reference.
fn run_case(case: &str, mode: StorageMode, references: &[&str]) -> Vec<f64> {
    let b = backend(mode);
    let (dit, inputs) = load(case, Some(b));
    let first = dit
        .forward(&inputs)
        .unwrap_or_else(|e| panic!("{case} ({mode:?}): forward: {e}"));
    let hs = inputs.hidden_states.shape();
    assert_eq!(
        first.shape(),
        &[hs[0], hs[1], 4 * dit.config.out_channels],
        "{case}: sample shape"
    );
    let second = dit
        .forward(&inputs)
        .unwrap_or_else(|e| panic!("{case} ({mode:?}): second forward: {e}"));
    assert_eq!(first, second, "{case}: a second run differs");
    let out = first.to_f32_vec();
    references
        .iter()
        .map(|r| rel_l2(&out, &expected(case, r)))
        .collect()
}

fn all_cases_bf16_storage() {
    let mut failures = vec![];
    for case in CASES {
        let errs = run_case(case, StorageMode::Bf16, &["sample"]);
        println!("{case} (cuda bf16): rel-L2 vs sample {:.3e}", errs[0]);
        if errs[0].is_nan() || errs[0] > 2e-2 {
            failures.push(format!("{case}: {:.3e}", errs[0]));
        }
    }
    assert!(failures.is_empty(), "rel-L2 > 2e-2: {failures:?}");
}

fn bf16_case_matches_torch_bf16() {
    let errs = run_case("bf16", StorageMode::Bf16, &["sample", "sample_bf16"]);
    println!(
        "bf16 (cuda bf16): rel-L2 vs sample {:.3e}, vs torch bf16 sample_bf16 {:.3e}",
        errs[0], errs[1]
    );
    assert!(errs[0] <= 2e-2, "vs sample: {:.3e}", errs[0]);
    assert!(errs[1] <= 2e-2, "vs sample_bf16: {:.3e}", errs[1]);
}

fn all_cases_f32_storage() {
    let mut failures = vec![];
    for case in CASES {
        let errs = run_case(case, StorageMode::F32, &["sample"]);
        println!("{case} (cuda f32): rel-L2 vs sample {:.3e}", errs[0]);
        if errs[0].is_nan() || errs[0] > 1e-4 {
            failures.push(format!("{case}: {:.3e}", errs[0]));
        }
    }
    assert!(failures.is_empty(), "rel-L2 > 1e-4: {failures:?}");
}

/// Plans every fixture's DiT graph for CUDA in both storage modes (no GPU needed); the
/// generated kernels by name.
fn dit_kernels() -> BTreeMap<String, String> {
    let mut kernels = BTreeMap::new();
    for case in CASES {
        let (dit, inputs) = load(case, None);
        let graph = dit.lower(&inputs).unwrap();
        for mode in [StorageMode::Bf16, StorageMode::F32] {
            let plan = build_plan(&graph, &CompileOptions::default(), mode)
                .unwrap_or_else(|e| panic!("{case} ({mode:?}): {e}"));
            kernels.extend(plan.kernels);
        }
    }
    kernels
}

fn dit_plans_for_cuda() {
    let kernels = dit_kernels();
    assert!(!kernels.is_empty(), "the DiT plans generate kernels");
    println!("{} distinct DiT kernels planned", kernels.len());
}

/// Compiles the kernels of every fixture's DiT plan with NVRTC (no GPU needed).
fn dit_kernels_compile() {
    let kernels = dit_kernels();
    let dir = tempfile::tempdir().unwrap();
    let cache = KernelCache::at(dir.path());
    for (names, source) in qie_runtime::cuda::backend::module_sources(&kernels) {
        let c = cache
            .compile(&source, "qie_kernels.cu", "sm_90", 0, &[])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(names.iter().all(|n| c.ptx.contains(&format!(".entry {n}"))));
    }
    println!("{} distinct DiT kernels compile", kernels.len());
}
