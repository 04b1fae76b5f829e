//! Readable text form of a graph (`qie compile --dump-ir`).

use crate::types::ShapeDisplay;
use crate::{Graph, Op};
use std::fmt::Write;

/// One line per node: `%7: f32[2, 3] = add %5, %6  # origin`.
pub fn print_graph(graph: &Graph) -> String {
    let mut out = String::new();
    for id in graph.ids() {
        let node = graph.node(id);
        let _ = write!(out, "{id}: {} = {}", node.ty, op_text(&node.op));
        for (i, a) in node.args.iter().enumerate() {
            let _ = write!(out, "{}{a}", if i == 0 { " " } else { ", " });
        }
        if let Some(origin) = &node.origin {
            let _ = write!(out, "  # {origin}");
        }
        out.push('\n');
    }
    for (name, id) in &graph.outputs {
        let _ = writeln!(out, "output {name} = {id}");
    }
    out
}

/// `mnemonic[attrs]` of an op, as every dump prints it.
pub fn op_text(op: &Op) -> String {
    let attrs = attributes(op);
    if attrs.is_empty() {
        op.mnemonic()
    } else {
        format!("{}[{attrs}]", op.mnemonic())
    }
}

fn attributes(op: &Op) -> String {
    match op {
        Op::Input { name, .. } | Op::Param { name, .. } => format!("\"{name}\""),
        Op::Constant { value, .. } => format!("{value}"),
        Op::Iota { axis, .. } => format!("axis={axis}"),
        Op::Cast { to } => format!("{to}"),
        Op::Reduce { axes, .. } => format!("axes={axes:?}"),
        Op::Reshape { shape } | Op::Broadcast { shape } => format!("{}", ShapeDisplay(shape)),
        Op::Transpose { perm } => format!("perm={perm:?}"),
        Op::Slice { axis, start, end } => format!("axis={axis}, {start}..{end}"),
        Op::Concat { axis } | Op::Gather { axis } => format!("axis={axis}"),
        Op::MatMul {
            transpose_a,
            transpose_b,
        } => format!("ta={transpose_a}, tb={transpose_b}"),
        Op::Attention { scale } | Op::AttentionGrad { scale } => format!("scale={scale}"),
        Op::Conv2d {
            stride,
            padding,
            dilation,
            groups,
        } => {
            format!(
                "stride={stride:?}, padding={padding:?}, dilation={dilation:?}, groups={groups}"
            )
        }
        _ => String::new(),
    }
}
