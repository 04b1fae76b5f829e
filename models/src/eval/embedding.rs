//! The model metrics over scored rows: each row's ground truth and prediction embedded by an
//! [`ImageEncoder`] (each image preprocessed on its own, as the reference scripts do), the score
//! being their cosine similarity (DreamSim's: 1 - cosine, [`ImageEncoder::score`]).

use super::encoder::{cosine, ImageEncoder};
use super::metric::Metric;
use super::preprocess::resized_size;
use super::score::{RowProblem, RowScore};
use crate::preprocess::image_io::load_rgb;
use crate::ModelError;
use rayon::prelude::*;
use std::collections::HashMap;

/// A prediction for clip_t: its image, or the embedding clip_i already made.
enum Known<'a> {
    Image(image::RgbImage),
    Embedding(&'a Vec<f32>),
}

/// The prediction embeddings of one encoder pass, by row index (clip_t reuses clip_i's).
pub type PredEmbeddings = HashMap<usize, Vec<f32>>;

/// Adds `metric` to every row of `rows`, `batch` images per forward pass; `done(n)` after each
/// chunk of rows. A row whose image cannot be read or preprocessed (e.g. too elongated) keeps
/// its other scores, lacks this one, and comes back as a problem; a model failure is an error.
/// Returns the problems and every scored row's prediction embedding.
pub fn add_embedding_metric(
    rows: &mut [RowScore],
    metric: Metric,
    encoder: &ImageEncoder,
    batch: usize,
    done: &mut dyn FnMut(usize),
) -> Result<(Vec<RowProblem>, PredEmbeddings), ModelError> {
    let rows_per_chunk = (batch / 2).max(1);
    let prep = *encoder.preprocessing();
    let mut problems = Vec::new();
    let mut preds = PredEmbeddings::new();
    for chunk in rows.chunks_mut(rows_per_chunk) {
        let mut images = Vec::with_capacity(2 * chunk.len());
        let mut usable = Vec::with_capacity(chunk.len());
        // decoding and checking the images is most of the host work: in parallel
        let pairs: Vec<_> = chunk
            .par_iter()
            .map(|r| {
                [&r.gt, &r.pred].map(|p| {
                    load_rgb(p)
                        .map_err(|e| e.to_string())
                        .and_then(|img| {
                            resized_size(img.width() as usize, img.height() as usize, &prep)
                                .map(|_| img)
                        })
                        .map_err(|e| (p.clone(), e))
                })
            })
            .collect();
        for ((k, r), pair) in chunk.iter().enumerate().zip(pairs) {
            match pair {
                [Ok(g), Ok(p)] => {
                    images.push(g);
                    images.push(p);
                    usable.push(k);
                }
                [Err((path, e)), _] | [_, Err((path, e))] => problems.push(RowProblem {
                    index: r.index,
                    what: metric.name(),
                    message: format!("{}: {e}", path.display()),
                    path,
                }),
            }
        }
        let refs: Vec<_> = images.iter().collect();
        let embeds = encoder.embed(&refs, batch.max(2))?;
        for (&k, pair) in usable.iter().zip(embeds.chunks(2)) {
            chunk[k]
                .values
                .insert(metric, Some(encoder.score(&pair[0], &pair[1])));
            preds.insert(chunk[k].index, pair[1].clone());
        }
        done(chunk.len());
    }
    Ok((problems, preds))
}

/// Adds `clip_t` to every row of `rows`: the cosine of the prediction's CLIP image embedding
/// (taken from `known` when clip_i already computed it) and the CLIP text embedding of
/// `texts[row index]`; rows whose image cannot be used (or that have no text) come back as
/// problems, as in [`add_embedding_metric`].
pub fn add_text_metric(
    rows: &mut [RowScore],
    texts: &HashMap<usize, String>,
    image: &ImageEncoder,
    text: &super::text_encoder::TextEncoder,
    known: &PredEmbeddings,
    batch: usize,
    done: &mut dyn FnMut(usize),
) -> Result<Vec<RowProblem>, ModelError> {
    let prep = *image.preprocessing();
    let mut problems = Vec::new();
    for chunk in rows.chunks_mut(batch.max(1)) {
        let mut captions = Vec::with_capacity(chunk.len());
        let mut usable = Vec::with_capacity(chunk.len());
        let loaded: Vec<_> = chunk
            .par_iter()
            .map(|r| match known.get(&r.index) {
                Some(e) => Ok(Known::Embedding(e)),
                None => load_rgb(&r.pred)
                    .map_err(|e| e.to_string())
                    .and_then(|img| {
                        resized_size(img.width() as usize, img.height() as usize, &prep)
                            .map(|_| Known::Image(img))
                    }),
            })
            .collect();
        let mut images = Vec::new();
        let mut known_rows = Vec::new();
        for ((k, r), img) in chunk.iter().enumerate().zip(loaded) {
            match (img, texts.get(&r.index)) {
                (Ok(known), Some(t)) => {
                    match known {
                        Known::Image(img) => images.push(img),
                        Known::Embedding(e) => known_rows.push((usable.len(), e)),
                    }
                    captions.push(t.as_str());
                    usable.push(k);
                }
                (Err(e), _) => problems.push(RowProblem {
                    index: r.index,
                    what: Metric::ClipT.name(),
                    message: format!("{}: {e}", r.pred.display()),
                    path: r.pred.clone(),
                }),
                (Ok(_), None) => problems.push(RowProblem {
                    index: r.index,
                    what: Metric::ClipT.name(),
                    message: "the row has no prompt or output_caption".into(),
                    path: r.pred.clone(),
                }),
            }
        }
        let refs: Vec<_> = images.iter().collect();
        let mut computed = image.embed(&refs, batch)?.into_iter();
        let mut known_rows = known_rows.into_iter().peekable();
        let image_embeds: Vec<Vec<f32>> = (0..usable.len())
            .map(|u| match known_rows.next_if(|(at, _)| *at == u) {
                Some((_, e)) => e.clone(),
                None => computed.next().expect("one embedding per loaded image"),
            })
            .collect();
        let text_embeds = text.embed(&captions, batch)?;
        for ((&k, a), b) in usable.iter().zip(&image_embeds).zip(&text_embeds) {
            chunk[k].values.insert(Metric::ClipT, Some(cosine(a, b)));
        }
        done(chunk.len());
    }
    Ok(problems)
}
