//! Bytes moved and FLOPs of one kernel launch, for `qie kernels export`.
//!
//! Bytes are the fewest a launch must move: every input element it reads, once, plus every
//! output element it writes, once (so achieved GB/s compares directly with copy bandwidth).
//! For a generated program, the elements an input is read at are counted per distinct load
//! map as the product of the map's non-broadcast axes (a strided view reads that many distinct
//! elements; a stacked div/mod view at most that many), summed over the input's distinct maps
//! and capped at the input's size; stores likewise. FLOPs count float unary and binary
//! instructions (transcendentals count one) per evaluation, plus one per reduced element per
//! float reduce stage; loads, casts, compares, selects and index arithmetic count nothing.
//! Library kernels: GEMM 2·M·N·K, attention 2·Sq·Sk·(D + Dv) per (batch, head), convolution
//! 2 per multiply-add.

use super::manifest::{Param, Role};
use qie_codegen::{IndexMap, Instr, KernelProgram, Section};

/// (bytes, flops) of one launch of `p`.
pub fn program_cost(p: &KernelProgram) -> (u64, u64) {
    let mut bytes = 0u64;
    for (i, b) in p.inputs.iter().enumerate() {
        let mut maps: Vec<(&IndexMap, u64)> = vec![];
        for s in p.body.stmts.iter().chain(&p.epilogue.stmts) {
            match &s.instr {
                Instr::Load { input, map } if *input == i => maps.push((map, footprint(map))),
                Instr::LoadGather {
                    input, map, dim, ..
                } if *input == i => {
                    let reads = map.shape().iter().product::<usize>() as u64;
                    maps.push((map, reads.min(footprint(map) * *dim as u64)));
                }
                _ => {}
            }
        }
        bytes += distinct_elements(maps, b.ty.numel() as u64) * b.ty.dtype.size_bytes() as u64;
    }
    for (o, b) in p.outputs.iter().enumerate() {
        let maps = p
            .body
            .stores
            .iter()
            .chain(&p.epilogue.stores)
            .filter(|s| s.output == o)
            .map(|s| (&s.map, footprint(&s.map)))
            .collect();
        bytes += distinct_elements(maps, b.ty.numel() as u64) * b.ty.dtype.size_bytes() as u64;
    }
    let space = p.space.iter().product::<usize>() as u64;
    let kept = p.kept_space().iter().product::<usize>() as u64;
    let reduce_flops = p.reduces.iter().filter(|r| r.dtype.is_float()).count() as u64;
    let flops = float_ops(&p.body) * space + reduce_flops * space + float_ops(&p.epilogue) * kept;
    (bytes, flops)
}

/// Elements a map reads or writes: the product of the top view's non-broadcast axes.
fn footprint(map: &IndexMap) -> u64 {
    let top = map.top();
    top.shape
        .iter()
        .zip(&top.strides)
        .filter(|(_, &s)| s != 0)
        .map(|(&d, _)| d as u64)
        .product()
}

/// Sum over distinct maps, capped at the buffer's element count.
fn distinct_elements(mut maps: Vec<(&IndexMap, u64)>, numel: u64) -> u64 {
    let mut seen: Vec<&IndexMap> = vec![];
    let mut total = 0u64;
    for (m, n) in maps.drain(..) {
        if !seen.contains(&m) {
            seen.push(m);
            total += n;
        }
    }
    total.min(numel)
}

fn float_ops(sec: &Section) -> u64 {
    sec.stmts
        .iter()
        .filter(|s| {
            s.dtype.is_float() && matches!(s.instr, Instr::Unary { .. } | Instr::Binary { .. })
        })
        .count() as u64
}

/// (bytes, flops) of one launch of a generic library kernel (`qgemm_`, `qattn_`, `qconv_`),
/// read from its named scalar parameters; `grid_z` is the attention batch. `None` for a symbol
/// this does not know.
pub fn library_kernel_cost(symbol: &str, params: &[Param], grid_z: u32) -> Option<(u64, u64)> {
    let int = |n: &str| -> Option<u64> {
        params.iter().find_map(|p| match p {
            Param::I32 { name, value } if name == n => Some((*value).max(0) as u64),
            Param::I64 { name, value } if name == n => Some((*value).max(0) as u64),
            _ => None,
        })
    };
    let size = |n: &str| -> u64 {
        params
            .iter()
            .find_map(|p| match p {
                Param::Ptr { name, dtype, .. } if name == n => {
                    qie_ir::DType::parse(dtype).map(|d| d.size_bytes() as u64)
                }
                _ => None,
            })
            .unwrap_or(0)
    };
    if symbol.starts_with("qgemm_") {
        let (batch, m, n, k) = (int("batch")?, int("M")?, int("N")?, int("K")?);
        let b_batch = if int("sbb")? == 0 { 1 } else { batch };
        let bytes =
            batch * m * k * size("a") + b_batch * k * n * size("b") + batch * m * n * size("c");
        Some((bytes, 2 * batch * m * n * k))
    } else if symbol.starts_with("qattn_") {
        let (sq, sk, h, d, dv) = (int("Sq")?, int("Sk")?, int("H")?, int("D")?, int("Dv")?);
        let bh = grid_z as u64 * h;
        let mask = params
            .iter()
            .any(|p| matches!(p, Param::Ptr { name, role: Role::In, .. } if name == "mask"));
        let bytes = bh * (sq * d * size("q") + sk * d * size("k") + sk * dv * size("v"))
            + bh * sq * dv * size("o")
            + if mask { grid_z as u64 * sk } else { 0 };
        Some((bytes, 2 * bh * sq * sk * (d + dv)))
    } else if symbol.starts_with("qconv_") {
        let [n, c, h, w, o, kh, kw, oh, ow, g] =
            ["N", "C", "H", "W", "O", "KH", "KW", "OH", "OW", "groups"].map(int);
        let (n, c, h, w, o, kh, kw, oh, ow) = (n?, c?, h?, w?, o?, kh?, kw?, oh?, ow?);
        let cg = c / g?.max(1);
        let bytes =
            n * c * h * w * size("x") + o * cg * kh * kw * size("w") + n * o * oh * ow * size("o");
        Some((bytes, 2 * n * o * oh * ow * cg * kh * kw))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qie_codegen::{copy_program, Binding, View};
    use qie_ir::{DType, NodeId, TensorType};

    #[test]
    fn a_transposing_copy_moves_its_tensor_twice_and_computes_nothing() {
        let src = Binding {
            node: NodeId(0),
            ty: TensorType::new(DType::BF16, &[8, 4]),
        };
        let dst = Binding {
            node: NodeId(1),
            ty: TensorType::new(DType::BF16, &[4, 8]),
        };
        let t = View {
            shape: qie_ir::shape(&[4, 8]),
            strides: [1, 4].into_iter().collect(),
            offset: 0,
        };
        let p = copy_program("t", src, IndexMap::strided(t), dst);
        assert_eq!(program_cost(&p), (2 * 32 * 2, 0));
    }

    #[test]
    fn a_broadcast_read_counts_the_broadcast_value_once() {
        let src = Binding {
            node: NodeId(0),
            ty: TensorType::new(DType::F32, &[8]),
        };
        let dst = Binding {
            node: NodeId(1),
            ty: TensorType::new(DType::F32, &[16, 8]),
        };
        let b = View {
            shape: qie_ir::shape(&[16, 8]),
            strides: [0, 1].into_iter().collect(),
            offset: 0,
        };
        let p = copy_program("b", src, IndexMap::strided(b), dst);
        assert_eq!(program_cost(&p).0, (8 + 16 * 8) * 4);
    }

    #[test]
    fn generic_gemm_cost_reads_named_scalars() {
        let ptr = |name: &str, role| Param::Ptr {
            name: name.into(),
            role,
            dtype: "f32".into(),
            elements: 1,
            buffer: 0,
            offset_bytes: 0,
        };
        let i = |name: &str, value| Param::I32 {
            name: name.into(),
            value,
        };
        let params = vec![
            ptr("a", Role::In),
            ptr("b", Role::In),
            ptr("c", Role::Out),
            i("batch", 2),
            i("M", 3),
            i("N", 5),
            i("K", 7),
            Param::I64 {
                name: "sbb".into(),
                value: 0,
            },
        ];
        let (bytes, flops) = library_kernel_cost("qgemm_f32_f32_f32", &params, 1).unwrap();
        assert_eq!(flops, 2 * 2 * 3 * 5 * 7);
        assert_eq!(bytes, (2 * 3 * 7 + 7 * 5 + 2 * 3 * 5) * 4);
        assert!(library_kernel_cost("qk_0123", &params, 1).is_none());
    }
}
