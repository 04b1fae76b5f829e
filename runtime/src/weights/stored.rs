//! Loading float tensors in their stored dtype (no widening), so a bf16 checkpoint costs two
//! bytes per weight on the host instead of four.

use std::borrow::Cow;

use half::{bf16, f16};
use safetensors::Dtype;

use super::error::{Result, WeightsError};
use super::store::WeightStore;

/// A float tensor as the checkpoint stores it (F64 is narrowed to f32, the only conversion).
#[derive(Clone, Debug, PartialEq)]
pub enum StoredTensor {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
}

impl StoredTensor {
    pub fn len(&self) -> usize {
        match self {
            StoredTensor::F32(v) => v.len(),
            StoredTensor::BF16(v) => v.len(),
            StoredTensor::F16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl WeightStore {
    /// Loads a float tensor keeping its dtype: F32, BF16 and F16 as stored, F64 narrowed to f32.
    pub fn load_stored(&self, name: &str) -> Result<StoredTensor> {
        let (info, b) = self.raw(name)?;
        Ok(match info.dtype {
            Dtype::BF16 => StoredTensor::BF16(self.view_bf16(name)?.into_owned()),
            Dtype::F16 => StoredTensor::F16(copy_le(b, f16::from_le_bytes)),
            Dtype::F32 | Dtype::F64 => StoredTensor::F32(self.load_f32(name)?),
            dtype => return Err(float_error(name, dtype, "a float tensor")),
        })
    }

    /// Loads a float tensor as bf16: BF16 as stored, other floats rounded to nearest even.
    pub fn load_bf16(&self, name: &str) -> Result<Vec<bf16>> {
        let info = self.require(name)?;
        match info.dtype {
            Dtype::BF16 => Ok(self.view_bf16(name)?.into_owned()),
            Dtype::F32 | Dtype::F16 | Dtype::F64 => {
                let v = self.load_f32(name)?;
                Ok(super::convert::par_map(&v, |&x| bf16::from_f32(x)))
            }
            dtype => Err(float_error(name, dtype, "bf16")),
        }
    }

    /// A BF16 tensor's elements straight from the mapped file: borrowed when the data is 2-byte
    /// aligned (as safetensors writers lay it out), copied otherwise. Other dtypes are an error.
    pub fn view_bf16(&self, name: &str) -> Result<Cow<'_, [bf16]>> {
        let (info, b) = self.raw(name)?;
        if info.dtype != Dtype::BF16 {
            return Err(float_error(name, info.dtype, "a bf16 view"));
        }
        // The file is little-endian; borrowing reinterprets bytes, valid on little-endian hosts.
        if cfg!(target_endian = "little") {
            if let Ok(v) = bytemuck::try_cast_slice::<u8, bf16>(b) {
                return Ok(Cow::Borrowed(v));
            }
        }
        Ok(Cow::Owned(copy_le(b, bf16::from_le_bytes)))
    }
}

/// Decodes little-endian 2-byte elements (any alignment).
fn copy_le<T: Copy + Default + Send + Sync>(
    bytes: &[u8],
    f: impl Fn([u8; 2]) -> T + Sync,
) -> Vec<T> {
    super::convert::decode(bytes, f)
}

fn float_error(name: &str, dtype: Dtype, target: &'static str) -> WeightsError {
    WeightsError::Dtype {
        tensor: name.to_string(),
        dtype,
        target,
    }
}
