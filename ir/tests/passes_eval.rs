//! The reference interpreter: op semantics on hand-checked examples.

use qie_ir::eval::{eval, eval_all, eval_op, Tensor};
use qie_ir::{shape, BinaryOp, CmpOp, DType, Graph, Op, ReduceOp, TensorType, UnaryOp};
use std::collections::HashMap;

fn t(dtype: DType, dims: &[usize], data: &[f64]) -> Tensor {
    Tensor::new(TensorType::new(dtype, dims), data.to_vec())
}

fn f32t(dims: &[usize], data: &[f64]) -> Tensor {
    t(DType::F32, dims, data)
}

fn op1(op: Op, a: &Tensor) -> Tensor {
    eval_op(&op, &[a]).unwrap()
}

fn op2(op: Op, a: &Tensor, b: &Tensor) -> Tensor {
    eval_op(&op, &[a, b]).unwrap()
}

fn no_params(_: &str) -> Option<Tensor> {
    None
}

#[test]
fn integer_division_semantics() {
    let a = t(DType::I32, &[4], &[7.0, -7.0, 7.0, -7.0]);
    let b = t(DType::I32, &[4], &[2.0, 2.0, -2.0, -2.0]);
    assert_eq!(
        op2(Op::Binary(BinaryOp::FloorDiv), &a, &b).data,
        [3.0, -4.0, -4.0, 3.0]
    );
    assert_eq!(
        op2(Op::Binary(BinaryOp::Rem), &a, &b).data,
        [1.0, 1.0, -1.0, -1.0]
    );
    assert_eq!(
        op2(Op::Binary(BinaryOp::Div), &a, &b).data,
        [3.0, -3.0, -3.0, 3.0]
    );
    let zero = t(DType::I32, &[4], &[0.0, 1.0, 1.0, 1.0]);
    let e = eval_op(&Op::Binary(BinaryOp::FloorDiv), &[&a, &zero]).unwrap_err();
    assert!(e.message.contains("division by zero"), "{e}");
    // i32 arithmetic wraps.
    let big = t(DType::I32, &[1], &[i32::MAX as f64]);
    let one = t(DType::I32, &[1], &[1.0]);
    assert_eq!(
        op2(Op::Binary(BinaryOp::Add), &big, &one).data,
        [i32::MIN as f64]
    );
}

#[test]
fn casts() {
    let x = f32t(&[5], &[1.7, -1.7, 2.5, -0.2, 0.0]);
    assert_eq!(
        op1(Op::Cast { to: DType::I32 }, &x).data,
        [1.0, -1.0, 2.0, 0.0, 0.0]
    );
    assert_eq!(
        op1(Op::Cast { to: DType::I64 }, &x).data,
        [1.0, -1.0, 2.0, 0.0, 0.0]
    );
    assert_eq!(
        op1(Op::Cast { to: DType::Bool }, &x).data,
        [1.0, 1.0, 1.0, 1.0, 0.0]
    );
    let y = f32t(&[3], &[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, 0.1]);
    let bf = op1(Op::Cast { to: DType::BF16 }, &y);
    // bf16 has 8 significant bits: 1 + 1/256 is a tie (rounds to even: 1.0), 1 + 3/256 -> 1 + 4/256.
    assert_eq!(bf.data[0], 1.0);
    assert_eq!(bf.data[1], 1.0 + 4.0 / 256.0);
    assert_eq!(bf.data[2], half::bf16::from_f64(0.1).to_f64());
    let h = op1(Op::Cast { to: DType::F16 }, &y);
    assert_eq!(h.data[2], half::f16::from_f64(0.1).to_f64());
    // bf16 arithmetic rounds every result.
    let s = op2(Op::Binary(BinaryOp::Add), &bf, &bf);
    assert_eq!(s.data[2], half::bf16::from_f64(2.0 * bf.data[2]).to_f64());
    let e = eval_op(&Op::Cast { to: DType::I32 }, &[&f32t(&[1], &[f64::NAN])]).unwrap_err();
    assert!(e.message.contains("non-finite"), "{e}");
    let e = eval_op(&Op::Cast { to: DType::I32 }, &[&f32t(&[1], &[3e9])]).unwrap_err();
    assert!(e.message.contains("out of range"), "{e}");
    let b = t(DType::Bool, &[2], &[1.0, 0.0]);
    assert_eq!(op1(Op::Cast { to: DType::F32 }, &b).data, [1.0, 0.0]);
}

#[test]
fn elementwise_and_nan() {
    let a = f32t(&[3], &[1.0, f64::NAN, -2.0]);
    let b = f32t(&[3], &[2.0, 0.0, -3.0]);
    let mx = op2(Op::Binary(BinaryOp::Max), &a, &b);
    assert_eq!(mx.data[0], 2.0);
    assert!(mx.data[1].is_nan());
    assert_eq!(mx.data[2], -2.0);
    let lt = op2(Op::Compare(CmpOp::Lt), &a, &b);
    assert_eq!(lt.ty.dtype, DType::Bool);
    assert_eq!(lt.data, [1.0, 0.0, 0.0]);
    let sg = op1(Op::Unary(UnaryOp::Sigmoid), &f32t(&[1], &[0.0]));
    assert_eq!(sg.data, [0.5]);
    let r = op1(Op::Unary(UnaryOp::Rsqrt), &f32t(&[1], &[4.0]));
    assert_eq!(r.data, [0.5]);
    let c = t(DType::Bool, &[3], &[1.0, 0.0, 1.0]);
    let s = eval_op(&Op::Select, &[&c, &a, &b]).unwrap();
    assert_eq!(s.data[1], 0.0);
    assert_eq!(s.data[2], -2.0);
}

#[test]
fn views_and_data_movement() {
    let x = f32t(&[2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    let tr = op1(
        Op::Transpose {
            perm: shape(&[1, 0]),
        },
        &x,
    );
    assert_eq!(tr.ty.shape.as_slice(), [3, 2]);
    assert_eq!(tr.data, [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    let b = op1(
        Op::Broadcast {
            shape: shape(&[2, 2, 3]),
        },
        &x,
    );
    assert_eq!(&b.data[6..], &x.data[..]);
    let col = f32t(&[2, 1], &[7.0, 8.0]);
    let b = op1(
        Op::Broadcast {
            shape: shape(&[2, 3]),
        },
        &col,
    );
    assert_eq!(b.data, [7.0, 7.0, 7.0, 8.0, 8.0, 8.0]);
    let s = op1(
        Op::Slice {
            axis: 1,
            start: 1,
            end: 3,
        },
        &x,
    );
    assert_eq!(s.data, [1.0, 2.0, 4.0, 5.0]);
    let c = eval_op(&Op::Concat { axis: 1 }, &[&x, &s]).unwrap();
    assert_eq!(c.data, [0.0, 1.0, 2.0, 1.0, 2.0, 3.0, 4.0, 5.0, 4.0, 5.0]);
    let r = op1(
        Op::Reduce {
            op: ReduceOp::Sum,
            axes: shape(&[0]),
        },
        &x,
    );
    assert_eq!(r.data, [3.0, 5.0, 7.0]);
    let r = op1(
        Op::Reduce {
            op: ReduceOp::Max,
            axes: shape(&[1]),
        },
        &x,
    );
    assert_eq!(r.data, [2.0, 5.0]);
    let r = op1(
        Op::Reduce {
            op: ReduceOp::Min,
            axes: shape(&[0, 1]),
        },
        &x,
    );
    assert_eq!(r.data, [0.0]);
    let iota = eval_op(
        &Op::Iota {
            shape: shape(&[2, 3]),
            axis: 1,
            dtype: DType::I32,
        },
        &[],
    )
    .unwrap();
    assert_eq!(iota.data, [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]);
}

#[test]
fn gather() {
    let table = f32t(&[3, 2], &[0.0, 1.0, 10.0, 11.0, 20.0, 21.0]);
    let idx = t(DType::I64, &[2, 2], &[2.0, 0.0, 1.0, 1.0]);
    let g = op2(Op::Gather { axis: 0 }, &table, &idx);
    assert_eq!(g.ty.shape.as_slice(), [2, 2, 2]);
    assert_eq!(g.data, [20.0, 21.0, 0.0, 1.0, 10.0, 11.0, 10.0, 11.0]);
    let idx1 = t(DType::I32, &[], &[1.0]);
    let g = op2(Op::Gather { axis: 1 }, &table, &idx1);
    assert_eq!(g.data, [1.0, 11.0, 21.0]);
    let neg = t(DType::I32, &[1], &[-1.0]);
    let e = eval_op(&Op::Gather { axis: 0 }, &[&table, &neg]).unwrap_err();
    assert!(e.message.contains("negative index"), "{e}");
    let big = t(DType::I32, &[1], &[3.0]);
    assert!(eval_op(&Op::Gather { axis: 0 }, &[&table, &big]).is_err());
}

#[test]
fn matmul_variants() {
    let a = f32t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let b = f32t(&[3, 2], &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    let mm = |ta, tb, a: &Tensor, b: &Tensor| {
        op2(
            Op::MatMul {
                transpose_a: ta,
                transpose_b: tb,
            },
            a,
            b,
        )
    };
    assert_eq!(mm(false, false, &a, &b).data, [4.0, 5.0, 10.0, 11.0]);
    let at = op1(
        Op::Transpose {
            perm: shape(&[1, 0]),
        },
        &a,
    );
    let bt = op1(
        Op::Transpose {
            perm: shape(&[1, 0]),
        },
        &b,
    );
    assert_eq!(mm(true, true, &at, &bt).data, [4.0, 5.0, 10.0, 11.0]);
    // Batched a with a shared rank-2 b.
    let a3 = f32t(&[2, 1, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let r = mm(false, false, &a3, &b);
    assert_eq!(r.ty.shape.as_slice(), [2, 1, 2]);
    assert_eq!(r.data, [4.0, 5.0, 10.0, 11.0]);
}

#[test]
fn attention_with_mask() {
    // B=1, Sq=2, H=1, D=1; Sk=2, Dv=1.
    let q = f32t(&[1, 2, 1, 1], &[1.0, 2.0]);
    let k = f32t(&[1, 2, 1, 1], &[0.5, -1.0]);
    let v = f32t(&[1, 2, 1, 1], &[3.0, 7.0]);
    let op = Op::Attention { scale: 0.5 };
    let out = eval_op(&op, &[&q, &k, &v]).unwrap();
    for i in 0..2 {
        let qi = q.data[i];
        let s0 = (qi * 0.5 * 0.5f64).exp();
        let s1 = (-qi * 0.5f64).exp();
        let want = (s0 * 3.0 + s1 * 7.0) / (s0 + s1);
        assert!((out.data[i] - want).abs() < 1e-12);
    }
    let mask = t(DType::Bool, &[1, 2], &[0.0, 1.0]);
    let out = eval_op(&op, &[&q, &k, &v, &mask]).unwrap();
    assert_eq!(out.data, [7.0, 7.0]);
    // Every key masked: the output row is zero by definition.
    let none = t(DType::Bool, &[1, 2], &[0.0, 0.0]);
    let out = eval_op(&op, &[&q, &k, &v, &none]).unwrap();
    assert_eq!(out.data, [0.0, 0.0]);
}

#[test]
fn conv2d_direct() {
    // x: 1x1x3x3 = 0..9, w: 1x1x2x2 = [[1, 0], [0, 1]], stride 1, padding 1.
    let x = f32t(
        &[1, 1, 3, 3],
        &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
    );
    let w = f32t(&[1, 1, 2, 2], &[1.0, 0.0, 0.0, 1.0]);
    let op = Op::Conv2d {
        stride: [1, 1],
        padding: [1, 1],
        dilation: [1, 1],
        groups: 1,
    };
    let y = op2(op, &x, &w);
    assert_eq!(y.ty.shape.as_slice(), [1, 1, 4, 4]);
    // y[i, j] = x[i-1, j-1] + x[i, j] (out of range = 0).
    let xv = |i: isize, j: isize| {
        if (0..3).contains(&i) && (0..3).contains(&j) {
            x.data[(i * 3 + j) as usize]
        } else {
            0.0
        }
    };
    for i in 0..4isize {
        for j in 0..4isize {
            assert_eq!(y.data[(i * 4 + j) as usize], xv(i - 1, j - 1) + xv(i, j));
        }
    }
    // Grouped conv with stride 2: 2 groups, each output channel sees its own input channel.
    let x = f32t(&[1, 2, 2, 2], &[1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0]);
    let w = f32t(&[2, 1, 1, 1], &[1.0, -1.0]);
    let op = Op::Conv2d {
        stride: [2, 2],
        padding: [0, 0],
        dilation: [1, 1],
        groups: 2,
    };
    let y = op2(op, &x, &w);
    assert_eq!(y.data, [1.0, -10.0]);
}

#[test]
fn graph_eval_binds_and_skips_dead_code() {
    let mut g = Graph::new();
    let x = g.input("x", TensorType::new(DType::F32, &[2]));
    let w = g.param("w", TensorType::new(DType::F32, &[2]));
    let unused = g.input("unused", TensorType::new(DType::F32, &[2]));
    let _dead = g.add(Op::Unary(UnaryOp::Exp), &[unused]).unwrap();
    let y = g.add(Op::Binary(BinaryOp::Mul), &[x, w]).unwrap();
    g.set_output("y", y);
    let inputs = HashMap::from([("x".to_string(), f32t(&[2], &[1.0, 2.0]))]);
    let params = |n: &str| (n == "w").then(|| f32t(&[2], &[3.0, 4.0]));
    let out = eval(&g, &inputs, &params).unwrap();
    assert_eq!(out["y"].data, [3.0, 8.0]);
    // eval_all needs every input.
    let e = eval_all(&g, &inputs, &params).unwrap_err();
    assert!(e.to_string().contains("\"unused\""), "{e}");
    // Missing param and wrong type name the node.
    let e = eval(&g, &inputs, &no_params).unwrap_err();
    assert_eq!(e.node, Some(w));
    let bad = HashMap::from([("x".to_string(), f32t(&[3], &[1.0, 2.0, 3.0]))]);
    let e = eval(&g, &bad, &params).unwrap_err();
    assert!(e.to_string().contains("declared f32[2]"), "{e}");
}
