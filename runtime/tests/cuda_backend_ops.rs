//! The CUDA backend against the f64 reference interpreter, on the same test bodies as the CPU
//! backend (`cpu_suite`): every op kind and typical fused groups, unfused and fused, outputs
//! poisoned, fresh random inputs.
//!
//! - f32 storage: the suite's own tolerance (rel-L2 1e-5); generic GEMM / attention kernels.
//! - bf16 storage: graphs checked at rel-L2 2e-2 (bf16 rounding of every stored value), with
//!   shapes that take the fast paths (cuBLASLt, flash attention) and shapes that do not.
//!
//! Without a GPU every test is reported ignored, with the reason.

mod cpu_suite;
mod gpu_harness;

use cpu_suite::{
    check_values_within, f32_type, random_values, tensor_type, GraphBuilder, Tolerance,
};
use qie_ir::{BinaryOp, DType, Graph, Op, ReduceOp, UnaryOp};
use qie_runtime::cuda::{CudaBackend, StorageMode};
use std::process::ExitCode;
use std::sync::OnceLock;

fn main() -> ExitCode {
    let timing = gpu_tests![Cuda => bench_real_width_block]
        .into_iter()
        .map(|t| t.timing());
    let bf16 = gpu_tests![
        Cuda => bf16_dit_block_small_generic_attention, bf16_dit_block_fast_paths,
            bf16_matmul_layouts, bf16_attention_flash_and_generic, bf16_attention_grad_flash_and_generic,
            bf16_norms_reductions_and_gather, bf16_lora_on_one_row, bf16_concat_of_a_reduction,
            bf16_token_axis_reductions;
    ];
    gpu_harness::run(f32_suite().into_iter().chain(bf16).chain(timing))
}

fn backend(mode: StorageMode) -> &'static CudaBackend {
    static F32: OnceLock<CudaBackend> = OnceLock::new();
    static BF16: OnceLock<CudaBackend> = OnceLock::new();
    let cell = match mode {
        StorageMode::F32 => &F32,
        StorageMode::Bf16 => &BF16,
    };
    cell.get_or_init(|| {
        CudaBackend::new(0, mode).unwrap_or_else(|e| panic!("CUDA backend ({mode:?}): {e}"))
    })
}

/// The backend suite's bodies on f32 storage, one test each, named after the body.
macro_rules! f32_suite {
    ($($name:ident),* $(,)?) => {
        fn f32_suite() -> Vec<gpu_harness::Test> {
            vec![$(gpu_harness::Test::new(stringify!($name), gpu_harness::Needs::Cuda, || {
                cpu_suite::$name(backend(StorageMode::F32))
            })),*]
        }
    };
}

f32_suite!(
    unary_ops,
    binary_ops,
    integer_ops,
    compare_select_cast,
    views,
    reductions,
    norms_and_softmax,
    matmul_forms,
    linear_with_epilogue,
    attention,
    attention_grad,
    conv2d,
    gather_concat,
    large_shapes,
    dit_block_small,
    plan_reuse,
    errors_name_the_culprit,
);

fn check_bf16(g: &Graph, seed: u64) {
    let values = random_values(g, seed, 8);
    check_values_within(
        backend(StorageMode::Bf16),
        g,
        &values,
        Tolerance::bf16_storage(),
    );
}

fn bf16_dit_block_small_generic_attention() {
    // head_dim 16: the generic attention kernel on bf16 storage.
    check_bf16(&cpu_suite::dit_block(40, 9, 32, 2, 64), 2000);
}

fn bf16_dit_block_fast_paths() {
    // head_dim 128: cuBLASLt GEMMs and the flash kernel.
    check_bf16(&cpu_suite::dit_block(200, 24, 256, 2, 512), 2001);
}

fn bf16_matmul_layouts() {
    let mut seed = 2100;
    // k = 1: the LoRA down-projection gradient of a per-sample modulation input (batch 1).
    for (ta, (m, k, n)) in [false, true]
        .into_iter()
        .flat_map(|ta| [(ta, (37, 64, 48)), (ta, (37, 1, 48))])
    {
        for tb in [false, true] {
            for (batch_a, batch_b) in [(vec![], vec![]), (vec![3], vec![3]), (vec![2, 2], vec![])] {
                let shape = |batch: &Vec<usize>, r: usize, c: usize, tr: bool| {
                    let mut s = batch.clone();
                    s.extend(if tr { [c, r] } else { [r, c] });
                    s
                };
                let mut g = GraphBuilder::new();
                let a = g.input("a", f32_type(&shape(&batch_a, m, k, ta)));
                let b = g.param("b", f32_type(&shape(&batch_b, k, n, tb)));
                let c = g.matmul(a, b, ta, tb);
                g.out("c", c);
                seed += 1;
                check_bf16(&g.graph, seed);
            }
        }
    }
    // A column slice (ld > cols) and a transposed-then-sliced operand.
    let mut g = GraphBuilder::new();
    let x = g.input("x", f32_type(&[50, 96]));
    let w = g.param("w", f32_type(&[40, 32]));
    let xs = g.op(
        Op::Slice {
            axis: 1,
            start: 16,
            end: 48,
        },
        &[x],
    );
    let y = g.matmul(xs, w, false, true);
    g.out("y", y);
    let xt = g.transpose(x, &[1, 0]);
    let xts = g.op(
        Op::Slice {
            axis: 0,
            start: 8,
            end: 40,
        },
        &[xt],
    ); // [32, 50]
    let z = g.matmul(xts, x, false, false); // [32, 96]
    g.out("z", z);
    check_bf16(&g.graph, 2150);
}

fn attention_graph(b: usize, sq: usize, sk: usize, h: usize, d: usize, masked: bool) -> Graph {
    let mut g = GraphBuilder::new();
    let q = g.input("q", f32_type(&[b, sq, h, d]));
    let k = g.input("k", f32_type(&[b, sk, h, d]));
    let v = g.input("v", f32_type(&[b, sk, h, d]));
    let mut args = vec![q, k, v];
    if masked {
        args.push(g.input("mask", tensor_type(DType::Bool, &[b, sk])));
    }
    let o = g.op(
        Op::Attention {
            scale: 1.0 / (d as f64).sqrt(),
        },
        &args,
    );
    g.out("o", o);
    g.graph
}

fn bf16_attention_flash_and_generic() {
    check_bf16(&attention_graph(2, 200, 130, 3, 128, true), 2200);
    check_bf16(&attention_graph(1, 77, 300, 2, 64, false), 2201);
    check_bf16(&attention_graph(2, 33, 45, 2, 40, true), 2202);
    // Packed qkv [B, S, 3, H, D] sliced into q, k, v (strided operands of the flash kernel).
    let mut g = GraphBuilder::new();
    let qkv = g.input("qkv", f32_type(&[1, 150, 3, 2, 128]));
    let part = |g: &mut GraphBuilder, i: usize| {
        let s = g.op(
            Op::Slice {
                axis: 2,
                start: i,
                end: i + 1,
            },
            &[qkv],
        );
        g.reshape(s, &[1, 150, 2, 128])
    };
    let (q, k, v) = (part(&mut g, 0), part(&mut g, 1), part(&mut g, 2));
    let o = g.op(Op::Attention { scale: 0.08 }, &[q, k, v]);
    g.out("o", o);
    check_bf16(&g.graph, 2203);
}

fn bf16_attention_grad_flash_and_generic() {
    use cpu_suite::attention_grad_graph;
    check_bf16(&attention_grad_graph(2, 200, 130, 3, 128, true), 2250);
    check_bf16(&attention_grad_graph(1, 77, 300, 2, 64, false), 2251);
    check_bf16(&attention_grad_graph(2, 33, 45, 2, 40, true), 2252);
    // Batch 1 fully masked: zero gradients there.
    let g = attention_grad_graph(2, 70, 90, 2, 128, true);
    let mut values = random_values(&g, 2253, 8);
    let mask = values.get_mut("mask").expect("mask");
    for j in 0..90 {
        mask.data[j] = 1.0;
        mask.data[90 + j] = 0.0;
    }
    check_values_within(
        backend(StorageMode::Bf16),
        &g,
        &values,
        Tolerance::bf16_storage(),
    );
    // Packed qkv [B, S, 3, H, D] sliced into q, k, v (strided operands of the flash kernels).
    let mut g = GraphBuilder::new();
    let qkv = g.input("qkv", f32_type(&[1, 150, 3, 2, 128]));
    let dout = g.input("dout", f32_type(&[1, 150, 2, 128]));
    let part = |g: &mut GraphBuilder, i: usize| {
        let s = g.op(
            Op::Slice {
                axis: 2,
                start: i,
                end: i + 1,
            },
            &[qkv],
        );
        g.reshape(s, &[1, 150, 2, 128])
    };
    let (q, k, v) = (part(&mut g, 0), part(&mut g, 1), part(&mut g, 2));
    let grads = g.op(Op::AttentionGrad { scale: 0.08 }, &[q, k, v, dout]);
    g.out("grads", grads);
    check_bf16(&g.graph, 2254);
}

/// A rank-4 LoRA on a layer whose input is one row per sample (the modulation `img_mod.1`):
/// forward and the backward matmuls with M = 1, K = 1 and N = 4.
fn bf16_lora_on_one_row() {
    let (din, dout, r) = (3072, 18432, 4);
    let mut g = GraphBuilder::new();
    let x = g.input("x", f32_type(&[1, din]));
    let a = g.param("a", f32_type(&[r, din]));
    let b = g.param("b", f32_type(&[dout, r]));
    let dy = g.input("dy", f32_type(&[1, dout]));
    let mid = g.matmul(x, a, false, true);
    let y = g.matmul(mid, b, false, true);
    let dmid = g.matmul(dy, b, false, false);
    let da = g.matmul(dmid, x, true, false);
    let db = g.matmul(dy, mid, true, false);
    for (name, id) in [("y", y), ("dmid", dmid), ("da", da), ("db", db)] {
        g.out(name, id);
    }
    check_bf16(&g.graph, 2300);
}

fn bf16_concat_of_a_reduction() {
    check_bf16(&cpu_suite::concat_of_a_reduction_graph(), 2310);
}

fn bf16_token_axis_reductions() {
    check_bf16(&cpu_suite::token_axis_reductions_graph(), 2320);
}

fn bf16_norms_reductions_and_gather() {
    let mut g = GraphBuilder::new();
    let x = g.input("x", f32_type(&[3, 70, 3072]));
    let w = g.param("w", f32_type(&[3072]));
    let sq = g.binary(BinaryOp::Mul, x, x);
    let s = g.reduce(ReduceOp::Sum, sq, &[2]);
    let inv = g.splat(1.0 / 3072.0, s);
    let ms = g.binary(BinaryOp::Mul, s, inv);
    let eps = g.splat(1e-6, ms);
    let me = g.binary(BinaryOp::Add, ms, eps);
    let rs = g.unary(UnaryOp::Rsqrt, me);
    let r2 = g.reshape(rs, &[3, 70, 1]);
    let rb = g.bcast(r2, &[3, 70, 3072]);
    let n = g.binary(BinaryOp::Mul, x, rb);
    let wb = g.bcast(w, &[3, 70, 3072]);
    let y = g.binary(BinaryOp::Mul, n, wb);
    g.out("y", y);
    let mx = g.reduce(ReduceOp::Max, x, &[0, 1]);
    g.out("mx", mx);
    let table = g.param("table", f32_type(&[10, 64]));
    let ids = g.input("ids", tensor_type(DType::I64, &[2, 5]));
    let emb = g.op(Op::Gather { axis: 0 }, &[table, ids]);
    g.out("emb", emb);
    // Angles stay f32 in storage: sin of large arguments must still be right.
    let pos = g.input("pos", f32_type(&[300]));
    let big = g.splat(900.0, pos);
    let ang = g.binary(BinaryOp::Mul, pos, big);
    let s1 = g.unary(UnaryOp::Sin, ang);
    let c1 = g.unary(UnaryOp::Cos, ang);
    let cat = g.op(Op::Concat { axis: 0 }, &[s1, c1]);
    g.out("sincos", cat);
    check_bf16(&g.graph, 2300);
}

/// One real-width Qwen-Image DiT block (d = 3072, 24 heads of 128, MLP 12288) at the 1024² edit
/// length (8192 image tokens: target + one reference, 256 text tokens; N = 8448) in bf16: time
/// per run and the most expensive steps. A timing, not a check: run with --ignored.
fn bench_real_width_block() {
    let b = backend(StorageMode::Bf16);
    let g = cpu_suite::dit_block(8192, 256, 3072, 24, 12288);
    let values = random_values(&g, 3000, 8);
    let (inputs, params) = cpu_suite::bind(&g, &values);
    let exe = b
        .compile_plan(&g, &qie_runtime::CompileOptions::default())
        .expect("compile");
    println!("plan: {}", qie_runtime::Executable::stats(&exe));
    for _ in 0..2 {
        qie_runtime::Executable::run(&exe, &inputs, &params).expect("warm-up run");
    }
    let runs = 5;
    let start = std::time::Instant::now();
    for _ in 0..runs {
        qie_runtime::Executable::run(&exe, &inputs, &params).expect("run");
    }
    let wall = start.elapsed().as_secs_f64() / runs as f64;
    let (_, times) = exe.run_timed(&inputs, &params).expect("timed run");
    let total: f32 = times.iter().map(|(_, t)| t).sum();
    let flops = g.matmul_flops();
    println!(
        "real-width DiT block: wall {:.2} ms per run (with copies), steps {:.2} ms, {:.0} TFLOP/s on matmul+attention FLOPs",
        wall * 1e3,
        total,
        flops / (total as f64 * 1e-3) / 1e12
    );
    let mut by_kind: std::collections::BTreeMap<String, (usize, f32)> = Default::default();
    for (label, t) in &times {
        let kind = label.split_whitespace().next().unwrap_or("").to_string();
        let kind = if kind.starts_with('g') {
            "kernel".to_string()
        } else {
            kind
        };
        let e = by_kind.entry(kind).or_default();
        e.0 += 1;
        e.1 += t;
    }
    for (k, (n, t)) in &by_kind {
        println!("  {k:10} {n:4} steps {t:8.3} ms");
    }
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (label, t) in sorted.iter().take(24) {
        println!("  {t:8.3} ms  {label}");
    }
}
