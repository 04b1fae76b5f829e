//! [`StepLowering`]: what a backend implements to bind a lowered plan, and [`bind_plan`], the
//! one walk over the plan's groups that every backend shares.

use super::checks::check_view;
use super::{Binder, BufRef, IoSlot, ParamSlot};
use crate::backend::RuntimeError;
use qie_codegen::{Binding, KernelProgram, LoweredGroup, Operand, Step, View};
use qie_ir::plan::MemoryPlan;
use qie_ir::Graph;

/// Where a library step sits: its group, its index there, and its label (`g12_s3`).
pub struct StepSite<'a> {
    pub group: &'a LoweredGroup,
    pub index: usize,
    pub name: String,
}

/// `out = a @ b` with the IR's transpose flags (see [`Step::MatMul`]).
pub struct MatMulCall<'a> {
    pub out: &'a Binding,
    pub a: &'a Operand,
    pub b: &'a Operand,
    pub transpose_a: bool,
    pub transpose_b: bool,
}

/// `out = softmax(q k^T * scale + mask) v`, or with `dout` its packed gradients dq | dk | dv
/// (see [`Step::Attention`]).
pub struct AttentionCall<'a> {
    pub out: &'a Binding,
    pub q: &'a Operand,
    pub k: &'a Operand,
    pub v: &'a Operand,
    pub mask: Option<&'a Operand>,
    pub dout: Option<&'a Operand>,
    pub scale: f64,
}

/// An NCHW convolution (see [`Step::Conv2d`]).
pub struct Conv2dCall<'a> {
    pub out: &'a Binding,
    pub x: &'a Operand,
    pub w: &'a Operand,
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

/// A backend's half of binding: how each lowered step becomes the backend's own steps. The
/// [`Binder`] hands out buffers; [`bind_plan`] walks the groups.
pub trait StepLowering {
    /// A generated kernel (buffers from [`Binder::kernel_buffers`]).
    fn kernel(&mut self, b: &mut Binder, p: &KernelProgram) -> Result<(), RuntimeError>;

    /// A matmul. Returns true when it also consumed the step after it (an epilogue the backend
    /// fused into its GEMM), which the walk then skips.
    fn matmul(
        &mut self,
        b: &mut Binder,
        site: &StepSite,
        call: MatMulCall,
    ) -> Result<bool, RuntimeError>;

    fn attention(
        &mut self,
        b: &mut Binder,
        site: &StepSite,
        call: AttentionCall,
    ) -> Result<(), RuntimeError>;

    fn conv2d(
        &mut self,
        b: &mut Binder,
        site: &StepSite,
        call: Conv2dCall,
    ) -> Result<(), RuntimeError>;

    /// Copies `src`'s bytes into `dst` (an alias the memory plan gave a slot of its own).
    fn copy(&mut self, src: BufRef, dst: BufRef);

    /// Called after the last step of each group.
    fn end_group(&mut self, _group: &LoweredGroup) {}

    /// A library operand as (buffer, strided view inside it); operands whose index maps are
    /// not strided are first copied to dense scratch by a generated kernel.
    fn operand(
        &mut self,
        b: &mut Binder,
        op: &Operand,
        name: &str,
    ) -> Result<(BufRef, View), RuntimeError> {
        let buf = b.resolve(&op.buffer)?;
        if let Some(v) = op.map.as_strided() {
            check_view(v, buf, name)?;
            return Ok((buf, v.clone()));
        }
        self.densify(b, op, name)
    }

    /// The operand copied to dense scratch (also for strided layouts a fast path cannot read).
    fn densify(
        &mut self,
        b: &mut Binder,
        op: &Operand,
        name: &str,
    ) -> Result<(BufRef, View), RuntimeError> {
        let (p, buf, view) = b.dense_copy(&op.buffer, op.map.clone(), name);
        self.kernel(b, &p)?;
        Ok((buf, view))
    }
}

/// A lowered plan bound to arena offsets, with the backend's steps in `lowering`.
pub struct BoundPlan<L> {
    pub lowering: L,
    pub inputs: Vec<IoSlot>,
    pub outputs: Vec<IoSlot>,
    pub params: Vec<ParamSlot>,
    /// Plan region plus scratch.
    pub arena_bytes: usize,
    /// The scratch part of `arena_bytes`.
    pub scratch_bytes: usize,
}

/// Binds `lowered` (lowered from `graph` with `memory`) through `lowering`. `graph` carries
/// storage dtypes; `visible` is the same graph with the types callers bind and receive.
pub fn bind_plan<L: StepLowering>(
    graph: &Graph,
    visible: &Graph,
    memory: &MemoryPlan,
    lowered: &[LoweredGroup],
    mut lowering: L,
) -> Result<BoundPlan<L>, RuntimeError> {
    let mut b = Binder::new(graph, memory);
    let inputs = b.inputs(visible)?;
    for lg in lowered {
        b.begin_group(lg);
        let mut skip_next = false;
        for (index, step) in lg.steps.iter().enumerate() {
            if std::mem::take(&mut skip_next) {
                continue;
            }
            let site = StepSite {
                group: lg,
                index,
                name: format!("g{}_s{index}", lg.index),
            };
            match step {
                Step::Kernel(p) => lowering.kernel(&mut b, p)?,
                Step::MatMul {
                    out,
                    a,
                    b: rhs,
                    transpose_a,
                    transpose_b,
                } => {
                    let call = MatMulCall {
                        out,
                        a,
                        b: rhs,
                        transpose_a: *transpose_a,
                        transpose_b: *transpose_b,
                    };
                    skip_next = lowering.matmul(&mut b, &site, call)?;
                }
                Step::Attention {
                    out,
                    q,
                    k,
                    v,
                    mask,
                    dout,
                    scale,
                } => {
                    let call = AttentionCall {
                        out,
                        q,
                        k,
                        v,
                        mask: mask.as_ref(),
                        dout: dout.as_ref(),
                        scale: *scale,
                    };
                    lowering.attention(&mut b, &site, call)?
                }
                Step::Conv2d {
                    out,
                    x,
                    w,
                    stride,
                    padding,
                    dilation,
                    groups,
                } => {
                    let call = Conv2dCall {
                        out,
                        x,
                        w,
                        stride: *stride,
                        padding: *padding,
                        dilation: *dilation,
                        groups: *groups,
                    };
                    lowering.conv2d(&mut b, &site, call)?
                }
                Step::Alias { src, dst } => {
                    if let Some((s, d)) = b.alias(src, dst, &site.name)? {
                        lowering.copy(s, d);
                    }
                }
            }
        }
        lowering.end_group(lg);
    }
    let outputs = b.outputs(visible)?;
    let (arena_bytes, scratch_bytes) = (b.arena_bytes(), b.scratch_bytes());
    Ok(BoundPlan {
        lowering,
        inputs,
        outputs,
        params: b.into_params(),
        arena_bytes,
        scratch_bytes,
    })
}
