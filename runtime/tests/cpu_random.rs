//! Random graphs (qie_ir::testing::random_graph): the CPU backend, optimised + fused + memory
//! planned, must match the reference interpreter on the unoptimised graph.

mod cpu_suite;

use proptest::prelude::*;
use qie_ir::testing::{RandomCase, RandomGraphOptions};
use qie_runtime::cpu::CpuBackend;

fn run_case(seed: u64, opts: &RandomGraphOptions) {
    let case = RandomCase::new(seed, opts);
    cpu_suite::check_values(&CpuBackend, &case.graph, &case.inputs, 1e-5);
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
        run_case(seed, &RandomGraphOptions::default());
    }
}
