//! Fusion rules on hand-built graphs (exact group counts and members) and structural invariants
//! on random graphs.

use proptest::prelude::*;
use qie_ir::passes::fusion::{
    fuse, main_space_access, validate_fusion_plan, Access, FusionOptions,
};
use qie_ir::passes::schedule_dump::dump_fusion;
use qie_ir::plan::{FusionPlan, GroupKind};
use qie_ir::testing::{random_graph, RandomGraphOptions};
use qie_ir::{shape, BinaryOp, DType, Graph, NodeId, Op, ReduceOp, TensorType, UnaryOp};

fn f32t(dims: &[usize]) -> TensorType {
    TensorType::new(DType::F32, dims)
}

fn bin(g: &mut Graph, op: BinaryOp, a: NodeId, b: NodeId) -> NodeId {
    g.add(Op::Binary(op), &[a, b]).unwrap()
}

fn un(g: &mut Graph, op: UnaryOp, a: NodeId) -> NodeId {
    g.add(Op::Unary(op), &[a]).unwrap()
}

fn bcast(g: &mut Graph, a: NodeId, dims: &[usize]) -> NodeId {
    g.add(Op::Broadcast { shape: shape(dims) }, &[a]).unwrap()
}

fn reshape(g: &mut Graph, a: NodeId, dims: &[usize]) -> NodeId {
    g.add(Op::Reshape { shape: shape(dims) }, &[a]).unwrap()
}

fn sum(g: &mut Graph, a: NodeId, axes: &[usize]) -> NodeId {
    g.add(
        Op::Reduce {
            op: ReduceOp::Sum,
            axes: shape(axes),
        },
        &[a],
    )
    .unwrap()
}

fn scalar_b(g: &mut Graph, v: f64, dims: &[usize]) -> NodeId {
    let c = g.constant(v, DType::F32);
    bcast(g, c, dims)
}

fn matmul(g: &mut Graph, a: NodeId, b: NodeId) -> NodeId {
    g.add(
        Op::MatMul {
            transpose_a: false,
            transpose_b: false,
        },
        &[a, b],
    )
    .unwrap()
}

/// Per-row vector [B, D] broadcast over the sequence: [B, S, D].
fn row_b(g: &mut Graph, v: NodeId, b: usize, s: usize, d: usize) -> NodeId {
    let r = reshape(g, v, &[b, 1, d]);
    bcast(g, r, &[b, s, d])
}

struct LayerNorm {
    g: Graph,
    x: NodeId,
    mean: NodeId,
    xc: NodeId,
    rstd: NodeId,
    out: NodeId,
}

/// out = r + gate * (layer_norm(x) * (1 + scale) + shift), the DiT's norm-modulate-gate pattern.
fn layer_norm_modulate() -> LayerNorm {
    let (b, s, d) = (2, 4, 8);
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[b, s, d]));
    let r = g.input("r", f32t(&[b, s, d]));
    let scale = g.input("scale", f32t(&[b, d]));
    let shift = g.input("shift", f32t(&[b, d]));
    let gate = g.input("gate", f32t(&[b, d]));
    let sum_x = sum(&mut g, x, &[2]);
    let n_b = scalar_b(&mut g, d as f64, &[b, s]);
    let mean = bin(&mut g, BinaryOp::Div, sum_x, n_b);
    let mean_r = reshape(&mut g, mean, &[b, s, 1]);
    let mean_b = bcast(&mut g, mean_r, &[b, s, d]);
    let xc = bin(&mut g, BinaryOp::Sub, x, mean_b);
    let sq = bin(&mut g, BinaryOp::Mul, xc, xc);
    let sum_sq = sum(&mut g, sq, &[2]);
    let var = bin(&mut g, BinaryOp::Div, sum_sq, n_b);
    let eps = scalar_b(&mut g, 1e-6, &[b, s]);
    let ve = bin(&mut g, BinaryOp::Add, var, eps);
    let rstd = un(&mut g, UnaryOp::Rsqrt, ve);
    let rstd_r = reshape(&mut g, rstd, &[b, s, 1]);
    let rstd_b = bcast(&mut g, rstd_r, &[b, s, d]);
    let nrm = bin(&mut g, BinaryOp::Mul, xc, rstd_b);
    let one = scalar_b(&mut g, 1.0, &[b, d]);
    let opl = bin(&mut g, BinaryOp::Add, scale, one);
    let opl_b = row_b(&mut g, opl, b, s, d);
    let m = bin(&mut g, BinaryOp::Mul, nrm, opl_b);
    let shift_b = row_b(&mut g, shift, b, s, d);
    let y = bin(&mut g, BinaryOp::Add, m, shift_b);
    let gate_b = row_b(&mut g, gate, b, s, d);
    let gy = bin(&mut g, BinaryOp::Mul, gate_b, y);
    let out = bin(&mut g, BinaryOp::Add, r, gy);
    g.set_output("out", out);
    LayerNorm {
        g,
        x,
        mean,
        xc,
        rstd,
        out,
    }
}

fn kinds(plan: &FusionPlan) -> Vec<GroupKind> {
    plan.groups.iter().map(|g| g.kind).collect()
}

#[test]
fn layer_norm_modulate_residual_is_two_reductions_and_one_elementwise() {
    let ln = layer_norm_modulate();
    let plan = fuse(&ln.g, &FusionOptions::default());
    validate_fusion_plan(&ln.g, &plan).unwrap();
    assert_eq!(
        kinds(&plan),
        [
            GroupKind::Reduction,
            GroupKind::Reduction,
            GroupKind::Elementwise
        ],
        "{}",
        dump_fusion(&ln.g, &plan)
    );
    assert_eq!(plan.launches(), 3);
    assert_eq!(plan.count(GroupKind::Reduction), 2);
    assert_eq!(plan.count(GroupKind::Elementwise), 1);
    // mean and rstd are the only values materialised besides the output.
    assert_eq!(plan.groups[0].outputs, [ln.mean]);
    assert_eq!(plan.groups[1].outputs, [ln.rstd]);
    assert_eq!(plan.groups[2].outputs, [ln.out]);
    assert_eq!(plan.group_of(ln.out), Some(2));
    // The centred x is computed in the variance prologue and recomputed by the normalisation.
    assert_eq!(plan.group_of(ln.xc), Some(1));
    assert!(plan.groups[1].prologue.contains(&ln.xc));
    assert!(plan.groups[2].recomputed.contains(&ln.xc));
    assert!(plan.groups[2].inputs.contains(&ln.x));
    assert!(plan.groups[2].inputs.contains(&ln.mean));
    assert!(plan.groups[2].inputs.contains(&ln.rstd));
    // Epilogues: mean = sum / n, rstd = rsqrt(var + eps).
    assert!(plan.groups[0].epilogue.contains(&ln.mean));
    assert!(plan.groups[1].epilogue.contains(&ln.rstd));
}

#[test]
fn layer_norm_without_recompute_materialises_shared_values() {
    let ln = layer_norm_modulate();
    let opts = FusionOptions {
        recompute_cheap: false,
        ..FusionOptions::default()
    };
    let plan = fuse(&ln.g, &opts);
    validate_fusion_plan(&ln.g, &plan).unwrap();
    // + the shared broadcast of n, the centred x, and (1 + scale) under its broadcast.
    assert_eq!(plan.groups.len(), 6, "{}", dump_fusion(&ln.g, &plan));
    assert_eq!(plan.count(GroupKind::Reduction), 2);
    assert_eq!(plan.count(GroupKind::Elementwise), 4);
    let xc_group = plan.group_of(ln.xc).unwrap();
    assert_eq!(plan.groups[xc_group].outputs, [ln.xc]);
    assert!(plan
        .groups
        .iter()
        .all(|g| g.recomputed.iter().all(|&n| ln.g.node(n).op.is_leaf())));
}

#[test]
fn unfused_plan_has_one_group_per_node() {
    let ln = layer_norm_modulate();
    let plan = fuse(&ln.g, &FusionOptions::unfused());
    validate_fusion_plan(&ln.g, &plan).unwrap();
    let non_leaf = ln.g.nodes.iter().filter(|n| !n.op.is_leaf()).count();
    assert_eq!(plan.groups.len(), non_leaf);
    let reshapes =
        ln.g.nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Reshape { .. }))
            .count();
    assert_eq!(plan.count(GroupKind::Alias), reshapes);
    assert_eq!(plan.count(GroupKind::Reduction), 2);
    for grp in &plan.groups {
        assert_eq!(grp.owned().count(), 1);
        assert!(grp.recomputed.iter().all(|&n| ln.g.node(n).op.is_leaf()));
    }
}

struct Mlp {
    g: Graph,
    h: NodeId,
    hb: NodeId,
    y: NodeId,
}

/// y = gelu_tanh(x @ w + b).
fn matmul_bias_gelu() -> Mlp {
    let (m, k, n) = (4, 8, 16);
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[m, k]));
    let w = g.param("w", f32t(&[k, n]));
    let b = g.param("b", f32t(&[n]));
    let h = matmul(&mut g, x, w);
    let bb = bcast(&mut g, b, &[m, n]);
    let hb = bin(&mut g, BinaryOp::Add, h, bb);
    let cube = bin(&mut g, BinaryOp::Mul, hb, hb);
    let cube = bin(&mut g, BinaryOp::Mul, cube, hb);
    let c = scalar_b(&mut g, 0.044715, &[m, n]);
    let cube = bin(&mut g, BinaryOp::Mul, c, cube);
    let inner = bin(&mut g, BinaryOp::Add, hb, cube);
    let k0 = scalar_b(&mut g, (2.0 / std::f64::consts::PI).sqrt(), &[m, n]);
    let inner = bin(&mut g, BinaryOp::Mul, k0, inner);
    let t = un(&mut g, UnaryOp::Tanh, inner);
    let one = scalar_b(&mut g, 1.0, &[m, n]);
    let t1 = bin(&mut g, BinaryOp::Add, one, t);
    let half = scalar_b(&mut g, 0.5, &[m, n]);
    let hh = bin(&mut g, BinaryOp::Mul, half, hb);
    let y = bin(&mut g, BinaryOp::Mul, hh, t1);
    g.set_output("y", y);
    Mlp { g, h, hb, y }
}

#[test]
fn matmul_bias_gelu_is_one_library_group_with_epilogue() {
    let mlp = matmul_bias_gelu();
    let plan = fuse(&mlp.g, &FusionOptions::default());
    validate_fusion_plan(&mlp.g, &plan).unwrap();
    assert_eq!(
        kinds(&plan),
        [GroupKind::Library],
        "{}",
        dump_fusion(&mlp.g, &plan)
    );
    let grp = &plan.groups[0];
    assert_eq!(grp.anchor, Some(mlp.h));
    assert_eq!(grp.outputs, [mlp.y]);
    assert!(grp.prologue.is_empty());
    assert!(grp.epilogue.contains(&mlp.hb));
    assert!(grp.epilogue.contains(&mlp.y));
    assert!(!grp.epilogue.contains(&mlp.h));
    // Every non-leaf node but the matmul is in the epilogue.
    let non_leaf = mlp.g.nodes.iter().filter(|n| !n.op.is_leaf()).count();
    let owned_epilogue = grp
        .epilogue
        .iter()
        .filter(|n| !grp.recomputed.contains(n))
        .count();
    assert_eq!(owned_epilogue, non_leaf - 1);
    // The epilogue reads the matmul result at the same index; the bias through a broadcast.
    let access = main_space_access(&mlp.g, grp);
    assert_eq!(access[&mlp.h], Access::Same);
    let b = mlp.g.params()[1].1;
    assert_eq!(access[&b], Access::Indexed);

    let no_epi = FusionOptions {
        matmul_epilogue: false,
        ..FusionOptions::default()
    };
    let plan = fuse(&mlp.g, &no_epi);
    validate_fusion_plan(&mlp.g, &plan).unwrap();
    assert_eq!(kinds(&plan), [GroupKind::Library, GroupKind::Elementwise]);
    assert_eq!(plan.groups[0].outputs, [mlp.h]);
}

#[test]
fn value_used_by_two_matmuls_is_materialised_once() {
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[4, 8]));
    let w1 = g.param("w1", f32t(&[8, 8]));
    let w2 = g.param("w2", f32t(&[8, 8]));
    let e = un(&mut g, UnaryOp::Tanh, x);
    let e2 = bin(&mut g, BinaryOp::Mul, e, e);
    let m1 = matmul(&mut g, e2, w1);
    let m2 = matmul(&mut g, e2, w2);
    let out = bin(&mut g, BinaryOp::Add, m1, m2);
    g.set_output("out", out);
    let plan = fuse(&g, &FusionOptions::default());
    validate_fusion_plan(&g, &plan).unwrap();
    assert_eq!(
        kinds(&plan),
        [
            GroupKind::Elementwise,
            GroupKind::Library,
            GroupKind::Library
        ],
        "{}",
        dump_fusion(&g, &plan)
    );
    let producers: Vec<usize> = (0..plan.groups.len())
        .filter(|&i| plan.groups[i].outputs.contains(&e2))
        .collect();
    assert_eq!(producers, [0]);
    assert_eq!(plan.groups[0].nodes, [e, e2]);
    for grp in &plan.groups[1..] {
        assert!(grp.inputs.contains(&e2));
        assert!(!grp.contains(e2) && !grp.contains(e));
    }
    // The sum rides as the epilogue of the second matmul.
    assert_eq!(plan.groups[2].anchor, Some(m2));
    assert_eq!(plan.groups[2].epilogue, [out]);
    assert_eq!(plan.groups[1].outputs, [m1]);
}

#[test]
fn attention_reads_reshaped_projections_through_its_prologue() {
    let (s, h, d) = (6, 2, 4);
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[s, h * d]));
    let mut qkv = vec![];
    for name in ["wq", "wk", "wv"] {
        let w = g.param(name, f32t(&[h * d, h * d]));
        let p = matmul(&mut g, x, w);
        qkv.push(reshape(&mut g, p, &[1, s, h, d]));
    }
    let att = g
        .add(Op::Attention { scale: 0.5 }, &[qkv[0], qkv[1], qkv[2]])
        .unwrap();
    let flat = reshape(&mut g, att, &[s, h * d]);
    let wo = g.param("wo", f32t(&[h * d, h * d]));
    let o = matmul(&mut g, flat, wo);
    let res = bin(&mut g, BinaryOp::Add, o, x);
    g.set_output("out", res);
    let plan = fuse(&g, &FusionOptions::default());
    validate_fusion_plan(&g, &plan).unwrap();
    assert_eq!(plan.groups.len(), 5, "{}", dump_fusion(&g, &plan));
    assert_eq!(plan.count(GroupKind::Library), 5);
    let ag = &plan.groups[plan.group_of(att).unwrap()];
    assert_eq!(ag.prologue, qkv);
    assert_eq!(ag.outputs, [att]);
    let og = &plan.groups[plan.group_of(o).unwrap()];
    assert_eq!(og.prologue, [flat]);
    assert_eq!(og.epilogue, [res]);
    assert_eq!(og.inputs, [x, att, wo]);
}

#[test]
fn reshape_needed_outside_is_an_alias_group_and_concat_is_alone() {
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[4, 8]));
    let w = g.param("w", f32t(&[8, 6]));
    let h = matmul(&mut g, x, w);
    let hr = reshape(&mut g, h, &[2, 2, 6]);
    let cat = g.add(Op::Concat { axis: 0 }, &[h, h]).unwrap();
    let e = un(&mut g, UnaryOp::Exp, cat);
    let wr = reshape(&mut g, w, &[48]);
    g.set_output("hr", hr);
    g.set_output("e", e);
    g.set_output("wr", wr);
    let plan = fuse(&g, &FusionOptions::default());
    validate_fusion_plan(&g, &plan).unwrap();
    let dump = dump_fusion(&g, &plan);
    assert_eq!(
        kinds(&plan),
        [
            GroupKind::Library,
            GroupKind::Alias,
            GroupKind::Data,
            GroupKind::Elementwise,
            GroupKind::Elementwise
        ],
        "{dump}"
    );
    assert_eq!(plan.groups[1].nodes, [hr]);
    assert_eq!(plan.groups[1].inputs, [h]);
    assert_eq!(plan.groups[2].nodes, [cat]);
    // A reshaped weight is copied, not aliased (params are not in the arena).
    assert_eq!(plan.groups[4].nodes, [wr]);
    assert!(dump.starts_with(
        "fusion: 5 groups, 4 launches (elementwise 2, reduction 0, library 1, data 1, alias 1)\n"
    ));
}

#[test]
fn graph_output_read_by_its_own_group_is_an_extra_output() {
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[3, 5]));
    let a = un(&mut g, UnaryOp::Exp, x);
    let b = un(&mut g, UnaryOp::Neg, a);
    g.set_output("a", a);
    g.set_output("b", b);
    let plan = fuse(&g, &FusionOptions::default());
    validate_fusion_plan(&g, &plan).unwrap();
    assert_eq!(kinds(&plan), [GroupKind::Elementwise]);
    assert_eq!(plan.groups[0].outputs, [a, b]);
}

#[test]
fn fusion_dump_format() {
    let ln = layer_norm_modulate();
    let plan = fuse(&ln.g, &FusionOptions::default());
    let dump = dump_fusion(&ln.g, &plan);
    let lines: Vec<&str> = dump.lines().collect();
    assert_eq!(
        lines[0],
        "fusion: 3 groups, 3 launches (elementwise 1, reduction 2, library 0, data 0, alias 0)"
    );
    assert_eq!(lines[1], "g0 reduction anchor=%5 in: %0 out: %8");
    assert_eq!(
        lines[2],
        "  anchor    %5: f32[2, 4] = reduce_sum[axes=[2]] %0"
    );
    assert_eq!(lines[3], "  epilogue  %6: f32[] = const[8]  (recomputed)");
    assert_eq!(lines[4], "  epilogue  %7: f32[2, 4] = broadcast[[2, 4]] %6");
    assert!(
        dump.contains("  prologue  %11: f32[2, 4, 8] = sub %0, %10\n"),
        "{dump}"
    );
    assert!(dump.contains("  body      %11: f32[2, 4, 8] = sub %0, %10  (recomputed)\n"));
    assert!(dump.contains(&format!("  body      {}: f32[2, 4, 8] = add %1, %", ln.out)));
    assert!(dump.trim_end().ends_with("-> out"));
}

fn check_invariants(g: &Graph, plan: &FusionPlan) -> Result<(), String> {
    validate_fusion_plan(g, plan)?;
    for (gi, grp) in plan.groups.iter().enumerate() {
        // One index space: all outputs of an Elementwise group have the same element count.
        if grp.kind == GroupKind::Elementwise {
            let n = g.ty(grp.outputs[0]).numel();
            if grp.outputs.iter().any(|&o| g.ty(o).numel() != n) {
                return Err(format!("group {gi}: outputs of different sizes"));
            }
        }
        // Recomputation never nests: a recomputed elementwise op reads (through views) only
        // group inputs and constants.
        for &m in &grp.recomputed {
            if !g.node(m).op.is_elementwise() {
                continue;
            }
            for &a in &g.node(m).args {
                let mut r = a;
                while grp.contains(r) && g.node(r).op.is_view() {
                    r = g.node(r).args[0];
                }
                let ok = grp.inputs.contains(&r)
                    || matches!(g.node(r).op, Op::Constant { .. } | Op::Iota { .. });
                if !ok {
                    return Err(format!("group {gi}: recomputed {m} reads computed {r}"));
                }
            }
        }
        // Every compute member read through an expanding view is recomputation-cheap, and an
        // epilogue reads its library anchor at the same index.
        if matches!(grp.kind, GroupKind::Elementwise | GroupKind::Library) {
            let access = main_space_access(g, grp);
            if grp.kind == GroupKind::Library
                && grp
                    .anchor
                    .is_some_and(|a| access.get(&a) != Some(&Access::Same))
            {
                return Err(format!(
                    "group {gi}: epilogue reads the anchor at another index"
                ));
            }
            for &m in &grp.nodes {
                if g.node(m).op.is_elementwise() && access.get(&m) == Some(&Access::Indexed) {
                    for &a in &g.node(m).args {
                        let mut r = a;
                        while grp.contains(r) && g.node(r).op.is_view() {
                            r = g.node(r).args[0];
                        }
                        let ok = grp.inputs.contains(&r)
                            || matches!(g.node(r).op, Op::Constant { .. } | Op::Iota { .. });
                        if !ok {
                            return Err(format!("group {gi}: {m} evaluated per broadcast element reads computed {r}"));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn all_options() -> [FusionOptions; 5] {
    [
        FusionOptions {
            reshaped_reduction_outputs: true,
            ..FusionOptions::default()
        },
        FusionOptions::default(),
        FusionOptions::unfused(),
        FusionOptions {
            recompute_cheap: false,
            ..FusionOptions::default()
        },
        FusionOptions {
            matmul_epilogue: false,
            ..FusionOptions::default()
        },
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_graphs_partition_into_ordered_groups(seed in any::<u64>(), big in any::<bool>()) {
        let opts = RandomGraphOptions {
            num_ops: if big { 60 } else { 20 },
            ..RandomGraphOptions::default()
        };
        let (g, _) = random_graph(seed, &opts);
        for fo in all_options() {
            let plan = fuse(&g, &fo);
            if let Err(e) = check_invariants(&g, &plan) {
                prop_assert!(false, "{fo:?}: {e}\n{}\n{}", qie_ir::print::print_graph(&g), dump_fusion(&g, &plan));
            }
            // Determinism.
            prop_assert_eq!(&plan, &fuse(&g, &fo));
        }
        // Fusion never needs more launches than the unfused schedule.
        let fused = fuse(&g, &FusionOptions::default());
        let unfused = fuse(&g, &FusionOptions::unfused());
        prop_assert!(fused.launches() <= unfused.launches());
    }
}

#[test]
fn materialised_reshape_of_a_reduction_is_an_alias() {
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[2, 3, 4]));
    let s = sum(&mut g, x, &[2]);
    let n = scalar_b(&mut g, 4.0, &[2, 3]);
    let mean = bin(&mut g, BinaryOp::Div, s, n);
    let r = reshape(&mut g, mean, &[2, 3, 1]);
    g.set_output("mean", r);
    let plan = fuse(&g, &FusionOptions::default());
    validate_fusion_plan(&g, &plan).unwrap();
    assert_eq!(kinds(&plan), [GroupKind::Reduction, GroupKind::Alias]);
    assert_eq!(plan.groups[0].outputs, [mean]);
    assert_eq!(plan.groups[1].nodes, [r]);
}

#[test]
fn rms_norm_with_keepdim_epilogue() {
    // y = x * rsqrt(mean(x^2, keepdim) + eps) * w, as the DSL writes it.
    let (s, d) = (6, 8);
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[s, d]));
    let w = g.param("w", f32t(&[d]));
    let sq = bin(&mut g, BinaryOp::Mul, x, x);
    let ss = sum(&mut g, sq, &[1]);
    let keep = reshape(&mut g, ss, &[s, 1]);
    let n = scalar_b(&mut g, d as f64, &[s, 1]);
    let ms = bin(&mut g, BinaryOp::Div, keep, n);
    let eps = scalar_b(&mut g, 1e-6, &[s, 1]);
    let ve = bin(&mut g, BinaryOp::Add, ms, eps);
    let rstd = un(&mut g, UnaryOp::Rsqrt, ve);
    let rb = bcast(&mut g, rstd, &[s, d]);
    let xn = bin(&mut g, BinaryOp::Mul, x, rb);
    let wb = bcast(&mut g, w, &[s, d]);
    let y = bin(&mut g, BinaryOp::Mul, xn, wb);
    g.set_output("y", y);
    // Default: Reduction outputs keep the Reduce's shape, so the keepdim tail is its own group.
    let plan = fuse(&g, &FusionOptions::default());
    validate_fusion_plan(&g, &plan).unwrap();
    assert_eq!(
        kinds(&plan),
        [
            GroupKind::Reduction,
            GroupKind::Elementwise,
            GroupKind::Elementwise
        ],
        "{}",
        dump_fusion(&g, &plan)
    );
    assert_eq!(plan.groups[0].outputs, [ss]);
    assert_eq!(plan.groups[1].outputs, [rstd]);
    // Opt-in: the reduction writes rstd in its keepdim shape [S, 1] (same linear index as [S]).
    let opts = FusionOptions {
        reshaped_reduction_outputs: true,
        ..FusionOptions::default()
    };
    let plan = fuse(&g, &opts);
    validate_fusion_plan(&g, &plan).unwrap();
    assert_eq!(
        kinds(&plan),
        [GroupKind::Reduction, GroupKind::Elementwise],
        "{}",
        dump_fusion(&g, &plan)
    );
    assert_eq!(plan.groups[0].outputs, [rstd]);
    assert_eq!(plan.groups[0].prologue, [sq]);
    assert!(plan.groups[0].epilogue.contains(&keep));
}

#[test]
fn sliced_matmul_operand_is_read_through_the_prologue() {
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[10, 8]));
    let w = g.param("w", f32t(&[16, 8]));
    let e = un(&mut g, UnaryOp::Exp, x);
    let tail = g
        .add(
            Op::Slice {
                axis: 0,
                start: 2,
                end: 10,
            },
            &[e],
        )
        .unwrap();
    let wt = g
        .add(
            Op::Transpose {
                perm: shape(&[1, 0]),
            },
            &[w],
        )
        .unwrap();
    let m = matmul(&mut g, tail, wt);
    g.set_output("m", m);
    let plan = fuse(&g, &FusionOptions::default());
    validate_fusion_plan(&g, &plan).unwrap();
    assert_eq!(kinds(&plan), [GroupKind::Elementwise, GroupKind::Library]);
    assert_eq!(plan.groups[0].outputs, [e]);
    assert_eq!(plan.groups[1].prologue, [tail, wt]);
    assert_eq!(plan.groups[1].inputs, [w, e]);

    // A reshape of a slice is not a strided view: the slice is materialised first.
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[4, 6]));
    let w = g.param("w", f32t(&[8, 3]));
    // Not a transcendental op: those are materialised rather than recomputed under a slice.
    let e = un(&mut g, UnaryOp::Neg, x);
    let part = g
        .add(
            Op::Slice {
                axis: 1,
                start: 1,
                end: 5,
            },
            &[e],
        )
        .unwrap();
    let flat = reshape(&mut g, part, &[2, 8]);
    let m = matmul(&mut g, flat, w);
    g.set_output("m", m);
    let plan = fuse(&g, &FusionOptions::default());
    validate_fusion_plan(&g, &plan).unwrap();
    assert_eq!(kinds(&plan), [GroupKind::Elementwise, GroupKind::Library]);
    assert_eq!(plan.groups[0].outputs, [part]);
    assert_eq!(plan.groups[1].prologue, [flat]);
}

/// A transcendental op read by several groups is materialised once, not recomputed in each
/// (the DiT's RoPE `cos(angles)` table is read by every layer).
#[test]
fn transcendental_ops_are_not_recomputed_per_use() {
    let mut g = Graph::new();
    let a = g.input("a", f32t(&[16, 4]));
    let x = g.input("x", f32t(&[2, 16, 4]));
    let c = un(&mut g, UnaryOp::Cos, a);
    let cb = g
        .add(
            Op::Broadcast {
                shape: shape(&[2, 16, 4]),
            },
            &[c],
        )
        .unwrap();
    let y1 = g.add(Op::Binary(BinaryOp::Mul), &[x, cb]).unwrap();
    let sum = g.add(Op::Binary(BinaryOp::Add), &[x, cb]).unwrap();
    let y2 = g
        .add(
            Op::Reduce {
                op: ReduceOp::Sum,
                axes: shape(&[2]),
            },
            &[sum],
        )
        .unwrap();
    g.set_output("y1", y1);
    g.set_output("y2", y2);
    let plan = fuse(&g, &FusionOptions::default());
    validate_fusion_plan(&g, &plan).unwrap();
    let with_cos: Vec<_> = plan
        .groups
        .iter()
        .filter(|grp| grp.nodes.contains(&c))
        .collect();
    assert_eq!(with_cos.len(), 1, "cos computed in one group");
    assert_eq!(with_cos[0].outputs, [c]);
}
