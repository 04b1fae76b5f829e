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
    /// Overwrites elements `offset..offset + data.len()` of parameter `index` with `data`
    /// (already checked against its type and range).
    fn write(&mut self, index: usize, offset: usize, data: &ParamData<'_>) -> Result<(), String>;
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
        self.write_checked(i, 0, &data)
    }

    /// Overwrites elements `offset..offset + data.len()` of the parameter `name`.
    pub fn update_range(
        &mut self,
        name: &str,
        offset: usize,
        data: ParamData<'_>,
    ) -> Result<(), RuntimeError> {
        let i = self.check_range(name, offset, data.len(), Some(data.storage()))?;
        self.write_checked(i, offset, &data)
    }

    fn write_checked(
        &mut self,
        i: usize,
        offset: usize,
        data: &ParamData<'_>,
    ) -> Result<(), RuntimeError> {
        self.buffers
            .write(i, offset, data)
            .map_err(|message| RuntimeError::BadParam {
                name: self.entries[i].name.clone(),
                message,
            })?;
        self.mark_written(i);
        Ok(())
    }

    /// Records that a backend wrote parameter `i` itself (on its device).
    pub(crate) fn mark_written(&mut self, i: usize) {
        self.entries[i].version += 1;
        self.version += 1;
    }

    /// The index of `name` after checking that `len` elements from `offset` lie inside it and,
    /// when `storage` is given, that data of that class binds to it.
    pub(crate) fn check_range(
        &self,
        name: &str,
        offset: usize,
        len: usize,
        storage: Option<crate::tensor::Storage>,
    ) -> Result<usize, RuntimeError> {
        let i = self
            .position(name)
            .ok_or_else(|| RuntimeError::MissingParam(name.to_string()))?;
        let ty = &self.entries[i].ty;
        let bad = |message: String| RuntimeError::BadParam {
            name: name.to_string(),
            message,
        };
        if let Some(class) = storage {
            if class != crate::tensor::Storage::of(ty.dtype) {
                return Err(bad(format!("{ty} cannot take {class:?} data")));
            }
        }
        if offset.checked_add(len).is_none_or(|end| end > ty.numel()) {
            return Err(bad(format!(
                "elements {offset}..{} lie outside {ty} ({} elements)",
                offset.saturating_add(len),
                ty.numel()
            )));
        }
        Ok(i)
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

/// An output of a run that goes into a parameter set instead of coming back to the host
/// ([`crate::Executable::run_into`]): its elements overwrite `param` from element `offset` on,
/// floats converted to the parameter's storage dtype.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamWrite {
    pub output: String,
    pub param: String,
    pub offset: usize,
}

/// `len` elements of `from` (from element `from_offset`) copied over `to` (from `to_offset`),
/// between two parameter sets of one backend ([`crate::Backend::copy_params`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamCopy {
    pub from: String,
    pub from_offset: usize,
    pub to: String,
    pub to_offset: usize,
    pub len: usize,
}

/// The host path of [`crate::Executable::run_into`]: moves the written outputs out of `outputs`
/// into `sink`.
pub(crate) fn write_outputs_to_set(
    outputs: &mut HashMap<String, Tensor>,
    sink: &mut ParamSet,
    writes: &[ParamWrite],
) -> Result<(), RuntimeError> {
    for w in writes {
        let t = outputs.get(&w.output).ok_or_else(|| {
            RuntimeError::Execution(format!("the plan has no output \"{}\"", w.output))
        })?;
        sink.update_range(&w.param, w.offset, t.param_data())?;
    }
    for w in writes {
        outputs.remove(&w.output);
    }
    Ok(())
}

/// The host path of [`crate::Backend::copy_params`].
pub(crate) fn copy_params_on_host(
    from: &ParamSet,
    to: &mut ParamSet,
    copies: &[ParamCopy],
) -> Result<(), RuntimeError> {
    let mut read: HashMap<&str, Tensor> = HashMap::new();
    for c in copies {
        from.check_range(&c.from, c.from_offset, c.len, None)?;
        if !read.contains_key(c.from.as_str()) {
            read.insert(&c.from, from.read(&c.from)?);
        }
        let src = read[c.from.as_str()].param_data();
        let part = src.slice(c.from_offset, c.len);
        to.update_range(&c.to, c.to_offset, part)?;
    }
    Ok(())
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
