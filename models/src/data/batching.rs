//! Batches for `--batch-size > 1`: rows in one batch must have identical latent grids (the
//! target's and every reference's), because the DiT's sequence layout and RoPE depend on them
//! (diffusers' rope even reads only the first sample's shapes). Rows are grouped by shape,
//! shuffled within groups, cut into batches, and the batches shuffled, all from (seed, epoch)
//! so a resumed run sees the same order.

use std::collections::BTreeMap;

/// Everything about a row's shapes that must match within a batch.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShapeKey {
    pub target: [usize; 3],
    pub references: Vec<[usize; 3]>,
}

/// Batches of row indices into `keys`. A shape group smaller than `batch_size` yields one short
/// batch unless `drop_last`, which drops every group's remainder (rows come back next epoch in
/// another order). Deterministic in (`seed`, `epoch`).
pub fn batches(
    keys: &[ShapeKey],
    batch_size: usize,
    seed: u64,
    epoch: u64,
    drop_last: bool,
) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut rng = SplitMix64::new(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut groups: BTreeMap<&ShapeKey, Vec<usize>> = BTreeMap::new();
    for (i, k) in keys.iter().enumerate() {
        groups.entry(k).or_default().push(i);
    }
    let mut out = Vec::new();
    for (_, mut rows) in groups {
        rng.shuffle(&mut rows);
        for chunk in rows.chunks(batch_size) {
            if chunk.len() == batch_size || !drop_last {
                out.push(chunk.to_vec());
            }
        }
    }
    rng.shuffle(&mut out);
    out
}

/// How many rows `batches` leaves out with `drop_last` (for a warning at start-up).
pub fn dropped_rows(keys: &[ShapeKey], batch_size: usize) -> usize {
    let mut groups: BTreeMap<&ShapeKey, usize> = BTreeMap::new();
    for k in keys {
        *groups.entry(k).or_default() += 1;
    }
    groups.values().map(|n| n % batch_size.max(1)).sum()
}

/// A small fixed generator (splitmix64) so orders never change with a dependency's version.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fisher-Yates.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(h: usize, w: usize, refs: &[[usize; 3]]) -> ShapeKey {
        ShapeKey {
            target: [1, h, w],
            references: refs.to_vec(),
        }
    }

    fn keys() -> Vec<ShapeKey> {
        let a = key(64, 64, &[[1, 64, 64]]);
        let b = key(48, 80, &[[1, 48, 80]]);
        // Same target as `a`, a different reference: must not share a batch with `a`.
        let c = key(64, 64, &[[1, 48, 80]]);
        vec![
            a.clone(),
            b.clone(),
            a.clone(),
            c.clone(),
            a.clone(),
            b,
            a,
            c,
        ]
    }

    #[test]
    fn batches_share_one_shape() {
        let keys = keys();
        let out = batches(&keys, 2, 7, 0, false);
        let mut seen: Vec<usize> = out.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..keys.len()).collect::<Vec<_>>());
        for b in &out {
            assert!(b.iter().all(|&i| keys[i] == keys[b[0]]), "{b:?}");
            assert!(b.len() <= 2);
        }
    }

    #[test]
    fn deterministic_per_seed_and_epoch() {
        let keys = keys();
        assert_eq!(
            batches(&keys, 2, 1, 3, false),
            batches(&keys, 2, 1, 3, false)
        );
        let orders: Vec<_> = (0..6).map(|e| batches(&keys, 1, 1, e, false)).collect();
        assert!(orders.windows(2).any(|w| w[0] != w[1]), "epochs reshuffle");
        assert_ne!(
            batches(&keys, 1, 1, 0, false),
            batches(&keys, 1, 2, 0, false)
        );
    }

    #[test]
    fn drop_last_drops_remainders() {
        let keys = keys();
        // Groups: a x4, b x2, c x2 -> with batch 3 only one full batch (from a).
        let out = batches(&keys, 3, 0, 0, true);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), 3);
        assert_eq!(dropped_rows(&keys, 3), 1 + 2 + 2);
        assert_eq!(batches(&keys, 3, 0, 0, false).len(), 4);
        assert!(batches(&[], 4, 0, 0, false).is_empty());
    }
}
