//! Every op and common fused groups on the CPU backend against the f64 reference.

mod cpu_suite;

use qie_runtime::cpu::CpuBackend;

macro_rules! cpu_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                cpu_suite::$name(&CpuBackend);
            }
        )*
    };
}

cpu_tests!(
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
    errors_name_the_culprit,
);
