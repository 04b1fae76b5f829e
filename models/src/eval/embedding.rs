//! The model metrics over scored rows: each row's ground truth and prediction embedded by an
//! [`ImageEncoder`] (each image preprocessed on its own, as the reference scripts do), the score
//! being their cosine similarity.

use super::encoder::{cosine, ImageEncoder};
use super::metric::Metric;
use super::score::RowScore;
use crate::preprocess::image_io::load_rgb;
use crate::ModelError;

/// Adds `metric` to every row of `rows`, `batch` images per forward pass; `done(n)` after each
/// chunk of rows.
pub fn add_embedding_metric(
    rows: &mut [RowScore],
    metric: Metric,
    encoder: &ImageEncoder,
    batch: usize,
    done: &mut dyn FnMut(usize),
) -> Result<(), ModelError> {
    let rows_per_chunk = (batch / 2).max(1);
    for chunk in rows.chunks_mut(rows_per_chunk) {
        let mut images = Vec::with_capacity(2 * chunk.len());
        for r in chunk.iter() {
            images.push(load_rgb(&r.gt)?);
            images.push(load_rgb(&r.pred)?);
        }
        let refs: Vec<_> = images.iter().collect();
        let embeds = encoder.embed(&refs, batch.max(2))?;
        for (r, pair) in chunk.iter_mut().zip(embeds.chunks(2)) {
            r.values.insert(metric, Some(cosine(&pair[0], &pair[1])));
        }
        done(chunk.len());
    }
    Ok(())
}
