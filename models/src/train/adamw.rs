//! AdamW (torch.optim.AdamW, decoupled weight decay) over every trainable value at once: the
//! trainable tensors live in flat f32 vectors (master weights, moments, gradient) of one
//! parameter set resident on the training backend, and the update is one elementwise IR graph
//! that the backend compiles (fusion turns it into one kernel) and runs in place on that set, so
//! every backend runs the same update and on a GPU the state never leaves the device. The set
//! and every plan over it store f32, also on a bf16 device.

use crate::ModelError;
use qie_ir::{BinaryOp, DType, Graph, NodeId, Op, ReduceOp, TensorType, UnaryOp};
use qie_runtime::{
    Backend, CompileOptions, Executable, ParamData, ParamSet, ParamWrite, StorageMode, Tensor,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    #[serde(default = "default_betas")]
    pub betas: (f64, f64),
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
}

fn default_betas() -> (f64, f64) {
    (0.9, 0.999)
}
fn default_eps() -> f64 {
    1e-8
}
// DiffSynth-Studio's default (GUIDE section 5).
fn default_weight_decay() -> f64 {
    0.01
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            betas: default_betas(),
            eps: default_eps(),
            weight_decay: default_weight_decay(),
        }
    }
}

impl AdamWConfig {
    pub fn check(&self) -> Result<(), String> {
        let (b1, b2) = self.betas;
        if !(0.0..1.0).contains(&b1) || !(0.0..1.0).contains(&b2) {
            return Err(format!(
                "optimizer.betas ({b1}, {b2}) must each be in [0, 1)"
            ));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(format!("optimizer.eps {} must be > 0", self.eps));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!(
                "optimizer.weight_decay {} must be >= 0",
                self.weight_decay
            ));
        }
        Ok(())
    }
}

/// Names of the state vectors in the optimizer's parameter set (and of the update graph's
/// params and outputs).
pub const PARAM: &str = "param";
pub const GRAD: &str = "grad";
/// Where the gradients of micro-batches after the first land before they are added to `grad`.
pub const GRAD_MICRO: &str = "grad_micro";
const EXP_AVG: &str = "exp_avg";
const EXP_AVG_SQ: &str = "exp_avg_sq";
const COEF: &str = "coef";
const SQ_SUM: &str = "sq_sum";
const ABS_SUM: &str = "abs_sum";
/// Scalars per step, in `coef` order.
const COEFS: usize = 7;
/// The flat vectors are [ROWS, n_padded / ROWS], so that their sums run over many blocks.
const ROWS: usize = 1024;

/// Elements of the flat vectors for `n` trainable values: padded with zeros (which the update
/// keeps at zero) to a multiple of [`ROWS`].
pub fn padded_len(n: usize) -> usize {
    n.max(1).div_ceil(ROWS) * ROWS
}

fn matrix(padded: usize) -> TensorType {
    TensorType::new(DType::F32, &[ROWS, padded / ROWS])
}

/// `sum(f(x))` over a [ROWS, C] value, in two reductions.
fn total(g: &mut Graph, x: NodeId) -> Result<NodeId, qie_ir::TypeError> {
    let rows = g.add(
        Op::Reduce {
            op: ReduceOp::Sum,
            axes: qie_ir::shape(&[1]),
        },
        &[x],
    )?;
    g.add(
        Op::Reduce {
            op: ReduceOp::Sum,
            axes: qie_ir::shape(&[0]),
        },
        &[rows],
    )
}

/// The update of the `padded` flat values. `coef` = [1 - lr wd, grad scale, 1 - beta1, beta2,
/// 1 - beta2, lr / (1 - beta1^t), 1 / sqrt(1 - beta2^t)] and the graph also reads `eps` as a
/// constant: torch's single-tensor AdamW, in its order of operations. `abs_sum` (the sum of
/// |new param|) is finite exactly when every new value is.
pub fn update_graph(padded: usize, eps: f64) -> Result<Graph, qie_ir::TypeError> {
    let mut g = Graph::new();
    let ty = matrix(padded);
    let shape = ty.shape.clone();
    let param = g.param(PARAM, ty.clone());
    let grad = g.param(GRAD, ty.clone());
    let m = g.param(EXP_AVG, ty.clone());
    let v = g.param(EXP_AVG_SQ, ty);
    let coef = g.input(COEF, TensorType::new(DType::F32, &[COEFS]));
    let spread = |g: &mut Graph, x: NodeId| -> Result<NodeId, qie_ir::TypeError> {
        let x = g.add(
            Op::Reshape {
                shape: qie_ir::shape(&[1, 1]),
            },
            &[x],
        )?;
        g.add(
            Op::Broadcast {
                shape: shape.clone(),
            },
            &[x],
        )
    };
    let scalar = |g: &mut Graph, i: usize| -> Result<NodeId, qie_ir::TypeError> {
        let s = g.add(
            Op::Slice {
                axis: 0,
                start: i,
                end: i + 1,
            },
            &[coef],
        )?;
        spread(g, s)
    };
    let decay = scalar(&mut g, 0)?;
    let grad_scale = scalar(&mut g, 1)?;
    let one_minus_b1 = scalar(&mut g, 2)?;
    let b2 = scalar(&mut g, 3)?;
    let one_minus_b2 = scalar(&mut g, 4)?;
    let step_size = scalar(&mut g, 5)?;
    let inv_bc2_sqrt = scalar(&mut g, 6)?;
    let bin = |g: &mut Graph, op: BinaryOp, a: NodeId, b: NodeId| g.add(Op::Binary(op), &[a, b]);

    let grad = bin(&mut g, BinaryOp::Mul, grad, grad_scale)?;
    let p = bin(&mut g, BinaryOp::Mul, param, decay)?;
    // exp_avg.lerp_(grad, 1 - beta1)
    let dm = bin(&mut g, BinaryOp::Sub, grad, m)?;
    let dm = bin(&mut g, BinaryOp::Mul, dm, one_minus_b1)?;
    let m_new = bin(&mut g, BinaryOp::Add, m, dm)?;
    // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    let v_scaled = bin(&mut g, BinaryOp::Mul, v, b2)?;
    let gg = bin(&mut g, BinaryOp::Mul, grad, grad)?;
    let gg = bin(&mut g, BinaryOp::Mul, gg, one_minus_b2)?;
    let v_new = bin(&mut g, BinaryOp::Add, v_scaled, gg)?;
    // denom = sqrt(v) / sqrt(bc2) + eps; p -= step_size * m / denom
    let root = g.add(Op::Unary(UnaryOp::Sqrt), &[v_new])?;
    let denom = bin(&mut g, BinaryOp::Mul, root, inv_bc2_sqrt)?;
    let eps = g.constant(eps, DType::F32);
    let eps = spread(&mut g, eps)?;
    let denom = bin(&mut g, BinaryOp::Add, denom, eps)?;
    let ratio = bin(&mut g, BinaryOp::Div, m_new, denom)?;
    let delta = bin(&mut g, BinaryOp::Mul, ratio, step_size)?;
    let p_new = bin(&mut g, BinaryOp::Sub, p, delta)?;
    let magnitude = g.add(Op::Unary(UnaryOp::Abs), &[p_new])?;
    let abs_sum = total(&mut g, magnitude)?;
    g.set_output(PARAM, p_new);
    g.set_output(EXP_AVG, m_new);
    g.set_output(EXP_AVG_SQ, v_new);
    g.set_output(ABS_SUM, abs_sum);
    Ok(g)
}

/// `sq_sum = sum(grad^2)`: the squared global gradient norm, before the update.
fn norm_graph(padded: usize) -> Result<Graph, qie_ir::TypeError> {
    let mut g = Graph::new();
    let grad = g.param(GRAD, matrix(padded));
    let sq = g.add(Op::Binary(BinaryOp::Mul), &[grad, grad])?;
    let s = total(&mut g, sq)?;
    g.set_output(SQ_SUM, s);
    Ok(g)
}

/// `grad += grad_micro` (gradient accumulation over micro-batches).
fn accumulate_graph(padded: usize) -> Result<Graph, qie_ir::TypeError> {
    let mut g = Graph::new();
    let grad = g.param(GRAD, matrix(padded));
    let micro = g.param(GRAD_MICRO, matrix(padded));
    let sum = g.add(Op::Binary(BinaryOp::Add), &[grad, micro])?;
    g.set_output(GRAD, sum);
    Ok(g)
}

/// Optimizer state on the host: the moments of every trainable value and the step count (what
/// a checkpoint holds).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWState {
    pub step: u64,
    pub exp_avg: Vec<f32>,
    pub exp_avg_sq: Vec<f32>,
}

impl AdamWState {
    pub fn new(n: usize) -> AdamWState {
        AdamWState {
            step: 0,
            exp_avg: vec![0.0; n],
            exp_avg_sq: vec![0.0; n],
        }
    }
}

/// AdamW over `n` values with its state resident on one backend.
pub struct AdamW {
    config: AdamWConfig,
    n: usize,
    padded: usize,
    update: Arc<dyn Executable>,
    norm: Arc<dyn Executable>,
    accumulate: Option<Arc<dyn Executable>>,
    set: ParamSet,
    step: u64,
}

/// The outputs of [`update_graph`] written back into the params of the same names.
pub const UPDATED: [&str; 3] = [PARAM, EXP_AVG, EXP_AVG_SQ];

/// How the optimizer's plans compile: f32 storage (master weights and moments stay f32 on a
/// bf16 device too), and `updates` written back into the params of the same names.
pub fn compile_options(updates: &[&str]) -> CompileOptions {
    CompileOptions {
        storage: Some(StorageMode::F32),
        param_outputs: updates
            .iter()
            .map(|n| (n.to_string(), n.to_string()))
            .collect(),
        ..CompileOptions::default()
    }
}

/// Compiles an optimizer plan whose outputs `updates` are written back into the params of the
/// same names (on a GPU, computed in place: no second copy of the state).
fn compile(
    backend: &dyn Backend,
    what: &str,
    graph: Result<Graph, qie_ir::TypeError>,
    updates: &[&str],
) -> Result<Arc<dyn Executable>, ModelError> {
    let graph = graph.map_err(|e| ModelError::new(format!("building the {what}: {e}")))?;
    let options = compile_options(updates);
    backend
        .compile(&graph, &options)
        .map(Arc::from)
        .map_err(|e| ModelError::new(format!("compiling the {what}: {e}")))
}

fn run_err(what: &str) -> impl Fn(qie_runtime::RuntimeError) -> ModelError + '_ {
    move |e| ModelError::new(format!("running the {what}: {e}"))
}

impl AdamW {
    /// Master weights `initial` (moments and gradient zero), resident on `backend`; with
    /// `accumulates`, room for micro-batch gradients ([`GRAD_MICRO`], [`AdamW::accumulate`]).
    pub fn new(
        config: AdamWConfig,
        initial: &[f32],
        accumulates: bool,
        backend: &dyn Backend,
    ) -> Result<AdamW, ModelError> {
        config.check().map_err(ModelError::new)?;
        let n = initial.len();
        let padded = padded_len(n);
        let update = compile(
            backend,
            "AdamW update",
            update_graph(padded, config.eps),
            &UPDATED,
        )?;
        let norm = compile(backend, "gradient norm", norm_graph(padded), &[])?;
        let accumulate = if accumulates {
            Some(compile(
                backend,
                "gradient accumulation",
                accumulate_graph(padded),
                &[GRAD],
            )?)
        } else {
            None
        };
        let mut master = initial.to_vec();
        master.resize(padded, 0.0);
        let zeros = vec![0.0f32; padded];
        let mut host: HashMap<String, &[f32]> = HashMap::new();
        host.insert(PARAM.into(), &master);
        for name in [GRAD, EXP_AVG, EXP_AVG_SQ] {
            host.insert(name.into(), &zeros);
        }
        if accumulates {
            host.insert(GRAD_MICRO.into(), &zeros);
        }
        let specs: Vec<(String, TensorType)> = host
            .keys()
            .map(|k| (k.clone(), TensorType::new(DType::F32, &[padded])))
            .collect();
        let store: HashMap<String, Vec<f32>> =
            host.into_iter().map(|(k, v)| (k, v.to_vec())).collect();
        let set = backend
            .upload_params_stored(&specs, &store, StorageMode::F32)
            .map_err(|e| ModelError::new(format!("placing the optimizer state: {e}")))?;
        Ok(AdamW {
            config,
            n,
            padded,
            update,
            norm,
            accumulate,
            set,
            step: 0,
        })
    }

    /// Number of trainable values.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The resident state: gradients are written into its [`GRAD`] (or [`GRAD_MICRO`]) entry,
    /// the master weights read from its [`PARAM`] entry.
    pub fn set(&self) -> &ParamSet {
        &self.set
    }

    pub fn set_mut(&mut self) -> &mut ParamSet {
        &mut self.set
    }

    /// Overwrites the gradient from the host (for tests and host-side callers).
    pub fn set_grad(&mut self, grad: &[f32]) -> Result<(), ModelError> {
        self.write(GRAD, grad)
    }

    /// `grad += grad_micro`.
    pub fn accumulate(&mut self) -> Result<(), ModelError> {
        let Some(plan) = &self.accumulate else {
            return Err(ModelError::new(
                "this AdamW was built without gradient accumulation",
            ));
        };
        plan.run_in_place(&HashMap::new(), &mut self.set, &[write(GRAD)])
            .map_err(run_err("gradient accumulation"))?;
        Ok(())
    }

    /// `sum(grad^2)` over every trainable value.
    pub fn grad_sq_sum(&self) -> Result<f64, ModelError> {
        let out = self
            .norm
            .run(&HashMap::new(), &self.set)
            .map_err(run_err("gradient norm"))?;
        Ok(out[SQ_SUM].to_f32_vec()[0] as f64)
    }

    /// One step at learning rate `lr` with the gradient scaled by `grad_scale`; the master
    /// weights, moments and step count are updated in place. Returns whether every new master
    /// value is finite.
    pub fn step(&mut self, lr: f64, grad_scale: f64) -> Result<bool, ModelError> {
        let t = (self.step + 1) as i32;
        let (b1, b2) = self.config.betas;
        let coef = [
            1.0 - lr * self.config.weight_decay,
            grad_scale,
            1.0 - b1,
            b2,
            1.0 - b2,
            lr / (1.0 - b1.powi(t)),
            1.0 / (1.0 - b2.powi(t)).sqrt(),
        ]
        .map(|c| c as f32);
        let inputs = HashMap::from([(
            COEF.to_string(),
            Tensor::from_f32(&[COEFS], coef.to_vec()).expect("seven values"),
        )]);
        let out = self
            .update
            .run_in_place(
                &inputs,
                &mut self.set,
                &[write(PARAM), write(EXP_AVG), write(EXP_AVG_SQ)],
            )
            .map_err(run_err("AdamW update"))?;
        self.step += 1;
        Ok(out[ABS_SUM].to_f32_vec()[0].is_finite())
    }

    /// The first `n` values of state vector `name` ([`PARAM`], [`GRAD`], ...) on the host.
    pub fn read(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let mut v = self
            .set
            .read(name)
            .map_err(|e| ModelError::new(format!("reading the optimizer's {name}: {e}")))?
            .to_f32_vec();
        v.truncate(self.n);
        Ok(v)
    }

    /// The master weights on the host.
    pub fn master(&self) -> Result<Vec<f32>, ModelError> {
        self.read(PARAM)
    }

    /// The moments and step count on the host (for checkpoints).
    pub fn state(&self) -> Result<AdamWState, ModelError> {
        Ok(AdamWState {
            step: self.step,
            exp_avg: self.read(EXP_AVG)?,
            exp_avg_sq: self.read(EXP_AVG_SQ)?,
        })
    }

    /// Replaces the master weights and moments (a resumed checkpoint).
    pub fn load(&mut self, master: &[f32], state: &AdamWState) -> Result<(), ModelError> {
        for (name, v) in [
            (PARAM, master),
            (EXP_AVG, &state.exp_avg[..]),
            (EXP_AVG_SQ, &state.exp_avg_sq[..]),
        ] {
            self.write(name, v)?;
        }
        self.step = state.step;
        Ok(())
    }

    fn write(&mut self, name: &str, values: &[f32]) -> Result<(), ModelError> {
        if values.len() != self.n {
            return Err(ModelError::new(format!(
                "AdamW was built for {} values, got {} for its {name}",
                self.n,
                values.len()
            )));
        }
        let mut padded = values.to_vec();
        padded.resize(self.padded, 0.0);
        self.set
            .update(name, ParamData::F32(&padded))
            .map_err(|e| ModelError::new(format!("writing the optimizer's {name}: {e}")))
    }

    /// Kernels in the compiled update (1 for the elementwise part when fusion merged it, plus
    /// the two reductions of `abs_sum`).
    pub fn kernel_count(&self) -> usize {
        self.update.stats().kernels
    }
}

fn write(name: &str) -> ParamWrite {
    ParamWrite {
        output: name.to_string(),
        param: name.to_string(),
        offset: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qie_runtime::cpu::CpuBackend;

    /// torch.optim.AdamW's single-tensor update, in f64.
    fn reference(
        p: &mut [f64],
        g: &[f64],
        m: &mut [f64],
        v: &mut [f64],
        t: i32,
        lr: f64,
        c: &AdamWConfig,
    ) {
        let (b1, b2) = c.betas;
        for i in 0..p.len() {
            p[i] *= 1.0 - lr * c.weight_decay;
            m[i] += (g[i] - m[i]) * (1.0 - b1);
            v[i] = v[i] * b2 + g[i] * g[i] * (1.0 - b2);
            let denom = v[i].sqrt() / (1.0 - b2.powi(t)).sqrt() + c.eps;
            p[i] -= lr / (1.0 - b1.powi(t)) * m[i] / denom;
        }
    }

    #[test]
    fn matches_torch_adamw_with_few_kernels() {
        let n = 1000;
        let config = AdamWConfig::default();
        let p: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin()).collect();
        let mut opt = AdamW::new(config.clone(), &p, false, &CpuBackend).unwrap();
        assert!(
            opt.kernel_count() <= 3,
            "the update should fuse into one kernel and the two sums: {}",
            opt.kernel_count()
        );
        let mut rp: Vec<f64> = p.iter().map(|&x| x as f64).collect();
        let (mut rm, mut rv) = (vec![0.0; n], vec![0.0; n]);
        for t in 1..=5 {
            let g: Vec<f32> = (0..n).map(|i| ((i * t) as f32 * 0.11).cos()).collect();
            let rg: Vec<f64> = g.iter().map(|&x| x as f64 * 0.5).collect();
            opt.set_grad(&g).unwrap();
            let sq: f64 = g.iter().map(|&x| x as f64 * x as f64).sum();
            let got = opt.grad_sq_sum().unwrap();
            assert!((got - sq).abs() <= 1e-5 * sq, "{got} vs {sq}");
            assert!(opt.step(1e-3, 0.5).unwrap());
            reference(&mut rp, &rg, &mut rm, &mut rv, t as i32, 1e-3, &config);
        }
        assert_eq!(opt.steps(), 5);
        let got = opt.master().unwrap();
        let err = got
            .iter()
            .zip(&rp)
            .map(|(&a, &b)| (a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-6, "max |qie - torch| = {err}");
        // A checkpoint round trip continues the same run.
        let state = opt.state().unwrap();
        let mut again = AdamW::new(config, &got, false, &CpuBackend).unwrap();
        again.load(&got, &state).unwrap();
        assert_eq!(again.state().unwrap(), state);
    }

    #[test]
    fn accumulation_adds_micro_batches() {
        let mut opt = AdamW::new(AdamWConfig::default(), &[0.0; 5], true, &CpuBackend).unwrap();
        opt.set_grad(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        let micro = [0.5f32; 5];
        let mut padded = micro.to_vec();
        padded.resize(padded_len(5), 0.0);
        opt.set_mut()
            .update(GRAD_MICRO, ParamData::F32(&padded))
            .unwrap();
        opt.accumulate().unwrap();
        assert_eq!(opt.read(GRAD).unwrap(), vec![1.5, 2.5, 3.5, 4.5, 5.5]);
    }

    #[test]
    fn a_non_finite_update_is_reported() {
        let mut opt = AdamW::new(AdamWConfig::default(), &[1.0; 3], false, &CpuBackend).unwrap();
        opt.set_grad(&[1.0, f32::NAN, 0.0]).unwrap();
        assert!(opt.grad_sq_sum().unwrap().is_nan());
        assert!(!opt.step(1e-3, 1.0).unwrap());
    }

    #[test]
    fn bad_config_and_sizes_are_errors() {
        let bad = AdamWConfig {
            betas: (1.0, 0.999),
            ..AdamWConfig::default()
        };
        assert!(AdamW::new(bad, &[0.0; 4], false, &CpuBackend).is_err());
        let mut opt = AdamW::new(AdamWConfig::default(), &[0.0; 4], false, &CpuBackend).unwrap();
        assert!(opt.accumulate().is_err());
        let err = opt.set_grad(&[0.0; 3]).unwrap_err();
        assert!(err.message.contains("built for 4"), "{err}");
    }
}
