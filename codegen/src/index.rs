//! Index maps: from a kernel's iteration multi-index to an element offset in a buffer.
//!
//! A map is a stack of strided [`View`]s (the idea of tinygrad's ShapeTracker). The first view is
//! indexed by the kernel's multi-index and yields `offset + sum(i_d * stride_d)`. When there is a
//! single view that number is the buffer offset: the map is affine ("strided"), so a backend can
//! vectorise along the innermost axis. Each further view reinterprets the number produced by the
//! view above it as a row-major flat index into its own shape (unravel by div/mod), then applies
//! its strides. Views are only stacked after a reshape that cannot be expressed with strides (for
//! example merging two axes after a transpose), so most maps stay strided.
//!
//! Maps are built forward: start from the contiguous layout of a buffer and apply the view ops
//! (`Transpose`, `Broadcast`, `Slice`, `Reshape`) met on the way from the buffer to the kernel.

use qie_ir::types::ShapeDisplay;
use qie_ir::{contiguous_strides, Op, Shape};
use smallvec::SmallVec;
use std::fmt;

/// Strides in elements; may be zero (broadcast).
pub type Strides = SmallVec<[i64; 6]>;

/// One strided view: `offset + sum(index[d] * strides[d])` over `shape`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct View {
    pub shape: Shape,
    pub strides: Strides,
    pub offset: i64,
}

impl View {
    /// Lowest and highest element offsets the view touches (inclusive); None when it is empty.
    /// Backends check these against their buffers when they bind a plan.
    pub fn extent(&self) -> Option<(i64, i64)> {
        if self.shape.contains(&0) {
            return None;
        }
        let (mut lo, mut hi) = (self.offset, self.offset);
        for (&n, &s) in self.shape.iter().zip(&self.strides) {
            let span = (n as i64 - 1) * s;
            if span < 0 {
                lo += span;
            } else {
                hi += span;
            }
        }
        Some((lo, hi))
    }

    /// The row-major layout of a dense buffer of `shape`.
    pub fn contiguous(shape: &[usize]) -> View {
        let strides = contiguous_strides(shape)
            .iter()
            .map(|&s| s as i64)
            .collect();
        View {
            shape: SmallVec::from_slice(shape),
            strides,
            offset: 0,
        }
        .canonical()
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Size-1 axes get stride 0 so that equal maps compare equal.
    fn canonical(mut self) -> View {
        for (n, s) in self.shape.iter().zip(self.strides.iter_mut()) {
            if *n == 1 {
                *s = 0;
            }
        }
        self
    }

    /// True if this is the row-major layout of its shape starting at offset 0.
    pub fn is_contiguous(&self) -> bool {
        self.offset == 0 && self.strides == View::contiguous(&self.shape).strides
    }

    /// The offset of one multi-index.
    pub fn offset_of(&self, index: &[usize]) -> i64 {
        debug_assert_eq!(index.len(), self.rank());
        self.offset
            + index
                .iter()
                .zip(&self.strides)
                .map(|(&i, &s)| i as i64 * s)
                .sum::<i64>()
    }

    /// Maps a row-major flat index into this view's shape to an offset.
    pub fn offset_of_flat(&self, mut flat: i64) -> i64 {
        let mut off = self.offset;
        for d in (0..self.rank()).rev() {
            let n = self.shape[d] as i64;
            if n == 0 {
                return off;
            }
            off += (flat % n) * self.strides[d];
            flat /= n;
        }
        off
    }

    /// The same elements seen with another shape, if strides can express it (numpy's rule for
    /// reshaping without a copy).
    pub fn reshaped(&self, new_shape: &[usize]) -> Option<View> {
        let numel = self.numel();
        debug_assert_eq!(numel, new_shape.iter().product::<usize>());
        if numel == 0 {
            return Some(View {
                offset: self.offset,
                ..View::contiguous(new_shape)
            });
        }
        let old: SmallVec<[(usize, i64); 6]> = self
            .shape
            .iter()
            .zip(&self.strides)
            .filter(|(&n, _)| n != 1)
            .map(|(&n, &s)| (n, s))
            .collect();
        let mut strides: Strides = SmallVec::from_elem(0, new_shape.len());
        let (mut i, mut j) = (0, 0);
        while j < new_shape.len() {
            if new_shape[j] == 1 {
                j += 1;
                continue;
            }
            // One group: old axes i..i2 and new axes j..j2 with equal products.
            let (mut po, mut i2) = (old[i].0, i + 1);
            let (mut pn, mut j2) = (new_shape[j], j + 1);
            while po != pn {
                if po < pn {
                    po *= old[i2].0;
                    i2 += 1;
                } else {
                    pn *= new_shape[j2];
                    j2 += 1;
                }
            }
            for t in i..i2 - 1 {
                if old[t].1 != old[t + 1].1 * old[t + 1].0 as i64 {
                    return None;
                }
            }
            let mut stride = old[i2 - 1].1;
            for t in (j..j2).rev() {
                strides[t] = stride;
                stride *= new_shape[t] as i64;
            }
            i = i2;
            j = j2;
        }
        Some(
            View {
                shape: SmallVec::from_slice(new_shape),
                strides,
                offset: self.offset,
            }
            .canonical(),
        )
    }
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:(", ShapeDisplay(&self.shape))?;
        for (i, s) in self.strides.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{s}")?;
        }
        write!(f, ")+{}", self.offset)
    }
}

/// A map from a kernel multi-index to a buffer offset: a stack of views (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IndexMap {
    /// `views[0]` is indexed by the kernel; the last view yields the buffer offset.
    views: SmallVec<[View; 2]>,
}

impl IndexMap {
    /// The identity map of a dense row-major buffer.
    pub fn contiguous(shape: &[usize]) -> IndexMap {
        IndexMap::strided(View::contiguous(shape))
    }

    pub fn strided(view: View) -> IndexMap {
        IndexMap {
            views: smallvec::smallvec![view.canonical()],
        }
    }

    /// Builds a map from views, kernel-facing first.
    pub fn from_views(views: Vec<View>) -> IndexMap {
        assert!(!views.is_empty(), "an index map needs at least one view");
        IndexMap {
            views: views.into_iter().map(View::canonical).collect(),
        }
    }

    pub fn views(&self) -> &[View] {
        &self.views
    }

    /// The kernel-facing view.
    pub fn top(&self) -> &View {
        &self.views[0]
    }

    /// The kernel index space this map is defined over.
    pub fn shape(&self) -> &[usize] {
        &self.views[0].shape
    }

    pub fn rank(&self) -> usize {
        self.views[0].rank()
    }

    /// The single view if the map is affine in the kernel index.
    pub fn as_strided(&self) -> Option<&View> {
        (self.views.len() == 1).then(|| &self.views[0])
    }

    /// True for the identity map of a dense buffer (offset = row-major flat kernel index).
    pub fn is_contiguous(&self) -> bool {
        self.as_strided().is_some_and(View::is_contiguous)
    }

    /// Offset of one kernel multi-index (reference implementation; backends specialise).
    pub fn offset_of(&self, index: &[usize]) -> i64 {
        let mut off = self.views[0].offset_of(index);
        for v in &self.views[1..] {
            off = v.offset_of_flat(off);
        }
        off
    }

    /// Offset of the buffer element for a value produced by the top view (used after computing
    /// the top view's affine part incrementally).
    pub fn resolve_lower(&self, top_offset: i64) -> i64 {
        let mut off = top_offset;
        for v in &self.views[1..] {
            off = v.offset_of_flat(off);
        }
        off
    }

    fn top_mut(&mut self) -> &mut View {
        &mut self.views[0]
    }

    pub fn transpose(&self, perm: &[usize]) -> IndexMap {
        let mut m = self.clone();
        let t = m.top_mut();
        t.shape = perm.iter().map(|&p| self.views[0].shape[p]).collect();
        t.strides = perm.iter().map(|&p| self.views[0].strides[p]).collect();
        m
    }

    /// Numpy broadcasting to `shape` (operand axes right-aligned).
    pub fn broadcast(&self, shape: &[usize]) -> IndexMap {
        let mut m = self.clone();
        let top = &self.views[0];
        let lead = shape.len() - top.rank();
        let t = m.top_mut();
        t.shape = SmallVec::from_slice(shape);
        t.strides = (0..shape.len())
            .map(|d| {
                if d < lead || top.shape[d - lead] != shape[d] {
                    0
                } else {
                    top.strides[d - lead]
                }
            })
            .collect();
        m
    }

    pub fn slice(&self, axis: usize, start: usize, end: usize) -> IndexMap {
        let mut m = self.clone();
        let t = m.top_mut();
        t.offset += start as i64 * t.strides[axis];
        t.shape[axis] = end - start;
        let t = t.clone().canonical();
        m.views[0] = t;
        m
    }

    pub fn reshape(&self, shape: &[usize]) -> IndexMap {
        let mut m = self.clone();
        match self.views[0].reshaped(shape) {
            Some(v) => m.views[0] = v,
            None => m.views.insert(0, View::contiguous(shape)),
        }
        m
    }

    /// Applies a view op (`Transpose`, `Broadcast`, `Slice`, `Reshape`); `None` for other ops.
    pub fn apply(&self, op: &Op) -> Option<IndexMap> {
        Some(match op {
            Op::Transpose { perm } => self.transpose(perm),
            Op::Broadcast { shape } => self.broadcast(shape),
            Op::Slice { axis, start, end } => self.slice(*axis, *start, *end),
            Op::Reshape { shape } => self.reshape(shape),
            _ => return None,
        })
    }

    /// Removes kernel axis `d`, which must have size 1.
    pub fn remove_axis(&mut self, d: usize) {
        let t = self.top_mut();
        debug_assert_eq!(t.shape[d], 1);
        t.shape.remove(d);
        t.strides.remove(d);
    }

    /// True if kernel axes `d` and `d + 1` can be merged into one strided axis.
    pub fn can_merge(&self, d: usize) -> bool {
        let t = self.top();
        t.strides[d] == t.strides[d + 1] * t.shape[d + 1] as i64
    }

    /// Merges kernel axes `d` and `d + 1` (check [`IndexMap::can_merge`] first).
    pub fn merge_axes(&mut self, d: usize) {
        let t = self.top_mut();
        t.shape[d] *= t.shape[d + 1];
        t.strides[d] = t.strides[d + 1];
        t.shape.remove(d + 1);
        t.strides.remove(d + 1);
        let c = t.clone().canonical();
        *t = c;
    }

    /// The offset as an index expression over kernel variables `i0, i1, ..` (for renderers).
    pub fn to_expr(&self) -> IndexExpr {
        let top = self.top();
        let mut e = IndexExpr::Const(top.offset);
        for (d, (&n, &s)) in top.shape.iter().zip(&top.strides).enumerate() {
            if n > 1 {
                e = IndexExpr::add(e, IndexExpr::mul(IndexExpr::Var(d), s));
            }
        }
        let ranges: Vec<usize> = top.shape.to_vec();
        for v in &self.views[1..] {
            let flat = e;
            let mut next = IndexExpr::Const(v.offset);
            let cs = contiguous_strides(&v.shape);
            for d in 0..v.rank() {
                if v.shape[d] == 1 || v.strides[d] == 0 {
                    continue;
                }
                let q = IndexExpr::div(flat.clone(), cs[d] as i64, &ranges);
                let r = IndexExpr::rem(q, v.shape[d] as i64, &ranges);
                next = IndexExpr::add(next, IndexExpr::mul(r, v.strides[d]));
            }
            e = next;
        }
        e
    }
}

impl fmt::Display for IndexMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.views.iter().enumerate() {
            if i > 0 {
                f.write_str(" -> ")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

/// An integer index expression over kernel variables (`Var(d)` is the index along axis `d`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IndexExpr {
    Var(usize),
    Const(i64),
    Add(Box<IndexExpr>, Box<IndexExpr>),
    Mul(Box<IndexExpr>, i64),
    /// Division of a non-negative value (truncating = flooring).
    Div(Box<IndexExpr>, i64),
    Rem(Box<IndexExpr>, i64),
}

impl IndexExpr {
    fn add(a: IndexExpr, b: IndexExpr) -> IndexExpr {
        match (a, b) {
            (IndexExpr::Const(0), e) | (e, IndexExpr::Const(0)) => e,
            (IndexExpr::Const(x), IndexExpr::Const(y)) => IndexExpr::Const(x + y),
            (a, b) => IndexExpr::Add(Box::new(a), Box::new(b)),
        }
    }

    fn mul(a: IndexExpr, k: i64) -> IndexExpr {
        match (a, k) {
            (_, 0) => IndexExpr::Const(0),
            (e, 1) => e,
            (IndexExpr::Const(x), k) => IndexExpr::Const(x * k),
            (e, k) => IndexExpr::Mul(Box::new(e), k),
        }
    }

    fn div(a: IndexExpr, k: i64, ranges: &[usize]) -> IndexExpr {
        if k == 1 {
            return a;
        }
        if a.max_value(ranges) < k {
            return IndexExpr::Const(0);
        }
        match a {
            IndexExpr::Const(x) => IndexExpr::Const(x / k),
            a => IndexExpr::Div(Box::new(a), k),
        }
    }

    fn rem(a: IndexExpr, k: i64, ranges: &[usize]) -> IndexExpr {
        if k == 1 {
            return IndexExpr::Const(0);
        }
        if a.max_value(ranges) < k {
            return a;
        }
        match a {
            IndexExpr::Const(x) => IndexExpr::Const(x % k),
            a => IndexExpr::Rem(Box::new(a), k),
        }
    }

    /// An upper bound of the value when `Var(d)` ranges over `0..ranges[d]` (strides may be
    /// negative only in exotic maps; then the bound is conservative through `abs`).
    pub fn max_value(&self, ranges: &[usize]) -> i64 {
        match self {
            IndexExpr::Var(d) => ranges[*d] as i64 - 1,
            IndexExpr::Const(c) => *c,
            IndexExpr::Add(a, b) => a.max_value(ranges) + b.max_value(ranges),
            IndexExpr::Mul(a, k) => a.max_value(ranges) * k.abs(),
            IndexExpr::Div(a, k) => a.max_value(ranges) / k,
            IndexExpr::Rem(a, k) => a.max_value(ranges).min(k - 1),
        }
    }

    /// Evaluates the expression at a kernel multi-index.
    pub fn eval(&self, index: &[usize]) -> i64 {
        match self {
            IndexExpr::Var(d) => index[*d] as i64,
            IndexExpr::Const(c) => *c,
            IndexExpr::Add(a, b) => a.eval(index) + b.eval(index),
            IndexExpr::Mul(a, k) => a.eval(index) * k,
            IndexExpr::Div(a, k) => a.eval(index) / k,
            IndexExpr::Rem(a, k) => a.eval(index) % k,
        }
    }
}

impl fmt::Display for IndexExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexExpr::Var(d) => write!(f, "i{d}"),
            IndexExpr::Const(c) => write!(f, "{c}"),
            IndexExpr::Add(a, b) => write!(f, "{a} + {b}"),
            IndexExpr::Mul(a, k) => match **a {
                IndexExpr::Add(..) => write!(f, "({a}) * {k}"),
                _ => write!(f, "{a} * {k}"),
            },
            IndexExpr::Div(a, k) => match **a {
                IndexExpr::Var(_) | IndexExpr::Const(_) => write!(f, "{a} / {k}"),
                _ => write!(f, "({a}) / {k}"),
            },
            IndexExpr::Rem(a, k) => match **a {
                IndexExpr::Var(_) | IndexExpr::Const(_) => write!(f, "{a} % {k}"),
                _ => write!(f, "({a}) % {k}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qie_ir::eval::for_each_index;

    /// Reference: the offset of a view chain computed by explicitly moving multi-indices.
    fn check_all(map: &IndexMap, reference: impl Fn(&[usize]) -> i64) {
        let expr = map.to_expr();
        for_each_index(map.shape(), |idx| {
            let want = reference(idx);
            assert_eq!(map.offset_of(idx), want, "map {map} at {idx:?}");
            assert_eq!(expr.eval(idx), want, "expr {expr} at {idx:?}");
        });
    }

    #[test]
    fn transpose_then_merge_needs_two_views() {
        // [2, 3, 4] -> transpose [2, 0, 1] -> [4, 2, 3] -> reshape [4, 6] (mergeable) -> [24]
        let m = IndexMap::contiguous(&[2, 3, 4]).transpose(&[2, 0, 1]);
        let m2 = m.reshape(&[4, 6]);
        assert!(m2.as_strided().is_some());
        check_all(&m2, |i| {
            let (c, a, b) = (i[0], i[1] / 3, i[1] % 3);
            (a * 12 + b * 4 + c) as i64
        });
        let m3 = m2.reshape(&[24]);
        assert_eq!(m3.views().len(), 2);
        check_all(&m3, |i| {
            let (c, ab) = (i[0] / 6, i[0] % 6);
            ((ab / 3) * 12 + (ab % 3) * 4 + c) as i64
        });
    }

    #[test]
    fn split_heads_stays_strided() {
        // [B, S, H*D] -> [B, S, H, D] -> transpose to [B, H, S, D]
        let m = IndexMap::contiguous(&[2, 5, 12])
            .reshape(&[2, 5, 3, 4])
            .transpose(&[0, 2, 1, 3]);
        let v = m.as_strided().expect("strided");
        assert_eq!(v.strides.as_slice(), &[60, 4, 12, 1]);
        check_all(&m, |i| (i[0] * 60 + i[2] * 12 + i[1] * 4 + i[3]) as i64);
    }

    #[test]
    fn broadcast_and_slice() {
        let m = IndexMap::contiguous(&[3, 1])
            .broadcast(&[2, 3, 4])
            .slice(1, 1, 3);
        check_all(&m, |i| (i[1] + 1) as i64);
        let m = IndexMap::contiguous(&[6, 8])
            .slice(1, 2, 6)
            .reshape(&[3, 2, 4]);
        check_all(&m, |i| ((i[0] * 2 + i[1]) * 8 + 2 + i[2]) as i64);
    }

    #[test]
    fn merge_axes() {
        let mut m = IndexMap::contiguous(&[4, 5, 6]);
        assert!(m.can_merge(0) && m.can_merge(1));
        m.merge_axes(1);
        m.merge_axes(0);
        assert!(m.is_contiguous());
        assert_eq!(m.shape(), &[120]);
    }
}
