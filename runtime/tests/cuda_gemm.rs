//! cuBLASLt bf16 GEMMs against a CPU f64 reference: transposes, batches, epilogues, graphs;
//! and f32 GEMMs, which must be full f32 (no TF32).
//! Reported ignored, with the reason, on machines without a CUDA device.

mod cuda_common;
mod gpu_harness;

use std::sync::Arc;

use cuda_common::*;
use half::bf16;
use qie_runtime::cuda::blas::WORKSPACE_BYTES;
use qie_runtime::cuda::{Arena, ArenaLayout, Blas, CudaDevice, Epilogue, GemmArgs};
use std::process::ExitCode;

fn main() -> ExitCode {
    gpu_harness::run(gpu_tests![
        Cuda => gemm_layouts_match_f64_reference, gemm_epilogues_match_f64_reference,
            gemm_autotuned_algorithms_match_f64_reference, gemm_plans_are_cached_per_shape,
            gemm_replays_in_a_cuda_graph, gemm_f32_is_full_precision;
    ])
}

struct Case {
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    share_b: bool,
    ta: bool,
    tb: bool,
    epilogue: u8, // 0 none, 1 bias, 2 gelu, 3 gelu+bias
    accumulate: bool,
}

/// Runs one case on the device and returns the rel-L2 error against the f64 reference.
fn run_case(dev: &Arc<CudaDevice>, blas: &Blas, c: &Case, seed: u64) -> f64 {
    let mut rng = Rng::new(seed);
    let nb = if c.share_b { 1 } else { c.batch };
    let (a, af) = random_bf16(&mut rng, c.batch * c.m * c.k, 1.0);
    let (b, bf) = random_bf16(&mut rng, nb * c.k * c.n, 1.0 / (c.k as f32).sqrt());
    let (bias, biasf) = random_bf16(&mut rng, c.n, 0.5);
    let (d0, d0f) = random_bf16(&mut rng, c.batch * c.m * c.n, 1.0);

    let mut layout = ArenaLayout::new();
    let ra = layout.reserve(a.len() * 2);
    let rb = layout.reserve(b.len() * 2);
    let rbias = layout.reserve(bias.len() * 2);
    let rd = layout.reserve(d0.len() * 2);
    let arena = layout.allocate(dev).unwrap();
    let (pa, pb, pbias, pd) = (
        arena.region(ra),
        arena.region(rb),
        arena.region(rbias),
        arena.region(rd),
    );
    dev.htod(pa, &a).unwrap();
    dev.htod(pb, &b).unwrap();
    dev.htod(pbias, &bias).unwrap();
    if c.accumulate {
        dev.htod(pd, &d0).unwrap();
    } else {
        dev.htod(pd, &poison_bf16(d0.len())).unwrap();
    }

    let mut args = GemmArgs::new(c.m, c.n, c.k, pa, pb, pd);
    if c.ta {
        args = args.transpose_a();
    }
    if c.tb {
        args = args.transpose_b();
    }
    if c.batch > 1 {
        args = args.batched(c.batch, c.share_b);
    }
    args = args
        .epilogue(match c.epilogue {
            0 => Epilogue::None,
            1 => Epilogue::Bias(pbias),
            2 => Epilogue::Gelu,
            _ => Epilogue::GeluBias(pbias),
        })
        .accumulate(c.accumulate);
    blas.gemm(&args).unwrap();
    let mut out = vec![bf16::ZERO; d0.len()];
    dev.dtoh(&mut out, pd).unwrap();

    // f64 reference on the logical matrices.
    let mut reference = vec![0f64; d0.len()];
    for bi in 0..c.batch {
        let ab = &af[bi * c.m * c.k..];
        let bb = &bf[if c.share_b { 0 } else { bi * c.k * c.n }..];
        for i in 0..c.m {
            for j in 0..c.n {
                let mut acc = 0f64;
                for kk in 0..c.k {
                    let x = if c.ta {
                        ab[kk * c.m + i]
                    } else {
                        ab[i * c.k + kk]
                    };
                    let y = if c.tb {
                        bb[j * c.k + kk]
                    } else {
                        bb[kk * c.n + j]
                    };
                    acc += x * y;
                }
                // cuBLASLt: d = epilogue(a @ b + beta * c + bias), c = the old d.
                let idx = bi * c.m * c.n + i * c.n + j;
                if c.accumulate {
                    acc += d0f[idx];
                }
                if c.epilogue & 1 == 1 {
                    acc += biasf[j];
                }
                if c.epilogue >= 2 {
                    acc = gelu_tanh(acc);
                }
                reference[idx] = acc;
            }
        }
    }
    rel_l2(&to_f64(&out), &reference)
}

fn setup() -> (Arc<CudaDevice>, Arena, Blas) {
    let dev = qie_runtime::cuda::test_device();
    let ws = Arena::new(&dev, WORKSPACE_BYTES).unwrap();
    let blas = Blas::new(&dev, ws.base(), WORKSPACE_BYTES).unwrap();
    (dev, ws, blas)
}

fn case(m: usize, n: usize, k: usize) -> Case {
    Case {
        m,
        n,
        k,
        batch: 1,
        share_b: false,
        ta: false,
        tb: false,
        epilogue: 0,
        accumulate: false,
    }
}

fn gemm_layouts_match_f64_reference() {
    let (dev, _ws, blas) = setup();
    let cases = [
        case(64, 64, 64),
        case(77, 96, 200),
        Case {
            tb: true,
            ..case(300, 256, 192)
        },
        Case {
            ta: true,
            ..case(128, 72, 136)
        },
        Case {
            ta: true,
            tb: true,
            ..case(40, 48, 64)
        },
        Case {
            batch: 3,
            share_b: true,
            tb: true,
            ..case(50, 128, 64)
        },
        Case {
            batch: 4,
            ..case(33, 40, 56)
        },
        Case {
            batch: 2,
            ta: true,
            share_b: true,
            ..case(48, 64, 32)
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let err = run_case(&dev, &blas, c, 100 + i as u64);
        println!(
            "gemm m={} n={} k={} batch={} share_b={} ta={} tb={}: rel-L2 {err:.2e}",
            c.m, c.n, c.k, c.batch, c.share_b, c.ta, c.tb
        );
        assert!(err <= 2e-2, "case {i}: rel-L2 {err}");
    }
}

fn gemm_epilogues_match_f64_reference() {
    let (dev, _ws, blas) = setup();
    for epilogue in 0..4u8 {
        for accumulate in [false, true] {
            let c = Case {
                tb: true,
                epilogue,
                accumulate,
                ..case(160, 192, 256)
            };
            let err = run_case(&dev, &blas, &c, 7 + epilogue as u64 * 2 + accumulate as u64);
            println!("gemm epilogue={epilogue} accumulate={accumulate}: rel-L2 {err:.2e}");
            assert!(
                err <= 2e-2,
                "epilogue {epilogue} accumulate {accumulate}: rel-L2 {err}"
            );
        }
    }
}

fn gemm_autotuned_algorithms_match_f64_reference() {
    let (dev, _ws, blas) = setup();
    blas.set_autotune(true);
    let cases = [
        Case {
            tb: true,
            ..case(512, 384, 256)
        },
        Case {
            tb: true,
            epilogue: 3,
            ..case(256, 512, 128)
        },
        Case {
            batch: 3,
            ..case(96, 64, 80)
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let err = run_case(&dev, &blas, c, 300 + i as u64);
        println!(
            "autotuned gemm m={} n={} k={}: rel-L2 {err:.2e}",
            c.m, c.n, c.k
        );
        assert!(err <= 2e-2, "autotuned case {i}: rel-L2 {err}");
    }
}

fn gemm_plans_are_cached_per_shape() {
    let (dev, _ws, blas) = setup();
    let c = Case {
        tb: true,
        ..case(64, 128, 64)
    };
    run_case(&dev, &blas, &c, 1);
    let n = blas.cached_plans();
    run_case(&dev, &blas, &c, 2);
    assert_eq!(blas.cached_plans(), n, "same shape must reuse its plan");
    run_case(
        &dev,
        &blas,
        &Case {
            tb: true,
            ..case(64, 128, 128)
        },
        3,
    );
    assert_eq!(blas.cached_plans(), n + 1);
}

fn gemm_replays_in_a_cuda_graph() {
    let (dev, _ws, blas) = setup();
    let (m, n, k) = (96, 128, 64);
    let arena = Arena::new(&dev, 3 << 20).unwrap();
    let (pa, pb, pd) = (
        arena.base(),
        arena.at(1 << 20, k * n * 2).unwrap(),
        arena.at(2 << 20, m * n * 2).unwrap(),
    );
    let args = GemmArgs::new(m, n, k, pa, pb, pd);
    // Warm the plan cache outside the capture (heuristics must not run while capturing).
    blas.gemm(&args).unwrap();
    let graph = dev.capture(|| blas.gemm(&args)).unwrap();
    for round in 0..2u64 {
        let mut rng = Rng::new(50 + round);
        let (a, af) = random_bf16(&mut rng, m * k, 1.0);
        let (b, bf) = random_bf16(&mut rng, k * n, 0.2);
        dev.htod(pa, &a).unwrap();
        dev.htod(pb, &b).unwrap();
        dev.htod(pd, &poison_bf16(m * n)).unwrap();
        graph.replay().unwrap();
        let mut out = vec![bf16::ZERO; m * n];
        dev.dtoh(&mut out, pd).unwrap();
        let mut reference = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                reference[i * n + j] = (0..k).map(|kk| af[i * k + kk] * bf[kk * n + j]).sum();
            }
        }
        let err = rel_l2(&to_f64(&out), &reference);
        println!("graph replay {round}: rel-L2 {err:.2e}");
        assert!(err <= 2e-2, "graph replay {round}: rel-L2 {err}");
    }
}

fn gemm_f32_is_full_precision() {
    let (dev, _ws, blas) = setup();
    // (m, n, k, batch, ta, tb): TF32 would leave a rel-L2 near 1e-3, f32 about 1e-7
    for (i, &(m, n, k, batch, ta, tb)) in [
        (64, 64, 64, 1, false, false),
        (77, 96, 200, 1, false, true),
        (40, 48, 64, 3, true, false),
        (33, 40, 576, 4, false, true),
    ]
    .iter()
    .enumerate()
    {
        let mut rng = Rng::new(300 + i as u64);
        let a: Vec<f32> = (0..batch * m * k).map(|_| rng.normal()).collect();
        let b: Vec<f32> = (0..batch * k * n).map(|_| rng.normal()).collect();
        let mut layout = ArenaLayout::new();
        let (ra, rb, rd) = (
            layout.reserve(a.len() * 4),
            layout.reserve(b.len() * 4),
            layout.reserve(batch * m * n * 4),
        );
        let arena = layout.allocate(&dev).unwrap();
        let (pa, pb, pd) = (arena.region(ra), arena.region(rb), arena.region(rd));
        dev.htod(pa, &a).unwrap();
        dev.htod(pb, &b).unwrap();
        let mut args = GemmArgs::new(m, n, k, pa, pb, pd).f32();
        if ta {
            args = args.transpose_a();
        }
        if tb {
            args = args.transpose_b();
        }
        if batch > 1 {
            args = args.batched(batch, false);
        }
        blas.gemm(&args).unwrap();
        let mut out = vec![0f32; batch * m * n];
        dev.dtoh(&mut out, pd).unwrap();
        let mut reference = vec![0f64; out.len()];
        for bi in 0..batch {
            let (ab, bb) = (&a[bi * m * k..], &b[bi * k * n..]);
            for r in 0..m {
                for c in 0..n {
                    reference[bi * m * n + r * n + c] = (0..k)
                        .map(|kk| {
                            let x = if ta { ab[kk * m + r] } else { ab[r * k + kk] };
                            let y = if tb { bb[c * k + kk] } else { bb[kk * n + c] };
                            f64::from(x) * f64::from(y)
                        })
                        .sum();
                }
            }
        }
        let got: Vec<f64> = out.iter().map(|&x| f64::from(x)).collect();
        let err = rel_l2(&got, &reference);
        println!("f32 gemm m={m} n={n} k={k} batch={batch} ta={ta} tb={tb}: rel-L2 {err:.2e}");
        assert!(err <= 1e-6, "f32 case {i}: rel-L2 {err} (TF32?)");
    }
}
