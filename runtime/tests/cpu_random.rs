//! Random graphs (qie_ir::testing::random_graph): the CPU backend, optimised + fused + memory
//! planned, must match the reference interpreter on the unoptimised graph.

mod cpu_suite;

use proptest::prelude::*;
use qie_ir::testing::{RandomCase, RandomGraphOptions};
use qie_runtime::cpu::CpuBackend;

fn run_case(seed: u64, opts: &RandomGraphOptions) {
    let case = RandomCase::new(seed, opts);
    let inputs = cpu_suite::positive_values(&case.inputs);
    cpu_suite::check_values(&CpuBackend, &case.graph, &inputs, 1e-5);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_graphs_match_reference(seed in any::<u64>()) {
        run_case(seed, &RandomGraphOptions::default());
    }

    #[test]
    fn larger_random_graphs_match_reference(seed in any::<u64>()) {
        let opts = RandomGraphOptions { num_ops: 48, max_rank: 4, max_dim: 6, ..RandomGraphOptions::default() };
        run_case(seed, &opts);
    }
}

#[test]
fn fixed_seeds() {
    for seed in 0..16 {
        run_case(cpu_suite::seed(seed), &RandomGraphOptions::default());
    }
}

/// Many more and larger graphs; not part of the normal run
/// (`cargo test -p qie-runtime --test cpu_random -- --ignored`).
#[test]
#[ignore]
fn stress_random_graphs() {
    let opts = RandomGraphOptions {
        num_ops: 96,
        max_rank: 4,
        max_dim: 8,
        num_outputs: 4,
        ..RandomGraphOptions::default()
    };
    for seed in 1000..1600 {
        let result = std::panic::catch_unwind(|| run_case(seed, &opts));
        if result.is_err() {
            panic!("seed {seed} failed");
        }
    }
}
