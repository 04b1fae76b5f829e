//! One training step of the DiT: the flow-matching loss over the target image's tokens and its
//! gradients with respect to chosen weights, from one plan (forward, loss and backward compiled
//! together and cached per shapes and trainable set).

use super::{specialisation, PlanKey, QwenImageDit};
use crate::dsl_model::objective::{LOSS, LOSS_TARGET, LOSS_WEIGHT};
use crate::dsl_model::{Gradients, GraphKind, Objective};
use crate::qwen_image::inputs::DitInputs;
use crate::ModelError;
use qie_runtime::{ParamCopy, ParamSet, ParamWrite, Tensor};
use std::collections::HashMap;

pub struct LossAndGrads {
    pub loss: f32,
    /// By the weights' source names (checkpoint names for the DiT).
    pub grads: HashMap<String, Tensor>,
}

impl QwenImageDit {
    /// `loss = mean_b(weight[b] * mean((sample[b, :S_target] - target[b])^2))` and its gradient
    /// with respect to each weight of `trainable`; `target` is [B, S_target, out_channels * 4],
    /// `weight` [B].
    pub fn loss_and_grads(
        &self,
        inputs: &DitInputs,
        target: &Tensor,
        weight: &Tensor,
        trainable: &[String],
    ) -> Result<LossAndGrads, ModelError> {
        self.check_training_call(inputs, target, weight, trainable)?;
        let (kind, bindings) = self.training_call(inputs, target, weight, trainable);
        let mut out = self.model.run(
            &kind,
            &PlanKey::of(inputs),
            &specialisation(inputs),
            &bindings,
        )?;
        let loss = out.take(LOSS)?.to_f32_vec()[0];
        let mut grads = HashMap::with_capacity(trainable.len());
        for name in trainable {
            grads.insert(name.clone(), out.take(&Gradients::output_name(name))?);
        }
        Ok(LossAndGrads { loss, grads })
    }

    /// Runs the training plan of [`Self::loss_and_grads`] once with every step timed.
    pub fn profile_training(
        &self,
        inputs: &DitInputs,
        target: &Tensor,
        weight: &Tensor,
        trainable: &[String],
    ) -> Result<qie_runtime::Profile, ModelError> {
        // Same checks and plan as a training step.
        self.loss_and_grads(inputs, target, weight, trainable)?;
        let (kind, bindings) = self.training_call(inputs, target, weight, trainable);
        self.model.profile_kind(
            &kind,
            &PlanKey::of(inputs),
            &specialisation(inputs),
            &bindings,
        )
    }

    /// [`Self::loss_and_grads`] with the gradients kept on the DiT's backend: the gradient of
    /// `trainable[i]` overwrites `sink`'s parameter `places[i].0` from element `places[i].1` on
    /// (converted to its storage dtype). Returns the loss. This is how a training step reaches
    /// the optimizer's state without a host round trip.
    pub fn loss_into(
        &self,
        inputs: &DitInputs,
        target: &Tensor,
        weight: &Tensor,
        trainable: &[String],
        sink: &mut ParamSet,
        places: &[(String, usize)],
    ) -> Result<f32, ModelError> {
        self.check_training_call(inputs, target, weight, trainable)?;
        if places.len() != trainable.len() {
            return Err(ModelError::new(format!(
                "{} gradient places for {} trainable weights",
                places.len(),
                trainable.len()
            )));
        }
        let writes: Vec<ParamWrite> = trainable
            .iter()
            .zip(places)
            .map(|(name, (param, offset))| ParamWrite {
                output: Gradients::output_name(name),
                param: param.clone(),
                offset: *offset,
            })
            .collect();
        let (kind, bindings) = self.training_call(inputs, target, weight, trainable);
        let mut out = self.model.run_into(
            &kind,
            &PlanKey::of(inputs),
            &specialisation(inputs),
            &bindings,
            sink,
            &writes,
        )?;
        Ok(out.take(LOSS)?.to_f32_vec()[0])
    }

    fn check_training_call(
        &self,
        inputs: &DitInputs,
        target: &Tensor,
        weight: &Tensor,
        trainable: &[String],
    ) -> Result<(), ModelError> {
        inputs.validate(&self.config)?;
        let batch = inputs.batch();
        let channels = self.config.patch_size * self.config.patch_size * self.config.out_channels;
        let t = target.shape();
        if t.len() != 3 || t[0] != batch || t[2] != channels || t[1] == 0 {
            return Err(ModelError::new(format!(
                "loss target has shape {t:?}; expected [{batch}, S_target, {channels}]"
            )));
        }
        if t[1] > inputs.img_tokens() {
            return Err(ModelError::new(format!(
                "loss target covers {} tokens but hidden_states has only {}",
                t[1],
                inputs.img_tokens()
            )));
        }
        if weight.shape() != [batch] {
            return Err(ModelError::new(format!(
                "loss weights have shape {:?}; expected [{batch}]",
                weight.shape()
            )));
        }
        let known: std::collections::HashSet<&str> = self
            .model
            .expected_weights()
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        if let Some(missing) = trainable.iter().find(|n| !known.contains(n.as_str())) {
            return Err(ModelError::new(format!(
                "trainable weight `{missing}` is not a weight of the DiT"
            )));
        }
        Ok(())
    }

    fn training_call(
        &self,
        inputs: &DitInputs,
        target: &Tensor,
        weight: &Tensor,
        trainable: &[String],
    ) -> (GraphKind, HashMap<String, Tensor>) {
        let kind = training_kind(target.shape()[1], trainable, self.gradient_checkpointing);
        let mut bindings = inputs.bindings();
        bindings.insert(LOSS_TARGET.to_string(), target.cast(qie_ir::DType::F32));
        bindings.insert(LOSS_WEIGHT.to_string(), weight.cast(qie_ir::DType::F32));
        (kind, bindings)
    }

    /// Gradient checkpointing per transformer block for the training plans (the recompute
    /// pass: less memory, about one more forward pass of compute).
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.gradient_checkpointing = on;
    }

    /// The training graph of [`Self::loss_and_grads`] (before optimisation), e.g. to plan it
    /// for another backend.
    pub fn lower_training(
        &self,
        inputs: &DitInputs,
        target_tokens: usize,
        trainable: &[String],
    ) -> Result<qie_ir::Graph, ModelError> {
        inputs.validate(&self.config)?;
        self.model.program().lower_kind(
            &training_kind(target_tokens, trainable, self.gradient_checkpointing),
            &specialisation(inputs),
        )
    }

    /// Source names and shapes of every weight the model reads.
    pub fn model_weights(&self) -> &[(String, Vec<usize>)] {
        self.model.expected_weights()
    }

    /// Overwrites ranges of weights from `from`, another parameter set of the DiT's backend,
    /// on the device (see [`crate::dsl_model::DslModel::copy_weights_from`]).
    pub fn copy_weights_from(
        &mut self,
        from: &ParamSet,
        copies: &[ParamCopy],
    ) -> Result<(), ModelError> {
        self.model.copy_weights_from(from, copies)
    }

    /// The backend the DiT runs on.
    pub fn backend(&self) -> &std::sync::Arc<dyn qie_runtime::Backend> {
        self.model.backend()
    }

    /// The current f32 values of weight `name` (a source / checkpoint name).
    pub fn weight_f32(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        self.model.weight_f32(name)
    }
}

/// The segments gradient checkpointing recomputes: one per transformer block.
pub const CHECKPOINT_SEGMENTS: &str = "transformer_blocks.";

fn training_kind(target_tokens: usize, trainable: &[String], checkpoint: bool) -> GraphKind {
    GraphKind::ForwardBackward(Gradients {
        loss: LOSS.to_string(),
        params: trainable.to_vec(),
        inputs: Vec::new(),
        objective: Some(Objective::WeightedTokenMse {
            output: "sample".to_string(),
            tokens: target_tokens,
        }),
        checkpoint: checkpoint.then(|| CHECKPOINT_SEGMENTS.to_string()),
    })
}
