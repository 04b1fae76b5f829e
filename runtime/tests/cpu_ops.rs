//! Every op and common fused groups on the CPU backend against the f64 reference.

mod cpu_suite;

use cpu_suite::{compare_floats, Tolerance};
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
    attention_grad,
    conv2d,
    gather_concat,
    large_shapes,
    dit_block_small,
    plan_reuse,
    errors_name_the_culprit,
);

// The comparison itself.

const TOL: Tolerance = Tolerance {
    rel_l2: 1e-5,
    rel: 1e-5,
    abs: 1e-5,
};

#[test]
fn small_outputs_are_checked_too() {
    // Every element below 1e-5: the old `max |diff| <= tol` rule passed anything here.
    let want = [3e-6, -2e-6, 1e-6];
    assert!(compare_floats(&want, &want, TOL).is_ok());
    assert!(compare_floats(&[3e-6, -2e-6, 5e-6], &want, TOL).is_err());
    assert!(compare_floats(&[0.0, 0.0, 0.0], &want, TOL).is_err());
}

#[test]
fn an_element_small_next_to_its_tensor_gets_the_tensor_rounding() {
    let want = [100.0, -80.0, 1e-9];
    assert!(compare_floats(&[100.0, -80.0, 1e-4], &want, TOL).is_ok());
    assert!(compare_floats(&[100.0, -80.0, 1e-2], &want, TOL).is_err());
}

#[test]
fn nan_never_passes_and_infinities_must_match() {
    assert!(compare_floats(&[f64::NAN], &[1.0], TOL).is_err());
    assert!(compare_floats(&[f64::NAN], &[f64::NAN], TOL).is_err());
    assert!(compare_floats(&[f64::INFINITY, 1.0], &[f64::INFINITY, 1.0], TOL).is_ok());
    assert!(compare_floats(&[f64::NEG_INFINITY], &[f64::INFINITY], TOL).is_err());
    assert!(compare_floats(&[1e300], &[f64::INFINITY], TOL).is_err());
}

#[test]
fn a_small_error_on_every_element_fails_rel_l2() {
    let want: Vec<f64> = (0..100).map(|i| 1.0 + i as f64).collect();
    let got: Vec<f64> = want.iter().map(|w| w * (1.0 + 0.9e-5)).collect();
    assert!(compare_floats(&got, &want, TOL).is_ok());
    let loose = Tolerance {
        rel_l2: 1e-6,
        ..TOL
    };
    assert!(compare_floats(&got, &want, loose).is_err());
}
