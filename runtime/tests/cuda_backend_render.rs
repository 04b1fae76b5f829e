//! The CUDA backend's planner and renderer on every graph of the shared backend suite, without a
//! GPU: each graph is planned in both storage modes (bf16, f32), unfused and fused, and every
//! generated kernel is compiled with NVRTC for sm_90 (those tests are reported ignored, with the
//! reason, when NVRTC is not installed). Execution is delegated to the CPU backend so the suite's
//! own checks still run.

mod cpu_suite;
mod gpu_harness;

use qie_ir::Graph;
use qie_runtime::cpu::CpuBackend;
use qie_runtime::cuda::backend::module_sources;
use qie_runtime::cuda::plan::{GemmEpilogue, PlanStep};
use qie_runtime::cuda::{build_plan, KernelCache, StorageMode};
use qie_runtime::{Backend, CompileOptions, Executable, RuntimeError};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Mutex, OnceLock};

fn main() -> ExitCode {
    gpu_harness::run(gpu_tests![
        Cpu => every_suite_graph_plans, real_width_block_uses_the_fast_paths,
            concat_operands_in_place_keep_their_format;
        Nvrtc => every_suite_kernel_compiles, real_width_block_kernels_compile;
    ])
}

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
            qie_ir::passes::validate_memory_plan(&plan.graph, &plan.fusion, &plan.memory)
                .unwrap_or_else(|e| panic!("memory plan ({mode:?}): {e}"));
            self.kernels.lock().unwrap().extend(plan.kernels);
            *self.plans.lock().unwrap() += 1;
        }
        CpuBackend.compile(graph, options)
    }
}

fn nvrtc_compile_all(kernels: &BTreeMap<String, String>) {
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

/// Plans every graph of the suite (running it on the CPU); the generated kernels by name.
/// Computed once per process, shared by the planning and the NVRTC test.
fn suite_kernels() -> &'static BTreeMap<String, String> {
    static KERNELS: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    KERNELS.get_or_init(|| {
        let b = PlanningBackend {
            kernels: Mutex::new(BTreeMap::new()),
            plans: Mutex::new(0),
        };
        let bodies: [fn(&dyn Backend); 15] = [
            cpu_suite::unary_ops,
            cpu_suite::binary_ops,
            cpu_suite::integer_ops,
            cpu_suite::compare_select_cast,
            cpu_suite::views,
            cpu_suite::reductions,
            cpu_suite::norms_and_softmax,
            cpu_suite::matmul_forms,
            cpu_suite::linear_with_epilogue,
            cpu_suite::attention,
            cpu_suite::conv2d,
            cpu_suite::gather_concat,
            cpu_suite::large_shapes,
            cpu_suite::dit_block_small,
            cpu_suite::plan_reuse,
        ];
        for body in bodies {
            body(&b);
        }
        let kernels = b.kernels.into_inner().unwrap();
        println!(
            "{} plans, {} distinct kernels",
            b.plans.into_inner().unwrap(),
            kernels.len()
        );
        kernels
    })
}

fn every_suite_graph_plans() {
    let kernels = suite_kernels();
    let vectorised = kernels
        .values()
        .filter(|k| k.contains("vst") || k.contains("vld"))
        .count();
    println!("{vectorised} vectorised kernels");
    assert!(vectorised > 0, "the suite exercises vectorised kernels");
}

fn every_suite_kernel_compiles() {
    nvrtc_compile_all(suite_kernels());
}

/// A reduction stored in f32 is never written in place into a bf16 concat result (its bytes
/// would be read as bf16); the memory plan of every suite graph validates.
fn concat_operands_in_place_keep_their_format() {
    let g = cpu_suite::concat_of_a_reduction_graph();
    for mode in [StorageMode::Bf16, StorageMode::F32] {
        let plan = build_plan(&g, &CompileOptions::default(), mode).unwrap();
        qie_ir::passes::validate_memory_plan(&plan.graph, &plan.fusion, &plan.memory).unwrap();
        for &(c, a) in &plan.memory.concat_in_place {
            assert_eq!(
                plan.graph.ty(c).dtype,
                plan.graph.ty(a).dtype,
                "{mode:?}: {a} in {c}"
            );
        }
    }
}

/// d = 256, 2 heads of 128: cuBLASLt GEMMs and flash attention in bf16 mode.
fn real_width_block_plan(mode: StorageMode) -> qie_runtime::cuda::CudaPlan {
    let g = cpu_suite::dit_block(64, 16, 256, 2, 512);
    build_plan(&g, &CompileOptions::default(), mode).unwrap()
}

fn real_width_block_uses_the_fast_paths() {
    let plan = real_width_block_plan(StorageMode::Bf16);
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
    let f32_plan = real_width_block_plan(StorageMode::F32);
    assert!(
        plan.stats.arena_bytes * 10 < f32_plan.stats.arena_bytes * 6,
        "bf16 arena {} vs f32 {}",
        plan.stats.arena_bytes,
        f32_plan.stats.arena_bytes
    );
}

fn real_width_block_kernels_compile() {
    nvrtc_compile_all(&real_width_block_plan(StorageMode::Bf16).kernels);
}
