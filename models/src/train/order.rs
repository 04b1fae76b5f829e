//! The data order of one epoch: rows grouped by image grids (a batch needs equal sizes),
//! shuffled within each group, cut into batches, and the batches shuffled, all from
//! (seed, epoch) alone.

use super::rng::{stream_seed, uniform, Purpose};
use super::sample::TrainingData;
use std::collections::BTreeMap;

/// Batches of `batch_size` row indices for `epoch`; a group's last partial batch is dropped
/// when batch_size > 1 (kept when 1 would always be full anyway).
pub fn epoch_batches(
    data: &dyn TrainingData,
    batch_size: usize,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<usize>> {
    let mut groups: BTreeMap<Vec<[usize; 3]>, Vec<usize>> = BTreeMap::new();
    for i in 0..data.len() {
        groups.entry(data.grids(i)).or_default().push(i);
    }
    let mut draw = 0u64;
    let mut next = || {
        draw += 1;
        uniform(stream_seed(seed, epoch, Purpose::Shuffle, draw))
    };
    let mut batches = Vec::new();
    for (_, mut rows) in groups {
        shuffle(&mut rows, &mut next);
        for chunk in rows.chunks(batch_size) {
            if chunk.len() == batch_size {
                batches.push(chunk.to_vec());
            }
        }
    }
    shuffle(&mut batches, &mut next);
    batches
}

/// Fisher-Yates with the given uniform source.
fn shuffle<T>(v: &mut [T], next: &mut dyn FnMut() -> f64) {
    for i in (1..v.len()).rev() {
        let j = ((next() * (i + 1) as f64) as usize).min(i);
        v.swap(i, j);
    }
}
