//! Device parameters: a model's weights resident on one backend.
//!
//! A [`ParamSet`] is uploaded once ([`crate::Backend::upload_params`]), read by every plan the
//! backend compiles, and updated in place ([`ParamSet::update`]: a LoRA merge, an optimizer
//! step), which bumps its version. It owns its memory: dropping the set frees it. The layout of
//! the memory is the backend's ([`ParamBuffers`]); executables reach it through
//! [`ParamSet::buffers`].

use crate::backend::{ParamData, ParamStore, RuntimeError};
use crate::bind::validate::check_param_data;
use crate::tensor::{Tensor, TensorData};
use qie_ir::TensorType;
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// A backend's storage of a parameter set, indexed like [`ParamSet::entries`].
pub trait ParamBuffers: Send + Sync + 'static {
    /// Overwrites parameter `index` with `data` (already checked against its type).
    fn write(&mut self, index: usize, data: &ParamData<'_>) -> Result<(), String>;
    /// Parameter `index` as host data (f32 for every float).
    fn read(&self, index: usize) -> Result<TensorData, String>;
    /// Bytes of memory the set holds.
    fn bytes(&self) -> usize;
    fn as_any(&self) -> &dyn Any;
}

/// One parameter of a set.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    pub name: String,
    /// The type it is stored as (on a bf16 device: bf16 for every float).
    pub ty: TensorType,
    /// How many times it was updated since the upload.
    pub version: u64,
}

/// Which backend instance a set belongs to: plans of other backends cannot read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendId(pub u64);

impl BackendId {
    /// A new id, distinct from every other in this process.
    pub fn fresh() -> BackendId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        BackendId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Named parameters resident on one backend (see the module docs).
pub struct ParamSet {
    owner: BackendId,
    backend: String,
    index: HashMap<String, usize>,
    entries: Vec<ParamInfo>,
    buffers: Box<dyn ParamBuffers>,
    version: u64,
}

impl ParamSet {
    /// Wraps a backend's buffers holding `entries` (name, storage type), in that order.
    pub fn new(
        owner: BackendId,
        backend: &str,
        entries: Vec<(String, TensorType)>,
        buffers: Box<dyn ParamBuffers>,
    ) -> ParamSet {
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        let entries = entries
            .into_iter()
            .map(|(name, ty)| ParamInfo {
                name,
                ty,
                version: 0,
            })
            .collect();
        ParamSet {
            owner,
            backend: backend.to_string(),
            index,
            entries,
            buffers,
            version: 0,
        }
    }

    pub fn owner(&self) -> BackendId {
        self.owner
    }

    /// Name of the backend the set lives on (`cpu`, `cuda:0`).
    pub fn backend_name(&self) -> &str {
        &self.backend
    }

    /// The set's version: 0 after the upload, plus one per [`ParamSet::update`].
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn entries(&self) -> &[ParamInfo] {
        &self.entries
    }

    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of backend memory the set holds.
    pub fn bytes(&self) -> usize {
        self.buffers.bytes()
    }

    /// The backend's buffers, for its executables.
    pub fn buffers<T: 'static>(&self) -> Option<&T> {
        self.buffers.as_any().downcast_ref::<T>()
    }

    /// Checks that a plan of backend `owner` can read this set.
    pub fn check_owner(&self, owner: BackendId, backend: &str) -> Result<(), RuntimeError> {
        if self.owner != owner {
            return Err(RuntimeError::BadParam {
                name: "(parameter set)".to_string(),
                message: format!(
                    "the set was uploaded to {} and cannot be read by a plan on {backend}",
                    self.backend
                ),
            });
        }
        Ok(())
    }

    /// Where the weight a plan binds as `name: ty` sits in the set, checked: same storage
    /// dtype and shape.
    pub fn bind(&self, name: &str, ty: &TensorType) -> Result<usize, RuntimeError> {
        let i = self
            .position(name)
            .ok_or_else(|| RuntimeError::MissingParam(name.to_string()))?;
        let held = &self.entries[i].ty;
        if held.dtype != ty.dtype || held.numel() != ty.numel() {
            return Err(RuntimeError::BadParam {
                name: name.to_string(),
                message: format!("the plan reads it as {ty}, the parameter set holds {held}"),
            });
        }
        Ok(i)
    }

    /// Overwrites the parameter `name` in place with `data` (same element count; any float
    /// data for a float parameter). Plans see the new values from their next run on.
    pub fn update(&mut self, name: &str, data: ParamData<'_>) -> Result<(), RuntimeError> {
        let i = self
            .position(name)
            .ok_or_else(|| RuntimeError::MissingParam(name.to_string()))?;
        check_param_data(name, &self.entries[i].ty, &data)?;
        self.buffers
            .write(i, &data)
            .map_err(|message| RuntimeError::BadParam {
                name: name.to_string(),
                message,
            })?;
        self.entries[i].version += 1;
        self.version += 1;
        Ok(())
    }

    /// Updates every parameter of the set that `store` has.
    pub fn update_from(&mut self, store: &dyn ParamStore) -> Result<usize, RuntimeError> {
        let names: Vec<String> = self.entries.iter().map(|e| e.name.clone()).collect();
        let mut n = 0;
        for name in names {
            if let Some(data) = store.param(&name) {
                self.update(&name, data)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// The current values of `name` (f32 for every float).
    pub fn read(&self, name: &str) -> Result<Tensor, RuntimeError> {
        let i = self
            .position(name)
            .ok_or_else(|| RuntimeError::MissingParam(name.to_string()))?;
        let data = self.buffers.read(i).map_err(RuntimeError::Execution)?;
        let e = &self.entries[i];
        let ty = e.ty.with_dtype(match e.ty.dtype {
            d if d.is_float() => qie_ir::DType::F32,
            d => d,
        });
        Tensor::new(ty, data).map_err(|err| RuntimeError::Execution(err.to_string()))
    }
}

impl std::fmt::Debug for ParamSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamSet")
            .field("backend", &self.backend)
            .field("params", &self.entries.len())
            .field("bytes", &self.bytes())
            .field("version", &self.version)
            .finish()
    }
}

/// A resident set is a store whose weights already live on a backend.
impl ParamStore for ParamSet {
    fn param(&self, _name: &str) -> Option<ParamData<'_>> {
        None
    }

    fn resident(&self) -> Option<&ParamSet> {
        Some(self)
    }
}
