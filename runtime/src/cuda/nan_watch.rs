//! `QIE_CUDA_NAN_WATCH=1`: a debugging run that finds the first plan step touching a
//! non-finite float. After every step (eager, synchronised) each float buffer the step reads
//! or writes is copied back and scanned; a buffer seen non-finite for the first time is
//! reported on stderr with the step's label. Slow: for small models.

use super::plan::{BufRef, KArg, PlanStep};
use super::{CudaDevice, DevPtr};
use qie_ir::DType;
use std::collections::HashSet;

/// Reports at most this many buffers per run.
const MAX_REPORTS: usize = 8;

#[derive(Default)]
pub struct NanWatch {
    seen: HashSet<(usize, usize, bool)>,
    reports: usize,
}

impl NanWatch {
    pub fn enabled() -> bool {
        std::env::var("QIE_CUDA_NAN_WATCH").is_ok_and(|v| v == "1")
    }

    /// Scans the float buffers of step `index` (already run and synchronised).
    pub fn check(
        &mut self,
        dev: &CudaDevice,
        index: usize,
        step: &PlanStep,
        ptr: &dyn Fn(&BufRef) -> DevPtr,
    ) {
        if self.reports >= MAX_REPORTS {
            return;
        }
        for (k, buf) in step_buffers(step).iter().enumerate() {
            let (dtype, bytes) = (buf.dtype(), buf.bytes());
            if !matches!(dtype, DType::F32 | DType::BF16) || bytes == 0 {
                continue;
            }
            let mut host = vec![0u8; bytes];
            if dev.dtoh(&mut host, ptr(buf)).is_err() {
                continue;
            }
            let bad = match dtype {
                DType::BF16 => host
                    .chunks_exact(2)
                    .filter(|b| !half::bf16::from_le_bytes([b[0], b[1]]).is_finite())
                    .count(),
                _ => host
                    .chunks_exact(4)
                    .filter(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())
                    .count(),
            };
            let key = match *buf {
                BufRef::Arena { offset, bytes, .. } => (offset, bytes, false),
                BufRef::Param { index, bytes, .. } => (index, bytes, true),
            };
            if bad > 0 && self.seen.insert(key) {
                eprintln!(
                    "qie nan-watch: step {index} `{}`: buffer {k} ({buf:?}) holds {bad} non-finite of {} values",
                    step.label(),
                    bytes / dtype.size_bytes()
                );
                self.reports += 1;
            }
        }
    }
}

/// Every buffer a step names (inputs and outputs alike).
fn step_buffers(step: &PlanStep) -> Vec<BufRef> {
    match step {
        PlanStep::Kernel { args, .. } => args
            .iter()
            .filter_map(|a| match a {
                KArg::Ptr(b, _) => Some(*b),
                _ => None,
            })
            .collect(),
        PlanStep::Gemm { gemm, .. } => {
            let mut v = vec![gemm.a.0, gemm.b.0, gemm.d];
            v.extend(gemm.bias.map(|(b, _)| b));
            v
        }
        PlanStep::Flash { flash, .. } => {
            vec![flash.q.0, flash.k.0, flash.v.0, flash.out, flash.lse]
        }
        PlanStep::FlashGrad { flash, grad, .. } => vec![
            flash.q.0,
            flash.k.0,
            flash.v.0,
            grad.dout.0,
            flash.out,
            flash.lse,
            grad.delta,
            grad.out,
        ],
        PlanStep::Copy { src, dst } => vec![*src, *dst],
        PlanStep::Zero { dst } => vec![*dst],
    }
}
