//! Concat in place on the CUDA backend: producers (generated kernels, cuBLASLt / generic GEMMs)
//! write concat operands straight into the concat's result. Same graphs as `cpu_concat.rs`,
//! against the f64 reference. Without a GPU every test prints why it skips and passes.

mod cpu_suite;

use qie_ir::testing::{joint_attention_case, random_concat_case};
use qie_runtime::cuda::{CudaBackend, StorageMode};
use std::sync::OnceLock;

fn backend(mode: StorageMode) -> Option<&'static CudaBackend> {
    static F32: OnceLock<Option<CudaBackend>> = OnceLock::new();
    static BF16: OnceLock<Option<CudaBackend>> = OnceLock::new();
    let cell = match mode {
        StorageMode::F32 => &F32,
        StorageMode::Bf16 => &BF16,
    };
    let b = cell.get_or_init(|| match CudaBackend::new(0, mode) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("skipping CUDA concat tests: {e}");
            None
        }
    });
    b.as_ref()
}

#[test]
fn joint_attention_f32_and_bf16() {
    for (mode, tol) in [(StorageMode::F32, 1e-5), (StorageMode::Bf16, 2e-2)] {
        if let Some(b) = backend(mode) {
            for batch in [1, 2] {
                let case = joint_attention_case(batch, 11);
                cpu_suite::check_values(b, &case.graph, &case.inputs, tol);
            }
        }
    }
}

#[test]
fn random_concat_graphs_f32() {
    if let Some(b) = backend(StorageMode::F32) {
        for seed in 0..48 {
            let case = random_concat_case(seed);
            cpu_suite::check_values(b, &case.graph, &case.inputs, 1e-5);
        }
    }
}
