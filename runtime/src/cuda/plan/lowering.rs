//! [`CudaLowering`]: the CUDA backend's [`StepLowering`]. Generated kernels are rendered to CUDA
//! C here; library steps go to [`super::matmul`], [`super::attention`] and [`super::conv`].

use super::epilogue::epilogue_candidate;
use super::{BufRef, KArg, PlanStep};
use crate::backend::RuntimeError;
use crate::bind::{AttentionCall, Binder, Conv2dCall, MatMulCall, StepLowering, StepSite};
use crate::storage::StorageMode;
use qie_codegen::cuda::{render_program, KernelLaunch, RenderOptions};
use qie_codegen::{KernelProgram, LoweredGroup};
use qie_ir::DType;
use std::collections::BTreeMap;

/// The plan's steps as they are being built.
pub(crate) struct CudaLowering {
    pub mode: StorageMode,
    pub steps: Vec<PlanStep>,
    /// Kernel symbol -> source.
    pub kernels: BTreeMap<String, String>,
    /// Generated-kernel symbol -> the program it was rendered from.
    pub programs: BTreeMap<String, KernelProgram>,
    /// The fusion group of each step in `steps`.
    pub step_groups: Vec<usize>,
    /// Launches (generated kernels and library calls).
    pub launches: usize,
}

impl CudaLowering {
    pub fn new(mode: StorageMode) -> CudaLowering {
        CudaLowering {
            mode,
            steps: vec![],
            kernels: BTreeMap::new(),
            programs: BTreeMap::new(),
            step_groups: vec![],
            launches: 0,
        }
    }

    pub fn add_kernel(&mut self, name: &str, source: String) {
        self.kernels.entry(name.to_string()).or_insert(source);
    }
}

impl StepLowering for CudaLowering {
    fn kernel(&mut self, b: &mut Binder, p: &KernelProgram) -> Result<(), RuntimeError> {
        let (inputs, outputs, overlapping) = b.kernel_buffers(p)?;
        let rendered = render_program(
            p,
            &RenderOptions {
                restrict: !overlapping,
            },
        )
        .map_err(|e| RuntimeError::Unsupported(format!("kernel {}: {e}", p.name)))?;
        let KernelLaunch { grid, block } = rendered.launch;
        self.add_kernel(&rendered.name, rendered.source);
        if !self.programs.contains_key(&rendered.name) {
            self.programs.insert(rendered.name.clone(), p.clone());
        }
        if grid == 0 {
            return Ok(());
        }
        let args = inputs
            .iter()
            .chain(&outputs)
            .map(|&r| KArg::Ptr(r, 0))
            .collect();
        self.steps.push(PlanStep::Kernel {
            name: rendered.name,
            label: rendered.label,
            grid: (grid, 1, 1),
            block,
            args,
        });
        self.launches += 1;
        Ok(())
    }

    fn matmul(
        &mut self,
        b: &mut Binder,
        site: &StepSite,
        call: MatMulCall,
    ) -> Result<bool, RuntimeError> {
        let fusable = epilogue_candidate(site.group, site.index, call.out);
        self.matmul_step(
            b,
            call.out,
            call.a,
            call.b,
            call.transpose_a,
            call.transpose_b,
            fusable.as_ref(),
            &site.name,
        )
    }

    fn attention(
        &mut self,
        b: &mut Binder,
        site: &StepSite,
        call: AttentionCall,
    ) -> Result<(), RuntimeError> {
        if call.dout.is_some() {
            return self.attention_grad_step(b, &call, &site.name);
        }
        self.attention_step(
            b, call.out, call.q, call.k, call.v, call.mask, call.scale, &site.name,
        )
    }

    fn conv2d(
        &mut self,
        b: &mut Binder,
        site: &StepSite,
        call: Conv2dCall,
    ) -> Result<(), RuntimeError> {
        self.conv2d_step(
            b,
            call.out,
            call.x,
            call.w,
            call.stride,
            call.padding,
            call.dilation,
            call.groups,
            &site.name,
        )
    }

    fn copy(&mut self, src: BufRef, dst: BufRef) {
        self.steps.push(PlanStep::Copy { src, dst });
    }

    fn end_group(&mut self, group: &LoweredGroup) {
        self.step_groups.resize(self.steps.len(), group.index);
    }
}

pub(super) fn dtype_tag(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::I32 => "i32",
        DType::I64 => "i64",
        DType::Bool => "bool",
    }
}

pub(super) fn float_type(d: DType, what: &str) -> Result<&'static str, RuntimeError> {
    match d {
        DType::F32 => Ok("float"),
        DType::BF16 => Ok("bf16_t"),
        DType::F16 => Ok("f16_t"),
        _ => Err(RuntimeError::Unsupported(format!(
            "{what} on {d} values (the CUDA backend's library kernels are float-only)"
        ))),
    }
}
