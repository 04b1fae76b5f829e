//! Concat in place on the CUDA backend: producers (generated kernels, cuBLASLt / generic GEMMs)
//! write concat operands straight into the concat's result. Same graphs as `cpu_concat.rs`,
//! against the f64 reference. Without a GPU every test is reported ignored, with the reason.

mod cpu_suite;
mod gpu_harness;

use qie_ir::testing::{joint_attention_case, random_concat_case};
use qie_runtime::cuda::{CudaBackend, StorageMode};
use std::process::ExitCode;

fn main() -> ExitCode {
    gpu_harness::run(gpu_tests![Cuda => joint_attention_f32_and_bf16, random_concat_graphs_f32])
}

fn joint_attention_f32_and_bf16() {
    for (mode, tol) in [(StorageMode::F32, 1e-5), (StorageMode::Bf16, 2e-2)] {
        let b = CudaBackend::new(0, mode).unwrap();
        for batch in [1, 2] {
            let case = joint_attention_case(batch, 11);
            cpu_suite::check_values(&b, &case.graph, &case.inputs, tol);
        }
    }
}

fn random_concat_graphs_f32() {
    let b = CudaBackend::new(0, StorageMode::F32).unwrap();
    for seed in 0..48 {
        let case = random_concat_case(seed);
        let inputs = cpu_suite::positive_values(&case.inputs);
        cpu_suite::check_values(&b, &case.graph, &inputs, 1e-5);
    }
}
