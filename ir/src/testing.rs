//! Random graph generation for property tests. Behind the `testing` feature (off by default): the
//! tests of this crate and of the crates below it enable it through their dev-dependencies.
//!
//! [`random_graph`] builds a valid f32 graph from a seed: elementwise ops with safe domains
//! (`log`/`sqrt`/`rsqrt`/`recip` only see `x * x + 1`, growing ops see `tanh`-bounded operands),
//! broadcasts, reshapes, transposes, slices, concats, reductions, matmuls, gathers, small masked
//! attention, plus work for the optimiser: duplicated computations, constant subexpressions,
//! identity ops (`x * 1`, `reshape` to the same shape, ...) and dead nodes. Several outputs.
//! The same seed always gives the same graph and input values.
//!
//! With the `proptest` feature, [`arb_case`] wraps it as a proptest `Strategy`.

use crate::eval::Tensor;
use crate::op::{BinaryOp, CmpOp, ReduceOp, UnaryOp};
use crate::print::print_graph;
use crate::{DType, Graph, NodeId, Op, Shape, TensorType};
use std::collections::HashMap;
use std::fmt;

/// A small deterministic PRNG (SplitMix64), so tests need no `rand` dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x853c_49e6_748f_ea9b)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A tensor of the given type filled with random values: floats uniform in [-2, 2), ints in
/// `0..int_bound`, bools 0/1.
pub fn random_tensor(rng: &mut Rng, ty: &TensorType, int_bound: usize) -> Tensor {
    let data = (0..ty.numel())
        .map(|_| match ty.dtype {
            DType::Bool => rng.below(2) as f64,
            DType::I32 | DType::I64 => rng.below(int_bound.max(1)) as f64,
            _ => rng.uniform(-2.0, 2.0),
        })
        .collect();
    Tensor::new(ty.clone(), data)
}

#[derive(Clone, Debug, PartialEq)]
pub struct RandomGraphOptions {
    /// Number of generation steps (each adds one to a few nodes).
    pub num_ops: usize,
    /// Largest rank of generated values (attention operands are always rank 4).
    pub max_rank: usize,
    /// Largest dimension size.
    pub max_dim: usize,
    pub num_outputs: usize,
    /// Probability that a new float leaf is a `Param` (named `p<k>`) rather than an `Input`
    /// (named `x<k>`).
    pub param_probability: f64,
    pub matmul: bool,
    pub attention: bool,
    pub gather: bool,
    /// Emit duplicates, constant expressions and identity ops for the optimiser to remove.
    pub redundancy: bool,
}

impl Default for RandomGraphOptions {
    fn default() -> Self {
        RandomGraphOptions {
            num_ops: 24,
            max_rank: 3,
            max_dim: 4,
            num_outputs: 3,
            param_probability: 0.3,
            matmul: true,
            attention: true,
            gather: true,
            redundancy: true,
        }
    }
}

/// Generates a random valid graph and values for all of its inputs **and params** (params are in
/// the same map under their names `p<k>`, inputs are `x<k>`, index inputs `idx<k>`, masks
/// `mask<k>`; bind params with `|name| inputs.get(name).cloned()`).
pub fn random_graph(rng_seed: u64, opts: &RandomGraphOptions) -> (Graph, HashMap<String, Tensor>) {
    let mut generator = GraphGenerator {
        rng: Rng::new(rng_seed),
        graph: Graph::new(),
        values: HashMap::new(),
        pool: Vec::new(),
        magnitude_bound: Vec::new(),
        leaves: 0,
        opts: opts.clone(),
    };
    generator.run();
    (generator.graph, generator.values)
}

/// A generated case: the seed, the graph and its bindings (inputs and params).
#[derive(Clone)]
pub struct RandomCase {
    pub seed: u64,
    pub graph: Graph,
    pub inputs: HashMap<String, Tensor>,
}

impl RandomCase {
    pub fn new(seed: u64, opts: &RandomGraphOptions) -> Self {
        let (graph, inputs) = random_graph(seed, opts);
        RandomCase {
            seed,
            graph,
            inputs,
        }
    }

    /// Param lookup over the case's bindings.
    pub fn param(&self, name: &str) -> Option<Tensor> {
        self.inputs.get(name).cloned()
    }
}

impl fmt::Debug for RandomCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "RandomCase {{ seed: {} }}", self.seed)?;
        f.write_str(&print_graph(&self.graph))
    }
}

/// A random graph built around concats whose operands are contiguous slices of the result, for
/// the memory planner's concat-in-place placement: `concat([a, b, ...], 1)` of `[B, S_i, W]` (or
/// `[B, S_i, 4, W / 4]`) values, mostly `B = 1` and `W = 64` f32 (one aligned 256-byte row per
/// token), sometimes `B = 2` or an odd `W`. Operands come from inputs, params, elementwise ops,
/// matmuls, reductions, nested concats, or repeat an earlier operand, some through reshapes; the
/// concat feeds an attention (rank 4), a matmul or an elementwise op; operands and the concat are
/// sometimes read again afterwards or are graph outputs. Inputs `x<k>`, params `p<k>`.
pub fn random_concat_case(seed: u64) -> RandomCase {
    let mut rng = Rng::new(seed);
    let mut g = Graph::new();
    let mut values: HashMap<String, Tensor> = HashMap::new();
    let mut leaves = 0;
    let mut leaf = |g: &mut Graph, rng: &mut Rng, param: bool, shape: &[usize]| -> NodeId {
        leaves += 1;
        let ty = TensorType::new(DType::F32, shape);
        let name = format!("{}{leaves}", if param { "p" } else { "x" });
        values.insert(name.clone(), random_tensor(rng, &ty, 1));
        if param {
            g.param(&name, ty)
        } else {
            g.input(&name, ty)
        }
    };
    let add = |g: &mut Graph, op: Op, args: &[NodeId]| -> NodeId {
        g.add(op, args)
            .unwrap_or_else(|e| panic!("random_concat_case built an ill-typed graph: {e}"))
    };
    let batch = if rng.chance(0.25) { 2 } else { 1 };
    let width = if rng.chance(0.15) { 3 } else { 64 };
    let rank4 = width == 64 && rng.chance(0.5);
    let heads = |s: usize| -> Vec<usize> {
        if rank4 {
            vec![batch, s, 4, width / 4]
        } else {
            vec![batch, s, width]
        }
    };
    let n = rng.range(2, 3);
    let mut operands: Vec<(NodeId, usize)> = Vec::new();
    for _ in 0..n {
        let s = rng.range(1, 3);
        let kind = rng.below(8);
        let flat = [batch, s, width];
        let x = match kind {
            0 => leaf(&mut g, &mut rng, false, &flat),
            1 => leaf(&mut g, &mut rng, true, &flat),
            2 => {
                let x = leaf(&mut g, &mut rng, false, &flat);
                add(&mut g, Op::Unary(UnaryOp::Tanh), &[x])
            }
            3 => {
                let x = leaf(&mut g, &mut rng, false, &[batch, s, 8]);
                let w = leaf(&mut g, &mut rng, true, &[8, width]);
                let m = add(
                    &mut g,
                    Op::MatMul {
                        transpose_a: false,
                        transpose_b: false,
                    },
                    &[x, w],
                );
                add(&mut g, Op::Unary(UnaryOp::Tanh), &[m])
            }
            4 => {
                let x = leaf(&mut g, &mut rng, false, &[batch, s, width, 2]);
                add(
                    &mut g,
                    Op::Reduce {
                        op: ReduceOp::Max,
                        axes: Shape::from_slice(&[3]),
                    },
                    &[x],
                )
            }
            5 if !operands.is_empty() => {
                let &(x, s) = rng.pick(&operands);
                operands.push((x, s));
                continue;
            }
            _ => {
                // A nested concat of two computed values.
                let s2 = rng.range(1, 2);
                let a = leaf(&mut g, &mut rng, false, &[batch, s, width]);
                let a = add(&mut g, Op::Unary(UnaryOp::Sin), &[a]);
                let b = leaf(&mut g, &mut rng, false, &[batch, s2, width]);
                let b = add(&mut g, Op::Unary(UnaryOp::Cos), &[b]);
                let c = add(&mut g, Op::Concat { axis: 1 }, &[a, b]);
                operands.push((c, s + s2));
                if rank4 {
                    let last = operands.len() - 1;
                    let shape = Shape::from_slice(&heads(s + s2));
                    operands[last].0 = add(&mut g, Op::Reshape { shape }, &[c]);
                }
                continue;
            }
        };
        let x = if rank4 {
            let shape = Shape::from_slice(&heads(s));
            add(&mut g, Op::Reshape { shape }, &[x])
        } else {
            x
        };
        operands.push((x, s));
    }
    let args: Vec<NodeId> = operands.iter().map(|o| o.0).collect();
    let total: usize = operands.iter().map(|o| o.1).sum();
    let cat = add(&mut g, Op::Concat { axis: 1 }, &args);
    let consumer = match rng.below(3) {
        0 if rank4 => {
            let t = add(&mut g, Op::Unary(UnaryOp::Tanh), &[cat]);
            add(&mut g, Op::Attention { scale: 0.25 }, &[t, cat, cat])
        }
        1 => {
            let w = leaf(&mut g, &mut rng, true, &[width, 5]);
            let flat = add(
                &mut g,
                Op::Reshape {
                    shape: Shape::from_slice(&[batch, total, width]),
                },
                &[cat],
            );
            add(
                &mut g,
                Op::MatMul {
                    transpose_a: false,
                    transpose_b: false,
                },
                &[flat, w],
            )
        }
        _ => add(&mut g, Op::Unary(UnaryOp::Exp), &[cat]),
    };
    g.set_output("y", consumer);
    // Later readers: each runs after the consumer (it reads the consumer's result too).
    let axes: Shape = (0..g.ty(consumer).rank()).collect();
    let probe = add(
        &mut g,
        Op::Reduce {
            op: ReduceOp::Sum,
            axes,
        },
        &[consumer],
    );
    for (k, &(x, _)) in operands.iter().enumerate() {
        match rng.below(5) {
            0 => g.set_output(&format!("operand{k}"), x),
            1 => {
                let shape = g.ty(x).shape.clone();
                let pb = add(&mut g, Op::Broadcast { shape }, &[probe]);
                let y = add(&mut g, Op::Binary(BinaryOp::Mul), &[x, pb]);
                g.set_output(&format!("later{k}"), y);
            }
            _ => {}
        }
    }
    if rng.chance(0.2) {
        g.set_output("cat", cat);
    } else if rng.chance(0.3) {
        let shape = g.ty(cat).shape.clone();
        let pb = add(&mut g, Op::Broadcast { shape }, &[probe]);
        let y = add(&mut g, Op::Binary(BinaryOp::Sub), &[cat, pb]);
        g.set_output("cat_later", y);
    }
    RandomCase {
        seed,
        graph: g,
        inputs: values,
    }
}

/// The DiT's joint attention in miniature: text `x1: [B, 3, 128]` and image `x2: [B, 5, 128]`
/// tokens projected by params `p3..p8` to q, k (`tanh` / `sigmoid` of the projection: elementwise
/// producers) and v (the bare projection: a library output seen through a reshape), split into 2
/// heads of 64, concatenated text-first along the sequence (`concat(.., 1)` on `[B, S, 2, 64]`)
/// and fed to one attention; output `y`. A token row is 512 bytes in f32 and 256 in bf16, so with
/// `B = 1` each operand is an aligned contiguous slice of its concat.
pub fn joint_attention_case(batch: usize, seed: u64) -> RandomCase {
    let mut rng = Rng::new(seed);
    let mut g = Graph::new();
    let mut values = HashMap::new();
    let mut bind = |g: &mut Graph, name: &str, shape: &[usize], param: bool| {
        let ty = TensorType::new(DType::F32, shape);
        values.insert(name.to_string(), random_tensor(&mut rng, &ty, 1));
        if param {
            g.param(name, ty)
        } else {
            g.input(name, ty)
        }
    };
    let add = |g: &mut Graph, op: Op, args: &[NodeId]| g.add(op, args).expect("well-typed");
    let streams = [
        bind(&mut g, "x1", &[batch, 3, 128], false),
        bind(&mut g, "x2", &[batch, 5, 128], false),
    ];
    let mut qkv = [[NodeId(0); 2]; 3];
    for (k, &x) in streams.iter().enumerate() {
        let s = g.ty(x).shape[1];
        for (j, slot) in qkv.iter_mut().enumerate() {
            let w = bind(&mut g, &format!("p{}", 3 + 3 * k + j), &[128, 128], true);
            let mm = Op::MatMul {
                transpose_a: false,
                transpose_b: false,
            };
            let m = add(&mut g, mm, &[x, w]);
            let heads = Op::Reshape {
                shape: Shape::from_slice(&[batch, s, 2, 64]),
            };
            let r = add(&mut g, heads, &[m]);
            slot[k] = match j {
                0 => add(&mut g, Op::Unary(UnaryOp::Tanh), &[r]),
                1 => add(&mut g, Op::Unary(UnaryOp::Sigmoid), &[r]),
                _ => r,
            };
        }
    }
    let [q, k, v] = qkv.map(|pair| add(&mut g, Op::Concat { axis: 1 }, &pair));
    let y = add(&mut g, Op::Attention { scale: 0.125 }, &[q, k, v]);
    g.set_output("y", y);
    RandomCase {
        seed,
        graph: g,
        inputs: values,
    }
}

/// A proptest strategy producing [`RandomCase`]s (shrinking is by seed only).
#[cfg(feature = "proptest")]
pub fn arb_case(opts: RandomGraphOptions) -> impl proptest::strategy::Strategy<Value = RandomCase> {
    use proptest::strategy::Strategy;
    proptest::arbitrary::any::<u64>().prop_map(move |seed| RandomCase::new(seed, &opts))
}

struct GraphGenerator {
    rng: Rng,
    graph: Graph,
    values: HashMap<String, Tensor>,
    /// Float values available as operands.
    pool: Vec<NodeId>,
    /// Rough bound on |value| per node id.
    magnitude_bound: Vec<f64>,
    leaves: usize,
    opts: RandomGraphOptions,
}

impl GraphGenerator {
    fn add(&mut self, op: Op, args: &[NodeId], magnitude: f64) -> NodeId {
        let mnemonic = op.mnemonic();
        let id = self
            .graph
            .add(op, args)
            .unwrap_or_else(|e| panic!("random_graph built an ill-typed {mnemonic}: {e}"));
        self.magnitude_bound.resize(self.graph.len(), 0.0);
        self.magnitude_bound[id.index()] = magnitude;
        if self.graph.ty(id).dtype == DType::F32 {
            self.pool.push(id);
        }
        id
    }

    fn magnitude(&self, id: NodeId) -> f64 {
        self.magnitude_bound[id.index()]
    }

    fn shape_of(&self, id: NodeId) -> Shape {
        self.graph.ty(id).shape.clone()
    }

    fn random_shape(&mut self) -> Shape {
        let rank = self.rng.range(0, self.opts.max_rank);
        (0..rank)
            .map(|_| self.rng.range(1, self.opts.max_dim))
            .collect()
    }

    fn leaf(&mut self, ty: TensorType) -> NodeId {
        self.leaves += 1;
        let k = self.leaves;
        let (name, op) = if ty.dtype == DType::F32 && self.rng.chance(self.opts.param_probability) {
            let name = format!("p{k}");
            (
                name.clone(),
                Op::Param {
                    name,
                    ty: ty.clone(),
                },
            )
        } else {
            let name = match ty.dtype {
                DType::Bool => format!("mask{k}"),
                DType::I32 | DType::I64 => format!("idx{k}"),
                _ => format!("x{k}"),
            };
            (
                name.clone(),
                Op::Input {
                    name,
                    ty: ty.clone(),
                },
            )
        };
        let t = random_tensor(&mut self.rng, &ty, 1);
        self.values.insert(name, t);
        self.add(op, &[], 2.0)
    }

    fn float_leaf(&mut self, shape: &[usize]) -> NodeId {
        self.leaf(TensorType::new(DType::F32, shape))
    }

    fn constant(&mut self, value: f64, shape: &[usize]) -> NodeId {
        let c = self.add(
            Op::Constant {
                value,
                dtype: DType::F32,
            },
            &[],
            value.abs(),
        );
        if shape.is_empty() {
            c
        } else {
            self.add(
                Op::Broadcast {
                    shape: Shape::from_slice(shape),
                },
                &[c],
                value.abs(),
            )
        }
    }

    fn any_value(&mut self) -> NodeId {
        if self.pool.is_empty() || self.rng.chance(0.1) {
            let shape = self.random_shape();
            return self.float_leaf(&shape);
        }
        // Prefer recent values so graphs grow deep rather than wide.
        let n = self.pool.len();
        let i = if self.rng.chance(0.6) {
            n - 1 - self.rng.below(n.min(4))
        } else {
            self.rng.below(n)
        };
        self.pool[i]
    }

    /// A float value of exactly this shape: an existing one, a reshape of one with as many
    /// elements, or a new leaf.
    fn value_of_shape(&mut self, shape: &[usize]) -> NodeId {
        let same: Vec<NodeId> = self
            .pool
            .iter()
            .copied()
            .filter(|&id| self.graph.ty(id).shape.as_slice() == shape)
            .collect();
        if !same.is_empty() && self.rng.chance(0.7) {
            return *self.rng.pick(&same);
        }
        let numel: usize = shape.iter().product();
        let same_numel: Vec<NodeId> = self
            .pool
            .iter()
            .copied()
            .filter(|&id| self.graph.ty(id).numel() == numel)
            .collect();
        if !same_numel.is_empty() && self.rng.chance(0.6) {
            let src = *self.rng.pick(&same_numel);
            let m = self.magnitude(src);
            return self.add(
                Op::Reshape {
                    shape: Shape::from_slice(shape),
                },
                &[src],
                m,
            );
        }
        self.float_leaf(shape)
    }

    /// `tanh(x)` when x may be large, else x.
    fn bounded(&mut self, x: NodeId) -> NodeId {
        if self.magnitude(x) > 3.0 {
            self.add(Op::Unary(UnaryOp::Tanh), &[x], 1.0)
        } else {
            x
        }
    }

    /// `x * x + 1` (>= 1, smooth).
    fn positive(&mut self, x: NodeId) -> NodeId {
        let x = self.bounded(x);
        let m = self.magnitude(x);
        let sq = self.add(Op::Binary(BinaryOp::Mul), &[x, x], m * m);
        let shape = self.shape_of(x);
        let one = self.constant(1.0, &shape);
        self.add(Op::Binary(BinaryOp::Add), &[sq, one], m * m + 1.0)
    }

    fn run(&mut self) {
        for _ in 0..self.opts.num_ops {
            self.step();
        }
        // Outputs: distinct non-leaf values, preferring recent ones.
        let candidates: Vec<NodeId> = self
            .pool
            .iter()
            .copied()
            .filter(|&id| !self.graph.node(id).op.is_leaf())
            .collect();
        let candidates = if candidates.is_empty() {
            let x = self.any_value();
            let t = self.add(Op::Unary(UnaryOp::Tanh), &[x], 1.0);
            vec![t]
        } else {
            candidates
        };
        let want = self.opts.num_outputs.max(1).min(candidates.len());
        let mut chosen: Vec<NodeId> = vec![*candidates.last().expect("non-empty")];
        let mut tries = 0;
        while chosen.len() < want && tries < 100 {
            tries += 1;
            let c = *self.rng.pick(&candidates);
            if !chosen.contains(&c) {
                chosen.push(c);
            }
        }
        for (i, id) in chosen.into_iter().enumerate() {
            self.graph.set_output(&format!("out{i}"), id);
        }
    }

    fn step(&mut self) {
        let mut kinds: Vec<u8> = vec![0, 0, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9];
        if self.opts.matmul {
            kinds.extend([10, 10]);
        }
        if self.opts.attention {
            kinds.push(11);
        }
        if self.opts.gather {
            kinds.push(12);
        }
        if self.opts.redundancy {
            kinds.extend([13, 14, 15]);
        }
        match *self.rng.pick(&kinds) {
            0 => self.unary(),
            1 => self.binary(),
            2 => self.select(),
            3 => self.reduce(),
            4 => self.reshape(),
            5 => self.broadcast(),
            6 => self.transpose(),
            7 => self.slice(),
            8 => self.concat(),
            9 => self.iota_mix(),
            10 => self.matmul(),
            11 => self.attention(),
            12 => self.gather(),
            13 => self.duplicate(),
            14 => self.constant_expr(),
            _ => self.identity_op(),
        }
    }

    fn unary(&mut self) {
        let x = self.any_value();
        let ops = [
            UnaryOp::Neg,
            UnaryOp::Abs,
            UnaryOp::Exp,
            UnaryOp::Log,
            UnaryOp::Sqrt,
            UnaryOp::Rsqrt,
            UnaryOp::Recip,
            UnaryOp::Sin,
            UnaryOp::Cos,
            UnaryOp::Tanh,
            UnaryOp::Sigmoid,
        ];
        let u = *self.rng.pick(&ops);
        let (arg, mag) = match u {
            UnaryOp::Exp => {
                let b = self.bounded(x);
                (b, self.magnitude(b).exp())
            }
            UnaryOp::Log | UnaryOp::Sqrt => {
                let p = self.positive(x);
                let m = self.magnitude(p);
                (p, m.max(2.0))
            }
            UnaryOp::Rsqrt | UnaryOp::Recip => (self.positive(x), 1.0),
            UnaryOp::Sin | UnaryOp::Cos | UnaryOp::Tanh | UnaryOp::Sigmoid => (x, 1.0),
            _ => (x, self.magnitude(x)),
        };
        self.add(Op::Unary(u), &[arg], mag);
    }

    fn binary(&mut self) {
        let a = self.any_value();
        let shape = self.shape_of(a);
        let b = self.value_of_shape(&shape);
        let ops = [
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::Div,
            BinaryOp::Max,
            BinaryOp::Min,
            BinaryOp::Pow,
        ];
        let op = *self.rng.pick(&ops);
        let (ma, mb) = (self.magnitude(a), self.magnitude(b));
        match op {
            BinaryOp::Mul => {
                let (a, b) = (self.bounded(a), self.bounded(b));
                let m = self.magnitude(a) * self.magnitude(b);
                self.add(Op::Binary(op), &[a, b], m);
            }
            BinaryOp::Div => {
                let d = self.positive(b);
                self.add(Op::Binary(op), &[a, d], ma);
            }
            BinaryOp::Pow => {
                let base = self.positive(a);
                let e = self.bounded(b);
                let m = self.magnitude(base).powf(self.magnitude(e));
                self.add(Op::Binary(op), &[base, e], m);
            }
            _ => {
                self.add(Op::Binary(op), &[a, b], ma + mb);
            }
        }
    }

    fn select(&mut self) {
        let a = self.any_value();
        let shape = self.shape_of(a);
        let b = self.value_of_shape(&shape);
        let cmps = [
            CmpOp::Lt,
            CmpOp::Le,
            CmpOp::Gt,
            CmpOp::Ge,
            CmpOp::Eq,
            CmpOp::Ne,
        ];
        let c = *self.rng.pick(&cmps);
        let cond = self.add(Op::Compare(c), &[a, b], 1.0);
        let x = self.value_of_shape(&shape);
        let y = self.value_of_shape(&shape);
        let m = self.magnitude(x).max(self.magnitude(y));
        self.add(Op::Select, &[cond, x, y], m);
    }

    fn reduce(&mut self) {
        let x = self.any_value();
        let shape = self.shape_of(x);
        if shape.is_empty() {
            return;
        }
        let mut axes: Shape = (0..shape.len()).filter(|_| self.rng.chance(0.5)).collect();
        if axes.is_empty() {
            axes.push(self.rng.below(shape.len()));
        }
        let op = *self
            .rng
            .pick(&[ReduceOp::Sum, ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min]);
        let count: usize = axes.iter().map(|&a| shape[a]).product();
        let m = if op == ReduceOp::Sum {
            self.magnitude(x) * count as f64
        } else {
            self.magnitude(x)
        };
        self.add(Op::Reduce { op, axes }, &[x], m);
    }

    fn reshape(&mut self) {
        let x = self.any_value();
        let numel = self.graph.ty(x).numel();
        // Factor numel and regroup the prime factors into random dims.
        let mut factors = Vec::new();
        let mut n = numel;
        let mut p = 2;
        while n > 1 {
            while n / p * p == n {
                factors.push(p);
                n /= p;
            }
            p += 1;
        }
        let mut dims: Vec<usize> = Vec::new();
        for f in factors {
            if dims.is_empty() || self.rng.chance(0.5) {
                dims.push(f);
            } else {
                let i = self.rng.below(dims.len());
                dims[i] *= f;
            }
        }
        while self.rng.chance(0.3) && dims.len() < 4 {
            let i = self.rng.below(dims.len() + 1);
            dims.insert(i, 1);
        }
        let m = self.magnitude(x);
        self.add(
            Op::Reshape {
                shape: Shape::from_slice(&dims),
            },
            &[x],
            m,
        );
    }

    fn broadcast(&mut self) {
        let x = self.any_value();
        let shape = self.shape_of(x);
        let mut out: Shape = shape
            .iter()
            .map(|&d| {
                if d == 1 {
                    self.rng.range(1, self.opts.max_dim)
                } else {
                    d
                }
            })
            .collect();
        if out.len() < 4 && (out == shape || self.rng.chance(0.5)) {
            out.insert(0, self.rng.range(2, self.opts.max_dim.max(2)));
        }
        let m = self.magnitude(x);
        self.add(Op::Broadcast { shape: out }, &[x], m);
    }

    fn transpose(&mut self) {
        let x = self.any_value();
        let rank = self.graph.ty(x).rank();
        if rank < 2 {
            return;
        }
        let mut perm: Vec<usize> = (0..rank).collect();
        for i in (1..rank).rev() {
            let j = self.rng.below(i + 1);
            perm.swap(i, j);
        }
        let m = self.magnitude(x);
        self.add(
            Op::Transpose {
                perm: Shape::from_slice(&perm),
            },
            &[x],
            m,
        );
    }

    fn slice(&mut self) {
        let x = self.any_value();
        let shape = self.shape_of(x);
        if shape.is_empty() {
            return;
        }
        let axis = self.rng.below(shape.len());
        let start = self.rng.below(shape[axis]);
        let end = self.rng.range(start + 1, shape[axis]);
        let m = self.magnitude(x);
        let s = self.add(Op::Slice { axis, start, end }, &[x], m);
        if self.rng.chance(0.3) && end - start > 1 {
            // slice of slice, for the simplifier
            let s2 = Op::Slice {
                axis,
                start: 1,
                end: end - start,
            };
            self.add(s2, &[s], m);
        }
    }

    fn concat(&mut self) {
        let x = self.any_value();
        let shape = self.shape_of(x);
        if shape.is_empty() {
            return;
        }
        let axis = self.rng.below(shape.len());
        let mut args = vec![x];
        for _ in 0..self.rng.range(1, 2) {
            let mut s = shape.clone();
            s[axis] = self.rng.range(1, self.opts.max_dim);
            let y = if s[axis] <= shape[axis] && self.rng.chance(0.5) {
                self.add(
                    Op::Slice {
                        axis,
                        start: 0,
                        end: s[axis],
                    },
                    &[x],
                    self.magnitude(x),
                )
            } else {
                self.value_of_shape(&s)
            };
            args.push(y);
        }
        let m = args.iter().map(|&a| self.magnitude(a)).fold(0.0, f64::max);
        self.add(Op::Concat { axis }, &args, m);
    }

    fn iota_mix(&mut self) {
        let x = self.any_value();
        let shape = self.shape_of(x);
        if shape.is_empty() {
            return;
        }
        let axis = self.rng.below(shape.len());
        let dtype = *self.rng.pick(&[DType::I32, DType::I64, DType::F32]);
        let iota = self.add(
            Op::Iota {
                shape: shape.clone(),
                axis,
                dtype,
            },
            &[],
            shape[axis] as f64,
        );
        let f = if dtype == DType::F32 {
            iota
        } else {
            self.add(Op::Cast { to: DType::F32 }, &[iota], shape[axis] as f64)
        };
        let m = self.magnitude(x) + shape[axis] as f64;
        self.add(Op::Binary(BinaryOp::Add), &[x, f], m);
    }

    fn matmul(&mut self) {
        let batched = self.rng.chance(0.5);
        let batch: Vec<usize> = if batched {
            vec![self.rng.range(1, 3)]
        } else {
            vec![]
        };
        let (m, k, n) = (
            self.rng.range(1, 4),
            self.rng.range(1, 4),
            self.rng.range(1, 4),
        );
        let (ta, tb) = (self.rng.chance(0.5), self.rng.chance(0.5));
        let shared_b = !batched || self.rng.chance(0.5);
        let mut a_shape = batch.clone();
        a_shape.extend(if ta { [k, m] } else { [m, k] });
        let mut b_shape = if shared_b { vec![] } else { batch.clone() };
        b_shape.extend(if tb { [n, k] } else { [k, n] });
        let a = self.value_of_shape(&a_shape);
        let a = self.bounded(a);
        let b = self.value_of_shape(&b_shape);
        let b = self.bounded(b);
        let mag = self.magnitude(a) * self.magnitude(b) * k as f64;
        self.add(
            Op::MatMul {
                transpose_a: ta,
                transpose_b: tb,
            },
            &[a, b],
            mag,
        );
    }

    fn attention(&mut self) {
        let (b, sq, sk, h) = (
            self.rng.range(1, 2),
            self.rng.range(1, 3),
            self.rng.range(1, 3),
            self.rng.range(1, 2),
        );
        let (d, dv) = (self.rng.range(1, 3), self.rng.range(1, 3));
        let q = self.value_of_shape(&[b, sq, h, d]);
        let q = self.bounded(q);
        let k = self.value_of_shape(&[b, sk, h, d]);
        let k = self.bounded(k);
        let v = self.value_of_shape(&[b, sk, h, dv]);
        let mut args = vec![q, k, v];
        match self.rng.below(3) {
            0 => {}
            1 => {
                let mask = self.leaf(TensorType::new(DType::Bool, &[b, sk]));
                args.push(mask);
            }
            _ => {
                // Causal-style mask from an iota: key j attends if j < limit.
                let iota = self.add(
                    Op::Iota {
                        shape: Shape::from_slice(&[b, sk]),
                        axis: 1,
                        dtype: DType::I32,
                    },
                    &[],
                    sk as f64,
                );
                let limit = self.rng.range(0, sk) as f64;
                let c = self.add(
                    Op::Constant {
                        value: limit,
                        dtype: DType::I32,
                    },
                    &[],
                    limit,
                );
                let cb = self.add(
                    Op::Broadcast {
                        shape: Shape::from_slice(&[b, sk]),
                    },
                    &[c],
                    limit,
                );
                let mask = self.add(Op::Compare(CmpOp::Lt), &[iota, cb], 1.0);
                args.push(mask);
            }
        }
        let scale = 1.0 / (d as f64).sqrt();
        let m = self.magnitude(v);
        self.add(Op::Attention { scale }, &args, m);
    }

    fn gather(&mut self) {
        let table = self.any_value();
        let shape = self.shape_of(table);
        if shape.is_empty() {
            return;
        }
        let axis = self.rng.below(shape.len());
        let index_shape: Vec<usize> = (0..self.rng.range(0, 2))
            .map(|_| self.rng.range(1, 4))
            .collect();
        let dtype = *self.rng.pick(&[DType::I32, DType::I64]);
        let ty = TensorType::new(dtype, &index_shape);
        self.leaves += 1;
        let name = format!("idx{}", self.leaves);
        let t = random_tensor(&mut self.rng, &ty, shape[axis]);
        self.values.insert(name.clone(), t);
        let index = self.add(Op::Input { name, ty }, &[], shape[axis] as f64);
        let m = self.magnitude(table);
        self.add(Op::Gather { axis }, &[table, index], m);
    }

    /// Re-emits an existing non-leaf node with the same operands (for CSE).
    fn duplicate(&mut self) {
        let candidates: Vec<NodeId> = self
            .graph
            .ids()
            .filter(|&id| !self.graph.node(id).op.is_leaf())
            .collect();
        if candidates.is_empty() {
            return;
        }
        let id = *self.rng.pick(&candidates);
        let node = self.graph.node(id).clone();
        let m = self.magnitude(id);
        self.add(node.op, &node.args, m);
    }

    /// A constant subexpression combined with a value (for folding), e.g. `x * (2 + 3)`.
    fn constant_expr(&mut self) {
        let x = self.any_value();
        let shape = self.shape_of(x);
        let c1 = self.rng.uniform(0.5, 2.0);
        let c2 = self.rng.uniform(0.5, 2.0);
        let a = self.constant(c1, &shape);
        let b = self.add(
            Op::Constant {
                value: c2,
                dtype: DType::F32,
            },
            &[],
            c2,
        );
        let b = if shape.is_empty() {
            b
        } else {
            self.add(
                Op::Broadcast {
                    shape: shape.clone(),
                },
                &[b],
                c2,
            )
        };
        let op = *self
            .rng
            .pick(&[BinaryOp::Add, BinaryOp::Mul, BinaryOp::Sub, BinaryOp::Max]);
        let c = self.add(Op::Binary(op), &[a, b], c1 + c2 + c1 * c2);
        let c = match self.rng.below(3) {
            0 => self.add(Op::Unary(UnaryOp::Exp), &[c], (c1 * c2 + c1 + c2).exp()),
            1 => self.add(Op::Unary(UnaryOp::Neg), &[c], c1 * c2 + c1 + c2),
            _ => c,
        };
        let c = self.bounded(c);
        let x = self.bounded(x);
        let m = self.magnitude(x) * self.magnitude(c);
        self.add(Op::Binary(BinaryOp::Mul), &[x, c], m);
    }

    /// An op the simplifier must remove.
    fn identity_op(&mut self) {
        let x = self.any_value();
        let shape = self.shape_of(x);
        let m = self.magnitude(x);
        match self.rng.below(8) {
            0 => {
                let one = self.constant(1.0, &shape);
                self.add(Op::Binary(BinaryOp::Mul), &[x, one], m);
            }
            1 => {
                let zero = self.constant(0.0, &shape);
                self.add(Op::Binary(BinaryOp::Add), &[zero, x], m);
            }
            2 => {
                self.add(Op::Reshape { shape }, &[x], m);
            }
            3 => {
                let rank = shape.len();
                self.add(
                    Op::Transpose {
                        perm: (0..rank).collect(),
                    },
                    &[x],
                    m,
                );
            }
            4 => {
                let n = self.add(Op::Unary(UnaryOp::Neg), &[x], m);
                self.add(Op::Unary(UnaryOp::Neg), &[n], m);
            }
            5 => {
                self.add(Op::Cast { to: DType::F32 }, &[x], m);
            }
            6 => {
                if !shape.is_empty() {
                    let axis = self.rng.below(shape.len());
                    self.add(
                        Op::Slice {
                            axis,
                            start: 0,
                            end: shape[axis],
                        },
                        &[x],
                        m,
                    );
                }
            }
            _ => {
                let rank = shape.len();
                if rank >= 2 {
                    let mut perm: Vec<usize> = (0..rank).collect();
                    perm.swap(0, rank - 1);
                    let t = self.add(
                        Op::Transpose {
                            perm: Shape::from_slice(&perm),
                        },
                        &[x],
                        m,
                    );
                    self.add(
                        Op::Transpose {
                            perm: Shape::from_slice(&perm),
                        },
                        &[t],
                        m,
                    );
                } else {
                    let one = self.constant(1.0, &shape);
                    self.add(Op::Binary(BinaryOp::Div), &[x, one], m);
                }
            }
        }
    }
}
