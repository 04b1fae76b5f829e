//! bf16 GEMMs through cuBLASLt (f32 accumulation, bf16 out) with fused epilogues.
//!
//! Semantics are the IR's `MatMul` on row-major tensors: `d[b] = op(a[b]) @ op(b[b])`, with
//! `a` [M, K] (or [K, M] when `transpose_a`) and `b` [K, N] (or [N, K] when `transpose_b`,
//! the layout of a torch `nn.Linear` weight). cuBLASLt is column-major, so the product is
//! computed as `d^T = op(b)^T op(a)^T`: the row-major buffers are read as their column-major
//! transposes and nothing is copied. The epilogue bias is then indexed by the output column n,
//! as a linear layer's bias is.
//!
//! Descriptors and the algorithm chosen by cuBLASLt's heuristic are cached per shape; the
//! workspace is a region of the caller's arena (32 MiB is what NVIDIA recommends on Hopper).

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::sys as lt;
use lt::cublasLtMatmulDescAttributes_t as DescAttr;
use lt::cublasLtMatmulPreferenceAttributes_t as PrefAttr;
use lt::cublasLtMatrixLayoutAttribute_t as LayoutAttr;

use super::libs::{self, Lib};
use super::{CudaDevice, CudaError, DevPtr, Result};
use qie_ir::DType;

/// Workspace size NVIDIA recommends for Hopper (also plenty for older parts).
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// What is applied to the f32 accumulator before the bf16 store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    None,
    /// `+ bias[n]`; bias is bf16 [N].
    Bias(DevPtr),
    /// `gelu_tanh(acc)`.
    Gelu,
    /// `gelu_tanh(acc + bias[n])`; bias is bf16 [N].
    GeluBias(DevPtr),
}

impl Epilogue {
    fn kind(self) -> u8 {
        match self {
            Epilogue::None => 0,
            Epilogue::Bias(_) => 1,
            Epilogue::Gelu => 2,
            Epilogue::GeluBias(_) => 3,
        }
    }
    fn bias(self) -> Option<DevPtr> {
        match self {
            Epilogue::Bias(p) | Epilogue::GeluBias(p) => Some(p),
            _ => None,
        }
    }
    fn lt(self) -> lt::cublasLtEpilogue_t {
        use lt::cublasLtEpilogue_t::*;
        match self {
            Epilogue::None => CUBLASLT_EPILOGUE_DEFAULT,
            Epilogue::Bias(_) => CUBLASLT_EPILOGUE_BIAS,
            Epilogue::Gelu => CUBLASLT_EPILOGUE_GELU,
            Epilogue::GeluBias(_) => CUBLASLT_EPILOGUE_GELU_BIAS,
        }
    }
}

/// One (batched) GEMM on row-major matrices of `dtype` (bf16, or f32 computed in full f32:
/// no TF32, so the eval models keep their reference numerics). Strides and leading dimensions are in
/// elements; [`GemmArgs::new`] fills in the contiguous ones.
#[derive(Clone, Copy, Debug)]
pub struct GemmArgs {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub transpose_a: bool,
    pub transpose_b: bool,
    pub a: DevPtr,
    pub b: DevPtr,
    pub d: DevPtr,
    /// Row strides: `a` (K, or M when transposed), `b` (N, or K when transposed), `d` (N).
    pub ld_a: usize,
    pub ld_b: usize,
    pub ld_d: usize,
    pub batch: usize,
    /// Batch strides; `stride_b == 0` shares one `b` across the batch (a weight).
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_d: usize,
    pub epilogue: Epilogue,
    /// Reads `d` as the C operand: `d = epilogue(op(a) @ op(b) + d [+ bias])`. cuBLASLt applies
    /// the epilogue after adding C, so with `Gelu`/`GeluBias` the old `d` is inside the GELU;
    /// as a fused residual add (`d += x @ W^T + bias`) use it with `None`/`Bias`.
    pub accumulate: bool,
    /// The element type of a, b, d and the bias: BF16 or F32.
    pub dtype: DType,
}

impl GemmArgs {
    /// `d [M, N] = a [M, K] @ b [K, N]`, all contiguous.
    pub fn new(m: usize, n: usize, k: usize, a: DevPtr, b: DevPtr, d: DevPtr) -> Self {
        GemmArgs {
            m,
            n,
            k,
            transpose_a: false,
            transpose_b: false,
            a,
            b,
            d,
            ld_a: k,
            ld_b: n,
            ld_d: n,
            batch: 1,
            stride_a: m * k,
            stride_b: k * n,
            stride_d: m * n,
            epilogue: Epilogue::None,
            accumulate: false,
            dtype: DType::BF16,
        }
    }

    /// The same problem on f32 matrices.
    pub fn f32(mut self) -> Self {
        self.dtype = DType::F32;
        self
    }

    /// Reads `a` as [K, M] (computes `a^T @ ...`).
    pub fn transpose_a(mut self) -> Self {
        self.transpose_a = true;
        self.ld_a = self.m;
        self
    }

    /// Reads `b` as [N, K] (computes `... @ b^T`, as `nn.Linear` does with its weight).
    pub fn transpose_b(mut self) -> Self {
        self.transpose_b = true;
        self.ld_b = self.k;
        self
    }

    /// `batch` contiguous problems; `share_b` keeps one `b` for all of them.
    pub fn batched(mut self, batch: usize, share_b: bool) -> Self {
        self.batch = batch;
        self.stride_a = self.m * self.k;
        self.stride_b = if share_b { 0 } else { self.k * self.n };
        self.stride_d = self.m * self.n;
        self
    }

    pub fn epilogue(mut self, e: Epilogue) -> Self {
        self.epilogue = e;
        self
    }

    pub fn accumulate(mut self, yes: bool) -> Self {
        self.accumulate = yes;
        self
    }

    /// Multiply-adds: 2 m n k per batch entry.
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64 * self.batch as f64
    }

    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(CudaError::Invalid(format!("gemm {self:?}: {m}")));
        if self.m == 0 || self.n == 0 || self.k == 0 || self.batch == 0 {
            return bad("empty problem".into());
        }
        // Row lengths of the stored matrices.
        let ca = if self.transpose_a { self.m } else { self.k };
        let cb = if self.transpose_b { self.k } else { self.n };
        if self.ld_a < ca || self.ld_b < cb || self.ld_d < self.n {
            return bad("leading dimension smaller than the row length".into());
        }
        if self.epilogue.bias().is_some_and(|p| p.is_null()) {
            return bad("null bias".into());
        }
        if !matches!(self.dtype, DType::BF16 | DType::F32) {
            return bad(format!("{} matrices", self.dtype));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    ld: (usize, usize, usize),
    batch: usize,
    strides: (usize, usize, usize),
    epilogue: u8,
    accumulate: bool,
    align: (usize, usize, usize, usize),
    f32: bool,
}

struct Plan {
    desc: lt::cublasLtMatmulDesc_t,
    layouts: [lt::cublasLtMatrixLayout_t; 3], // A', B', D (C = D)
    algo: lt::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created by this module, destroyed once.
        unsafe {
            for l in self.layouts {
                let _ = lt::cublasLtMatrixLayoutDestroy(l);
            }
            let _ = lt::cublasLtMatmulDescDestroy(self.desc);
        }
    }
}

// SAFETY: the raw descriptors are only used under the Blas mutex.
unsafe impl Send for Plan {}

/// A cuBLASLt handle bound to one device's stream, with its workspace and plan cache.
pub struct Blas {
    dev: Arc<CudaDevice>,
    handle: lt::cublasLtHandle_t,
    workspace: DevPtr,
    workspace_bytes: usize,
    plans: Mutex<HashMap<Key, Plan>>,
    autotune: std::sync::atomic::AtomicBool,
}

// SAFETY: the handle is used on the device's stream only, and the plan cache is locked.
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

impl Drop for Blas {
    fn drop(&mut self) {
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).clear();
        // SAFETY: created in `new`, destroyed once.
        unsafe {
            let _ = lt::cublasLtDestroy(self.handle);
        }
    }
}

fn check(status: lt::cublasStatus_t, what: &str) -> Result<()> {
    if status == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Blas(format!("{what}: {status:?}")))
    }
}

impl Blas {
    /// `workspace` must stay valid (e.g. a region of an arena) for the life of this handle and
    /// must not be used by anything else that runs on the stream concurrently.
    pub fn new(dev: &Arc<CudaDevice>, workspace: DevPtr, workspace_bytes: usize) -> Result<Blas> {
        libs::require(Lib::CublasLt)?;
        dev.bind()?;
        let mut handle = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        check(unsafe { lt::cublasLtCreate(&mut handle) }, "cublasLtCreate")?;
        Ok(Blas {
            dev: dev.clone(),
            handle,
            workspace,
            workspace_bytes,
            plans: Mutex::new(HashMap::new()),
            autotune: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.dev
    }

    /// Experimental. When on, a shape's first GEMM times every algorithm cuBLASLt's heuristic
    /// proposes (up to 8) on the real operands and caches the fastest; off (the default), the
    /// heuristic's first choice is used. Plans already cached keep their algorithm.
    ///
    /// Measured on an H200 (docs/cuda.md): at DiT shapes the algorithms it picked mostly ran
    /// *slower* in the steady state than the heuristic's choice (8 of 10 cases, by 1-17%), so
    /// leave it off until the in-plan timing is understood.
    pub fn set_autotune(&self, on: bool) {
        self.autotune
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Forgets every cached plan (e.g. after changing the autotune setting).
    pub fn clear_plans(&self) {
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Number of cached plans (distinct shapes seen).
    pub fn cached_plans(&self) -> usize {
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Queues `args` on the device's stream.
    pub fn gemm(&self, args: &GemmArgs) -> Result<()> {
        args.check()?;
        // A row-major shared-`b` batch with untransposed `a` is one GEMM of batch * M rows.
        let mut g = *args;
        if g.batch > 1
            && g.stride_b == 0
            && !g.transpose_a
            && g.stride_a == g.m * g.ld_a
            && g.stride_d == g.m * g.ld_d
        {
            g.m *= g.batch;
            g.batch = 1;
        }
        let bias = g.epilogue.bias();
        let key = Key {
            m: g.m,
            n: g.n,
            k: g.k,
            ta: g.transpose_a,
            tb: g.transpose_b,
            ld: (g.ld_a, g.ld_b, g.ld_d),
            batch: g.batch,
            strides: if g.batch > 1 {
                (g.stride_a, g.stride_b, g.stride_d)
            } else {
                (0, 0, 0)
            },
            epilogue: g.epilogue.kind(),
            accumulate: g.accumulate,
            align: (
                g.a.alignment(),
                g.b.alignment(),
                g.d.alignment(),
                bias.map_or(256, |p| p.alignment()),
            ),
            f32: g.dtype == DType::F32,
        };
        self.dev.bind()?;
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        let plan = match plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.make_plan(&g, &key)?),
        };
        self.launch(plan, &g)
    }

    /// Queues one cublasLtMatmul of `g` with `plan`'s descriptors and algorithm.
    fn launch(&self, plan: &Plan, g: &GemmArgs) -> Result<()> {
        // SAFETY: descriptors are live (owned by `plan`); pointers are the caller's device
        // memory, sized as the layouts say.
        unsafe {
            if let Some(b) = g.epilogue.bias() {
                let p = b.0 as *const c_void;
                check(
                    lt::cublasLtMatmulDescSetAttribute(
                        plan.desc,
                        DescAttr::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                        &p as *const _ as *const c_void,
                        std::mem::size_of::<*const c_void>(),
                    ),
                    "set bias pointer",
                )?;
            }
            let alpha: f32 = 1.0;
            let beta: f32 = if g.accumulate { 1.0 } else { 0.0 };
            check(
                lt::cublasLtMatmul(
                    self.handle,
                    plan.desc,
                    &alpha as *const f32 as *const c_void,
                    g.b.0 as *const c_void, // A' = b
                    plan.layouts[0],
                    g.a.0 as *const c_void, // B' = a
                    plan.layouts[1],
                    &beta as *const f32 as *const c_void,
                    g.d.0 as *const c_void,
                    plan.layouts[2],
                    g.d.0 as *mut c_void,
                    plan.layouts[2],
                    &plan.algo,
                    self.workspace.0 as *mut c_void,
                    self.workspace_bytes,
                    self.dev.cu_stream() as lt::cudaStream_t,
                ),
                "cublasLtMatmul",
            )
        }
    }

    /// Mean time of `plan` on `g` over 10 back-to-back runs after 2 warm-up runs, or None if
    /// it fails.
    fn time_plan(&self, plan: &Plan, g: &GemmArgs) -> Option<f32> {
        const RUNS: usize = 10;
        for _ in 0..2 {
            self.launch(plan, g).ok()?;
        }
        let start = self.dev.record_event().ok()?;
        for _ in 0..RUNS {
            self.launch(plan, g).ok()?;
        }
        let end = self.dev.record_event().ok()?;
        Some(start.elapsed_ms(&end).ok()? / RUNS as f32)
    }

    fn make_plan(&self, g: &GemmArgs, key: &Key) -> Result<Plan> {
        use lt::cudaDataType::{CUDA_R_16BF, CUDA_R_32F};
        let element = if g.dtype == DType::F32 {
            CUDA_R_32F
        } else {
            CUDA_R_16BF
        };
        // SAFETY: every descriptor is created here and owned by the returned Plan (or destroyed
        // by its Drop on the error paths once wrapped).
        unsafe {
            let mut desc = std::ptr::null_mut();
            check(
                lt::cublasLtMatmulDescCreate(
                    &mut desc,
                    lt::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    CUDA_R_32F,
                ),
                "cublasLtMatmulDescCreate",
            )?;
            let mut plan = Plan {
                desc,
                layouts: [std::ptr::null_mut(); 3],
                algo: std::mem::zeroed(),
            };
            let set_desc = |attr: DescAttr, v: &i32| {
                check(
                    lt::cublasLtMatmulDescSetAttribute(
                        desc,
                        attr,
                        v as *const i32 as *const c_void,
                        std::mem::size_of::<i32>(),
                    ),
                    "cublasLtMatmulDescSetAttribute",
                )
            };
            // Column-major view: A' = b (N x K after op), B' = a (K x M after op), D = d^T (N x M).
            set_desc(
                DescAttr::CUBLASLT_MATMUL_DESC_TRANSA,
                &(g.transpose_b as i32),
            )?;
            set_desc(
                DescAttr::CUBLASLT_MATMUL_DESC_TRANSB,
                &(g.transpose_a as i32),
            )?;
            set_desc(
                DescAttr::CUBLASLT_MATMUL_DESC_EPILOGUE,
                &(g.epilogue.lt() as i32),
            )?;
            if g.epilogue.bias().is_some() {
                set_desc(
                    DescAttr::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                    &(element as i32),
                )?;
            }

            let (n, m, k) = (g.n as u64, g.m as u64, g.k as u64);
            // Stored (column-major) shapes: b is [K, N] row-major = N x K col-major (ld N);
            // transposed it is [N, K] = K x N col-major (ld K). Same for a with M.
            let a_rows_cols = if g.transpose_b { (k, n) } else { (n, k) };
            let b_rows_cols = if g.transpose_a { (m, k) } else { (k, m) };
            let specs = [
                (a_rows_cols, g.ld_b, g.stride_b),
                (b_rows_cols, g.ld_a, g.stride_a),
                ((n, m), g.ld_d, g.stride_d),
            ];
            for (i, ((rows, cols), ld, stride)) in specs.into_iter().enumerate() {
                check(
                    lt::cublasLtMatrixLayoutCreate(
                        &mut plan.layouts[i],
                        element,
                        rows,
                        cols,
                        ld as i64,
                    ),
                    "cublasLtMatrixLayoutCreate",
                )?;
                if g.batch > 1 {
                    let count = g.batch as i32;
                    let stride = stride as i64;
                    check(
                        lt::cublasLtMatrixLayoutSetAttribute(
                            plan.layouts[i],
                            LayoutAttr::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                            &count as *const i32 as *const c_void,
                            4,
                        ),
                        "set batch count",
                    )?;
                    check(
                        lt::cublasLtMatrixLayoutSetAttribute(
                            plan.layouts[i],
                            LayoutAttr::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                            &stride as *const i64 as *const c_void,
                            8,
                        ),
                        "set batch stride",
                    )?;
                }
            }

            let mut pref = std::ptr::null_mut();
            check(
                lt::cublasLtMatmulPreferenceCreate(&mut pref),
                "cublasLtMatmulPreferenceCreate",
            )?;
            struct PrefGuard(lt::cublasLtMatmulPreference_t);
            impl Drop for PrefGuard {
                fn drop(&mut self) {
                    // SAFETY: created above, destroyed once.
                    let _ = unsafe { lt::cublasLtMatmulPreferenceDestroy(self.0) };
                }
            }
            let pref = PrefGuard(pref);
            let ws = self.workspace_bytes as u64;
            check(
                lt::cublasLtMatmulPreferenceSetAttribute(
                    pref.0,
                    PrefAttr::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    &ws as *const u64 as *const c_void,
                    8,
                ),
                "set max workspace",
            )?;
            // A' = b, B' = a, C = D = d.
            let (al_a, al_b, al_d, _) = key.align;
            for (attr, align) in [
                (PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, al_b),
                (PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, al_a),
                (PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, al_d),
                (PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, al_d),
            ] {
                let v = align as u32;
                check(
                    lt::cublasLtMatmulPreferenceSetAttribute(
                        pref.0,
                        attr,
                        &v as *const u32 as *const c_void,
                        4,
                    ),
                    "set min alignment",
                )?;
            }

            let mut results: [lt::cublasLtMatmulHeuristicResult_t; 8] = std::mem::zeroed();
            let mut count = 0i32;
            check(
                lt::cublasLtMatmulAlgoGetHeuristic(
                    self.handle,
                    plan.desc,
                    plan.layouts[0],
                    plan.layouts[1],
                    plan.layouts[2],
                    plan.layouts[2],
                    pref.0,
                    results.len() as i32,
                    results.as_mut_ptr(),
                    &mut count,
                ),
                "cublasLtMatmulAlgoGetHeuristic",
            )?;
            let candidates: Vec<lt::cublasLtMatmulAlgo_t> = results[..count.max(0) as usize]
                .iter()
                .filter(|r| r.state == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
                .map(|r| r.algo)
                .collect();
            let Some(&first) = candidates.first() else {
                return Err(CudaError::Blas(format!("no cuBLASLt algorithm for {g:?}")));
            };
            plan.algo = first;
            // Autotune: time the heuristic's candidates on the real buffers and keep the fastest.
            // Not with `accumulate` (each run would add into d again) nor while capturing a graph.
            let capturing = self.dev.stream().capture_status()
                != Ok(cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE);
            if self.autotune.load(std::sync::atomic::Ordering::Relaxed)
                && !g.accumulate
                && !capturing
                && candidates.len() > 1
            {
                // The heuristic's first choice stays unless another is clearly (3%) faster.
                plan.algo = first;
                let mut best = (
                    self.time_plan(&plan, g).unwrap_or(f32::INFINITY) * 0.97,
                    first,
                );
                for &algo in &candidates[1..] {
                    plan.algo = algo;
                    if let Some(t) = self.time_plan(&plan, g) {
                        if t < best.0 {
                            best = (t, algo);
                        }
                    }
                }
                plan.algo = best.1;
            }
            Ok(plan)
        }
    }
}
