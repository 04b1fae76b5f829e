//! AdamW (torch.optim.AdamW, decoupled weight decay) over every trainable value at once: the
//! trainable tensors live in one flat f32 vector, and the update is one elementwise IR graph that
//! the backend compiles (and fusion turns into one kernel), so every backend runs the same update.

use crate::ModelError;
use qie_ir::{BinaryOp, DType, Graph, NodeId, Op, TensorType, UnaryOp};
use qie_runtime::{Backend, CompileOptions, Executable, NoParams, StorageMode, Tensor};
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

/// Names of the update graph's inputs and outputs.
const PARAM: &str = "param";
const GRAD: &str = "grad";
const EXP_AVG: &str = "exp_avg";
const EXP_AVG_SQ: &str = "exp_avg_sq";
const COEF: &str = "coef";
/// Scalars per step, in `coef` order.
const COEFS: usize = 7;

/// The update for `n` values. `coef` = [1 - lr wd, grad scale, 1 - beta1, beta2, 1 - beta2,
/// lr / (1 - beta1^t), 1 / sqrt(1 - beta2^t)] and the graph also reads `eps` as a constant:
/// torch's single-tensor AdamW, in its order of operations.
pub fn update_graph(n: usize, eps: f64) -> Result<Graph, qie_ir::TypeError> {
    let mut g = Graph::new();
    let vec_ty = TensorType::new(DType::F32, &[n]);
    let param = g.input(PARAM, vec_ty.clone());
    let grad = g.input(GRAD, vec_ty.clone());
    let m = g.input(EXP_AVG, vec_ty.clone());
    let v = g.input(EXP_AVG_SQ, vec_ty);
    let coef = g.input(COEF, TensorType::new(DType::F32, &[COEFS]));
    let scalar = |g: &mut Graph, i: usize| -> Result<NodeId, qie_ir::TypeError> {
        let s = g.add(
            Op::Slice {
                axis: 0,
                start: i,
                end: i + 1,
            },
            &[coef],
        )?;
        g.add(
            Op::Broadcast {
                shape: [n].as_slice().into(),
            },
            &[s],
        )
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
    let eps = g.add(
        Op::Broadcast {
            shape: [n].as_slice().into(),
        },
        &[eps],
    )?;
    let denom = bin(&mut g, BinaryOp::Add, denom, eps)?;
    let ratio = bin(&mut g, BinaryOp::Div, m_new, denom)?;
    let delta = bin(&mut g, BinaryOp::Mul, ratio, step_size)?;
    let p_new = bin(&mut g, BinaryOp::Sub, p, delta)?;
    g.set_output(PARAM, p_new);
    g.set_output(EXP_AVG, m_new);
    g.set_output(EXP_AVG_SQ, v_new);
    Ok(g)
}

/// Optimizer state: the moments of every trainable value and the step count.
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

/// AdamW compiled for one backend and one trainable size.
pub struct AdamW {
    config: AdamWConfig,
    exe: Arc<dyn Executable>,
    n: usize,
}

impl AdamW {
    pub fn new(config: AdamWConfig, n: usize, backend: &dyn Backend) -> Result<AdamW, ModelError> {
        config.check().map_err(ModelError::new)?;
        let graph = update_graph(n, config.eps)
            .map_err(|e| ModelError::new(format!("building the AdamW update: {e}")))?;
        // Master weights and moments stay f32 on a bf16 device too.
        let options = CompileOptions {
            storage: Some(StorageMode::F32),
            ..CompileOptions::default()
        };
        let exe = backend
            .compile(&graph, &options)
            .map_err(|e| ModelError::new(format!("compiling the AdamW update: {e}")))?;
        Ok(AdamW {
            config,
            exe: Arc::from(exe),
            n,
        })
    }

    /// One step: `params` updated in place with `grads * grad_scale` at learning rate `lr`.
    pub fn step(
        &self,
        state: &mut AdamWState,
        params: &mut Vec<f32>,
        grads: Vec<f32>,
        lr: f64,
        grad_scale: f64,
    ) -> Result<(), ModelError> {
        let n = self.n;
        if params.len() != n || grads.len() != n || state.exp_avg.len() != n {
            return Err(ModelError::new(format!(
                "AdamW was built for {n} values, got {} params, {} gradients, {} moments",
                params.len(),
                grads.len(),
                state.exp_avg.len()
            )));
        }
        state.step += 1;
        let t = state.step as i32;
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
        let vector = |v: Vec<f32>| Tensor::from_f32(&[n], v).expect("length checked");
        let mut inputs = HashMap::new();
        inputs.insert(PARAM.to_string(), vector(std::mem::take(params)));
        inputs.insert(GRAD.to_string(), vector(grads));
        inputs.insert(
            EXP_AVG.to_string(),
            vector(std::mem::take(&mut state.exp_avg)),
        );
        inputs.insert(
            EXP_AVG_SQ.to_string(),
            vector(std::mem::take(&mut state.exp_avg_sq)),
        );
        inputs.insert(
            COEF.to_string(),
            Tensor::from_f32(&[COEFS], coef.to_vec()).expect("seven values"),
        );
        let mut out = self
            .exe
            .run(&inputs, &NoParams)
            .map_err(|e| ModelError::new(format!("running the AdamW update: {e}")))?;
        let mut take = |name: &str| -> Vec<f32> {
            out.remove(name)
                .map(|t| t.to_f32_vec())
                .expect("the update graph's outputs")
        };
        *params = take(PARAM);
        state.exp_avg = take(EXP_AVG);
        state.exp_avg_sq = take(EXP_AVG_SQ);
        Ok(())
    }

    /// Kernels in the compiled update (1 when fusion merged it, as intended).
    pub fn kernel_count(&self) -> usize {
        self.exe.stats().kernels
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
    fn matches_torch_adamw_and_is_one_kernel() {
        let n = 1000;
        let config = AdamWConfig::default();
        let opt = AdamW::new(config.clone(), n, &CpuBackend).unwrap();
        assert_eq!(
            opt.kernel_count(),
            1,
            "the update should fuse into one kernel"
        );
        let mut state = AdamWState::new(n);
        let mut p: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin()).collect();
        let mut rp: Vec<f64> = p.iter().map(|&x| x as f64).collect();
        let (mut rm, mut rv) = (vec![0.0; n], vec![0.0; n]);
        for t in 1..=5 {
            let g: Vec<f32> = (0..n).map(|i| ((i * t) as f32 * 0.11).cos()).collect();
            let rg: Vec<f64> = g.iter().map(|&x| x as f64 * 0.5).collect();
            opt.step(&mut state, &mut p, g, 1e-3, 0.5).unwrap();
            reference(&mut rp, &rg, &mut rm, &mut rv, t as i32, 1e-3, &config);
        }
        assert_eq!(state.step, 5);
        let err = p
            .iter()
            .zip(&rp)
            .map(|(&a, &b)| (a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-6, "max |qie - torch| = {err}");
    }

    #[test]
    fn bad_config_and_sizes_are_errors() {
        let bad = AdamWConfig {
            betas: (1.0, 0.999),
            ..AdamWConfig::default()
        };
        assert!(AdamW::new(bad, 4, &CpuBackend).is_err());
        let opt = AdamW::new(AdamWConfig::default(), 4, &CpuBackend).unwrap();
        let mut p = vec![0.0; 3];
        let err = opt
            .step(&mut AdamWState::new(4), &mut p, vec![0.0; 3], 1e-3, 1.0)
            .unwrap_err();
        assert!(err.message.contains("built for 4"), "{err}");
    }
}
