//! The CUDA backend's planner and renderer on every graph of the shared backend suite, without a
//! GPU: each graph is planned in both storage modes (bf16, f32), unfused and fused, and every
//! generated kernel is compiled with NVRTC for sm_90 (skipped, with the reason, when NVRTC is not
//! installed). Execution is delegated to the CPU backend so the suite's own checks still run.

mod cpu_suite;

use qie_ir::Graph;
use qie_runtime::cpu::CpuBackend;
use qie_runtime::cuda::backend::module_sources;
use qie_runtime::cuda::plan::{GemmEpilogue, PlanStep};
use qie_runtime::cuda::{build_plan, KernelCache, StorageMode};
use qie_runtime::{Backend, CompileOptions, Executable, RuntimeError};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Plans every graph for CUDA (both modes), records the kernels, runs on the CPU.
struct PlanningBackend {
    kernels: Mutex<BTreeMap<String, String>>,
    plans: Mutex<usize>,
}

impl Backend for PlanningBackend {
    fn name(&self) -> &str {
        "cuda-planning"
    }

    fn compile(
        &self,
        graph: &Graph,
        options: &CompileOptions,
    ) -> Result<Box<dyn Executable>, RuntimeError> {
        for mode in [StorageMode::Bf16, StorageMode::F32] {
            let plan = build_plan(graph, options, mode).unwrap_or_else(|e| {
                panic!(
                    "planning ({mode:?}, {options:?}): {e}\n{}",
                    qie_ir::print::print_graph(graph)
                )
            });
            for s in &plan.steps {
                if let PlanStep::Kernel { name, .. } = s {
                    assert!(
                        plan.kernels.contains_key(name),
                        "step kernel {name} has no source"
                    );
                }
            }
            self.kernels.lock().unwrap().extend(plan.kernels);
            *self.plans.lock().unwrap() += 1;
        }
        CpuBackend.compile(graph, options)
    }
}

fn nvrtc_compile_all(kernels: &BTreeMap<String, String>) {
    if let Err(e) = qie_runtime::cuda::libs::require(qie_runtime::cuda::libs::Lib::Nvrtc) {
        eprintln!(
            "skipping the NVRTC compile of {} kernels: {e}",
            kernels.len()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = KernelCache::at(dir.path());
    for (names, source) in module_sources(kernels) {
        let c = cache
            .compile(&source, "qie_kernels.cu", "sm_90", 0, &[])
            .unwrap_or_else(|e| panic!("{e}"));
        for n in &names {
            assert!(c.ptx.contains(&format!(".entry {n}")), "PTX lacks {n}");
        }
    }
    println!("compiled {} kernels with NVRTC", kernels.len());
}

macro_rules! planned {
    ($($name:ident),* $(,)?) => {
        #[test]
        fn every_suite_graph_plans_and_compiles() {
            let b = PlanningBackend { kernels: Mutex::new(BTreeMap::new()), plans: Mutex::new(0) };
            $( cpu_suite::$name(&b); )*
            let kernels = b.kernels.lock().unwrap().clone();
            let vectorised = kernels.values().filter(|k| k.contains("vst") || k.contains("vld")).count();
            println!(
                "{} plans, {} distinct kernels ({vectorised} vectorised)",
                b.plans.lock().unwrap(),
                kernels.len()
            );
            assert!(vectorised > 0, "the suite exercises vectorised kernels");
            nvrtc_compile_all(&kernels);
        }
    };
}

planned!(
    unary_ops,
    binary_ops,
    integer_ops,
    compare_select_cast,
    views,
    reductions,
    norms_and_softmax,
    matmul_forms,
    linear_with_epilogue,
    attention,
    conv2d,
    gather_concat,
    large_shapes,
    dit_block_small,
    plan_reuse,
);

#[test]
fn real_width_block_uses_the_fast_paths() {
    // d = 256, 2 heads of 128: cuBLASLt GEMMs and flash attention in bf16 mode.
    let g = cpu_suite::dit_block(64, 16, 256, 2, 512);
    let plan = build_plan(&g, &CompileOptions::default(), StorageMode::Bf16).unwrap();
    let gemms = plan
        .steps
        .iter()
        .filter(|s| matches!(s, PlanStep::Gemm { .. }))
        .count();
    let flash = plan
        .steps
        .iter()
        .filter(|s| matches!(s, PlanStep::Flash { .. }))
        .count();
    assert_eq!(flash, 1, "one joint attention");
    let epilogues: Vec<GemmEpilogue> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            PlanStep::Gemm { gemm, .. } => Some(gemm.epilogue),
            _ => None,
        })
        .collect();
    assert_eq!(
        epilogues
            .iter()
            .filter(|e| **e == GemmEpilogue::GeluBias)
            .count(),
        2,
        "MLP up-projections with bias + GELU in cuBLASLt: {epilogues:?}"
    );
    assert!(
        epilogues
            .iter()
            .filter(|e| **e == GemmEpilogue::Bias)
            .count()
            >= 2,
        "plain bias epilogues (V projections) in cuBLASLt: {epilogues:?}"
    );
    assert!(
        gemms >= 12,
        "QKV, out and MLP projections on cuBLASLt, got {gemms}"
    );
    let generic = plan
        .kernels
        .keys()
        .filter(|k| !k.starts_with("qk_"))
        .count();
    assert_eq!(
        generic,
        0,
        "no generic library kernel: {:?}",
        plan.kernels.keys()
    );
    // bf16 storage halves the arena of the f32 plan (roughly: statistics stay f32).
    let f32_plan = build_plan(&g, &CompileOptions::default(), StorageMode::F32).unwrap();
    assert!(
        plan.stats.arena_bytes * 10 < f32_plan.stats.arena_bytes * 6,
        "bf16 arena {} vs f32 {}",
        plan.stats.arena_bytes,
        f32_plan.stats.arena_bytes
    );
    nvrtc_compile_all(&plan.kernels);
}
