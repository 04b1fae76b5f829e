//! The image encoders of the model metrics: DINO (`dino`, a transformers `ViTModel`), DINOv2
//! (`dinov2`, `Dinov2Model`), CLIP (`clip_i`, the vision tower + projection of a `CLIPModel` /
//! `CLIPVisionModelWithProjection`) and SigLIP (`siglip`, the pooled vision tower of a
//! `SiglipModel` / `SiglipVisionModel`), all `vit.qie` through [`DslModel`], loaded from a
//! transformers folder (config.json + safetensors), with the preprocessing of the reference
//! scripts (torchvision / the PIL image processors); and DreamSim's three-tower ensemble
//! (`dreamsim`, see [`super::dreamsim`]).

use std::collections::HashMap;
use std::path::Path;

use image::RgbImage;
use qie_ir::{DType, TensorType};
use qie_runtime::weights::{CheckMode, WeightStore};
use qie_runtime::Tensor;
use rayon::prelude::*;
use serde_json::Value;

use super::encoder_config::{tower_setup, TowerSetup};
use super::positions::resample_positions;
use super::preprocess::{preprocess, Preprocess};
use crate::dsl_model::Specialisation;
use crate::dsl_model::{config_json, open_store, DslModel, DslProgram, DslSource, ShapeKey};
use crate::host_weights::HostWeights;
use crate::{ModelError, ModelOptions};

/// The bundled model source.
pub const SOURCE: &str = "vit.qie";

/// Which encoder (and so which layout and preprocessing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EncoderKind {
    Dino,
    Dinov2,
    Clip,
    Siglip,
    DreamSim,
}

impl EncoderKind {
    pub fn what(self) -> &'static str {
        match self {
            EncoderKind::Dino => "a transformers ViTModel folder (e.g. facebook/dino-vits16)",
            EncoderKind::Dinov2 => "a transformers Dinov2Model folder (e.g. facebook/dinov2-base)",
            EncoderKind::Clip => {
                "a transformers CLIPModel folder (e.g. openai/clip-vit-base-patch32)"
            }
            EncoderKind::Siglip => {
                "a transformers SiglipModel folder (e.g. google/siglip-so400m-patch14-384)"
            }
            EncoderKind::DreamSim => "the folder dreamsim(cache_dir=...) downloads",
        }
    }

    /// The config.json model types this encoder reads.
    pub(super) fn expected_model_types(self) -> &'static str {
        match self {
            EncoderKind::Dino => "a ViT (`vit`)",
            EncoderKind::Dinov2 => "a DINOv2 model (`dinov2`)",
            EncoderKind::Clip => "a CLIP model (`clip` or `clip_vision_model`)",
            EncoderKind::Siglip => "a SigLIP model (`siglip` or `siglip_vision_model`)",
            EncoderKind::DreamSim => "DreamSim's torch checkpoints",
        }
    }

    /// The variant of `vit.qie`.
    pub(super) fn dsl_model_type(self) -> &'static str {
        match self {
            EncoderKind::Dino => "vit",
            EncoderKind::Dinov2 => "dinov2",
            EncoderKind::Clip => "clip_vision_model",
            EncoderKind::Siglip => "siglip_vision_model",
            EncoderKind::DreamSim => "dino_vit",
        }
    }
}

/// Plans are keyed by the batch size.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Batch(pub(super) usize);
impl ShapeKey for Batch {}

/// One network of an encoder (DreamSim has three, the others one).
pub(super) struct Tower {
    pub(super) model: DslModel<Batch>,
    /// Mean and std applied to the [0, 1] pixels before this tower, where the towers share one
    /// resize but normalise differently (DreamSim); None when the preprocessing normalises.
    pub(super) normalize: Option<([f32; 3], [f32; 3])>,
}

pub struct ImageEncoder {
    kind: EncoderKind,
    preprocess: Preprocess,
    image_size: usize,
    towers: Vec<Tower>,
}

impl ImageEncoder {
    pub fn load(dir: &Path, kind: EncoderKind, options: &ModelOptions) -> Result<Self, ModelError> {
        if kind == EncoderKind::DreamSim {
            let side = super::dreamsim::INPUT_SIDE;
            return Ok(ImageEncoder {
                kind,
                preprocess: Preprocess::unit_square(side),
                image_size: side,
                towers: super::dreamsim::load_towers(dir, options)?,
            });
        }
        let config_path = config_json(dir, kind.what())?;
        let raw = read_json(&config_path)?;
        let processor_path = dir.join("preprocessor_config.json");
        let processor = match processor_path.exists() {
            true => Some(read_json(&processor_path)?),
            false => None,
        };
        let store = open_store(dir)?;
        let tower = ["vision_model.", "vit.", "dinov2."]
            .into_iter()
            .find(|p| store.names().iter().any(|n| n.starts_with(p)))
            .unwrap_or("");
        let setup = tower_setup(&raw, processor.as_ref(), kind, tower)
            .map_err(|e| ModelError::new(format!("{}: {e}", config_path.display())))?;
        let program = DslProgram::load(
            "image encoder",
            DslSource::new(SOURCE, options.source.as_deref()),
            setup.config.clone(),
        )?;
        let probe = spec(1, setup.input_side);
        let model = if setup.checkpoint_grid == setup.input_grid {
            DslModel::load(
                program,
                &probe,
                &store,
                "",
                CheckMode::AllowUnexpected,
                options,
            )?
        } else {
            let weights =
                load_resampling_positions(&program, &probe, &store, &setup, tower, options)?;
            DslModel::from_weights(program, &probe, weights, "", options)?
        };
        refuse_created(&model, dir)?;
        Ok(ImageEncoder {
            kind,
            preprocess: setup.preprocess,
            image_size: setup.input_side,
            towers: vec![Tower {
                model,
                normalize: None,
            }],
        })
    }

    pub fn kind(&self) -> EncoderKind {
        self.kind
    }

    /// The preprocessing of every image before [`ImageEncoder::embed_pixels`].
    pub fn preprocessing(&self) -> &Preprocess {
        &self.preprocess
    }

    /// The embedding of every image (preprocessed as the reference does), `batch` at a time;
    /// an image the preprocessing refuses is an error naming its position.
    pub fn embed(&self, images: &[&RgbImage], batch: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        let p = &self.preprocess;
        let s = self.image_size;
        let mut out = Vec::with_capacity(images.len());
        for (c, chunk) in images.chunks(batch.max(1)).enumerate() {
            let planes: Vec<Vec<f32>> = chunk
                .par_iter()
                .enumerate()
                .map(|(i, img)| {
                    let at = c * batch.max(1) + i;
                    preprocess(img, p).map_err(|e| ModelError::new(format!("image {at}: {e}")))
                })
                .collect::<Result<_, _>>()?;
            let mut pixels = Vec::with_capacity(chunk.len() * 3 * s * s);
            planes.iter().for_each(|v| pixels.extend_from_slice(v));
            out.extend(self.embed_pixels(&pixels, chunk.len())?);
        }
        Ok(out)
    }

    /// Embeddings of preprocessed [n, 3, S, S] pixels: every tower's output, concatenated
    /// (and for DreamSim mean-centred and normalised).
    pub fn embed_pixels(&self, pixels: &[f32], n: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut out = vec![Vec::new(); n];
        for tower in &self.towers {
            let values = match tower.normalize {
                None => tower_embeds(tower, pixels.to_vec(), n, self.image_size)?,
                Some((mean, std)) => {
                    let plane = self.image_size * self.image_size;
                    let normalised = pixels
                        .iter()
                        .enumerate()
                        .map(|(i, &x)| {
                            let c = (i / plane) % 3;
                            (x - mean[c]) / std[c]
                        })
                        .collect();
                    tower_embeds(tower, normalised, n, self.image_size)?
                }
            };
            let width = values.len() / n;
            for (row, chunk) in out.iter_mut().zip(values.chunks(width)) {
                row.extend_from_slice(chunk);
            }
        }
        if self.kind == EncoderKind::DreamSim {
            out.iter_mut().for_each(|e| centre_and_normalise(e));
        }
        Ok(out)
    }

    /// The metric's value for a (ground truth, prediction) pair of embeddings: their cosine,
    /// for DreamSim the distance `1 - cosine`.
    pub fn score(&self, gt: &[f32], pred: &[f32]) -> f64 {
        match self.kind {
            EncoderKind::DreamSim => 1.0 - cosine(gt, pred),
            _ => cosine(gt, pred),
        }
    }

    pub fn backend_name(&self) -> &str {
        self.towers[0].model.backend_name()
    }
}

/// One tower's `embeds` for [n, 3, S, S] pixels, n rows of equal width, flattened.
fn tower_embeds(
    tower: &Tower,
    pixels: Vec<f32>,
    n: usize,
    s: usize,
) -> Result<Vec<f32>, ModelError> {
    let t = Tensor::from_f32(&[n, 3, s, s], pixels)
        .map_err(|e| ModelError::new(format!("pixel values: {}", e.0)))?;
    let mut inputs = HashMap::new();
    inputs.insert("pixel_values".to_string(), t);
    let embeds = tower
        .model
        .forward(&Batch(n), &spec(n, s), &inputs)?
        .take("embeds")?;
    let values = embeds.cast(DType::F32).to_f32_vec();
    let width = values.len() / n;
    if width == 0 || values.len() != n * width {
        return Err(ModelError::new(format!(
            "the image encoder gave {} values for {n} images",
            values.len()
        )));
    }
    Ok(values)
}

/// DreamSim's `normalize_embedding`: subtract the mean over the features, divide by the norm
/// (in f32, as torch does).
fn centre_and_normalise(e: &mut [f32]) {
    let mean = (e.iter().map(|&x| f64::from(x)).sum::<f64>() / e.len().max(1) as f64) as f32;
    e.iter_mut().for_each(|x| *x -= mean);
    let norm = e
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt() as f32;
    e.iter_mut().for_each(|x| *x /= norm);
}

/// A metric model must come whole from its checkpoint: a weight the source would create
/// (initialise) means a name the checkpoint lacks, so the scores would be noise.
pub(super) fn refuse_created<K: ShapeKey>(
    model: &DslModel<K>,
    dir: &Path,
) -> Result<(), ModelError> {
    match model.created_weights() {
        [] => Ok(()),
        names => Err(ModelError::new(format!(
            "{}: the checkpoint has no {} (is it the right kind of model?)",
            dir.display(),
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelError::new(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| ModelError::new(format!("{}: {e}", path.display())))
}

/// The weights with the position table resampled from the checkpoint's grid to the input's
/// (DINOv2 is trained at 518 and scored at 224, as transformers interpolates it per call).
fn load_resampling_positions(
    program: &DslProgram,
    probe: &Specialisation,
    store: &WeightStore,
    setup: &TowerSetup,
    tower: &str,
    options: &ModelOptions,
) -> Result<HostWeights, ModelError> {
    let name = format!("{tower}embeddings.position_embeddings");
    let table = program.param_table(probe)?;
    let others: Vec<_> = table
        .shapes
        .into_iter()
        .filter(|(n, _)| *n != name)
        .collect();
    let err = |e: qie_runtime::weights::WeightsError| ModelError::new(e.to_string());
    store
        .check_with(&others, CheckMode::AllowUnexpected)
        .map_err(err)?;
    let mut weights = HostWeights::load(store, &others, options.precision)?;
    let hidden = setup.config["hidden_size"].as_u64().unwrap_or(0) as usize;
    let (n, m) = (setup.checkpoint_grid, setup.input_grid);
    let info = store.require(&name).map_err(err)?;
    if info.shape != [1, 1 + n * n, hidden] {
        return Err(ModelError::new(format!(
            "{}: weight `{name}` has shape {:?}, image_size and patch_size give [1, {}, {hidden}]",
            info.file.display(),
            info.shape,
            1 + n * n
        )));
    }
    let values = store.load_f32(&name).map_err(err)?;
    let resampled = resample_positions(&values, 1, n, m, hidden);
    weights.set_f32(&name, resampled, options.precision);
    Ok(weights)
}

pub(super) fn spec(batch: usize, size: usize) -> Specialisation {
    Specialisation::new(vec![(
        "pixel_values".to_string(),
        TensorType::new(DType::F32, &[batch, 3, size, size]),
    )])
}

/// Cosine similarity in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1e-300)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_of_parallel_and_orthogonal_vectors() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-12);
    }
}
