//! Flash-attention kernels against a naive f64 softmax attention on the CPU: masks, ragged
//! lengths, fully masked rows, strided (packed qkv) inputs, head_dim 64 and 128, and the
//! log-sum-exp output. Every test runs each kernel the device supports: the FA2 (`mma.sync`)
//! kernel everywhere and the wgmma (sm_90a) kernel on compute capability 9.x. Reported ignored,
//! with the reason, on machines without a CUDA device.

mod cuda_common;
mod gpu_harness;

use std::sync::Arc;

use cuda_common::*;
use half::bf16;
use qie_runtime::cuda::attention::AttentionKernel;
use qie_runtime::cuda::{
    Arena, ArenaLayout, AttentionArgs, CudaDevice, DevPtr, FlashAttention, KernelCache,
    TensorStrides,
};
use std::process::ExitCode;

fn main() -> ExitCode {
    gpu_harness::run(gpu_tests![
        Cpu => attention_kernel_names_parse;
        Cuda => attention_d128_masked_matches_reference, attention_unmasked_and_ragged_lengths,
            attention_long_masked, attention_d64, attention_fully_masked_rows_give_zero,
            attention_packed_qkv_strides, attention_rejects_bad_arguments, attention_kernel_choice;
    ])
}

struct Problem {
    b: usize,
    sq: usize,
    sk: usize,
    h: usize,
    d: usize,
    /// None: no mask; Some(per-batch keep flags [B * Sk]).
    mask: Option<Vec<u8>>,
    /// q, k and v are views into one packed [B, S, 3, H, D] tensor (Sq == Sk).
    packed_qkv: bool,
}

/// Reference: per (b, h, i): softmax over unmasked keys of q.k * scale, then @ v; rows with no
/// unmasked key give 0 and lse = +inf.
#[allow(clippy::too_many_arguments)]
fn reference(
    p: &Problem,
    q: &dyn Fn(usize, usize, usize, usize) -> f64,
    k: &dyn Fn(usize, usize, usize, usize) -> f64,
    v: &dyn Fn(usize, usize, usize, usize) -> f64,
) -> (Vec<f64>, Vec<f64>) {
    let scale = 1.0 / (p.d as f64).sqrt();
    let mut out = vec![0f64; p.b * p.sq * p.h * p.d];
    let mut lse = vec![0f64; p.b * p.h * p.sq];
    let mut s = vec![0f64; p.sk];
    for b in 0..p.b {
        for h in 0..p.h {
            for i in 0..p.sq {
                let mut mx = f64::NEG_INFINITY;
                for j in 0..p.sk {
                    let keep = p.mask.as_ref().is_none_or(|m| m[b * p.sk + j] != 0);
                    s[j] = if keep {
                        (0..p.d).map(|x| q(b, i, h, x) * k(b, j, h, x)).sum::<f64>() * scale
                    } else {
                        f64::NEG_INFINITY
                    };
                    mx = mx.max(s[j]);
                }
                let o = &mut out[((b * p.sq + i) * p.h + h) * p.d..][..p.d];
                if mx == f64::NEG_INFINITY {
                    lse[(b * p.h + h) * p.sq + i] = f64::INFINITY;
                    continue;
                }
                let mut sum = 0f64;
                for (j, &sj) in s.iter().enumerate() {
                    let w = (sj - mx).exp();
                    sum += w;
                    if w != 0.0 {
                        for (x, ox) in o.iter_mut().enumerate() {
                            *ox += w * v(b, j, h, x);
                        }
                    }
                }
                o.iter_mut().for_each(|x| *x /= sum);
                lse[(b * p.h + h) * p.sq + i] = mx + sum.ln();
            }
        }
    }
    (out, lse)
}

/// Runs `p` on the device with fresh random inputs; returns (rel-L2 of out, max |lse error|
/// over finite rows, whether the infinite-lse rows match).
fn run(dev: &Arc<CudaDevice>, fa: &FlashAttention, p: &Problem, seed: u64) -> (f64, f64, bool) {
    let mut rng = Rng::new(seed);
    let (b, sq, sk, h, d) = (p.b, p.sq, p.sk, p.h, p.d);
    let mut layout = ArenaLayout::new();
    let (q_host, k_host, v_host, qkv_host);
    let (rq, rk, rv, rqkv);
    if p.packed_qkv {
        assert_eq!(sq, sk);
        let (x, _) = random_bf16(&mut rng, b * sq * 3 * h * d, 1.0);
        qkv_host = Some(x);
        q_host = None;
        k_host = None;
        v_host = None;
        rqkv = Some(layout.reserve(b * sq * 3 * h * d * 2));
        rq = None;
        rk = None;
        rv = None;
    } else {
        q_host = Some(random_bf16(&mut rng, b * sq * h * d, 1.0).0);
        k_host = Some(random_bf16(&mut rng, b * sk * h * d, 1.0).0);
        v_host = Some(random_bf16(&mut rng, b * sk * h * d, 1.0).0);
        qkv_host = None;
        rq = Some(layout.reserve(b * sq * h * d * 2));
        rk = Some(layout.reserve(b * sk * h * d * 2));
        rv = Some(layout.reserve(b * sk * h * d * 2));
        rqkv = None;
    }
    let ro = layout.reserve(b * sq * h * d * 2);
    let rl = layout.reserve(b * h * sq * 4);
    let rm = layout.reserve(b * sk);
    let arena = layout.allocate(dev).unwrap();

    let (pq, pk, pv, strides_q, strides_kv) = if let Some(r) = rqkv {
        let base = arena.region(r);
        dev.htod(base, qkv_host.as_ref().unwrap()).unwrap();
        let st = TensorStrides {
            batch: sq * 3 * h * d,
            seq: 3 * h * d,
            head: d,
        };
        (
            base,
            base.offset(h * d * 2),
            base.offset(2 * h * d * 2),
            st,
            st,
        )
    } else {
        let (pq, pk, pv) = (
            arena.region(rq.unwrap()),
            arena.region(rk.unwrap()),
            arena.region(rv.unwrap()),
        );
        dev.htod(pq, q_host.as_ref().unwrap()).unwrap();
        dev.htod(pk, k_host.as_ref().unwrap()).unwrap();
        dev.htod(pv, v_host.as_ref().unwrap()).unwrap();
        (
            pq,
            pk,
            pv,
            TensorStrides::contiguous(sq, h, d),
            TensorStrides::contiguous(sk, h, d),
        )
    };
    let pm = match &p.mask {
        Some(m) => {
            let pm = arena.region(rm);
            dev.htod(pm, m).unwrap();
            pm
        }
        None => DevPtr::NULL,
    };
    let (po, pl) = (arena.region(ro), arena.region(rl));

    let mut args = AttentionArgs::contiguous(b, sq, sk, h, d, pq, pk, pv, pm, po, pl);
    args.q_strides = strides_q;
    args.k_strides = strides_kv;
    args.v_strides = strides_kv;

    let mut outs = Vec::new();
    for _ in 0..2 {
        dev.htod(po, &poison_bf16(b * sq * h * d)).unwrap();
        dev.htod(pl, &vec![f32::NAN; b * h * sq]).unwrap();
        fa.forward(&args).unwrap();
        let mut out = vec![bf16::ZERO; b * sq * h * d];
        let mut lse = vec![0f32; b * h * sq];
        dev.dtoh(&mut out, po).unwrap();
        dev.dtoh(&mut lse, pl).unwrap();
        outs.push((out, lse));
    }
    let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&outs[0].0),
        bits(&outs[1].0),
        "two runs on the same inputs differ: a race"
    );
    let (out, lse) = &outs[0];

    let (ref_out, ref_lse) = if let Some(x) = &qkv_host {
        let at = |b: usize, s: usize, part: usize, hh: usize, dd: usize| {
            x[(((b * sq + s) * 3 + part) * h + hh) * d + dd].to_f64()
        };
        reference(
            p,
            &|b, s, hh, dd| at(b, s, 0, hh, dd),
            &|b, s, hh, dd| at(b, s, 1, hh, dd),
            &|b, s, hh, dd| at(b, s, 2, hh, dd),
        )
    } else {
        let (q, k, v) = (
            q_host.as_ref().unwrap(),
            k_host.as_ref().unwrap(),
            v_host.as_ref().unwrap(),
        );
        reference(
            p,
            &|b, s, hh, dd| q[((b * sq + s) * h + hh) * d + dd].to_f64(),
            &|b, s, hh, dd| k[((b * sk + s) * h + hh) * d + dd].to_f64(),
            &|b, s, hh, dd| v[((b * sk + s) * h + hh) * d + dd].to_f64(),
        )
    };
    let err = rel_l2(&to_f64(out), &ref_out);
    let mut lse_err = 0f64;
    let mut inf_ok = true;
    for (g, r) in lse.iter().zip(&ref_lse) {
        if r.is_infinite() {
            inf_ok &= *g == f32::INFINITY;
        } else if g.is_finite() {
            lse_err = lse_err.max((*g as f64 - r).abs());
        } else {
            lse_err = f64::INFINITY;
        }
    }
    (err, lse_err, inf_ok)
}

/// The device and every attention kernel it can run (FA2; wgmma on compute capability 9.x).
fn setup() -> (Arc<CudaDevice>, Vec<FlashAttention>) {
    let dev = qie_runtime::cuda::test_device();
    let cache = KernelCache::default_location();
    let mut kernels = Vec::new();
    for kind in [AttentionKernel::Fa2, AttentionKernel::Wgmma] {
        if !kind.supported(&dev) {
            println!(
                "attention kernel {}: not supported on this device",
                kind.name()
            );
            continue;
        }
        let fa = FlashAttention::with_kernel(&dev, &cache, kind, &[]).unwrap();
        assert_eq!(fa.kind(), kind);
        let attr = fa.kernel(128).attributes().unwrap();
        println!("attention kernel {} (head_dim 128): {attr:?}", kind.name());
        kernels.push(fa);
    }
    (dev, kernels)
}

fn check(name: &str, dev: &Arc<CudaDevice>, kernels: &[FlashAttention], p: &Problem, seed: u64) {
    for fa in kernels {
        let name = format!("[{}] {name}", fa.kind().name());
        let (err, lse_err, inf_ok) = run(dev, fa, p, seed);
        println!(
            "{name}: out rel-L2 {err:.2e}, lse max abs err {lse_err:.2e}, inf rows ok {inf_ok}"
        );
        assert!(err <= 2e-2, "{name}: out rel-L2 {err}");
        assert!(lse_err <= 1e-2, "{name}: lse error {lse_err}");
        assert!(inf_ok, "{name}: fully masked rows must have lse = +inf");
    }
}

/// Keys kept: batch 0 the first `sk - 23`, batch 1 a random ~70%.
fn padding_mask(rng: &mut Rng, b: usize, sk: usize) -> Vec<u8> {
    let mut m = vec![0u8; b * sk];
    for bi in 0..b {
        for j in 0..sk {
            m[bi * sk + j] = match bi % 2 {
                0 => (j + 23 < sk) as u8,
                _ => (rng.uniform() < 0.4) as u8,
            };
        }
    }
    m
}

fn attention_d128_masked_matches_reference() {
    let (dev, fa) = setup();
    let mut rng = Rng::new(11);
    let p = Problem {
        b: 2,
        sq: 300,
        sk: 300,
        h: 3,
        d: 128,
        mask: Some(padding_mask(&mut rng, 2, 300)),
        packed_qkv: false,
    };
    check("d128 B2 S300 H3 masked", &dev, &fa, &p, 1);
}

fn attention_unmasked_and_ragged_lengths() {
    let (dev, fa) = setup();
    for (i, (sq, sk)) in [
        (300usize, 300usize),
        (130, 200),
        (64, 1),
        (1, 77),
        (129, 64),
        (257, 520),
    ]
    .into_iter()
    .enumerate()
    {
        let p = Problem {
            b: 1,
            sq,
            sk,
            h: 2,
            d: 128,
            mask: None,
            packed_qkv: false,
        };
        check(
            &format!("d128 Sq{sq} Sk{sk} no mask"),
            &dev,
            &fa,
            &p,
            20 + i as u64,
        );
    }
}

/// Many K/V tiles: the wgmma kernel's K/V rings (3 stages) and mask-flag ring (8 slots) wrap
/// several times; ragged Sq and Sk, random mask.
fn attention_long_masked() {
    let (dev, fa) = setup();
    let mut rng = Rng::new(14);
    let p = Problem {
        b: 2,
        sq: 390,
        sk: 1250,
        h: 1,
        d: 128,
        mask: Some(padding_mask(&mut rng, 2, 1250)),
        packed_qkv: false,
    };
    check("d128 B2 Sq390 Sk1250 masked", &dev, &fa, &p, 5);
}

fn attention_d64() {
    let (dev, fa) = setup();
    let mut rng = Rng::new(12);
    let p = Problem {
        b: 2,
        sq: 200,
        sk: 333,
        h: 4,
        d: 64,
        mask: Some(padding_mask(&mut rng, 2, 333)),
        packed_qkv: false,
    };
    check("d64 B2 Sq200 Sk333 masked", &dev, &fa, &p, 2);
}

fn attention_fully_masked_rows_give_zero() {
    let (dev, fa) = setup();
    // Batch 0 keeps no key at all; batch 1 keeps only the last key of the last tile.
    let (b, s) = (2, 150);
    let mut mask = vec![0u8; b * s];
    mask[2 * s - 1] = 1;
    let p = Problem {
        b,
        sq: s,
        sk: s,
        h: 2,
        d: 128,
        mask: Some(mask),
        packed_qkv: false,
    };
    check("fully masked batch", &dev, &fa, &p, 3);
}

fn attention_packed_qkv_strides() {
    let (dev, fa) = setup();
    let mut rng = Rng::new(13);
    let p = Problem {
        b: 2,
        sq: 190,
        sk: 190,
        h: 3,
        d: 128,
        mask: Some(padding_mask(&mut rng, 2, 190)),
        packed_qkv: true,
    };
    check("packed qkv [B, S, 3, H, D]", &dev, &fa, &p, 4);
}

fn attention_rejects_bad_arguments() {
    let (dev, fa) = setup();
    let arena = Arena::new(&dev, 1 << 20).unwrap();
    let p = arena.base();
    for fa in &fa {
        let args = AttentionArgs::contiguous(1, 16, 16, 1, 96, p, p, p, DevPtr::NULL, p, p);
        assert!(fa.forward(&args).is_err(), "head_dim 96 is not supported");
        let args =
            AttentionArgs::contiguous(1, 16, 16, 1, 128, p.offset(2), p, p, DevPtr::NULL, p, p);
        assert!(fa.forward(&args).is_err(), "misaligned q");
    }
}

fn attention_kernel_names_parse() {
    assert_eq!(
        "fa2".parse::<AttentionKernel>().unwrap(),
        AttentionKernel::Fa2
    );
    assert_eq!(
        "WGMMA".parse::<AttentionKernel>().unwrap(),
        AttentionKernel::Wgmma
    );
    assert!("fa4".parse::<AttentionKernel>().is_err());
}

fn attention_kernel_choice() {
    let (dev, _) = setup();
    let cc = dev.info().compute_capability;
    let wgmma = AttentionKernel::Wgmma.supported(&dev);
    assert_eq!(wgmma, cc.0 == 9, "wgmma on compute capability 9.x only");
    if std::env::var_os("QIE_ATTN_KERNEL").is_none() {
        let fa = FlashAttention::new(&dev, &KernelCache::default_location()).unwrap();
        let expect = if wgmma {
            AttentionKernel::Wgmma
        } else {
            AttentionKernel::Fa2
        };
        assert_eq!(
            fa.kind(),
            expect,
            "default kernel on compute capability {cc:?}"
        );
    }
}
