//! Microbenchmarks of the CUDA backend at DiT sizes (Qwen-Image: 24 heads x 128, N = 8448):
//! cuBLASLt GEMMs as linear layers (`x @ W^T`, W in nn.Linear layout) and the flash-attention
//! kernels (FA2 on `mma.sync`, and on compute capability 9.x the wgmma kernel, each checked
//! against an f64 reference first). Timed with CUDA events after warm-up; prints the median of
//! `--iters` runs.
//!
//! `attn_bwd` times the attention backward (FA2 `mma.sync` kernels and, on 9.x, the wgmma ones)
//! and compares their gradients with each other.
//!
//!     cargo run --release -p qie-runtime --example cuda_bench -- [--iters 30] [--only gemm|attn|attn_bwd|variants]
//!
//! The PyTorch counterpart is benches/torch/attention.py (same shapes, same card).

use std::sync::Arc;

use half::bf16;
use qie_runtime::cuda::attention::AttentionKernel;
use qie_runtime::cuda::attention_bwd::WgmmaBlocks;
use qie_runtime::cuda::blas::WORKSPACE_BYTES;
use qie_runtime::cuda::{
    ArenaLayout, AttentionArgs, AttentionGradArgs, Blas, CudaDevice, DevPtr, Epilogue,
    FlashAttention, FlashAttentionBackward, GemmArgs, KernelCache, Result, TensorStrides,
};

struct Timing {
    median_ms: f64,
    min_ms: f64,
}

/// Runs `f` `warmup` times, then `iters` times between event pairs; all events are read at the
/// end so the host never stalls the queue.
fn time(
    dev: &Arc<CudaDevice>,
    warmup: usize,
    iters: usize,
    f: &dyn Fn() -> Result<()>,
) -> Result<Timing> {
    for _ in 0..warmup {
        f()?;
    }
    dev.synchronize()?;
    let mut events = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = dev.record_event()?;
        f()?;
        let end = dev.record_event()?;
        events.push((start, end));
    }
    dev.synchronize()?;
    let mut ms: Vec<f64> = events
        .iter()
        .map(|(s, e)| s.elapsed_ms(e).map(|x| x as f64))
        .collect::<Result<_>>()?;
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(Timing {
        median_ms: ms[ms.len() / 2],
        min_ms: ms[0],
    })
}

fn fill_random(dev: &Arc<CudaDevice>, p: DevPtr, n: usize, scale: f32, seed: u64) -> Result<()> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let v: Vec<bf16> = (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let u = (s.wrapping_mul(0x2545F4914F6CDD1D) >> 40) as f32 / (1u64 << 24) as f32;
            bf16::from_f32((u * 2.0 - 1.0) * scale * 1.7320508)
        })
        .collect();
    dev.htod(p, &v)
}

fn report(name: &str, flops: f64, t: &Timing) {
    println!(
        "{name:<58} {:>8.3} ms  {:>7.1} TFLOP/s  (min {:.3} ms, {:.1} TFLOP/s)",
        t.median_ms,
        flops / t.median_ms / 1e9,
        t.min_ms,
        flops / t.min_ms / 1e9
    );
}

fn main() {
    if let Err(e) = run() {
        eprintln!("cuda_bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let iters: usize = value("--iters")
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
        .max(1);
    let only = value("--only").unwrap_or_default();
    let warmup = 5;

    let dev = CudaDevice::new(0)?;
    println!(
        "device: {}  driver {}  SMs {}",
        dev.info(),
        dev.driver_version(),
        dev.sm_count()
    );
    println!("median of {iters} runs after {warmup} warm-up runs, CUDA events, random bf16 data");
    if only == "variants" {
        return attention_variants(&dev, warmup, iters);
    }
    if only == "attn_bwd" {
        return attention_backward(&dev, warmup, iters);
    }

    if only.is_empty() || only == "gemm" {
        let mut layout = ArenaLayout::new();
        let ws = layout.reserve(WORKSPACE_BYTES);
        let x = layout.reserve(8448 * 3072 * 2);
        let w1 = layout.reserve(3072 * 3072 * 2);
        let w2 = layout.reserve(12288 * 3072 * 2);
        let bias = layout.reserve(12288 * 2);
        let out = layout.reserve(8448 * 12288 * 2);
        let arena = layout.allocate(&dev)?;
        let blas = Blas::new(&dev, arena.region(ws), WORKSPACE_BYTES)?;
        let (px, pw1, pw2, pb, po) = (
            arena.region(x),
            arena.region(w1),
            arena.region(w2),
            arena.region(bias),
            arena.region(out),
        );
        fill_random(&dev, px, 8448 * 3072, 1.0, 1)?;
        fill_random(&dev, pw1, 3072 * 3072, 0.02, 2)?;
        fill_random(&dev, pw2, 12288 * 3072, 0.02, 3)?;
        fill_random(&dev, pb, 12288, 0.1, 4)?;
        let cases = [
            (
                "gemm [8448,3072] x [3072,3072]^T (to_q/k/v, to_out)",
                GemmArgs::new(8448, 3072, 3072, px, pw1, po).transpose_b(),
            ),
            (
                "gemm [8448,3072] x [3072,3072]^T + bias",
                GemmArgs::new(8448, 3072, 3072, px, pw1, po)
                    .transpose_b()
                    .epilogue(Epilogue::Bias(pb)),
            ),
            (
                "gemm [8192,3072] x [3072,12288]^T (mlp up)",
                GemmArgs::new(8192, 12288, 3072, px, pw2, po).transpose_b(),
            ),
            (
                "gemm [8192,3072] x [3072,12288]^T + bias + gelu_tanh",
                GemmArgs::new(8192, 12288, 3072, px, pw2, po)
                    .transpose_b()
                    .epilogue(Epilogue::GeluBias(pb)),
            ),
            (
                "gemm [8192,12288] x [12288,3072]^T (mlp down)",
                GemmArgs::new(8192, 3072, 12288, po, pw2, px).transpose_b(),
            ),
        ];
        for (name, g) in cases {
            let t = time(&dev, warmup, iters, &|| blas.gemm(&g))?;
            report(name, g.flops(), &t);
        }
        // The same with autotuning: each shape times cuBLASLt's candidate algorithms once.
        blas.clear_plans();
        blas.set_autotune(true);
        for (name, g) in cases {
            let t = time(&dev, warmup, iters, &|| blas.gemm(&g))?;
            report(&format!("{name} [autotuned]"), g.flops(), &t);
        }
    }

    if only.is_empty() || only == "attn" {
        let (b, n, h, d) = (1usize, 8448usize, 24usize, 128usize);
        let elems = b * n * h * d;
        let mut layout = ArenaLayout::new();
        let rq = layout.reserve(elems * 2);
        let rk = layout.reserve(elems * 2);
        let rv = layout.reserve(elems * 2);
        let ro = layout.reserve(elems * 2);
        let rl = layout.reserve(b * 2 * h * n * 4); // also the D64 run with 2h heads
        let rm = layout.reserve(b * n);
        let arena = layout.allocate(&dev)?;
        let (pq, pk, pv, po, pl, pm) = (
            arena.region(rq),
            arena.region(rk),
            arena.region(rv),
            arena.region(ro),
            arena.region(rl),
            arena.region(rm),
        );
        fill_random(&dev, pq, elems, 1.0, 5)?;
        fill_random(&dev, pk, elems, 1.0, 6)?;
        fill_random(&dev, pv, elems, 1.0, 7)?;
        // Joint [text; image] order with 20 padded text tokens masked (text is first 256 keys).
        let mask: Vec<u8> = (0..n).map(|j| u8::from(!(236..256).contains(&j))).collect();
        dev.htod(pm, &mask)?;
        let cache = KernelCache::default_location();
        let kinds: Vec<AttentionKernel> = [AttentionKernel::Fa2, AttentionKernel::Wgmma]
            .into_iter()
            .filter(|k| k.supported(&dev))
            .collect();
        let plain = AttentionArgs::contiguous(b, n, n, h, d, pq, pk, pv, DevPtr::NULL, po, pl);
        let masked = AttentionArgs { mask: pm, ..plain };
        // Output of the first kernel on the masked DiT-size problem, to compare the others with.
        let mut first_out: Option<Vec<bf16>> = None;
        for kind in kinds {
            let fa = FlashAttention::with_kernel(&dev, &cache, kind, &[])?;
            let err = check_attention(&dev, &fa, [pq, pk, pv, pm, po, pl])?;
            println!(
                "attention kernel {}: {:?} (modules from cache: {}), rel-L2 vs f64 reference {err:.2e}{}",
                kind.name(),
                fa.kernel(d).attributes()?,
                fa.from_cache,
                if err < 1e-2 { "" } else { "  ** WRONG **" }
            );
            // the check overwrote the inputs: refill them (same data for every kernel)
            fill_random(&dev, pq, elems, 1.0, 5)?;
            fill_random(&dev, pk, elems, 1.0, 6)?;
            fill_random(&dev, pv, elems, 1.0, 7)?;
            dev.htod(pm, &mask)?;
            let k = kind.name();
            let t = time(&dev, warmup, iters, &|| fa.forward(&plain))?;
            report(
                &format!("[{k}] attention fwd B1 N8448 H24 D128 (no mask)"),
                plain.flops(),
                &t,
            );
            let t = time(&dev, warmup, iters, &|| fa.forward(&masked))?;
            report(
                &format!("[{k}] attention fwd B1 N8448 H24 D128 (key padding mask)"),
                masked.flops(),
                &t,
            );
            let mut out = vec![bf16::ZERO; elems];
            dev.dtoh(&mut out, po)?;
            match &first_out {
                None => first_out = Some(out),
                Some(f) => {
                    let (mut num, mut den) = (0f64, 0f64);
                    for (a, r) in out.iter().zip(f) {
                        let (a, r) = (a.to_f64(), r.to_f64());
                        num += if a.is_finite() {
                            (a - r) * (a - r)
                        } else {
                            f64::INFINITY
                        };
                        den += r * r;
                    }
                    println!(
                        "[{k}] DiT-size masked output vs the first kernel's: rel-L2 {:.2e}",
                        (num / den).sqrt()
                    );
                }
            }
            if kind == AttentionKernel::Fa2 {
                let d64 =
                    AttentionArgs::contiguous(b, n, n, 2 * h, 64, pq, pk, pv, DevPtr::NULL, po, pl);
                let t = time(&dev, warmup, iters, &|| fa.forward(&d64))?;
                report(
                    &format!("[{k}] attention fwd B1 N8448 H48 D64 (no mask)"),
                    d64.flops(),
                    &t,
                );
            }
            // One launch per replay: the graph path a captured denoising step uses.
            let graph = dev.capture(|| fa.forward(&masked))?;
            let t = time(&dev, warmup, iters, &|| graph.replay())?;
            report(
                &format!("[{k}] attention fwd (masked) replayed from a CUDA graph"),
                masked.flops(),
                &t,
            );
        }
    }
    Ok(())
}

/// Naive f64 attention over contiguous [1, S, H, D] bf16 inputs with a key mask.
fn reference_attention(
    q: &[bf16],
    k: &[bf16],
    v: &[bf16],
    mask: &[u8],
    s: usize,
    h: usize,
    d: usize,
) -> Vec<f64> {
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0f64; s * h * d];
    let at = |x: &[bf16], i: usize, hh: usize, dd: usize| x[(i * h + hh) * d + dd].to_f64();
    for hh in 0..h {
        for i in 0..s {
            let scores: Vec<f64> = (0..s)
                .map(|j| {
                    if mask[j] == 0 {
                        f64::NEG_INFINITY
                    } else {
                        (0..d)
                            .map(|x| at(q, i, hh, x) * at(k, j, hh, x))
                            .sum::<f64>()
                            * scale
                    }
                })
                .collect();
            let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|x| (x - mx).exp()).collect();
            let sum: f64 = w.iter().sum();
            for x in 0..d {
                out[(i * h + hh) * d + x] =
                    (0..s).map(|j| w[j] * at(v, j, hh, x)).sum::<f64>() / sum;
            }
        }
    }
    out
}

/// Runs `fa` on a small masked problem (S = 300, H = 2, D = 128, keys 280.. masked) in the
/// buffers `[q, k, v, mask, out, lse]` (each at least that big) and returns the rel-L2 error of
/// the output against an f64 reference (non-finite outputs count as infinite error).
fn check_attention(dev: &Arc<CudaDevice>, fa: &FlashAttention, bufs: [DevPtr; 6]) -> Result<f64> {
    let [pq, pk, pv, pm, po, pl] = bufs;
    let (sn, sh, d) = (300usize, 2usize, 128usize);
    let host = |seed: u64| -> Vec<bf16> {
        let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        (0..sn * sh * d)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                bf16::from_f32(
                    ((x.wrapping_mul(0x2545F4914F6CDD1D) >> 40) as f32 / (1u64 << 24) as f32) * 3.4
                        - 1.7,
                )
            })
            .collect()
    };
    let (q, k, v) = (host(11), host(12), host(13));
    let mask: Vec<u8> = (0..sn).map(|j| u8::from(j < 280)).collect();
    let reference = reference_attention(&q, &k, &v, &mask, sn, sh, d);
    dev.htod(pq, &q)?;
    dev.htod(pk, &k)?;
    dev.htod(pv, &v)?;
    dev.htod(pm, &mask)?;
    dev.htod(po, &vec![0x7fc0u16; sn * sh * d])?;
    fa.forward(&AttentionArgs::contiguous(
        1, sn, sn, sh, d, pq, pk, pv, pm, po, pl,
    ))?;
    let mut out = vec![bf16::ZERO; sn * sh * d];
    dev.dtoh(&mut out, po)?;
    let (mut num, mut den) = (0f64, 0f64);
    for (o, r) in out.iter().zip(&reference) {
        let o = o.to_f64();
        num += if o.is_finite() {
            (o - r) * (o - r)
        } else {
            f64::INFINITY
        };
        den += r * r;
    }
    Ok((num / den).sqrt())
}

/// Times the flash-attention kernel's tuning variants (NVRTC -D switches) at DiT size, after
/// checking each against an f64 reference on a small masked problem.
fn attention_variants(dev: &Arc<CudaDevice>, warmup: usize, iters: usize) -> Result<()> {
    let variants: [(&str, &[&str]); 4] = [
        ("default (unroll 8, skip, mask pipe)", &[]),
        ("unroll 8, no skip-rescale", &["-DFA_SKIP_RESCALE=0"]),
        (
            "unroll 2 + prefetch Q",
            &["-DFA_KS_UNROLL=2", "-DFA_PREFETCH_Q=1"],
        ),
        ("unroll 1", &["-DFA_KS_UNROLL=1"]),
    ];

    let d = 128usize;
    let (n, h) = (8448usize, 24usize);
    let big = n * h * d;
    let mut layout = ArenaLayout::new();
    let r: Vec<_> = (0..4).map(|_| layout.reserve(big * 2)).collect();
    let rl = layout.reserve(2 * h * n * 4);
    let rm = layout.reserve(n);
    let arena = layout.allocate(dev)?;
    let (pq, pk, pv, po, pl, pm) = (
        arena.region(r[0]),
        arena.region(r[1]),
        arena.region(r[2]),
        arena.region(r[3]),
        arena.region(rl),
        arena.region(rm),
    );
    let cache = KernelCache::default_location();
    println!(
        "{:<36} {:>5} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "variant (TFLOP/s at N=8448)", "regs", "local", "rel-L2", "D128", "D128 mask", "D64 H48"
    );
    for (name, flags) in variants {
        let opts: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        let fa = FlashAttention::with_options(dev, &cache, &opts)?;
        let attr = fa.kernel(d).attributes()?;
        // correctness on the small problem
        let err = check_attention(dev, &fa, [pq, pk, pv, pm, po, pl])?;
        // timing at DiT size
        fill_random(dev, pq, big, 1.0, 5)?;
        fill_random(dev, pk, big, 1.0, 6)?;
        fill_random(dev, pv, big, 1.0, 7)?;
        let dit_mask: Vec<u8> = (0..n).map(|j| u8::from(!(236..256).contains(&j))).collect();
        dev.htod(pm, &dit_mask)?;
        let plain = AttentionArgs::contiguous(1, n, n, h, d, pq, pk, pv, DevPtr::NULL, po, pl);
        let masked = AttentionArgs { mask: pm, ..plain };
        let d64 = AttentionArgs::contiguous(1, n, n, 2 * h, 64, pq, pk, pv, DevPtr::NULL, po, pl);
        let t = time(dev, warmup, iters, &|| fa.forward(&plain))?;
        let tm = time(dev, warmup, iters, &|| fa.forward(&masked))?;
        let t64 = time(dev, warmup, iters, &|| fa.forward(&d64))?;
        println!(
            "{name:<36} {:>5} {:>6} {err:>9.2e} {:>9.1} {:>9.1} {:>9.1}",
            attr.registers,
            attr.local_bytes,
            plain.flops() / t.median_ms / 1e9,
            masked.flops() / tm.median_ms / 1e9,
            d64.flops() / t64.median_ms / 1e9
        );
    }
    Ok(())
}

/// Attention backward at DiT size (B1 N8448 H24 D128, 20 masked text keys): each kernel kind
/// timed (the call includes its forward recompute, timed alone too), and the gradients of the
/// kinds compared with the first one's (rel-L2 over dQ, dK, dV).
fn attention_backward(dev: &Arc<CudaDevice>, warmup: usize, iters: usize) -> Result<()> {
    let (b, n, h, d) = (1usize, 8448usize, 24usize, 128usize);
    let elems = b * n * h * d;
    let mut layout = ArenaLayout::new();
    let bf = |layout: &mut ArenaLayout| layout.reserve(elems * 2);
    let regions: Vec<_> = (0..8).map(|_| bf(&mut layout)).collect(); // q k v o dout dq dk dv
    let rl = layout.reserve(b * h * n * 4);
    let rd = layout.reserve(b * h * n * 4);
    let rm = layout.reserve(b * n);
    let arena = layout.allocate(dev)?;
    let p: Vec<DevPtr> = regions.iter().map(|r| arena.region(*r)).collect();
    let (pl, pd, pm) = (arena.region(rl), arena.region(rd), arena.region(rm));
    for (i, seed) in [(0usize, 11u64), (1, 12), (2, 13), (4, 14)] {
        fill_random(dev, p[i], elems, 1.0, seed)?;
    }
    let mask: Vec<u8> = (0..n).map(|j| u8::from(!(236..256).contains(&j))).collect();
    dev.htod(pm, &mask)?;
    let forward = AttentionArgs::contiguous(b, n, n, h, d, p[0], p[1], p[2], pm, p[3], pl);
    let strides = TensorStrides::contiguous(n, h, d);
    let args = AttentionGradArgs {
        forward,
        dout: p[4],
        dout_strides: strides,
        delta: pd,
        dq: p[5],
        dk: p[6],
        dv: p[7],
        grad_strides: strides,
    };
    let cache = KernelCache::default_location();
    let mut first: Option<Vec<bf16>> = None;
    for kind in [AttentionKernel::Fa2, AttentionKernel::Wgmma] {
        if !kind.supported(dev) {
            continue;
        }
        let fa = FlashAttention::with_kernel(dev, &cache, kind, &[])?;
        let k = kind.name();
        let t = time(dev, warmup, iters, &|| fa.forward(&forward))?;
        report(
            &format!("[{k}] attention fwd (masked)"),
            forward.flops(),
            &t,
        );
        // wgmma: the block shapes (warpgroups per dQ / dK-dV block); the default one last, so
        // its gradients are the ones compared.
        let shapes: Vec<WgmmaBlocks> = if kind == AttentionKernel::Wgmma {
            [(1, 1), (2, 2), (3, 1), (3, 2)]
                .map(|(dq, dkdv)| WgmmaBlocks { dq, dkdv })
                .into_iter()
                .filter(|b| *b != WgmmaBlocks::DEFAULT)
                .chain([WgmmaBlocks::DEFAULT])
                .collect()
        } else {
            vec![WgmmaBlocks::DEFAULT]
        };
        // Every block shape runs the same per-row arithmetic: the gradients must be identical.
        let mut shape_grads: Option<Vec<bf16>> = None;
        for blocks in shapes {
            let fb = FlashAttentionBackward::with_blocks(dev, &cache, kind, blocks)?;
            let t = time(dev, warmup, iters, &|| fb.backward(&fa, &args))?;
            let shape = if kind == AttentionKernel::Wgmma {
                format!(" dq x{} dkdv x{}", blocks.dq, blocks.dkdv)
            } else {
                String::new()
            };
            report(
                &format!("[{k}{shape}] attention bwd call (2.5x fwd; + its fwd)"),
                args.flops(),
                &t,
            );
            let mut g = vec![bf16::ZERO; 3 * elems];
            for (i, chunk) in g.chunks_mut(elems).enumerate() {
                dev.dtoh(chunk, p[5 + i])?;
            }
            match &shape_grads {
                None => shape_grads = Some(g),
                Some(first) => {
                    let same = first
                        .iter()
                        .zip(&g)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    println!(
                        "[{k}{shape}] gradients bit-identical to the first shape's: {same}{}",
                        if same { "" } else { "  ** WRONG **" }
                    );
                }
            }
        }
        let mut grads = vec![bf16::ZERO; 3 * elems];
        for (i, chunk) in grads.chunks_mut(elems).enumerate() {
            dev.dtoh(chunk, p[5 + i])?;
        }
        let finite = grads.iter().all(|x| x.is_finite());
        match &first {
            None => {
                println!("[{k}] gradients finite: {finite}");
                first = Some(grads);
            }
            Some(f) => {
                let (mut num, mut den) = (0f64, 0f64);
                for (a, r) in grads.iter().zip(f) {
                    let (a, r) = (a.to_f64(), r.to_f64());
                    num += (a - r) * (a - r);
                    den += r * r;
                }
                let rel = (num / den).sqrt();
                println!(
                    "[{k}] gradients finite: {finite}; dQ/dK/dV vs the first kernel's: rel-L2 {rel:.2e}{}",
                    if finite && rel < 2e-2 { "" } else { "  ** WRONG **" }
                );
            }
        }
    }
    Ok(())
}
