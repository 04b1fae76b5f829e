//! CPU timings at real model sizes. Not tests: every one is `#[ignore]`; run with
//! `cargo test --release -p qie-runtime --test cpu_bench -- --ignored --nocapture <name>`.

mod cpu_suite;

use cpu_suite::{f32_type, GraphBuilder};
use qie_ir::{BinaryOp, Graph, Op, ReduceOp, UnaryOp};
use qie_runtime::cpu::{compile, CpuExecutable};
use qie_runtime::{CompileOptions, Tensor};
use std::collections::HashMap;
use std::time::Instant;

fn random_f32(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect()
}

/// Random values for every input and param of the graph.
fn bind_random(g: &Graph) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let (mut inputs, mut params) = (HashMap::new(), HashMap::new());
    for (i, node) in g.nodes.iter().enumerate() {
        match &node.op {
            Op::Input { name, ty } => {
                inputs.insert(
                    name.clone(),
                    Tensor::from_f32(&ty.shape, random_f32(ty.numel(), i as u64)).unwrap(),
                );
            }
            Op::Param { name, ty } => {
                params.insert(
                    name.clone(),
                    Tensor::from_f32(&ty.shape, random_f32(ty.numel(), i as u64)).unwrap(),
                );
            }
            _ => {}
        }
    }
    (inputs, params)
}

fn time_runs(exe: &CpuExecutable, g: &Graph, runs: usize) -> f64 {
    if std::env::var("QIE_DUMP").is_ok() {
        for lg in exe.lowered() {
            println!("{lg}");
        }
    }
    let (inputs, params) = bind_random(g);
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        let t = Instant::now();
        let (_, times) = exe.run_timed(&inputs, &params).expect("run");
        let s = t.elapsed().as_secs_f64();
        if s < best {
            best = s;
            if std::env::var("QIE_PROFILE").is_ok() {
                for st in &times {
                    println!("  {:>9.4} s  {}", st.seconds, st.name);
                }
            }
        }
    }
    best
}

#[test]
#[ignore]
fn bench_gemm() {
    let (m, k, n) = (4096, 3072, 3072);
    let mut g = GraphBuilder::new();
    let x = g.input("x", f32_type(&[m, k]));
    let w = g.param("w", f32_type(&[n, k]));
    let y = g.matmul(x, w, false, true);
    g.out("y", y);
    let exe = compile(&g.graph, &CompileOptions::default()).unwrap();
    let s = time_runs(&exe, &g.graph, 3);
    let flops = 2.0 * (m * n * k) as f64;
    println!(
        "gemm {m}x{k}x{n} (x @ w^T): {s:.3} s, {:.1} GFLOP/s on {} threads",
        flops / s / 1e9,
        rayon::current_num_threads()
    );
}

#[test]
#[ignore]
fn bench_attention() {
    let (s, h, d) = (4352, 24, 128);
    let mut g = GraphBuilder::new();
    let q = g.input("q", f32_type(&[1, s, h, d]));
    let k = g.input("k", f32_type(&[1, s, h, d]));
    let v = g.input("v", f32_type(&[1, s, h, d]));
    let o = g.op(
        Op::Attention {
            scale: 1.0 / (d as f64).sqrt(),
        },
        &[q, k, v],
    );
    g.out("o", o);
    let exe = compile(&g.graph, &CompileOptions::default()).unwrap();
    let t = time_runs(&exe, &g.graph, 1);
    let flops = 4.0 * (s * s * h * d) as f64;
    println!(
        "attention S={s} H={h} D={d}: {t:.3} s, {:.1} GFLOP/s",
        flops / t / 1e9
    );
}

#[test]
#[ignore]
fn bench_elementwise() {
    let shape = [4096, 3072];
    let mut g = GraphBuilder::new();
    let x = g.input("x", f32_type(&shape));
    let y = g.input("y", f32_type(&shape));
    let sg = g.unary(UnaryOp::Sigmoid, x);
    let silu = g.binary(BinaryOp::Mul, x, sg);
    let z = g.binary(BinaryOp::Add, silu, y);
    g.out("z", z);
    let exe = compile(&g.graph, &CompileOptions::default()).unwrap();
    let t = time_runs(&exe, &g.graph, 3);
    let n = (shape[0] * shape[1]) as f64;
    println!(
        "silu(x) + y over {shape:?}: {t:.4} s, {:.0} M elements/s",
        n / t / 1e6
    );
    // Row reduction (layer-norm statistics).
    let mut g = GraphBuilder::new();
    let x = g.input("x", f32_type(&shape));
    let s = g.reduce(ReduceOp::Sum, x, &[1]);
    g.out("s", s);
    let exe = compile(&g.graph, &CompileOptions::default()).unwrap();
    let t = time_runs(&exe, &g.graph, 3);
    println!(
        "row sum over {shape:?}: {t:.4} s, {:.0} M elements/s",
        n / t / 1e6
    );
    // Column reduction (bias gradients).
    let mut g = GraphBuilder::new();
    let x = g.input("x", f32_type(&shape));
    let s = g.reduce(ReduceOp::Sum, x, &[0]);
    g.out("s", s);
    let exe = compile(&g.graph, &CompileOptions::default()).unwrap();
    let t = time_runs(&exe, &g.graph, 3);
    println!(
        "column sum over {shape:?}: {t:.4} s, {:.0} M elements/s",
        n / t / 1e6
    );
    // A transposing copy (attention head split).
    let mut g = GraphBuilder::new();
    let x = g.input("x", f32_type(&[4096, 24, 128]));
    let xt = g.transpose(x, &[1, 0, 2]);
    let e = g.unary(UnaryOp::Neg, xt);
    g.out("e", e);
    let exe = compile(&g.graph, &CompileOptions::default()).unwrap();
    let t = time_runs(&exe, &g.graph, 3);
    println!(
        "transpose [4096, 24, 128] -> [24, 4096, 128]: {t:.4} s, {:.0} M elements/s",
        n / t / 1e6
    );
}

#[test]
#[ignore]
fn bench_dit_block() {
    let (ni, nt) = (4096, 256);
    let g = cpu_suite::dit_block(ni, nt, 3072, 24, 12288);
    let t = Instant::now();
    let exe = compile(&g, &CompileOptions::default()).unwrap();
    println!(
        "compile: {:.2} s, {}",
        t.elapsed().as_secs_f64(),
        exe.stats()
    );
    let flops = g.matmul_flops();
    let s = time_runs(&exe, &g, 2);
    println!(
        "DiT block ({ni} image + {nt} text tokens): {s:.2} s for {:.3} TFLOP ({:.1} GFLOP/s)",
        flops / 1e12,
        flops / s / 1e9
    );
}
