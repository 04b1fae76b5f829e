//! Attention steps: the flash kernel for bf16 with head dim 64 / 128 and strides that are
//! multiples of 8; otherwise the tiled kernel for head dims up to 96 (f32 eval models: ViT-B's
//! 64, SigLIP so400m's 72), and the generic one-block-per-row kernel beyond.

use super::lowering::{dtype_tag, float_type, CudaLowering};
use super::{BufRef, FlashStep, KArg, PlanStep};
use crate::backend::RuntimeError;
use crate::bind::checks::check_disjoint;
use crate::bind::{Binder, StepLowering};
use crate::storage::StorageMode;
use qie_codegen::{Binding, Operand, View};
use qie_ir::{DType, TensorType};

impl CudaLowering {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_step(
        &mut self,
        b: &mut Binder,
        out: &Binding,
        q: &Operand,
        k: &Operand,
        v: &Operand,
        mask: Option<&Operand>,
        scale: f64,
        name: &str,
    ) -> Result<(), RuntimeError> {
        let out_r = b.resolve(out)?;
        let (qb, qv) = self.operand(b, q, name)?;
        let (kb, kv) = self.operand(b, k, name)?;
        let (vb, vv) = self.operand(b, v, name)?;
        let mut m = match mask {
            Some(m) => Some(self.operand(b, m, name)?),
            None => None,
        };
        let mut ops = vec![qb, kb, vb];
        ops.extend(m.as_ref().map(|m| m.0));
        check_disjoint(&ops, out_r, name)?;
        let [batch, sq, heads, d] = [qv.shape[0], qv.shape[1], qv.shape[2], qv.shape[3]];
        let sk = kv.shape[1];
        let dv = vv.shape[3];
        if batch == 0 || sq == 0 || heads == 0 || dv == 0 {
            return Ok(());
        }
        if let Some((mb, _)) = &m {
            if mb.dtype() != DType::Bool {
                return Err(RuntimeError::Unsupported(format!(
                    "{name}: attention mask stored as {}",
                    mb.dtype()
                )));
            }
        }
        // The mask must be contiguous along keys for either kernel's fast reads; copy otherwise.
        if let (Some(op), Some((_, mv))) = (mask, &m) {
            if sk > 1 && mv.strides[1] != 1 {
                m = Some(self.densify(b, op, name)?);
            }
        }
        let label = format!("attention {name} [B{batch} Sq{sq} Sk{sk} H{heads} D{d}]");
        let bf16 = [qb.dtype(), kb.dtype(), vb.dtype(), out_r.dtype()]
            .iter()
            .all(|&t| t == DType::BF16);
        let flash = self.mode == StorageMode::Bf16
            && bf16
            && d == dv
            && (d == 64 || d == 128)
            && sk > 0
            && batch <= 65535
            && heads <= 65535;
        if flash && flash_readable(&[&qv, &kv, &vv]) {
            let lse = b.scratch(&TensorType::new(DType::F32, &[batch, heads, sq]));
            self.steps.push(PlanStep::Flash {
                label,
                flash: flash_step(
                    [(qb, &qv), (kb, &kv), (vb, &vv)],
                    m.as_ref(),
                    out_r,
                    lse,
                    scale,
                ),
            });
            self.launches += 1;
            return Ok(());
        }
        if d > 512 || dv > 512 {
            return Err(RuntimeError::Unsupported(format!(
                "{name}: attention head dims {d} / {dv} (the generic kernel takes up to 512)"
            )));
        }
        if sq > i32::MAX as usize || heads > 65535 || batch > 65535 {
            return Err(RuntimeError::Unsupported(format!(
                "{name}: attention grid too large"
            )));
        }
        let t = [
            float_type(qb.dtype(), "attention")?,
            float_type(kb.dtype(), "attention")?,
            float_type(vb.dtype(), "attention")?,
            float_type(out_r.dtype(), "attention")?,
        ];
        // the tiled kernel keeps a row's accumulator in registers: head dims up to 96
        let tile = match d.max(dv) {
            0..=64 => Some(64),
            65..=96 => Some(96),
            _ => None,
        };
        let kname = format!(
            "qattn{}_{}_{}_{}_{}",
            tile.map_or(String::new(), |t| format!("_t{t}")),
            dtype_tag(qb.dtype()),
            dtype_tag(kb.dtype()),
            dtype_tag(vb.dtype()),
            dtype_tag(out_r.dtype())
        );
        let (call, threads) = match tile {
            Some(t) => (format!("qie_attention_tiled<{t}>"), TILE_ROWS),
            None => ("qie_attention".to_string(), 128),
        };
        let ll =
            |p: &str| format!("long long {p}b, long long {p}s, long long {p}h, long long {p}d");
        let source = format!(
            "extern \"C\" __global__ void __launch_bounds__({threads}) {kname}(const {}* q, const {}* k, const {}* v, const u8_t* mask, {}* o, int Sq, int Sk, int H, int D, int Dv, float scale, {}, {}, {}, long long mb, long long ms) {{\n    {call}(q, k, v, mask, o, Sq, Sk, H, D, Dv, scale, qb, qs, qh, qd, kb, ks, kh, kd, vb, vs, vh, vd, mb, ms);\n}}\n",
            t[0], t[1], t[2], t[3], ll("q"), ll("k"), ll("v")
        );
        self.add_kernel(&kname, source);
        let ptr = |b: BufRef, v: &View| KArg::Ptr(b, v.offset as usize * b.dtype().size_bytes());
        let mut args = vec![ptr(qb, &qv), ptr(kb, &kv), ptr(vb, &vv)];
        args.push(match &m {
            Some((mb, mv)) => ptr(*mb, mv),
            None => KArg::Null,
        });
        args.push(KArg::Ptr(out_r, 0));
        for x in [sq, sk, heads, d, dv] {
            args.push(KArg::I32(x as i32));
        }
        args.push(KArg::F32(scale as f32));
        for view in [&qv, &kv, &vv] {
            for s in &view.strides {
                args.push(KArg::I64(*s));
            }
        }
        let (mb_s, ms_s) = m
            .as_ref()
            .map_or((0, 0), |(_, mv)| (mv.strides[0], mv.strides[1]));
        args.push(KArg::I64(mb_s));
        args.push(KArg::I64(ms_s));
        let rows_per_block = if tile.is_some() { TILE_ROWS } else { 1 };
        self.steps.push(PlanStep::Kernel {
            name: kname,
            label,
            grid: (
                sq.div_ceil(rows_per_block) as u32,
                heads as u32,
                batch as u32,
            ),
            block: threads as u32,
            args,
        });
        self.launches += 1;
        Ok(())
    }
}

/// Query rows per block of the tiled kernel (QT_ROWS in generic.cuh), one thread each.
const TILE_ROWS: usize = 64;

/// Element strides (batch, seq, head) of a [B, S, H, D] view the flash kernels can read: the
/// head dim contiguous, the others multiples of 8 elements, the offset too.
pub(super) fn flash_strides(v: &View) -> Option<[usize; 3]> {
    if v.strides.iter().any(|&s| s < 0) || (v.shape[3] > 1 && v.strides[3] != 1) {
        return None;
    }
    let s = [
        v.strides[0] as usize,
        v.strides[1] as usize,
        v.strides[2] as usize,
    ];
    (s.iter().all(|x| x % 8 == 0) && v.offset % 8 == 0).then_some(s)
}

/// Whether the flash kernels can read all these views (see [`flash_strides`]).
pub(super) fn flash_readable(views: &[&View]) -> bool {
    views.iter().all(|v| flash_strides(v).is_some())
}

/// The flash kernels' description of `attention(q, k, v, mask)` with bf16 operands whose views
/// are [`flash_readable`], writing `out` (dense) and `lse`.
pub(super) fn flash_step(
    [(qb, qv), (kb, kv), (vb, vv)]: [(BufRef, &View); 3],
    mask: Option<&(BufRef, View)>,
    out: BufRef,
    lse: BufRef,
    scale: f64,
) -> FlashStep {
    let el = DType::BF16.size_bytes();
    let strides = |v: &View| flash_strides(v).expect("flash_readable views");
    FlashStep {
        q: (qb, qv.offset as usize * el),
        k: (kb, kv.offset as usize * el),
        v: (vb, vv.offset as usize * el),
        mask: mask.map(|(mb, mv)| (*mb, mv.offset as usize)),
        out,
        lse,
        batch: qv.shape[0],
        seq_q: qv.shape[1],
        seq_k: kv.shape[1],
        heads: qv.shape[2],
        head_dim: qv.shape[3],
        scale: scale as f32,
        q_strides: strides(qv),
        k_strides: strides(kv),
        v_strides: strides(vv),
        mask_batch_stride: mask.map_or(0, |(_, mv)| mv.strides[0].max(0) as usize),
    }
}
