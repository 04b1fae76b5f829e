//! Matmul steps: cuBLASLt for bf16 operands whose layouts it can read (with a following bias /
//! GELU epilogue folded in, see [`super::epilogue`]) and for f32 operands (full f32, no
//! epilogue), otherwise the generic GEMM kernel.

use super::epilogue::FusedEpilogue;
use super::lowering::{dtype_tag, float_type, CudaLowering};
use super::{GemmEpilogue, GemmStep, KArg, PlanStep};
use crate::backend::RuntimeError;
use crate::bind::checks::check_disjoint;
use crate::bind::{Binder, StepLowering};
use crate::storage::StorageMode;
use qie_codegen::{Binding, Operand, View};
use qie_ir::DType;

impl CudaLowering {
    /// Plans a matmul; with `fusable`, the epilogue kernel that follows it is folded into the
    /// cuBLASLt call when the fast path is taken. Returns whether it was (the caller then skips
    /// that kernel).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn matmul_step(
        &mut self,
        b: &mut Binder,
        out: &Binding,
        a: &Operand,
        rhs: &Operand,
        ta: bool,
        tb: bool,
        fusable: Option<&FusedEpilogue>,
        name: &str,
    ) -> Result<bool, RuntimeError> {
        let out_r = b.resolve(out)?;
        let (mut ab, mut av) = self.operand(b, a, name)?;
        let (mut bb, mut bv) = self.operand(b, rhs, name)?;
        check_disjoint(&[ab, bb], out_r, name)?;
        let (ra, rb) = (av.rank(), bv.rank());
        let (a0, a1) = (av.shape[ra - 2], av.shape[ra - 1]);
        let (b0, b1) = (bv.shape[rb - 2], bv.shape[rb - 1]);
        let (m, k) = if ta { (a1, a0) } else { (a0, a1) };
        let n = if tb { b0 } else { b1 };
        let batch: usize = av.shape[..ra - 2].iter().product();
        let b_batch: usize = bv.shape[..rb - 2].iter().product();
        if batch == 0 || m == 0 || n == 0 {
            return Ok(false);
        }
        if k == 0 {
            self.steps.push(PlanStep::Zero { dst: out_r });
            return Ok(false);
        }
        let mut label = format!("matmul {name} [{batch}x{m}x{k}] x [{n}]");
        let all = |t: DType| {
            [ab.dtype(), bb.dtype(), out_r.dtype()]
                .iter()
                .all(|&d| d == t)
        };
        let bf16 = self.mode == StorageMode::Bf16 && all(DType::BF16);
        let dtype = if bf16 { DType::BF16 } else { DType::F32 };
        if bf16 || all(DType::F32) {
            let mut la = gemm_layout(&av, batch);
            if la.is_none() {
                (ab, av) = self.densify(b, a, name)?;
                la = gemm_layout(&av, batch);
            }
            let mut lb = gemm_layout(&bv, b_batch);
            if lb.is_none() {
                (bb, bv) = self.densify(b, rhs, name)?;
                lb = gemm_layout(&bv, b_batch);
            }
            let ((sa, lda, fa), (sb, ldb, fb)) = (
                la.expect("dense layouts are readable"),
                lb.expect("dense layouts are readable"),
            );
            let el = dtype.size_bytes();
            let (mut d, mut epilogue, mut bias) = (out_r, GemmEpilogue::None, None);
            let mut fused = false;
            if let (Some(f), true) = (fusable, bf16) {
                let dst = b.resolve(&f.dst)?;
                let bias_ref = match &f.bias {
                    Some((bb, off)) => Some((b.resolve(bb)?, off * el)),
                    None => None,
                };
                let ok = dst.dtype() == DType::BF16
                    && bias_ref.is_none_or(|(r, _)| r.dtype() == DType::BF16)
                    && !ab.overlaps(&dst)
                    && !bb.overlaps(&dst);
                if ok {
                    (d, epilogue, bias, fused) = (dst, f.kind, bias_ref, true);
                    label.push_str(&format!(" + {:?}", f.kind).to_lowercase());
                }
            }
            self.steps.push(PlanStep::Gemm {
                label,
                gemm: GemmStep {
                    a: (ab, av.offset as usize * el),
                    b: (bb, bv.offset as usize * el),
                    d,
                    d_offset: 0,
                    ld_d: n,
                    m,
                    n,
                    k,
                    transpose_a: ta ^ fa,
                    transpose_b: tb ^ fb,
                    ld_a: lda,
                    ld_b: ldb,
                    batch,
                    stride_a: sa,
                    stride_b: if b_batch == 1 { 0 } else { sb },
                    epilogue,
                    bias,
                    dtype,
                },
            });
            self.launches += 1;
            return Ok(fused);
        }
        // Generic kernel: any strides, batch axes merged (copied dense when they do not merge).
        let mut sa = batched_strides(&av, batch);
        if sa.is_none() {
            (ab, av) = self.densify(b, a, name)?;
            sa = batched_strides(&av, batch);
        }
        let mut sb = batched_strides(&bv, b_batch);
        if sb.is_none() {
            (bb, bv) = self.densify(b, rhs, name)?;
            sb = batched_strides(&bv, b_batch);
        }
        let (sa, sb) = (sa.expect("dense"), sb.expect("dense"));
        // a(m, k) and b(k, n) strides after the IR's transposes.
        let (sam, sak) = if ta { (sa[2], sa[1]) } else { (sa[1], sa[2]) };
        let (sbk, sbn) = if tb { (sb[2], sb[1]) } else { (sb[1], sb[2]) };
        let sbb = if b_batch == 1 { 0 } else { sb[0] };
        let types = [
            float_type(ab.dtype(), "matmul")?,
            float_type(bb.dtype(), "matmul")?,
            float_type(out_r.dtype(), "matmul")?,
        ];
        let kname = format!(
            "qgemm_{}_{}_{}",
            dtype_tag(ab.dtype()),
            dtype_tag(bb.dtype()),
            dtype_tag(out_r.dtype())
        );
        let source = format!(
            "extern \"C\" __global__ void __launch_bounds__(256) {kname}(const {}* a, const {}* b, {}* c, int batch, int M, int N, int K, long long sab, long long sam, long long sak, long long sbb, long long sbk, long long sbn) {{\n    qie_gemm(a, b, c, batch, M, N, K, sab, sam, sak, sbb, sbk, sbn);\n}}\n",
            types[0], types[1], types[2]
        );
        self.add_kernel(&kname, source);
        let grid = (
            n.div_ceil(16) as u32,
            m.div_ceil(16) as u32,
            batch.min(65535) as u32,
        );
        if grid.1 > 65535 {
            return Err(RuntimeError::Unsupported(format!(
                "{name}: generic matmul with M = {m} rows"
            )));
        }
        let (ea, eb) = (ab.dtype().size_bytes(), bb.dtype().size_bytes());
        let i32_arg = |x: usize| KArg::I32(x as i32);
        self.steps.push(PlanStep::Kernel {
            name: kname,
            label,
            grid,
            block: 256,
            args: vec![
                KArg::Ptr(ab, av.offset as usize * ea),
                KArg::Ptr(bb, bv.offset as usize * eb),
                KArg::Ptr(out_r, 0),
                i32_arg(batch),
                i32_arg(m),
                i32_arg(n),
                i32_arg(k),
                KArg::I64(sa[0]),
                KArg::I64(sam),
                KArg::I64(sak),
                KArg::I64(sbb),
                KArg::I64(sbk),
                KArg::I64(sbn),
            ],
        });
        self.launches += 1;
        Ok(false)
    }
}

/// A strided view read as a batch of matrices: (batch stride, leading dimension, transposed).
/// `transposed` means the [r, c] matrix is stored as a row-major [c, r] one.
fn gemm_layout(v: &View, batch: usize) -> Option<(usize, usize, bool)> {
    let rank = v.rank();
    let (r, c) = (v.shape[rank - 2], v.shape[rank - 1]);
    let v3 = v.reshaped(&[batch, r, c])?;
    let (sb, sr, sc) = (v3.strides[0], v3.strides[1], v3.strides[2]);
    if sb < 0 || sr < 0 || sc < 0 || v3.offset < 0 {
        return None;
    }
    let (sb, sr, sc) = (sb as usize, sr as usize, sc as usize);
    if c == 1 || sc == 1 {
        let ld = if r == 1 { c } else { sr };
        (ld >= c).then_some((sb, ld, false))
    } else if r == 1 || sr == 1 {
        let ld = sc;
        (ld >= r).then_some((sb, ld, true))
    } else {
        None
    }
}

/// (batch, rows, cols) strides of a view read as [batch, r, c], or None when the batch axes do
/// not merge.
fn batched_strides(v: &View, batch: usize) -> Option<[i64; 3]> {
    let rank = v.rank();
    let v3 = v.reshaped(&[batch, v.shape[rank - 2], v.shape[rank - 1]])?;
    Some([v3.strides[0], v3.strides[1], v3.strides[2]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_layouts() {
        // Row-major [2, 3, 4] with batch merged.
        let v = View::contiguous(&[2, 3, 4]);
        assert_eq!(gemm_layout(&v, 2), Some((12, 4, false)));
        // A transposed view: [4, 3] read from a row-major [3, 4].
        let t = View {
            shape: qie_ir::shape(&[4, 3]),
            strides: [1, 4].into_iter().collect(),
            offset: 0,
        };
        assert_eq!(gemm_layout(&t, 1), Some((0, 4, true)));
        // A column slice of a wider matrix: ld is the parent's row length.
        let s = View {
            shape: qie_ir::shape(&[3, 2]),
            strides: [8, 1].into_iter().collect(),
            offset: 2,
        };
        assert_eq!(gemm_layout(&s, 1), Some((0, 8, false)));
        // Neither axis unit-strided.
        let bad = View {
            shape: qie_ir::shape(&[3, 2]),
            strides: [8, 2].into_iter().collect(),
            offset: 0,
        };
        assert_eq!(gemm_layout(&bad, 1), None);
    }
}
