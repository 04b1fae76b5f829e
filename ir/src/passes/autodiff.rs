//! Reverse-mode automatic differentiation as a graph transform.
//!
//! [`grad`] returns a new graph made of the original nodes (unchanged, same ids), the cotangent
//! seeds, and the backward nodes; its outputs are the original outputs followed by one
//! `grad.<leaf name>` output per selected trainable leaf. The backward graph is an ordinary graph:
//! the verifier, the optimiser, fusion and memory planning treat it like any other.
//!
//! Only nodes on a path from a selected leaf to a seeded output get a cotangent, so frozen weights
//! (e.g. the base model under LoRA training) cost no backward nodes at all. Integer and bool values
//! carry no gradient, nor do `select`'s condition, `gather`'s index and `attention`'s mask.
//! Fan-out is accumulated with `add`.
//!
//! Tie rules (documented in docs/ir.md): binary `max`/`min` route the whole cotangent to the first
//! operand when both are equal; `reduce_max`/`reduce_min` split it evenly between all positions
//! that attain the extremum (like torch `amax`). `abs` has derivative 0 at 0. `pow`'s exponent
//! gradient is `g * y * log(a)`, NaN for a negative base. `conv2d` is not differentiable yet.

use crate::op::{BinaryOp, CmpOp, ReduceOp, UnaryOp};
use crate::{Graph, NodeId, Op, Shape, TensorType};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Where the backward pass starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seeds {
    /// A float output with one element (typically shape `[]`); its cotangent is 1.
    Loss(String),
    /// Each listed float output `o` gets a new graph input `grad.<o>` (of `o`'s type) holding its
    /// cotangent. Outputs not listed get none.
    Cotangents(Vec<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LeafKind {
    Input,
    Param,
}

/// Which leaves get a gradient output.
pub enum Trainable {
    /// Every float param (non-float params are skipped).
    AllParams,
    /// These params (each must exist and be float).
    Params(Vec<String>),
    /// These graph inputs (each must exist and be float).
    Inputs(Vec<String>),
    /// These params and these inputs.
    Leaves {
        params: Vec<String>,
        inputs: Vec<String>,
    },
    /// Every float leaf for which the predicate holds (e.g. names containing `lora_`).
    Filter(LeafFilter),
}

/// A predicate over (leaf kind, leaf name) selecting trainable leaves.
pub type LeafFilter = Box<dyn Fn(LeafKind, &str) -> bool + Send + Sync>;

impl Trainable {
    pub fn filter(f: impl Fn(LeafKind, &str) -> bool + Send + Sync + 'static) -> Self {
        Trainable::Filter(Box::new(f))
    }
}

impl fmt::Debug for Trainable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trainable::AllParams => f.write_str("AllParams"),
            Trainable::Params(p) => f.debug_tuple("Params").field(p).finish(),
            Trainable::Inputs(i) => f.debug_tuple("Inputs").field(i).finish(),
            Trainable::Leaves { params, inputs } => f
                .debug_struct("Leaves")
                .field("params", params)
                .field("inputs", inputs)
                .finish(),
            Trainable::Filter(_) => f.write_str("Filter(..)"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AutodiffError {
    UnknownOutput(String),
    /// The loss output is not a float tensor with exactly one element.
    BadLoss {
        name: String,
        ty: TensorType,
    },
    /// A cotangent seed on a non-float output.
    NotFloatOutput {
        name: String,
        ty: TensorType,
    },
    UnknownLeaf {
        kind: LeafKind,
        name: String,
    },
    /// An explicitly selected leaf is not a float tensor.
    NotFloatLeaf {
        kind: LeafKind,
        name: String,
        ty: TensorType,
    },
    /// A generated name (`grad.<name>`) is already taken.
    NameClash(String),
    /// An op on a path from a trainable leaf to the loss has no gradient rule.
    NotDifferentiable {
        node: NodeId,
        op: String,
        origin: Option<String>,
    },
    /// A gradient rule built an ill-typed node (a bug in this module).
    Internal {
        node: NodeId,
        message: String,
    },
}

impl fmt::Display for AutodiffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AutodiffError::UnknownOutput(n) => write!(f, "no output named \"{n}\""),
            AutodiffError::BadLoss { name, ty } => {
                write!(
                    f,
                    "loss \"{name}\" must be a float tensor with one element, got {ty}"
                )
            }
            AutodiffError::NotFloatOutput { name, ty } => {
                write!(
                    f,
                    "output \"{name}\" is {ty}: only float outputs take cotangents"
                )
            }
            AutodiffError::UnknownLeaf { kind, name } => write!(f, "no {kind:?} named \"{name}\""),
            AutodiffError::NotFloatLeaf { kind, name, ty } => {
                write!(
                    f,
                    "{kind:?} \"{name}\" is {ty}: only float leaves are trainable"
                )
            }
            AutodiffError::NameClash(n) => write!(f, "name \"{n}\" is already used in the graph"),
            AutodiffError::NotDifferentiable { node, op, origin } => {
                write!(f, "node {node} ({op})")?;
                if let Some(o) = origin {
                    write!(f, " at {o}")?;
                }
                write!(f, " is not yet differentiable")
            }
            AutodiffError::Internal { node, message } => {
                write!(f, "internal error in the gradient of {node}: {message}")
            }
        }
    }
}

impl std::error::Error for AutodiffError {}

/// A selected leaf: its name, kind and every node declaring it (a param may be declared twice).
struct Leaf {
    name: String,
    nodes: Vec<NodeId>,
}

fn select_leaves(g: &Graph, wrt: &Trainable) -> Result<Vec<Leaf>, AutodiffError> {
    let mut by_name: Vec<(LeafKind, String, Vec<NodeId>)> = Vec::new();
    let mut index: HashMap<(LeafKind, String), usize> = HashMap::new();
    for id in g.ids() {
        let (kind, name) = match &g.node(id).op {
            Op::Input { name, .. } => (LeafKind::Input, name),
            Op::Param { name, .. } => (LeafKind::Param, name),
            _ => continue,
        };
        let key = (kind, name.clone());
        match index.get(&key) {
            Some(&i) => by_name[i].2.push(id),
            None => {
                index.insert(key, by_name.len());
                by_name.push((kind, name.clone(), vec![id]));
            }
        }
    }
    let float = |nodes: &[NodeId]| g.ty(nodes[0]).dtype.is_float();
    let mut chosen: Vec<Leaf> = Vec::new();
    let pick_named =
        |kind: LeafKind, names: &[String], chosen: &mut Vec<Leaf>| -> Result<(), AutodiffError> {
            for name in names {
                let i = *index.get(&(kind, name.clone())).ok_or_else(|| {
                    AutodiffError::UnknownLeaf {
                        kind,
                        name: name.clone(),
                    }
                })?;
                let nodes = &by_name[i].2;
                if !float(nodes) {
                    return Err(AutodiffError::NotFloatLeaf {
                        kind,
                        name: name.clone(),
                        ty: g.ty(nodes[0]).clone(),
                    });
                }
                chosen.push(Leaf {
                    name: name.clone(),
                    nodes: nodes.clone(),
                });
            }
            Ok(())
        };
    match wrt {
        Trainable::Params(names) => pick_named(LeafKind::Param, names, &mut chosen)?,
        Trainable::Inputs(names) => pick_named(LeafKind::Input, names, &mut chosen)?,
        Trainable::Leaves { params, inputs } => {
            pick_named(LeafKind::Param, params, &mut chosen)?;
            pick_named(LeafKind::Input, inputs, &mut chosen)?;
        }
        Trainable::AllParams | Trainable::Filter(_) => {
            for (kind, name, nodes) in &by_name {
                let keep = match wrt {
                    Trainable::AllParams => *kind == LeafKind::Param,
                    Trainable::Filter(f) => f(*kind, name),
                    _ => unreachable!(),
                };
                if keep && float(nodes) {
                    chosen.push(Leaf {
                        name: name.clone(),
                        nodes: nodes.clone(),
                    });
                }
            }
        }
    }
    Ok(chosen)
}

/// Whether operand `pos` of `op` can carry a gradient (given that it is a float value).
fn differentiable_operand(op: &Op, pos: usize) -> bool {
    match op {
        Op::Select => pos != 0,
        Op::Gather { .. } => pos == 0,
        Op::Attention { .. } => pos < 3,
        _ => true,
    }
}

/// Differentiates `g`: see the module docs. `seeds` picks the loss (or cotangent inputs for
/// non-scalar outputs), `wrt` the leaves that get `grad.<name>` outputs. A selected leaf that does
/// not influence the seeded outputs gets a zero gradient.
pub fn grad(g: &Graph, seeds: &Seeds, wrt: &Trainable) -> Result<Graph, AutodiffError> {
    let n = g.len();
    let mut out = g.clone();

    // Seeds: (forward node, seed value builder input).
    let mut seed_outputs: Vec<(NodeId, Option<String>)> = Vec::new();
    match seeds {
        Seeds::Loss(name) => {
            let id = g
                .output(name)
                .ok_or_else(|| AutodiffError::UnknownOutput(name.clone()))?;
            let ty = g.ty(id);
            if !ty.dtype.is_float() || ty.numel() != 1 {
                return Err(AutodiffError::BadLoss {
                    name: name.clone(),
                    ty: ty.clone(),
                });
            }
            seed_outputs.push((id, None));
        }
        Seeds::Cotangents(names) => {
            let input_names: Vec<&str> = g.inputs().into_iter().map(|(name, _)| name).collect();
            for name in names {
                let id = g
                    .output(name)
                    .ok_or_else(|| AutodiffError::UnknownOutput(name.clone()))?;
                let ty = g.ty(id);
                if !ty.dtype.is_float() {
                    return Err(AutodiffError::NotFloatOutput {
                        name: name.clone(),
                        ty: ty.clone(),
                    });
                }
                let seed_name = format!("grad.{name}");
                if input_names.contains(&seed_name.as_str())
                    || seed_outputs
                        .iter()
                        .any(|(_, s)| s.as_ref() == Some(&seed_name))
                {
                    return Err(AutodiffError::NameClash(seed_name));
                }
                seed_outputs.push((id, Some(seed_name)));
            }
        }
    }

    let leaves = select_leaves(g, wrt)?;
    let mut grad_names: Vec<String> = Vec::new();
    for leaf in &leaves {
        let name = format!("grad.{}", leaf.name);
        if g.output(&name).is_some() || grad_names.contains(&name) {
            return Err(AutodiffError::NameClash(name));
        }
        grad_names.push(name);
    }

    // Which nodes depend on a selected leaf through differentiable float edges...
    let mut from_leaf = vec![false; n];
    for leaf in &leaves {
        for id in &leaf.nodes {
            from_leaf[id.index()] = true;
        }
    }
    for id in g.ids() {
        let node = g.node(id);
        if node.op.is_leaf() || !node.ty.dtype.is_float() {
            continue;
        }
        from_leaf[id.index()] = node
            .args
            .iter()
            .enumerate()
            .any(|(pos, a)| differentiable_operand(&node.op, pos) && from_leaf[a.index()]);
    }
    // ...and which ones the seeded outputs depend on.
    let mut to_seed = vec![false; n];
    for (id, _) in &seed_outputs {
        to_seed[id.index()] = true;
    }
    for id in (0..g.len() as u32).rev().map(NodeId) {
        if to_seed[id.index()] {
            for a in &g.node(id).args {
                to_seed[a.index()] = true;
            }
        }
    }
    let active: Vec<bool> = (0..n).map(|i| from_leaf[i] && to_seed[i]).collect();

    let mut b = Builder {
        g: &mut out,
        node: NodeId(0),
        origin: None,
    };
    let mut cot: Vec<Option<NodeId>> = vec![None; n];
    for (id, seed_name) in &seed_outputs {
        let ty = g.ty(*id).clone();
        let seed = match seed_name {
            Some(name) => b.g.input(name, ty),
            None => {
                b.node = *id;
                b.splat(1.0, &ty)?
            }
        };
        if active[id.index()] {
            b.accumulate(&mut cot, *id, seed)?;
        }
    }

    for id in (0..g.len() as u32).rev().map(NodeId) {
        let Some(gy) = cot[id.index()] else { continue };
        if !active[id.index()] || g.node(id).op.is_leaf() {
            continue;
        }
        b.node = id;
        b.origin = Some(Arc::from(match &g.node(id).origin {
            Some(o) => format!("grad of {o}"),
            None => format!("grad of {id}"),
        }));
        let node = g.node(id);
        let wants: Vec<bool> = node
            .args
            .iter()
            .enumerate()
            .map(|(pos, a)| differentiable_operand(&node.op, pos) && active[a.index()])
            .collect();
        let grads = b.rule(g, id, gy, &wants)?;
        for (pos, ga) in grads.into_iter().enumerate() {
            if let Some(ga) = ga {
                debug_assert!(wants[pos]);
                b.accumulate(&mut cot, node.args[pos], ga)?;
            }
        }
    }

    b.origin = None;
    let mut grad_outputs = Vec::with_capacity(leaves.len());
    for (leaf, name) in leaves.iter().zip(grad_names) {
        let mut total: Option<NodeId> = None;
        for id in &leaf.nodes {
            if let Some(c) = cot[id.index()] {
                b.node = *id;
                total = Some(match total {
                    Some(t) => b.binary(BinaryOp::Add, t, c)?,
                    None => c,
                });
            }
        }
        let value = match total {
            Some(t) => t,
            None => {
                b.node = leaf.nodes[0];
                let ty = g.ty(leaf.nodes[0]).clone();
                b.splat(0.0, &ty)?
            }
        };
        grad_outputs.push((name, value));
    }
    for (name, value) in grad_outputs {
        out.set_output(&name, value);
    }
    Ok(out)
}

/// Emits backward nodes into the graph, attributing errors and origins to the forward node whose
/// gradient is being built.
struct Builder<'a> {
    g: &'a mut Graph,
    node: NodeId,
    origin: Option<Arc<str>>,
}

type R = Result<NodeId, AutodiffError>;

impl Builder<'_> {
    fn add(&mut self, op: Op, args: &[NodeId]) -> R {
        self.g
            .add_with_origin(op, args, self.origin.clone())
            .map_err(|e| AutodiffError::Internal {
                node: self.node,
                message: e.message,
            })
    }

    fn ty(&self, id: NodeId) -> TensorType {
        self.g.ty(id).clone()
    }

    fn accumulate(
        &mut self,
        cot: &mut [Option<NodeId>],
        target: NodeId,
        g: NodeId,
    ) -> Result<(), AutodiffError> {
        cot[target.index()] = Some(match cot[target.index()] {
            Some(prev) => self.binary(BinaryOp::Add, prev, g)?,
            None => g,
        });
        Ok(())
    }

    /// A tensor of type `ty` filled with `value`.
    fn splat(&mut self, value: f64, ty: &TensorType) -> R {
        let c = self.add(
            Op::Constant {
                value,
                dtype: ty.dtype,
            },
            &[],
        )?;
        if ty.rank() == 0 {
            Ok(c)
        } else {
            self.add(
                Op::Broadcast {
                    shape: ty.shape.clone(),
                },
                &[c],
            )
        }
    }

    fn splat_like(&mut self, value: f64, like: NodeId) -> R {
        let ty = self.ty(like);
        self.splat(value, &ty)
    }

    fn unary(&mut self, u: UnaryOp, x: NodeId) -> R {
        self.add(Op::Unary(u), &[x])
    }

    fn binary(&mut self, op: BinaryOp, x: NodeId, y: NodeId) -> R {
        self.add(Op::Binary(op), &[x, y])
    }

    fn mul(&mut self, x: NodeId, y: NodeId) -> R {
        self.binary(BinaryOp::Mul, x, y)
    }

    fn compare(&mut self, c: CmpOp, x: NodeId, y: NodeId) -> R {
        self.add(Op::Compare(c), &[x, y])
    }

    fn select(&mut self, c: NodeId, x: NodeId, y: NodeId) -> R {
        self.add(Op::Select, &[c, x, y])
    }

    fn reshape(&mut self, x: NodeId, shape: &[usize]) -> R {
        if self.g.ty(x).shape.as_slice() == shape {
            return Ok(x);
        }
        self.add(
            Op::Reshape {
                shape: Shape::from_slice(shape),
            },
            &[x],
        )
    }

    fn broadcast(&mut self, x: NodeId, shape: &[usize]) -> R {
        if self.g.ty(x).shape.as_slice() == shape {
            return Ok(x);
        }
        self.add(
            Op::Broadcast {
                shape: Shape::from_slice(shape),
            },
            &[x],
        )
    }

    fn transpose(&mut self, x: NodeId, perm: &[usize]) -> R {
        self.add(
            Op::Transpose {
                perm: Shape::from_slice(perm),
            },
            &[x],
        )
    }

    fn transpose_last2(&mut self, x: NodeId) -> R {
        let r = self.g.ty(x).rank();
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        self.transpose(x, &perm)
    }

    fn reduce(&mut self, op: ReduceOp, x: NodeId, axes: &[usize]) -> R {
        if axes.is_empty() {
            return Ok(x);
        }
        self.add(
            Op::Reduce {
                op,
                axes: Shape::from_slice(axes),
            },
            &[x],
        )
    }

    fn matmul(&mut self, a: NodeId, b: NodeId, transpose_a: bool, transpose_b: bool) -> R {
        self.add(
            Op::MatMul {
                transpose_a,
                transpose_b,
            },
            &[a, b],
        )
    }

    /// Broadcasts a value reduced over `axes` back to `shape` (the unreduced shape).
    fn unreduce(&mut self, v: NodeId, axes: &[usize], shape: &[usize]) -> R {
        let keep: Shape = (0..shape.len())
            .map(|i| if axes.contains(&i) { 1 } else { shape[i] })
            .collect();
        let r = self.reshape(v, &keep)?;
        self.broadcast(r, shape)
    }

    /// Gradients of node `id` (cotangent `gy`) for the operands flagged in `wants`.
    fn rule(
        &mut self,
        g: &Graph,
        id: NodeId,
        gy: NodeId,
        wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, AutodiffError> {
        let node = g.node(id);
        let args = &node.args;
        let mut grads: Vec<Option<NodeId>> = vec![None; args.len()];
        let y = id;
        match &node.op {
            Op::Unary(u) => {
                let x = args[0];
                let gx = match u {
                    UnaryOp::Neg => self.unary(UnaryOp::Neg, gy)?,
                    UnaryOp::Abs => {
                        let zero = self.splat_like(0.0, x)?;
                        let pos = self.compare(CmpOp::Gt, x, zero)?;
                        let neg = self.compare(CmpOp::Lt, x, zero)?;
                        let minus = self.unary(UnaryOp::Neg, gy)?;
                        let inner = self.select(neg, minus, zero)?;
                        self.select(pos, gy, inner)?
                    }
                    UnaryOp::Exp => self.mul(gy, y)?,
                    UnaryOp::Log => self.binary(BinaryOp::Div, gy, x)?,
                    UnaryOp::Sqrt => {
                        let two = self.splat_like(2.0, y)?;
                        let d = self.mul(y, two)?;
                        self.binary(BinaryOp::Div, gy, d)?
                    }
                    UnaryOp::Rsqrt => {
                        let half = self.splat_like(-0.5, y)?;
                        let y2 = self.mul(y, y)?;
                        let y3 = self.mul(y2, y)?;
                        let d = self.mul(half, y3)?;
                        self.mul(gy, d)?
                    }
                    UnaryOp::Recip => {
                        let y2 = self.mul(y, y)?;
                        let t = self.mul(gy, y2)?;
                        self.unary(UnaryOp::Neg, t)?
                    }
                    UnaryOp::Sin => {
                        let c = self.unary(UnaryOp::Cos, x)?;
                        self.mul(gy, c)?
                    }
                    UnaryOp::Cos => {
                        let s = self.unary(UnaryOp::Sin, x)?;
                        let t = self.mul(gy, s)?;
                        self.unary(UnaryOp::Neg, t)?
                    }
                    UnaryOp::Tanh => {
                        let one = self.splat_like(1.0, y)?;
                        let y2 = self.mul(y, y)?;
                        let d = self.binary(BinaryOp::Sub, one, y2)?;
                        self.mul(gy, d)?
                    }
                    UnaryOp::Sigmoid => {
                        let one = self.splat_like(1.0, y)?;
                        let c = self.binary(BinaryOp::Sub, one, y)?;
                        let d = self.mul(y, c)?;
                        self.mul(gy, d)?
                    }
                    UnaryOp::Not => return self.not_differentiable(g, id),
                };
                grads[0] = Some(gx);
            }
            Op::Binary(op) => {
                let (a, b) = (args[0], args[1]);
                match op {
                    BinaryOp::Add => {
                        grads = vec![Some(gy), Some(gy)];
                    }
                    BinaryOp::Sub => {
                        grads[0] = Some(gy);
                        if wants[1] {
                            grads[1] = Some(self.unary(UnaryOp::Neg, gy)?);
                        }
                    }
                    BinaryOp::Mul => {
                        if wants[0] {
                            grads[0] = Some(self.mul(gy, b)?);
                        }
                        if wants[1] {
                            grads[1] = Some(self.mul(gy, a)?);
                        }
                    }
                    BinaryOp::Div => {
                        if wants[0] {
                            grads[0] = Some(self.binary(BinaryOp::Div, gy, b)?);
                        }
                        if wants[1] {
                            let t = self.mul(gy, y)?;
                            let t = self.binary(BinaryOp::Div, t, b)?;
                            grads[1] = Some(self.unary(UnaryOp::Neg, t)?);
                        }
                    }
                    BinaryOp::Max | BinaryOp::Min => {
                        let c = if *op == BinaryOp::Max {
                            CmpOp::Ge
                        } else {
                            CmpOp::Le
                        };
                        let cond = self.compare(c, a, b)?;
                        let zero = self.splat_like(0.0, gy)?;
                        if wants[0] {
                            grads[0] = Some(self.select(cond, gy, zero)?);
                        }
                        if wants[1] {
                            grads[1] = Some(self.select(cond, zero, gy)?);
                        }
                    }
                    BinaryOp::Pow => {
                        if wants[0] {
                            let one = self.splat_like(1.0, b)?;
                            let bm1 = self.binary(BinaryOp::Sub, b, one)?;
                            let p = self.binary(BinaryOp::Pow, a, bm1)?;
                            let d = self.mul(b, p)?;
                            grads[0] = Some(self.mul(gy, d)?);
                        }
                        if wants[1] {
                            let l = self.unary(UnaryOp::Log, a)?;
                            let d = self.mul(y, l)?;
                            grads[1] = Some(self.mul(gy, d)?);
                        }
                    }
                    BinaryOp::FloorDiv | BinaryOp::Rem | BinaryOp::And | BinaryOp::Or => {
                        return self.not_differentiable(g, id)
                    }
                }
            }
            Op::Select => {
                let cond = args[0];
                let zero = self.splat_like(0.0, gy)?;
                if wants[1] {
                    grads[1] = Some(self.select(cond, gy, zero)?);
                }
                if wants[2] {
                    grads[2] = Some(self.select(cond, zero, gy)?);
                }
            }
            Op::Cast { .. } => {
                let from = g.ty(args[0]).dtype;
                grads[0] = Some(if from == node.ty.dtype {
                    gy
                } else {
                    self.add(Op::Cast { to: from }, &[gy])?
                });
            }
            Op::Reduce { op, axes } => {
                let x = args[0];
                let shape = g.ty(x).shape.clone();
                grads[0] = Some(match op {
                    ReduceOp::Sum => self.unreduce(gy, axes, &shape)?,
                    ReduceOp::Max | ReduceOp::Min => {
                        // Split evenly between every position attaining the extremum.
                        let yb = self.unreduce(y, axes, &shape)?;
                        let hit = self.compare(CmpOp::Eq, x, yb)?;
                        let mask = self.add(Op::Cast { to: node.ty.dtype }, &[hit])?;
                        let count = self.reduce(ReduceOp::Sum, mask, axes)?;
                        let share = self.binary(BinaryOp::Div, gy, count)?;
                        let share = self.unreduce(share, axes, &shape)?;
                        self.mul(share, mask)?
                    }
                });
            }
            Op::Reshape { .. } => {
                let shape = g.ty(args[0]).shape.clone();
                grads[0] = Some(self.reshape(gy, &shape)?);
            }
            Op::Broadcast { shape: out_shape } => {
                let in_shape = g.ty(args[0]).shape.clone();
                let off = out_shape.len() - in_shape.len();
                let axes: Vec<usize> = (0..out_shape.len())
                    .filter(|&i| i < off || (in_shape[i - off] == 1 && out_shape[i] != 1))
                    .collect();
                let s = self.reduce(ReduceOp::Sum, gy, &axes)?;
                grads[0] = Some(self.reshape(s, &in_shape)?);
            }
            Op::Transpose { perm } => {
                let mut inv = vec![0; perm.len()];
                for (i, &p) in perm.iter().enumerate() {
                    inv[p] = i;
                }
                grads[0] = Some(self.transpose(gy, &inv)?);
            }
            Op::Slice { axis, start, end } => {
                let in_ty = g.ty(args[0]).clone();
                let dim = in_ty.shape[*axis];
                let zeros = |b: &mut Self, len: usize| -> R {
                    let mut shape = in_ty.shape.clone();
                    shape[*axis] = len;
                    b.splat(
                        0.0,
                        &TensorType {
                            dtype: in_ty.dtype,
                            shape,
                        },
                    )
                };
                let mut parts = Vec::new();
                if *start > 0 {
                    parts.push(zeros(self, *start)?);
                }
                parts.push(gy);
                if *end < dim {
                    parts.push(zeros(self, dim - end)?);
                }
                grads[0] = Some(if parts.len() == 1 {
                    gy
                } else {
                    self.add(Op::Concat { axis: *axis }, &parts)?
                });
            }
            Op::Concat { axis } => {
                let mut offset = 0;
                for (pos, a) in args.iter().enumerate() {
                    let len = g.ty(*a).shape[*axis];
                    if wants[pos] {
                        let op = Op::Slice {
                            axis: *axis,
                            start: offset,
                            end: offset + len,
                        };
                        grads[pos] = Some(self.add(op, &[gy])?);
                    }
                    offset += len;
                }
            }
            Op::Gather { axis } => {
                grads[0] = Some(self.gather_grad(g, args[0], args[1], *axis, gy)?);
            }
            Op::MatMul {
                transpose_a,
                transpose_b,
            } => {
                let (ga, gb) =
                    self.matmul_grad(g, args[0], args[1], *transpose_a, *transpose_b, gy, wants)?;
                grads[0] = ga;
                grads[1] = gb;
            }
            Op::Attention { scale } => {
                let mask = args.get(3).copied();
                let [dq, dk, dv] =
                    self.attention_grad(g, [args[0], args[1], args[2]], mask, *scale, gy, wants)?;
                grads[0] = dq;
                grads[1] = dk;
                grads[2] = dv;
            }
            Op::Conv2d { .. } | Op::Compare(_) => return self.not_differentiable(g, id),
            Op::Input { .. } | Op::Param { .. } | Op::Constant { .. } | Op::Iota { .. } => {}
        }
        for (pos, w) in wants.iter().enumerate() {
            if !w {
                grads[pos] = None;
            }
        }
        Ok(grads)
    }

    fn not_differentiable<T>(&self, g: &Graph, id: NodeId) -> Result<T, AutodiffError> {
        let node = g.node(id);
        Err(AutodiffError::NotDifferentiable {
            node: id,
            op: node.op.mnemonic(),
            origin: node.origin.as_deref().map(str::to_string),
        })
    }

    /// Scatter-add expressed as a one-hot matmul: `onehot[m, j] = (index[m] == j)`.
    fn gather_grad(
        &mut self,
        g: &Graph,
        table: NodeId,
        index: NodeId,
        axis: usize,
        gy: NodeId,
    ) -> R {
        let t = g.ty(table).clone();
        let it = g.ty(index).clone();
        let p: usize = t.shape[..axis].iter().product();
        let n = t.shape[axis];
        let q: usize = t.shape[axis + 1..].iter().product();
        let m = it.numel();
        let col = self.reshape(index, &[m, 1])?;
        let idx = self.broadcast(col, &[m, n])?;
        let iota = self.add(
            Op::Iota {
                shape: Shape::from_slice(&[m, n]),
                axis: 1,
                dtype: it.dtype,
            },
            &[],
        )?;
        let hit = self.compare(CmpOp::Eq, idx, iota)?;
        let onehot = self.add(Op::Cast { to: t.dtype }, &[hit])?;
        let r = if p == 1 {
            let g2 = self.reshape(gy, &[m, q])?;
            self.matmul(onehot, g2, true, false)?
        } else {
            let g3 = self.reshape(gy, &[p, m, q])?;
            let gt = self.transpose(g3, &[0, 2, 1])?;
            let r = self.matmul(gt, onehot, false, false)?;
            self.transpose(r, &[0, 2, 1])?
        };
        self.reshape(r, &t.shape)
    }

    #[allow(clippy::too_many_arguments)]
    fn matmul_grad(
        &mut self,
        g: &Graph,
        a: NodeId,
        b: NodeId,
        ta: bool,
        tb: bool,
        gy: NodeId,
        wants: &[bool],
    ) -> Result<(Option<NodeId>, Option<NodeId>), AutodiffError> {
        let (ra, rb) = (g.ty(a).rank(), g.ty(b).rank());
        let shared_b = rb == 2 && ra > 2;
        let mut ga = None;
        let mut gb = None;
        if wants[0] {
            ga = Some(if !ta {
                self.matmul(gy, b, false, !tb)?
            } else if !shared_b {
                self.matmul(b, gy, tb, true)?
            } else {
                let d = self.matmul(gy, b, false, !tb)?;
                self.transpose_last2(d)?
            });
        }
        if wants[1] {
            gb = Some(if !shared_b {
                if !tb {
                    self.matmul(a, gy, !ta, false)?
                } else {
                    self.matmul(gy, a, true, ta)?
                }
            } else {
                // b is shared by every batch: flatten the batch into the rows and sum through K.
                let gty = self.ty(gy);
                let rows: usize = gty.shape[..gty.rank() - 1].iter().product();
                let nn = gty.shape[gty.rank() - 1];
                let a_rows = if ta { self.transpose_last2(a)? } else { a };
                let k = g.ty(a).shape[if ta { ra - 2 } else { ra - 1 }];
                let a_flat = self.reshape(a_rows, &[rows, k])?;
                let g_flat = self.reshape(gy, &[rows, nn])?;
                if !tb {
                    self.matmul(a_flat, g_flat, true, false)?
                } else {
                    self.matmul(g_flat, a_flat, true, false)?
                }
            });
        }
        Ok((ga, gb))
    }

    /// Attention backward, recomputing the probabilities from the primal q, k, v.
    #[allow(clippy::too_many_arguments)]
    fn attention_grad(
        &mut self,
        g: &Graph,
        [q, k, v]: [NodeId; 3],
        mask: Option<NodeId>,
        scale: f64,
        gy: NodeId,
        wants: &[bool],
    ) -> Result<[Option<NodeId>; 3], AutodiffError> {
        const BHS: [usize; 4] = [0, 2, 1, 3];
        let qt_ = g.ty(q).clone();
        let (bsz, sq, h) = (qt_.shape[0], qt_.shape[1], qt_.shape[2]);
        let sk = g.ty(k).shape[1];
        let dtype = qt_.dtype;
        let scores_shape = [bsz, h, sq, sk];
        let row_ty = TensorType::new(dtype, &[bsz, h, sq]);
        let qt = self.transpose(q, &BHS)?;
        let kt = self.transpose(k, &BHS)?;
        let vt = self.transpose(v, &BHS)?;
        let gt = self.transpose(gy, &BHS)?;

        let raw = self.matmul(qt, kt, false, true)?;
        let sc = self.splat(scale, &TensorType::new(dtype, &scores_shape))?;
        let s = self.mul(raw, sc)?;
        let mask_b = match mask {
            Some(m) => {
                let m4 = self.reshape(m, &[bsz, 1, 1, sk])?;
                Some(self.broadcast(m4, &scores_shape)?)
            }
            None => None,
        };
        let s = match mask_b {
            Some(mb) => {
                let ninf = self.splat(f64::NEG_INFINITY, &TensorType::new(dtype, &scores_shape))?;
                self.select(mb, s, ninf)?
            }
            None => s,
        };
        let mut mx = self.reduce(ReduceOp::Max, s, &[3])?;
        if mask.is_some() {
            // Rows with every key masked: use 0 as the stabiliser (their exp() are all 0).
            let ninf = self.splat(f64::NEG_INFINITY, &row_ty)?;
            let zero = self.splat(0.0, &row_ty)?;
            let all_masked = self.compare(CmpOp::Eq, mx, ninf)?;
            mx = self.select(all_masked, zero, mx)?;
        }
        let mxb = self.unreduce(mx, &[3], &scores_shape)?;
        let shifted = self.binary(BinaryOp::Sub, s, mxb)?;
        let e = self.unary(UnaryOp::Exp, shifted)?;
        let mut z = self.reduce(ReduceOp::Sum, e, &[3])?;
        if mask.is_some() {
            let zero = self.splat(0.0, &row_ty)?;
            let one = self.splat(1.0, &row_ty)?;
            let empty = self.compare(CmpOp::Eq, z, zero)?;
            z = self.select(empty, one, z)?;
        }
        let zb = self.unreduce(z, &[3], &scores_shape)?;
        let p = self.binary(BinaryOp::Div, e, zb)?;

        let mut out = [None, None, None];
        if wants[2] {
            let dvt = self.matmul(p, gt, true, false)?;
            out[2] = Some(self.transpose(dvt, &BHS)?);
        }
        if wants[0] || wants[1] {
            let dp = self.matmul(gt, vt, false, true)?;
            let pdp = self.mul(p, dp)?;
            let rowdot = self.reduce(ReduceOp::Sum, pdp, &[3])?;
            let rowdot_b = self.unreduce(rowdot, &[3], &scores_shape)?;
            let centered = self.binary(BinaryOp::Sub, dp, rowdot_b)?;
            let ds = self.mul(p, centered)?;
            let ds = self.mul(ds, sc)?;
            if wants[0] {
                let dqt = self.matmul(ds, kt, false, false)?;
                out[0] = Some(self.transpose(dqt, &BHS)?);
            }
            if wants[1] {
                let dkt = self.matmul(ds, qt, true, false)?;
                out[1] = Some(self.transpose(dkt, &BHS)?);
            }
        }
        Ok(out)
    }
}
