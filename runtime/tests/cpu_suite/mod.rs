//! Backend test bodies: each `pub fn` takes a backend and checks graphs against the f64 reference
//! interpreter (`qie_ir::eval`), unfused and fused, with the arena poisoned before every run.
//! The CUDA backend reuses these bodies with its own `Backend` (`cuda_backend_ops.rs`).
#![allow(dead_code)]

mod compare;

#[allow(unused_imports)] // each test binary uses a part
pub use compare::{compare, compare_floats, Tolerance};
use qie_ir::eval;
use qie_ir::testing::{random_tensor, Rng};
use qie_ir::{BinaryOp, CmpOp, DType, Graph, NodeId, Op, ReduceOp, TensorType, UnaryOp};
use qie_runtime::{Backend, CompileOptions, RuntimeError, Tensor};
use std::collections::HashMap;

/// The f32 tolerance (rel-L2 and per element, see [`Tolerance`]).
pub const REL_L2: f64 = 1e-5;

/// `base` mixed with `QIE_TEST_SEED` (when set), so that repeated runs can draw other inputs
/// than the fixed seeds of the tests; a failure message names the variable's value.
pub fn seed(base: u64) -> u64 {
    match test_seed() {
        Some(s) => base ^ s.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        None => base,
    }
}

/// `QIE_TEST_SEED`, when set.
pub fn test_seed() -> Option<u64> {
    std::env::var("QIE_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
}

pub fn tensor_type(dtype: DType, shape: &[usize]) -> TensorType {
    TensorType::new(dtype, shape)
}

pub fn f32_type(shape: &[usize]) -> TensorType {
    TensorType::new(DType::F32, shape)
}

/// Shorthand for building graphs in tests.
pub struct GraphBuilder {
    pub graph: Graph,
}

impl GraphBuilder {
    pub fn new() -> GraphBuilder {
        GraphBuilder {
            graph: Graph::new(),
        }
    }
    pub fn input(&mut self, name: &str, ty: TensorType) -> NodeId {
        self.graph.input(name, ty)
    }
    pub fn param(&mut self, name: &str, ty: TensorType) -> NodeId {
        self.graph.param(name, ty)
    }
    pub fn op(&mut self, op: Op, args: &[NodeId]) -> NodeId {
        let m = op.mnemonic();
        self.graph
            .add(op, args)
            .unwrap_or_else(|e| panic!("{m}: {e}"))
    }
    pub fn unary(&mut self, u: UnaryOp, a: NodeId) -> NodeId {
        self.op(Op::Unary(u), &[a])
    }
    pub fn binary(&mut self, b: BinaryOp, x: NodeId, y: NodeId) -> NodeId {
        self.op(Op::Binary(b), &[x, y])
    }
    pub fn constant(&mut self, v: f64, d: DType) -> NodeId {
        self.graph.constant(v, d)
    }
    /// A scalar constant broadcast to `like`'s shape.
    pub fn splat(&mut self, v: f64, like: NodeId) -> NodeId {
        let ty = self.graph.ty(like).clone();
        let c = self.constant(v, ty.dtype);
        self.op(Op::Broadcast { shape: ty.shape }, &[c])
    }
    pub fn bcast(&mut self, x: NodeId, shape: &[usize]) -> NodeId {
        self.op(
            Op::Broadcast {
                shape: shape.into(),
            },
            &[x],
        )
    }
    pub fn reshape(&mut self, x: NodeId, shape: &[usize]) -> NodeId {
        self.op(
            Op::Reshape {
                shape: shape.into(),
            },
            &[x],
        )
    }
    pub fn transpose(&mut self, x: NodeId, perm: &[usize]) -> NodeId {
        self.op(Op::Transpose { perm: perm.into() }, &[x])
    }
    pub fn reduce(&mut self, op: ReduceOp, x: NodeId, axes: &[usize]) -> NodeId {
        self.op(
            Op::Reduce {
                op,
                axes: axes.into(),
            },
            &[x],
        )
    }
    pub fn matmul(&mut self, a: NodeId, b: NodeId, ta: bool, tb: bool) -> NodeId {
        self.op(
            Op::MatMul {
                transpose_a: ta,
                transpose_b: tb,
            },
            &[a, b],
        )
    }
    /// `|x| + 0.5`: a positive operand for log / sqrt / pow.
    pub fn positive(&mut self, x: NodeId) -> NodeId {
        let a = self.unary(UnaryOp::Abs, x);
        let h = self.splat(0.5, x);
        self.binary(BinaryOp::Add, a, h)
    }
    pub fn out(&mut self, name: &str, id: NodeId) {
        self.graph.set_output(name, id);
    }
}

impl Default for GraphBuilder {
    fn default() -> Self {
        GraphBuilder::new()
    }
}

/// Random values for every input and param of `g` (floats in [-2, 2), ints in `0..int_bound`).
pub fn random_values(g: &Graph, base_seed: u64, int_bound: usize) -> HashMap<String, eval::Tensor> {
    let mut rng = Rng::new(seed(base_seed));
    let mut values = HashMap::new();
    for node in &g.nodes {
        if let Op::Input { name, ty } | Op::Param { name, ty } = &node.op {
            values.insert(name.clone(), random_tensor(&mut rng, ty, int_bound));
        }
    }
    values
}

/// Splits reference values into runtime inputs and params.
pub fn bind(
    g: &Graph,
    values: &HashMap<String, eval::Tensor>,
) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let mut inputs = HashMap::new();
    let mut params = HashMap::new();
    for node in &g.nodes {
        match &node.op {
            Op::Input { name, .. } => {
                inputs.insert(name.clone(), Tensor::from_eval(&values[name]));
            }
            Op::Param { name, .. } => {
                params.insert(name.clone(), Tensor::from_eval(&values[name]));
            }
            _ => {}
        }
    }
    (inputs, params)
}

/// The option sets every check runs: unoptimised + unfused, and the full pipeline.
pub fn option_sets() -> Vec<CompileOptions> {
    vec![
        CompileOptions {
            optimize: false,
            fuse: false,
            poison: true,
            ..Default::default()
        },
        CompileOptions {
            optimize: true,
            fuse: true,
            poison: true,
            ..Default::default()
        },
    ]
}

/// Runs `g` on the backend (unfused and fused, twice each to exercise plan reuse) and compares
/// every output with the reference.
pub fn check_values(b: &dyn Backend, g: &Graph, values: &HashMap<String, eval::Tensor>, tol: f64) {
    check_values_within(b, g, values, Tolerance::uniform(tol))
}

/// [`check_values`] with a [`Tolerance`] of its own (bf16 storage: [`Tolerance::bf16_storage`]).
pub fn check_values_within(
    b: &dyn Backend,
    g: &Graph,
    values: &HashMap<String, eval::Tensor>,
    tol: Tolerance,
) {
    // Graph constants as the f32 graph holds them, for the backend and the reference alike (the
    // generated graphs carry f64 constants; simplify folds them in f64 before rounding).
    let g = &f32_constants(g);
    // The backend sees f32 inputs: give the reference exactly the same values.
    let values: HashMap<String, eval::Tensor> = values
        .iter()
        .map(|(k, v)| {
            let mut v = v.clone();
            if v.ty.dtype.is_float() {
                v.data.iter_mut().for_each(|x| *x = *x as f32 as f64);
            }
            (k.clone(), v)
        })
        .collect();
    let values = &values;
    let reference = eval::eval(g, values, &|n: &str| values.get(n).cloned())
        .unwrap_or_else(|e| panic!("reference failed: {e}\n{}", qie_ir::print::print_graph(g)));
    let (inputs, params) = bind(g, values);
    for opts in option_sets() {
        let exe = b.compile(g, &opts).unwrap_or_else(|e| {
            panic!("compile ({opts:?}): {e}\n{}", qie_ir::print::print_graph(g))
        });
        for run in 0..2 {
            let out = exe
                .run(&inputs, &params)
                .unwrap_or_else(|e| panic!("run ({opts:?}): {e}"));
            if std::env::var("QIE_TEST_VERBOSE").is_ok() {
                eprintln!("fuse={}: {}", opts.fuse, exe.stats());
            }
            for (name, want) in &reference {
                let got = out
                    .get(name)
                    .unwrap_or_else(|| panic!("output {name} missing"));
                if let Err(e) = compare(name, got, want, tol) {
                    panic!(
                        "{e}\n(run {run}, optimize={}, fuse={}, QIE_TEST_SEED={:?})\n{}",
                        opts.optimize,
                        opts.fuse,
                        test_seed(),
                        qie_ir::print::print_graph(g)
                    );
                }
            }
        }
    }
}

/// `values` with every float moved into [0.5, 2): for generated graphs (qie_ir::testing) that
/// reduce or multiply whole tensors, where zero-mean inputs cancel down to outputs far below
/// the size of their terms, whose f32 summation order then decides the last digits. The
/// hand-written suite keeps signed inputs; its outputs are not cancelled sums.
pub fn positive_values(values: &HashMap<String, eval::Tensor>) -> HashMap<String, eval::Tensor> {
    values
        .iter()
        .map(|(name, v)| {
            let mut v = v.clone();
            if v.ty.dtype.is_float() {
                v.data.iter_mut().for_each(|x| *x = 0.5 + 0.375 * x.abs());
            }
            (name.clone(), v)
        })
        .collect()
}

/// `g` with its f32 constants rounded to f32, as the backend stores them: a check must not
/// compute `1.1570 - 1.1612` from f64 constants an f32 graph cannot hold.
fn f32_constants(g: &Graph) -> Graph {
    let mut g = g.clone();
    for node in &mut g.nodes {
        if let Op::Constant {
            value,
            dtype: DType::F32,
        } = &mut node.op
        {
            *value = *value as f32 as f64;
        }
    }
    g
}

/// [`check_values`] on fresh random values.
pub fn check(b: &dyn Backend, g: &Graph, seed: u64) {
    let values = random_values(g, seed, 8);
    check_values(b, g, &values, REL_L2);
}

// ---------------------------------------------------------------------------------------------
// Elementwise

pub fn unary_ops(b: &dyn Backend) {
    use UnaryOp::*;
    for (i, u) in [
        Neg, Abs, Exp, Log, Sqrt, Rsqrt, Recip, Sin, Cos, Tanh, Sigmoid,
    ]
    .into_iter()
    .enumerate()
    {
        let mut g = GraphBuilder::new();
        let x = g.input("x", f32_type(&[3, 37]));
        let arg = if matches!(u, Log | Sqrt | Rsqrt) {
            g.positive(x)
        } else {
            x
        };
        let y = g.unary(u, arg);
        g.out("y", y);
        check(b, &g.graph, 100 + i as u64);
    }
    // Not on bools.
    let mut g = GraphBuilder::new();
    let x = g.input("x", tensor_type(DType::Bool, &[5, 7]));
    let y = g.unary(Not, x);
    g.out("y", y);
    check(b, &g.graph, 1);
}

pub fn binary_ops(b: &dyn Backend) {
    use BinaryOp::*;
    for (i, op) in [Add, Sub, Mul, Div, Max, Min, Pow].into_iter().enumerate() {
        let mut g = GraphBuilder::new();
        let x = g.input("x", f32_type(&[4, 33]));
        let y = g.input("y", f32_type(&[4, 33]));
        let (x2, y2) = if op == Pow {
            (g.positive(x), y)
        } else {
            (x, y)
        };
        let z = g.binary(op, x2, y2);
        g.out("z", z);
        check(b, &g.graph, 200 + i as u64);
    }
}

/// Integer arithmetic, exact, in i32 and i64 (divisors kept nonzero, signs mixed).
pub fn integer_ops(b: &dyn Backend) {
    use BinaryOp::*;
    for dtype in [DType::I32, DType::I64] {
        for (i, op) in [Add, Sub, Mul, Div, Max, Min, FloorDiv, Rem]
            .into_iter()
            .enumerate()
        {
            let mut g = GraphBuilder::new();
            let x = g.input("x", tensor_type(dtype, &[6, 11]));
            let y = g.input("y", tensor_type(dtype, &[6, 11]));
            // x in -10..10, y in 1..10 with alternating sign.
            let ten = g.splat(10.0, x);
            let xs = g.binary(Sub, x, ten);
            let one = g.splat(1.0, y);
            let yp = g.binary(Add, y, one);
            let iota = g.op(
                Op::Iota {
                    shape: [6, 11].as_slice().into(),
                    axis: 1,
                    dtype,
                },
                &[],
            );
            let two = g.splat(2.0, x);
            let parity = g.binary(Rem, iota, two);
            let zero = g.splat(0.0, x);
            let odd = g.op(Op::Compare(CmpOp::Ne), &[parity, zero]);
            let neg = g.unary(UnaryOp::Neg, yp);
            let ys = g.op(Op::Select, &[odd, neg, yp]);
            let z = g.binary(op, xs, ys);
            let za = g.unary(UnaryOp::Abs, z);
            g.out("z", z);
            g.out("za", za);
            let values = random_values(&g.graph, 300 + i as u64, 20);
            check_values(b, &g.graph, &values, 0.0);
        }
    }
}

pub fn compare_select_cast(b: &dyn Backend) {
    for (i, c) in [
        CmpOp::Eq,
        CmpOp::Ne,
        CmpOp::Lt,
        CmpOp::Le,
        CmpOp::Gt,
        CmpOp::Ge,
    ]
    .into_iter()
    .enumerate()
    {
        let mut g = GraphBuilder::new();
        let x = g.input("x", f32_type(&[5, 9]));
        let y = g.input("y", f32_type(&[5, 9]));
        let k = g.input("k", tensor_type(DType::I64, &[5, 9]));
        let m = g.input("m", tensor_type(DType::I64, &[5, 9]));
        let cf = g.op(Op::Compare(c), &[x, y]);
        let ci = g.op(Op::Compare(c), &[k, m]);
        let both = g.binary(BinaryOp::And, cf, ci);
        let either = g.binary(BinaryOp::Or, cf, ci);
        let sel = g.op(Op::Select, &[both, x, y]);
        let cast_b = g.op(Op::Cast { to: DType::F32 }, &[either]);
        let z = g.binary(BinaryOp::Add, sel, cast_b);
        let xi = g.op(Op::Cast { to: DType::I32 }, &[x]);
        let xl = g.op(Op::Cast { to: DType::I64 }, &[xi]);
        let kf = g.op(Op::Cast { to: DType::F32 }, &[k]);
        let kb = g.op(Op::Cast { to: DType::Bool }, &[k]);
        g.out("z", z);
        g.out("cf", cf);
        g.out("xl", xl);
        g.out("kf", kf);
        g.out("kb", kb);
        let values = random_values(&g.graph, 400 + i as u64, 3);
        check_values(b, &g.graph, &values, REL_L2);
    }
}

/// Broadcasts, transposes, slices and reshapes composed into loads, including a reshape that
/// merges transposed axes (a two-view index map) and a bf16 graph (computed in f32).
pub fn views(b: &dyn Backend) {
    let mut g = GraphBuilder::new();
    let x = g.input("x", f32_type(&[4, 6, 5]));
    let bias = g.input("bias", f32_type(&[5]));
    let xt = g.transpose(x, &[2, 0, 1]); // [5, 4, 6]
    let merged = g.reshape(xt, &[5, 24]); // strided
    let flat = g.reshape(merged, &[120]); // needs div/mod
    let split = g.reshape(flat, &[10, 12]);
    let e = g.unary(UnaryOp::Exp, split);
    let sl = g.op(
        Op::Slice {
            axis: 1,
            start: 3,
            end: 9,
        },
        &[e],
    ); // [10, 6]
    let bb = g.bcast(bias, &[4, 6, 5]);
    let y = g.binary(BinaryOp::Mul, x, bb);
    let yt = g.transpose(y, &[1, 0, 2]); // [6, 4, 5]
    let ys = g.op(
        Op::Slice {
            axis: 2,
            start: 1,
            end: 4,
        },
        &[yt],
    ); // [6, 4, 3]
    let yr = g.reshape(ys, &[6, 12]);
    let yrt = g.transpose(yr, &[1, 0]); // [12, 6]
    let s = g.op(
        Op::Slice {
            axis: 0,
            start: 2,
            end: 12,
        },
        &[yrt],
    ); // [10, 6]
    let z = g.binary(BinaryOp::Add, sl, s);
    g.out("z", z);
    g.out("y", y);
    let col = g.input("col", f32_type(&[7, 1]));
    let row = g.input("row", f32_type(&[1, 9]));
    let cb = g.bcast(col, &[2, 7, 9]);
    let rb = g.bcast(row, &[2, 7, 9]);
    let outer = g.binary(BinaryOp::Sub, cb, rb);
    g.out("outer", outer);
    check(b, &g.graph, 500);

    // Scalars, constants and iota through views.
    let mut g = GraphBuilder::new();
    let x = g.input("x", f32_type(&[3, 4]));
    let s = g.input("s", f32_type(&[]));
    let io = g.op(
        Op::Iota {
            shape: [4, 3].as_slice().into(),
            axis: 0,
            dtype: DType::F32,
        },
        &[],
    );
    let iot = g.transpose(io, &[1, 0]);
    let sb = g.bcast(s, &[3, 4]);
    let c = g.splat(0.25, x);
    let p = g.binary(BinaryOp::Mul, iot, sb);
    let q = g.binary(BinaryOp::Add, p, c);
    let r = g.binary(BinaryOp::Add, q, x);
    g.out("r", r);
    g.out("iota", iot);
    check(b, &g.graph, 501);

    // bf16 values are computed in f32 on the CPU; compare with a loose tolerance.
    let mut g = GraphBuilder::new();
    let x = g.input("x", tensor_type(DType::BF16, &[8, 16]));
    let y = g.unary(UnaryOp::Tanh, x);
    let z = g.op(Op::Cast { to: DType::F32 }, &[y]);
    g.out("z", z);
    let values = random_values(&g.graph, 502, 1);
    check_values(b, &g.graph, &values, 1e-2);
}

// ---------------------------------------------------------------------------------------------
// Reductions

pub fn reductions(b: &dyn Backend) {
    let shape = [5, 6, 70];
    let axes_sets: [&[usize]; 6] = [&[2], &[0], &[1], &[0, 2], &[1, 2], &[0, 1, 2]];
    for (i, axes) in axes_sets.into_iter().enumerate() {
        for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min] {
            let mut g = GraphBuilder::new();
            let x = g.input("x", f32_type(&shape));
            let e = g.unary(UnaryOp::Exp, x);
            let r = g.reduce(op, e, axes);
            let n: usize = axes.iter().map(|&a| shape[a]).product();
            let k = g.splat(1.0 / n as f64, r);
            let mean = g.binary(BinaryOp::Mul, r, k);
            g.out("r", r);
            g.out("mean", mean);
            check(b, &g.graph, 600 + i as u64);
        }
    }
    // Integer sums and a long reduction.
    let mut g = GraphBuilder::new();
    let k = g.input("k", tensor_type(DType::I64, &[3, 1000]));
    let s = g.reduce(ReduceOp::Sum, k, &[1]);
    let m = g.reduce(ReduceOp::Max, k, &[0]);
    g.out("s", s);
    g.out("m", m);
    let values = random_values(&g.graph, 610, 1000);
    check_values(b, &g.graph, &values, 0.0);
    let mut g = GraphBuilder::new();
    let x = g.input("x", f32_type(&[2, 50000]));
    let s = g.reduce(ReduceOp::Sum, x, &[1]);
    g.out("s", s);
    check(b, &g.graph, 611);
    check(b, &token_axis_reductions_graph(), 612);
}

/// Sums over the token axis of [batch, tokens, channels] (the gradients of modulation
/// parameters): two reduce stages in one group with a prologue and an epilogue, rows that do not
/// fill the last tile, and a max whose identity must not leak.
pub fn token_axis_reductions_graph() -> Graph {
    let mut g = GraphBuilder::new();
    let x = g.input("x", f32_type(&[2, 3001, 201]));
    let y = g.input("y", f32_type(&[2, 3001, 201]));
    let xy = g.binary(BinaryOp::Mul, x, y);
    let s = g.reduce(ReduceOp::Sum, xy, &[1]);
    let sq = g.binary(BinaryOp::Mul, x, x);
    let q = g.reduce(ReduceOp::Sum, sq, &[1]);
    let ratio = g.binary(BinaryOp::Div, s, q);
    g.out("ratio", ratio);
    g.out("s", s);
    let m = g.reduce(ReduceOp::Max, y, &[0, 1]);
    g.out("m", m);
    g.graph
}

/// Layer norm and softmax as the model writes them (fusion makes reduction groups with prologues
/// and epilogues, and an elementwise group recomputing the centred value).
pub fn norms_and_softmax(b: &dyn Backend) {
    let (n, d) = (37, 96);
    let mut g = GraphBuilder::new();
    let x = g.input("x", f32_type(&[2, n, d]));
    let gamma = g.param("gamma", f32_type(&[d]));
    let sum = g.reduce(ReduceOp::Sum, x, &[2]);
    let inv_d = g.splat(1.0 / d as f64, sum);
    let mean = g.binary(BinaryOp::Mul, sum, inv_d);
    let mean3 = g.reshape(mean, &[2, n, 1]);
    let meanb = g.bcast(mean3, &[2, n, d]);
    let xc = g.binary(BinaryOp::Sub, x, meanb);
    let sq = g.binary(BinaryOp::Mul, xc, xc);
    let var_s = g.reduce(ReduceOp::Sum, sq, &[2]);
    let var = g.binary(BinaryOp::Mul, var_s, inv_d);
    let eps = g.splat(1e-6, var);
    let ve = g.binary(BinaryOp::Add, var, eps);
    let rstd = g.unary(UnaryOp::Rsqrt, ve);
    let rstd3 = g.reshape(rstd, &[2, n, 1]);
    let rstdb = g.bcast(rstd3, &[2, n, d]);
    let normed = g.binary(BinaryOp::Mul, xc, rstdb);
    let gb = g.bcast(gamma, &[2, n, d]);
    let y = g.binary(BinaryOp::Mul, normed, gb);
    g.out("ln", y);
    // softmax over the last axis
    let mx = g.reduce(ReduceOp::Max, y, &[2]);
    let mx3 = g.reshape(mx, &[2, n, 1]);
    let mxb = g.bcast(mx3, &[2, n, d]);
    let sh = g.binary(BinaryOp::Sub, y, mxb);
    let e = g.unary(UnaryOp::Exp, sh);
    let s = g.reduce(ReduceOp::Sum, e, &[2]);
    let s3 = g.reshape(s, &[2, n, 1]);
    let sb = g.bcast(s3, &[2, n, d]);
    let sm = g.binary(BinaryOp::Div, e, sb);
    g.out("softmax", sm);
    check(b, &g.graph, 700);
}

// ---------------------------------------------------------------------------------------------
// Library ops

pub fn matmul_forms(b: &dyn Backend) {
    let (m, k, n) = (13, 29, 11);
    let mut seed = 800;
    for ta in [false, true] {
        for tb in [false, true] {
            let a_shape = |batch: &[usize]| {
                let mut s = batch.to_vec();
                s.extend(if ta { [k, m] } else { [m, k] });
                s
            };
            let b_shape = |batch: &[usize]| {
                let mut s = batch.to_vec();
                s.extend(if tb { [n, k] } else { [k, n] });
                s
            };
            // plain, batched (same batch), shared rank-2 b with batch dims on a
            for (batch_a, batch_b) in [
                (vec![], vec![]),
                (vec![2, 3], vec![2, 3]),
                (vec![4], vec![]),
                (vec![2, 2], vec![]),
            ] {
                let mut g = GraphBuilder::new();
                let a = g.input("a", f32_type(&a_shape(&batch_a)));
                let bb = g.input("b", f32_type(&b_shape(&batch_b)));
                let c = g.matmul(a, bb, ta, tb);
                g.out("c", c);
                seed += 1;
                check(b, &g.graph, seed);
            }
        }
    }
}

/// A linear layer as the DiT writes it: x [B, S, Din] @ W^T [Dout, Din] + bias, then GELU(tanh)
/// and a residual; the epilogue rides with the matmul, the reshape prologue is free.
pub fn linear_with_epilogue(b: &dyn Backend) {
    let (bs, s, din, dout) = (2, 19, 24, 40);
    let mut g = GraphBuilder::new();
    let x = g.input("x", f32_type(&[bs, s, din]));
    let w = g.param("w", f32_type(&[dout, din]));
    let bias = g.param("bias", f32_type(&[dout]));
    let res = g.input("res", f32_type(&[bs, s, dout]));
    let y = g.matmul(x, w, false, true);
    let bb = g.bcast(bias, &[bs, s, dout]);
    let yb = g.binary(BinaryOp::Add, y, bb);
    // gelu_tanh(v) = 0.5 v (1 + tanh(0.79788456 (v + 0.044715 v^3)))
    let v3a = g.binary(BinaryOp::Mul, yb, yb);
    let v3 = g.binary(BinaryOp::Mul, v3a, yb);
    let c1 = g.splat(0.044715, yb);
    let t1 = g.binary(BinaryOp::Mul, v3, c1);
    let inner = g.binary(BinaryOp::Add, yb, t1);
    let c2 = g.splat(0.797_884_560_802_865_4, yb);
    let t2 = g.binary(BinaryOp::Mul, inner, c2);
    let th = g.unary(UnaryOp::Tanh, t2);
    let one = g.splat(1.0, yb);
    let t3 = g.binary(BinaryOp::Add, th, one);
    let half = g.splat(0.5, yb);
    let t4 = g.binary(BinaryOp::Mul, yb, half);
    let gelu = g.binary(BinaryOp::Mul, t4, t3);
    let out = g.binary(BinaryOp::Add, gelu, res);
    g.out("out", out);
    // A second matmul whose a operand is a reshape of the first's output (prologue).
    let flat = g.reshape(out, &[bs * s, dout]);
    let w2 = g.param("w2", f32_type(&[dout, 8]));
    let z = g.matmul(flat, w2, false, false);
    g.out("z", z);
    check(b, &g.graph, 900);
}

fn attention_graph(
    bsz: usize,
    sq: usize,
    sk: usize,
    h: usize,
    d: usize,
    dv: usize,
    masked: bool,
) -> Graph {
    let mut g = GraphBuilder::new();
    let q = g.input("q", f32_type(&[bsz, sq, h, d]));
    let k = g.input("k", f32_type(&[bsz, sk, h, d]));
    let v = g.input("v", f32_type(&[bsz, sk, h, dv]));
    let mut args = vec![q, k, v];
    if masked {
        args.push(g.input("mask", tensor_type(DType::Bool, &[bsz, sk])));
    }
    let o = g.op(
        Op::Attention {
            scale: 1.0 / (d as f64).sqrt(),
        },
        &args,
    );
    g.out("o", o);
    g.graph
}

/// Attention with sizes that are not multiples of the blocks, a key mask, a batch whose keys are
/// all masked (zeros by definition), and q/k/v read through transposes of [B, H, S, D] inputs.
pub fn attention(b: &dyn Backend) {
    check(b, &attention_graph(1, 70, 530, 2, 16, 16, false), 1000);
    check(b, &attention_graph(2, 67, 133, 3, 8, 12, true), 1001);
    check(b, &attention_graph(1, 1, 1, 1, 4, 4, false), 1002);
    // head dims of the CUDA kernels' other tiles (SigLIP so400m's 72) and of the generic kernel
    check(b, &attention_graph(2, 65, 97, 2, 72, 72, true), 1005);
    check(b, &attention_graph(1, 5, 40, 1, 100, 100, false), 1006);
    // Masks: batch 0 random, batch 1 fully masked.
    let g = attention_graph(2, 9, 600, 2, 8, 8, true);
    let mut values = random_values(&g, 1003, 2);
    let mask = values.get_mut("mask").expect("mask");
    for j in 0..600 {
        mask.data[600 + j] = 0.0;
    }
    check_values(b, &g, &values, REL_L2);
    // Head-major inputs transposed into [B, S, H, D] (strided operands).
    let mut g = GraphBuilder::new();
    let q = g.input("q", f32_type(&[2, 3, 40, 16]));
    let k = g.input("k", f32_type(&[2, 3, 50, 16]));
    let v = g.input("v", f32_type(&[2, 3, 50, 16]));
    let qt = g.transpose(q, &[0, 2, 1, 3]);
    let kt = g.transpose(k, &[0, 2, 1, 3]);
    let vt = g.transpose(v, &[0, 2, 1, 3]);
    let o = g.op(Op::Attention { scale: 0.3 }, &[qt, kt, vt]);
    g.out("o", o);
    check(b, &g.graph, 1004);
}

/// A concat whose operands have different storage in bf16 mode: a reduction (kept in f32) next
/// to a plain value (bf16), then used, as attention and modulation gradients are assembled.
pub fn concat_of_a_reduction_graph() -> Graph {
    let mut g = GraphBuilder::new();
    let x = g.input("x", f32_type(&[40, 32]));
    let y = g.input("y", f32_type(&[1, 32]));
    let z = g.input("z", f32_type(&[2, 32]));
    let r = g.reduce(ReduceOp::Sum, x, &[0]);
    let r = g.reshape(r, &[1, 32]);
    let c = g.op(Op::Concat { axis: 0 }, &[r, y]);
    let out = g.binary(BinaryOp::Add, c, z);
    g.out("out", out);
    g.graph
}

/// `attention_grad(q, k, v, dout[, mask])`: packed dq | dk | dv.
pub fn attention_grad_graph(
    bsz: usize,
    sq: usize,
    sk: usize,
    h: usize,
    d: usize,
    masked: bool,
) -> Graph {
    let mut g = GraphBuilder::new();
    let q = g.input("q", f32_type(&[bsz, sq, h, d]));
    let k = g.input("k", f32_type(&[bsz, sk, h, d]));
    let v = g.input("v", f32_type(&[bsz, sk, h, d]));
    let dout = g.input("dout", f32_type(&[bsz, sq, h, d]));
    let mut args = vec![q, k, v, dout];
    if masked {
        args.push(g.input("mask", tensor_type(DType::Bool, &[bsz, sk])));
    }
    let scale = 1.0 / (d as f64).sqrt();
    let grads = g.op(Op::AttentionGrad { scale }, &args);
    g.out("grads", grads);
    g.graph
}

/// The fused attention backward: sizes across the block edges, a key mask with one batch fully
/// masked (zero gradients), one query and one key, and strided operands.
pub fn attention_grad(b: &dyn Backend) {
    check(b, &attention_grad_graph(1, 70, 530, 2, 16, false), 1100);
    check(b, &attention_grad_graph(1, 1, 1, 1, 4, false), 1101);
    let g = attention_grad_graph(2, 67, 133, 3, 8, true);
    let mut values = random_values(&g, 1102, 2);
    let mask = values.get_mut("mask").expect("mask");
    for j in 0..133 {
        mask.data[133 + j] = 0.0;
    }
    check_values(b, &g, &values, REL_L2);
    let mut g = GraphBuilder::new();
    let names = ["q", "k", "v", "dout"];
    let lens = [40, 50, 50, 40];
    let mut args = Vec::new();
    for (name, len) in names.iter().zip(lens) {
        let x = g.input(name, f32_type(&[2, 3, len, 16]));
        args.push(g.transpose(x, &[0, 2, 1, 3]));
    }
    let grads = g.op(Op::AttentionGrad { scale: 0.3 }, &args);
    g.out("grads", grads);
    check(b, &g.graph, 1103);
}

/// (x shape, w shape, stride, padding, dilation, groups)
type ConvCase = (
    [usize; 4],
    [usize; 4],
    [usize; 2],
    [usize; 2],
    [usize; 2],
    usize,
);

pub fn conv2d(b: &dyn Backend) {
    // (x shape, w shape, stride, padding, dilation, groups)
    let cases: [ConvCase; 6] = [
        ([2, 3, 9, 11], [4, 3, 3, 3], [1, 1], [1, 1], [1, 1], 1),
        ([1, 4, 10, 7], [6, 2, 3, 2], [2, 1], [0, 1], [1, 1], 2),
        ([1, 6, 8, 8], [6, 1, 3, 3], [1, 1], [2, 2], [2, 2], 6),
        ([2, 5, 6, 7], [3, 5, 1, 1], [1, 1], [0, 0], [1, 1], 1),
        ([1, 8, 12, 12], [8, 8, 2, 2], [2, 2], [0, 0], [1, 1], 1),
        ([1, 3, 5, 5], [2, 3, 5, 5], [1, 1], [0, 0], [1, 1], 1),
    ];
    for (i, (xs, ws, stride, padding, dilation, groups)) in cases.into_iter().enumerate() {
        let mut g = GraphBuilder::new();
        let x = g.input("x", f32_type(&xs));
        let w = g.param("w", f32_type(&ws));
        let y = g.op(
            Op::Conv2d {
                stride,
                padding,
                dilation,
                groups,
            },
            &[x, w],
        );
        g.out("y", y);
        check(b, &g.graph, 1100 + i as u64);
    }
}

// ---------------------------------------------------------------------------------------------
// Data movement

pub fn gather_concat(b: &dyn Backend) {
    for (i, (table, axis, index)) in [
        (vec![10, 4], 0, vec![7]),
        (vec![3, 9, 5], 1, vec![2, 4]),
        (vec![6, 5], 1, vec![]),
        (vec![12], 0, vec![3, 2]),
    ]
    .into_iter()
    .enumerate()
    {
        for idx_dtype in [DType::I32, DType::I64] {
            let mut g = GraphBuilder::new();
            let tb = g.input("table", f32_type(&table));
            let ix = g.input("idx", tensor_type(idx_dtype, &index));
            let gth = g.op(Op::Gather { axis }, &[tb, ix]);
            let e = g.unary(UnaryOp::Exp, gth);
            g.out("g", gth);
            g.out("e", e);
            let values = random_values(&g.graph, 1200 + i as u64, table[axis]);
            check_values(b, &g.graph, &values, REL_L2);
        }
    }
    // An embedding lookup from a param table.
    let mut g = GraphBuilder::new();
    let tb = g.param("emb", f32_type(&[50, 8]));
    let ix = g.input("tokens", tensor_type(DType::I64, &[2, 7]));
    let e = g.op(Op::Gather { axis: 0 }, &[tb, ix]);
    g.out("e", e);
    let values = random_values(&g.graph, 1210, 50);
    check_values(b, &g.graph, &values, REL_L2);

    for axis in 0..3 {
        let mut g = GraphBuilder::new();
        let mut shapes = [[3, 4, 5]; 3];
        shapes[1][axis] = 2;
        shapes[2][axis] = 1;
        let a = g.input("a", f32_type(&shapes[0]));
        let bb = g.input("b", f32_type(&shapes[1]));
        let c = g.input("c", f32_type(&shapes[2]));
        let ea = g.unary(UnaryOp::Exp, a);
        let cat = g.op(Op::Concat { axis }, &[ea, bb, c]);
        let s = g.unary(UnaryOp::Sin, cat);
        g.out("cat", cat);
        g.out("s", s);
        check(b, &g.graph, 1220 + axis as u64);
    }
    // Concat of int tensors and of a transposed operand.
    let mut g = GraphBuilder::new();
    let a = g.input("a", tensor_type(DType::I64, &[2, 3]));
    let bb = g.input("b", tensor_type(DType::I64, &[3, 2]));
    let bt = g.transpose(bb, &[1, 0]);
    let cat = g.op(Op::Concat { axis: 1 }, &[a, bt]);
    g.out("cat", cat);
    let values = random_values(&g.graph, 1230, 100);
    check_values(b, &g.graph, &values, 0.0);
}

// ---------------------------------------------------------------------------------------------
// Sizes that take the parallel paths (several chunks, row blocks, multithreaded GEMM)

pub fn large_shapes(b: &dyn Backend) {
    let mut g = GraphBuilder::new();
    let x = g.input("x", f32_type(&[3, 200, 129]));
    let y = g.input("y", f32_type(&[129, 200, 3]));
    let yt = g.transpose(y, &[2, 1, 0]);
    let s = g.unary(UnaryOp::Sigmoid, x);
    let xs = g.binary(BinaryOp::Mul, x, s);
    let z = g.binary(BinaryOp::Add, xs, yt);
    g.out("z", z);
    // Row and column reductions over [600, 257] with a prologue and an epilogue.
    let r = g.reshape(z, &[600, 129]);
    let e = g.unary(UnaryOp::Exp, r);
    let rows = g.reduce(ReduceOp::Sum, e, &[1]);
    let lr = g.unary(UnaryOp::Log, rows);
    let cols = g.reduce(ReduceOp::Max, r, &[0]);
    g.out("rows", lr);
    g.out("cols", cols);
    // A multithreaded GEMM with a bias epilogue.
    let a = g.input("a", f32_type(&[2, 150, 70]));
    let w = g.param("w", f32_type(&[90, 70]));
    let bias = g.param("bias", f32_type(&[90]));
    let mm = g.matmul(a, w, false, true);
    let bb = g.bcast(bias, &[2, 150, 90]);
    let o = g.binary(BinaryOp::Add, mm, bb);
    g.out("mm", o);
    // Batched GEMM with many small batches (parallel over batches).
    let p = g.input("p", f32_type(&[40, 30, 20]));
    let q = g.input("q", f32_type(&[40, 20, 25]));
    let pq = g.matmul(p, q, false, false);
    g.out("pq", pq);
    check(b, &g.graph, 1300);
}

// ---------------------------------------------------------------------------------------------
// A whole transformer block

/// Layer norm without affine over the last axis, then `x * (1 + scale) + shift`.
pub fn norm_modulate(
    g: &mut GraphBuilder,
    x: NodeId,
    scale: NodeId,
    shift: NodeId,
    n: usize,
    d: usize,
) -> NodeId {
    let sum = g.reduce(ReduceOp::Sum, x, &[1]);
    let inv = g.splat(1.0 / d as f64, sum);
    let mean = g.binary(BinaryOp::Mul, sum, inv);
    let mean2 = g.reshape(mean, &[n, 1]);
    let mb = g.bcast(mean2, &[n, d]);
    let xc = g.binary(BinaryOp::Sub, x, mb);
    let sq = g.binary(BinaryOp::Mul, xc, xc);
    let vs = g.reduce(ReduceOp::Sum, sq, &[1]);
    let var = g.binary(BinaryOp::Mul, vs, inv);
    let eps = g.splat(1e-6, var);
    let ve = g.binary(BinaryOp::Add, var, eps);
    let rstd = g.unary(UnaryOp::Rsqrt, ve);
    let r2 = g.reshape(rstd, &[n, 1]);
    let rb = g.bcast(r2, &[n, d]);
    let normed = g.binary(BinaryOp::Mul, xc, rb);
    let one = g.splat(1.0, scale);
    let s1 = g.binary(BinaryOp::Add, scale, one);
    let sb = g.bcast(s1, &[n, d]);
    let hb = g.bcast(shift, &[n, d]);
    let m = g.binary(BinaryOp::Mul, normed, sb);
    g.binary(BinaryOp::Add, m, hb)
}

/// RMS norm over the last axis (head_dim) with a weight.
pub fn rms_norm(g: &mut GraphBuilder, x: NodeId, w: NodeId, shape: &[usize]) -> NodeId {
    let r = shape.len() - 1;
    let d = shape[r];
    let sq = g.binary(BinaryOp::Mul, x, x);
    let s = g.reduce(ReduceOp::Sum, sq, &[r]);
    let inv = g.splat(1.0 / d as f64, s);
    let ms = g.binary(BinaryOp::Mul, s, inv);
    let eps = g.splat(1e-6, ms);
    let me = g.binary(BinaryOp::Add, ms, eps);
    let rs = g.unary(UnaryOp::Rsqrt, me);
    let mut kshape = shape.to_vec();
    kshape[r] = 1;
    let rs2 = g.reshape(rs, &kshape);
    let rb = g.bcast(rs2, shape);
    let n = g.binary(BinaryOp::Mul, x, rb);
    let wb = g.bcast(w, shape);
    g.binary(BinaryOp::Mul, n, wb)
}

/// Rotary embedding on [S, H, D] with cos/sin inputs [S, D/2] (interleaved pairs).
pub fn rope(
    g: &mut GraphBuilder,
    x: NodeId,
    cos: NodeId,
    sin: NodeId,
    s: usize,
    h: usize,
    d: usize,
) -> NodeId {
    let pairs = g.reshape(x, &[s, h, d / 2, 2]);
    let slice = |g: &mut GraphBuilder, i: usize| {
        let p = g.op(
            Op::Slice {
                axis: 3,
                start: i,
                end: i + 1,
            },
            &[pairs],
        );
        g.reshape(p, &[s, h, d / 2])
    };
    let (re, im) = (slice(g, 0), slice(g, 1));
    let c2 = g.reshape(cos, &[s, 1, d / 2]);
    let s2 = g.reshape(sin, &[s, 1, d / 2]);
    let cb = g.bcast(c2, &[s, h, d / 2]);
    let sb = g.bcast(s2, &[s, h, d / 2]);
    let a = g.binary(BinaryOp::Mul, re, cb);
    let b = g.binary(BinaryOp::Mul, im, sb);
    let out_re = g.binary(BinaryOp::Sub, a, b);
    let c = g.binary(BinaryOp::Mul, re, sb);
    let e = g.binary(BinaryOp::Mul, im, cb);
    let out_im = g.binary(BinaryOp::Add, c, e);
    let r3 = g.reshape(out_re, &[s, h, d / 2, 1]);
    let i3 = g.reshape(out_im, &[s, h, d / 2, 1]);
    let cat = g.op(Op::Concat { axis: 3 }, &[r3, i3]);
    g.reshape(cat, &[s, h, d])
}

pub fn linear(
    g: &mut GraphBuilder,
    x: NodeId,
    name: &str,
    din: usize,
    dout: usize,
    n: usize,
) -> NodeId {
    let w = g.param(&format!("{name}.weight"), f32_type(&[dout, din]));
    let b = g.param(&format!("{name}.bias"), f32_type(&[dout]));
    let y = g.matmul(x, w, false, true);
    let bb = g.bcast(b, &[n, dout]);
    g.binary(BinaryOp::Add, y, bb)
}

pub fn gelu_tanh(g: &mut GraphBuilder, x: NodeId) -> NodeId {
    let x2 = g.binary(BinaryOp::Mul, x, x);
    let x3 = g.binary(BinaryOp::Mul, x2, x);
    let c1 = g.splat(0.044715, x);
    let t1 = g.binary(BinaryOp::Mul, x3, c1);
    let inner = g.binary(BinaryOp::Add, x, t1);
    let c2 = g.splat(0.797_884_560_802_865_4, x);
    let t2 = g.binary(BinaryOp::Mul, inner, c2);
    let th = g.unary(UnaryOp::Tanh, t2);
    let one = g.splat(1.0, x);
    let t3 = g.binary(BinaryOp::Add, th, one);
    let half = g.splat(0.5, x);
    let t4 = g.binary(BinaryOp::Mul, x, half);
    g.binary(BinaryOp::Mul, t4, t3)
}

/// One Qwen-Image dual-stream DiT block (real width: d = 3072 = 24 heads x 128, MLP 12288) with
/// `ni` image and `nt` text tokens. Modulation vectors are inputs (the tiny mod linears omitted).
pub fn dit_block(ni: usize, nt: usize, d: usize, h: usize, f: usize) -> Graph {
    let hd = d / h;
    let n = ni + nt;
    let mut g = GraphBuilder::new();
    let img = g.input("img", f32_type(&[ni, d]));
    let txt = g.input("txt", f32_type(&[nt, d]));
    let cos = g.input("rope_cos", f32_type(&[n, hd / 2]));
    let sin = g.input("rope_sin", f32_type(&[n, hd / 2]));
    let mods: Vec<Vec<NodeId>> = ["img", "txt"]
        .iter()
        .map(|s| {
            (0..6)
                .map(|i| g.input(&format!("{s}_mod{i}"), f32_type(&[d])))
                .collect()
        })
        .collect();
    let streams = [(img, ni, "img", 0usize), (txt, nt, "txt", 1usize)];
    let mut qkv = vec![];
    for &(x, len, name, si) in &streams {
        let m = &mods[si];
        let xn = norm_modulate(&mut g, x, m[1], m[0], len, d);
        let mut parts = vec![];
        for p in ["q", "k", "v"] {
            let y = linear(&mut g, xn, &format!("{name}.attn.to_{p}"), d, d, len);
            let y3 = g.reshape(y, &[len, h, hd]);
            let y3 = if p == "v" {
                y3
            } else {
                let w = g.param(&format!("{name}.attn.norm_{p}.weight"), f32_type(&[hd]));
                rms_norm(&mut g, y3, w, &[len, h, hd])
            };
            parts.push(y3);
        }
        qkv.push(parts);
    }
    // Joint attention over [txt; img].
    let mut joint = vec![];
    for (p, (img_p, txt_p)) in qkv[0].iter().zip(&qkv[1]).enumerate() {
        let cat = g.op(Op::Concat { axis: 0 }, &[*txt_p, *img_p]);
        let cat = if p < 2 {
            rope(&mut g, cat, cos, sin, n, h, hd)
        } else {
            cat
        };
        joint.push(g.reshape(cat, &[1, n, h, hd]));
    }
    let att = g.op(
        Op::Attention {
            scale: 1.0 / (hd as f64).sqrt(),
        },
        &joint,
    );
    let att = g.reshape(att, &[n, d]);
    let txt_att = g.op(
        Op::Slice {
            axis: 0,
            start: 0,
            end: nt,
        },
        &[att],
    );
    let img_att = g.op(
        Op::Slice {
            axis: 0,
            start: nt,
            end: n,
        },
        &[att],
    );
    for (&(x, len, name, si), a) in streams.iter().zip([img_att, txt_att]) {
        let m = &mods[si];
        let o = linear(&mut g, a, &format!("{name}.attn.to_out"), d, d, len);
        let gb = g.bcast(m[2], &[len, d]);
        let go = g.binary(BinaryOp::Mul, o, gb);
        let x1 = g.binary(BinaryOp::Add, x, go);
        let xn = norm_modulate(&mut g, x1, m[4], m[3], len, d);
        let h1 = linear(&mut g, xn, &format!("{name}.mlp.0"), d, f, len);
        let h1 = gelu_tanh(&mut g, h1);
        let h2 = linear(&mut g, h1, &format!("{name}.mlp.2"), f, d, len);
        let gb2 = g.bcast(m[5], &[len, d]);
        let gm = g.binary(BinaryOp::Mul, h2, gb2);
        let x2 = g.binary(BinaryOp::Add, x1, gm);
        g.out(name, x2);
    }
    g.graph
}

/// A Qwen-Image DiT block at a small width: norms, modulation, QKV, RMS norm, RoPE, joint
/// attention, gates, GELU MLP, residuals.
pub fn dit_block_small(b: &dyn Backend) {
    check(b, &dit_block(40, 9, 32, 2, 64), 1400);
}

// ---------------------------------------------------------------------------------------------
// Plan reuse

/// One compiled plan run on several input sets (as the denoising loop does), on a dedicated
/// one-thread pool, each result checked against the reference.
pub fn plan_reuse(b: &dyn Backend) {
    let g = dit_block(24, 8, 32, 2, 64);
    let opts = CompileOptions {
        threads: Some(1),
        poison: true,
        ..Default::default()
    };
    let exe = b.compile(&g, &opts).expect("compile");
    assert!(exe.stats().arena_bytes > 0);
    for seed in 0..3 {
        let values: HashMap<String, eval::Tensor> = random_values(&g, 1500 + seed, 8)
            .into_iter()
            .map(|(k, mut v)| {
                v.data.iter_mut().for_each(|x| *x = *x as f32 as f64);
                (k, v)
            })
            .collect();
        let reference = eval::eval(&f32_constants(&g), &values, &|n: &str| {
            values.get(n).cloned()
        })
        .expect("reference");
        let (inputs, params) = bind(&g, &values);
        let out = exe.run(&inputs, &params).expect("run");
        for (name, want) in &reference {
            compare(name, &out[name], want, Tolerance::uniform(REL_L2))
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

pub fn errors_name_the_culprit(b: &dyn Backend) {
    let mut g = GraphBuilder::new();
    let x = g.input("image", f32_type(&[2, 3]));
    let w = g.param("blocks.0.weight", f32_type(&[3, 4]));
    let y = g.matmul(x, w, false, false);
    g.out("y", y);
    let exe = b
        .compile(&g.graph, &CompileOptions::default())
        .expect("compile");
    let good_x = Tensor::from_f32(&[2, 3], vec![1.0; 6]).unwrap();
    let good_w = Tensor::from_f32(&[3, 4], vec![1.0; 12]).unwrap();
    let mut params = HashMap::new();
    let none: HashMap<String, Tensor> = HashMap::new();
    match exe.run(&none, &params) {
        Err(RuntimeError::MissingInput(n)) => assert_eq!(n, "image"),
        other => panic!("expected a missing input error, got {other:?}"),
    }
    let mut inputs = HashMap::new();
    inputs.insert(
        "image".to_string(),
        Tensor::from_f32(&[3, 2], vec![1.0; 6]).unwrap(),
    );
    params.insert("blocks.0.weight".to_string(), good_w.clone());
    match exe.run(&inputs, &params) {
        Err(e @ RuntimeError::BadInput { .. }) => assert!(e.to_string().contains("image"), "{e}"),
        other => panic!("expected a bad input error, got {other:?}"),
    }
    inputs.insert("image".to_string(), good_x);
    params.clear();
    match exe.run(&inputs, &params) {
        Err(RuntimeError::MissingParam(n)) => assert_eq!(n, "blocks.0.weight"),
        other => panic!("expected a missing param error, got {other:?}"),
    }
    params.insert(
        "blocks.0.weight".to_string(),
        Tensor::from_f32(&[12], vec![1.0; 12]).unwrap(),
    );
    exe.run(&inputs, &params)
        .expect("a param is matched by element count");
    params.insert(
        "blocks.0.weight".to_string(),
        Tensor::from_f32(&[2, 4], vec![1.0; 8]).unwrap(),
    );
    match exe.run(&inputs, &params) {
        Err(e @ RuntimeError::BadParam { .. }) => {
            assert!(e.to_string().contains("blocks.0.weight"), "{e}")
        }
        other => panic!("expected a bad param error, got {other:?}"),
    }
    params.insert("blocks.0.weight".to_string(), good_w);
    let out = exe.run(&inputs, &params).expect("run");
    assert_eq!(out["y"].as_f32().unwrap(), &[3.0; 8]);
}
