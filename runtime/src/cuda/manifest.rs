//! `manifest.json` of a kernel export (`qie kernels export`, read back by `qie kernels bench`).
//!
//! One entry per distinct generated kernel launch (symbol, launch shape and argument layout),
//! with everything needed to run it alone: its parameters in signature order, the buffers they
//! point into (size, dtype, how to fill them), bytes moved, FLOPs and launches per forward.
//! Library steps (cuBLASLt GEMMs, flash attention, copies, memsets) are listed separately with
//! their call parameters, so the whole forward pass is accounted for. Field meanings:
//! `docs/kernels.md`.

use qie_ir::DType;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// File name of the manifest inside an export folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Version of the manifest layout; `qie kernels bench` refuses other versions.
pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The model file, config, shapes and statics the plan was built for (as given).
    pub model: String,
    pub config: Option<String>,
    pub shapes: String,
    pub statics: Vec<String>,
    /// Storage dtype mode of the plan: `bf16` or `f32`.
    pub storage: String,
    /// NVRTC architecture of the PTX files (`sm_90`).
    pub arch: String,
    pub ptx: PtxStatus,
    pub totals: Totals,
    pub kernels: Vec<KernelEntry>,
    pub library: Vec<LibraryEntry>,
}

/// Whether `.ptx` files were written, and why not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PtxStatus {
    pub produced: bool,
    pub note: String,
}

/// Counts over the whole plan (one forward pass).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Steps of the plan: kernel launches, library calls, copies and memsets.
    pub plan_steps: usize,
    /// Launches as the plan counts them (generated kernels + GEMMs + attention calls).
    pub plan_launches: usize,
    /// Sum of `launches` over `kernels`.
    pub kernel_launches: usize,
    /// Sum of `launches` over GEMM and attention entries of `library`.
    pub library_launches: usize,
    /// Sum of `launches` over copy and memset entries of `library`.
    pub copies: usize,
    /// Distinct kernel symbols (files written).
    pub symbols: usize,
    /// Sums of `bytes * launches` and `flops * launches` over all entries.
    pub bytes_per_forward: u64,
    pub flops_per_forward: u64,
}

/// A device buffer a benchmark allocates for one entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BufferSpec {
    pub dtype: String,
    pub bytes: u64,
    pub fill: Fill,
}

/// How a benchmark initialises a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fill {
    /// Read by the kernel: floats uniform in ±[0.25, 1.25), integers 0..16, bools 7/8 true.
    Random,
    /// Integers used as gather indices, uniform in `0..bound`.
    Index { bound: u64 },
    /// Only written: 0xFF bytes (NaN for floats), so unwritten elements stand out.
    Poison,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    In,
    Out,
}

/// One kernel parameter, in signature order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Param {
    /// A pointer into `buffers[buffer]`, `offset_bytes` from its start; the kernel addresses
    /// `elements` values of `dtype` from there.
    Ptr {
        name: String,
        role: Role,
        dtype: String,
        elements: u64,
        buffer: usize,
        offset_bytes: u64,
    },
    /// A null pointer (an absent attention mask).
    Null {
        name: String,
    },
    I32 {
        name: String,
        value: i32,
    },
    I64 {
        name: String,
        value: i64,
    },
    F32 {
        name: String,
        value: f32,
    },
}

impl Param {
    pub fn name(&self) -> &str {
        match self {
            Param::Ptr { name, .. }
            | Param::Null { name }
            | Param::I32 { name, .. }
            | Param::I64 { name, .. }
            | Param::F32 { name, .. } => name,
        }
    }
}

/// One distinct launch of a kernel compiled from a written source file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelEntry {
    /// Unique in the manifest: the symbol, with `.2`, `.3` .. for further launch layouts of
    /// the same symbol (library kernels such as `qgemm_f32_f32_f32` run at several shapes).
    pub id: String,
    pub symbol: String,
    /// File names inside the export folder.
    pub source: String,
    pub ptx: Option<String>,
    /// What the program computes (`g12_add_exp`), from the first launch.
    pub label: String,
    /// `elementwise`, `reduction`, `generic_gemm`, `generic_attention` or `generic_conv`.
    pub kind: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_smem_bytes: u32,
    pub params: Vec<Param>,
    pub buffers: Vec<BufferSpec>,
    /// Fewest bytes the launch must move (each input element read once, each output written
    /// once) and its FLOPs; see `docs/kernels.md` for how they are counted.
    pub bytes: u64,
    pub flops: u64,
    pub launches: usize,
    /// Fusion group of the first launch, its kind and its ops (`op_text` of every member).
    pub group: usize,
    pub group_kind: String,
    pub ops: Vec<String>,
}

/// A library step: not exported as source, listed so the forward pass is fully accounted for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LibraryEntry {
    /// `gemm_0`, `attention_0`, `copy_0`, `zero_0`.
    pub id: String,
    pub label: String,
    /// One line: `M=8448 N=3072 K=3072 batch=1 epilogue=bias`.
    pub summary: String,
    pub call: LibraryCall,
    pub buffers: Vec<BufferSpec>,
    pub bytes: u64,
    pub flops: u64,
    pub launches: usize,
    pub group: usize,
    pub group_kind: String,
    pub ops: Vec<String>,
}

impl LibraryEntry {
    /// Whether the plan counts it as a launch (GEMMs and attention; not copies or memsets).
    pub fn is_launch(&self) -> bool {
        matches!(
            self.call,
            LibraryCall::Gemm { .. } | LibraryCall::Attention { .. }
        )
    }
}

fn bf16_name() -> String {
    "bf16".to_string()
}

/// A pointer into `buffers[buffer]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferView {
    pub buffer: usize,
    pub offset_bytes: u64,
}

/// The parameters of a library step (the fields of `cuda::plan::GemmStep` / `FlashStep`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LibraryCall {
    /// cuBLASLt GEMM (bf16, or full f32), row-major: `d[b] = op(a[b]) @ op(b[b])`, `d` dense
    /// [M, N].
    Gemm {
        m: usize,
        n: usize,
        k: usize,
        transpose_a: bool,
        transpose_b: bool,
        ld_a: usize,
        ld_b: usize,
        batch: usize,
        stride_a: usize,
        /// 0: one `b` shared by the batch.
        stride_b: usize,
        /// `none`, `bias`, `gelu` or `gelu_bias`.
        epilogue: String,
        a: BufferView,
        b: BufferView,
        d: BufferView,
        bias: Option<BufferView>,
        /// `bf16` or `f32` (a, b, d and the bias alike); manifests before f32 GEMMs are bf16.
        #[serde(default = "bf16_name")]
        dtype: String,
    },
    /// Flash attention forward, q [B, Sq, H, D], k/v [B, Sk, H, D] with element strides
    /// (batch, seq, head), output dense [B, Sq, H, D], lse [B, H, Sq] f32.
    Attention {
        batch: usize,
        seq_q: usize,
        seq_k: usize,
        heads: usize,
        head_dim: usize,
        scale: f32,
        q: BufferView,
        k: BufferView,
        v: BufferView,
        mask: Option<BufferView>,
        out: BufferView,
        lse: BufferView,
        q_strides: [usize; 3],
        k_strides: [usize; 3],
        v_strides: [usize; 3],
        mask_batch_stride: usize,
    },
    /// Device-to-device copy (an alias that got its own slot).
    Copy {
        src: BufferView,
        dst: BufferView,
        bytes: u64,
    },
    /// Fill with zero bytes (a GEMM over an empty K).
    Zero { dst: BufferView, bytes: u64 },
}

impl Manifest {
    /// Reads and checks `dir/manifest.json`: the format version, every buffer and file
    /// reference, and launch shapes. Errors name the file and what is wrong.
    pub fn read(dir: &Path) -> Result<Manifest, String> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "{}: cannot read ({e}); is {} a `qie kernels export` folder?",
                path.display(),
                dir.display()
            )
        })?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| format!("{}: invalid manifest: {e}", path.display()))?;
        m.check(dir)
            .map_err(|e| format!("{}: invalid manifest: {e}", path.display()))?;
        Ok(m)
    }

    /// The manifest as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("manifests serialise")
    }

    fn check(&self, dir: &Path) -> Result<(), String> {
        if self.format != MANIFEST_FORMAT {
            return Err(format!(
                "format {} (this qie reads format {MANIFEST_FORMAT}; export again)",
                self.format
            ));
        }
        for b in self.kernels.iter().flat_map(|k| &k.buffers) {
            check_buffer(b)?;
        }
        for k in &self.kernels {
            let ctx = |m: String| format!("kernel {}: {m}", k.id);
            if !dir.join(&k.source).is_file() {
                return Err(ctx(format!("source file {} is missing", k.source)));
            }
            if k.grid.contains(&0) || k.block.contains(&0) || k.block.iter().product::<u32>() > 1024
            {
                return Err(ctx(format!(
                    "launch grid {:?} block {:?} is not launchable",
                    k.grid, k.block
                )));
            }
            for p in &k.params {
                if let Param::Ptr {
                    buffer,
                    offset_bytes,
                    dtype,
                    elements,
                    ..
                } = p
                {
                    let b = k.buffers.get(*buffer).ok_or_else(|| {
                        ctx(format!("parameter {} names buffer {buffer}", p.name()))
                    })?;
                    let size = parse_dtype(dtype)?.size_bytes() as u64;
                    if offset_bytes + elements * size > b.bytes {
                        return Err(ctx(format!(
                            "parameter {} addresses {} bytes past the end of its {}-byte buffer",
                            p.name(),
                            offset_bytes + elements * size - b.bytes,
                            b.bytes
                        )));
                    }
                }
            }
        }
        for l in &self.library {
            for b in &l.buffers {
                check_buffer(b)?;
            }
            let views: Vec<BufferView> = match &l.call {
                LibraryCall::Gemm { a, b, d, bias, .. } => {
                    [*a, *b, *d].into_iter().chain(*bias).collect()
                }
                LibraryCall::Attention {
                    q,
                    k,
                    v,
                    mask,
                    out,
                    lse,
                    ..
                } => [*q, *k, *v, *out, *lse].into_iter().chain(*mask).collect(),
                LibraryCall::Copy { src, dst, .. } => vec![*src, *dst],
                LibraryCall::Zero { dst, .. } => vec![*dst],
            };
            for v in views {
                let b = l
                    .buffers
                    .get(v.buffer)
                    .ok_or_else(|| format!("library step {}: names buffer {}", l.id, v.buffer))?;
                if v.offset_bytes > b.bytes {
                    return Err(format!(
                        "library step {}: offset {} past its {}-byte buffer",
                        l.id, v.offset_bytes, b.bytes
                    ));
                }
            }
        }
        Ok(())
    }
}

fn check_buffer(b: &BufferSpec) -> Result<(), String> {
    let d = parse_dtype(&b.dtype)?;
    if !b.bytes.is_multiple_of(d.size_bytes() as u64) {
        return Err(format!(
            "a {} buffer of {} bytes is not a whole number of elements",
            b.dtype, b.bytes
        ));
    }
    if let Fill::Index { bound } = b.fill {
        if !d.is_int() || bound == 0 {
            return Err(format!(
                "index fill with bound {bound} on a {} buffer",
                b.dtype
            ));
        }
    }
    Ok(())
}

/// A dtype name as the manifest writes it (`bf16`).
pub fn parse_dtype(name: &str) -> Result<DType, String> {
    DType::parse(name).ok_or_else(|| format!("unknown dtype `{name}`"))
}
