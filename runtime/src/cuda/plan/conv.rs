//! Convolution steps: im2col + cuBLASLt for bf16 ([`super::conv_gemm`]), otherwise a direct
//! generic kernel.

use super::lowering::{dtype_tag, float_type, CudaLowering};
use super::{KArg, PlanStep};
use crate::backend::RuntimeError;
use crate::bind::checks::check_disjoint;
use crate::bind::{Binder, StepLowering};
use qie_codegen::{Binding, Operand};

impl CudaLowering {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv2d_step(
        &mut self,
        b: &mut Binder,
        out: &Binding,
        x: &Operand,
        w: &Operand,
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
        name: &str,
    ) -> Result<(), RuntimeError> {
        let out_r = b.resolve(out)?;
        let (xb, xv) = self.operand(b, x, name)?;
        let (wb, wv) = self.operand(b, w, name)?;
        check_disjoint(&[xb, wb], out_r, name)?;
        let os = &out.ty.shape;
        let total: usize = os.iter().product();
        if total == 0 {
            return Ok(());
        }
        let planned = self.conv2d_gemm(
            b,
            out,
            out_r,
            (xb, &xv),
            (w, wb, wv.clone()),
            stride,
            padding,
            dilation,
            groups,
            name,
        )?;
        if planned {
            return Ok(());
        }
        let t = [
            float_type(xb.dtype(), "conv2d")?,
            float_type(wb.dtype(), "conv2d")?,
            float_type(out_r.dtype(), "conv2d")?,
        ];
        let kname = format!(
            "qconv_{}_{}_{}",
            dtype_tag(xb.dtype()),
            dtype_tag(wb.dtype()),
            dtype_tag(out_r.dtype())
        );
        let ints = [
            "N", "C", "H", "W", "O", "KH", "KW", "OH", "OW", "sh", "sw", "ph", "pw", "dh", "dw",
            "groups",
        ];
        let longs = ["xn", "xc", "xh", "xw", "wo", "wc", "wh", "ww"];
        let params: Vec<String> = ints
            .iter()
            .map(|p| format!("int {p}"))
            .chain(longs.iter().map(|p| format!("long long {p}")))
            .collect();
        let names: Vec<&str> = ints.iter().chain(longs.iter()).copied().collect();
        let source = format!(
            "extern \"C\" __global__ void __launch_bounds__(256) {kname}(const {}* x, const {}* w, {}* o, {}) {{\n    qie_conv2d(x, w, o, {});\n}}\n",
            t[0], t[1], t[2], params.join(", "), names.join(", ")
        );
        self.add_kernel(&kname, source);
        let mut args = vec![
            KArg::Ptr(xb, xv.offset as usize * xb.dtype().size_bytes()),
            KArg::Ptr(wb, wv.offset as usize * wb.dtype().size_bytes()),
            KArg::Ptr(out_r, 0),
        ];
        let xs = &xv.shape;
        let ws = &wv.shape;
        for v in [
            xs[0],
            xs[1],
            xs[2],
            xs[3],
            ws[0],
            ws[2],
            ws[3],
            os[2],
            os[3],
            stride[0],
            stride[1],
            padding[0],
            padding[1],
            dilation[0],
            dilation[1],
            groups,
        ] {
            args.push(KArg::I32(v as i32));
        }
        for s in xv.strides.iter().chain(&wv.strides) {
            args.push(KArg::I64(*s));
        }
        self.steps.push(PlanStep::Kernel {
            name: kname,
            label: format!("conv2d {name}"),
            grid: ((total.div_ceil(256)).min(1 << 16) as u32, 1, 1),
            block: 256,
            args,
        });
        self.launches += 1;
        Ok(())
    }
}
