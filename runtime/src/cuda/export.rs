//! `qie kernels export`: the launches of a [`CudaPlan`] as a [`Manifest`], built without a
//! device (the folder is written by [`super::export_dir`]).
//!
//! Launches are deduplicated by symbol, launch shape and argument layout (scalar values,
//! buffer sizes and which arguments share a buffer); `launches` counts the plan steps that
//! launch exactly that. Generated kernels have their shapes in the source, so one symbol is
//! one entry; the generic library kernels (`qgemm_..`, `qattn_..`) take shapes as arguments
//! and get one entry per shape. Library steps become [`LibraryEntry`]s.

use super::export_cost::{library_kernel_cost, program_cost};
use super::manifest::*;
use super::plan::{BufRef, CudaPlan, FlashStep, GemmEpilogue, GemmStep, KArg, PlanStep};
use qie_codegen::{Instr, KernelProgram};
use qie_ir::print::op_text;
use std::collections::HashMap;

/// What the plan was built from, recorded in the manifest.
#[derive(Clone, Debug, Default)]
pub struct ExportInfo {
    pub model: String,
    pub config: Option<String>,
    pub shapes: String,
    pub statics: Vec<String>,
    /// NVRTC architecture for the PTX (`sm_90`).
    pub arch: String,
}

/// The manifest of `plan` (no files yet; `ptx.produced` is false until
/// [`super::export_dir::write_export`]).
pub fn build_manifest(plan: &CudaPlan, info: ExportInfo) -> Result<Manifest, String> {
    let mut b = ManifestBuilder {
        plan,
        kernels: vec![],
        kernel_keys: HashMap::new(),
        variants: HashMap::new(),
        library: vec![],
        library_keys: HashMap::new(),
        library_counts: HashMap::new(),
    };
    for (si, step) in plan.steps.iter().enumerate() {
        let group = plan.step_groups.get(si).copied().unwrap_or(0);
        b.step(step, group)?;
    }
    let (kernels, library) = (b.kernels, b.library);
    let totals = Totals {
        plan_steps: plan.steps.len(),
        plan_launches: plan.stats.kernels,
        kernel_launches: kernels.iter().map(|k| k.launches).sum(),
        library_launches: library
            .iter()
            .filter(|l| l.is_launch())
            .map(|l| l.launches)
            .sum(),
        copies: library
            .iter()
            .filter(|l| !l.is_launch())
            .map(|l| l.launches)
            .sum(),
        symbols: kernels
            .iter()
            .map(|k| &k.symbol)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        bytes_per_forward: kernels
            .iter()
            .map(|k| k.bytes * k.launches as u64)
            .sum::<u64>()
            + library
                .iter()
                .map(|l| l.bytes * l.launches as u64)
                .sum::<u64>(),
        flops_per_forward: kernels
            .iter()
            .map(|k| k.flops * k.launches as u64)
            .sum::<u64>()
            + library
                .iter()
                .map(|l| l.flops * l.launches as u64)
                .sum::<u64>(),
    };
    Ok(Manifest {
        format: MANIFEST_FORMAT,
        model: info.model,
        config: info.config,
        shapes: info.shapes,
        statics: info.statics,
        storage: format!("{:?}", plan.mode).to_lowercase(),
        arch: info.arch,
        ptx: PtxStatus {
            produced: false,
            note: "not written yet".into(),
        },
        totals,
        kernels,
        library,
    })
}

struct ManifestBuilder<'a> {
    plan: &'a CudaPlan,
    kernels: Vec<KernelEntry>,
    kernel_keys: HashMap<String, usize>,
    /// Entries per symbol so far (for `.2`, `.3` ids).
    variants: HashMap<String, usize>,
    library: Vec<LibraryEntry>,
    library_keys: HashMap<String, usize>,
    library_counts: HashMap<&'static str, usize>,
}

/// The buffers one entry points into, in first-use order.
#[derive(Default)]
struct Buffers {
    refs: Vec<BufRef>,
    specs: Vec<BufferSpec>,
}

impl Buffers {
    /// The index of `r`, added if new; a buffer that is read keeps a read fill.
    fn index(&mut self, r: BufRef, fill: Fill) -> usize {
        let rank = |f: &Fill| match f {
            Fill::Poison => 0,
            Fill::Random => 1,
            Fill::Index { .. } => 2,
        };
        if let Some(i) = self.refs.iter().position(|x| *x == r) {
            let spec = &mut self.specs[i];
            match (&mut spec.fill, fill) {
                (Fill::Index { bound }, Fill::Index { bound: b }) => *bound = (*bound).min(b),
                (f, new) if rank(&new) > rank(f) => *f = new,
                _ => {}
            }
            return i;
        }
        self.refs.push(r);
        self.specs.push(BufferSpec {
            dtype: r.dtype().name().to_string(),
            bytes: r.bytes() as u64,
            fill,
        });
        self.refs.len() - 1
    }

    fn view(&mut self, (r, off): (BufRef, usize), fill: Fill) -> BufferView {
        BufferView {
            buffer: self.index(r, fill),
            offset_bytes: off as u64,
        }
    }
}

impl ManifestBuilder<'_> {
    fn group_info(&self, group: usize) -> (String, Vec<String>) {
        match self.plan.fusion.groups.get(group) {
            Some(g) => (
                g.kind.name().to_string(),
                g.nodes
                    .iter()
                    .map(|&id| op_text(&self.plan.graph.node(id).op))
                    .collect(),
            ),
            None => (String::new(), vec![]),
        }
    }

    fn step(&mut self, step: &PlanStep, group: usize) -> Result<(), String> {
        match step {
            PlanStep::Kernel {
                name,
                label,
                grid,
                block,
                args,
            } => self.kernel(name, label, *grid, *block, args, group),
            PlanStep::Gemm { label, gemm } => {
                let mut bufs = Buffers::default();
                let (call, summary, bytes, flops) = gemm_call(gemm, &mut bufs);
                self.library_step("gemm", label, call, summary, bufs, bytes, flops, group);
                Ok(())
            }
            PlanStep::Flash { label, flash } => {
                let mut bufs = Buffers::default();
                let (call, summary, bytes, flops) = flash_call(flash, &mut bufs);
                self.library_step("attention", label, call, summary, bufs, bytes, flops, group);
                Ok(())
            }
            PlanStep::FlashGrad { label, .. } => Err(format!(
                "{label}: attention backward steps are not exported yet (export inference plans)"
            )),
            PlanStep::Copy { src, dst } => {
                let mut bufs = Buffers::default();
                let call = LibraryCall::Copy {
                    src: bufs.view((*src, 0), Fill::Random),
                    dst: bufs.view((*dst, 0), Fill::Poison),
                    bytes: src.bytes() as u64,
                };
                let n = src.bytes() as u64;
                let summary = format!("{n} bytes");
                self.library_step("copy", &step.label(), call, summary, bufs, 2 * n, 0, group);
                Ok(())
            }
            PlanStep::Zero { dst } => {
                let mut bufs = Buffers::default();
                let call = LibraryCall::Zero {
                    dst: bufs.view((*dst, 0), Fill::Poison),
                    bytes: dst.bytes() as u64,
                };
                let n = dst.bytes() as u64;
                let summary = format!("{n} bytes");
                self.library_step("zero", &step.label(), call, summary, bufs, n, 0, group);
                Ok(())
            }
        }
    }

    fn kernel(
        &mut self,
        symbol: &str,
        label: &str,
        grid: (u32, u32, u32),
        block: u32,
        args: &[KArg],
        group: usize,
    ) -> Result<(), String> {
        let source = self
            .plan
            .kernels
            .get(symbol)
            .ok_or_else(|| format!("plan launches {symbol} but has no source for it"))?;
        let sig = signature(source, symbol)?;
        if sig.len() != args.len() {
            return Err(format!(
                "{symbol}: the plan passes {} arguments, the signature has {}",
                args.len(),
                sig.len()
            ));
        }
        let program = self.plan.programs.get(symbol);
        let bounds = program.map(gather_index_bounds).unwrap_or_default();
        let mut bufs = Buffers::default();
        let (mut n_in, mut n_out) = (0, 0);
        let mut params = vec![];
        for (s, a) in sig.iter().zip(args) {
            let name = s.name.clone();
            params.push(match *a {
                KArg::Ptr(r, off) => {
                    let role = if s.is_const { Role::In } else { Role::Out };
                    // Generated kernels address their binding's elements; library kernels the
                    // rest of the buffer.
                    let binding = program.and_then(|p| match role {
                        Role::In => p.inputs.get(n_in),
                        Role::Out => p.outputs.get(n_out),
                    });
                    let elements = match binding {
                        Some(b) => b.ty.numel(),
                        None => (r.bytes() - off.min(r.bytes())) / r.dtype().size_bytes(),
                    } as u64;
                    let fill = match role {
                        Role::In => match bounds.get(&n_in) {
                            Some(&bound) if program.is_some() => Fill::Index { bound },
                            _ => Fill::Random,
                        },
                        Role::Out => Fill::Poison,
                    };
                    match role {
                        Role::In => n_in += 1,
                        Role::Out => n_out += 1,
                    }
                    Param::Ptr {
                        name,
                        role,
                        dtype: r.dtype().name().to_string(),
                        elements,
                        buffer: bufs.index(r, fill),
                        offset_bytes: off as u64,
                    }
                }
                KArg::Null => Param::Null { name },
                KArg::I32(value) => Param::I32 { name, value },
                KArg::I64(value) => Param::I64 { name, value },
                KArg::F32(value) => Param::F32 { name, value },
            });
        }
        let grid = [grid.0, grid.1, grid.2];
        let block = [block, 1, 1];
        let key = serde_json::to_string(&(symbol, grid, block, &params, &bufs.specs))
            .expect("serialisable");
        if let Some(&i) = self.kernel_keys.get(&key) {
            self.kernels[i].launches += 1;
            return Ok(());
        }
        let (kind, (bytes, flops)) = match program {
            Some(p) => (
                if p.is_reduction() {
                    "reduction"
                } else {
                    "elementwise"
                }
                .to_string(),
                program_cost(p),
            ),
            None => (
                generic_kind(symbol).to_string(),
                library_kernel_cost(symbol, &params, grid[2]).unwrap_or_else(|| {
                    let total: u64 = bufs.specs.iter().map(|b| b.bytes).sum();
                    (total, 0)
                }),
            ),
        };
        let variant = self.variants.entry(symbol.to_string()).or_insert(0);
        *variant += 1;
        let id = if *variant == 1 {
            symbol.to_string()
        } else {
            format!("{symbol}.{variant}")
        };
        let (group_kind, ops) = self.group_info(group);
        self.kernel_keys.insert(key, self.kernels.len());
        self.kernels.push(KernelEntry {
            id,
            symbol: symbol.to_string(),
            source: format!("{symbol}.cu"),
            ptx: None,
            label: label.to_string(),
            kind,
            grid,
            block,
            dynamic_smem_bytes: 0,
            params,
            buffers: bufs.specs,
            bytes,
            flops,
            launches: 1,
            group,
            group_kind,
            ops,
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn library_step(
        &mut self,
        kind: &'static str,
        label: &str,
        call: LibraryCall,
        summary: String,
        bufs: Buffers,
        bytes: u64,
        flops: u64,
        group: usize,
    ) {
        let key = serde_json::to_string(&(&call, &bufs.specs)).expect("serialisable");
        if let Some(&i) = self.library_keys.get(&key) {
            self.library[i].launches += 1;
            return;
        }
        let n = self.library_counts.entry(kind).or_insert(0);
        let id = format!("{kind}_{n}");
        *n += 1;
        let (group_kind, ops) = self.group_info(group);
        self.library_keys.insert(key, self.library.len());
        self.library.push(LibraryEntry {
            id,
            label: label.to_string(),
            summary,
            call,
            buffers: bufs.specs,
            bytes,
            flops,
            launches: 1,
            group,
            group_kind,
            ops,
        });
    }
}

fn generic_kind(symbol: &str) -> &'static str {
    if symbol.starts_with("qgemm_") {
        "generic_gemm"
    } else if symbol.starts_with("qattn_") {
        "generic_attention"
    } else if symbol.starts_with("qconv_") {
        "generic_conv"
    } else {
        "library_kernel"
    }
}

/// (call, summary, bytes, flops) of a cuBLASLt step.
fn gemm_call(g: &GemmStep, bufs: &mut Buffers) -> (LibraryCall, String, u64, u64) {
    let epilogue = match g.epilogue {
        GemmEpilogue::None => "none",
        GemmEpilogue::Bias => "bias",
        GemmEpilogue::Gelu => "gelu",
        GemmEpilogue::GeluBias => "gelu_bias",
    };
    let call = LibraryCall::Gemm {
        m: g.m,
        n: g.n,
        k: g.k,
        transpose_a: g.transpose_a,
        transpose_b: g.transpose_b,
        ld_a: g.ld_a,
        ld_b: g.ld_b,
        batch: g.batch,
        stride_a: g.stride_a,
        stride_b: g.stride_b,
        epilogue: epilogue.to_string(),
        a: bufs.view(g.a, Fill::Random),
        b: bufs.view(g.b, Fill::Random),
        // A conv block's `ld_d` (> n) is not in the manifest: the bench writes a dense block at
        // the same offset, which stays inside the output buffer.
        d: bufs.view((g.d, g.d_offset), Fill::Poison),
        bias: g.bias.map(|b| bufs.view(b, Fill::Random)),
        dtype: g.dtype.to_string(),
    };
    let (m, n, k, batch) = (g.m as u64, g.n as u64, g.k as u64, g.batch as u64);
    let b_batch = if g.stride_b == 0 { 1 } else { batch };
    let bias = if g.bias.is_some() { n } else { 0 };
    let el = g.dtype.size_bytes() as u64;
    let bytes = el * (batch * m * k + b_batch * k * n + batch * m * n + bias);
    let summary = format!(
        "M={m} N={n} K={k} batch={batch} ta={} tb={} epilogue={epilogue} dtype={}",
        g.transpose_a as u8, g.transpose_b as u8, g.dtype
    );
    (call, summary, bytes, 2 * batch * m * n * k)
}

/// (call, summary, bytes, flops) of a flash-attention step.
fn flash_call(f: &FlashStep, bufs: &mut Buffers) -> (LibraryCall, String, u64, u64) {
    let call = LibraryCall::Attention {
        batch: f.batch,
        seq_q: f.seq_q,
        seq_k: f.seq_k,
        heads: f.heads,
        head_dim: f.head_dim,
        scale: f.scale,
        q: bufs.view(f.q, Fill::Random),
        k: bufs.view(f.k, Fill::Random),
        v: bufs.view(f.v, Fill::Random),
        mask: f.mask.map(|m| bufs.view(m, Fill::Random)),
        out: bufs.view((f.out, 0), Fill::Poison),
        lse: bufs.view((f.lse, 0), Fill::Poison),
        q_strides: f.q_strides,
        k_strides: f.k_strides,
        v_strides: f.v_strides,
        mask_batch_stride: f.mask_batch_stride,
    };
    let (b, sq, sk, h, d) = (
        f.batch as u64,
        f.seq_q as u64,
        f.seq_k as u64,
        f.heads as u64,
        f.head_dim as u64,
    );
    let mask = if f.mask.is_some() { b * sk } else { 0 };
    // q, k, v, out in bf16, the mask in bytes, lse in f32.
    let bytes = 2 * b * h * d * (2 * sq + 2 * sk) + mask + 4 * b * h * sq;
    let summary = format!(
        "B={b} Sq={sq} Sk={sk} H={h} D={d} mask={}",
        f.mask.is_some() as u8
    );
    (call, summary, bytes, 4 * b * h * sq * sk * d)
}

/// For each input of `p` read as gather indices, the smallest extent it indexes.
fn gather_index_bounds(p: &KernelProgram) -> HashMap<usize, u64> {
    let stmts: Vec<_> = p.body.stmts.iter().chain(&p.epilogue.stmts).collect();
    let def = |r: qie_codegen::Reg| stmts.iter().find(|s| s.dst == r).map(|s| &s.instr);
    let mut out: HashMap<usize, u64> = HashMap::new();
    for s in &stmts {
        if let Instr::LoadGather { index, dim, .. } = &s.instr {
            // Follow casts back to the load of the index input.
            let mut r = *index;
            while let Some(Instr::Cast { a }) = def(r) {
                r = *a;
            }
            if let Some(Instr::Load { input, .. }) = def(r) {
                let b = out.entry(*input).or_insert(*dim as u64);
                *b = (*b).min(*dim as u64).max(1);
            }
        }
    }
    out
}

/// One parameter of a kernel signature.
struct SigParam {
    name: String,
    is_const: bool,
}

/// The parameters of `extern "C" __global__ ... symbol(...)` in `source`.
fn signature(source: &str, symbol: &str) -> Result<Vec<SigParam>, String> {
    let start = source
        .find(&format!("{symbol}("))
        .ok_or_else(|| format!("{symbol}: no definition in its source"))?
        + symbol.len()
        + 1;
    let len = source[start..]
        .find(')')
        .ok_or_else(|| format!("{symbol}: unterminated parameter list"))?;
    let list = source[start..start + len].trim();
    if list.is_empty() {
        return Ok(vec![]);
    }
    list.split(',')
        .map(|p| {
            let p = p.trim();
            let name = p
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| format!("{symbol}: cannot read parameter `{p}`"))?;
            Ok(SigParam {
                name: name.to_string(),
                is_const: p.starts_with("const ") && p.contains('*'),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_give_names_and_constness() {
        let src = "extern \"C\" __global__ void __launch_bounds__(256) qgemm_f32_f32_f32(const float* a, const float* __restrict__ b, float* c, int batch, long long sab) {\n}";
        let sig = signature(src, "qgemm_f32_f32_f32").unwrap();
        let names: Vec<&str> = sig.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "batch", "sab"]);
        let consts: Vec<bool> = sig.iter().map(|p| p.is_const).collect();
        assert_eq!(consts, [true, true, false, false, false]);
        assert!(signature(src, "qk_missing").is_err());
    }
}
