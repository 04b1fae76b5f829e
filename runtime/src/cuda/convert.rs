//! Device-side copies between buffers of float storage (f32 <-> bf16, or the same dtype): how
//! run outputs reach parameter sets ([`crate::Executable::run_into`]) and sets reach each other
//! ([`crate::Backend::copy_params`]) without a host round trip.

use super::backend::{cuda_err, Shared};
use super::nvrtc::Arg;
use super::DevPtr;
use crate::backend::RuntimeError;
use qie_ir::DType;
use std::collections::BTreeMap;

const F32_TO_BF16: &str = "qie_convert_f32_bf16";
const BF16_TO_F32: &str = "qie_convert_bf16_f32";

fn source(symbol: &str, from: &str, to: &str, convert: &str) -> String {
    format!(
        "extern \"C\" __global__ void {symbol}(const {from}* x, {to}* y, unsigned long long n) {{\n\
         \x20   for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;\n\
         \x20        i < n; i += (unsigned long long)gridDim.x * blockDim.x) y[i] = {convert}(x[i]);\n\
         }}\n"
    )
}

impl Shared {
    /// Copies `n` elements from `src` (stored as `from`) to `dst` (stored as `to`), converting
    /// f32 <-> bf16; other dtypes must be equal. Queued on the device's stream.
    pub(crate) fn copy_converting(
        &self,
        dst: DevPtr,
        to: DType,
        src: DevPtr,
        from: DType,
        n: usize,
    ) -> Result<(), RuntimeError> {
        if n == 0 {
            return Ok(());
        }
        if from == to {
            return self
                .dev
                .dtod(dst, src, n * from.size_bytes())
                .map_err(cuda_err);
        }
        let symbol = match (from, to) {
            (DType::F32, DType::BF16) => F32_TO_BF16,
            (DType::BF16, DType::F32) => BF16_TO_F32,
            _ => {
                return Err(RuntimeError::Unsupported(format!(
                    "a device copy from {from} to {to} storage"
                )))
            }
        };
        let wanted = BTreeMap::from([
            (
                F32_TO_BF16.to_string(),
                source(F32_TO_BF16, "float", "bf16_t", "to_bf16"),
            ),
            (
                BF16_TO_F32.to_string(),
                source(BF16_TO_F32, "bf16_t", "float", "to_f"),
            ),
        ]);
        let kernels = self.load_kernels(&wanted)?;
        let grid = n.div_ceil(256).min(1 << 16) as u32;
        kernels[symbol]
            .launch(
                (grid, 1, 1),
                (256, 1, 1),
                0,
                &[Arg::Ptr(src), Arg::Ptr(dst), Arg::I64(n as i64)],
            )
            .map_err(cuda_err)
    }
}
