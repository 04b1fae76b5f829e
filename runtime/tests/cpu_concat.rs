//! Concat in place (`MemoryPlan::concat_in_place`): producers write concat operands straight into
//! the concat's result; the CPU plan must skip their copies and still match the reference.

mod cpu_suite;

use proptest::prelude::*;
use qie_ir::passes::{fuse, plan_memory, FusionOptions, MemoryOptions};
use qie_ir::testing::{joint_attention_case, random_concat_case, RandomCase};
use qie_runtime::cpu::{CpuBackend, CpuExecutable};
use qie_runtime::CompileOptions;

fn check(case: &RandomCase) {
    let inputs = cpu_suite::positive_values(&case.inputs);
    cpu_suite::check_values(&CpuBackend, &case.graph, &inputs, 1e-5);
}

/// The joint attention bound with concat in place on and off: same outputs, and the plan with it
/// runs `copies` fewer kernels.
fn compare_plans(case: &RandomCase, copies: usize) {
    let g = &case.graph;
    let fusion = fuse(g, &FusionOptions::default());
    let opts = CompileOptions {
        poison: true,
        ..CompileOptions::default()
    };
    let (inputs, params) = cpu_suite::bind(g, &case.inputs);
    let mut results = vec![];
    for concat_in_place in [false, true] {
        let mo = MemoryOptions {
            concat_in_place,
            ..MemoryOptions::default()
        };
        let memory = plan_memory(g, &fusion, &mo);
        let exe = CpuExecutable::new(g.clone(), fusion.clone(), memory, &opts).unwrap();
        let out = exe.run(&inputs, &params).unwrap();
        results.push((exe.stats().kernels, out["y"].to_f32_vec()));
    }
    assert_eq!(results[0].0, results[1].0 + copies);
    assert_eq!(results[0].1, results[1].1);
}

#[test]
fn joint_attention_skips_the_concat_copies() {
    compare_plans(&joint_attention_case(1, 3), 6);
    compare_plans(&joint_attention_case(2, 3), 0);
    check(&joint_attention_case(1, 4));
    check(&joint_attention_case(2, 4));
}

#[test]
fn fixed_concat_seeds() {
    for seed in 0..32 {
        check(&random_concat_case(cpu_suite::seed(seed)));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_concat_graphs_match_reference(seed in any::<u64>()) {
        check(&random_concat_case(seed));
    }
}
