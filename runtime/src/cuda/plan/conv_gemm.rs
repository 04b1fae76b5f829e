//! The bf16 `Conv2d` fast path: per image and per block of output rows, an im2col kernel writes
//! the input patches to scratch (`col [C*KH*KW, rows*OW]`) and cuBLASLt computes
//! `out[n, :, rows, :] = W [O, C*KH*KW] @ col` straight into the NCHW output (row stride
//! OH*OW). The row blocks keep the scratch under [`COL_BUDGET`] elements (256 MB of bf16)
//! whatever the image size; f32 accumulation as in every cuBLASLt GEMM.

use super::lowering::CudaLowering;
use super::{BufRef, GemmEpilogue, GemmStep, KArg, PlanStep};
use crate::backend::RuntimeError;
use crate::bind::{Binder, StepLowering};
use crate::storage::StorageMode;
use qie_codegen::{Binding, Operand, View};
use qie_ir::{DType, TensorType};

/// Most bf16 elements of im2col scratch one conv step may use.
pub(super) const COL_BUDGET: usize = 128 << 20;

/// Most threads per im2col block (one block per output row and k).
const BLOCK: usize = 256;

impl CudaLowering {
    /// Plans the conv as im2col + GEMM when it can (bf16 storage everywhere, groups 1, sizes in
    /// range); returns false to leave it to the generic kernel.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv2d_gemm(
        &mut self,
        b: &mut Binder,
        out: &Binding,
        out_r: BufRef,
        (xb, xv): (BufRef, &View),
        (w, wb, wv): (&Operand, BufRef, View),
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
        name: &str,
    ) -> Result<bool, RuntimeError> {
        let bf16 = [xb.dtype(), out_r.dtype()]
            .iter()
            .all(|&d| d == DType::BF16);
        if self.mode != StorageMode::Bf16 || !bf16 || groups != 1 {
            return Ok(false);
        }
        if wb.dtype() != DType::BF16 {
            return Ok(false);
        }
        let (xs, ws, os) = (&xv.shape, &wv.shape, &out.ty.shape);
        let (n_img, c, h, wid) = (xs[0], xs[1], xs[2], xs[3]);
        let (o, kh, kw) = (ws[0], ws[2], ws[3]);
        let (oh, ow) = (os[2], os[3]);
        let k = c * kh * kw;
        let p = oh * ow;
        let fits_i32 = |v: usize| v <= i32::MAX as usize;
        let in_range = k > 0
            && k <= 65_535 // one grid row per k
            && k * ow <= COL_BUDGET
            && [h, wid, p].into_iter().all(fits_i32)
            && xv.strides.iter().all(|&s| s >= 0 && fits_i32(s as usize))
            && xv.offset >= 0;
        if !in_range {
            return Ok(false);
        }
        // W must be a dense [O, K] matrix (its natural layout); copy it dense otherwise.
        let dense = [k as i64, (kh * kw) as i64, kw as i64, 1];
        let is_dense = (0..4).all(|i| wv.strides[i] == dense[i] || ws[i] == 1);
        let (wb, wv) = if is_dense && wv.offset >= 0 {
            (wb, wv)
        } else {
            self.densify(b, w, name)?
        };
        // Rows per block: as many as the budget allows, a multiple of 8 when more than 8 so
        // every block of `d` starts 16-byte aligned (cuBLASLt's vectorised kernels).
        let mut rows = (COL_BUDGET / (k * ow)).min(oh);
        if rows > 8 && rows < oh {
            rows -= rows % 8;
        }
        let col = b.scratch(&TensorType::new(DType::BF16, &[k * rows * ow]));
        let el = DType::BF16.size_bytes();
        // One thread per 8 outputs of a row (per output when OW % 8 != 0), whole warps.
        let per_thread = if ow % 8 == 0 { 8 } else { 1 };
        let threads = ow.div_ceil(per_thread).div_ceil(32).clamp(1, BLOCK / 32) * 32;
        let kname = "qim2col_bf16";
        self.add_kernel(
            kname,
            format!(
                "extern \"C\" __global__ void __launch_bounds__({BLOCK}) {kname}(const bf16_t* x, bf16_t* col, int H, int W, int KH, int KW, int OW, int sh, int sw, int ph, int pw, int dh, int dw, int r0, int rows, long long xc, long long xh, long long xw) {{\n    qie_im2col_bf16(x, col, H, W, KH, KW, OW, sh, sw, ph, pw, dh, dw, r0, rows, xc, xh, xw);\n}}\n"
            ),
        );
        for img in 0..n_img {
            let x_off = (xv.offset as usize + img * xv.strides[0] as usize) * el;
            for r0 in (0..oh).step_by(rows) {
                let r = rows.min(oh - r0);
                let cols = r * ow;
                let mut args = vec![KArg::Ptr(xb, x_off), KArg::Ptr(col, 0)];
                for v in [h, wid, kh, kw, ow, stride[0], stride[1]] {
                    args.push(KArg::I32(v as i32));
                }
                for v in [padding[0], padding[1], dilation[0], dilation[1], r0, r] {
                    args.push(KArg::I32(v as i32));
                }
                for s in &xv.strides[1..] {
                    args.push(KArg::I64(*s));
                }
                self.steps.push(PlanStep::Kernel {
                    name: kname.to_string(),
                    label: format!("conv2d {name} im2col n{img} rows {r0}+{r}"),
                    grid: (r as u32, k as u32, 1),
                    block: threads as u32,
                    args,
                });
                self.steps.push(PlanStep::Gemm {
                    label: format!("conv2d {name} gemm [{o}x{k}] x [{cols}]"),
                    gemm: GemmStep {
                        a: (wb, wv.offset as usize * el),
                        b: (col, 0),
                        d: out_r,
                        d_offset: (img * o * p + r0 * ow) * el,
                        ld_d: p,
                        m: o,
                        n: cols,
                        k,
                        transpose_a: false,
                        transpose_b: false,
                        ld_a: k,
                        ld_b: cols,
                        batch: 1,
                        stride_a: 0,
                        stride_b: 0,
                        epilogue: GemmEpilogue::None,
                        bias: None,
                        dtype: DType::BF16,
                    },
                });
                self.launches += 2;
            }
        }
        Ok(true)
    }
}
