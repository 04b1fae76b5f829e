//! [`CudaBackend`]: the CUDA implementation of [`Backend`].
//!
//! Compiling a graph: promote bf16/f16 to f32 (as the CPU backend does), optimise, fuse, assign
//! storage dtypes ([`super::storage`]), plan memory on the storage-typed graph, lower, bind
//! ([`super::plan::CudaPlan`]), then compile the plan's kernels with NVRTC (grouped into a few
//! modules compiled in parallel, cached on disk, and kept loaded by the backend so a kernel shared
//! by several plans is compiled once) and wrap it in a [`CudaExecutable`].
//!
//! The backend owns what outlives plans: the device and its stream, the cuBLASLt handle and its
//! workspace, the flash-attention module (loaded when a plan first needs it) and the loaded
//! kernels. Weights live in parameter sets ([`crate::ParamSet`], see [`super::params`]) that
//! callers upload once and own; a run given host weights uploads a set for that run only.

use super::exec::CudaExecutable;
use super::nvrtc::{Kernel, Module};
use super::params::CudaParams;
use super::plan::{CudaPlan, GENERIC};
use super::{
    Blas, CudaDevice, CudaError, DevPtr, DeviceBuffer, FlashAttention, FlashAttentionBackward,
    KernelCache,
};
use crate::backend::{
    Backend, CompileOptions, Executable, MemoryReport, ParamData, ParamStore, RuntimeError,
};
use crate::params::{BackendId, ParamCopy, ParamSet};
use crate::storage::{assign_storage, StorageMode};
use qie_ir::passes::{plan_memory, MemoryOptions};
use qie_ir::{DType, Graph, TensorType};
use rayon::prelude::*;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Kernels per NVRTC module: small enough that a plan's modules compile in parallel, large
/// enough that the per-compile overhead stays small.
const KERNELS_PER_MODULE: usize = 24;

pub(crate) fn cuda_err(e: CudaError) -> RuntimeError {
    RuntimeError::Execution(e.to_string())
}

/// The CUDA backend on one device.
pub struct CudaBackend {
    pub(crate) shared: Arc<Shared>,
}

/// State shared by the backend and its executables.
pub(crate) struct Shared {
    /// Parameter sets this backend uploads carry it; its plans read no others.
    pub id: BackendId,
    /// `cuda:N`.
    pub name: String,
    pub dev: Arc<CudaDevice>,
    pub mode: StorageMode,
    pub cache: KernelCache,
    /// Declared before its workspace so that it is destroyed first.
    pub blas: Blas,
    _workspace: DeviceBuffer,
    flash: Mutex<Option<Arc<FlashAttention>>>,
    flash_backward: Mutex<Option<Arc<FlashAttentionBackward>>>,
    kernels: Mutex<HashMap<String, Kernel>>,
    /// Bytes held by this backend's live parameter sets.
    pub resident_weights: Arc<AtomicUsize>,
}

impl CudaBackend {
    /// Opens `cuda:ordinal`; float values are stored as `mode` says.
    pub fn new(ordinal: usize, mode: StorageMode) -> Result<CudaBackend, CudaError> {
        let dev = CudaDevice::new(ordinal)?;
        Self::on_device(dev, mode)
    }

    /// A backend on an already opened device.
    pub fn on_device(dev: Arc<CudaDevice>, mode: StorageMode) -> Result<CudaBackend, CudaError> {
        let workspace = dev.alloc(super::blas::WORKSPACE_BYTES)?;
        let blas = Blas::new(&dev, workspace.ptr(), super::blas::WORKSPACE_BYTES)?;
        let name = format!("cuda:{}", dev.info().ordinal);
        Ok(CudaBackend {
            shared: Arc::new(Shared {
                id: BackendId::fresh(),
                name,
                resident_weights: Arc::new(AtomicUsize::new(0)),
                dev,
                mode,
                cache: KernelCache::default_location(),
                blas,
                _workspace: workspace,
                flash: Mutex::new(None),
                flash_backward: Mutex::new(None),
                kernels: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.shared.dev
    }

    pub fn mode(&self) -> StorageMode {
        self.shared.mode
    }

    /// Bytes of device memory this backend's live parameter sets take.
    pub fn weight_bytes(&self) -> usize {
        self.shared.resident_weights.load(Ordering::Relaxed)
    }

    /// Compiles `graph` into a [`CudaExecutable`] (see the module docs).
    pub fn compile_plan(
        &self,
        graph: &Graph,
        options: &CompileOptions,
    ) -> Result<CudaExecutable, RuntimeError> {
        let plan = build_plan(graph, options, options.storage.unwrap_or(self.shared.mode))?;
        let kernels = self.shared.load_kernels(&plan.kernels)?;
        let flash = if plan.uses_flash() {
            Some(self.shared.flash()?)
        } else {
            None
        };
        let flash_backward = if plan.uses_flash_backward() {
            Some(self.shared.flash_backward()?)
        } else {
            None
        };
        CudaExecutable::new(
            self.shared.clone(),
            plan,
            kernels,
            (flash, flash_backward),
            options,
        )
    }
}

/// Everything short of the device: passes, storage dtypes, memory plan, lowering, binding and
/// kernel sources. Needs no GPU.
pub fn build_plan(
    graph: &Graph,
    options: &CompileOptions,
    mode: StorageMode,
) -> Result<CudaPlan, RuntimeError> {
    let (g, fusion) = crate::compile::optimize_and_fuse(graph, options)?;
    let sg = assign_storage(&g, &fusion, mode)?;
    let memory_options = MemoryOptions {
        param_outputs: param_output_nodes(&sg, &options.param_outputs)?,
        ..MemoryOptions::default()
    };
    let memory = plan_memory(&sg, &fusion, &memory_options);
    CudaPlan::new(sg, &g, fusion, memory, mode)
}

/// The nodes of [`CompileOptions::param_outputs`] (output and param names) in `g`.
fn param_output_nodes(
    g: &Graph,
    pairs: &[(String, String)],
) -> Result<Vec<(qie_ir::NodeId, qie_ir::NodeId)>, RuntimeError> {
    pairs
        .iter()
        .map(|(output, param)| {
            let o = g
                .outputs
                .iter()
                .find(|(n, _)| n == output)
                .map(|&(_, id)| id)
                .ok_or_else(|| {
                    RuntimeError::Compile(format!("param_outputs: no output \"{output}\""))
                })?;
            let p = g
                .params()
                .into_iter()
                .find(|(n, _)| n == param)
                .map(|(_, id)| id)
                .ok_or_else(|| {
                    RuntimeError::Compile(format!("param_outputs: no param \"{param}\""))
                })?;
            Ok((o, p))
        })
        .collect()
}

/// The text of one NVRTC module holding `kernels` (symbol, source).
pub fn module_source(kernels: &[(&String, &String)]) -> String {
    let mut s = String::with_capacity(
        qie_codegen::cuda::PRELUDE.len()
            + GENERIC.len()
            + kernels.iter().map(|(_, k)| k.len()).sum::<usize>(),
    );
    s.push_str(qie_codegen::cuda::PRELUDE);
    s.push_str(GENERIC);
    for (_, k) in kernels {
        s.push('\n');
        s.push_str(k);
    }
    s
}

/// Groups a plan's kernels into the module texts they are compiled as (deterministic).
pub fn module_sources(kernels: &BTreeMap<String, String>) -> Vec<(Vec<String>, String)> {
    let all: Vec<(&String, &String)> = kernels.iter().collect();
    all.chunks(KERNELS_PER_MODULE)
        .map(|chunk| {
            (
                chunk.iter().map(|(n, _)| (*n).clone()).collect(),
                module_source(chunk),
            )
        })
        .collect()
}

impl Shared {
    /// Loads (compiling or reading the cache as needed) every kernel of `wanted` not loaded yet;
    /// returns handles to all of them by symbol.
    pub(crate) fn load_kernels(
        &self,
        wanted: &BTreeMap<String, String>,
    ) -> Result<HashMap<String, Kernel>, RuntimeError> {
        let missing: BTreeMap<String, String> = {
            let loaded = self.kernels.lock().unwrap_or_else(|e| e.into_inner());
            wanted
                .iter()
                .filter(|(n, _)| !loaded.contains_key(*n))
                .map(|(n, s)| (n.clone(), s.clone()))
                .collect()
        };
        if !missing.is_empty() {
            let arch = self.dev.arch();
            let driver = self.dev.driver_version();
            let compiled = module_sources(&missing)
                .into_par_iter()
                .map(|(names, source)| {
                    self.cache
                        .compile(&source, "qie_kernels.cu", &arch, driver, &[])
                        .map(|c| (names, c))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| RuntimeError::Compile(e.to_string()))?;
            let mut loaded = self.kernels.lock().unwrap_or_else(|e| e.into_inner());
            for (names, c) in compiled {
                let module = Module::load(&self.dev, &c).map_err(cuda_err)?;
                for n in names {
                    let k = module.function(&n).map_err(cuda_err)?;
                    loaded.insert(n, k);
                }
            }
        }
        let loaded = self.kernels.lock().unwrap_or_else(|e| e.into_inner());
        Ok(wanted
            .keys()
            .map(|n| (n.clone(), loaded[n].clone()))
            .collect())
    }

    fn flash(&self) -> Result<Arc<FlashAttention>, RuntimeError> {
        let mut f = self.flash.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fa) = f.as_ref() {
            return Ok(fa.clone());
        }
        let fa = Arc::new(FlashAttention::new(&self.dev, &self.cache).map_err(cuda_err)?);
        *f = Some(fa.clone());
        Ok(fa)
    }

    fn flash_backward(&self) -> Result<Arc<FlashAttentionBackward>, RuntimeError> {
        let mut f = self
            .flash_backward
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(fb) = f.as_ref() {
            return Ok(fb.clone());
        }
        // The gradient kernels follow the forward's choice (QIE_ATTN_KERNEL included).
        let kind = self.flash()?.kind();
        let fb =
            Arc::new(FlashAttentionBackward::new(&self.dev, &self.cache, kind).map_err(cuda_err)?);
        *f = Some(fb.clone());
        Ok(fb)
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn compile(
        &self,
        graph: &Graph,
        options: &CompileOptions,
    ) -> Result<Box<dyn Executable>, RuntimeError> {
        Ok(Box::new(self.compile_plan(graph, options)?))
    }

    fn memory(&self) -> Option<MemoryReport> {
        let dev = &self.shared.dev;
        let used = dev
            .mem_info()
            .map(|(free, total)| total - free)
            .unwrap_or(0);
        Some(MemoryReport {
            weights: self.weight_bytes(),
            allocated: dev.allocations().current(),
            peak_allocated: dev.allocations().peak(),
            device_used: used,
        })
    }

    fn upload_params(
        &self,
        params: &[(String, TensorType)],
        store: &dyn ParamStore,
    ) -> Result<ParamSet, RuntimeError> {
        super::params::upload(&self.shared, params, store, self.shared.mode)
    }

    fn copy_params(
        &self,
        from: &ParamSet,
        to: &mut ParamSet,
        copies: &[ParamCopy],
    ) -> Result<(), RuntimeError> {
        from.check_owner(self.shared.id, &self.shared.name)?;
        to.check_owner(self.shared.id, &self.shared.name)?;
        let held = |set: &ParamSet| -> (Vec<DevPtr>, Vec<DType>) {
            let p = set
                .buffers::<CudaParams>()
                .expect("CUDA parameter sets hold CudaParams");
            (p.ptrs.clone(), p.dtypes.clone())
        };
        let ((src_ptrs, src_dtypes), (dst_ptrs, dst_dtypes)) = (held(from), held(to));
        let mut resolved = Vec::with_capacity(copies.len());
        for c in copies {
            let i = from.check_range(&c.from, c.from_offset, c.len, None)?;
            let class = crate::tensor::Storage::of(src_dtypes[i]);
            let j = to.check_range(&c.to, c.to_offset, c.len, Some(class))?;
            resolved.push((i, j, c));
        }
        self.shared.dev.bind().map_err(cuda_err)?;
        for &(i, j, c) in &resolved {
            self.shared.copy_converting(
                dst_ptrs[j].offset(c.to_offset * dst_dtypes[j].size_bytes()),
                dst_dtypes[j],
                src_ptrs[i].offset(c.from_offset * src_dtypes[i].size_bytes()),
                src_dtypes[i],
                c.len,
            )?;
        }
        self.shared
            .dev
            .synchronize()
            .map_err(|e| RuntimeError::Execution(format!("copying parameters: {e}")))?;
        for (_, j, _) in resolved {
            to.mark_written(j);
        }
        Ok(())
    }

    fn upload_params_stored(
        &self,
        params: &[(String, TensorType)],
        store: &dyn ParamStore,
        mode: StorageMode,
    ) -> Result<ParamSet, RuntimeError> {
        super::params::upload(&self.shared, params, store, mode)
    }
}

/// Elements per parallel conversion task.
const CHUNK: usize = 1 << 16;

/// `v` encoded element by element into `N` bytes each, in parallel.
pub(crate) fn par_encode<T: Sync, const N: usize>(
    v: &[T],
    f: impl Fn(&T) -> [u8; N] + Sync,
) -> Vec<u8> {
    let mut out = vec![0u8; v.len() * N];
    out.par_chunks_mut(CHUNK * N)
        .zip(v.par_chunks(CHUNK))
        .for_each(|(o, i)| {
            for (d, x) in o.chunks_exact_mut(N).zip(i) {
                d.copy_from_slice(&f(x));
            }
        });
    out
}

/// Bytes decoded `N` at a time into elements, in parallel.
pub(crate) fn par_decode<T: Send + Copy + Default, const N: usize>(
    bytes: &[u8],
    f: impl Fn([u8; N]) -> T + Sync,
) -> Vec<T> {
    let mut out = vec![T::default(); bytes.len() / N];
    out.par_chunks_mut(CHUNK)
        .zip(bytes.par_chunks(CHUNK * N))
        .for_each(|(o, i)| {
            for (d, x) in o.iter_mut().zip(i.chunks_exact(N)) {
                *d = f(x.try_into().expect("N bytes"));
            }
        });
    out
}

/// Host data converted to the bytes of its device storage dtype; borrowed (no copy) when the
/// host already holds that dtype, e.g. bf16 weights for bf16 storage.
pub(crate) fn to_storage_bytes<'a>(
    data: &ParamData<'a>,
    dtype: DType,
) -> Result<Cow<'a, [u8]>, String> {
    use half::{bf16, f16};
    Ok(match (*data, dtype) {
        (ParamData::F32(v), DType::F32) => Cow::Borrowed(bytemuck::cast_slice(v)),
        (ParamData::BF16(v), DType::BF16) => Cow::Borrowed(bytemuck::cast_slice(v)),
        (ParamData::F16(v), DType::F16) => Cow::Borrowed(bytemuck::cast_slice(v)),
        (ParamData::I32(v), DType::I32) => Cow::Borrowed(bytemuck::cast_slice(v)),
        (ParamData::I64(v), DType::I64) => Cow::Borrowed(bytemuck::cast_slice(v)),
        (ParamData::F32(v), DType::BF16) => {
            Cow::Owned(par_encode(v, |&x| bf16::from_f32(x).to_le_bytes()))
        }
        (ParamData::F32(v), DType::F16) => {
            Cow::Owned(par_encode(v, |&x| f16::from_f32(x).to_le_bytes()))
        }
        (ParamData::BF16(v), DType::F32) => Cow::Owned(par_encode(v, |x| x.to_f32().to_le_bytes())),
        (ParamData::F16(v), DType::F32) => Cow::Owned(par_encode(v, |x| x.to_f32().to_le_bytes())),
        (ParamData::BF16(v), DType::F16) => {
            Cow::Owned(par_encode(v, |x| f16::from_f32(x.to_f32()).to_le_bytes()))
        }
        (ParamData::F16(v), DType::BF16) => {
            Cow::Owned(par_encode(v, |x| bf16::from_f32(x.to_f32()).to_le_bytes()))
        }
        (ParamData::Bool(v), DType::Bool) => Cow::Owned(par_encode(v, |&b| [b as u8])),
        (d, t) => return Err(format!("{:?} data cannot be stored as {t}", d.storage())),
    })
}
