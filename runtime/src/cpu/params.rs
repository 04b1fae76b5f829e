//! Parameter sets on the CPU: each weight as an f32 (or integer / bool) host vector, so bf16
//! checkpoints are widened once at upload instead of at every run.

use crate::backend::{ParamData, ParamStore, RuntimeError};
use crate::bind::validate::param_data;
use crate::params::{BackendId, ParamBuffers, ParamSet};
use crate::tensor::TensorData;
use qie_ir::{DType, TensorType};
use std::any::Any;

/// Every CPU executable can read every CPU parameter set.
pub const CPU_BACKEND: BackendId = BackendId(0);

pub(crate) struct CpuParams {
    pub data: Vec<TensorData>,
}

fn to_host(data: &ParamData<'_>) -> TensorData {
    match data {
        ParamData::I32(v) => TensorData::I32(v.to_vec()),
        ParamData::I64(v) => TensorData::I64(v.to_vec()),
        ParamData::Bool(v) => TensorData::Bool(v.to_vec()),
        float => TensorData::F32(float.to_f32().expect("float data").into_owned()),
    }
}

impl ParamBuffers for CpuParams {
    fn write(&mut self, index: usize, offset: usize, data: &ParamData<'_>) -> Result<(), String> {
        let new = to_host(data);
        let slot = &mut self.data[index];
        if offset == 0 && new.len() == slot.len() {
            *slot = new;
            return Ok(());
        }
        let r = offset..offset + new.len();
        match (slot, new) {
            (TensorData::F32(d), TensorData::F32(v)) => d[r].copy_from_slice(&v),
            (TensorData::I32(d), TensorData::I32(v)) => d[r].copy_from_slice(&v),
            (TensorData::I64(d), TensorData::I64(v)) => d[r].copy_from_slice(&v),
            (TensorData::Bool(d), TensorData::Bool(v)) => d[r].copy_from_slice(&v),
            _ => return Err("the data's kind differs from the parameter's".to_string()),
        }
        Ok(())
    }

    fn read(&self, index: usize) -> Result<TensorData, String> {
        Ok(self.data[index].clone())
    }

    fn bytes(&self) -> usize {
        self.data.iter().map(|d| d.as_bytes().len()).sum()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Copies the weights `params` names out of `store` (floats as f32).
pub fn upload(
    params: &[(String, TensorType)],
    store: &dyn ParamStore,
) -> Result<ParamSet, RuntimeError> {
    let data = param_data(params.iter().map(|(n, t)| (n.as_str(), t)), store)?;
    let entries = params
        .iter()
        .map(|(n, t)| {
            let dtype = if t.dtype.is_float() {
                DType::F32
            } else {
                t.dtype
            };
            (n.clone(), t.with_dtype(dtype))
        })
        .collect();
    let buffers = CpuParams {
        data: data.iter().map(to_host).collect(),
    };
    Ok(ParamSet::new(
        CPU_BACKEND,
        "cpu",
        entries,
        Box::new(buffers),
    ))
}
