//! Position ids of the multimodal 3-D RoPE (transformers' `Qwen2_5_VLModel.get_rope_index` for
//! images): among the valid (attention_mask = 1) tokens of a row, text runs advance all three axes
//! together; each image's tokens get (t, h, w) grid positions after the spatial merge, offset by
//! the running position, which then advances by max(h, w) / merge. Padded positions get 0.

use super::QwenVlConfig;
use crate::ModelError;

/// Per batch row, the (t, h, w) position of every token: `[t_positions, h_positions, w_positions]`.
pub type RowPositions = [Vec<i64>; 3];

/// Multimodal positions for a batch. `grid_thw` lists every image in order (row by row), in
/// patches before the spatial merge. Fails when an image's run of `image_token_id` tokens does
/// not match its grid, when grids are missing or left over, or on video tokens.
pub fn rope_index(
    config: &QwenVlConfig,
    input_ids: &[Vec<i64>],
    attention_mask: &[Vec<i64>],
    grid_thw: &[[usize; 3]],
) -> Result<Vec<RowPositions>, ModelError> {
    let merge = config.spatial_merge_size;
    let mut grids = grid_thw.iter().enumerate();
    let mut out = Vec::with_capacity(input_ids.len());
    for (b, (ids, mask)) in input_ids.iter().zip(attention_mask).enumerate() {
        if ids.len() != mask.len() {
            return Err(ModelError::new(format!(
                "row {b}: input_ids has {} tokens but attention_mask has {}",
                ids.len(),
                mask.len()
            )));
        }
        let valid: Vec<usize> = (0..ids.len()).filter(|&s| mask[s] != 0).collect();
        let mut row: RowPositions = std::array::from_fn(|_| vec![0i64; ids.len()]);
        let mut current = 0i64;
        let mut i = 0;
        while i < valid.len() {
            let is_image = ids[valid[i]] == config.image_token_id;
            let mut end = i;
            while end < valid.len() && (ids[valid[end]] == config.image_token_id) == is_image {
                if ids[valid[end]] == config.video_token_id {
                    return Err(ModelError::new(format!(
                        "row {b}: video tokens (video_token_id {}) are not supported",
                        config.video_token_id
                    )));
                }
                end += 1;
            }
            let run = &valid[i..end];
            if is_image {
                let (index, &[t, h, w]) = grids.next().ok_or_else(|| {
                    ModelError::new(format!(
                        "row {b}: more images in input_ids than the {} entries of image_grid_thw",
                        grid_thw.len()
                    ))
                })?;
                if h % merge != 0 || w % merge != 0 || t == 0 {
                    return Err(ModelError::new(format!(
                        "image {index}: grid {t}x{h}x{w} is not a multiple of spatial_merge_size {merge}"
                    )));
                }
                let (gh, gw) = (h / merge, w / merge);
                if run.len() != t * gh * gw {
                    return Err(ModelError::new(format!(
                        "row {b}: image {index} has {} image tokens but its grid {t}x{h}x{w} gives {} after the {merge}x{merge} merge",
                        run.len(),
                        t * gh * gw
                    )));
                }
                for (k, &s) in run.iter().enumerate() {
                    row[0][s] = (k / (gh * gw)) as i64 + current;
                    row[1][s] = ((k / gw) % gh) as i64 + current;
                    row[2][s] = (k % gw) as i64 + current;
                }
                current += (h.max(w) / merge) as i64;
            } else {
                for (k, &s) in run.iter().enumerate() {
                    for axis in row.iter_mut() {
                        axis[s] = current + k as i64;
                    }
                }
                current += run.len() as i64;
            }
            i = end;
        }
        out.push(row);
    }
    if let Some((index, _)) = grids.next() {
        return Err(ModelError::new(format!(
            "image_grid_thw has {} entries but input_ids hold only {index} images",
            grid_thw.len()
        )));
    }
    Ok(out)
}

/// Positions 0..S-1 on every axis for every row, padding ignored: what transformers 5.x computes
/// when `mm_token_type_ids` is not passed (diffusers 0.42.1's `_get_qwen_prompt_embeds`).
pub fn sequential_positions(batch: usize, seq: usize) -> Vec<RowPositions> {
    let row: Vec<i64> = (0..seq as i64).collect();
    vec![[row.clone(), row.clone(), row]; batch]
}

/// Flattens per-row positions into the [3, B, S] layout of transformers' `position_ids`.
pub fn positions_3bs(rows: &[RowPositions]) -> Vec<i64> {
    let mut flat = Vec::new();
    for axis in 0..3 {
        for row in rows {
            flat.extend_from_slice(&row[axis]);
        }
    }
    flat
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> QwenVlConfig {
        QwenVlConfig::from_json(json!({
            "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
            "num_hidden_layers": 1, "vocab_size": 300, "image_token_id": 9,
            "video_token_id": 8, "rope_scaling": {"mrope_section": [2, 3, 3]}
        }))
        .unwrap()
    }

    #[test]
    fn image_grid_then_text_after_the_largest_side() {
        // 2 text, a 1x4x6 image (2x3 tokens), 1 text
        let ids = vec![vec![1, 2, 9, 9, 9, 9, 9, 9, 3]];
        let mask = vec![vec![1; 9]];
        let p = rope_index(&config(), &ids, &mask, &[[1, 4, 6]]).unwrap();
        assert_eq!(p[0][0], vec![0, 1, 2, 2, 2, 2, 2, 2, 5]);
        assert_eq!(p[0][1], vec![0, 1, 2, 2, 2, 3, 3, 3, 5]);
        assert_eq!(p[0][2], vec![0, 1, 2, 3, 4, 2, 3, 4, 5]);
    }

    #[test]
    fn left_padding_is_skipped_and_zero() {
        let ids = vec![vec![0, 0, 5, 6]];
        let mask = vec![vec![0, 0, 1, 1]];
        let p = rope_index(&config(), &ids, &mask, &[]).unwrap();
        assert_eq!(p[0][1], vec![0, 0, 0, 1]);
    }

    #[test]
    fn token_and_grid_mismatches_are_errors() {
        let ids = vec![vec![1, 9, 9, 9, 2]];
        let mask = vec![vec![1; 5]];
        let e = rope_index(&config(), &ids, &mask, &[[1, 4, 4]]).unwrap_err();
        assert!(e.message.contains("3 image tokens"), "{e}");
        let e = rope_index(&config(), &ids, &mask, &[]).unwrap_err();
        assert!(e.message.contains("more images"), "{e}");
        let e = rope_index(&config(), &[vec![1, 2]], &[vec![1, 1]], &[[1, 2, 2]]).unwrap_err();
        assert!(e.message.contains("only 0 images"), "{e}");
    }
}
