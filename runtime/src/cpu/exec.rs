//! The CPU executable: lowered groups bound to arena offsets (through [`crate::bind`]), run in
//! order.

use super::attention::{attention, AttentionArgs};
use super::attention_grad::{attention_grad, AttentionGradArgs};
use super::buffer::{Arena, RawBuf};
use super::conv::{conv2d, ConvArgs};
use super::interp::Interp;
use super::matmul::MatMulPlan;
use super::params::{CpuParams, CPU_BACKEND};
use crate::backend::{CompileOptions, Executable, ParamData, ParamStore, PlanStats, RuntimeError};
use crate::bind::checks::check_disjoint;
use crate::bind::validate::{check_inputs, param_data};
use crate::bind::{
    bind_plan, plan_stats, AttentionCall, Binder, BufRef, Conv2dCall, IoSlot, MatMulCall,
    ParamSlot, StepLowering, StepSite,
};
use crate::tensor::{Storage, Tensor, TensorData};
use qie_codegen::{KernelProgram, LoweredGroup, View};
use qie_ir::plan::{FusionPlan, MemoryPlan};
use qie_ir::{DType, Graph, TensorType};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A stand-in for bounds checks at bind time.
fn placeholder(r: &BufRef) -> RawBuf {
    RawBuf {
        ptr: std::ptr::null_mut(),
        len: r.elements(),
        storage: Storage::of(r.dtype()),
        writable: matches!(r, BufRef::Arena { .. }),
    }
}

#[allow(clippy::large_enum_variant)]
enum ExecStep {
    Kernel {
        interp: Box<Interp>,
        inputs: Vec<BufRef>,
        outputs: Vec<BufRef>,
    },
    MatMul {
        plan: MatMulPlan,
        a: BufRef,
        b: BufRef,
        out: BufRef,
    },
    Attention {
        q: (BufRef, View),
        k: (BufRef, View),
        v: (BufRef, View),
        mask: Option<(BufRef, View)>,
        /// Set for the backward (`out` = dq | dk | dv).
        dout: Option<(BufRef, View)>,
        out: BufRef,
        scale: f32,
    },
    Conv2d {
        x: (BufRef, View),
        w: (BufRef, View),
        out: BufRef,
        out_shape: [usize; 4],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
    },
    Copy {
        src: BufRef,
        dst: BufRef,
    },
}

/// Wall time of one step of a run ([`CpuExecutable::run_timed`]).
#[derive(Clone, Debug)]
pub struct StepTime {
    pub name: String,
    pub seconds: f64,
}

impl ExecStep {
    fn name(&self) -> String {
        match self {
            ExecStep::Kernel { interp, .. } => interp.name.clone(),
            ExecStep::MatMul { plan, .. } => format!("matmul {}", plan.describe()),
            ExecStep::Attention { q, k, dout, .. } => format!(
                "{} q{:?} k{:?}",
                if dout.is_some() {
                    "attention_grad"
                } else {
                    "attention"
                },
                q.1.shape.as_slice(),
                k.1.shape.as_slice()
            ),
            ExecStep::Conv2d { x, w, .. } => format!(
                "conv2d x{:?} w{:?}",
                x.1.shape.as_slice(),
                w.1.shape.as_slice()
            ),
            ExecStep::Copy { src, .. } => format!("copy {} elements", src.elements()),
        }
    }
}

/// A compiled plan for the CPU: reusable across runs (the arena is allocated on the first run and
/// kept). Runs are serialised by a lock on the arena.
pub struct CpuExecutable {
    graph: Graph,
    fusion: FusionPlan,
    lowered: Vec<LoweredGroup>,
    inputs: Vec<IoSlot>,
    params: Vec<ParamSlot>,
    steps: Vec<ExecStep>,
    outputs: Vec<IoSlot>,
    stats: PlanStats,
    arena_bytes: usize,
    arena: Mutex<Option<Arena>>,
    pool: Option<Arc<rayon::ThreadPool>>,
    poison: bool,
}

fn compile_err(m: impl Into<String>) -> RuntimeError {
    RuntimeError::Compile(m.into())
}

/// The CPU's half of binding: interpreter kernels, `gemm`-crate matmuls and convolutions, the
/// flash-style attention kernel.
#[derive(Default)]
struct CpuLowering {
    steps: Vec<ExecStep>,
    kernels: usize,
}

/// Library ops on the CPU read and write f32.
fn check_f32(bufs: &[BufRef], name: &str) -> Result<(), RuntimeError> {
    if bufs.iter().any(|b| b.dtype() != DType::F32) {
        return Err(RuntimeError::Unsupported(format!(
            "{name}: library ops need f32 operands on the CPU"
        )));
    }
    Ok(())
}

impl StepLowering for CpuLowering {
    fn kernel(&mut self, b: &mut Binder, p: &KernelProgram) -> Result<(), RuntimeError> {
        let (inputs, outputs, _) = b.kernel_buffers(p)?;
        let interp = Interp::new(p);
        let fake_in: Vec<RawBuf> = inputs.iter().map(placeholder).collect();
        let fake_out: Vec<RawBuf> = outputs.iter().map(placeholder).collect();
        interp
            .check_buffers(p, &fake_in, &fake_out)
            .map_err(compile_err)?;
        self.steps.push(ExecStep::Kernel {
            interp: Box::new(interp),
            inputs,
            outputs,
        });
        self.kernels += 1;
        Ok(())
    }

    fn matmul(
        &mut self,
        b: &mut Binder,
        site: &StepSite,
        call: MatMulCall,
    ) -> Result<bool, RuntimeError> {
        let name = &site.name;
        let out = b.resolve(call.out)?;
        let (ab, av) = self.operand(b, call.a, name)?;
        let (bb, bv) = self.operand(b, call.b, name)?;
        check_f32(&[ab, bb, out], name)?;
        check_disjoint(&[ab, bb], out, name)?;
        self.steps.push(ExecStep::MatMul {
            plan: MatMulPlan::new(&av, &bv, call.transpose_a, call.transpose_b),
            a: ab,
            b: bb,
            out,
        });
        Ok(false)
    }

    fn attention(
        &mut self,
        b: &mut Binder,
        site: &StepSite,
        call: AttentionCall,
    ) -> Result<(), RuntimeError> {
        let name = &site.name;
        let out = b.resolve(call.out)?;
        let q = self.operand(b, call.q, name)?;
        let k = self.operand(b, call.k, name)?;
        let v = self.operand(b, call.v, name)?;
        let mask = match call.mask {
            Some(m) => Some(self.operand(b, m, name)?),
            None => None,
        };
        let dout = match call.dout {
            Some(g) => Some(self.operand(b, g, name)?),
            None => None,
        };
        check_f32(&[q.0, k.0, v.0, out], name)?;
        let mut ops = vec![q.0, k.0, v.0];
        if let Some(g) = &dout {
            check_f32(&[g.0], name)?;
            ops.push(g.0);
        }
        ops.extend(mask.as_ref().map(|m| m.0));
        check_disjoint(&ops, out, name)?;
        self.steps.push(ExecStep::Attention {
            q,
            k,
            v,
            mask,
            dout,
            out,
            scale: call.scale as f32,
        });
        Ok(())
    }

    fn conv2d(
        &mut self,
        b: &mut Binder,
        site: &StepSite,
        call: Conv2dCall,
    ) -> Result<(), RuntimeError> {
        let name = &site.name;
        let out = b.resolve(call.out)?;
        let x = self.operand(b, call.x, name)?;
        let w = self.operand(b, call.w, name)?;
        check_f32(&[x.0, w.0, out], name)?;
        check_disjoint(&[x.0, w.0], out, name)?;
        let s = &call.out.ty.shape;
        self.steps.push(ExecStep::Conv2d {
            x,
            w,
            out,
            out_shape: [s[0], s[1], s[2], s[3]],
            stride: call.stride,
            padding: call.padding,
            dilation: call.dilation,
            groups: call.groups,
        });
        Ok(())
    }

    fn copy(&mut self, src: BufRef, dst: BufRef) {
        self.steps.push(ExecStep::Copy { src, dst });
    }
}

impl CpuExecutable {
    /// Binds a fusion plan and a memory plan of `graph`. Float values must be f32 (see
    /// [`super::compile`], which promotes bf16/f16 graphs).
    pub fn new(
        graph: Graph,
        fusion: FusionPlan,
        memory: MemoryPlan,
        options: &CompileOptions,
    ) -> Result<CpuExecutable, RuntimeError> {
        if let Some(n) = graph
            .nodes
            .iter()
            .find(|n| matches!(n.ty.dtype, DType::BF16 | DType::F16))
        {
            return Err(RuntimeError::Unsupported(format!(
                "the CPU plan needs f32 values, found {} ({}); use cpu::compile, which promotes",
                n.ty,
                n.op.mnemonic()
            )));
        }
        let lowered = qie_codegen::lower_plan_with_memory(&graph, &fusion, &memory)
            .map_err(|e| compile_err(e.to_string()))?;
        let bound = bind_plan(&graph, &graph, &memory, &lowered, CpuLowering::default())?;
        let stats = plan_stats(
            &fusion,
            &memory,
            bound.scratch_bytes,
            bound.lowering.kernels,
        );
        let (inputs, outputs, params) = (bound.inputs, bound.outputs, bound.params);
        let (steps, arena_bytes) = (bound.lowering.steps, bound.arena_bytes);
        let pool = match options.threads {
            Some(n) => Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .map_err(|e| compile_err(format!("thread pool: {e}")))?,
            )),
            None => None,
        };
        Ok(CpuExecutable {
            graph,
            fusion,
            lowered,
            inputs,
            params,
            steps,
            outputs,
            stats,
            arena_bytes,
            arena: Mutex::new(None),
            pool,
            poison: options.poison,
        })
    }

    /// The graph the plan executes (after promotion and optimisation).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn fusion(&self) -> &FusionPlan {
        &self.fusion
    }

    /// The lowered groups (kernel programs and library calls), for dumps and tests.
    pub fn lowered(&self) -> &[LoweredGroup] {
        &self.lowered
    }

    pub fn arena_bytes(&self) -> usize {
        self.stats.arena_bytes
    }

    pub fn stats(&self) -> PlanStats {
        self.stats.clone()
    }

    /// Names and types of the weights the plan reads.
    pub fn param_names(&self) -> Vec<(&str, &TensorType)> {
        self.params
            .iter()
            .map(|p| (p.name.as_str(), &p.ty))
            .collect()
    }

    /// Runs the plan (see [`Executable::run`]).
    pub fn run(
        &self,
        inputs: &HashMap<String, Tensor>,
        params: &dyn ParamStore,
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        match &self.pool {
            Some(p) => p.install(|| self.run_inner(inputs, params, None)),
            None => self.run_inner(inputs, params, None),
        }
    }

    /// Runs the plan and reports the wall time of every step (plus copying inputs in and
    /// outputs out), in execution order.
    pub fn run_timed(
        &self,
        inputs: &HashMap<String, Tensor>,
        params: &dyn ParamStore,
    ) -> Result<(HashMap<String, Tensor>, Vec<StepTime>), RuntimeError> {
        let mut times = vec![];
        let out = match &self.pool {
            Some(p) => p.install(|| self.run_inner(inputs, params, Some(&mut times))),
            None => self.run_inner(inputs, params, Some(&mut times)),
        }?;
        Ok((out, times))
    }

    /// A buffer per weight of the plan: into a resident CPU parameter set, or into the host
    /// store (bf16 / f16 weights widened to f32 into `widened` for this run: the kernels read
    /// f32, and the heap buffers stay put while the returned buffers point into them).
    fn param_buffers(
        &self,
        store: &dyn ParamStore,
        widened: &mut Vec<Vec<f32>>,
    ) -> Result<Vec<RawBuf>, RuntimeError> {
        let raw = |ptr: *const u8, len: usize, storage: Storage| RawBuf {
            ptr: ptr as *mut u8,
            len,
            storage,
            writable: false,
        };
        if let Some(set) = store.resident() {
            set.check_owner(CPU_BACKEND, "cpu")?;
            let held = set
                .buffers::<CpuParams>()
                .expect("CPU parameter sets hold CpuParams");
            return self
                .params
                .iter()
                .map(|p| {
                    let d = &held.data[set.bind(&p.name, &p.ty)?];
                    Ok(raw(d.as_bytes().as_ptr(), d.len(), d.storage()))
                })
                .collect();
        }
        let data = param_data(self.params.iter().map(|p| (p.name.as_str(), &p.ty)), store)?;
        Ok(data
            .iter()
            .map(|d| {
                let ptr = match d {
                    ParamData::BF16(_) | ParamData::F16(_) => {
                        widened.push(d.to_f32().expect("float data").into_owned());
                        widened.last().expect("pushed").as_ptr() as *const u8
                    }
                    _ => d.as_ptr(),
                };
                raw(ptr, d.len(), d.storage())
            })
            .collect())
    }

    fn run_inner(
        &self,
        inputs: &HashMap<String, Tensor>,
        store: &dyn ParamStore,
        mut times: Option<&mut Vec<StepTime>>,
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let mut clock = std::time::Instant::now();
        let mut lap = |name: &dyn Fn() -> String, times: &mut Option<&mut Vec<StepTime>>| {
            if let Some(t) = times.as_deref_mut() {
                let now = std::time::Instant::now();
                t.push(StepTime {
                    name: name(),
                    seconds: (now - clock).as_secs_f64(),
                });
                clock = now;
            }
        };
        // Validate everything before touching the arena.
        check_inputs(&self.inputs, inputs)?;
        let mut widened = Vec::new();
        let param_bufs = self.param_buffers(store, &mut widened)?;
        let mut guard = self.arena.lock().unwrap_or_else(|e| e.into_inner());
        let total = self.arena_bytes;
        if guard.as_ref().map(|a| a.len() < total).unwrap_or(true) {
            *guard = Some(Arena::new(total));
        }
        let arena = guard.as_mut().expect("allocated");
        let base = arena.base();
        if self.poison {
            // SAFETY: the arena is ours while the lock is held.
            unsafe { std::ptr::write_bytes(base, 0xFF, arena.len()) };
        }
        let raw = |r: &BufRef| -> RawBuf {
            match *r {
                BufRef::Arena { offset, .. } => RawBuf {
                    // SAFETY: offsets were checked to lie inside the arena at compile time.
                    ptr: unsafe { base.add(offset) },
                    len: r.elements(),
                    storage: Storage::of(r.dtype()),
                    writable: true,
                },
                BufRef::Param { index, .. } => param_bufs[index],
            }
        };
        for i in &self.inputs {
            let t = &inputs[&i.name];
            let dst = raw(&i.buf);
            let bytes = t.data().as_bytes();
            // SAFETY: the slot holds exactly the input's bytes.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.ptr, bytes.len()) };
        }
        lap(&|| "copy inputs".into(), &mut times);
        for step in &self.steps {
            // SAFETY: every buffer was resolved and bounds-checked when the plan was built; the
            // arena is exclusively ours while the lock is held.
            unsafe { exec_step(step, &raw) }?;
            lap(&|| step.name(), &mut times);
        }
        let mut out = HashMap::new();
        for o in &self.outputs {
            let src = raw(&o.buf);
            // SAFETY: the buffer holds `len` elements of its storage type.
            let data = unsafe { read_data(src) };
            let t = Tensor::new(o.ty.clone(), data)
                .map_err(|e| RuntimeError::Execution(e.to_string()))?;
            out.insert(o.name.clone(), t);
        }
        lap(&|| "copy outputs".into(), &mut times);
        Ok(out)
    }
}

unsafe fn read_data(b: RawBuf) -> TensorData {
    match b.storage {
        Storage::F32 => {
            TensorData::F32(std::slice::from_raw_parts(b.ptr as *const f32, b.len).to_vec())
        }
        Storage::I32 => {
            TensorData::I32(std::slice::from_raw_parts(b.ptr as *const i32, b.len).to_vec())
        }
        Storage::I64 => {
            TensorData::I64(std::slice::from_raw_parts(b.ptr as *const i64, b.len).to_vec())
        }
        Storage::Bool => TensorData::Bool(
            std::slice::from_raw_parts(b.ptr as *const u8, b.len)
                .iter()
                .map(|&x| x != 0)
                .collect(),
        ),
    }
}

unsafe fn exec_step(step: &ExecStep, raw: &dyn Fn(&BufRef) -> RawBuf) -> Result<(), RuntimeError> {
    match step {
        ExecStep::Kernel {
            interp,
            inputs,
            outputs,
        } => {
            let ins: Vec<RawBuf> = inputs.iter().map(raw).collect();
            let outs: Vec<RawBuf> = outputs.iter().map(raw).collect();
            interp
                .run(&ins, &outs)
                .map_err(|e| RuntimeError::Execution(e.to_string()))?;
        }
        ExecStep::MatMul { plan, a, b, out } => plan.run(raw(a), raw(b), raw(out)),
        ExecStep::Attention {
            q,
            k,
            v,
            mask,
            dout: None,
            out,
            scale,
        } => attention(&AttentionArgs {
            q: (raw(&q.0), &q.1),
            k: (raw(&k.0), &k.1),
            v: (raw(&v.0), &v.1),
            mask: mask.as_ref().map(|m| (raw(&m.0), &m.1)),
            out: raw(out),
            scale: *scale,
        }),
        ExecStep::Attention {
            q,
            k,
            v,
            mask,
            dout: Some(g),
            out,
            scale,
        } => attention_grad(&AttentionGradArgs {
            q: (raw(&q.0), &q.1),
            k: (raw(&k.0), &k.1),
            v: (raw(&v.0), &v.1),
            dout: (raw(&g.0), &g.1),
            mask: mask.as_ref().map(|m| (raw(&m.0), &m.1)),
            out: raw(out),
            scale: *scale,
        }),
        ExecStep::Conv2d {
            x,
            w,
            out,
            out_shape,
            stride,
            padding,
            dilation,
            groups,
        } => conv2d(&ConvArgs {
            x: (raw(&x.0), &x.1),
            w: (raw(&w.0), &w.1),
            out: raw(out),
            out_shape: *out_shape,
            stride: *stride,
            padding: *padding,
            dilation: *dilation,
            groups: *groups,
        }),
        ExecStep::Copy { src, dst } => {
            let (s, d) = (raw(src), raw(dst));
            std::ptr::copy(s.ptr, d.ptr, s.bytes());
        }
    }
    Ok(())
}

impl Executable for CpuExecutable {
    fn run(
        &self,
        inputs: &HashMap<String, Tensor>,
        params: &dyn ParamStore,
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        CpuExecutable::run(self, inputs, params)
    }

    fn stats(&self) -> PlanStats {
        self.stats.clone()
    }

    fn params(&self) -> Vec<(String, TensorType)> {
        crate::bind::param_specs(&self.params)
    }

    fn run_profiled(
        &self,
        inputs: &HashMap<String, Tensor>,
        params: &dyn ParamStore,
    ) -> Result<(HashMap<String, Tensor>, crate::Profile), RuntimeError> {
        let (out, times) = self.run_timed(inputs, params)?;
        let steps = times
            .into_iter()
            .map(|t| {
                let name = if t.name.starts_with('g') {
                    let group = t.name.clone();
                    crate::profile::with_group(t.name, &group, &self.fusion, &self.graph)
                } else {
                    t.name
                };
                (name, t.seconds)
            })
            .collect();
        Ok((out, crate::Profile { steps }))
    }
}
