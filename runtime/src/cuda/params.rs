//! Parameter sets on a CUDA device: every weight of the set in one [`WeightPool`] reservation,
//! in its storage dtype (the backend's [`StorageMode`] for floats). Updates overwrite the same
//! bytes on the device's stream, so captured CUDA graphs stay valid and see the new values.

use super::backend::{cuda_err, to_storage_bytes, Shared};
use super::exec::storage_to_host;
use super::{CudaDevice, DevPtr, WeightPool};
use crate::backend::{ParamData, ParamStore, RuntimeError};
use crate::bind::validate::param_data;
use crate::params::{ParamBuffers, ParamSet};
use crate::storage::StorageMode;
use crate::tensor::TensorData;
use qie_ir::{DType, TensorType};
use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub(crate) struct CudaParams {
    dev: Arc<CudaDevice>,
    /// Owns the memory; freed when the set is dropped.
    _pool: WeightPool,
    pub ptrs: Vec<DevPtr>,
    pub dtypes: Vec<DType>,
    /// Elements of each weight.
    lens: Vec<usize>,
    bytes: usize,
    /// The backend's count of resident weight bytes (its memory report).
    resident: Arc<AtomicUsize>,
}

impl Drop for CudaParams {
    fn drop(&mut self) {
        self.resident.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The storage dtype of a weight declared as `dtype` on a backend in `mode`.
pub(crate) fn storage_dtype(dtype: DType, mode: StorageMode) -> DType {
    match (dtype.is_float(), mode) {
        (true, StorageMode::Bf16) => DType::BF16,
        (true, StorageMode::F32) => DType::F32,
        (false, _) => dtype,
    }
}

impl ParamBuffers for CudaParams {
    fn write(&mut self, index: usize, offset: usize, data: &ParamData<'_>) -> Result<(), String> {
        let dtype = self.dtypes[index];
        let bytes = to_storage_bytes(data, dtype)?;
        self.dev.bind().map_err(|e| e.to_string())?;
        self.dev
            .htod(self.ptrs[index].offset(offset * dtype.size_bytes()), &bytes)
            .map_err(|e| e.to_string())
    }

    fn read(&self, index: usize) -> Result<TensorData, String> {
        let dtype = self.dtypes[index];
        let len = self.lens[index];
        let mut bytes = vec![0u8; len * dtype.size_bytes()];
        self.dev.bind().map_err(|e| e.to_string())?;
        self.dev
            .dtoh(&mut bytes, self.ptrs[index])
            .map_err(|e| e.to_string())?;
        Ok(storage_to_host(&bytes, dtype))
    }

    fn bytes(&self) -> usize {
        self.bytes
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Uploads the weights `params` names from `store` to the backend's device, floats stored as
/// `mode`.
pub(crate) fn upload(
    shared: &Arc<Shared>,
    params: &[(String, TensorType)],
    store: &dyn ParamStore,
    mode: StorageMode,
) -> Result<ParamSet, RuntimeError> {
    let data = param_data(params.iter().map(|(n, t)| (n.as_str(), t)), store)?;
    let dtypes: Vec<DType> = params
        .iter()
        .map(|(_, t)| storage_dtype(t.dtype, mode))
        .collect();
    let align = |b: usize| b.max(1).div_ceil(super::arena::ALIGN) * super::arena::ALIGN;
    let total: usize = params
        .iter()
        .zip(&dtypes)
        .map(|((_, t), d)| align(t.numel() * d.size_bytes()))
        .sum();
    shared.dev.bind().map_err(cuda_err)?;
    let mut pool = WeightPool::new(&shared.dev, 256 << 20);
    pool.reserve(total).map_err(cuda_err)?;
    let mut ptrs = Vec::with_capacity(params.len());
    for (((name, _), d), dtype) in params.iter().zip(&data).zip(&dtypes) {
        let bytes = to_storage_bytes(d, *dtype).map_err(|message| RuntimeError::BadParam {
            name: name.clone(),
            message,
        })?;
        ptrs.push(pool.upload(&bytes).map_err(cuda_err)?);
    }
    let bytes = pool.allocated_bytes();
    shared.resident_weights.fetch_add(bytes, Ordering::Relaxed);
    let buffers = CudaParams {
        dev: shared.dev.clone(),
        _pool: pool,
        ptrs,
        dtypes: dtypes.clone(),
        lens: params.iter().map(|(_, t)| t.numel()).collect(),
        bytes,
        resident: shared.resident_weights.clone(),
    };
    let entries = params
        .iter()
        .zip(&dtypes)
        .map(|((n, t), d)| (n.clone(), t.with_dtype(*d)))
        .collect();
    Ok(ParamSet::new(
        shared.id,
        &shared.name,
        entries,
        Box::new(buffers),
    ))
}
