//! One [`ChunkOp`] over one chunk: picks the typed register pools and calls the loop.

use super::kernels::{binary_f32, binary_int, compare, select, unary_f32, unary_int};
use super::memory::{add_gather_offsets, chunk_offsets, gather, load};
use super::plan::ChunkOp;
use super::registers::Registers;
use super::run::Buffers;
use super::{BadIndex, RegClass, Slot};
use qie_ir::BinaryOp;

/// Runs `$body` with `$o` the destination slot's chunk, taken out of its pool so that the
/// operands (other slots of the same pool) can be borrowed alongside.
macro_rules! with_dst {
    ($regs:expr, $pool:ident, $dst:expr, $len:expr, |$o:ident| $body:expr) => {{
        let mut v = std::mem::take(&mut $regs.$pool[$dst.index]);
        {
            let $o = &mut v[..$len];
            $body;
        }
        $regs.$pool[$dst.index] = v;
    }};
}

/// Runs `op` over the chunk `[start, start + len)` of `space`. Fails only on a gather index
/// outside its axis.
pub(super) fn exec_op(
    op: &ChunkOp,
    space: &[usize],
    regs: &mut Registers,
    bufs: &Buffers,
    start: usize,
    len: usize,
) -> Result<(), BadIndex> {
    match op {
        ChunkOp::Load { dst, input, map } => {
            let buf = bufs.inputs[*input];
            let offs = &mut regs.offsets;
            let i = dst.index;
            match dst.class {
                RegClass::Float => load(&mut regs.f32s[i][..len], buf, map, space, start, offs),
                RegClass::I32 => load(&mut regs.i32s[i][..len], buf, map, space, start, offs),
                RegClass::I64 => load(&mut regs.i64s[i][..len], buf, map, space, start, offs),
                RegClass::Bool => load(&mut regs.bools[i][..len], buf, map, space, start, offs),
            }
        }
        ChunkOp::Gather {
            dst,
            input,
            map,
            index,
            stride,
            axis_len,
        } => {
            let mut offs = std::mem::take(&mut regs.offsets);
            let offs_chunk = &mut offs[..len];
            chunk_offsets(map, space, start, offs_chunk);
            let checked = match index.class {
                RegClass::I32 => add_gather_offsets(
                    offs_chunk,
                    &regs.i32s[index.index][..len],
                    *stride,
                    *axis_len,
                ),
                _ => add_gather_offsets(
                    offs_chunk,
                    &regs.i64s[index.index][..len],
                    *stride,
                    *axis_len,
                ),
            };
            if checked.is_ok() {
                let buf = bufs.inputs[*input];
                let i = dst.index;
                match dst.class {
                    RegClass::Float => gather(&mut regs.f32s[i][..len], buf, offs_chunk),
                    RegClass::I32 => gather(&mut regs.i32s[i][..len], buf, offs_chunk),
                    RegClass::I64 => gather(&mut regs.i64s[i][..len], buf, offs_chunk),
                    RegClass::Bool => gather(&mut regs.bools[i][..len], buf, offs_chunk),
                }
            }
            regs.offsets = offs;
            checked?;
        }
        ChunkOp::Iota {
            dst,
            map,
            stride,
            axis_len,
        } => {
            let mut offs = std::mem::take(&mut regs.offsets);
            chunk_offsets(map, space, start, &mut offs[..len]);
            let coord = |o: i64| (o / stride) % axis_len;
            let offs_chunk = &offs[..len];
            let i = dst.index;
            match dst.class {
                RegClass::Float => {
                    for (v, &o) in regs.f32s[i][..len].iter_mut().zip(offs_chunk) {
                        *v = coord(o) as f32;
                    }
                }
                RegClass::I32 => {
                    for (v, &o) in regs.i32s[i][..len].iter_mut().zip(offs_chunk) {
                        *v = coord(o) as i32;
                    }
                }
                RegClass::I64 => {
                    for (v, &o) in regs.i64s[i][..len].iter_mut().zip(offs_chunk) {
                        *v = coord(o);
                    }
                }
                RegClass::Bool => {
                    for (v, &o) in regs.bools[i][..len].iter_mut().zip(offs_chunk) {
                        *v = (coord(o) != 0) as u8;
                    }
                }
            }
            regs.offsets = offs;
        }
        ChunkOp::Unary { op, dst, a } => match dst.class {
            RegClass::Float => with_dst!(regs, f32s, dst, len, |o| unary_f32(
                *op,
                o,
                &regs.f32s[a.index][..len]
            )),
            RegClass::I32 => with_dst!(regs, i32s, dst, len, |o| unary_int(
                *op,
                o,
                &regs.i32s[a.index][..len]
            )),
            RegClass::I64 => with_dst!(regs, i64s, dst, len, |o| unary_int(
                *op,
                o,
                &regs.i64s[a.index][..len]
            )),
            RegClass::Bool => with_dst!(regs, bools, dst, len, |o| {
                for (o, &x) in o.iter_mut().zip(&regs.bools[a.index][..len]) {
                    *o = (x == 0) as u8;
                }
            }),
        },
        ChunkOp::Binary { op, dst, a, b } => match dst.class {
            RegClass::Float => with_dst!(regs, f32s, dst, len, |o| binary_f32(
                *op,
                o,
                &regs.f32s[a.index][..len],
                &regs.f32s[b.index][..len]
            )),
            RegClass::I32 => with_dst!(regs, i32s, dst, len, |o| binary_int(
                *op,
                o,
                &regs.i32s[a.index][..len],
                &regs.i32s[b.index][..len]
            )),
            RegClass::I64 => with_dst!(regs, i64s, dst, len, |o| binary_int(
                *op,
                o,
                &regs.i64s[a.index][..len],
                &regs.i64s[b.index][..len]
            )),
            RegClass::Bool => with_dst!(regs, bools, dst, len, |o| {
                let (x, y) = (&regs.bools[a.index][..len], &regs.bools[b.index][..len]);
                for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                    *o = match op {
                        BinaryOp::And => ((x != 0) && (y != 0)) as u8,
                        _ => ((x != 0) || (y != 0)) as u8,
                    };
                }
            }),
        },
        ChunkOp::Compare { op, dst, a, b } => {
            let (ai, bi) = (a.index, b.index);
            with_dst!(regs, bools, dst, len, |o| match a.class {
                RegClass::Float => compare(*op, o, &regs.f32s[ai][..len], &regs.f32s[bi][..len]),
                RegClass::I32 => compare(*op, o, &regs.i32s[ai][..len], &regs.i32s[bi][..len]),
                RegClass::I64 => compare(*op, o, &regs.i64s[ai][..len], &regs.i64s[bi][..len]),
                RegClass::Bool => compare(*op, o, &regs.bools[ai][..len], &regs.bools[bi][..len]),
            })
        }
        ChunkOp::Select { dst, cond, a, b } => {
            let cond_regs = std::mem::take(&mut regs.bools[cond.index]);
            let c = &cond_regs[..len];
            let (ai, bi) = (a.index, b.index);
            match dst.class {
                RegClass::Float => with_dst!(regs, f32s, dst, len, |o| select(
                    o,
                    c,
                    &regs.f32s[ai][..len],
                    &regs.f32s[bi][..len]
                )),
                RegClass::I32 => with_dst!(regs, i32s, dst, len, |o| select(
                    o,
                    c,
                    &regs.i32s[ai][..len],
                    &regs.i32s[bi][..len]
                )),
                RegClass::I64 => with_dst!(regs, i64s, dst, len, |o| select(
                    o,
                    c,
                    &regs.i64s[ai][..len],
                    &regs.i64s[bi][..len]
                )),
                RegClass::Bool => with_dst!(regs, bools, dst, len, |o| select(
                    o,
                    c,
                    &regs.bools[ai][..len],
                    &regs.bools[bi][..len]
                )),
            }
            regs.bools[cond.index] = cond_regs;
        }
        ChunkOp::Cast { dst, a } => cast(regs, *dst, *a, len),
    }
    Ok(())
}

fn cast(regs: &mut Registers, dst: Slot, a: Slot, len: usize) {
    macro_rules! conv {
        ($dpool:ident, $spool:ident, $f:expr) => {
            with_dst!(regs, $dpool, dst, len, |o| {
                for (o, &x) in o.iter_mut().zip(&regs.$spool[a.index][..len]) {
                    #[allow(clippy::redundant_closure_call)]
                    {
                        *o = ($f)(x);
                    }
                }
            })
        };
    }
    use RegClass::{Bool, Float, I32, I64};
    match (a.class, dst.class) {
        (Float, Float) => conv!(f32s, f32s, |x: f32| x),
        (Float, I32) => conv!(i32s, f32s, |x: f32| x as i32),
        (Float, I64) => conv!(i64s, f32s, |x: f32| x as i64),
        (Float, Bool) => conv!(bools, f32s, |x: f32| (x != 0.0) as u8),
        (I32, Float) => conv!(f32s, i32s, |x: i32| x as f32),
        (I32, I32) => conv!(i32s, i32s, |x: i32| x),
        (I32, I64) => conv!(i64s, i32s, |x: i32| x as i64),
        (I32, Bool) => conv!(bools, i32s, |x: i32| (x != 0) as u8),
        (I64, Float) => conv!(f32s, i64s, |x: i64| x as f32),
        (I64, I32) => conv!(i32s, i64s, |x: i64| x as i32),
        (I64, I64) => conv!(i64s, i64s, |x: i64| x),
        (I64, Bool) => conv!(bools, i64s, |x: i64| (x != 0) as u8),
        (Bool, Float) => conv!(f32s, bools, |x: u8| x as f32),
        (Bool, I32) => conv!(i32s, bools, |x: u8| x as i32),
        (Bool, I64) => conv!(i64s, bools, |x: u8| x as i64),
        (Bool, Bool) => conv!(bools, bools, |x: u8| x),
    }
}
