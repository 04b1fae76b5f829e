//! Memory planning: buffer reuse on hand-built chains, in-place legality, aliases, and on random
//! graphs a simulated run that tags every arena byte with the value last written there and checks
//! each group reads intact inputs and computes the reference values.

use proptest::prelude::*;
use qie_ir::eval::{eval_all, eval_op, Tensor};
use qie_ir::passes::fusion::{fuse, validate_fusion_plan, FusionOptions};
use qie_ir::passes::memplan::{align_up, plan_memory, validate_memory_plan, MemoryOptions};
use qie_ir::passes::schedule_dump::dump_memplan;
use qie_ir::plan::{FusionPlan, GroupKind, MemoryPlan, Slot};
use qie_ir::testing::{joint_attention_case, random_concat_case, RandomCase, RandomGraphOptions};
use qie_ir::{shape, BinaryOp, DType, Graph, NodeId, Op, TensorType, UnaryOp};
use std::collections::HashMap;

fn f32t(dims: &[usize]) -> TensorType {
    TensorType::new(DType::F32, dims)
}

fn un(g: &mut Graph, op: UnaryOp, a: NodeId) -> NodeId {
    g.add(Op::Unary(op), &[a]).unwrap()
}

fn offset(plan: &MemoryPlan, id: NodeId) -> usize {
    match plan.slot(id) {
        Some(Slot::Arena { offset, .. }) => offset,
        s => panic!("{id} has slot {s:?}"),
    }
}

/// x -> a -> b -> c -> d, one unfused Elementwise group per step.
fn chain() -> (Graph, [NodeId; 5]) {
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[64, 64]));
    let a = un(&mut g, UnaryOp::Exp, x);
    let b = un(&mut g, UnaryOp::Tanh, a);
    let c = un(&mut g, UnaryOp::Neg, b);
    let d = un(&mut g, UnaryOp::Sin, c);
    g.set_output("d", d);
    (g, [x, a, b, c, d])
}

#[test]
fn elementwise_chain_reuses_buffers() {
    let (g, [x, a, b, c, d]) = chain();
    let fusion = fuse(&g, &FusionOptions::unfused());
    assert_eq!(fusion.groups.len(), 4);
    assert_eq!(fusion.count(GroupKind::Elementwise), 4);
    let buf = 64 * 64 * 4;

    let plan = plan_memory(&g, &fusion, &MemoryOptions::default());
    validate_memory_plan(&g, &fusion, &plan).unwrap();
    assert!(
        plan.arena_bytes <= 2 * buf,
        "{}",
        dump_memplan(&g, &fusion, &plan)
    );
    // In place: the whole chain runs in the input's buffer.
    assert_eq!(plan.arena_bytes, buf);
    assert_eq!(plan.in_place, [(a, x), (b, a), (c, b), (d, c)]);
    assert_eq!(plan.peak_live_bytes, buf);

    let plan = plan_memory(&g, &fusion, &MemoryOptions::no_reuse());
    validate_memory_plan(&g, &fusion, &plan).unwrap();
    assert!(plan.in_place.is_empty());
    // Ping-pong between two buffers.
    assert_eq!(
        plan.arena_bytes,
        2 * buf,
        "{}",
        dump_memplan(&g, &fusion, &plan)
    );
    assert_eq!(plan.peak_live_bytes, 2 * buf);
    assert_eq!(offset(&plan, x), offset(&plan, b));
    assert_eq!(offset(&plan, a), offset(&plan, c));
    assert_ne!(offset(&plan, a), offset(&plan, b));
    assert_eq!(plan.lifetimes[d.index()], Some((3, 4)));
    assert_eq!(plan.lifetimes[x.index()], Some((0, 0)));
}

#[test]
fn no_in_place_through_a_transposed_or_broadcast_read() {
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[8, 8]));
    let t = g
        .add(
            Op::Transpose {
                perm: shape(&[1, 0]),
            },
            &[x],
        )
        .unwrap();
    let e = un(&mut g, UnaryOp::Exp, x);
    let s = g.add(Op::Binary(BinaryOp::Add), &[t, e]).unwrap();
    g.set_output("s", s);
    let fusion = fuse(&g, &FusionOptions::default());
    assert_eq!(fusion.groups.len(), 1);
    let plan = plan_memory(&g, &fusion, &MemoryOptions::default());
    validate_memory_plan(&g, &fusion, &plan).unwrap();
    assert!(plan.in_place.is_empty());
    assert_ne!(offset(&plan, x), offset(&plan, s));

    // A row vector broadcast to the output's shape: different size, never in place.
    let mut g = Graph::new();
    let v = g.input("v", f32t(&[8]));
    let vb = g
        .add(
            Op::Broadcast {
                shape: shape(&[8, 8]),
            },
            &[v],
        )
        .unwrap();
    let e = un(&mut g, UnaryOp::Exp, vb);
    g.set_output("e", e);
    let fusion = fuse(&g, &FusionOptions::default());
    let plan = plan_memory(&g, &fusion, &MemoryOptions::default());
    validate_memory_plan(&g, &fusion, &plan).unwrap();
    assert!(plan.in_place.is_empty());
}

#[test]
fn no_in_place_in_a_group_with_outputs_of_several_shapes() {
    // e: [6] and z: [2, 3] are outputs of one group; a backend may run one kernel per output
    // shape, so writing e over x would clobber x before z is computed from it.
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[6]));
    let e = un(&mut g, UnaryOp::Neg, x);
    let r = g
        .add(
            Op::Reshape {
                shape: shape(&[2, 3]),
            },
            &[e],
        )
        .unwrap();
    let z = un(&mut g, UnaryOp::Exp, r);
    g.set_output("e", e);
    g.set_output("z", z);
    let fusion = fuse(&g, &FusionOptions::default());
    assert_eq!(fusion.groups.len(), 1);
    assert_eq!(fusion.groups[0].outputs, [e, z]);
    let plan = plan_memory(&g, &fusion, &MemoryOptions::default());
    validate_memory_plan(&g, &fusion, &plan).unwrap();
    assert!(plan.in_place.is_empty());
    let mut bad = plan.clone();
    bad.in_place.push((e, x));
    bad.slots[e.index()] = plan.slots[x.index()];
    assert!(validate_memory_plan(&g, &fusion, &bad).is_err());
}

#[test]
fn in_place_only_at_the_last_use() {
    // x is read by g0 (y = exp x) and g1 (z = x * y): only g1 may write over x.
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[16, 16]));
    let w = g.param("w", f32t(&[16, 16]));
    let m = g
        .add(
            Op::MatMul {
                transpose_a: false,
                transpose_b: false,
            },
            &[x, w],
        )
        .unwrap();
    let z = g.add(Op::Binary(BinaryOp::Mul), &[x, m]).unwrap();
    g.set_output("z", z);
    let fusion = fuse(
        &g,
        &FusionOptions {
            matmul_epilogue: false,
            ..FusionOptions::default()
        },
    );
    assert_eq!(fusion.groups.len(), 2);
    let plan = plan_memory(&g, &fusion, &MemoryOptions::default());
    validate_memory_plan(&g, &fusion, &plan).unwrap();
    assert_eq!(plan.in_place, [(z, x)]);
    assert_eq!(plan.slot(w), Some(Slot::Param));
    assert_eq!(plan.arena_bytes, 2 * 16 * 16 * 4);

    // Corrupting the plan is caught: claim m is written in place of x by the matmul group.
    let mut bad = plan.clone();
    bad.in_place.push((m, x));
    assert!(validate_memory_plan(&g, &fusion, &bad).is_err());
    let mut bad = plan.clone();
    bad.slots[m.index()] = Some(Slot::Arena {
        offset: offset(&plan, x),
        bytes: 1024,
    });
    assert!(validate_memory_plan(&g, &fusion, &bad).is_err());
}

#[test]
fn alias_shares_its_input_buffer_and_extends_its_life() {
    let mut g = Graph::new();
    let x = g.input("x", f32t(&[4, 8]));
    let w = g.param("w", f32t(&[8, 8]));
    let h = g
        .add(
            Op::MatMul {
                transpose_a: false,
                transpose_b: false,
            },
            &[x, w],
        )
        .unwrap();
    let n = un(&mut g, UnaryOp::Neg, h);
    let hr = g
        .add(
            Op::Reshape {
                shape: shape(&[32]),
            },
            &[h],
        )
        .unwrap();
    let cat = g.add(Op::Concat { axis: 0 }, &[hr, hr]).unwrap();
    let e = un(&mut g, UnaryOp::Exp, cat);
    g.set_output("n", n);
    g.set_output("e", e);
    let fusion = fuse(&g, &FusionOptions::default());
    validate_fusion_plan(&g, &fusion).unwrap();
    assert_eq!(
        fusion.groups.iter().map(|g| g.kind).collect::<Vec<_>>(),
        [
            GroupKind::Library,
            GroupKind::Elementwise,
            GroupKind::Alias,
            GroupKind::Data,
            GroupKind::Elementwise
        ]
    );
    let plan = plan_memory(&g, &fusion, &MemoryOptions::default());
    validate_memory_plan(&g, &fusion, &plan).unwrap();
    assert_eq!(offset(&plan, hr), offset(&plan, h));
    assert_eq!(plan.lifetimes[h.index()], Some((0, 2)));
    assert_eq!(plan.lifetimes[hr.index()], Some((2, 3)));
    assert_eq!(plan.lifetimes[n.index()], Some((1, 5)));
    // The concat result (written at 3) cannot take h's bytes while the alias is read at 3.
    let (ho, co) = (offset(&plan, h), offset(&plan, cat));
    assert!(co >= ho + 256 || ho >= co + 256);
    // Nor can n, written while h is still needed (by the alias).
    assert_ne!(offset(&plan, n), ho);
    let dump = dump_memplan(&g, &fusion, &plan);
    assert!(dump.contains("alias of %2"), "{dump}");
}

#[test]
fn memplan_dump_format() {
    let (g, _) = chain();
    let fusion = fuse(&g, &FusionOptions::unfused());
    let plan = plan_memory(&g, &fusion, &MemoryOptions::default());
    let dump = dump_memplan(&g, &fusion, &plan);
    let lines: Vec<&str> = dump.lines().collect();
    assert_eq!(
        lines[0],
        "memplan: arena 16384 B (16.0 KiB), peak live 16384 B (16.0 KiB), 5 arena values, 0 params, 4 in-place"
    );
    assert_eq!(
        lines[1],
        "      offset      bytes  live     value  by     type             note"
    );
    assert_eq!(
        lines[2],
        "           0      16384  0..0     %0     input  f32[64, 64]      \"x\""
    );
    assert_eq!(
        lines[6],
        "           0      16384  3..4     %4     g3     f32[64, 64]      in-place of %3, output \"d\""
    );
    assert_eq!(lines.len(), 7);
}

/// Plans `case` with concat in place on and off; both validate and simulate.
fn plan_both(case: &RandomCase) -> (FusionPlan, MemoryPlan, MemoryPlan) {
    let g = &case.graph;
    let fusion = fuse(g, &FusionOptions::default());
    let on = plan_memory(g, &fusion, &MemoryOptions::default());
    let off = plan_memory(
        g,
        &fusion,
        &MemoryOptions {
            concat_in_place: false,
            ..MemoryOptions::default()
        },
    );
    for plan in [&on, &off] {
        let dump = dump_memplan(g, &fusion, plan);
        validate_memory_plan(g, &fusion, plan).unwrap_or_else(|e| panic!("{e}\n{dump}"));
        simulate(case, &fusion, plan).unwrap_or_else(|e| panic!("{e}\n{dump}"));
    }
    assert!(off.concat_in_place.is_empty());
    (fusion, on, off)
}

fn concats(g: &Graph) -> Vec<NodeId> {
    g.ids()
        .filter(|&id| matches!(g.node(id).op, Op::Concat { .. }))
        .collect()
}

#[test]
fn joint_attention_concat_operands_are_written_in_place() {
    let case = joint_attention_case(1, 7);
    let g = &case.graph;
    let (fusion, on, off) = plan_both(&case);
    let cats = concats(g);
    assert_eq!(cats.len(), 3);
    // q, k (elementwise producers) and v (matmul output through a reshape alias): both operands
    // of every concat live in their slices, text (3 tokens of 512 bytes) first.
    let mut want = vec![];
    for &c in &cats {
        let [t, i] = [g.node(c).args[0], g.node(c).args[1]];
        want.extend([(c, t), (c, i)]);
        assert_eq!(offset(&on, t), offset(&on, c));
        assert_eq!(offset(&on, i), offset(&on, c) + 3 * 512);
    }
    assert_eq!(
        on.concat_in_place,
        want,
        "{}",
        dump_memplan(g, &fusion, &on)
    );
    let v = cats[2];
    let grp = fusion.group_of(g.node(v).args[0]).unwrap();
    assert_eq!(fusion.groups[grp].kind, GroupKind::Alias);
    // The operands need no buffers of their own next to the concats (here the peak is at the
    // attention, where only the concats are live either way).
    assert!(on.peak_live_bytes <= off.peak_live_bytes);
    assert!(on.arena_bytes <= off.arena_bytes);
    let dump = dump_memplan(g, &fusion, &on);
    assert!(dump.contains(&format!("in concat {}", cats[0])), "{dump}");
    assert!(
        dump.lines().next().unwrap().ends_with("6 concat in place"),
        "{dump}"
    );
}

#[test]
fn no_concat_in_place_with_a_batch_of_two() {
    // [2, S, 2, 64]: each operand is two separate ranges of the concat's result.
    let case = joint_attention_case(2, 7);
    let (_, on, _) = plan_both(&case);
    assert!(on.concat_in_place.is_empty());
}

#[test]
fn concat_operands_that_stay_where_they_are() {
    // cat = concat([x, p, t, o, t2, e, e], 0) of [2, 64] rows: x a graph input, p a param, t a
    // group output, o a graph output, t2 an alias of t, e twice; then u = concat([w, t3], 0).
    let mut g = Graph::new();
    let x = g.input("x1", f32t(&[2, 64]));
    let p = g.param("p2", f32t(&[2, 64]));
    let y = g.input("x3", f32t(&[2, 64]));
    let t = un(&mut g, UnaryOp::Tanh, y);
    let o = un(&mut g, UnaryOp::Sin, y);
    let t2 = g
        .add(
            Op::Reshape {
                shape: shape(&[2, 64]),
            },
            &[t],
        )
        .unwrap();
    let e = un(&mut g, UnaryOp::Exp, y);
    let cat = g
        .add(Op::Concat { axis: 0 }, &[x, p, t, o, t2, e, e])
        .unwrap();
    let s = un(&mut g, UnaryOp::Neg, cat);
    g.set_output("s", s);
    g.set_output("o", o);
    let fusion = fuse(&g, &FusionOptions::unfused());
    let plan = plan_memory(&g, &fusion, &MemoryOptions::default());
    validate_memory_plan(&g, &fusion, &plan).unwrap();
    // t2 is a reshape to the same shape: its own group, but t and t2 share bytes, so neither is
    // placed (the concat would copy one over the other's slice). Nothing qualifies.
    assert!(
        plan.concat_in_place.is_empty(),
        "{}",
        dump_memplan(&g, &fusion, &plan)
    );

    // An operand used by two concats goes into the first one only; an operand at an unaligned
    // slice offset is copied.
    let mut g = Graph::new();
    let y = g.input("x1", f32t(&[1, 64]));
    let a = un(&mut g, UnaryOp::Tanh, y);
    let b = un(&mut g, UnaryOp::Sin, y);
    let c = un(&mut g, UnaryOp::Cos, y);
    let cat1 = g.add(Op::Concat { axis: 0 }, &[a, b]).unwrap();
    let cat2 = g.add(Op::Concat { axis: 0 }, &[c, b]).unwrap();
    let z = g.input("x2", f32t(&[1, 3]));
    let d = un(&mut g, UnaryOp::Exp, z);
    let f = un(&mut g, UnaryOp::Neg, z);
    let cat3 = g.add(Op::Concat { axis: 1 }, &[d, f]).unwrap();
    let s1 = un(&mut g, UnaryOp::Exp, cat1);
    let s2 = un(&mut g, UnaryOp::Exp, cat2);
    let s3 = un(&mut g, UnaryOp::Exp, cat3);
    for (k, v) in [s1, s2, s3].into_iter().enumerate() {
        g.set_output(&format!("s{k}"), v);
    }
    let case = RandomCase {
        seed: 0,
        inputs: [("x1", f32t(&[1, 64])), ("x2", f32t(&[1, 3]))]
            .into_iter()
            .map(|(n, ty)| {
                let data = (0..ty.numel()).map(|i| i as f64 / 64.0).collect();
                (n.to_string(), Tensor::new(ty, data))
            })
            .collect(),
        graph: g,
    };
    let (_, plan, _) = plan_both(&case);
    assert_eq!(
        plan.concat_in_place,
        [(cat1, a), (cat1, b), (cat2, c), (cat3, d)]
    );
}

#[test]
fn concat_operand_read_after_the_concat_keeps_its_bytes() {
    // a is placed in cat; a is read again after cat's consumer, so e = exp(cat) must not be
    // written over cat (which holds a's bytes) although e is cat's last reader.
    let mut g = Graph::new();
    let x = g.input("x1", f32t(&[1, 2, 64]));
    let y = g.input("x2", f32t(&[1, 3, 64]));
    let a = un(&mut g, UnaryOp::Tanh, x);
    let b = un(&mut g, UnaryOp::Sin, y);
    let cat = g.add(Op::Concat { axis: 1 }, &[a, b]).unwrap();
    let e = un(&mut g, UnaryOp::Exp, cat);
    let sum = g
        .add(
            Op::Reduce {
                op: qie_ir::ReduceOp::Sum,
                axes: shape(&[0, 1, 2]),
            },
            &[e],
        )
        .unwrap();
    let sb = g
        .add(
            Op::Broadcast {
                shape: shape(&[1, 2, 64]),
            },
            &[sum],
        )
        .unwrap();
    let later = g.add(Op::Binary(BinaryOp::Mul), &[a, sb]).unwrap();
    g.set_output("later", later);
    g.set_output("e", e);
    let case = RandomCase {
        seed: 0,
        inputs: [("x1", f32t(&[1, 2, 64])), ("x2", f32t(&[1, 3, 64]))]
            .into_iter()
            .map(|(n, ty)| {
                let data = (0..ty.numel()).map(|i| (i % 7) as f64 / 7.0).collect();
                (n.to_string(), Tensor::new(ty, data))
            })
            .collect(),
        graph: g,
    };
    let g = &case.graph;
    let (fusion, plan, _) = plan_both(&case);
    assert_eq!(plan.concat_in_place, [(cat, a), (cat, b)]);
    assert!(!plan.in_place.contains(&(e, cat)));
    let (gc, ga) = (
        fusion.group_of(cat).unwrap(),
        fusion.group_of(later).unwrap(),
    );
    assert!(gc < ga && plan.lifetimes[a.index()].unwrap().1 == ga);

    // Corrupting the plan is caught: e written over cat while a still needs the bytes.
    let mut bad = plan.clone();
    bad.in_place.push((e, cat));
    bad.slots[e.index()] = plan.slots[cat.index()];
    assert!(validate_memory_plan(g, &fusion, &bad).is_err());
    // An operand claimed in place but not at its slice.
    let mut bad = plan.clone();
    bad.concat_in_place.swap(0, 1);
    bad.concat_in_place.push((cat, a));
    assert!(validate_memory_plan(g, &fusion, &bad).is_err());
    let mut bad = plan.clone();
    bad.slots.swap(a.index(), b.index());
    assert!(validate_memory_plan(g, &fusion, &bad).is_err());
}

/// Which value's bytes an arena value's slot holds: aliases resolve to their input.
fn storage_of(fusion: &FusionPlan, producer: &[Option<usize>], mut id: NodeId) -> NodeId {
    while let Some(gi) = producer[id.index()] {
        let grp = &fusion.groups[gi];
        if grp.kind != GroupKind::Alias {
            break;
        }
        id = grp.inputs[0];
    }
    id
}

/// Runs the plan on a byte-tagged arena: every group must find each arena input's bytes still
/// tagged with that value (or the value it aliases), and compute the reference values.
fn simulate(case: &RandomCase, fusion: &FusionPlan, plan: &MemoryPlan) -> Result<(), String> {
    let g = &case.graph;
    let reference = eval_all(g, &case.inputs, &|n| case.param(n)).ok();
    let mut producer: Vec<Option<usize>> = vec![None; g.len()];
    for (gi, grp) in fusion.groups.iter().enumerate() {
        for &o in &grp.outputs {
            producer[o.index()] = Some(gi);
        }
    }
    let none = u32::MAX;
    let mut tags = vec![none; plan.arena_bytes];
    let mut stored: HashMap<NodeId, Tensor> = HashMap::new();
    // A concat's operands written in place: their bytes keep their own tags.
    let slot_range = |id: NodeId| match plan.slot(id) {
        Some(Slot::Arena { offset, bytes }) => (offset, offset + bytes),
        s => panic!("{id} has slot {s:?}"),
    };
    let write = |tags: &mut Vec<u32>, id: NodeId| {
        if let Some(Slot::Arena { offset, bytes }) = plan.slot(id) {
            let mut mine = vec![true; bytes];
            for a in plan.concat_operands_in_place(id) {
                let (s, e) = slot_range(a);
                mine[s - offset..e - offset].fill(false);
            }
            for (k, t) in tags[offset..offset + bytes].iter_mut().enumerate() {
                if mine[k] {
                    *t = id.0;
                }
            }
        }
    };
    // The tag each byte of `id`'s slot must hold: its storage value's, or inside a concat's
    // in-place operand, that operand's.
    fn expected(
        fusion: &FusionPlan,
        plan: &MemoryPlan,
        producer: &[Option<usize>],
        id: NodeId,
    ) -> Vec<u32> {
        let Some(Slot::Arena { offset, bytes }) = plan.slot(id) else {
            return vec![];
        };
        let s = storage_of(fusion, producer, id);
        let mut want = vec![s.0; bytes];
        for a in plan.concat_operands_in_place(s) {
            if let Some(Slot::Arena {
                offset: ao,
                bytes: ab,
            }) = plan.slot(a)
            {
                want[ao - offset..ao - offset + ab]
                    .copy_from_slice(&expected(fusion, plan, producer, a));
            }
        }
        want
    }
    let check = |tags: &Vec<u32>, id: NodeId, when: &str| -> Result<(), String> {
        if let Some(Slot::Arena { offset, bytes }) = plan.slot(id) {
            let want = expected(fusion, plan, &producer, id);
            if let Some(p) = (0..bytes).find(|&p| tags[offset + p] != want[p]) {
                return Err(format!(
                    "{when}: {id} at byte {} holds %{} instead of %{}",
                    offset + p,
                    tags[offset + p],
                    want[p]
                ));
            }
            Ok(())
        } else if matches!(g.node(id).op, Op::Param { .. }) {
            Ok(())
        } else {
            Err(format!("{when}: {id} has no slot"))
        }
    };
    for (_, x) in g.inputs() {
        write(&mut tags, x);
    }
    for (gi, grp) in fusion.groups.iter().enumerate() {
        let mut local: HashMap<NodeId, Tensor> = HashMap::new();
        for &x in &grp.inputs {
            check(&tags, x, &format!("group {gi} reads"))?;
            if let Some(r) = &reference {
                let v = stored
                    .get(&x)
                    .cloned()
                    .unwrap_or_else(|| r[x.index()].clone());
                local.insert(x, v);
            }
        }
        if let Some(r) = &reference {
            for &m in &grp.nodes {
                let args: Vec<&Tensor> = g.node(m).args.iter().map(|a| &local[a]).collect();
                let v = eval_op(&g.node(m).op, &args).map_err(|e| format!("group {gi}: {e}"))?;
                if !v.allclose(&r[m.index()], 1e-12, 1e-12) {
                    return Err(format!("group {gi}: {m} differs from the reference"));
                }
                local.insert(m, v);
            }
            for &o in &grp.outputs {
                stored.insert(o, local[&o].clone());
            }
        }
        if grp.kind != GroupKind::Alias {
            for &o in &grp.outputs {
                write(&mut tags, o);
            }
        }
    }
    for (name, o) in &g.outputs {
        check(&tags, *o, &format!("graph output {name} at the end"))?;
    }
    Ok(())
}

fn fusion_options() -> [FusionOptions; 4] {
    [
        FusionOptions::default(),
        FusionOptions {
            reshaped_reduction_outputs: true,
            ..FusionOptions::default()
        },
        FusionOptions::unfused(),
        FusionOptions {
            recompute_cheap: false,
            matmul_epilogue: false,
            ..FusionOptions::default()
        },
    ]
}

fn memory_options() -> [MemoryOptions; 4] {
    [
        MemoryOptions::default(),
        MemoryOptions {
            in_place: false,
            ..MemoryOptions::default()
        },
        MemoryOptions {
            concat_in_place: false,
            ..MemoryOptions::default()
        },
        MemoryOptions::no_reuse(),
    ]
}

/// Every fusion × memory option: the plan validates, fits the naive bound, and a simulated run
/// reads intact inputs and computes the reference values.
fn check_case(case: &RandomCase) -> Result<(), TestCaseError> {
    let g = &case.graph;
    for fo in fusion_options() {
        let fusion = fuse(g, &fo);
        for mo in memory_options() {
            let plan = plan_memory(g, &fusion, &mo);
            let ctx = || {
                format!(
                    "{fo:?} {mo:?}\n{case:?}\n{}",
                    dump_memplan(g, &fusion, &plan)
                )
            };
            if let Err(e) = validate_memory_plan(g, &fusion, &plan) {
                prop_assert!(false, "invalid plan: {e}\n{}", ctx());
            }
            prop_assert!(plan.arena_bytes >= plan.peak_live_bytes);
            prop_assert_eq!(plan.arena_bytes % MemoryPlan::ALIGN, 0);
            // Never more than a naive arena giving every value its own buffer.
            let naive: usize = g
                .ids()
                .filter(|&id| matches!(plan.slot(id), Some(Slot::Arena { .. })))
                .map(|id| align_up(g.ty(id).size_bytes()))
                .sum();
            prop_assert!(plan.arena_bytes <= naive);
            if !mo.in_place {
                prop_assert!(plan.in_place.is_empty());
            }
            if !mo.concat_in_place {
                prop_assert!(plan.concat_in_place.is_empty());
            }
            if let Err(e) = simulate(case, &fusion, &plan) {
                prop_assert!(false, "simulation: {e}\n{}", ctx());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    #[test]
    fn random_memory_plans_are_valid_and_execute(seed in any::<u64>(), big in any::<bool>()) {
        let opts = RandomGraphOptions {
            num_ops: if big { 50 } else { 16 },
            ..RandomGraphOptions::default()
        };
        check_case(&RandomCase::new(seed, &opts))?;
    }

    /// Concats whose operands are contiguous slices of the result (concat in place).
    #[test]
    fn concat_memory_plans_are_valid_and_execute(seed in any::<u64>()) {
        check_case(&random_concat_case(seed))?;
    }
}

/// `param_outputs`: an elementwise update of a param that only its group reads is computed in
/// the param's memory (no arena slot); a param another group also reads, or a type change, keeps
/// the output in the arena.
#[test]
fn param_outputs_are_written_in_place_only_when_legal() {
    let mut g = Graph::new();
    let w = g.param("w", f32t(&[32, 32]));
    let v = g.param("v", f32t(&[32, 32]));
    let x = g.input("x", f32t(&[32, 32]));
    let w_new = g.add(Op::Binary(BinaryOp::Add), &[w, x]).unwrap();
    let v_new = g.add(Op::Binary(BinaryOp::Mul), &[v, x]).unwrap();
    // A second reader of v in another group: a reduction.
    let vs = g
        .add(
            Op::Reduce {
                op: qie_ir::ReduceOp::Sum,
                axes: shape(&[1]),
            },
            &[v],
        )
        .unwrap();
    g.set_output("w", w_new);
    g.set_output("v", v_new);
    g.set_output("vs", vs);
    let fusion = fuse(&g, &FusionOptions::default());
    let opts = MemoryOptions {
        param_outputs: vec![(w_new, w), (v_new, v), (x, w)],
        ..MemoryOptions::default()
    };
    let plan = plan_memory(&g, &fusion, &opts);
    validate_memory_plan(&g, &fusion, &plan).unwrap();
    assert_eq!(plan.param_in_place, vec![(w_new, w)]);
    assert_eq!(plan.slot(w_new), Some(Slot::Param));
    assert!(matches!(plan.slot(v_new), Some(Slot::Arena { .. })));
    // A plan claiming an illegal pair does not validate.
    let mut forged = plan.clone();
    forged.param_in_place.push((v_new, v));
    assert!(validate_memory_plan(&g, &fusion, &forged).is_err());
}
