//! Host tensors: owned data plus a [`TensorType`].
//!
//! Storage by dtype: `f32`, `bf16` and `f16` tensors hold `f32` values (the CPU backend computes
//! every float type in f32), `i32` -> `i32`, `i64` -> `i64`, `bool` -> `bool`.

use qie_ir::{DType, Shape, TensorType};
use std::fmt;

/// The element storage of a [`Tensor`].
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

/// How a dtype is stored on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Storage {
    F32,
    I32,
    I64,
    Bool,
}

impl Storage {
    pub fn of(dtype: DType) -> Storage {
        match dtype {
            DType::F32 | DType::BF16 | DType::F16 => Storage::F32,
            DType::I32 => Storage::I32,
            DType::I64 => Storage::I64,
            DType::Bool => Storage::Bool,
        }
    }

    pub fn size_bytes(self) -> usize {
        match self {
            Storage::F32 | Storage::I32 => 4,
            Storage::I64 => 8,
            Storage::Bool => 1,
        }
    }
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn storage(&self) -> Storage {
        match self {
            TensorData::F32(_) => Storage::F32,
            TensorData::I32(_) => Storage::I32,
            TensorData::I64(_) => Storage::I64,
            TensorData::Bool(_) => Storage::Bool,
        }
    }

    /// The raw bytes of the elements (bools as 0/1 bytes).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            TensorData::F32(v) => bytemuck::cast_slice(v),
            TensorData::I32(v) => bytemuck::cast_slice(v),
            TensorData::I64(v) => bytemuck::cast_slice(v),
            // SAFETY: bool is one byte holding 0 or 1.
            TensorData::Bool(v) => unsafe {
                std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len())
            },
        }
    }
}

/// Error for tensors whose data does not fit their type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorError(pub String);

impl fmt::Display for TensorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TensorError {}

/// An owned host tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    ty: TensorType,
    data: TensorData,
}

impl Tensor {
    /// Checks that `data` has the storage of `ty.dtype` and `ty.numel()` elements.
    pub fn new(ty: TensorType, data: TensorData) -> Result<Tensor, TensorError> {
        if Storage::of(ty.dtype) != data.storage() {
            return Err(TensorError(format!(
                "a {ty} tensor needs {:?} storage, got {:?}",
                Storage::of(ty.dtype),
                data.storage()
            )));
        }
        if data.len() != ty.numel() {
            return Err(TensorError(format!(
                "a {ty} tensor needs {} elements, got {}",
                ty.numel(),
                data.len()
            )));
        }
        Ok(Tensor { ty, data })
    }

    pub fn from_f32(shape: &[usize], data: Vec<f32>) -> Result<Tensor, TensorError> {
        Tensor::new(TensorType::new(DType::F32, shape), TensorData::F32(data))
    }

    pub fn from_i32(shape: &[usize], data: Vec<i32>) -> Result<Tensor, TensorError> {
        Tensor::new(TensorType::new(DType::I32, shape), TensorData::I32(data))
    }

    pub fn from_i64(shape: &[usize], data: Vec<i64>) -> Result<Tensor, TensorError> {
        Tensor::new(TensorType::new(DType::I64, shape), TensorData::I64(data))
    }

    pub fn from_bool(shape: &[usize], data: Vec<bool>) -> Result<Tensor, TensorError> {
        Tensor::new(TensorType::new(DType::Bool, shape), TensorData::Bool(data))
    }

    pub fn scalar_f32(v: f32) -> Tensor {
        Tensor::from_f32(&[], vec![v]).expect("scalar")
    }

    /// All elements zero (false).
    pub fn zeros(ty: TensorType) -> Tensor {
        let n = ty.numel();
        let data = match Storage::of(ty.dtype) {
            Storage::F32 => TensorData::F32(vec![0.0; n]),
            Storage::I32 => TensorData::I32(vec![0; n]),
            Storage::I64 => TensorData::I64(vec![0; n]),
            Storage::Bool => TensorData::Bool(vec![false; n]),
        };
        Tensor { ty, data }
    }

    /// Converts from f64 values (rounding to the dtype: floats to f32, ints truncated, bools != 0).
    pub fn from_f64(ty: TensorType, values: &[f64]) -> Result<Tensor, TensorError> {
        let data = match Storage::of(ty.dtype) {
            Storage::F32 => TensorData::F32(values.iter().map(|&v| v as f32).collect()),
            Storage::I32 => TensorData::I32(values.iter().map(|&v| v as i32).collect()),
            Storage::I64 => TensorData::I64(values.iter().map(|&v| v as i64).collect()),
            Storage::Bool => TensorData::Bool(values.iter().map(|&v| v != 0.0).collect()),
        };
        Tensor::new(ty, data)
    }

    pub fn ty(&self) -> &TensorType {
        &self.ty
    }

    pub fn dtype(&self) -> DType {
        self.ty.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.ty.shape
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// The elements as weight data (to update a parameter with).
    pub fn param_data(&self) -> crate::backend::ParamData<'_> {
        use crate::backend::ParamData;
        match &self.data {
            TensorData::F32(v) => ParamData::F32(v),
            TensorData::I32(v) => ParamData::I32(v),
            TensorData::I64(v) => ParamData::I64(v),
            TensorData::Bool(v) => ParamData::Bool(v),
        }
    }

    pub fn into_data(self) -> TensorData {
        self.data
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_i32(&self) -> Option<&[i32]> {
        match &self.data {
            TensorData::I32(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            TensorData::I64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<&[bool]> {
        match &self.data {
            TensorData::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_f32_mut(&mut self) -> Option<&mut [f32]> {
        match &mut self.data {
            TensorData::F32(v) => Some(v),
            _ => None,
        }
    }

    /// Every element as f64 (bools as 0/1).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            TensorData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| x as u8 as f64).collect(),
        }
    }

    /// Every element converted to f32.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| x as u8 as f32).collect(),
        }
    }

    /// Converts to another dtype (floats to ints truncate toward zero, saturating).
    pub fn cast(&self, dtype: DType) -> Tensor {
        let ty = self.ty.with_dtype(dtype);
        if Storage::of(dtype) == self.data.storage() {
            return Tensor {
                ty,
                data: self.data.clone(),
            };
        }
        Tensor::from_f64(ty, &self.to_f64_vec()).expect("same element count")
    }

    /// Same data with another shape of equal element count.
    pub fn reshape(self, shape: &[usize]) -> Result<Tensor, TensorError> {
        let ty = TensorType {
            dtype: self.ty.dtype,
            shape: Shape::from_slice(shape),
        };
        Tensor::new(ty, self.data)
    }

    /// The reference interpreter's form of this tensor.
    pub fn to_eval(&self) -> qie_ir::eval::Tensor {
        qie_ir::eval::Tensor::new(self.ty.clone(), self.to_f64_vec())
    }

    /// Converts a reference tensor (floats rounded to f32).
    pub fn from_eval(t: &qie_ir::eval::Tensor) -> Tensor {
        Tensor::from_f64(t.ty.clone(), &t.data).expect("reference tensors are consistent")
    }
}

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({}", self.ty)?;
        let v = self.to_f64_vec();
        let shown = v.len().min(8);
        f.write_str(", [")?;
        for (i, x) in v[..shown].iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{x}")?;
        }
        if v.len() > shown {
            f.write_str(", ..")?;
        }
        f.write_str("])")
    }
}
