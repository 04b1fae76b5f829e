//! The verifier accepts valid graphs (including every pass's output) and rejects broken ones with
//! messages naming the offending node.

use proptest::prelude::*;
use qie_ir::passes::{
    cse, dce, dce_with, grad, optimize_with, simplify, DceOptions, PipelineOptions, Seeds,
    Trainable,
};
use qie_ir::testing::{arb_case, RandomGraphOptions};
use qie_ir::{
    infer_type, shape, verify, BinaryOp, DType, Graph, Node, NodeId, Op, TensorType, UnaryOp,
};
use smallvec::smallvec;
use std::sync::Arc;

fn f32t(dims: &[usize]) -> TensorType {
    TensorType::new(DType::F32, dims)
}

/// x: f32[2, 3]; y = exp(x); z = y + x; output z.
fn small_graph() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[2, 3]));
    let y = g.add(Op::Unary(UnaryOp::Exp), &[x]).unwrap();
    let z = g.add(Op::Binary(BinaryOp::Add), &[y, x]).unwrap();
    g.set_output("z", z);
    g
}

#[test]
fn accepts_a_valid_graph() {
    verify(&small_graph()).unwrap();
}

#[test]
fn rejects_wrong_stored_type() {
    let mut g = small_graph();
    g.nodes[1].ty = f32t(&[3, 2]);
    g.nodes[1].origin = Some(Arc::from("model.qie:7:3 block.0"));
    let e = verify(&g).unwrap_err();
    assert_eq!(e.node, Some(NodeId(1)));
    let msg = e.to_string();
    assert!(
        msg.contains("%1") && msg.contains("exp") && msg.contains("model.qie:7:3"),
        "{msg}"
    );
    assert!(
        msg.contains("stored type f32[3, 2]") && msg.contains("f32[2, 3]"),
        "{msg}"
    );
}

#[test]
fn rejects_use_before_definition() {
    let mut g = small_graph();
    // %1 = exp(%2): operand defined after its user.
    g.nodes[1].args = smallvec![NodeId(2)];
    let e = verify(&g).unwrap_err();
    assert_eq!(e.node, Some(NodeId(1)));
    assert!(
        e.to_string().contains("%1") && e.to_string().contains("not defined before its use"),
        "{e}"
    );

    // A node using itself.
    let mut g = small_graph();
    g.nodes[2].args = smallvec![NodeId(1), NodeId(2)];
    let e = verify(&g).unwrap_err();
    assert_eq!(e.node, Some(NodeId(2)));
}

#[test]
fn rejects_operand_out_of_range() {
    let mut g = small_graph();
    g.nodes[2].args = smallvec![NodeId(1), NodeId(17)];
    let e = verify(&g).unwrap_err();
    assert_eq!(e.node, Some(NodeId(2)));
    assert!(
        e.to_string().contains("%17") && e.to_string().contains("does not exist"),
        "{e}"
    );
}

#[test]
fn rejects_duplicate_input_names() {
    let mut g = small_graph();
    let x2 = g.input("x", f32t(&[2, 3]));
    let s = g.add(Op::Binary(BinaryOp::Add), &[NodeId(2), x2]).unwrap();
    g.outputs[0].1 = s;
    let e = verify(&g).unwrap_err();
    assert_eq!(e.node, Some(x2));
    let msg = e.to_string();
    assert!(
        msg.contains(&x2.to_string()) && msg.contains("\"x\"") && msg.contains("%0"),
        "{msg}"
    );
}

#[test]
fn rejects_empty_names() {
    let mut g = small_graph();
    g.input("", f32t(&[1]));
    assert!(verify(&g).unwrap_err().message.contains("empty name"));

    let mut g = small_graph();
    g.param("", f32t(&[1]));
    assert!(verify(&g).unwrap_err().message.contains("empty name"));

    let mut g = small_graph();
    g.outputs[0].0 = String::new();
    assert!(verify(&g).unwrap_err().message.contains("empty name"));
}

#[test]
fn params_may_repeat_with_one_type_only() {
    let mut g = small_graph();
    let w1 = g.param("w", f32t(&[2, 3]));
    let w2 = g.param("w", f32t(&[2, 3]));
    let s = g.add(Op::Binary(BinaryOp::Mul), &[w1, w2]).unwrap();
    g.set_output("s", s);
    verify(&g).unwrap();

    let w3 = g.param("w", f32t(&[3, 2]));
    g.set_output("w3", w3);
    let e = verify(&g).unwrap_err();
    assert_eq!(e.node, Some(w3));
    assert!(
        e.message.contains("declared as f32[3, 2]") && e.message.contains("f32[2, 3]"),
        "{e}"
    );
}

#[test]
fn rejects_bad_outputs() {
    let mut g = small_graph();
    g.outputs.clear();
    assert!(verify(&g).unwrap_err().message.contains("no outputs"));

    let mut g = small_graph();
    g.set_output("z", NodeId(1));
    let e = verify(&g).unwrap_err();
    assert!(e.message.contains("\"z\" is used twice"), "{e}");

    let mut g = small_graph();
    g.set_output("w", NodeId(99));
    let e = verify(&g).unwrap_err();
    assert!(
        e.message.contains("%99") && e.message.contains("\"w\""),
        "{e}"
    );
}

#[test]
fn rejects_ill_typed_ops_and_bad_constants() {
    // A binary op over operands of different shapes, written directly into the node list.
    let mut g = small_graph();
    let c = g.constant(1.0, DType::F32);
    g.nodes.push(Node {
        op: Op::Binary(BinaryOp::Add),
        args: smallvec![NodeId(0), c],
        ty: f32t(&[2, 3]),
        origin: None,
    });
    let e = verify(&g).unwrap_err();
    assert_eq!(e.node, Some(NodeId(4)));
    assert!(
        e.message.contains("ill-typed") && e.message.contains("add"),
        "{e}"
    );

    let mut g = small_graph();
    g.constant(0.5, DType::I32);
    let e = verify(&g).unwrap_err();
    assert!(e.message.contains("not a valid i32"), "{e}");

    let mut g = small_graph();
    g.constant(2.0, DType::Bool);
    assert!(verify(&g).is_err());

    let mut g = small_graph();
    g.nodes.push(Node {
        op: Op::Transpose {
            perm: shape(&[0, 0]),
        },
        args: smallvec![NodeId(0)],
        ty: f32t(&[2, 2]),
        origin: None,
    });
    let e = verify(&g).unwrap_err();
    assert!(e.to_string().contains("transpose"), "{e}");
}

#[test]
fn pipeline_reports_the_failing_pass() {
    use qie_ir::passes::{run_pipeline, Pass};
    let g = small_graph();
    let breaker = Pass::new("break-types", |g: &Graph| {
        let mut g = g.clone();
        g.nodes[1].ty = TensorType::new(DType::BF16, &[2, 3]);
        g
    });
    let opts = PipelineOptions {
        verify: true,
        ..Default::default()
    };
    let e = run_pipeline(&g, &[Pass::new("cse", cse), breaker], &opts).unwrap_err();
    assert_eq!(e.pass, "break-types");
    assert!(
        e.to_string().contains("break-types") && e.to_string().contains("%1"),
        "{e}"
    );

    let mut bad = g.clone();
    bad.outputs.clear();
    let e = run_pipeline(&bad, &[], &opts).unwrap_err();
    assert_eq!(e.pass, "input");
}

fn opts() -> RandomGraphOptions {
    RandomGraphOptions::default()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_pass_output_verifies(case in arb_case(opts())) {
        let g = &case.graph;
        prop_assert!(verify(g).is_ok(), "generator: {:?}", verify(g));
        for (name, out) in [
            ("simplify", simplify(g)),
            ("cse", cse(g)),
            ("dce", dce(g)),
            ("dce-keep", dce_with(g, &DceOptions { keep_params: true, keep_inputs: false })),
        ] {
            prop_assert!(verify(&out).is_ok(), "{name}: {:?}", verify(&out));
        }
        let o = optimize_with(g, &PipelineOptions { verify: true, ..Default::default() });
        prop_assert!(o.is_ok(), "{:?}", o.err());
        let d = grad(g, &Seeds::Cotangents(g.outputs.iter().map(|(n, _)| n.clone()).collect()), &Trainable::AllParams);
        prop_assert!(d.is_ok(), "{:?}", d.err());
        let d = d.unwrap();
        prop_assert!(verify(&d).is_ok(), "grad: {:?}", verify(&d));
        let od = optimize_with(&d, &PipelineOptions { verify: true, ..Default::default() });
        prop_assert!(od.is_ok(), "{:?}", od.err());
    }
}

#[test]
fn attention_grad_types_and_errors() {
    let bool_t = |dims: &[usize]| TensorType::new(DType::Bool, dims);
    let (q, kv) = (f32t(&[2, 5, 3, 8]), f32t(&[2, 7, 3, 8]));
    let op = Op::AttentionGrad { scale: 0.5 };
    let ok = infer_type(&op, &[&q, &kv, &kv, &q, &bool_t(&[2, 7])]).unwrap();
    assert_eq!(
        ok,
        f32t(&[2, 5 + 2 * 7, 3, 8]),
        "dq | dk | dv along the sequence"
    );
    let cases: [(Vec<TensorType>, &str); 4] = [
        (vec![q.clone(), kv.clone(), kv.clone(), kv.clone()], "dout"),
        (
            vec![q.clone(), kv.clone(), f32t(&[2, 7, 3, 4]), q.clone()],
            "must be [2, Sk, 3, 8]",
        ),
        (
            vec![q.clone(), kv.clone(), kv.clone(), q.clone(), f32t(&[2, 7])],
            "mask must be bool",
        ),
        (vec![q.clone(), kv.clone(), kv.clone()], "operand"),
    ];
    for (args, want) in cases {
        let refs: Vec<&TensorType> = args.iter().collect();
        let e = infer_type(&op, &refs).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
}
