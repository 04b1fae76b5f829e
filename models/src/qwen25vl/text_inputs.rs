//! The language model's inputs read from a safetensors file (for `qie forward text-encoder` and
//! tests): input_ids, attention_mask (optional, all ones when absent), image_embeds and
//! image_grid_thw (both or neither).

use crate::ModelError;
use qie_runtime::weights::WeightStore;
use qie_runtime::Tensor;
use std::path::Path;

pub const INPUT_NAMES: [&str; 4] = [
    "input_ids",
    "attention_mask",
    "image_embeds",
    "image_grid_thw",
];

/// (shape, values) of an integer input.
type IntTensor = (Vec<usize>, Vec<i64>);

#[derive(Clone, Debug)]
pub struct TextEncoderInputs {
    /// [B][S] token ids.
    pub input_ids: Vec<Vec<i64>>,
    /// [B][S], 1 = token, 0 = padding.
    pub attention_mask: Vec<Vec<i64>>,
    /// [N, hidden] f32: the vision tower's output for every image token, in order.
    pub image_embeds: Option<Tensor>,
    /// (t, h, w) per image in patches before the spatial merge.
    pub grid_thw: Vec<[usize; 3]>,
}

impl TextEncoderInputs {
    pub fn load(path: &Path) -> Result<TextEncoderInputs, ModelError> {
        let at = |e: String| ModelError::new(format!("{}: {e}", path.display()));
        let store = WeightStore::open(path).map_err(|e| ModelError::new(e.to_string()))?;
        let unknown: Vec<&str> = store
            .names()
            .into_iter()
            .filter(|n| !INPUT_NAMES.contains(n))
            .collect();
        if !unknown.is_empty() {
            return Err(at(format!(
                "unknown input tensor(s) {} (expected names: {})",
                unknown.join(", "),
                INPUT_NAMES.join(", ")
            )));
        }
        let ints = |name: &str| -> Result<Option<IntTensor>, ModelError> {
            let Some(info) = store.info(name) else {
                return Ok(None);
            };
            let values = store
                .load_i64(name)
                .map_err(|e| at(format!("input `{name}`: {e}")))?;
            Ok(Some((info.shape.clone(), values)))
        };
        let rows =
            |name: &str, shape: &[usize], values: Vec<i64>| -> Result<Vec<Vec<i64>>, ModelError> {
                if shape.len() != 2 || shape[1] == 0 {
                    return Err(at(format!(
                        "input `{name}` has shape {shape:?}, expected [B, S]"
                    )));
                }
                Ok(values.chunks(shape[1]).map(<[i64]>::to_vec).collect())
            };
        let (ids_shape, ids) =
            ints("input_ids")?.ok_or_else(|| at("missing input tensor `input_ids`".into()))?;
        let input_ids = rows("input_ids", &ids_shape, ids)?;
        let attention_mask = match ints("attention_mask")? {
            Some((shape, values)) if shape == ids_shape => rows("attention_mask", &shape, values)?,
            Some((shape, _)) => {
                return Err(at(format!(
                "input `attention_mask` has shape {shape:?}, expected {ids_shape:?} like input_ids"
            )))
            }
            None => input_ids.iter().map(|r| vec![1; r.len()]).collect(),
        };
        let image_embeds = match store.info("image_embeds") {
            None => None,
            Some(info) => {
                let values = store
                    .load_f32("image_embeds")
                    .map_err(|e| at(format!("input `image_embeds`: {e}")))?;
                Some(
                    Tensor::from_f32(&info.shape, values)
                        .map_err(|e| at(format!("input `image_embeds`: {e}")))?,
                )
            }
        };
        let grid_thw = match ints("image_grid_thw")? {
            None => Vec::new(),
            Some((shape, values)) => {
                if shape.len() != 2 || shape[1] != 3 || values.iter().any(|&v| v <= 0) {
                    return Err(at(format!(
                        "input `image_grid_thw` must be [n_images, 3] positive (t, h, w), got shape {shape:?}"
                    )));
                }
                values
                    .chunks(3)
                    .map(|c| [c[0] as usize, c[1] as usize, c[2] as usize])
                    .collect()
            }
        };
        if image_embeds.is_some() == grid_thw.is_empty() {
            return Err(at(
                "`image_embeds` and `image_grid_thw` must be given together".into(),
            ));
        }
        Ok(TextEncoderInputs {
            input_ids,
            attention_mask,
            image_embeds,
            grid_thw,
        })
    }

    pub fn batch(&self) -> usize {
        self.input_ids.len()
    }

    pub fn seq_len(&self) -> usize {
        self.input_ids.first().map_or(0, Vec::len)
    }
}
