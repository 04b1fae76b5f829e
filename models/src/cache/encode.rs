//! One training row to the tensors a cache holds, through the same [`EditEncoder`] functions
//! inference uses: inputs sized by the [`SizeRule`] (inference's rule unless `--max-pixels` or
//! buckets change it), the VL prompt built from those inputs, VAE latents packed into tokens.

use super::manifest::CacheSettings;
use crate::data::sizing::latent_grid;
use crate::data::TrainRow;
use crate::pipeline::encoder::{prepare_images, vae_input};
use crate::pipeline::{EditEncoder, Flavour};
use crate::preprocess::load_rgb;
use crate::ModelError;
use qie_runtime::Tensor;

pub struct EncodedRow {
    pub target: Tensor,
    pub target_grid: [usize; 3],
    pub references: Option<Tensor>,
    pub reference_grids: Vec<[usize; 3]>,
    pub prompt_embeds: Tensor,
}

pub fn encode_row(
    encoder: &EditEncoder,
    row: &TrainRow,
    settings: &CacheSettings,
) -> Result<EncodedRow, ModelError> {
    if encoder.flavour == Flavour::Edit && row.inputs.len() != 1 {
        return Err(ModelError::new(format!(
            "Qwen-Image-Edit takes exactly one input image, this row has {} \
             (rows without inputs or with several need a 2509/2511 checkpoint)",
            row.inputs.len()
        )));
    }
    let rule = &settings.size;
    let target = load_rgb(&row.target)?;
    let target_size = rule.size_for(target.width(), target.height());
    let (_, target_input) = vae_input(&rule.crop(&target), target_size);
    let target_tokens = encoder.encode_latents(&target_input)?;

    let inputs = row
        .inputs
        .iter()
        .map(load_rgb)
        .collect::<Result<Vec<_>, _>>()?;
    let sizes: Vec<(u32, u32)> = inputs
        .iter()
        .map(|i| rule.size_for(i.width(), i.height()))
        .collect();
    let cropped: Vec<_> = inputs.iter().map(|i| rule.crop(i)).collect();
    let prepared = prepare_images(encoder.flavour, &cropped, &sizes, settings.vl_area);
    let prompt_embeds = encoder
        .encode_text(&prepared.vl_images, &[row.prompt.as_str()])?
        .remove(0);
    let references = match prepared.vae_inputs.is_empty() {
        true => None,
        false => Some(encoder.encode_references(&prepared.vae_inputs)?),
    };
    Ok(EncodedRow {
        target: target_tokens,
        target_grid: latent_grid(target_size),
        references,
        reference_grids: prepared.grids,
        prompt_embeds,
    })
}
