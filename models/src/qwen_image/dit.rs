//! Qwen-Image DiT driver: compiles the DSL source for each input-shape specialisation, binds the
//! checkpoint's weights and runs the plan. Plans are cached per shapes, so a denoising loop
//! compiles once.

use super::inputs::DitInputs;
use super::{token_count, DitConfig, ImgShape};
use crate::{sources, HostWeights, ModelError, ModelOptions, PlanCache};
use qie_ir::dsl::{Program, StaticValue};
use qie_ir::{DType, Graph, TensorType};
use qie_runtime::weights::{CheckMode, WeightStore};
use qie_runtime::{Backend, CompileOptions, Executable, Tensor};
use std::path::Path;
use std::sync::Arc;

/// The DiT's options (see [`ModelOptions`]).
pub type DitOptions = ModelOptions;

/// The DiT's weights (see [`HostWeights`]).
pub type DitWeights = HostWeights;

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
    plans: PlanCache<PlanKey>,
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
        let weights = HostWeights::load(&store, &expected, options.precision)?;
        Ok(QwenImageDit::from_parts(config, program, weights, options))
    }

    /// Builds a DiT from weights already in memory (benchmarks, random-weight runs).
    pub fn from_weights(
        config: DitConfig,
        weights: DitWeights,
        options: &DitOptions,
    ) -> Result<QwenImageDit, ModelError> {
        let program = load_program(&config, options.source.as_deref())?;
        weights.check(&param_shapes(&program, &config)?)?;
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
            backend: options.backend_or_cpu(),
            plans: PlanCache::default(),
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
        self.plans
            .get_or_compile(&key, &*self.backend, &self.compile, "DiT", || {
                lower_for(
                    &self.program,
                    &self.config,
                    &inputs.key_types(),
                    &inputs.img_shapes,
                )
            })
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
