//! Qwen-Image DiT driver: compiles the DSL source for each input-shape specialisation, binds the
//! checkpoint's weights and runs the plan. Plans are cached per shapes, so a denoising loop
//! compiles once.

use super::inputs::DitInputs;
use super::{token_count, DitConfig, ImgShape};
use crate::{sources, ModelError};
use qie_ir::dsl::{Program, StaticValue};
use qie_ir::{DType, Graph, TensorType};
use qie_runtime::cpu::CpuBackend;
use qie_runtime::weights::{CheckMode, WeightStore};
use qie_runtime::{Backend, CompileOptions, Executable, ParamData, ParamStore, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Precision the weights are used at. The CPU computes in f32 either way; `Bf16` rounds every weight
/// to bf16 first, which is what running a bf16 checkpoint on a GPU sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightPrecision {
    #[default]
    F32,
    Bf16,
}

#[derive(Clone, Default)]
pub struct DitOptions {
    /// Where plans run; None = the CPU reference backend.
    pub backend: Option<Arc<dyn Backend>>,
    pub precision: WeightPrecision,
    /// A `.qie` file to use instead of the bundled source the config selects (variants).
    pub source: Option<PathBuf>,
    pub compile: CompileOptions,
}

/// Weights as f32 vectors by checkpoint name.
#[derive(Default)]
pub struct DitWeights {
    tensors: HashMap<String, Vec<f32>>,
}

impl DitWeights {
    pub fn insert(&mut self, name: String, values: Vec<f32>) {
        self.tensors.insert(name, values);
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

impl ParamStore for DitWeights {
    fn param(&self, name: &str) -> Option<ParamData<'_>> {
        self.tensors.get(name).map(|v| ParamData::F32(v))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    batch: usize,
    img_tokens: usize,
    txt_tokens: usize,
    with_mask: bool,
    with_additional_t_cond: bool,
    img_shapes: Vec<ImgShape>,
}

pub struct QwenImageDit {
    pub config: DitConfig,
    program: Program,
    weights: DitWeights,
    compile: CompileOptions,
    backend: Arc<dyn Backend>,
    plans: Mutex<HashMap<PlanKey, Arc<dyn Executable>>>,
}

impl QwenImageDit {
    /// Loads a diffusers `transformer/` folder (config.json + safetensors, sharded or not).
    pub fn load(dir: &Path, options: &DitOptions) -> Result<QwenImageDit, ModelError> {
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            return Err(ModelError::new(format!(
                "{}: no config.json (expected a diffusers transformer/ folder)",
                dir.display()
            )));
        }
        let config = DitConfig::load(&config_path)?;
        let program = load_program(&config, options.source.as_deref())?;
        let store = WeightStore::open(dir).map_err(|e| ModelError::new(e.to_string()))?;
        let expected = param_shapes(&program, &config)?;
        store
            .check_with(&expected, CheckMode::Strict)
            .map_err(|e| ModelError::new(e.to_string()))?;
        let mut weights = DitWeights::default();
        for (name, _) in &expected {
            let mut values = store
                .load_f32(name)
                .map_err(|e| ModelError::new(e.to_string()))?;
            if options.precision == WeightPrecision::Bf16 {
                round_to_bf16(&mut values);
            }
            weights.insert(name.clone(), values);
        }
        Ok(QwenImageDit::from_parts(config, program, weights, options))
    }

    /// Builds a DiT from weights already in memory (benchmarks, random-weight runs).
    pub fn from_weights(
        config: DitConfig,
        weights: DitWeights,
        options: &DitOptions,
    ) -> Result<QwenImageDit, ModelError> {
        let program = load_program(&config, options.source.as_deref())?;
        let expected = param_shapes(&program, &config)?;
        for (name, shape) in &expected {
            let n: usize = shape.iter().product();
            match weights.tensors.get(name) {
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
        Ok(QwenImageDit::from_parts(config, program, weights, options))
    }

    fn from_parts(
        config: DitConfig,
        program: Program,
        weights: DitWeights,
        options: &DitOptions,
    ) -> QwenImageDit {
        QwenImageDit {
            config,
            program,
            weights,
            compile: options.compile.clone(),
            backend: options
                .backend
                .clone()
                .unwrap_or_else(|| Arc::new(CpuBackend)),
            plans: Mutex::new(HashMap::new()),
        }
    }

    /// The backend's device memory (`None` on the CPU).
    pub fn device_memory(&self) -> Option<qie_runtime::MemoryReport> {
        self.backend.memory()
    }

    /// Name of the backend plans run on (`cpu`, `cuda:0`, ...).
    pub fn backend_name(&self) -> &str {
        self.backend.name()
    }

    /// Checkpoint names and shapes of every weight the model reads.
    pub fn expected_weights(&self) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
        param_shapes(&self.program, &self.config)
    }

    /// Lowers the model for these inputs (the IR before optimisation), e.g. for dumps and FLOP counts.
    pub fn lower(&self, inputs: &DitInputs) -> Result<Graph, ModelError> {
        inputs.validate(&self.config)?;
        lower_for(
            &self.program,
            &self.config,
            &inputs.key_types(),
            &inputs.img_shapes,
        )
    }

    /// Runs the transformer; returns `sample` [B, S_img, patch² · out_channels].
    pub fn forward(&self, inputs: &DitInputs) -> Result<Tensor, ModelError> {
        inputs.validate(&self.config)?;
        let exe = self.plan(inputs)?;
        let mut outputs = exe
            .run(&inputs.bindings(), &self.weights)
            .map_err(|e| ModelError::new(format!("running the DiT: {e}")))?;
        outputs
            .remove("sample")
            .ok_or_else(|| ModelError::new("the model source declared no `sample` output"))
    }

    /// Runs once with every step timed (see [`qie_runtime::Profile`]).
    pub fn profile(&self, inputs: &DitInputs) -> Result<qie_runtime::Profile, ModelError> {
        inputs.validate(&self.config)?;
        let exe = self.plan(inputs)?;
        let (_, profile) = exe
            .run_profiled(&inputs.bindings(), &self.weights)
            .map_err(|e| ModelError::new(format!("running the DiT: {e}")))?;
        Ok(profile)
    }

    fn plan(&self, inputs: &DitInputs) -> Result<Arc<dyn Executable>, ModelError> {
        let key = PlanKey {
            batch: inputs.batch(),
            img_tokens: inputs.img_tokens(),
            txt_tokens: inputs.txt_tokens(),
            with_mask: inputs.encoder_hidden_states_mask.is_some(),
            with_additional_t_cond: inputs.additional_t_cond.is_some(),
            img_shapes: inputs.img_shapes.clone(),
        };
        if let Some(exe) = self.plans.lock().expect("plan cache poisoned").get(&key) {
            return Ok(exe.clone());
        }
        let graph = lower_for(
            &self.program,
            &self.config,
            &inputs.key_types(),
            &inputs.img_shapes,
        )?;
        let exe: Arc<dyn Executable> =
            Arc::from(self.backend.compile(&graph, &self.compile).map_err(|e| {
                ModelError::new(format!(
                    "compiling the DiT for {}: {e}",
                    self.backend.name()
                ))
            })?);
        self.plans
            .lock()
            .expect("plan cache poisoned")
            .insert(key, exe.clone());
        Ok(exe)
    }
}

/// Checkpoint names and shapes the model source expects for this config (without a checkpoint).
pub fn expected_weights_for(
    config: &DitConfig,
    source: Option<&Path>,
) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
    param_shapes(&load_program(config, source)?, config)
}

/// Lowers the model for `inputs` without weights (plan inspection, memory estimates).
pub fn lower_without_weights(
    config: &DitConfig,
    source: Option<&Path>,
    inputs: &DitInputs,
) -> Result<Graph, ModelError> {
    inputs.validate(config)?;
    let program = load_program(config, source)?;
    lower_for(&program, config, &inputs.key_types(), &inputs.img_shapes)
}

fn load_program(config: &DitConfig, source: Option<&Path>) -> Result<Program, ModelError> {
    let result = match source {
        Some(path) => sources::load_program_file(path),
        None => sources::load_bundled(config.source_name()),
    };
    result.map_err(|e| ModelError::new(e.to_string()))
}

fn lower_for(
    program: &Program,
    config: &DitConfig,
    inputs: &[(String, TensorType)],
    img_shapes: &[ImgShape],
) -> Result<Graph, ModelError> {
    let statics = vec![("img_shapes".to_string(), img_shapes_value(img_shapes))];
    program
        .lower(&config.for_dsl(), inputs, &statics)
        .map_err(|e| ModelError::new(e.to_string()))
}

fn img_shapes_value(shapes: &[ImgShape]) -> StaticValue {
    StaticValue::List(
        shapes
            .iter()
            .map(|s| StaticValue::List(s.iter().map(|&d| StaticValue::Int(d as i64)).collect()))
            .collect(),
    )
}

/// Weight names and shapes, from lowering the model once at a tiny probe shape (the weights do
/// not depend on the input shapes).
fn param_shapes(
    program: &Program,
    config: &DitConfig,
) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
    let img_shapes: Vec<ImgShape> = vec![[1, 2, 2]];
    let mut inputs = vec![
        (
            "hidden_states".to_string(),
            TensorType::new(
                DType::F32,
                &[1, token_count(&img_shapes), config.in_channels],
            ),
        ),
        (
            "encoder_hidden_states".to_string(),
            TensorType::new(DType::F32, &[1, 1, config.joint_attention_dim]),
        ),
        ("timestep".to_string(), TensorType::new(DType::F32, &[1])),
    ];
    if config.use_additional_t_cond {
        inputs.push((
            "additional_t_cond".to_string(),
            TensorType::new(DType::I64, &[1]),
        ));
    }
    let graph = lower_for(program, config, &inputs, &img_shapes)?;
    Ok(graph
        .params()
        .into_iter()
        .map(|(name, id)| (name.to_string(), graph.ty(id).shape.to_vec()))
        .collect())
}

fn round_to_bf16(values: &mut [f32]) {
    for v in values {
        *v = half::bf16::from_f32(*v).to_f32();
    }
}
