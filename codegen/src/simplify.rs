//! Program-level simplification of the iteration space: axes of size 1 are dropped and adjacent
//! axes are merged when every index map (loads, iotas, gathers, stores) stays strided across them.
//! A dense elementwise kernel over [2, 4096, 3072] becomes a 1-D loop; a row reduction over
//! [4096, 3072] keeps one kept axis and one reduced axis.

use crate::index::IndexMap;
use crate::program::KernelProgram;

fn body_maps(p: &mut KernelProgram) -> Vec<&mut IndexMap> {
    let mut maps: Vec<&mut IndexMap> = p
        .body
        .stmts
        .iter_mut()
        .filter_map(|s| s.instr.map_mut())
        .collect();
    maps.extend(p.body.stores.iter_mut().map(|s| &mut s.map));
    maps
}

fn epilogue_maps(p: &mut KernelProgram) -> Vec<&mut IndexMap> {
    let mut maps: Vec<&mut IndexMap> = p
        .epilogue
        .stmts
        .iter_mut()
        .filter_map(|s| s.instr.map_mut())
        .collect();
    maps.extend(p.epilogue.stores.iter_mut().map(|s| &mut s.map));
    maps
}

/// Drops size-1 axes and merges mergeable neighbours, never across the kept/reduced boundary.
pub fn coalesce_axes(p: &mut KernelProgram) {
    let mut kept = p.space.len() - p.reduce_rank;
    // Size-1 axes.
    for d in (0..p.space.len()).rev() {
        if p.space[d] != 1 {
            continue;
        }
        for m in body_maps(p) {
            m.remove_axis(d);
        }
        if d < kept {
            for m in epilogue_maps(p) {
                m.remove_axis(d);
            }
            kept -= 1;
        } else {
            p.reduce_rank -= 1;
        }
        p.space.remove(d);
    }
    // Merge neighbours, innermost first.
    let mut d = p.space.len();
    while d >= 2 {
        d -= 1;
        let a = d - 1; // merge axes a and a + 1 = d
        let same_region = d < kept || a >= kept;
        if !same_region {
            continue;
        }
        let in_kept = d < kept;
        let ok = body_maps(p).iter().all(|m| m.can_merge(a))
            && (!in_kept || epilogue_maps(p).iter().all(|m| m.can_merge(a)));
        if !ok {
            continue;
        }
        for m in body_maps(p) {
            m.merge_axes(a);
        }
        if in_kept {
            for m in epilogue_maps(p) {
                m.merge_axes(a);
            }
            kept -= 1;
        } else {
            p.reduce_rank -= 1;
        }
        p.space[a] *= p.space[d];
        p.space.remove(d);
    }
}
