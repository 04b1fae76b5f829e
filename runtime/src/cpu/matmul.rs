//! Batched matmul on the `gemm` crate (f32, arbitrary strides, multithreaded).

use super::buffer::RawBuf;
use gemm::Parallelism;
use qie_codegen::View;
use rayon::prelude::*;

/// Below this many multiply-adds a GEMM runs single-threaded (batches still run in parallel).
const PARALLEL_MACS: usize = 1 << 18;

pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// `dst[i, j] (+)= sum_p a[i, p] * b[p, j]` with element strides (row, column) for each matrix.
///
/// # Safety
/// Pointers must be valid for every element the strides reach; `dst` must not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    dst_cs: isize,
    accumulate: bool,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    b_cs: isize,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    *dst.offset(i as isize * dst_rs + j as isize * dst_cs) = 0.0;
                }
            }
        }
        return;
    }
    let par = if parallel && m * n * k >= PARALLEL_MACS && threads() > 1 {
        Parallelism::Rayon(threads())
    } else {
        Parallelism::None
    };
    gemm::gemm(
        m, n, k, dst, dst_cs, dst_rs, accumulate, a, a_cs, a_rs, b, b_cs, b_rs, 1.0, 1.0, false,
        false, false, par,
    );
}

/// Strides of a view's axes after dropping size-1 axes; `Some(stride)` if the listed axes form
/// one strided axis (their sizes multiply).
fn merged_stride(shape: &[usize], strides: &[i64]) -> Option<i64> {
    let dims: Vec<(usize, i64)> = shape
        .iter()
        .zip(strides)
        .filter(|(&n, _)| n != 1)
        .map(|(&n, &s)| (n, s))
        .collect();
    for w in dims.windows(2) {
        if w[0].1 != w[1].1 * w[1].0 as i64 {
            return None;
        }
    }
    Some(dims.last().map(|d| d.1).unwrap_or(0))
}

/// A matmul with operand layouts resolved.
#[derive(Clone, Debug)]
pub struct MatMulPlan {
    batch: Vec<usize>,
    a_batch: Vec<i64>,
    b_batch: Option<Vec<i64>>,
    a_off: i64,
    b_off: i64,
    m: usize,
    n: usize,
    k: usize,
    a_rs: i64,
    a_cs: i64,
    b_rs: i64,
    b_cs: i64,
}

impl MatMulPlan {
    pub fn new(a: &View, b: &View, ta: bool, tb: bool) -> MatMulPlan {
        let (ra, rb) = (a.rank(), b.rank());
        let (a0, a1) = (a.shape[ra - 2], a.shape[ra - 1]);
        let (sa0, sa1) = (a.strides[ra - 2], a.strides[ra - 1]);
        let (b0, b1) = (b.shape[rb - 2], b.shape[rb - 1]);
        let (sb0, sb1) = (b.strides[rb - 2], b.strides[rb - 1]);
        let (m, k, a_rs, a_cs) = if ta {
            (a1, a0, sa1, sa0)
        } else {
            (a0, a1, sa0, sa1)
        };
        let (n, b_rs, b_cs) = if tb { (b0, sb1, sb0) } else { (b1, sb0, sb1) };
        let mut plan = MatMulPlan {
            batch: a.shape[..ra - 2].to_vec(),
            a_batch: a.strides[..ra - 2].to_vec(),
            b_batch: (rb > 2).then(|| b.strides[..rb - 2].to_vec()),
            a_off: a.offset,
            b_off: b.offset,
            m,
            n,
            k,
            a_rs,
            a_cs,
            b_rs,
            b_cs,
        };
        // A shared b and batch axes that continue a's row axis: one GEMM with batch * m rows.
        if plan.b_batch.is_none() && !plan.batch.is_empty() && !ta {
            let mut shape = plan.batch.clone();
            shape.push(a0);
            let mut strides = plan.a_batch.clone();
            strides.push(sa0);
            if let Some(rs) = merged_stride(&shape, &strides) {
                plan.m *= plan.batch.iter().product::<usize>();
                plan.a_rs = if plan.m > 1 { rs } else { plan.a_rs };
                plan.batch.clear();
                plan.a_batch.clear();
            }
        }
        plan
    }

    /// `batch x m x k x n` for reports.
    pub fn describe(&self) -> String {
        format!("{:?} x {}x{}x{}", self.batch, self.m, self.k, self.n)
    }

    /// # Safety
    /// Buffers must hold the views the plan was built from; `out` is dense and disjoint from both.
    pub unsafe fn run(&self, a: RawBuf, b: RawBuf, out: RawBuf) {
        let batches: usize = self.batch.iter().product();
        let mn = self.m * self.n;
        let (ap, bp, op) = (
            super::buffer::SendPtr(a.f32_ptr()),
            super::buffer::SendPtr(b.f32_ptr()),
            super::buffer::SendPtr(out.f32_ptr()),
        );
        let one = |bi: usize, parallel: bool| {
            let (mut ao, mut bo) = (self.a_off, self.b_off);
            let mut rem = bi;
            for d in (0..self.batch.len()).rev() {
                let i = (rem % self.batch[d]) as i64;
                rem /= self.batch[d];
                ao += i * self.a_batch[d];
                if let Some(bb) = &self.b_batch {
                    bo += i * bb[d];
                }
            }
            sgemm(
                self.m,
                self.n,
                self.k,
                op.get().add(bi * mn),
                self.n as isize,
                1,
                false,
                ap.get().offset(ao as isize),
                self.a_rs as isize,
                self.a_cs as isize,
                bp.get().offset(bo as isize),
                self.b_rs as isize,
                self.b_cs as isize,
                parallel,
            );
        };
        let macs = self.m * self.n * self.k;
        if batches <= 1 || macs >= PARALLEL_MACS * 4 {
            for bi in 0..batches {
                one(bi, true);
            }
        } else {
            (0..batches).into_par_iter().for_each(|bi| one(bi, false));
        }
    }
}
