//! Qwen-Image DiT driver: the generic [`DslModel`] specialised by the image grids (`img_shapes`
//! static) and the optional inputs. Plans are cached per shapes, so a denoising loop compiles once.

use super::inputs::DitInputs;
use super::{token_count, DitConfig, ImgShape};
use crate::dsl_model::{
    config_json, open_store, static_int_rows, DslModel, DslProgram, DslSource, ShapeKey,
    Specialisation,
};
use crate::{HostWeights, ModelError, ModelOptions};
use qie_ir::{DType, Graph, TensorType};
use qie_runtime::weights::CheckMode;
use qie_runtime::Tensor;
use std::path::Path;

mod train;
pub use train::{LossAndGrads, CHECKPOINT_SEGMENTS};

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

impl ShapeKey for PlanKey {}

impl PlanKey {
    fn of(inputs: &DitInputs) -> PlanKey {
        PlanKey {
            batch: inputs.batch(),
            img_tokens: inputs.img_tokens(),
            txt_tokens: inputs.txt_tokens(),
            with_mask: inputs.encoder_hidden_states_mask.is_some(),
            with_additional_t_cond: inputs.additional_t_cond.is_some(),
            img_shapes: inputs.img_shapes.clone(),
        }
    }
}

pub struct QwenImageDit {
    pub config: DitConfig,
    model: DslModel<PlanKey>,
    /// Training plans recompute each transformer block's forward values for its backward.
    gradient_checkpointing: bool,
}

impl QwenImageDit {
    /// Loads a diffusers `transformer/` folder (config.json + safetensors, sharded or not).
    pub fn load(dir: &Path, options: &DitOptions) -> Result<QwenImageDit, ModelError> {
        Self::load_with_adapter(dir, options, None)
    }

    /// [`QwenImageDit::load`] with LoRA layered on the source (`lora.qie`, settings
    /// `{"rank", "alpha", "targets"}`; see [`DslProgram::with_adapter`]). LoRA factors the
    /// checkpoint lacks are created with peft's initialisation ([`QwenImageDit::created_weights`]).
    pub fn load_with_adapter(
        dir: &Path,
        options: &DitOptions,
        adapter: Option<&serde_json::Value>,
    ) -> Result<QwenImageDit, ModelError> {
        let config = DitConfig::load(&config_json(dir, "a diffusers transformer/ folder")?)?;
        let program = dit_program(&config, options.source.as_deref(), adapter)?
            .with_init_seed(options.init_seed);
        let store = open_store(dir)?;
        let probe = probe(&config);
        let model = DslModel::load(program, &probe, &store, "", CheckMode::Strict, options)?;
        Ok(QwenImageDit {
            config,
            model,
            gradient_checkpointing: false,
        })
    }

    /// Builds a DiT from weights already in memory (benchmarks, random-weight runs).
    pub fn from_weights(
        config: DitConfig,
        weights: DitWeights,
        options: &DitOptions,
    ) -> Result<QwenImageDit, ModelError> {
        Self::from_weights_with_adapter(config, weights, options, None)
    }

    /// [`QwenImageDit::from_weights`] with LoRA layered on the source (see
    /// [`QwenImageDit::load_with_adapter`]).
    pub fn from_weights_with_adapter(
        config: DitConfig,
        weights: DitWeights,
        options: &DitOptions,
        adapter: Option<&serde_json::Value>,
    ) -> Result<QwenImageDit, ModelError> {
        let program = dit_program(&config, options.source.as_deref(), adapter)?
            .with_init_seed(options.init_seed);
        let model = DslModel::from_weights(program, &probe(&config), weights, "", options)?;
        Ok(QwenImageDit {
            config,
            model,
            gradient_checkpointing: false,
        })
    }

    /// Replaces the weight `name` (same element count) on the host and on the backend: the next
    /// forward reads it, without recompiling (LoRA factors of an adapter slot, training updates).
    pub fn update_weight(&mut self, name: &str, values: &[f32]) -> Result<(), ModelError> {
        self.model.update_weight(name, values)
    }

    /// Weights the checkpoint lacked and the source's initialisers created (e.g. LoRA factors).
    pub fn created_weights(&self) -> &[String] {
        self.model.created_weights()
    }

    /// The backend's device memory (`None` on the CPU).
    pub fn device_memory(&self) -> Option<qie_runtime::MemoryReport> {
        self.model.device_memory()
    }

    /// Name of the backend plans run on (`cpu`, `cuda:0`, ...).
    pub fn backend_name(&self) -> &str {
        self.model.backend_name()
    }

    /// Checkpoint names and shapes of every weight the model reads.
    pub fn expected_weights(&self) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
        Ok(self.model.expected_weights().to_vec())
    }

    /// Lowers the model for these inputs (the IR before optimisation), e.g. for dumps and FLOP counts.
    pub fn lower(&self, inputs: &DitInputs) -> Result<Graph, ModelError> {
        inputs.validate(&self.config)?;
        self.model.program().lower(&specialisation(inputs))
    }

    /// Runs the transformer; returns `sample` [B, S_img, patch² · out_channels].
    pub fn forward(&self, inputs: &DitInputs) -> Result<Tensor, ModelError> {
        inputs.validate(&self.config)?;
        self.model
            .forward(
                &PlanKey::of(inputs),
                &specialisation(inputs),
                &inputs.bindings(),
            )?
            .take("sample")
    }

    /// Runs once with every step timed (see [`qie_runtime::Profile`]).
    pub fn profile(&self, inputs: &DitInputs) -> Result<qie_runtime::Profile, ModelError> {
        inputs.validate(&self.config)?;
        self.model.profile(
            &PlanKey::of(inputs),
            &specialisation(inputs),
            &inputs.bindings(),
        )
    }
}

/// Checkpoint names and shapes the model source expects for this config (without a checkpoint).
pub fn expected_weights_for(
    config: &DitConfig,
    source: Option<&Path>,
) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
    dit_program(config, source, None)?.param_shapes(&probe(config))
}

/// Lowers the model for `inputs` without weights (plan inspection, memory estimates).
pub fn lower_without_weights(
    config: &DitConfig,
    source: Option<&Path>,
    inputs: &DitInputs,
) -> Result<Graph, ModelError> {
    inputs.validate(config)?;
    dit_program(config, source, None)?.lower(&specialisation(inputs))
}

fn dit_program(
    config: &DitConfig,
    source: Option<&Path>,
    adapter: Option<&serde_json::Value>,
) -> Result<DslProgram, ModelError> {
    let source = DslSource::new(config.source_name(), source);
    let program = DslProgram::load("DiT", source, config.for_dsl())?;
    match adapter {
        Some(settings) => program.with_adapter(settings.clone()),
        None => Ok(program),
    }
}

fn specialisation(inputs: &DitInputs) -> Specialisation {
    with_img_shapes(inputs.key_types(), &inputs.img_shapes)
}

fn with_img_shapes(inputs: Vec<(String, TensorType)>, img_shapes: &[ImgShape]) -> Specialisation {
    Specialisation::new(inputs).with_static("img_shapes", static_int_rows(img_shapes))
}

/// A tiny specialisation to list the weights with (they do not depend on the input shapes).
fn probe(config: &DitConfig) -> Specialisation {
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
    with_img_shapes(inputs, &img_shapes)
}
