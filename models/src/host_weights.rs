//! Weights held on the host by checkpoint name, as the drivers bind them to plans.
//!
//! Each tensor is kept as f32 or as bf16. With [`WeightPrecision::Bf16`] everything is stored as
//! bf16 (a bf16 checkpoint is kept as it is, anything else rounded), which halves host memory
//! (the real DiT is 41 GB instead of 82 GB) and lets the CUDA backend upload the bytes as they
//! are. The CPU backend widens bf16 to f32 when it binds them, so results equal the old path that
//! kept bf16-rounded values in f32.

use crate::{ModelError, WeightPrecision};
use half::bf16;
use qie_runtime::weights::{StoredTensor, WeightStore};
use qie_runtime::{ParamData, ParamStore};
use rayon::prelude::*;
use std::borrow::Cow;
use std::collections::HashMap;

/// One host tensor in its storage dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum HostTensor {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
}

impl HostTensor {
    /// `values` stored at `precision` (rounded to nearest even for bf16).
    pub fn from_f32(values: Vec<f32>, precision: WeightPrecision) -> HostTensor {
        match precision {
            WeightPrecision::F32 => HostTensor::F32(values),
            WeightPrecision::Bf16 => HostTensor::Bf16(to_bf16(&values)),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            HostTensor::F32(v) => v.len(),
            HostTensor::Bf16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Host bytes the elements take.
    pub fn bytes(&self) -> usize {
        match self {
            HostTensor::F32(v) => v.len() * 4,
            HostTensor::Bf16(v) => v.len() * 2,
        }
    }

    /// The elements as f32 (borrowed when stored as f32, widened exactly from bf16).
    pub fn to_f32(&self) -> Cow<'_, [f32]> {
        match self {
            HostTensor::F32(v) => Cow::Borrowed(v),
            HostTensor::Bf16(v) => Cow::Owned(v.par_iter().map(|x| x.to_f32()).collect()),
        }
    }

    fn param(&self) -> ParamData<'_> {
        match self {
            HostTensor::F32(v) => ParamData::F32(v),
            HostTensor::Bf16(v) => ParamData::BF16(v),
        }
    }
}

/// Weights by checkpoint name, each stored as f32 or bf16.
#[derive(Default)]
pub struct HostWeights {
    tensors: HashMap<String, HostTensor>,
}

impl HostWeights {
    /// Inserts f32 values stored as f32.
    pub fn insert(&mut self, name: String, values: Vec<f32>) {
        self.tensors.insert(name, HostTensor::F32(values));
    }

    /// Inserts a tensor in its storage dtype.
    pub fn insert_tensor(&mut self, name: String, tensor: HostTensor) {
        self.tensors.insert(name, tensor);
    }

    /// Replaces (or inserts) `name` with f32 values stored at `precision` (for LoRA merges: read
    /// with [`HostWeights::get_f32`], update, write back with the model's precision).
    pub fn set_f32(&mut self, name: &str, values: Vec<f32>, precision: WeightPrecision) {
        self.tensors
            .insert(name.to_string(), HostTensor::from_f32(values, precision));
    }

    /// The values of `name` as f32 whatever its storage (a copy for bf16-stored tensors).
    pub fn get_f32(&self, name: &str) -> Option<Cow<'_, [f32]>> {
        self.tensors.get(name).map(HostTensor::to_f32)
    }

    /// The values of an f32-stored tensor; `None` when missing or stored as bf16 (use
    /// [`HostWeights::get_f32`] for either).
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        match self.tensors.get(name)? {
            HostTensor::F32(v) => Some(v),
            HostTensor::Bf16(_) => None,
        }
    }

    /// Mutable values of an f32-stored tensor; `None` when missing or stored as bf16 (use
    /// [`HostWeights::get_f32`] + [`HostWeights::set_f32`] for either).
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Vec<f32>> {
        match self.tensors.get_mut(name)? {
            HostTensor::F32(v) => Some(v),
            HostTensor::Bf16(_) => None,
        }
    }

    /// True when `name` is held (in either dtype; `get(name).is_some()` is false for bf16).
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor as stored.
    pub fn tensor(&self, name: &str) -> Option<&HostTensor> {
        self.tensors.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Host bytes of all tensors' elements.
    pub fn bytes(&self) -> usize {
        self.tensors.values().map(HostTensor::bytes).sum()
    }

    /// Loads `expected` (names and shapes, already checked against the store) from `store`:
    /// as f32 with [`WeightPrecision::F32`], as bf16 with [`WeightPrecision::Bf16`] (a bf16
    /// checkpoint is copied as it is, other float dtypes are rounded).
    pub fn load(
        store: &WeightStore,
        expected: &[(String, Vec<usize>)],
        precision: WeightPrecision,
    ) -> Result<HostWeights, ModelError> {
        let mut weights = HostWeights::default();
        for (name, _) in expected {
            let err = |e: qie_runtime::weights::WeightsError| ModelError::new(e.to_string());
            let tensor = match precision {
                WeightPrecision::F32 => HostTensor::F32(store.load_f32(name).map_err(err)?),
                WeightPrecision::Bf16 => match store.load_stored(name).map_err(err)? {
                    StoredTensor::BF16(v) => HostTensor::Bf16(v),
                    StoredTensor::F32(v) => HostTensor::Bf16(to_bf16(&v)),
                    StoredTensor::F16(v) => {
                        HostTensor::Bf16(v.par_iter().map(|x| bf16::from_f32(x.to_f32())).collect())
                    }
                },
            };
            weights.insert_tensor(name.clone(), tensor);
        }
        Ok(weights)
    }

    /// Checks every expected weight is present with the right element count.
    pub fn check(&self, expected: &[(String, Vec<usize>)]) -> Result<(), ModelError> {
        for (name, shape) in expected {
            let n: usize = shape.iter().product();
            match self.tensors.get(name) {
                Some(v) if v.len() == n => {}
                Some(v) => {
                    return Err(ModelError::new(format!(
                        "weight `{name}` has {} elements, the model expects {shape:?}",
                        v.len()
                    )))
                }
                None => return Err(ModelError::new(format!("missing weight `{name}`"))),
            }
        }
        Ok(())
    }
}

impl ParamStore for HostWeights {
    fn param(&self, name: &str) -> Option<ParamData<'_>> {
        self.tensors.get(name).map(HostTensor::param)
    }
}

/// f32 values rounded to bf16 (nearest even), in parallel.
pub fn to_bf16(values: &[f32]) -> Vec<bf16> {
    values.par_iter().map(|&x| bf16::from_f32(x)).collect()
}

/// Rounds f32 values to bf16 in place (kept as f32).
pub fn round_to_bf16(values: &mut [f32]) {
    values
        .par_iter_mut()
        .for_each(|v| *v = bf16::from_f32(*v).to_f32());
}

#[path = "host_weights_init.rs"]
pub mod init;

#[cfg(test)]
#[path = "host_weights_tests.rs"]
mod tests;
