//! What the trainer reads per dataset row (a cached row: clean target latents, reference
//! latents, prompt embeddings) and how a batch of rows becomes the DiT's inputs and the loss
//! target for one noise draw.

use super::rng::{normal_tensor, stream_seed, Purpose};
use super::timesteps::{TimestepDraw, TimestepSampler};
use crate::cache::Cache;
use crate::data::ShapeKey;
use crate::qwen_image::{DitInputs, ImgShape};
use crate::ModelError;
use qie_runtime::Tensor;

/// One row as the trainer reads it: a cached row (see `qie cache`).
pub use crate::cache::CachedRow as TrainSample;

impl TrainSample {
    /// Image grids the DiT sees: the target, then every reference.
    pub fn img_shapes(&self) -> Vec<ImgShape> {
        let mut v = vec![self.target_grid];
        v.extend(self.reference_grids.iter().copied());
        v
    }

    /// What must match within a batch.
    pub fn shape_key(&self) -> ShapeKey {
        ShapeKey {
            target: self.target_grid,
            references: self.reference_grids.clone(),
        }
    }
}

/// Rows the trainer can read by index.
pub trait TrainingData {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Every row's image grids (what must match within a batch).
    fn shape_keys(&self) -> Vec<ShapeKey>;
    fn load(&self, index: usize) -> Result<TrainSample, ModelError>;
}

impl TrainingData for Cache {
    fn len(&self) -> usize {
        Cache::len(self)
    }
    fn shape_keys(&self) -> Vec<ShapeKey> {
        Cache::shape_keys(self)
    }
    fn load(&self, index: usize) -> Result<TrainSample, ModelError> {
        Cache::load(self, index)
    }
}

/// Rows held in memory (tests, small experiments).
pub struct InMemoryData(pub Vec<TrainSample>);

impl TrainingData for InMemoryData {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn shape_keys(&self) -> Vec<ShapeKey> {
        self.0.iter().map(TrainSample::shape_key).collect()
    }
    fn load(&self, index: usize) -> Result<TrainSample, ModelError> {
        self.0
            .get(index)
            .cloned()
            .ok_or_else(|| ModelError::new(format!("no row {index}")))
    }
}

/// One micro-batch ready to run: DiT inputs at the drawn noise levels, the loss target
/// `eps - x0` over the target tokens and the per-sample loss weights.
pub struct NoisedBatch {
    pub inputs: DitInputs,
    pub target: Tensor,
    pub weight: Tensor,
    pub draws: Vec<TimestepDraw>,
}

/// Noises `samples` (equal grids) for optimizer step `step`, micro-batch `micro`: sample j of the
/// batch uses the random streams (seed, step, micro * 65536 + j), so a resumed run redraws the
/// same noise and timesteps.
pub fn noise_batch(
    samples: &[TrainSample],
    sampler: &TimestepSampler,
    seed: u64,
    step: u64,
    micro: u64,
) -> Result<NoisedBatch, ModelError> {
    let first = samples
        .first()
        .ok_or_else(|| ModelError::new("an empty batch"))?;
    let grids = first.img_shapes();
    if let Some(other) = samples.iter().find(|s| s.img_shapes() != grids) {
        return Err(ModelError::new(format!(
            "a batch mixes image grids ({} has {:?}, {} has {:?}); batches need equal sizes",
            first.source,
            grids,
            other.source,
            other.img_shapes()
        )));
    }
    let t_shape = first.target.shape().to_vec();
    let (s_target, channels) = (t_shape[1], t_shape[2]);
    let max_txt = samples
        .iter()
        .map(|s| s.prompt_embeds.shape()[1])
        .max()
        .unwrap_or(0);
    let dim = first.prompt_embeds.shape()[2];
    let s_refs = first.references.as_ref().map_or(0, |r| r.shape()[1]);
    let s_img = s_target + s_refs;
    let batch = samples.len();

    let mut hidden = Vec::with_capacity(batch * s_img * channels);
    let mut target = Vec::with_capacity(batch * s_target * channels);
    let mut text = vec![0.0f32; batch * max_txt * dim];
    let mut mask = vec![false; batch * max_txt];
    let mut timesteps = Vec::with_capacity(batch);
    let mut weights = Vec::with_capacity(batch);
    let mut draws = Vec::with_capacity(batch);
    for (j, s) in samples.iter().enumerate() {
        if s.target.shape() != t_shape.as_slice() {
            return Err(ModelError::new(format!(
                "{}: target latents {:?}, the batch has {:?}",
                s.source,
                s.target.shape(),
                t_shape
            )));
        }
        let index = micro * 65536 + j as u64;
        let draw = sampler.draw(stream_seed(seed, step, Purpose::Timestep, index), s_target);
        let eps = normal_tensor(
            stream_seed(seed, step, Purpose::Noise, index),
            &[s_target * channels],
        );
        let x0 = s.target.to_f32_vec();
        let sigma = draw.sigma;
        for (&x, &e) in x0.iter().zip(&eps) {
            hidden.push((1.0 - sigma) * x + sigma * e);
            target.push(e - x);
        }
        if let Some(r) = &s.references {
            hidden.extend(r.to_f32_vec());
        }
        let (len, embeds) = (s.prompt_embeds.shape()[1], s.prompt_embeds.to_f32_vec());
        text[j * max_txt * dim..j * max_txt * dim + len * dim].copy_from_slice(&embeds);
        for k in 0..len {
            mask[j * max_txt + k] = s.prompt_mask.get(k).copied().unwrap_or(true);
        }
        timesteps.push(draw.timestep / 1000.0);
        weights.push(draw.weight);
        draws.push(draw);
    }
    let t = |shape: &[usize], v: Vec<f32>| {
        Tensor::from_f32(shape, v).map_err(|e| ModelError::new(e.to_string()))
    };
    // No mask when every token is real: the same plan as inference.
    let encoder_hidden_states_mask = if mask.iter().all(|&m| m) {
        None
    } else {
        Some(
            Tensor::from_bool(&[batch, max_txt], mask)
                .map_err(|e| ModelError::new(e.to_string()))?,
        )
    };
    Ok(NoisedBatch {
        inputs: DitInputs {
            hidden_states: t(&[batch, s_img, channels], hidden)?,
            encoder_hidden_states: t(&[batch, max_txt, dim], text)?,
            encoder_hidden_states_mask,
            timestep: t(&[batch], timesteps)?,
            additional_t_cond: None,
            img_shapes: grids,
        },
        target: t(&[batch, s_target, channels], target)?,
        weight: t(&[batch], weights)?,
        draws,
    })
}
