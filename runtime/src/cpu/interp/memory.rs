//! Moving one chunk between registers and buffers through index maps: loads, stores, gathers
//! and the iota coordinate, all walking the chunk as runs along the innermost axis.

use super::plan::MapPlan;
use super::BadIndex;
use crate::cpu::buffer::RawBuf;
use smallvec::SmallVec;

/// Calls `f(pos, base, seg)` for each run of consecutive elements along the innermost axis in
/// the chunk `[start, start + len)` of `space`; the run's offsets are `base + j * inner_stride`.
#[inline]
fn for_segments(
    space: &[usize],
    strides: &[i64],
    offset: i64,
    start: usize,
    len: usize,
    mut f: impl FnMut(usize, i64, usize),
) {
    let r = space.len();
    if r == 0 {
        f(0, offset, len);
        return;
    }
    let inner = space[r - 1];
    let mut idx: SmallVec<[usize; 8]> = SmallVec::from_elem(0, r);
    let mut rem = start;
    for d in (0..r).rev() {
        idx[d] = rem % space[d];
        rem /= space[d];
    }
    let mut base = offset
        + idx
            .iter()
            .zip(strides)
            .map(|(&i, &s)| i as i64 * s)
            .sum::<i64>();
    let mut p = 0;
    while p < len {
        let seg = (inner - idx[r - 1]).min(len - p);
        f(p, base, seg);
        p += seg;
        if p >= len {
            break;
        }
        // Advance to the start of the next row (the segment ended at the row's end).
        base -= idx[r - 1] as i64 * strides[r - 1];
        idx[r - 1] = 0;
        let mut d = r - 1;
        loop {
            if d == 0 {
                break;
            }
            d -= 1;
            idx[d] += 1;
            base += strides[d];
            if idx[d] < space[d] {
                break;
            }
            base -= space[d] as i64 * strides[d];
            idx[d] = 0;
        }
    }
}

fn inner_stride(strides: &[i64]) -> i64 {
    strides.last().copied().unwrap_or(0)
}

/// Offsets of every element of the chunk.
pub(super) fn chunk_offsets(map: &MapPlan, space: &[usize], start: usize, out: &mut [i64]) {
    let len = out.len();
    let (offset, strides) = match map {
        MapPlan::Strided { offset, strides } => (*offset, strides.as_slice()),
        MapPlan::General { map } => (map.top().offset, map.top().strides.as_slice()),
    };
    let s = inner_stride(strides);
    for_segments(space, strides, offset, start, len, |p, base, seg| {
        for (j, o) in out[p..p + seg].iter_mut().enumerate() {
            *o = base + j as i64 * s;
        }
    });
    if let MapPlan::General { map } = map {
        for o in out.iter_mut() {
            *o = map.resolve_lower(*o);
        }
    }
}

/// Loads the chunk into `dst`; `offsets` is scratch.
pub(super) fn load<T: Copy>(
    dst: &mut [T],
    buf: RawBuf,
    map: &MapPlan,
    space: &[usize],
    start: usize,
    offsets: &mut [i64],
) {
    let len = dst.len();
    let src = buf.ptr as *const T;
    match map {
        MapPlan::Strided { offset, strides } => {
            let s = inner_stride(strides);
            for_segments(space, strides, *offset, start, len, |p, base, seg| {
                let d = &mut dst[p..p + seg];
                // SAFETY: maps were checked against the buffer length (check_buffers).
                unsafe {
                    if s == 1 {
                        std::ptr::copy_nonoverlapping(
                            src.offset(base as isize),
                            d.as_mut_ptr(),
                            seg,
                        );
                    } else if s == 0 {
                        d.fill(*src.offset(base as isize));
                    } else {
                        for (j, v) in d.iter_mut().enumerate() {
                            *v = *src.offset((base + j as i64 * s) as isize);
                        }
                    }
                }
            });
        }
        MapPlan::General { .. } => {
            let offsets = &mut offsets[..len];
            chunk_offsets(map, space, start, offsets);
            for (v, &o) in dst.iter_mut().zip(offsets.iter()) {
                // SAFETY: as above.
                *v = unsafe { *src.offset(o as isize) };
            }
        }
    }
}

/// Stores the chunk `val`; `offsets` is scratch.
pub(super) fn store<T: Copy>(
    val: &[T],
    buf: RawBuf,
    map: &MapPlan,
    space: &[usize],
    start: usize,
    offsets: &mut [i64],
) {
    let len = val.len();
    let dst = buf.ptr as *mut T;
    match map {
        MapPlan::Strided { offset, strides } => {
            let s = inner_stride(strides);
            for_segments(space, strides, *offset, start, len, |p, base, seg| {
                let v = &val[p..p + seg];
                // SAFETY: maps were checked against the buffer length; chunks write disjoint
                // elements (stores are injective).
                unsafe {
                    if s == 1 {
                        std::ptr::copy_nonoverlapping(v.as_ptr(), dst.offset(base as isize), seg);
                    } else {
                        for (j, &x) in v.iter().enumerate() {
                            *dst.offset((base + j as i64 * s) as isize) = x;
                        }
                    }
                }
            });
        }
        MapPlan::General { .. } => {
            let offsets = &mut offsets[..len];
            chunk_offsets(map, space, start, offsets);
            for (&x, &o) in val.iter().zip(offsets.iter()) {
                // SAFETY: as above.
                unsafe { *dst.offset(o as isize) = x };
            }
        }
    }
}

/// Adds `index[i] * stride` to `offsets[i]`, or reports the first index outside
/// `0..axis_len`. The whole chunk is checked and the verdict read after the loop, so the loop
/// stays branch-free (one compare per element).
pub(super) fn add_gather_offsets<I: Copy + Into<i64>>(
    offsets: &mut [i64],
    index: &[I],
    stride: i64,
    axis_len: usize,
) -> Result<(), BadIndex> {
    let limit = axis_len as u64;
    let mut bad = false;
    for (o, &i) in offsets.iter_mut().zip(index) {
        let i: i64 = i.into();
        // As unsigned, a negative index is out of range too. Wrapping: an out-of-range offset
        // is never used.
        bad |= i as u64 >= limit;
        *o = o.wrapping_add(i.wrapping_mul(stride));
    }
    if bad {
        if let Some(index) = index.iter().map(|&i| i.into()).find(|&i| i as u64 >= limit) {
            return Err(BadIndex { index, axis_len });
        }
    }
    Ok(())
}

/// Reads `dst[i] = buf[offsets[i]]`; the offsets come from [`add_gather_offsets`].
pub(super) fn gather<T: Copy>(dst: &mut [T], buf: RawBuf, offsets: &[i64]) {
    let src = buf.ptr as *const T;
    for (v, &o) in dst.iter_mut().zip(offsets) {
        // SAFETY: the table covers every index in `0..axis_len` (check_buffers) and the indices
        // were checked to lie there (add_gather_offsets).
        *v = unsafe { *src.offset(o as isize) };
    }
}
