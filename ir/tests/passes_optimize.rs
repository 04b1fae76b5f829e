//! simplify / cse / dce / optimize: semantics preserved on random graphs (checked with the reference
//! interpreter), and the expected work actually done on crafted graphs.

use proptest::prelude::*;
use qie_ir::eval::{eval, values_close, Tensor};
use qie_ir::passes::{
    cse, dce, dce_with, optimize, optimize_with, simplify, DceOptions, PipelineOptions,
};
use qie_ir::print::print_graph;
use qie_ir::testing::{arb_case, random_graph, RandomCase, RandomGraphOptions};
use qie_ir::{shape, verify, BinaryOp, DType, Graph, Op, TensorType, UnaryOp};
use std::collections::HashMap;

fn f32t(dims: &[usize]) -> TensorType {
    TensorType::new(DType::F32, dims)
}

fn run(g: &Graph, inputs: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    eval(g, inputs, &|n| inputs.get(n).cloned())
        .unwrap_or_else(|e| panic!("eval failed: {e}\n{}", print_graph(g)))
}

fn assert_same_outputs(
    before: &Graph,
    after: &Graph,
    inputs: &HashMap<String, Tensor>,
) -> Result<(), String> {
    let a = run(before, inputs);
    let b = run(after, inputs);
    if before
        .outputs
        .iter()
        .map(|(n, _)| n)
        .ne(after.outputs.iter().map(|(n, _)| n))
    {
        return Err("output names or order changed".into());
    }
    for (name, va) in &a {
        let vb = &b[name];
        if va.ty != vb.ty {
            return Err(format!("{name}: type {} became {}", va.ty, vb.ty));
        }
        for (i, (x, y)) in va.data.iter().zip(&vb.data).enumerate() {
            if !values_close(*x, *y, 1e-9, 1e-12) {
                return Err(format!("{name}[{i}]: {x} became {y}"));
            }
        }
    }
    Ok(())
}

fn count(g: &Graph, pred: impl Fn(&Op) -> bool) -> usize {
    g.nodes.iter().filter(|n| pred(&n.op)).count()
}

fn checked() -> PipelineOptions {
    PipelineOptions {
        verify: true,
        ..Default::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn optimize_preserves_outputs(case in arb_case(RandomGraphOptions::default())) {
        let RandomCase { graph, inputs, .. } = &case;
        let opt = optimize_with(graph, &checked()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(opt.len() <= graph.len());
        if let Err(e) = assert_same_outputs(graph, &opt, inputs) {
            return Err(TestCaseError::fail(format!("{e}\nafter:\n{}", print_graph(&opt))));
        }
        // A second optimisation finds nothing left to do.
        let again = optimize(&opt);
        prop_assert_eq!(again.len(), opt.len());
    }

    #[test]
    fn optimize_preserves_outputs_of_large_graphs(
        case in arb_case(RandomGraphOptions { num_ops: 80, max_dim: 5, num_outputs: 6, ..Default::default() })
    ) {
        let RandomCase { graph, inputs, .. } = &case;
        let opt = optimize_with(graph, &checked()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        if let Err(e) = assert_same_outputs(graph, &opt, inputs) {
            return Err(TestCaseError::fail(format!("{e}\nafter:\n{}", print_graph(&opt))));
        }
    }

    #[test]
    fn each_pass_preserves_outputs(case in arb_case(RandomGraphOptions { num_ops: 16, ..Default::default() })) {
        let RandomCase { graph, inputs, .. } = &case;
        for (name, after) in [("simplify", simplify(graph)), ("cse", cse(graph)), ("dce", dce(graph))] {
            prop_assert!(verify(&after).is_ok(), "{name}: {:?}", verify(&after));
            if let Err(e) = assert_same_outputs(graph, &after, inputs) {
                return Err(TestCaseError::fail(format!("{name}: {e}")));
            }
        }
    }
}

#[test]
fn generator_is_deterministic_and_does_produce_work() {
    let opts = RandomGraphOptions::default();
    let (a, ia) = random_graph(7, &opts);
    let (b, ib) = random_graph(7, &opts);
    assert_eq!(a, b);
    assert_eq!(ia, ib);
    // Across seeds the optimiser removes nodes from most graphs.
    let mut shrunk = 0;
    for seed in 0..20 {
        let (g, _) = random_graph(seed, &opts);
        verify(&g).unwrap();
        if optimize(&g).len() < g.len() {
            shrunk += 1;
        }
    }
    assert!(shrunk >= 15, "only {shrunk} of 20 random graphs shrank");
}

#[test]
fn cse_merges_duplicates_but_not_distinct_leaves() {
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[4]));
    let y = g.input("y", f32t(&[4]));
    let w1 = g.param("w", f32t(&[4]));
    let w2 = g.param("w", f32t(&[4]));
    let a1 = g.add(Op::Binary(BinaryOp::Add), &[x, w1]).unwrap();
    let a2 = g.add(Op::Binary(BinaryOp::Add), &[w2, x]).unwrap(); // same after merging w, commuted
    let e1 = g.add(Op::Unary(UnaryOp::Exp), &[a1]).unwrap();
    let e2 = g.add(Op::Unary(UnaryOp::Exp), &[a2]).unwrap();
    let s1 = g.add(Op::Binary(BinaryOp::Sub), &[e1, y]).unwrap();
    let s2 = g.add(Op::Binary(BinaryOp::Sub), &[y, e2]).unwrap(); // not commutative: stays
    let out = g.add(Op::Binary(BinaryOp::Mul), &[s1, s2]).unwrap();
    g.set_output("out", out);
    let c = cse(&g);
    verify(&c).unwrap();
    assert_eq!(c.len(), 8, "{}", print_graph(&c)); // x, y, w, add, exp, sub, sub, mul
    assert_eq!(count(&c, |op| matches!(op, Op::Input { .. })), 2);
    assert_eq!(count(&c, |op| matches!(op, Op::Param { .. })), 1);
    assert_eq!(count(&c, |op| matches!(op, Op::Unary(UnaryOp::Exp))), 1);
    assert_eq!(count(&c, |op| matches!(op, Op::Binary(BinaryOp::Sub))), 2);
}

#[test]
fn cse_keeps_signed_zeros_and_dtypes_apart() {
    let mut g = Graph::new();
    let a = g.constant(0.0, DType::F32);
    let b = g.constant(-0.0, DType::F32);
    let c = g.constant(0.0, DType::F32);
    let d = g.constant(0.0, DType::BF16);
    let r1 = g.add(Op::Binary(BinaryOp::Div), &[a, b]).unwrap();
    let r2 = g.add(Op::Binary(BinaryOp::Div), &[c, a]).unwrap();
    g.set_output("r1", r1);
    g.set_output("r2", r2);
    g.set_output("d", d);
    let out = cse(&g);
    assert_eq!(count(&out, |op| matches!(op, Op::Constant { .. })), 3);
    assert_eq!(out.len(), 5);
}

#[test]
fn dce_drops_dead_nodes_and_unused_params() {
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[3]));
    let unused_in = g.input("unused", f32t(&[3]));
    let w = g.param("w", f32t(&[3]));
    let frozen = g.param("frozen", f32t(&[3]));
    let dead1 = g.add(Op::Unary(UnaryOp::Exp), &[frozen]).unwrap();
    let _dead2 = g
        .add(Op::Binary(BinaryOp::Mul), &[dead1, unused_in])
        .unwrap();
    let y = g.add(Op::Binary(BinaryOp::Mul), &[x, w]).unwrap();
    g.set_output("y", y);
    let d = dce(&g);
    verify(&d).unwrap();
    // x, unused (inputs kept by default), w, mul.
    assert_eq!(d.len(), 4, "{}", print_graph(&d));
    assert!(d.params().iter().all(|(n, _)| *n != "frozen"));
    let d = dce_with(
        &g,
        &DceOptions {
            keep_params: true,
            keep_inputs: false,
        },
    );
    assert_eq!(d.len(), 4, "{}", print_graph(&d)); // x, w, frozen, mul
    assert!(d.inputs().iter().all(|(n, _)| *n != "unused"));
    assert_eq!(d.params().len(), 2);
    assert_eq!(d.outputs[0].0, "y");
}

#[test]
fn simplify_folds_constants_and_identities() {
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[2, 3]));
    let two = g.constant(2.0, DType::F32);
    let three = g.constant(3.0, DType::F32);
    let five = g.add(Op::Binary(BinaryOp::Add), &[two, three]).unwrap();
    let e = g.add(Op::Unary(UnaryOp::Neg), &[five]).unwrap();
    let eb = g
        .add(
            Op::Broadcast {
                shape: shape(&[2, 3]),
            },
            &[e],
        )
        .unwrap();
    let one = g.constant(1.0, DType::F32);
    let one_b = g
        .add(
            Op::Broadcast {
                shape: shape(&[2, 3]),
            },
            &[one],
        )
        .unwrap();
    let zero = g.constant(0.0, DType::F32);
    let zero_b = g
        .add(
            Op::Broadcast {
                shape: shape(&[2, 3]),
            },
            &[zero],
        )
        .unwrap();
    // ((x * 1) + 0) / 1, reshaped twice back to its shape, transposed twice, cast to f32, neg neg.
    let m = g.add(Op::Binary(BinaryOp::Mul), &[x, one_b]).unwrap();
    let a = g.add(Op::Binary(BinaryOp::Add), &[m, zero_b]).unwrap();
    let dv = g.add(Op::Binary(BinaryOp::Div), &[a, one_b]).unwrap();
    let r1 = g.add(Op::Reshape { shape: shape(&[6]) }, &[dv]).unwrap();
    let r2 = g
        .add(
            Op::Reshape {
                shape: shape(&[2, 3]),
            },
            &[r1],
        )
        .unwrap();
    let t1 = g
        .add(
            Op::Transpose {
                perm: shape(&[1, 0]),
            },
            &[r2],
        )
        .unwrap();
    let t2 = g
        .add(
            Op::Transpose {
                perm: shape(&[1, 0]),
            },
            &[t1],
        )
        .unwrap();
    let c = g.add(Op::Cast { to: DType::F32 }, &[t2]).unwrap();
    let n1 = g.add(Op::Unary(UnaryOp::Neg), &[c]).unwrap();
    let n2 = g.add(Op::Unary(UnaryOp::Neg), &[n1]).unwrap();
    let sl = g
        .add(
            Op::Slice {
                axis: 1,
                start: 0,
                end: 3,
            },
            &[n2],
        )
        .unwrap();
    let bc = g
        .add(
            Op::Broadcast {
                shape: shape(&[2, 3]),
            },
            &[sl],
        )
        .unwrap();
    let out = g.add(Op::Binary(BinaryOp::Mul), &[bc, eb]).unwrap();
    g.set_output("out", out);

    let o = optimize_with(&g, &checked()).unwrap();
    // x, const -5, broadcast, mul.
    assert_eq!(o.len(), 4, "{}", print_graph(&o));
    assert!(o
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::Constant { value, .. } if value == -5.0)));
    let inputs = HashMap::from([(
        "x".to_string(),
        Tensor::new(f32t(&[2, 3]), vec![1.0, -2.0, 3.5, 0.25, 7.0, -1.5]),
    )]);
    assert_same_outputs(&g, &o, &inputs).unwrap();
}

#[test]
fn simplify_composes_views() {
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[2, 3, 4]));
    let t1 = g
        .add(
            Op::Transpose {
                perm: shape(&[1, 2, 0]),
            },
            &[x],
        )
        .unwrap();
    let t2 = g
        .add(
            Op::Transpose {
                perm: shape(&[2, 0, 1]),
            },
            &[t1],
        )
        .unwrap(); // identity overall
    let t3 = g
        .add(
            Op::Transpose {
                perm: shape(&[1, 0, 2]),
            },
            &[t2],
        )
        .unwrap();
    let t4 = g
        .add(
            Op::Transpose {
                perm: shape(&[0, 2, 1]),
            },
            &[t3],
        )
        .unwrap(); // one transpose
    let s1 = g
        .add(
            Op::Slice {
                axis: 1,
                start: 1,
                end: 3,
            },
            &[t4],
        )
        .unwrap();
    let s2 = g
        .add(
            Op::Slice {
                axis: 1,
                start: 1,
                end: 2,
            },
            &[s1],
        )
        .unwrap(); // one slice 2..3
    let b1 = g
        .add(
            Op::Broadcast {
                shape: shape(&[3, 4, 2]),
            },
            &[s2],
        )
        .unwrap();
    let b2 = g
        .add(
            Op::Broadcast {
                shape: shape(&[5, 3, 4, 2]),
            },
            &[b1],
        )
        .unwrap(); // one broadcast
    g.set_output("out", b2);
    let o = optimize_with(&g, &checked()).unwrap();
    assert_eq!(o.len(), 4, "{}", print_graph(&o));
    assert_eq!(count(&o, |op| matches!(op, Op::Transpose { .. })), 1);
    let data: Vec<f64> = (0..24).map(|i| i as f64 * 0.5 - 3.0).collect();
    let inputs = HashMap::from([("x".to_string(), Tensor::new(f32t(&[2, 3, 4]), data))]);
    assert_same_outputs(&g, &o, &inputs).unwrap();
}

#[test]
fn simplify_does_not_fold_unsafe_rewrites() {
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[3]));
    let zero = g.constant(0.0, DType::F32);
    let zero_b = g
        .add(Op::Broadcast { shape: shape(&[3]) }, &[zero])
        .unwrap();
    let m = g.add(Op::Binary(BinaryOp::Mul), &[x, zero_b]).unwrap(); // x * 0 is NaN for inf
    let s = g.add(Op::Binary(BinaryOp::Sub), &[x, x]).unwrap(); // x - x is NaN for inf
                                                                // bf16 rounding of a constant is kept: cast(0.1 f32 -> bf16) folds to the rounded value.
    let c = g.constant(0.1, DType::F32);
    let cb = g.add(Op::Cast { to: DType::BF16 }, &[c]).unwrap();
    let i1 = g.constant(1.0, DType::I32);
    let i0 = g.constant(0.0, DType::I32);
    let div0 = g.add(Op::Binary(BinaryOp::FloorDiv), &[i1, i0]).unwrap(); // error: not folded
    g.set_output("m", m);
    g.set_output("s", s);
    g.set_output("cb", cb);
    g.set_output("div0", div0);
    let o = optimize(&g);
    assert_eq!(count(&o, |op| matches!(op, Op::Binary(BinaryOp::Mul))), 1);
    assert_eq!(count(&o, |op| matches!(op, Op::Binary(BinaryOp::Sub))), 1);
    assert_eq!(
        count(&o, |op| matches!(op, Op::Binary(BinaryOp::FloorDiv))),
        1
    );
    let cb_new = o.output("cb").unwrap();
    match o.node(cb_new).op {
        Op::Constant { value, dtype } => {
            assert_eq!(dtype, DType::BF16);
            assert_eq!(value, half::bf16::from_f64(0.1).to_f64());
        }
        ref other => panic!("cast not folded: {other:?}"),
    }
    let inputs = HashMap::from([(
        "x".to_string(),
        Tensor::new(f32t(&[3]), vec![f64::INFINITY, 1.0, f64::NAN]),
    )]);
    assert!(eval(&g, &inputs, &|_| None).is_err()); // the integer division by zero
    let mut g2 = g.clone();
    g2.outputs.retain(|(n, _)| n != "div0");
    let o2 = optimize(&g2);
    let out = run(&o2, &inputs);
    assert!(out["m"].data[0].is_nan() && out["s"].data[0].is_nan());
    assert_same_outputs(&g2, &o2, &inputs).unwrap();
}
