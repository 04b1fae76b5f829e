//! The backend seam: compile a graph once, run it many times with named inputs and weights.
//!
//! The CPU backend ([`crate::cpu`]) is the reference; the CUDA backend implements the same
//! traits, so one test body can run on every backend (see `runtime/tests/cpu_suite`). Both bind
//! plans through the shared [`crate::bind`] layer.

use crate::params::{ParamCopy, ParamSet, ParamWrite};
use crate::profile::Profile;
use crate::tensor::{Storage, Tensor};
use qie_ir::{Graph, TensorType};
use std::collections::HashMap;
use std::fmt;

/// Errors of compiling or running a plan. Messages name the input, param, node or group at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeError {
    /// A graph input was not bound at `run`.
    MissingInput(String),
    /// A bound input or param does not match the graph's declaration.
    BadInput {
        name: String,
        message: String,
    },
    MissingParam(String),
    BadParam {
        name: String,
        message: String,
    },
    /// A compiler pass (optimize, fuse, memory planning, lowering) failed.
    Compile(String),
    /// The plan cannot be executed by this backend.
    Unsupported(String),
    /// A failure while executing (e.g. a kernel precondition).
    Execution(String),
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeError::MissingInput(n) => write!(f, "input \"{n}\" is not bound"),
            RuntimeError::BadInput { name, message } => write!(f, "input \"{name}\": {message}"),
            RuntimeError::MissingParam(n) => {
                write!(f, "param \"{n}\" is not in the parameter store")
            }
            RuntimeError::BadParam { name, message } => write!(f, "param \"{name}\": {message}"),
            RuntimeError::Compile(m) => write!(f, "compile error: {m}"),
            RuntimeError::Unsupported(m) => write!(f, "unsupported: {m}"),
            RuntimeError::Execution(m) => write!(f, "execution error: {m}"),
        }
    }
}

impl std::error::Error for RuntimeError {}

/// A borrowed view of a weight's elements.
///
/// `BF16` / `F16` are weights kept in their checkpoint dtype on the host (half the memory of
/// f32). They bind to any float value of a graph: the CPU backend widens them to f32, the CUDA
/// backend uploads them as they are when the value is stored in the same dtype.
#[derive(Clone, Copy, Debug)]
pub enum ParamData<'a> {
    F32(&'a [f32]),
    BF16(&'a [half::bf16]),
    F16(&'a [half::f16]),
    I32(&'a [i32]),
    I64(&'a [i64]),
    Bool(&'a [bool]),
}

impl ParamData<'_> {
    pub fn len(&self) -> usize {
        match self {
            ParamData::F32(v) => v.len(),
            ParamData::BF16(v) => v.len(),
            ParamData::F16(v) => v.len(),
            ParamData::I32(v) => v.len(),
            ParamData::I64(v) => v.len(),
            ParamData::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements `offset..offset + len` (in range: checked by the caller).
    pub fn slice(&self, offset: usize, len: usize) -> ParamData<'_> {
        let r = offset..offset + len;
        match self {
            ParamData::F32(v) => ParamData::F32(&v[r]),
            ParamData::BF16(v) => ParamData::BF16(&v[r]),
            ParamData::F16(v) => ParamData::F16(&v[r]),
            ParamData::I32(v) => ParamData::I32(&v[r]),
            ParamData::I64(v) => ParamData::I64(&v[r]),
            ParamData::Bool(v) => ParamData::Bool(&v[r]),
        }
    }

    /// The host storage class a graph value needs to bind this data (every float is `F32`).
    pub fn storage(&self) -> Storage {
        match self {
            ParamData::F32(_) | ParamData::BF16(_) | ParamData::F16(_) => Storage::F32,
            ParamData::I32(_) => Storage::I32,
            ParamData::I64(_) => Storage::I64,
            ParamData::Bool(_) => Storage::Bool,
        }
    }

    pub(crate) fn as_ptr(&self) -> *const u8 {
        match self {
            ParamData::F32(v) => v.as_ptr() as *const u8,
            ParamData::BF16(v) => v.as_ptr() as *const u8,
            ParamData::F16(v) => v.as_ptr() as *const u8,
            ParamData::I32(v) => v.as_ptr() as *const u8,
            ParamData::I64(v) => v.as_ptr() as *const u8,
            ParamData::Bool(v) => v.as_ptr() as *const u8,
        }
    }

    /// The elements as f32: borrowed for `F32`, widened for `BF16` / `F16` (exact), `None` for
    /// integer and bool data.
    pub fn to_f32(&self) -> Option<std::borrow::Cow<'_, [f32]>> {
        use std::borrow::Cow;
        match self {
            ParamData::F32(v) => Some(Cow::Borrowed(v)),
            ParamData::BF16(v) => Some(Cow::Owned(widen(v, |x| x.to_f32()))),
            ParamData::F16(v) => Some(Cow::Owned(widen(v, |x| x.to_f32()))),
            _ => None,
        }
    }
}

/// `v` mapped element-wise to f32, in parallel chunks (weights can be GBs).
fn widen<T: Copy + Sync>(v: &[T], f: impl Fn(T) -> f32 + Sync) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = vec![0f32; v.len()];
    out.par_chunks_mut(1 << 16)
        .zip(v.par_chunks(1 << 16))
        .for_each(|(o, i)| {
            for (d, &x) in o.iter_mut().zip(i) {
                *d = f(x);
            }
        });
    out
}

/// Weights looked up by checkpoint name. Shapes are checked by element count against the graph.
///
/// A run reads its weights from a store: host data (uploaded for that run only by a device
/// backend), or a [`ParamSet`] already resident on the backend ([`ParamStore::resident`]),
/// which is what models use so that weights are uploaded once.
pub trait ParamStore: Sync {
    /// Host data of a weight (`None` when the store has no such weight, or keeps it on a device).
    fn param(&self, name: &str) -> Option<ParamData<'_>>;

    /// The store's weights as they live on a backend, when they do.
    fn resident(&self) -> Option<&ParamSet> {
        None
    }
}

impl ParamStore for HashMap<String, Tensor> {
    fn param(&self, name: &str) -> Option<ParamData<'_>> {
        self.get(name).map(Tensor::param_data)
    }
}

impl ParamStore for HashMap<String, Vec<f32>> {
    fn param(&self, name: &str) -> Option<ParamData<'_>> {
        self.get(name).map(|v| ParamData::F32(v))
    }
}

/// A store without weights (for graphs that have none).
pub struct NoParams;

impl ParamStore for NoParams {
    fn param(&self, _name: &str) -> Option<ParamData<'_>> {
        None
    }
}

/// How to compile a graph.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// Run the graph optimizer (`qie_ir::passes::optimize`) first.
    pub optimize: bool,
    /// Fuse with `qie_ir::passes::fusion::fuse`; when false every node is its own kernel group
    /// (useful to isolate fusion bugs).
    pub fuse: bool,
    /// Worker threads (`None`: rayon's global pool, one per core).
    pub threads: Option<usize>,
    /// Fill the arena with 0xFF bytes (NaN for floats) before every run, so that a value a kernel
    /// forgot to write shows up in the outputs. For tests.
    pub poison: bool,
    /// Gradient checkpointing: recompute the segments' forward values for the backward
    /// (`qie_ir::passes::recompute`, run after the optimizer).
    pub recompute: Option<qie_ir::passes::RecomputeOptions>,
    /// Store this plan's floats as `mode` instead of as the backend's mode (device backends;
    /// the CPU always stores f32). `Some(F32)` on a bf16 device keeps optimizer state exact.
    pub storage: Option<crate::storage::StorageMode>,
    /// (output, param) pairs the caller always writes back with [`Executable::run_in_place`]
    /// (an optimizer step): a device backend may compute such an output straight into the
    /// param's memory (no arena buffer, no copy), and then refuses runs that do not write it
    /// back. The CPU ignores it.
    pub param_outputs: Vec<(String, String)>,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            optimize: true,
            fuse: true,
            threads: None,
            poison: false,
            recompute: None,
            storage: None,
            param_outputs: Vec::new(),
        }
    }
}

/// Sizes and counts of a compiled plan, for reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanStats {
    /// Bytes of the memory plan's arena (graph values that cross group boundaries).
    pub arena_bytes: usize,
    /// Extra bytes for values that live inside one group (library results before an epilogue,
    /// materialised operands) and library scratch (im2col, attention blocks are per thread).
    pub scratch_bytes: usize,
    pub groups: usize,
    pub elementwise_groups: usize,
    pub reduction_groups: usize,
    pub library_groups: usize,
    pub data_groups: usize,
    pub alias_groups: usize,
    /// Kernel programs after lowering (a group may need several).
    pub kernels: usize,
}

impl fmt::Display for PlanStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} groups ({} elementwise, {} reduction, {} library, {} data, {} alias), {} kernels, arena {} B, scratch {} B",
            self.groups,
            self.elementwise_groups,
            self.reduction_groups,
            self.library_groups,
            self.data_groups,
            self.alias_groups,
            self.kernels,
            self.arena_bytes,
            self.scratch_bytes
        )
    }
}

/// A compiled, reusable plan.
pub trait Executable: Send + Sync {
    /// Runs the plan. `inputs` must bind every graph input by name; extra entries are ignored.
    fn run(
        &self,
        inputs: &HashMap<String, Tensor>,
        params: &dyn ParamStore,
    ) -> Result<HashMap<String, Tensor>, RuntimeError>;

    fn stats(&self) -> PlanStats;

    /// Runs once and times every step ([`Profile`]): slower than [`Executable::run`].
    fn run_profiled(
        &self,
        inputs: &HashMap<String, Tensor>,
        params: &dyn ParamStore,
    ) -> Result<(HashMap<String, Tensor>, Profile), RuntimeError>;

    fn arena_bytes(&self) -> usize {
        self.stats().arena_bytes
    }

    /// The weights the plan reads: checkpoint name and type as bound (on a bf16 device the
    /// dtype is bf16). Pass them to [`Backend::upload_params`].
    fn params(&self) -> Vec<(String, TensorType)>;

    /// Runs the plan with weights from `params`; the outputs named in `writes` go into `sink`
    /// (a parameter set of the same backend) instead of coming back, and the rest are
    /// returned. On a device backend the written outputs never leave the device: this is how
    /// gradients reach an optimizer's state.
    fn run_into(
        &self,
        inputs: &HashMap<String, Tensor>,
        params: &dyn ParamStore,
        sink: &mut ParamSet,
        writes: &[ParamWrite],
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let mut out = self.run(inputs, params)?;
        crate::params::write_outputs_to_set(&mut out, sink, writes)?;
        Ok(out)
    }

    /// [`Executable::run_into`] with `set` as both the weights and the sink: an in-place
    /// update (every write lands after the plan's last read).
    fn run_in_place(
        &self,
        inputs: &HashMap<String, Tensor>,
        set: &mut ParamSet,
        writes: &[ParamWrite],
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let mut out = self.run(inputs, &*set)?;
        crate::params::write_outputs_to_set(&mut out, set, writes)?;
        Ok(out)
    }
}

/// A device that compiles graphs.
pub trait Backend: Send + Sync {
    fn name(&self) -> &str;

    fn compile(
        &self,
        graph: &Graph,
        options: &CompileOptions,
    ) -> Result<Box<dyn Executable>, RuntimeError>;

    /// Device memory in use, for backends with their own memory (`None` on the CPU).
    fn memory(&self) -> Option<MemoryReport> {
        None
    }

    /// Uploads the weights `params` names (name and graph type; any float type binds any float
    /// data) from `store` into a [`ParamSet`] that every plan of this backend can run with.
    /// The set keeps its memory until dropped; update it in place with [`ParamSet::update`].
    /// Backends that only plan (test doubles) keep the default, which refuses.
    fn upload_params(
        &self,
        _params: &[(String, TensorType)],
        _store: &dyn ParamStore,
    ) -> Result<ParamSet, RuntimeError> {
        Err(RuntimeError::Unsupported(format!(
            "{} cannot hold parameter sets",
            self.name()
        )))
    }

    /// Copies element ranges between two parameter sets of this backend, floats converted to
    /// the destination's storage dtype (on a device, without leaving it).
    fn copy_params(
        &self,
        from: &ParamSet,
        to: &mut ParamSet,
        copies: &[ParamCopy],
    ) -> Result<(), RuntimeError> {
        crate::params::copy_params_on_host(from, to, copies)
    }

    /// [`Backend::upload_params`] with the floats stored as `mode` (for plans compiled with
    /// [`CompileOptions::storage`]); backends that store only f32 ignore it.
    fn upload_params_stored(
        &self,
        params: &[(String, TensorType)],
        store: &dyn ParamStore,
        _mode: crate::storage::StorageMode,
    ) -> Result<ParamSet, RuntimeError> {
        self.upload_params(params, store)
    }
}

/// Where a device backend's memory goes, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// Weights resident on the device: every live [`ParamSet`] of the backend (after alignment).
    pub weights: usize,
    /// Everything qie allocated now (weights, plan arenas, library workspaces).
    pub allocated: usize,
    /// The most qie has had allocated at once.
    pub peak_allocated: usize,
    /// Used on the whole device (total - free): adds the CUDA context, loaded modules, library
    /// handles, and other processes.
    pub device_used: usize,
}

impl fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        write!(
            f,
            "weights {:.2} GiB, allocated {:.2} GiB (peak {:.2} GiB), device used {:.2} GiB",
            gib(self.weights),
            gib(self.allocated),
            gib(self.peak_allocated),
            gib(self.device_used)
        )
    }
}
