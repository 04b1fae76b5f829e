//! Flash-style attention: blocks of queries against blocks of keys with an online softmax, so the
//! full [Sq, Sk] score matrix never exists. Parallel over (batch, head, query block); the two
//! inner products per block go through `gemm` (single-threaded inside a task).

use super::buffer::{RawBuf, SendPtr};
use super::matmul::sgemm;
use super::simd;
use qie_codegen::View;
use rayon::prelude::*;

/// Query rows per task.
const BQ: usize = 128;
/// Keys per block.
const BK: usize = 256;

pub struct AttentionArgs<'a> {
    pub q: (RawBuf, &'a View),
    pub k: (RawBuf, &'a View),
    pub v: (RawBuf, &'a View),
    pub mask: Option<(RawBuf, &'a View)>,
    pub out: RawBuf,
    pub scale: f32,
}

struct Scratch {
    q: Vec<f32>,
    s: Vec<f32>,
    o: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    keep: Vec<bool>,
}

/// # Safety
/// Buffers must hold the views (f32, bool mask) and `out` must be a dense [B, Sq, H, Dv] buffer
/// disjoint from the operands.
pub unsafe fn attention(args: &AttentionArgs) {
    let (qb, qv) = args.q;
    let (kb, kv) = args.k;
    let (vb, vv) = args.v;
    let (b, sq, h, d) = (qv.shape[0], qv.shape[1], qv.shape[2], qv.shape[3]);
    let sk = kv.shape[1];
    let dv = vv.shape[3];
    if b * sq * h * dv == 0 {
        return;
    }
    let nqb = sq.div_ceil(BQ);
    let (qp, kp, vp) = (
        SendPtr(qb.f32_ptr()),
        SendPtr(kb.f32_ptr()),
        SendPtr(vb.f32_ptr()),
    );
    let mp = args.mask.map(|(m, mv)| (SendPtr(m.ptr), mv));
    let op = SendPtr(args.out.f32_ptr());
    let scale = args.scale;
    let task = |st: &mut Scratch, t: usize| {
        let bi = t / (h * nqb);
        let hi = (t / nqb) % h;
        let q0 = (t % nqb) * BQ;
        let rows = BQ.min(sq - q0);
        let qs = &qv.strides;
        let q_base = qv.offset + bi as i64 * qs[0] + hi as i64 * qs[2];
        for i in 0..rows {
            let row = q_base + (q0 + i) as i64 * qs[1];
            for c in 0..d {
                st.q[i * d + c] = *qp.get().offset((row + c as i64 * qs[3]) as isize) * scale;
            }
        }
        st.m[..rows].fill(f32::NEG_INFINITY);
        st.l[..rows].fill(0.0);
        st.o[..rows * dv].fill(0.0);
        let ks = &kv.strides;
        let vs = &vv.strides;
        let k_base = kv.offset + bi as i64 * ks[0] + hi as i64 * ks[2];
        let v_base = vv.offset + bi as i64 * vs[0] + hi as i64 * vs[2];
        let mut j0 = 0;
        while j0 < sk {
            let cols = BK.min(sk - j0);
            let mut any_masked = false;
            if let Some((m, mv)) = mp {
                for j in 0..cols {
                    let off =
                        mv.offset + bi as i64 * mv.strides[0] + (j0 + j) as i64 * mv.strides[1];
                    let keep = *(m.get().offset(off as isize)) != 0;
                    st.keep[j] = keep;
                    any_masked |= !keep;
                }
            }
            // S = (scale * Q) K^T over this key block.
            sgemm(
                rows,
                cols,
                d,
                st.s.as_mut_ptr(),
                BK as isize,
                1,
                false,
                st.q.as_ptr(),
                d as isize,
                1,
                kp.get().offset((k_base + j0 as i64 * ks[1]) as isize),
                ks[3] as isize,
                ks[1] as isize,
                false,
            );
            for i in 0..rows {
                let srow = &mut st.s[i * BK..i * BK + cols];
                if any_masked {
                    for (x, &keep) in srow.iter_mut().zip(&st.keep[..cols]) {
                        if !keep {
                            *x = f32::NEG_INFINITY;
                        }
                    }
                }
                online_softmax_row(
                    srow,
                    &mut st.m[i],
                    &mut st.l[i],
                    &mut st.o[i * dv..(i + 1) * dv],
                );
            }
            // O += P V over this key block.
            sgemm(
                rows,
                dv,
                cols,
                st.o.as_mut_ptr(),
                dv as isize,
                1,
                true,
                st.s.as_ptr(),
                BK as isize,
                1,
                vp.get().offset((v_base + j0 as i64 * vs[1]) as isize),
                vs[1] as isize,
                vs[3] as isize,
                false,
            );
            j0 += cols;
        }
        for i in 0..rows {
            let dst = op.get().add(((bi * sq + q0 + i) * h + hi) * dv);
            let l = st.l[i];
            let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
            for c in 0..dv {
                // Rows with every key masked are zeros (the reference's definition).
                *dst.add(c) = if l > 0.0 { st.o[i * dv + c] * inv } else { 0.0 };
            }
        }
    };
    let new_scratch = || Scratch {
        q: vec![0.0; BQ * d],
        s: vec![0.0; BQ * BK],
        o: vec![0.0; BQ * dv],
        m: vec![0.0; BQ],
        l: vec![0.0; BQ],
        keep: vec![true; BK],
    };
    let tasks = b * h * nqb;
    if tasks == 1 {
        task(&mut new_scratch(), 0);
    } else {
        (0..tasks).into_par_iter().for_each_init(new_scratch, task);
    }
}

/// One block of the online softmax for one query row: `s` holds the row's scaled scores over the
/// block (masked keys -inf) and becomes exp(s - m_new); the running max `m`, the running sum `l`
/// and the output accumulator `o` are updated / rescaled. Keys all masked so far contribute 0.
pub(super) fn online_softmax_row(s: &mut [f32], m: &mut f32, l: &mut f32, o: &mut [f32]) {
    let m_new = simd::max_f32(*m, simd::max_slice(s));
    if m_new == f32::NEG_INFINITY {
        s.fill(0.0);
        return;
    }
    let corr = simd::exp_f32(*m - m_new);
    let sum = simd::exp_sub_sum(s, m_new);
    *l = *l * corr + sum;
    if corr != 1.0 {
        simd::scale(o, corr);
    }
    *m = m_new;
}
