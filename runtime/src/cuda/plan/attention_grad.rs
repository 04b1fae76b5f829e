//! Attention backward steps (`Op::AttentionGrad`): the flash backward kernels for bf16 with
//! head dim 64 / 128 and strides that are multiples of 8, otherwise the two generic kernels.
//! The output is the dense packed [B, Sq + 2 Sk, H, D] = dq | dk | dv.

use super::attention::{flash_readable, flash_step, flash_strides};
use super::lowering::{dtype_tag, float_type, CudaLowering};
use super::{FlashGradStep, KArg, PlanStep};
use crate::backend::RuntimeError;
use crate::bind::checks::check_disjoint;
use crate::bind::{AttentionCall, Binder, BufRef, StepLowering};
use crate::storage::StorageMode;
use qie_codegen::View;
use qie_ir::{DType, TensorType};

impl CudaLowering {
    pub(super) fn attention_grad_step(
        &mut self,
        b: &mut Binder,
        call: &AttentionCall,
        name: &str,
    ) -> Result<(), RuntimeError> {
        let dout = call.dout.expect("a backward call");
        let out_r = b.resolve(call.out)?;
        let (qb, qv) = self.operand(b, call.q, name)?;
        let (kb, kv) = self.operand(b, call.k, name)?;
        let (vb, vv) = self.operand(b, call.v, name)?;
        let (gb, gv) = self.operand(b, dout, name)?;
        let mut m = match call.mask {
            Some(m) => Some(self.operand(b, m, name)?),
            None => None,
        };
        let mut ops = vec![qb, kb, vb, gb];
        ops.extend(m.as_ref().map(|m| m.0));
        check_disjoint(&ops, out_r, name)?;
        let [batch, sq, heads, d] = [qv.shape[0], qv.shape[1], qv.shape[2], qv.shape[3]];
        let sk = kv.shape[1];
        if batch * heads * d == 0 {
            return Ok(());
        }
        if sq == 0 || sk == 0 {
            self.steps.push(PlanStep::Zero { dst: out_r });
            return Ok(());
        }
        if let Some((mb, mv)) = &m {
            if mb.dtype() != DType::Bool {
                return Err(RuntimeError::Unsupported(format!(
                    "{name}: attention mask stored as {}",
                    mb.dtype()
                )));
            }
            if sk > 1 && mv.strides[1] != 1 {
                m = Some(self.densify(b, call.mask.expect("mask"), name)?);
            }
        }
        let label = format!("attention_grad {name} [B{batch} Sq{sq} Sk{sk} H{heads} D{d}]");
        let stats = TensorType::new(DType::F32, &[batch, heads, sq]);
        let lse = b.scratch(&stats);
        let delta = b.scratch(&stats);
        let flash = self.mode == StorageMode::Bf16
            && [qb, kb, vb, gb, out_r]
                .iter()
                .all(|r| r.dtype() == DType::BF16)
            && (d == 64 || d == 128)
            && batch <= 65535
            && heads <= 65535;
        if flash && flash_readable(&[&qv, &kv, &vv, &gv]) {
            let el = DType::BF16.size_bytes();
            let o = b.scratch(&TensorType::new(DType::BF16, &[batch, sq, heads, d]));
            let forward = flash_step(
                [(qb, &qv), (kb, &kv), (vb, &vv)],
                m.as_ref(),
                o,
                lse,
                call.scale,
            );
            self.steps.push(PlanStep::FlashGrad {
                label,
                flash: forward,
                grad: FlashGradStep {
                    dout: (gb, gv.offset as usize * el),
                    dout_strides: flash_strides(&gv).expect("flash_readable"),
                    delta,
                    out: out_r,
                },
            });
            self.launches += 1;
            return Ok(());
        }
        if d > 512 {
            return Err(RuntimeError::Unsupported(format!(
                "{name}: attention head dim {d} (the generic backward takes up to 512)"
            )));
        }
        if sq > i32::MAX as usize || sk > i32::MAX as usize || heads > 65535 || batch > 65535 {
            return Err(RuntimeError::Unsupported(format!(
                "{name}: attention grid too large"
            )));
        }
        let dtypes = [
            qb.dtype(),
            kb.dtype(),
            vb.dtype(),
            gb.dtype(),
            out_r.dtype(),
        ];
        let mut types = Vec::new();
        for t in dtypes {
            types.push(float_type(t, "attention backward")?);
        }
        let tags: Vec<&str> = dtypes.iter().map(|&t| dtype_tag(t)).collect();
        let ll =
            |p: &str| format!("long long {p}b, long long {p}s, long long {p}h, long long {p}d");
        let params = format!(
            "const {}* q, const {}* k, const {}* v, const {}* g, const u8_t* mask, {}* out, {{lse}} lse, {{lse}} delta, int Sq, int Sk, int H, int D, float scale, {}, {}, {}, {}, long long mb, long long ms",
            types[0], types[1], types[2], types[3], types[4], ll("q"), ll("k"), ll("v"), ll("g")
        );
        let pass = "q, k, v, g, mask, out, lse, delta, Sq, Sk, H, D, scale, qb, qs, qh, qd, kb, ks, kh, kd, vb, vs, vh, vd, gb, gs, gh, gd, mb, ms";
        let ptr = |b: BufRef, v: &View| KArg::Ptr(b, v.offset as usize * b.dtype().size_bytes());
        let mut args = vec![ptr(qb, &qv), ptr(kb, &kv), ptr(vb, &vv), ptr(gb, &gv)];
        args.push(match &m {
            Some((mb, mv)) => ptr(*mb, mv),
            None => KArg::Null,
        });
        args.extend([KArg::Ptr(out_r, 0), KArg::Ptr(lse, 0), KArg::Ptr(delta, 0)]);
        for x in [sq, sk, heads, d] {
            args.push(KArg::I32(x as i32));
        }
        args.push(KArg::F32(call.scale as f32));
        for view in [&qv, &kv, &vv, &gv] {
            for s in &view.strides {
                args.push(KArg::I64(*s));
            }
        }
        let (mb_s, ms_s) = m
            .as_ref()
            .map_or((0, 0), |(_, mv)| (mv.strides[0], mv.strides[1]));
        args.extend([KArg::I64(mb_s), KArg::I64(ms_s)]);
        // Rows of queries (lse, delta, dq) first, then rows of keys (dk, dv).
        for (part, lse_ty, rows) in [("q", "float*", sq), ("kv", "const float*", sk)] {
            let kname = format!("qattn_grad_{part}_{}", tags.join("_"));
            let source = format!(
                "extern \"C\" __global__ void __launch_bounds__(128) {kname}({}) {{\n    qie_attention_grad_{part}({pass});\n}}\n",
                params.replace("{lse}", lse_ty)
            );
            self.add_kernel(&kname, source);
            self.steps.push(PlanStep::Kernel {
                name: kname,
                label: label.clone(),
                grid: (rows as u32, heads as u32, batch as u32),
                block: 128,
                args: args.clone(),
            });
            self.launches += 1;
        }
        Ok(())
    }
}
