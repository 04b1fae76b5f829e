//! [`CudaExecutable`]: a [`CudaPlan`] with its kernels loaded, run on the device.
//!
//! One arena per executable (the memory plan's region, then scratch for temporaries), allocated
//! on the first run and kept: a run allocates no device memory when its weights are a resident
//! parameter set ([`crate::ParamSet`]); host weights are uploaded for that run only. A run
//! validates its inputs and weights,
//! copies the inputs in (converted to their storage dtype), queues every step on the device's
//! stream, checking each launch, waits, and copies the outputs out as f32 host tensors.
//! `QIE_CUDA_SYNC=1` waits after every step, so a fault is reported with the step that caused it.
//!
//! CUDA graphs: after the first successful run, the plan's steps are captured once into a CUDA
//! graph (pointers are fixed: one arena, the parameter set's weights), and later runs replay it
//! with a single launch between the input and output copies; an in-place update of the set is
//! seen by the replay. The graph is captured again when a run binds weights at other addresses. If capturing fails, the executable says so once and stays eager.
//! `QIE_CUDA_GRAPHS=0` turns graphs off.

use super::backend::{cuda_err, par_decode, to_storage_bytes, Shared};
use super::nan_watch::NanWatch;
use super::nvrtc::{Arg, Kernel};
use super::params::CudaParams;
use super::plan::{
    BufRef, CudaPlan, FlashGradStep, FlashStep, GemmEpilogue, GemmStep, KArg, PlanStep,
};
use super::{
    Arena, AttentionArgs, AttentionGradArgs, DevPtr, Epilogue, FlashAttention,
    FlashAttentionBackward, GemmArgs, TensorStrides,
};
use crate::backend::{CompileOptions, Executable, ParamStore, PlanStats, RuntimeError};
use crate::bind::validate::check_inputs;
use crate::params::{ParamSet, ParamWrite};
use crate::tensor::{Tensor, TensorData};
use qie_ir::{DType, Graph, TensorType};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// An output copied into a parameter set's memory at the end of a run.
struct DeviceWrite {
    /// Index into the plan's outputs.
    output: usize,
    dst: DevPtr,
    /// Storage dtype at `dst`.
    dtype: DType,
}

/// Device time of each step of a run: (step label, milliseconds).
pub type StepTimes = Vec<(String, f32)>;

pub struct CudaExecutable {
    shared: Arc<Shared>,
    plan: CudaPlan,
    /// One entry per plan step (`None` for steps that launch no generated kernel).
    kernels: Vec<Option<Kernel>>,
    flash: Option<Arc<FlashAttention>>,
    flash_backward: Option<Arc<FlashAttentionBackward>>,
    poison: bool,
    sync_each_step: bool,
    graphs: bool,
    state: Mutex<Option<RunState>>,
}

/// The device memory of an executable and its captured graph.
struct RunState {
    arena: Arena,
    graph: Option<Captured>,
    capture_failed: bool,
}

/// A captured run and the weight addresses it was captured with.
struct Captured {
    graph: super::Graph,
    params: Vec<DevPtr>,
}

// SAFETY: the graph handles are used only while the executable's state lock is held, and CUDA
// graph objects may be used from any thread of the process.
unsafe impl Send for Captured {}

impl CudaExecutable {
    pub(crate) fn new(
        shared: Arc<Shared>,
        plan: CudaPlan,
        loaded: HashMap<String, Kernel>,
        (flash, flash_backward): (
            Option<Arc<FlashAttention>>,
            Option<Arc<FlashAttentionBackward>>,
        ),
        options: &CompileOptions,
    ) -> Result<CudaExecutable, RuntimeError> {
        let kernels = plan
            .steps
            .iter()
            .map(|s| match s {
                PlanStep::Kernel { name, .. } => {
                    loaded.get(name).cloned().map(Some).ok_or_else(|| {
                        RuntimeError::Compile(format!("kernel {name} was not loaded"))
                    })
                }
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sync_each_step = std::env::var("QIE_CUDA_SYNC").is_ok_and(|v| v == "1");
        let graphs = !std::env::var("QIE_CUDA_GRAPHS").is_ok_and(|v| v == "0");
        Ok(CudaExecutable {
            shared,
            plan,
            kernels,
            flash,
            flash_backward,
            poison: options.poison,
            sync_each_step,
            graphs,
            state: Mutex::new(None),
        })
    }

    /// The plan: storage-typed graph, fusion, memory plan, steps and kernel sources.
    pub fn plan(&self) -> &CudaPlan {
        &self.plan
    }

    /// The graph the plan executes (storage dtypes; see `cuda::storage`).
    pub fn graph(&self) -> &Graph {
        &self.plan.graph
    }

    /// Runs the plan and returns the device time of every step (milliseconds, CUDA events), for
    /// profiling. Slower than [`Executable::run`]: one event pair per step.
    pub fn run_timed(
        &self,
        inputs: &HashMap<String, Tensor>,
        params: &dyn ParamStore,
    ) -> Result<(HashMap<String, Tensor>, StepTimes), RuntimeError> {
        let mut times = vec![];
        let out = self.run_inner(inputs, params, Some(&mut times), &[])?;
        Ok((out, times))
    }

    fn run_inner(
        &self,
        inputs: &HashMap<String, Tensor>,
        store: &dyn ParamStore,
        mut times: Option<&mut StepTimes>,
        writes: &[DeviceWrite],
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let dev = &self.shared.dev;
        let plan = &self.plan;
        // Validate everything before touching the device.
        check_inputs(&plan.inputs, inputs)?;
        dev.bind().map_err(cuda_err)?;
        // Host weights are uploaded for this run only (models keep a resident set instead).
        let temporary;
        let set = match store.resident() {
            Some(set) => set,
            None => {
                temporary = super::params::upload(&self.shared, &self.params(), store, plan.mode)?;
                &temporary
            }
        };
        set.check_owner(self.shared.id, &self.shared.name)?;
        let held = set
            .buffers::<CudaParams>()
            .expect("CUDA parameter sets hold CudaParams");
        let param_ptrs: Vec<DevPtr> = plan
            .params
            .iter()
            .map(|p| Ok(held.ptrs[set.bind(&p.name, &p.ty)?]))
            .collect::<Result<_, RuntimeError>>()?;
        // Outputs computed in a param's memory change the set: only a run that writes them
        // back to that very param may go ahead.
        let updates: Vec<&str> = plan
            .graph
            .outputs
            .iter()
            .filter(|(_, id)| plan.memory.param_in_place.iter().any(|(o, _)| o == id))
            .map(|(n, _)| n.as_str())
            .collect();
        for o in plan
            .outputs
            .iter()
            .filter(|o| updates.contains(&o.name.as_str()))
        {
            if let BufRef::Param { index, .. } = o.buf {
                let dst = param_ptrs[index];
                let written = writes
                    .iter()
                    .any(|w| plan.outputs[w.output].name == o.name && w.dst == dst);
                if !written {
                    return Err(RuntimeError::Execution(format!(
                        "this plan computes output \"{}\" in the memory of param \"{}\": run it with run_in_place writing it back there",
                        o.name, plan.params[index].name
                    )));
                }
            }
        }
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(RunState {
                arena: Arena::new(dev, plan.arena_bytes.max(256)).map_err(cuda_err)?,
                graph: None,
                capture_failed: false,
            });
        }
        let state = guard.as_mut().expect("allocated");
        let base = state.arena.base();
        let ptr = |r: &BufRef| -> DevPtr {
            match *r {
                BufRef::Arena { offset, .. } => base.offset(offset),
                BufRef::Param { index, .. } => param_ptrs[index],
            }
        };
        if self.poison {
            dev.memset(base, 0xFF, state.arena.size())
                .map_err(cuda_err)?;
        }
        for i in &plan.inputs {
            let t = &inputs[&i.name];
            let bytes =
                host_to_storage(t.data(), i.buf.dtype()).map_err(|m| RuntimeError::BadInput {
                    name: i.name.clone(),
                    message: m,
                })?;
            dev.htod(ptr(&i.buf), &bytes).map_err(cuda_err)?;
        }
        let mut watch = NanWatch::enabled().then(NanWatch::default);
        let use_graph = self.graphs && !self.sync_each_step && times.is_none() && watch.is_none();
        let replay = use_graph && state.graph.as_ref().is_some_and(|c| c.params == param_ptrs);
        if replay {
            let c = state.graph.as_ref().expect("checked");
            c.graph
                .replay()
                .map_err(|e| RuntimeError::Execution(format!("replaying the plan: {e}")))?;
        } else {
            for (si, step) in plan.steps.iter().enumerate() {
                let start = if times.is_some() {
                    Some(dev.record_event().map_err(cuda_err)?)
                } else {
                    None
                };
                self.exec_step(si, step, &ptr)
                    .map_err(|e| RuntimeError::Execution(format!("{}: {e}", step.label())))?;
                if self.sync_each_step || watch.is_some() {
                    dev.synchronize().map_err(|e| {
                        RuntimeError::Execution(format!("{} failed: {e}", step.label()))
                    })?;
                }
                if let Some(w) = watch.as_mut() {
                    w.check(dev, si, step, &ptr);
                }
                if let (Some(t), Some(start)) = (times.as_deref_mut(), start) {
                    let end = dev.record_event().map_err(cuda_err)?;
                    let ms = start.elapsed_ms(&end).map_err(cuda_err)?;
                    t.push((step.label(), ms));
                }
            }
        }
        dev.synchronize()
            .map_err(|e| RuntimeError::Execution(format!("running the plan: {e}")))?;
        if use_graph && !replay && !state.capture_failed && !plan.steps.is_empty() {
            // Record the steps (nothing runs) for the next calls.
            let captured = dev.capture(|| {
                for (si, step) in plan.steps.iter().enumerate() {
                    self.exec_step(si, step, &ptr)?;
                }
                Ok(())
            });
            match captured {
                Ok(graph) => {
                    state.graph = Some(Captured {
                        graph,
                        params: param_ptrs.clone(),
                    })
                }
                Err(e) => {
                    eprintln!("qie: CUDA graph capture failed ({e}); this plan runs eagerly");
                    state.capture_failed = true;
                    state.graph = None;
                }
            }
        }
        // Written outputs stay on the device (all writes come after the last step).
        for w in writes {
            let o = &plan.outputs[w.output];
            let src = ptr(&o.buf);
            if src != w.dst || o.buf.dtype() != w.dtype {
                self.shared
                    .copy_converting(w.dst, w.dtype, src, o.buf.dtype(), o.ty.numel())?;
            }
        }
        if !writes.is_empty() {
            dev.synchronize().map_err(|e| {
                RuntimeError::Execution(format!("writing outputs into the parameter set: {e}"))
            })?;
        }
        let mut out = HashMap::new();
        for (k, o) in plan.outputs.iter().enumerate() {
            if writes.iter().any(|w| w.output == k) {
                continue;
            }
            let mut bytes = vec![0u8; o.buf.bytes()];
            dev.dtoh(&mut bytes, ptr(&o.buf)).map_err(cuda_err)?;
            let data = storage_to_host(&bytes, o.buf.dtype());
            let t = Tensor::new(o.ty.clone(), data)
                .map_err(|e| RuntimeError::Execution(e.to_string()))?;
            out.insert(o.name.clone(), t);
        }
        Ok(out)
    }

    /// Checks `writes` against the plan's outputs and `sink` (same backend, names, ranges,
    /// float to float) and resolves their device addresses; also returns the entries written.
    fn device_writes(
        &self,
        sink: &ParamSet,
        writes: &[ParamWrite],
    ) -> Result<(Vec<DeviceWrite>, Vec<usize>), RuntimeError> {
        sink.check_owner(self.shared.id, &self.shared.name)?;
        let held = sink
            .buffers::<CudaParams>()
            .expect("CUDA parameter sets hold CudaParams");
        let mut targets = Vec::with_capacity(writes.len());
        let mut written = Vec::with_capacity(writes.len());
        for w in writes {
            let k = self
                .plan
                .outputs
                .iter()
                .position(|o| o.name == w.output)
                .ok_or_else(|| {
                    RuntimeError::Execution(format!("the plan has no output \"{}\"", w.output))
                })?;
            let o = &self.plan.outputs[k];
            let storage = crate::tensor::Storage::of(o.ty.dtype);
            let i = sink.check_range(&w.param, w.offset, o.ty.numel(), Some(storage))?;
            let dtype = held.dtypes[i];
            targets.push(DeviceWrite {
                output: k,
                dst: held.ptrs[i].offset(w.offset * dtype.size_bytes()),
                dtype,
            });
            written.push(i);
        }
        Ok((targets, written))
    }

    fn exec_step(
        &self,
        si: usize,
        step: &PlanStep,
        ptr: &dyn Fn(&BufRef) -> DevPtr,
    ) -> Result<(), super::CudaError> {
        let dev = &self.shared.dev;
        match step {
            PlanStep::Kernel {
                grid, block, args, ..
            } => {
                let kernel = self.kernels[si].as_ref().expect("kernel steps are loaded");
                let args: Vec<Arg> = args
                    .iter()
                    .map(|a| match *a {
                        KArg::Ptr(r, off) => Arg::Ptr(ptr(&r).offset(off)),
                        KArg::Null => Arg::Ptr(DevPtr::NULL),
                        KArg::I32(v) => Arg::I32(v),
                        KArg::I64(v) => Arg::I64(v),
                        KArg::F32(v) => Arg::F32(v),
                    })
                    .collect();
                kernel.launch(*grid, (*block, 1, 1), 0, &args)
            }
            PlanStep::Gemm { gemm, .. } => self.shared.blas.gemm(&gemm_args(gemm, ptr)),
            PlanStep::Flash { flash, .. } => self
                .flash
                .as_ref()
                .expect("flash plans load the kernel")
                .forward(&flash_args(flash, ptr)),
            PlanStep::FlashGrad { flash, grad, .. } => self
                .flash_backward
                .as_ref()
                .expect("flash backward plans load the kernels")
                .backward(
                    self.flash.as_ref().expect("flash plans load the kernel"),
                    &flash_grad_args(flash, grad, ptr),
                ),
            PlanStep::Copy { src, dst } => dev.dtod(ptr(dst), ptr(src), src.bytes()),
            PlanStep::Zero { dst } => dev.memset(ptr(dst), 0, dst.bytes()),
        }
    }
}

fn gemm_args(g: &GemmStep, ptr: &dyn Fn(&BufRef) -> DevPtr) -> GemmArgs {
    GemmArgs {
        m: g.m,
        n: g.n,
        k: g.k,
        transpose_a: g.transpose_a,
        transpose_b: g.transpose_b,
        a: ptr(&g.a.0).offset(g.a.1),
        b: ptr(&g.b.0).offset(g.b.1),
        d: ptr(&g.d).offset(g.d_offset),
        ld_a: g.ld_a,
        ld_b: g.ld_b,
        ld_d: g.ld_d,
        batch: g.batch,
        stride_a: g.stride_a,
        stride_b: g.stride_b,
        stride_d: g.m * g.ld_d,
        epilogue: {
            let bias = || {
                let (b, off) = g.bias.expect("bias epilogues carry a bias");
                ptr(&b).offset(off)
            };
            match g.epilogue {
                GemmEpilogue::None => Epilogue::None,
                GemmEpilogue::Bias => Epilogue::Bias(bias()),
                GemmEpilogue::Gelu => Epilogue::Gelu,
                GemmEpilogue::GeluBias => Epilogue::GeluBias(bias()),
            }
        },
        accumulate: false,
        dtype: g.dtype,
    }
}

fn flash_args(f: &FlashStep, ptr: &dyn Fn(&BufRef) -> DevPtr) -> AttentionArgs {
    let ts = |s: [usize; 3]| TensorStrides {
        batch: s[0],
        seq: s[1],
        head: s[2],
    };
    AttentionArgs {
        batch: f.batch,
        seq_q: f.seq_q,
        seq_k: f.seq_k,
        heads: f.heads,
        head_dim: f.head_dim,
        scale: f.scale,
        q: ptr(&f.q.0).offset(f.q.1),
        k: ptr(&f.k.0).offset(f.k.1),
        v: ptr(&f.v.0).offset(f.v.1),
        q_strides: ts(f.q_strides),
        k_strides: ts(f.k_strides),
        v_strides: ts(f.v_strides),
        mask: f.mask.map_or(DevPtr::NULL, |(b, off)| ptr(&b).offset(off)),
        mask_batch_stride: f.mask_batch_stride,
        out: ptr(&f.out),
        out_strides: TensorStrides::contiguous(f.seq_q, f.heads, f.head_dim),
        lse: ptr(&f.lse),
    }
}

fn flash_grad_args(
    f: &FlashStep,
    g: &FlashGradStep,
    ptr: &dyn Fn(&BufRef) -> DevPtr,
) -> AttentionGradArgs {
    let rows = f.seq_q + 2 * f.seq_k;
    let out = ptr(&g.out);
    // Element offset of row `s` of the packed [B, Sq + 2 Sk, H, D] output, in bytes.
    let at = |s: usize| out.offset(s * f.heads * f.head_dim * 2);
    AttentionGradArgs {
        forward: flash_args(f, ptr),
        dout: ptr(&g.dout.0).offset(g.dout.1),
        dout_strides: TensorStrides {
            batch: g.dout_strides[0],
            seq: g.dout_strides[1],
            head: g.dout_strides[2],
        },
        delta: ptr(&g.delta),
        dq: at(0),
        dk: at(f.seq_q),
        dv: at(f.seq_q + f.seq_k),
        grad_strides: TensorStrides::contiguous(rows, f.heads, f.head_dim),
    }
}

/// A host tensor's elements as the bytes of `dtype` storage.
fn host_to_storage(data: &TensorData, dtype: DType) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    let pd = match data {
        TensorData::F32(v) => crate::ParamData::F32(v),
        TensorData::I32(v) => crate::ParamData::I32(v),
        TensorData::I64(v) => crate::ParamData::I64(v),
        TensorData::Bool(v) => crate::ParamData::Bool(v),
    };
    to_storage_bytes(&pd, dtype)
}

/// Device bytes of `storage` dtype as host data (f32 for every float dtype).
pub(crate) fn storage_to_host(bytes: &[u8], storage: DType) -> TensorData {
    match storage {
        DType::BF16 => {
            TensorData::F32(par_decode(bytes, |b| half::bf16::from_le_bytes(b).to_f32()))
        }
        DType::F16 => TensorData::F32(par_decode(bytes, |b| half::f16::from_le_bytes(b).to_f32())),
        DType::F32 => TensorData::F32(par_decode(bytes, f32::from_le_bytes)),
        DType::I32 => TensorData::I32(par_decode(bytes, i32::from_le_bytes)),
        DType::I64 => TensorData::I64(par_decode(bytes, i64::from_le_bytes)),
        DType::Bool => TensorData::Bool(par_decode(bytes, |b: [u8; 1]| b[0] != 0)),
    }
}

impl Executable for CudaExecutable {
    fn run(
        &self,
        inputs: &HashMap<String, Tensor>,
        params: &dyn ParamStore,
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        self.run_inner(inputs, params, None, &[])
    }

    fn run_into(
        &self,
        inputs: &HashMap<String, Tensor>,
        params: &dyn ParamStore,
        sink: &mut ParamSet,
        writes: &[ParamWrite],
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let (targets, written) = self.device_writes(sink, writes)?;
        let out = self.run_inner(inputs, params, None, &targets)?;
        for i in written {
            sink.mark_written(i);
        }
        Ok(out)
    }

    fn run_in_place(
        &self,
        inputs: &HashMap<String, Tensor>,
        set: &mut ParamSet,
        writes: &[ParamWrite],
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let (targets, written) = self.device_writes(set, writes)?;
        let out = self.run_inner(inputs, &*set, None, &targets)?;
        for i in written {
            set.mark_written(i);
        }
        Ok(out)
    }

    fn stats(&self) -> PlanStats {
        self.plan.stats.clone()
    }

    fn params(&self) -> Vec<(String, TensorType)> {
        crate::bind::param_specs(&self.plan.params)
    }

    fn run_profiled(
        &self,
        inputs: &HashMap<String, Tensor>,
        params: &dyn ParamStore,
    ) -> Result<(HashMap<String, Tensor>, crate::Profile), RuntimeError> {
        let (out, times) = self.run_timed(inputs, params)?;
        let steps = times
            .into_iter()
            .zip(&self.plan.steps)
            .map(|((label, ms), step)| {
                let label = match step {
                    PlanStep::Kernel { label: group, .. } => crate::profile::with_group(
                        label,
                        group,
                        &self.plan.fusion,
                        &self.plan.graph,
                    ),
                    _ => label,
                };
                (label, ms as f64 * 1e-3)
            })
            .collect();
        Ok((out, crate::Profile { steps }))
    }
}
