//! Flash-style attention backward (`Op::AttentionGrad`), the CPU reference: the probabilities
//! are recomputed block by block from q and k and never stored whole.
//!
//! Two parallel phases, each a loop over blocks like the forward kernel:
//! - per query block: the forward again (online softmax) for the row's log-sum-exp and
//!   `D_i = rowsum(dO_i * O_i)`, then `dQ_i = scale * sum_j P_ij (dP_ij - D_i) k_j` with
//!   `dP = dO V^T`;
//! - per key block: `dV_j = sum_i P_ij dO_i` and `dK_j = scale * sum_i dS_ij q_i`, from the
//!   stored lse and D.
//!
//! No atomics and no reduction across tasks: each output row has one writer.

use super::attention::online_softmax_row;
use super::buffer::{RawBuf, SendPtr};
use super::matmul::sgemm;
use super::simd;
use qie_codegen::View;
use rayon::prelude::*;

/// Rows per block (queries in the first phase, keys in the second) and columns per inner block.
const BR: usize = 64;
const BC: usize = 128;

pub struct AttentionGradArgs<'a> {
    pub q: (RawBuf, &'a View),
    pub k: (RawBuf, &'a View),
    pub v: (RawBuf, &'a View),
    pub dout: (RawBuf, &'a View),
    pub mask: Option<(RawBuf, &'a View)>,
    /// Dense [B, Sq + 2 Sk, H, D]: dq | dk | dv.
    pub out: RawBuf,
    pub scale: f32,
}

/// A strided [B, S, H, D] f32 tensor.
#[derive(Clone, Copy)]
struct Strided<'a> {
    ptr: SendPtr<f32>,
    view: &'a View,
}

impl Strided<'_> {
    /// Rows `start..start + n` of (batch, head) into `dst` as dense [n, D], times `mul`.
    unsafe fn load(&self, bi: usize, hi: usize, start: usize, n: usize, mul: f32, dst: &mut [f32]) {
        let s = &self.view.strides;
        let d = self.view.shape[3];
        let base = self.view.offset + bi as i64 * s[0] + hi as i64 * s[2];
        for r in 0..n {
            let row = base + (start + r) as i64 * s[1];
            for c in 0..d {
                dst[r * d + c] = *self.ptr.get().offset((row + c as i64 * s[3]) as isize) * mul;
            }
        }
    }
}

/// Per task: blocks of the operands and of the score-shaped intermediates.
struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    kb: Vec<f32>,
    vb: Vec<f32>,
    s: Vec<f32>,
    dp: Vec<f32>,
    acc1: Vec<f32>,
    acc2: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
}

fn tensor<'a>((buf, view): (RawBuf, &'a View)) -> Strided<'a> {
    Strided {
        ptr: SendPtr(buf.f32_ptr()),
        view,
    }
}

/// `dst[rows, cols] = a[rows, d] * b[cols, d]^T`, all dense.
unsafe fn mul_bt(rows: usize, cols: usize, d: usize, dst: &mut [f32], a: &[f32], b: &[f32]) {
    sgemm(
        rows,
        cols,
        d,
        dst.as_mut_ptr(),
        BC as isize,
        1,
        false,
        a.as_ptr(),
        d as isize,
        1,
        b.as_ptr(),
        1,
        d as isize,
        false,
    );
}

/// # Safety
/// Buffers must hold the views (f32, bool mask); `out` must be a dense [B, Sq + 2 Sk, H, D]
/// buffer disjoint from the operands.
pub unsafe fn attention_grad(args: &AttentionGradArgs) {
    let (qv, kv) = (args.q.1, args.k.1);
    let (b, sq, h, d) = (qv.shape[0], qv.shape[1], qv.shape[2], qv.shape[3]);
    let sk = kv.shape[1];
    let rows_out = sq + 2 * sk;
    let out = SendPtr(args.out.f32_ptr());
    if b * h * d == 0 {
        return;
    }
    if sq == 0 || sk == 0 {
        std::ptr::write_bytes(out.get(), 0, b * rows_out * h * d);
        return;
    }
    let (q, k, v, dout) = (
        tensor(args.q),
        tensor(args.k),
        tensor(args.v),
        tensor(args.dout),
    );
    let keep: Vec<bool> = (0..b * sk)
        .map(|i| match args.mask {
            Some((m, mv)) => {
                let off =
                    mv.offset + (i / sk) as i64 * mv.strides[0] + (i % sk) as i64 * mv.strides[1];
                *m.ptr.offset(off as isize) != 0
            }
            None => true,
        })
        .collect();
    let scale = args.scale;
    let out_row =
        |bi: usize, s: usize, hi: usize| out.get().add(((bi * rows_out + s) * h + hi) * d);
    let new_scratch = || Scratch {
        a: vec![0.0; BC.max(BR) * d],
        b: vec![0.0; BC.max(BR) * d],
        kb: vec![0.0; BC * d],
        vb: vec![0.0; BC * d],
        s: vec![0.0; BR.max(BC) * BC],
        dp: vec![0.0; BR.max(BC) * BC],
        acc1: vec![0.0; BC.max(BR) * d],
        acc2: vec![0.0; BC.max(BR) * d],
        m: vec![0.0; BC.max(BR)],
        l: vec![0.0; BC.max(BR)],
    };

    // Phase 1, per query block: lse and D, then dQ.
    let mut lse = vec![0f32; b * h * sq];
    let mut delta = vec![0f32; b * h * sq];
    let (lse_p, delta_p) = (SendPtr(lse.as_mut_ptr()), SendPtr(delta.as_mut_ptr()));
    let nqb = sq.div_ceil(BR);
    let query_task = |st: &mut Scratch, t: usize| {
        let (bi, hi, i0) = (t / (h * nqb), (t / nqb) % h, (t % nqb) * BR);
        let rows = BR.min(sq - i0);
        let keep = &keep[bi * sk..(bi + 1) * sk];
        q.load(bi, hi, i0, rows, scale, &mut st.a);
        dout.load(bi, hi, i0, rows, 1.0, &mut st.b);
        st.m[..rows].fill(f32::NEG_INFINITY);
        st.l[..rows].fill(0.0);
        st.acc1[..rows * d].fill(0.0);
        for j0 in (0..sk).step_by(BC) {
            let cols = BC.min(sk - j0);
            k.load(bi, hi, j0, cols, 1.0, &mut st.kb);
            v.load(bi, hi, j0, cols, 1.0, &mut st.vb);
            mul_bt(rows, cols, d, &mut st.s, &st.a, &st.kb);
            for i in 0..rows {
                let srow = &mut st.s[i * BC..i * BC + cols];
                for (x, &kp) in srow.iter_mut().zip(&keep[j0..j0 + cols]) {
                    if !kp {
                        *x = f32::NEG_INFINITY;
                    }
                }
                let o = &mut st.acc1[i * d..(i + 1) * d];
                online_softmax_row(srow, &mut st.m[i], &mut st.l[i], o);
            }
            // O += P V.
            sgemm(
                rows,
                d,
                cols,
                st.acc1.as_mut_ptr(),
                d as isize,
                1,
                true,
                st.s.as_ptr(),
                BC as isize,
                1,
                st.vb.as_ptr(),
                d as isize,
                1,
                false,
            );
        }
        let row = (bi * h + hi) * sq + i0;
        for i in 0..rows {
            let l = st.l[i];
            // Every key masked: P = 0 (lse = +inf makes exp(s - lse) vanish).
            let (row_lse, row_delta) = if l > 0.0 {
                let o = &st.acc1[i * d..(i + 1) * d];
                let dot: f32 = o
                    .iter()
                    .zip(&st.b[i * d..(i + 1) * d])
                    .map(|(o, g)| o * g)
                    .sum();
                (st.m[i] + l.ln(), dot / l)
            } else {
                (f32::INFINITY, 0.0)
            };
            *lse_p.get().add(row + i) = row_lse;
            *delta_p.get().add(row + i) = row_delta;
            st.m[i] = row_lse;
            st.l[i] = row_delta;
        }
        // dQ = scale * dS K with dS = P * (dO V^T - D).
        st.acc2[..rows * d].fill(0.0);
        for j0 in (0..sk).step_by(BC) {
            let cols = BC.min(sk - j0);
            k.load(bi, hi, j0, cols, 1.0, &mut st.kb);
            v.load(bi, hi, j0, cols, 1.0, &mut st.vb);
            mul_bt(rows, cols, d, &mut st.s, &st.a, &st.kb);
            mul_bt(rows, cols, d, &mut st.dp, &st.b, &st.vb);
            scores_to_ds(st, rows, cols, &keep[j0..j0 + cols]);
            sgemm(
                rows,
                d,
                cols,
                st.acc2.as_mut_ptr(),
                d as isize,
                1,
                true,
                st.dp.as_ptr(),
                BC as isize,
                1,
                st.kb.as_ptr(),
                d as isize,
                1,
                false,
            );
        }
        for i in 0..rows {
            let dst = out_row(bi, i0 + i, hi);
            for c in 0..d {
                *dst.add(c) = st.acc2[i * d + c] * scale;
            }
        }
    };
    run_tasks(b * h * nqb, new_scratch, query_task);

    // Phase 2, per key block: dK and dV.
    let nkb = sk.div_ceil(BC);
    let (lse, delta) = (&lse, &delta);
    let key_task = |st: &mut Scratch, t: usize| {
        let (bi, hi, j0) = (t / (h * nkb), (t / nkb) % h, (t % nkb) * BC);
        let cols = BC.min(sk - j0);
        let keep = &keep[bi * sk + j0..bi * sk + j0 + cols];
        k.load(bi, hi, j0, cols, 1.0, &mut st.kb);
        v.load(bi, hi, j0, cols, 1.0, &mut st.vb);
        st.acc1[..cols * d].fill(0.0);
        st.acc2[..cols * d].fill(0.0);
        for i0 in (0..sq).step_by(BR) {
            let rows = BR.min(sq - i0);
            q.load(bi, hi, i0, rows, scale, &mut st.a);
            dout.load(bi, hi, i0, rows, 1.0, &mut st.b);
            let row = (bi * h + hi) * sq + i0;
            st.m[..rows].copy_from_slice(&lse[row..row + rows]);
            st.l[..rows].copy_from_slice(&delta[row..row + rows]);
            mul_bt(rows, cols, d, &mut st.s, &st.a, &st.kb);
            mul_bt(rows, cols, d, &mut st.dp, &st.b, &st.vb);
            scores_to_ds(st, rows, cols, keep);
            // dV += P^T dO; dK += dS^T (scale Q).
            for (acc, lhs, rhs) in [(&mut st.acc2, &st.s, &st.b), (&mut st.acc1, &st.dp, &st.a)] {
                sgemm(
                    cols,
                    d,
                    rows,
                    acc.as_mut_ptr(),
                    d as isize,
                    1,
                    true,
                    lhs.as_ptr(),
                    1,
                    BC as isize,
                    rhs.as_ptr(),
                    d as isize,
                    1,
                    false,
                );
            }
        }
        for j in 0..cols {
            let (dk, dv) = (
                out_row(bi, sq + j0 + j, hi),
                out_row(bi, sq + sk + j0 + j, hi),
            );
            for c in 0..d {
                *dk.add(c) = st.acc1[j * d + c];
                *dv.add(c) = st.acc2[j * d + c];
            }
        }
    };
    run_tasks(b * h * nkb, new_scratch, key_task);
}

/// With scores `s` (scaled) and `dp = dO V^T` for one block, and each row's lse in `m` and D in
/// `l`: `s` becomes P and `dp` becomes dS = P * (dP - D) (masked keys: 0).
fn scores_to_ds(st: &mut Scratch, rows: usize, cols: usize, keep: &[bool]) {
    for i in 0..rows {
        let (lse, delta) = (st.m[i], st.l[i]);
        let s = &mut st.s[i * BC..i * BC + cols];
        let dp = &mut st.dp[i * BC..i * BC + cols];
        for ((s, dp), &kp) in s.iter_mut().zip(dp.iter_mut()).zip(keep) {
            let p = if kp { simd::exp_f32(*s - lse) } else { 0.0 };
            *s = p;
            *dp = p * (*dp - delta);
        }
    }
}

fn run_tasks<S>(
    tasks: usize,
    new: impl Fn() -> S + Sync + Send,
    task: impl Fn(&mut S, usize) + Sync + Send,
) {
    if tasks == 1 {
        task(&mut new(), 0);
    } else {
        (0..tasks).into_par_iter().for_each_init(new, task);
    }
}
