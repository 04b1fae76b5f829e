//! Text dumps of the schedule: `qie compile --dump-fusion` ([`dump_fusion`]) and
//! `--dump-memplan` ([`dump_memplan`]). Formats are documented in docs/fusion.md; tests match on
//! them, so change them together.

use crate::plan::{FusionPlan, GroupKind, KernelGroup, MemoryPlan, Slot};
use crate::print::op_text;
use crate::{Graph, NodeId, Op};
use std::fmt::Write;

fn id_list(ids: &[NodeId]) -> String {
    if ids.is_empty() {
        return "-".into();
    }
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn role(grp: &KernelGroup, id: NodeId) -> &'static str {
    if grp.anchor == Some(id) {
        "anchor"
    } else if grp.prologue.binary_search(&id).is_ok() {
        "prologue"
    } else if grp.epilogue.binary_search(&id).is_ok() {
        "epilogue"
    } else {
        "body"
    }
}

/// The fusion plan, one block per group in execution order (RMS norm `x * rsqrt(mean(x^2)) * w`):
///
/// ```text
/// fusion: 2 groups, 2 launches (elementwise 1, reduction 1, library 0, data 0, alias 0)
/// g0 reduction anchor=%3 in: %0 out: %7
///   prologue  %2: f32[6, 64] = mul %0, %0
///   anchor    %3: f32[6] = reduce_sum[axes=[1]] %2
///   epilogue  %4: f32[] = const[64]  (recomputed)
///   epilogue  %5: f32[6] = broadcast[[6]] %4
///   epilogue  %6: f32[6] = div %3, %5
///   epilogue  %7: f32[6] = rsqrt %6  -> out
/// g1 elementwise in: %0 %1 %7 out: %12
///   body      %8: f32[6, 1] = reshape[[6, 1]] %7
///   ...
/// ```
/// Header: group count, kernel launches (groups minus aliases), count per kind. Per group:
/// `g<index> <kind> [anchor=<id>] in: <ids or -> out: <ids>`, then one line per member in id
/// order: role (`prologue`, `anchor`, `epilogue`, `body` for Elementwise/Alias members),
/// the node as `print_graph` writes it, `(recomputed)` for members owned by another group (or
/// constants), `-> out` for outputs.
pub fn dump_fusion(g: &Graph, plan: &FusionPlan) -> String {
    let mut out = String::new();
    let counts: Vec<String> = plan
        .kind_counts()
        .iter()
        .map(|(k, c)| format!("{} {c}", k.name()))
        .collect();
    let _ = writeln!(
        out,
        "fusion: {} groups, {} launches ({})",
        plan.groups.len(),
        plan.launches(),
        counts.join(", ")
    );
    for (gi, grp) in plan.groups.iter().enumerate() {
        let _ = write!(out, "g{gi} {}", grp.kind.name());
        if let Some(a) = grp.anchor {
            let _ = write!(out, " anchor={a}");
        }
        let _ = writeln!(
            out,
            " in: {} out: {}",
            id_list(&grp.inputs),
            id_list(&grp.outputs)
        );
        for &id in &grp.nodes {
            let node = g.node(id);
            let args: Vec<String> = node.args.iter().map(|a| a.to_string()).collect();
            let _ = write!(
                out,
                "  {:<9} {id}: {} = {}",
                role(grp, id),
                node.ty,
                op_text(&node.op)
            );
            if !args.is_empty() {
                let _ = write!(out, " {}", args.join(", "));
            }
            if grp.recomputed.binary_search(&id).is_ok() {
                out.push_str("  (recomputed)");
            }
            if grp.outputs.binary_search(&id).is_ok() {
                out.push_str("  -> out");
            }
            out.push('\n');
        }
    }
    out
}

/// Human-readable byte count: `12544 B (12.2 KiB)`.
fn bytes_text(b: usize) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = "";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if unit.is_empty() {
        format!("{b} B")
    } else {
        format!("{b} B ({v:.1} {unit})")
    }
}

/// The memory plan, one line per arena value in offset order, then the params:
///
/// ```text
/// memplan: arena 1792 B (1.8 KiB), peak live 1792 B (1.8 KiB), 3 arena values, 1 params, 1 in-place
///       offset      bytes  live     value  by     type             note
///            0       1536  0..1     %0     input  f32[6, 64]       "x"
///            0       1536  1..2     %12    g1     f32[6, 64]       in-place of %0, output "y"
///         1536         24  0..1     %7     g0     f32[6]
/// params: %1 "w"
/// ```
/// `live a..b` is the inclusive range of group indices during which the bytes must stay intact
/// (graph inputs start at 0, graph outputs end at the group count); `by` the producing group
/// (`input` for graph inputs); notes: input name, `alias of <id>`, `in-place of <id>`,
/// `in concat <id>` (written in place into its slice of that concat), `output "<name>"`.
pub fn dump_memplan(g: &Graph, fusion: &FusionPlan, mem: &MemoryPlan) -> String {
    let mut out = String::new();
    let mut producer: Vec<Option<usize>> = vec![None; g.len()];
    for (gi, grp) in fusion.groups.iter().enumerate() {
        for &o in &grp.outputs {
            producer[o.index()] = Some(gi);
        }
    }
    let mut arena: Vec<(usize, NodeId, usize)> = Vec::new();
    let mut params = Vec::new();
    for id in g.ids() {
        match mem.slot(id) {
            Some(Slot::Arena { offset, bytes }) => arena.push((offset, id, bytes)),
            Some(Slot::Param) => params.push(id),
            None => {}
        }
    }
    arena.sort();
    let _ = writeln!(
        out,
        "memplan: arena {}, peak live {}, {} arena values, {} params, {} in-place",
        bytes_text(mem.arena_bytes),
        bytes_text(mem.peak_live_bytes),
        arena.len(),
        params.len(),
        mem.in_place.len()
    );
    if !mem.concat_in_place.is_empty() {
        out.pop();
        let _ = writeln!(out, ", {} concat in place", mem.concat_in_place.len());
    }
    let _ = writeln!(
        out,
        "  {:>10} {:>10}  {:<8} {:<6} {:<6} {:<16} note",
        "offset", "bytes", "live", "value", "by", "type"
    );
    for (offset, id, bytes) in arena {
        let live = match mem.lifetimes.get(id.index()).copied().flatten() {
            Some((s, e)) => format!("{s}..{e}"),
            None => "?".into(),
        };
        let by = match (&g.node(id).op, producer[id.index()]) {
            (Op::Input { .. }, _) => "input".to_string(),
            (_, Some(gi)) => format!("g{gi}"),
            _ => "?".into(),
        };
        let mut notes: Vec<String> = Vec::new();
        if let Op::Input { name, .. } = &g.node(id).op {
            notes.push(format!("\"{name}\""));
        }
        if let Some(gi) = producer[id.index()] {
            let grp = &fusion.groups[gi];
            if grp.kind == GroupKind::Alias {
                notes.push(format!("alias of {}", grp.inputs[0]));
            }
        }
        for (o, x) in &mem.in_place {
            if *o == id {
                notes.push(format!("in-place of {x}"));
            }
        }
        for (c, a) in &mem.concat_in_place {
            if *a == id {
                notes.push(format!("in concat {c}"));
            }
        }
        for (name, o) in &g.outputs {
            if *o == id {
                notes.push(format!("output \"{name}\""));
            }
        }
        let _ = writeln!(
            out,
            "  {offset:>10} {bytes:>10}  {live:<8} {:<6} {by:<6} {:<16} {}",
            id.to_string(),
            g.ty(id).to_string(),
            notes.join(", ")
        );
    }
    if !params.is_empty() {
        let names: Vec<String> = params
            .iter()
            .map(|&p| match &g.node(p).op {
                Op::Param { name, .. } => format!("{p} \"{name}\""),
                _ => p.to_string(),
            })
            .collect();
        let _ = writeln!(out, "params: {}", names.join(", "));
    }
    out
}
