//! Conv2d (NCHW) as im2col + GEMM, tiled over output pixels to bound the column buffer.

use super::buffer::{RawBuf, SendPtr};
use super::matmul::sgemm;
use qie_codegen::View;
use rayon::prelude::*;

/// Upper bound of the im2col buffer in elements (tiles of output pixels keep it below this).
const COL_ELEMS: usize = 1 << 22;

pub struct ConvArgs<'a> {
    pub x: (RawBuf, &'a View),
    pub w: (RawBuf, &'a View),
    pub out: RawBuf,
    pub out_shape: [usize; 4],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

/// Stride of the merged trailing axes `[C, KH, KW]` of the weight view, if they merge.
fn weight_row_stride(w: &View) -> Option<i64> {
    let dims: Vec<(usize, i64)> = (1..4)
        .map(|d| (w.shape[d], w.strides[d]))
        .filter(|&(n, _)| n != 1)
        .collect();
    for p in dims.windows(2) {
        if p[0].1 != p[1].1 * p[1].0 as i64 {
            return None;
        }
    }
    Some(dims.last().map(|d| d.1).unwrap_or(1))
}

/// # Safety
/// Buffers must hold the views; `out` is dense [N, O, OH, OW] and disjoint from the operands.
pub unsafe fn conv2d(a: &ConvArgs) {
    let (xb, xv) = a.x;
    let (wb, wv) = a.w;
    let [n, o, oh, ow] = a.out_shape;
    let (hh, ww) = (xv.shape[2], xv.shape[3]);
    let (cg, kh, kw) = (wv.shape[1], wv.shape[2], wv.shape[3]);
    let g = a.groups;
    let og = o / g;
    let p_total = oh * ow;
    let kdim = cg * kh * kw;
    if n * o * p_total == 0 {
        return;
    }
    // Weight rows as a strided matrix [O, Cg*KH*KW]; copy to dense if the axes do not merge.
    let dense_w: Vec<f32>;
    let (w_ptr, w_off, w_rs, w_cs) = match weight_row_stride(wv) {
        Some(cs) => (wb.f32_ptr() as *const f32, wv.offset, wv.strides[0], cs),
        None => {
            let mut v = Vec::with_capacity(o * kdim);
            for oi in 0..o {
                for r in 0..kdim {
                    let (ci, ky, kx) = (r / (kh * kw), (r / kw) % kh, r % kw);
                    v.push(
                        *wb.f32_ptr()
                            .offset(wv.offset_of(&[oi, ci, ky, kx]) as isize),
                    );
                }
            }
            dense_w = v;
            (dense_w.as_ptr(), 0, kdim as i64, 1)
        }
    };
    let xs = &xv.strides;
    let xp = SendPtr(xb.f32_ptr());
    let outp = a.out.f32_ptr();
    let pointwise = kh == 1
        && kw == 1
        && a.stride == [1, 1]
        && a.padding == [0, 0]
        && (hh == 1 || ww == 1 || xs[2] == xs[3] * ww as i64);
    let tile = if pointwise {
        p_total
    } else {
        (COL_ELEMS / kdim.max(1)).clamp(1, p_total)
    };
    let mut col = if pointwise {
        vec![]
    } else {
        vec![0f32; kdim * tile]
    };
    let [sy, sx] = a.stride;
    let [py, px] = a.padding;
    let [dy, dx] = a.dilation;
    for ni in 0..n {
        for gi in 0..g {
            let x_base = xv.offset + ni as i64 * xs[0] + (gi * cg) as i64 * xs[1];
            let mut p0 = 0;
            while p0 < p_total {
                let cols = tile.min(p_total - p0);
                let (rhs, rhs_rs, rhs_cs) = if pointwise {
                    let inner = if ww > 1 { xs[3] } else { xs[2] };
                    (xp.get().offset(x_base as isize) as *const f32, xs[1], inner)
                } else {
                    // im2col rows in parallel: row r = (ci, ky, kx), column t = output pixel p0 + t.
                    col[..kdim * cols]
                        .par_chunks_mut(cols)
                        .enumerate()
                        .for_each(|(r, row)| {
                            let (ci, ky, kx) = (r / (kh * kw), (r / kw) % kh, r % kw);
                            let cbase = x_base + ci as i64 * xs[1];
                            for (t, v) in row.iter_mut().enumerate() {
                                let p = p0 + t;
                                let (oy, ox) = (p / ow, p % ow);
                                let iy = (oy * sy + ky * dy) as i64 - py as i64;
                                let ix = (ox * sx + kx * dx) as i64 - px as i64;
                                *v = if iy < 0 || iy >= hh as i64 || ix < 0 || ix >= ww as i64 {
                                    0.0
                                } else {
                                    *xp.get().offset((cbase + iy * xs[2] + ix * xs[3]) as isize)
                                };
                            }
                        });
                    (col.as_ptr(), cols as i64, 1)
                };
                sgemm(
                    og,
                    cols,
                    kdim,
                    outp.add((ni * o + gi * og) * p_total + p0),
                    p_total as isize,
                    1,
                    false,
                    w_ptr.offset((w_off + (gi * og) as i64 * w_rs) as isize),
                    w_rs as isize,
                    w_cs as isize,
                    rhs,
                    rhs_rs as isize,
                    rhs_cs as isize,
                    true,
                );
                p0 += cols;
            }
        }
    }
}
