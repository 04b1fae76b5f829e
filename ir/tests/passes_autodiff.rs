//! Reverse-mode autodiff checked against central finite differences (f64 reference interpreter),
//! on random graphs and on crafted graphs covering every gradient rule; frozen leaves cost nothing.

use proptest::prelude::*;
use qie_ir::eval::{eval, Tensor};
use qie_ir::passes::{grad, optimize, AutodiffError, LeafKind, Seeds, Trainable};
use qie_ir::print::print_graph;
use qie_ir::testing::{arb_case, random_tensor, RandomCase, RandomGraphOptions, Rng};
use qie_ir::{
    shape, verify, BinaryOp, CmpOp, DType, Graph, NodeId, Op, ReduceOp, Shape, TensorType, UnaryOp,
};
use std::collections::HashMap;
use std::sync::Arc;

type Bindings = HashMap<String, Tensor>;

fn f32t(dims: &[usize]) -> TensorType {
    TensorType::new(DType::F32, dims)
}

fn run(g: &Graph, b: &Bindings) -> HashMap<String, Tensor> {
    eval(g, b, &|n| b.get(n).cloned()).unwrap_or_else(|e| panic!("eval: {e}\n{}", print_graph(g)))
}

/// Appends `loss = sum_i sum(out_i * lw_i)` (random weights `lw<i>`, bound in `b`) and returns the
/// graph with the loss as an extra output.
fn with_loss(g: &Graph, b: &mut Bindings, rng: &mut Rng) -> Graph {
    let mut g = g.clone();
    let outs: Vec<NodeId> = g
        .outputs
        .iter()
        .map(|(_, id)| *id)
        .filter(|id| g.ty(*id).dtype == DType::F32)
        .collect();
    let mut total: Option<NodeId> = None;
    for (i, o) in outs.into_iter().enumerate() {
        let ty = g.ty(o).clone();
        let name = format!("lw{i}");
        b.insert(name.clone(), random_tensor(rng, &ty, 1));
        let w = g.input(&name, ty.clone());
        let m = g.add(Op::Binary(BinaryOp::Mul), &[o, w]).unwrap();
        let axes: Shape = (0..ty.rank()).collect();
        let s = if axes.is_empty() {
            m
        } else {
            g.add(
                Op::Reduce {
                    op: ReduceOp::Sum,
                    axes,
                },
                &[m],
            )
            .unwrap()
        };
        total = Some(match total {
            Some(t) => g.add(Op::Binary(BinaryOp::Add), &[t, s]).unwrap(),
            None => s,
        });
    }
    g.set_output("loss", total.expect("graph has a float output"));
    g
}

fn close(a: f64, b: f64, rtol: f64, atol: f64) -> bool {
    (a - b).abs() <= atol + rtol * a.abs().max(b.abs())
}

struct GradCheck {
    /// Elements checked, elements skipped as non-smooth.
    checked: usize,
    skipped: usize,
}

/// Compares `grad.<name>` of `dg` with central differences of the `loss` output of `g`, for the
/// float leaves `names` (inputs or params, all bound in `b`). At most `per_leaf` elements of each
/// leaf are checked one by one; a random directional derivative covers all of them together.
fn gradcheck(
    g: &Graph,
    dg: &Graph,
    b: &Bindings,
    names: &[String],
    per_leaf: usize,
    rng: &mut Rng,
) -> Result<GradCheck, String> {
    verify(dg).map_err(|e| format!("backward graph invalid: {e}"))?;
    let loss_of = |b: &Bindings| run(g, b)["loss"].data[0];
    let grads = run(dg, b);
    let base = loss_of(b);
    let (rtol, atol) = (1e-5, 1e-7 * (1.0 + base.abs()));
    let fd = |name: &str, dir: &dyn Fn(usize) -> f64, h: f64| {
        let mut plus = b.clone();
        let mut minus = b.clone();
        for (i, v) in plus.get_mut(name).unwrap().data.iter_mut().enumerate() {
            *v += h * dir(i);
        }
        for (i, v) in minus.get_mut(name).unwrap().data.iter_mut().enumerate() {
            *v -= h * dir(i);
        }
        (loss_of(&plus) - loss_of(&minus)) / (2.0 * h)
    };
    let mut report = GradCheck {
        checked: 0,
        skipped: 0,
    };
    for name in names {
        let gname = format!("grad.{name}");
        let gv = grads
            .get(&gname)
            .ok_or_else(|| format!("missing output {gname}"))?;
        let leaf = &b[name];
        if gv.ty != leaf.ty {
            return Err(format!("{gname} is {} but the leaf is {}", gv.ty, leaf.ty));
        }
        let n = leaf.numel();
        let picks: Vec<usize> = if n <= per_leaf {
            (0..n).collect()
        } else {
            (0..per_leaf).map(|_| rng.below(n)).collect()
        };
        for i in picks {
            let unit = |j: usize| if j == i { 1.0 } else { 0.0 };
            let ad = gv.data[i];
            let f1 = fd(name, &unit, 1e-6);
            if close(ad, f1, rtol, atol) {
                report.checked += 1;
                continue;
            }
            // Disagreement: a kink or jump within the step shows as finite differences that
            // depend on the step size; a wrong gradient does not.
            let f2 = fd(name, &unit, 1e-5);
            if !close(f1, f2, 1e-4, 10.0 * atol) {
                report.skipped += 1;
                continue;
            }
            return Err(format!("d loss / d {name}[{i}]: autodiff {ad}, finite differences {f1} (h=1e-6), {f2} (h=1e-5)"));
        }
        // Directional derivative along a random direction.
        let dir: Vec<f64> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let ad: f64 = dir.iter().zip(&gv.data).map(|(u, g)| u * g).sum();
        let f1 = fd(name, &|j| dir[j], 1e-6);
        if !close(ad, f1, rtol, atol) {
            let f2 = fd(name, &|j| dir[j], 1e-5);
            if close(f1, f2, 1e-4, 10.0 * atol) {
                return Err(format!(
                    "directional derivative along {name}: autodiff {ad}, finite differences {f1}"
                ));
            }
            report.skipped += 1;
        }
    }
    Ok(report)
}

fn fd_opts() -> RandomGraphOptions {
    RandomGraphOptions {
        num_ops: 14,
        max_dim: 3,
        ..Default::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn autodiff_matches_finite_differences(case in arb_case(fd_opts())) {
        let RandomCase { seed, graph, mut inputs } = case;
        let mut rng = Rng::new(seed ^ 0x5eed);
        let g = with_loss(&graph, &mut inputs, &mut rng);
        let wrt = Trainable::filter(|_, name| !name.starts_with("lw"));
        let dg = grad(&g, &Seeds::Loss("loss".into()), &wrt).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let names: Vec<String> = dg.outputs.iter().filter_map(|(n, _)| n.strip_prefix("grad.").map(str::to_string)).collect();
        let r = gradcheck(&g, &dg, &inputs, &names, 4, &mut rng)
            .map_err(|e| TestCaseError::fail(format!("{e}\nforward:\n{}", print_graph(&g))))?;
        prop_assert!(r.skipped <= r.checked / 4 + 1, "too many non-smooth points: {} skipped, {} checked", r.skipped, r.checked);
        // The optimiser keeps gradients intact.
        let o = optimize(&dg);
        let (a, b) = (run(&dg, &inputs), run(&o, &inputs));
        for (name, va) in &a {
            prop_assert!(va.allclose(&b[name], 1e-9, 1e-12), "{name} changed under optimize");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Backward graphs are ordinary graphs: fusion and memory planning accept them.
    #[test]
    fn backward_graphs_fuse_and_plan(case in arb_case(RandomGraphOptions::default())) {
        use qie_ir::passes::{fuse, plan_memory, FusionOptions, MemoryOptions};
        use qie_ir::passes::fusion::validate_fusion_plan;
        use qie_ir::passes::memplan::validate_memory_plan;
        let g = &case.graph;
        let seeds = Seeds::Cotangents(g.outputs.iter().map(|(n, _)| n.clone()).collect());
        let dg = grad(g, &seeds, &Trainable::filter(|_, _| true)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let dg = optimize(&dg);
        let plan = fuse(&dg, &FusionOptions::default());
        prop_assert!(validate_fusion_plan(&dg, &plan).is_ok(), "{:?}", validate_fusion_plan(&dg, &plan));
        let mem = plan_memory(&dg, &plan, &MemoryOptions::default());
        prop_assert!(validate_memory_plan(&dg, &plan, &mem).is_ok(), "{:?}", validate_memory_plan(&dg, &plan, &mem));
    }
}

/// Builds a graph with output `y` from `build` (which declares its own leaves), adds a random
/// weighted-sum loss, binds every leaf randomly (positive values for leaves named `pos*`, ints
/// via `ints`), differentiates with respect to every float leaf and checks against finite
/// differences. Returns the backward graph.
fn check(build: impl FnOnce(&mut Graph) -> NodeId, ints: &[(&str, Vec<f64>)], seed: u64) -> Graph {
    let mut g = Graph::new();
    let y = build(&mut g);
    g.set_output("y", y);
    verify(&g).unwrap();
    let mut rng = Rng::new(seed);
    let mut b = Bindings::new();
    for id in g.ids() {
        if let Op::Input { name, ty } | Op::Param { name, ty } = &g.node(id).op {
            let mut t = random_tensor(&mut rng, ty, 1);
            if name.starts_with("pos") {
                t.data.iter_mut().for_each(|v| *v = v.abs() + 0.5);
            }
            if let Some((_, data)) = ints.iter().find(|(n, _)| n == name) {
                t.data = data.clone();
            }
            b.insert(name.clone(), t);
        }
    }
    let names: Vec<String> = g
        .ids()
        .filter_map(|id| match &g.node(id).op {
            Op::Input { name, ty } | Op::Param { name, ty } if ty.dtype.is_float() => {
                Some(name.clone())
            }
            _ => None,
        })
        .collect();
    let g = with_loss(&g, &mut b, &mut rng);
    let wrt = Trainable::filter(|_, name| !name.starts_with("lw"));
    let dg = grad(&g, &Seeds::Loss("loss".into()), &wrt).unwrap();
    let r = gradcheck(&g, &dg, &b, &names, 64, &mut rng)
        .unwrap_or_else(|e| panic!("{e}\n{}", print_graph(&dg)));
    assert_eq!(r.skipped, 0, "non-smooth points in a crafted test");
    dg
}

fn un(g: &mut Graph, u: UnaryOp, x: NodeId) -> NodeId {
    g.add(Op::Unary(u), &[x]).unwrap()
}

fn bin(g: &mut Graph, op: BinaryOp, a: NodeId, b: NodeId) -> NodeId {
    g.add(Op::Binary(op), &[a, b]).unwrap()
}

#[test]
fn unary_rules() {
    use UnaryOp::*;
    for (i, u) in [
        Neg, Abs, Exp, Log, Sqrt, Rsqrt, Recip, Sin, Cos, Tanh, Sigmoid,
    ]
    .into_iter()
    .enumerate()
    {
        check(
            |g| {
                let x = g.input("pos_x", f32t(&[2, 3]));
                let z = g.input("z", f32t(&[2, 3]));
                // Abs also sees values of both signs.
                let arg = if u == Abs { z } else { x };
                let y = un(g, u, arg);
                bin(g, BinaryOp::Add, y, z)
            },
            &[],
            i as u64,
        );
    }
}

#[test]
fn binary_rules() {
    use BinaryOp::*;
    for (i, op) in [Add, Sub, Mul, Div, Max, Min, Pow].into_iter().enumerate() {
        check(
            |g| {
                let a = g.input("pos_a", f32t(&[3, 2]));
                let b = g.param("pos_b", f32t(&[3, 2]));
                let y = bin(g, op, a, b);
                // fan-out: use a again
                bin(g, Mul, y, a)
            },
            &[],
            100 + i as u64,
        );
    }
}

#[test]
fn select_reduce_broadcast_views() {
    check(
        |g| {
            let a = g.input("a", f32t(&[2, 3]));
            let b = g.input("b", f32t(&[2, 3]));
            let c = g.add(Op::Compare(CmpOp::Lt), &[a, b]).unwrap();
            g.add(Op::Select, &[c, a, b]).unwrap()
        },
        &[],
        1,
    );
    for (i, op) in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min]
        .into_iter()
        .enumerate()
    {
        for axes in [vec![0], vec![1], vec![0, 2], vec![0, 1, 2]] {
            check(
                |g| {
                    let x = g.input("x", f32t(&[2, 3, 4]));
                    g.add(
                        Op::Reduce {
                            op,
                            axes: Shape::from_slice(&axes),
                        },
                        &[x],
                    )
                    .unwrap()
                },
                &[],
                10 + i as u64,
            );
        }
    }
    check(
        |g| {
            let x = g.input("x", f32t(&[3, 1]));
            let bx = g
                .add(
                    Op::Broadcast {
                        shape: shape(&[2, 3, 4]),
                    },
                    &[x],
                )
                .unwrap();
            let s = g.input("s", f32t(&[]));
            let bs = g
                .add(
                    Op::Broadcast {
                        shape: shape(&[2, 3, 4]),
                    },
                    &[s],
                )
                .unwrap();
            let m = bin(g, BinaryOp::Mul, bx, bs);
            let r = g
                .add(
                    Op::Reshape {
                        shape: shape(&[4, 6]),
                    },
                    &[m],
                )
                .unwrap();
            g.add(
                Op::Transpose {
                    perm: shape(&[1, 0]),
                },
                &[r],
            )
            .unwrap()
        },
        &[],
        2,
    );
    check(
        |g| {
            let x = g.input("x", f32t(&[3, 5]));
            let y = g.input("y", f32t(&[3, 2]));
            let s = g
                .add(
                    Op::Slice {
                        axis: 1,
                        start: 1,
                        end: 3,
                    },
                    &[x],
                )
                .unwrap();
            let s2 = g
                .add(
                    Op::Slice {
                        axis: 1,
                        start: 4,
                        end: 5,
                    },
                    &[x],
                )
                .unwrap();
            let s3 = g
                .add(
                    Op::Slice {
                        axis: 0,
                        start: 0,
                        end: 3,
                    },
                    &[y],
                )
                .unwrap();
            g.add(Op::Concat { axis: 1 }, &[s, y, s2, s3]).unwrap()
        },
        &[],
        3,
    );
}

#[test]
fn reduce_max_ties_split_evenly() {
    // max over 3 broadcast copies of x: d/dx = 1 in total, split 1/3 each then summed back.
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[2]));
    let b = g
        .add(
            Op::Broadcast {
                shape: shape(&[3, 2]),
            },
            &[x],
        )
        .unwrap();
    let m = g
        .add(
            Op::Reduce {
                op: ReduceOp::Max,
                axes: shape(&[0]),
            },
            &[b],
        )
        .unwrap();
    let s = g
        .add(
            Op::Reduce {
                op: ReduceOp::Sum,
                axes: shape(&[0]),
            },
            &[m],
        )
        .unwrap();
    g.set_output("loss", s);
    let dg = grad(
        &g,
        &Seeds::Loss("loss".into()),
        &Trainable::Inputs(vec!["x".into()]),
    )
    .unwrap();
    let b = Bindings::from([("x".to_string(), Tensor::new(f32t(&[2]), vec![0.3, -1.0]))]);
    let out = run(&dg, &b);
    for v in &out["grad.x"].data {
        assert!((v - 1.0).abs() < 1e-12);
    }
    // binary max with equal operands: the first operand takes the whole cotangent.
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[1]));
    let y = g.input("y", f32t(&[1]));
    let m = bin(&mut g, BinaryOp::Max, x, y);
    let s = g
        .add(
            Op::Reduce {
                op: ReduceOp::Sum,
                axes: shape(&[0]),
            },
            &[m],
        )
        .unwrap();
    g.set_output("loss", s);
    let dg = grad(
        &g,
        &Seeds::Loss("loss".into()),
        &Trainable::Inputs(vec!["x".into(), "y".into()]),
    )
    .unwrap();
    let b = Bindings::from([
        ("x".to_string(), Tensor::new(f32t(&[1]), vec![2.0])),
        ("y".to_string(), Tensor::new(f32t(&[1]), vec![2.0])),
    ]);
    let out = run(&dg, &b);
    assert_eq!(out["grad.x"].data, [1.0]);
    assert_eq!(out["grad.y"].data, [0.0]);
}

#[test]
fn gather_rule() {
    // Embedding lookup with repeated indices (axis 0) ...
    check(
        |g| {
            let table = g.param("table", f32t(&[5, 3]));
            let idx = g.input("idx", TensorType::new(DType::I64, &[2, 3]));
            g.add(Op::Gather { axis: 0 }, &[table, idx]).unwrap()
        },
        &[("idx", vec![4.0, 0.0, 4.0, 1.0, 1.0, 4.0])],
        4,
    );
    // ... and a middle axis with outer and inner dims, scalar and vector indices.
    check(
        |g| {
            let table = g.input("table", f32t(&[2, 4, 3]));
            let idx = g.input("idx", TensorType::new(DType::I32, &[3]));
            let s = g.input("s", TensorType::new(DType::I32, &[]));
            let a = g.add(Op::Gather { axis: 1 }, &[table, idx]).unwrap();
            let b = g.add(Op::Gather { axis: 1 }, &[table, s]).unwrap();
            let b = g
                .add(
                    Op::Reshape {
                        shape: shape(&[2, 1, 3]),
                    },
                    &[b],
                )
                .unwrap();
            g.add(Op::Concat { axis: 1 }, &[a, b]).unwrap()
        },
        &[("idx", vec![3.0, 0.0, 3.0]), ("s", vec![2.0])],
        5,
    );
}

#[test]
fn matmul_rules() {
    let mut seed = 20;
    for ta in [false, true] {
        for tb in [false, true] {
            // (a rank, b rank): both rank 2, same batch, shared rank-2 b.
            for (batch_a, batch_b) in [(vec![], vec![]), (vec![2], vec![2]), (vec![2, 2], vec![])] {
                let (m, k, n) = (3, 4, 2);
                let mut sa = batch_a.clone();
                sa.extend(if ta { [k, m] } else { [m, k] });
                let mut sb = batch_b.clone();
                sb.extend(if tb { [n, k] } else { [k, n] });
                seed += 1;
                check(
                    |g| {
                        let a = g.input("a", f32t(&sa));
                        let b = g.param("b", f32t(&sb));
                        g.add(
                            Op::MatMul {
                                transpose_a: ta,
                                transpose_b: tb,
                            },
                            &[a, b],
                        )
                        .unwrap()
                    },
                    &[],
                    seed,
                );
            }
        }
    }
}

#[test]
fn attention_rule() {
    // B=2, Sq=3, Sk=4, H=2, D=3; batch 1 has every key masked. Dv=3 takes the fused
    // AttentionGrad op, Dv=2 the decomposed rule; finite differences check both.
    let mask = vec![1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0];
    for (i, (with_mask, dv)) in [(false, 3), (true, 3), (false, 2), (true, 2)]
        .into_iter()
        .enumerate()
    {
        let dg = check(
            |g| {
                let q = g.param("q", f32t(&[2, 3, 2, 3]));
                let k = g.param("k", f32t(&[2, 4, 2, 3]));
                let v = g.param("v", f32t(&[2, 4, 2, dv]));
                let mut args = vec![q, k, v];
                if with_mask {
                    args.push(g.input("mask", TensorType::new(DType::Bool, &[2, 4])));
                }
                g.add(Op::Attention { scale: 0.7 }, &args).unwrap()
            },
            &[("mask", mask.clone())],
            40 + i as u64,
        );
        let count = |want: fn(&Op) -> bool| dg.nodes.iter().filter(|n| want(&n.op)).count();
        assert_eq!(count(|op| matches!(op, Op::Attention { .. })), 1);
        let fused = count(|op| matches!(op, Op::AttentionGrad { .. }));
        assert_eq!(fused, usize::from(dv == 3), "dv {dv}");
    }
}

#[test]
fn frozen_params_cost_nothing() {
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[2, 3]));
    let w = g.param("base.weight", f32t(&[3, 4]));
    let l = g.param("lora.weight", f32t(&[3, 4]));
    let y1 = g
        .add(
            Op::MatMul {
                transpose_a: false,
                transpose_b: false,
            },
            &[x, w],
        )
        .unwrap();
    let y2 = g
        .add(
            Op::MatMul {
                transpose_a: false,
                transpose_b: false,
            },
            &[x, l],
        )
        .unwrap();
    let y = bin(&mut g, BinaryOp::Add, y1, y2);
    let loss = g
        .add(
            Op::Reduce {
                op: ReduceOp::Sum,
                axes: shape(&[0, 1]),
            },
            &[y],
        )
        .unwrap();
    g.set_output("loss", loss);
    let n = g.len();

    let lora_only =
        Trainable::filter(|kind, name| kind == LeafKind::Param && name.starts_with("lora."));
    let dg = grad(&g, &Seeds::Loss("loss".into()), &lora_only).unwrap();
    verify(&dg).unwrap();
    // seed 1, reshape + broadcast for the sum, one matmul for d lora.weight.
    assert_eq!(dg.len(), n + 4, "{}", print_graph(&dg));
    let names: Vec<&str> = dg.outputs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["loss", "grad.lora.weight"]);
    for id in (n as u32..dg.len() as u32).map(NodeId) {
        let node = dg.node(id);
        assert!(
            !node.args.contains(&w) && !node.args.contains(&y1),
            "backward node {id} touches the frozen branch"
        );
    }
    // All params: one more matmul for the base weight.
    let dg_all = grad(&g, &Seeds::Loss("loss".into()), &Trainable::AllParams).unwrap();
    assert_eq!(dg_all.len(), n + 5);
    assert_eq!(dg_all.outputs.len(), 3);
}

#[test]
fn cotangent_seeds_match_the_loss_form() {
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[2, 3]));
    let w = g.param("w", f32t(&[3, 3]));
    let y = g
        .add(
            Op::MatMul {
                transpose_a: false,
                transpose_b: true,
            },
            &[x, w],
        )
        .unwrap();
    let t = un(&mut g, UnaryOp::Tanh, y);
    g.set_output("t", t);
    g.set_output("y", y);
    let dg = grad(
        &g,
        &Seeds::Cotangents(vec!["t".into(), "y".into()]),
        &Trainable::Params(vec!["w".into()]),
    )
    .unwrap();
    verify(&dg).unwrap();
    assert!(
        dg.inputs().iter().any(|(n, _)| *n == "grad.t")
            && dg.inputs().iter().any(|(n, _)| *n == "grad.y")
    );
    let mut rng = Rng::new(9);
    let mut b = Bindings::new();
    for (name, ty) in [
        ("x", f32t(&[2, 3])),
        ("w", f32t(&[3, 3])),
        ("grad.t", f32t(&[2, 3])),
        ("grad.y", f32t(&[2, 3])),
    ] {
        b.insert(name.into(), random_tensor(&mut rng, &ty, 1));
    }
    let got = run(&dg, &b)["grad.w"].clone();
    // Same thing through a scalar loss sum(t * ct + y * cy).
    let mut gl = g.clone();
    let ct = gl.input("ct", f32t(&[2, 3]));
    let cy = gl.input("cy", f32t(&[2, 3]));
    let a = bin(&mut gl, BinaryOp::Mul, t, ct);
    let c = bin(&mut gl, BinaryOp::Mul, y, cy);
    let s = bin(&mut gl, BinaryOp::Add, a, c);
    let loss = gl
        .add(
            Op::Reduce {
                op: ReduceOp::Sum,
                axes: shape(&[0, 1]),
            },
            &[s],
        )
        .unwrap();
    gl.set_output("loss", loss);
    let dl = grad(
        &gl,
        &Seeds::Loss("loss".into()),
        &Trainable::Params(vec!["w".into()]),
    )
    .unwrap();
    let mut bl = b.clone();
    bl.insert("ct".into(), b["grad.t"].clone());
    bl.insert("cy".into(), b["grad.y"].clone());
    let want = run(&dl, &bl)["grad.w"].clone();
    assert!(got.allclose(&want, 1e-12, 1e-12));
}

#[test]
fn unused_leaves_get_zeros_and_repeated_params_accumulate() {
    let mut g = Graph::new();
    let w1 = g.param("w", f32t(&[2]));
    let w2 = g.param("w", f32t(&[2]));
    let u = g.param("unused", f32t(&[2]));
    let _ = u;
    let p = bin(&mut g, BinaryOp::Mul, w1, w2);
    let s = g
        .add(
            Op::Reduce {
                op: ReduceOp::Sum,
                axes: shape(&[0]),
            },
            &[p],
        )
        .unwrap();
    g.set_output("loss", s);
    let dg = grad(&g, &Seeds::Loss("loss".into()), &Trainable::AllParams).unwrap();
    let b = Bindings::from([
        ("w".to_string(), Tensor::new(f32t(&[2]), vec![3.0, -2.0])),
        (
            "unused".to_string(),
            Tensor::new(f32t(&[2]), vec![1.0, 1.0]),
        ),
    ]);
    let out = run(&dg, &b);
    assert_eq!(out["grad.w"].data, [6.0, -4.0]);
    assert_eq!(out["grad.unused"].data, [0.0, 0.0]);
}

#[test]
fn errors() {
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[1, 1, 3, 3]));
    let w = g.param("w", f32t(&[1, 1, 2, 2]));
    let c = g
        .add_with_origin(
            Op::Conv2d {
                stride: [1, 1],
                padding: [0, 0],
                dilation: [1, 1],
                groups: 1,
            },
            &[x, w],
            Some(Arc::from("vae.qie:12:5 decoder.conv_in")),
        )
        .unwrap();
    let s = g
        .add(
            Op::Reduce {
                op: ReduceOp::Sum,
                axes: shape(&[0, 1, 2, 3]),
            },
            &[c],
        )
        .unwrap();
    g.set_output("loss", s);
    g.set_output("c", c);
    let e = grad(&g, &Seeds::Loss("loss".into()), &Trainable::AllParams).unwrap_err();
    assert!(matches!(e, AutodiffError::NotDifferentiable { node, .. } if node == c));
    assert!(
        e.to_string().contains("decoder.conv_in") && e.to_string().contains("conv2d"),
        "{e}"
    );
    // A frozen conv is fine: nothing to differentiate.
    assert!(grad(&g, &Seeds::Loss("loss".into()), &Trainable::Params(vec![])).is_ok());
    let e = grad(&g, &Seeds::Loss("c".into()), &Trainable::AllParams).unwrap_err();
    assert!(matches!(e, AutodiffError::BadLoss { .. }), "{e}");
    let e = grad(&g, &Seeds::Loss("nope".into()), &Trainable::AllParams).unwrap_err();
    assert!(matches!(e, AutodiffError::UnknownOutput(_)), "{e}");
    let e = grad(
        &g,
        &Seeds::Loss("loss".into()),
        &Trainable::Params(vec!["x".into()]),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            AutodiffError::UnknownLeaf {
                kind: LeafKind::Param,
                ..
            }
        ),
        "{e}"
    );
    let mut g2 = g.clone();
    let i = g2.input("i", TensorType::new(DType::I32, &[2]));
    g2.set_output("i", i);
    let e = grad(
        &g2,
        &Seeds::Loss("loss".into()),
        &Trainable::Inputs(vec!["i".into()]),
    )
    .unwrap_err();
    assert!(matches!(e, AutodiffError::NotFloatLeaf { .. }), "{e}");
}

#[test]
fn cast_gradient_casts_back() {
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[4]));
    let h = g.add(Op::Cast { to: DType::BF16 }, &[x]).unwrap();
    let e = un(&mut g, UnaryOp::Exp, h);
    let s = g
        .add(
            Op::Reduce {
                op: ReduceOp::Sum,
                axes: shape(&[0]),
            },
            &[e],
        )
        .unwrap();
    g.set_output("loss", s);
    let dg = grad(
        &g,
        &Seeds::Loss("loss".into()),
        &Trainable::Inputs(vec!["x".into()]),
    )
    .unwrap();
    verify(&dg).unwrap();
    let gx = dg.output("grad.x").unwrap();
    assert_eq!(dg.ty(gx).dtype, DType::F32);
    assert!(matches!(dg.node(gx).op, Op::Cast { to: DType::F32 }));
    let b = Bindings::from([(
        "x".to_string(),
        Tensor::new(f32t(&[4]), vec![0.1, 0.2, -0.3, 1.0]),
    )]);
    let out = run(&dg, &b);
    for (gv, xv) in out["grad.x"].data.iter().zip(&b["x"].data) {
        let want = half::bf16::from_f64(half::bf16::from_f64(*xv).to_f64().exp()).to_f64();
        assert_eq!(*gv, want);
    }
}
