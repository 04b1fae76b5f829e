//! Attention segments of the vision tower, from image_grid_thw alone: the windows of the window-attention
//! blocks (transformers' get_vision_window_index) and the frames of the full-attention blocks
//! (get_vision_cu_seqlens). Patches are numbered in the image processor's order: images one after another,
//! per image its frames, per frame its merge units row-major, per unit its merge² patches.

/// One image's (frames, rows, columns) in patches, as image_grid_thw holds it.
pub type GridThw = [usize; 3];

/// Segments padded to one length, the layout the DSL's attention takes: `index[s * max_len + j]` is the
/// patch at slot j of segment s (0 on padding slots, masked off by `mask`); `inverse[p]` is patch p's slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaddedSegments {
    pub count: usize,
    pub max_len: usize,
    pub index: Vec<i32>,
    pub mask: Vec<bool>,
    pub inverse: Vec<i32>,
}

impl PaddedSegments {
    /// Pads `segments` (lists of patch indices covering 0..total exactly once).
    pub fn new(segments: &[Vec<usize>], total: usize) -> PaddedSegments {
        let count = segments.len();
        let max_len = segments.iter().map(Vec::len).max().unwrap_or(0);
        let mut index = vec![0i32; count * max_len];
        let mut mask = vec![false; count * max_len];
        let mut inverse = vec![0i32; total];
        for (s, seg) in segments.iter().enumerate() {
            for (j, &p) in seg.iter().enumerate() {
                let slot = s * max_len + j;
                index[slot] = p as i32;
                mask[slot] = true;
                inverse[p] = slot as i32;
            }
        }
        PaddedSegments {
            count,
            max_len,
            index,
            mask,
            inverse,
        }
    }
}

/// Total patches of a grid list.
pub fn patch_count(grid_thw: &[GridThw]) -> usize {
    grid_thw.iter().map(|g| g[0] * g[1] * g[2]).sum()
}

/// The window-attention segments: per frame, windows of `window_units` x `window_units` merge units
/// (smaller at the right and bottom edges), row-major; inside a window its units row-major, each unit's
/// patches consecutive. This is the reference's window_index (expanded to patches) split at
/// cu_window_seqlens; the reference's empty padding windows do not occur.
pub fn window_segments(grid_thw: &[GridThw], merge: usize, window_units: usize) -> Vec<Vec<usize>> {
    let unit = merge * merge;
    let mut segments = Vec::new();
    let mut first_unit = 0;
    for &[t, h, w] in grid_thw {
        let (rows, cols) = (h / merge, w / merge);
        for frame in 0..t {
            let frame_start = first_unit + frame * rows * cols;
            for r0 in (0..rows).step_by(window_units) {
                for c0 in (0..cols).step_by(window_units) {
                    let mut seg = Vec::new();
                    for r in r0..(r0 + window_units).min(rows) {
                        for c in c0..(c0 + window_units).min(cols) {
                            let u = frame_start + r * cols + c;
                            seg.extend(u * unit..(u + 1) * unit);
                        }
                    }
                    segments.push(seg);
                }
            }
        }
        first_unit += t * rows * cols;
    }
    segments
}

/// The full-attention segments: every frame of every image attends over itself only.
pub fn frame_segments(grid_thw: &[GridThw]) -> Vec<Vec<usize>> {
    let mut segments = Vec::new();
    let mut start = 0;
    for &[t, h, w] in grid_thw {
        for _ in 0..t {
            segments.push((start..start + h * w).collect());
            start += h * w;
        }
    }
    segments
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' get_vision_window_index, transcribed literally (padding with -100 and all), to
    /// check the direct construction above: (window_index over merge units, cu_window_seqlens).
    fn reference_window_index(
        grid_thw: &[GridThw],
        merge: usize,
        ws: usize,
    ) -> (Vec<usize>, Vec<usize>) {
        let mut window_index = Vec::new();
        let mut cu = vec![0usize];
        let mut offset = 0;
        for &[t, h, w] in grid_thw {
            let (lh, lw) = (h / merge, w / merge);
            let (pad_h, pad_w) = (ws - lh % ws, ws - lw % ws);
            let (nh, nw) = ((lh + pad_h) / ws, (lw + pad_w) / ws);
            for f in 0..t {
                for wr in 0..nh {
                    for wc in 0..nw {
                        let mut n = 0;
                        for i in 0..ws {
                            for j in 0..ws {
                                let (r, c) = (wr * ws + i, wc * ws + j);
                                if r < lh && c < lw {
                                    window_index.push(offset + f * lh * lw + r * lw + c);
                                    n += 1;
                                }
                            }
                        }
                        let last = *cu.last().unwrap();
                        cu.push(last + n * merge * merge);
                    }
                }
            }
            offset += t * lh * lw;
        }
        cu.dedup();
        (window_index, cu)
    }

    #[test]
    fn windows_match_the_reference_construction() {
        let grids: &[&[GridThw]] = &[
            &[[1, 14, 10], [1, 6, 8]],
            &[[1, 10, 12]],
            &[[2, 16, 8]],
            &[[1, 74, 74]],
            &[[1, 2, 2], [1, 18, 34], [1, 8, 8]],
        ];
        for grid in grids {
            let segs = window_segments(grid, 2, 4);
            let (units, cu) = reference_window_index(grid, 2, 4);
            let flat: Vec<usize> = segs.iter().flatten().copied().collect();
            let expanded: Vec<usize> = units.iter().flat_map(|u| u * 4..u * 4 + 4).collect();
            assert_eq!(flat, expanded, "{grid:?}");
            let mut bounds = vec![0];
            for s in &segs {
                bounds.push(bounds.last().unwrap() + s.len());
            }
            assert_eq!(bounds, cu, "{grid:?}");
        }
    }

    #[test]
    fn padded_segments_invert() {
        let grid = [[1, 14, 10], [1, 6, 8]];
        let total = patch_count(&grid);
        for segs in [window_segments(&grid, 2, 4), frame_segments(&grid)] {
            let p = PaddedSegments::new(&segs, total);
            assert_eq!(p.index.len(), p.count * p.max_len);
            for patch in 0..total {
                let slot = p.inverse[patch] as usize;
                assert!(p.mask[slot]);
                assert_eq!(p.index[slot] as usize, patch);
            }
            assert_eq!(p.mask.iter().filter(|&&m| m).count(), total);
        }
    }

    #[test]
    fn a_1036_image_has_100_windows_of_at_most_64_patches() {
        // 37 x 37 merge units: 9 full windows and one of 1 unit per side.
        let segs = window_segments(&[[1, 74, 74]], 2, 4);
        assert_eq!(segs.len(), 100);
        assert_eq!(segs.iter().map(Vec::len).max(), Some(64));
        assert_eq!(segs.iter().map(Vec::len).min(), Some(4));
        assert_eq!(segs.iter().map(Vec::len).sum::<usize>(), 74 * 74);
    }
}
