//! Which kernel after a matmul cuBLASLt can apply as its epilogue (bias, GELU, both).

use super::GemmEpilogue;
use qie_codegen::{Binding, Instr, KernelProgram, LoweredGroup, Step};

/// An epilogue kernel cuBLASLt can apply itself: `dst = kind(anchor [+ bias[n]])`.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct FusedEpilogue {
    pub kind: GemmEpilogue,
    /// The bias buffer and the element offset of `bias[0]` in it.
    pub bias: Option<(Binding, usize)>,
    pub dst: Binding,
}

/// Whether the step after the matmul at `si` is an epilogue cuBLASLt can fuse: one kernel that
/// reads the matmul result (a temporary no other step reads) at its own index, optionally a
/// bias along the last axis, and stores one value per element densely; and that computes, on
/// sample values, `y + b`, `gelu_tanh(y)` or `gelu_tanh(y + b)` (cuBLASLt's GELU is the tanh
/// form). The check is semantic, so it does not depend on how the model source spells GELU.
pub(super) fn epilogue_candidate(
    lg: &LoweredGroup,
    si: usize,
    out: &Binding,
) -> Option<FusedEpilogue> {
    let Some(Step::Kernel(p)) = lg.steps.get(si + 1) else {
        return None;
    };
    let anchor = out.node;
    if !lg.temporaries.iter().any(|t| t.node == anchor) {
        return None;
    }
    let read_later = lg.steps[si + 2..].iter().any(|s| match s {
        Step::Kernel(q) => q.inputs.iter().any(|b| b.node == anchor),
        _ => true,
    });
    if read_later
        || p.is_reduction()
        || !p.epilogue.is_empty()
        || p.outputs.len() != 1
        || p.body.stores.len() != 1
        || p.outputs[0].ty.numel() != out.ty.numel()
        || !p.body.stores[0].map.is_contiguous()
    {
        return None;
    }
    let n = *out.ty.shape.last()?;
    let ai = p.inputs.iter().position(|b| b.node == anchor)?;
    let mut bias = None;
    for s in &p.body.stmts {
        if let Instr::Load { input, map } = &s.instr {
            if *input == ai {
                if !map.is_contiguous() {
                    return None;
                }
            } else {
                // A bias: [.., N] with stride 1 on the last axis, 0 elsewhere.
                let v = map.as_strided()?;
                let rank = v.rank();
                let along_n = rank >= 1
                    && v.shape[rank - 1] == n
                    && n > 1
                    && v.strides[rank - 1] == 1
                    && v.strides[..rank - 1].iter().all(|&x| x == 0)
                    && v.offset >= 0;
                if !along_n || bias.is_some_and(|(i, _)| i != *input) {
                    return None;
                }
                bias = Some((*input, v.offset as usize));
            }
        } else if s.instr.map().is_some() {
            return None;
        }
    }
    if p.inputs.len() != 1 + bias.is_some() as usize {
        return None;
    }
    let gelu =
        |x: f64| 0.5 * x * (1.0 + (0.797_884_560_802_865_4 * (x + 0.044715 * x * x * x)).tanh());
    let samples = [-3.3, -1.1, -0.37, 0.0, 0.21, 0.8, 1.9, 5.2];
    let biases: &[f64] = if bias.is_some() {
        &[-0.7, 0.0, 1.4]
    } else {
        &[0.0]
    };
    let bi = bias.map(|(i, _)| i);
    let matches = |target: &dyn Fn(f64, f64) -> f64| {
        samples.iter().all(|&y| {
            biases.iter().all(|&b| {
                let mut vals = vec![0.0; p.inputs.len()];
                vals[ai] = y;
                if let Some(i) = bi {
                    vals[i] = b;
                }
                let want = target(y, b);
                eval_scalar(p, &vals)
                    .is_some_and(|got| (got - want).abs() <= 1e-9 * (1.0 + want.abs()))
            })
        })
    };
    let kind = match bias {
        Some(_) if matches(&|y, b| y + b) => GemmEpilogue::Bias,
        Some(_) if matches(&|y, b| gelu(y + b)) => GemmEpilogue::GeluBias,
        None if matches(&|y, _| gelu(y)) => GemmEpilogue::Gelu,
        _ => return None,
    };
    Some(FusedEpilogue {
        kind,
        bias: bias.map(|(i, off)| (p.inputs[i].clone(), off)),
        dst: p.outputs[0].clone(),
    })
}

/// Evaluates a one-output elementwise program in f64 for one element, `vals[i]` being what
/// every load of input `i` reads. `None` for anything but float arithmetic.
fn eval_scalar(p: &KernelProgram, vals: &[f64]) -> Option<f64> {
    use qie_ir::{BinaryOp as B, UnaryOp as U};
    let mut regs = vec![0.0f64; p.num_regs()];
    for s in &p.body.stmts {
        if !s.dtype.is_float() {
            return None;
        }
        let r = |x: qie_codegen::Reg| regs[x.index()];
        let v = match &s.instr {
            Instr::Load { input, .. } => vals[*input],
            Instr::Const { value } => *value,
            Instr::Cast { a } => r(*a),
            Instr::Unary { op, a } => {
                let x = r(*a);
                match op {
                    U::Neg => -x,
                    U::Abs => x.abs(),
                    U::Exp => x.exp(),
                    U::Log => x.ln(),
                    U::Sqrt => x.sqrt(),
                    U::Rsqrt => 1.0 / x.sqrt(),
                    U::Recip => 1.0 / x,
                    U::Sin => x.sin(),
                    U::Cos => x.cos(),
                    U::Tanh => x.tanh(),
                    U::Sigmoid => 1.0 / (1.0 + (-x).exp()),
                    U::Not => return None,
                }
            }
            Instr::Binary { op, a, b } => {
                let (x, y) = (r(*a), r(*b));
                match op {
                    B::Add => x + y,
                    B::Sub => x - y,
                    B::Mul => x * y,
                    B::Div => x / y,
                    B::Max => x.max(y),
                    B::Min => x.min(y),
                    B::Pow => x.powf(y),
                    _ => return None,
                }
            }
            _ => return None,
        };
        regs[s.dst.index()] = v;
    }
    Some(regs[p.body.stores.first()?.value.index()])
}
