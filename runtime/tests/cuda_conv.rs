//! The bf16 conv fast path of the CUDA backend (im2col into bounded scratch + cuBLASLt) against
//! the CPU backend on the same bf16-rounded data: VAE shapes (3x3 stride 1 and 2, 1x1, up to
//! 384 channels), dilation, batches, strided inputs and images large enough to be split into
//! row blocks. Weights are bound as bf16 host data (uploaded as they are). `conv_timing`
//! (ignored by default) prints TFLOP/s at the VAE's real sizes.
//!
//! Without a GPU every test is reported ignored, with the reason.

mod gpu_harness;

use half::bf16;
use qie_ir::{DType, Graph, NodeId, Op, TensorType};
use qie_runtime::cpu::CpuBackend;
use qie_runtime::cuda::{CudaBackend, StorageMode};
use qie_runtime::{Backend, CompileOptions, ParamData, ParamStore, Tensor};
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::OnceLock;

fn main() -> ExitCode {
    let timing = gpu_tests![Cuda => conv_timing]
        .into_iter()
        .map(|t| t.timing());
    gpu_harness::run(
        gpu_tests![Cuda => conv_bf16_matches_cpu]
            .into_iter()
            .chain(timing),
    )
}

fn backend() -> &'static CudaBackend {
    static B: OnceLock<CudaBackend> = OnceLock::new();
    B.get_or_init(|| {
        CudaBackend::new(0, StorageMode::Bf16).unwrap_or_else(|e| panic!("CUDA backend: {e}"))
    })
}

/// bf16 weights by name.
struct Bf16Params(HashMap<String, Vec<bf16>>);

impl ParamStore for Bf16Params {
    fn param(&self, name: &str) -> Option<ParamData<'_>> {
        self.0.get(name).map(|v| ParamData::BF16(v))
    }
}

/// Values exactly representable in bf16, in about [-scale, scale].
fn rounded(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            bf16::from_f32(u * scale).to_f32()
        })
        .collect()
}

struct Case {
    x: Vec<usize>,
    w: Vec<usize>,
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    /// Read x through a channel slice of a wider input (strided operand).
    sliced: bool,
}

fn case(x: &[usize], w: &[usize], stride: usize, padding: usize, dilation: usize) -> Case {
    Case {
        x: x.to_vec(),
        w: w.to_vec(),
        stride: [stride; 2],
        padding: [padding; 2],
        dilation: [dilation; 2],
        sliced: false,
    }
}

fn graph(c: &Case) -> (Graph, Vec<usize>) {
    let mut g = Graph::new();
    let mut xin = c.x.clone();
    if c.sliced {
        xin[1] += 5;
    }
    let x = g.input("x", TensorType::new(DType::F32, &xin));
    let x: NodeId = if c.sliced {
        g.add(
            Op::Slice {
                axis: 1,
                start: 3,
                end: 3 + c.x[1],
            },
            &[x],
        )
        .unwrap()
    } else {
        x
    };
    let w = g.param("w", TensorType::new(DType::F32, &c.w));
    let y = g
        .add(
            Op::Conv2d {
                stride: c.stride,
                padding: c.padding,
                dilation: c.dilation,
                groups: 1,
            },
            &[x, w],
        )
        .unwrap();
    g.set_output("y", y);
    (g, xin)
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    if a.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

fn check(b: &CudaBackend, c: &Case, seed: u64) {
    let (g, xin) = graph(c);
    let fan_in = (c.w[1] * c.w[2] * c.w[3]) as f32;
    let xv = rounded(xin.iter().product(), seed, 1.0);
    let wv = rounded(c.w.iter().product(), seed + 1, 1.0 / fan_in.sqrt());
    let inputs = HashMap::from([("x".to_string(), Tensor::from_f32(&xin, xv).unwrap())]);
    let cpu = CpuBackend
        .compile(&g, &CompileOptions::default())
        .unwrap()
        .run(&inputs, &HashMap::from([("w".to_string(), wv.clone())]))
        .unwrap();
    let params = Bf16Params(HashMap::from([(
        "w".to_string(),
        wv.iter().map(|&v| bf16::from_f32(v)).collect(),
    )]));
    let exe = b.compile(&g, &CompileOptions::default()).unwrap();
    let gpu = exe.run(&inputs, &params).unwrap();
    let (want, got) = (cpu["y"].as_f32().unwrap(), gpu["y"].as_f32().unwrap());
    assert!(want.iter().any(|v| *v != 0.0));
    let err = rel_l2(got, want);
    println!(
        "conv x {:?} w {:?} stride {:?} pad {:?} dil {:?} sliced {}: rel-L2 {err:.2e}, scratch {} MB",
        c.x,
        c.w,
        c.stride,
        c.padding,
        c.dilation,
        c.sliced,
        exe.stats().scratch_bytes >> 20
    );
    assert!(err <= 1e-2, "rel-L2 {err} for x {:?} w {:?}", c.x, c.w);
}

fn conv_bf16_matches_cpu() {
    let b = backend();
    let mut sliced = case(&[1, 32, 40, 36], &[48, 32, 3, 3], 1, 1, 1);
    sliced.sliced = true;
    let mut asym = case(&[2, 8, 17, 13], &[16, 8, 3, 2], 1, 0, 1);
    asym.stride = [2, 1];
    asym.padding = [1, 0];
    let cases = [
        // VAE: conv_in (3 -> 96), resnet 3x3 convs, 1x1 shortcut, stride-2 downsample.
        case(&[1, 3, 64, 64], &[96, 3, 3, 3], 1, 1, 1),
        case(&[1, 96, 64, 64], &[96, 96, 3, 3], 1, 1, 1),
        case(&[1, 192, 32, 32], &[384, 192, 1, 1], 1, 0, 1),
        case(&[1, 96, 65, 65], &[96, 96, 3, 3], 2, 0, 1),
        case(&[1, 384, 32, 32], &[384, 384, 3, 3], 1, 1, 1),
        // Odd sizes, dilation, batches, strided input.
        case(&[2, 5, 19, 23], &[7, 5, 3, 3], 1, 2, 2),
        asym,
        sliced,
        // Row blocks: K * OW * OH over the scratch budget (3 blocks at 256 rows).
        case(&[1, 64, 256, 1024], &[64, 64, 3, 3], 1, 1, 1),
    ];
    for (i, c) in cases.iter().enumerate() {
        check(b, c, 100 + i as u64);
    }
}

/// Median device time (s) of the conv steps over `runs` profiled runs, and of its im2col part.
fn time_conv(b: &dyn Backend, c: &Case, runs: usize) -> (f64, f64) {
    let (g, xin) = graph(c);
    let xv = rounded(xin.iter().product(), 1, 1.0);
    let wv = rounded(c.w.iter().product(), 2, 0.05);
    let inputs = HashMap::from([("x".to_string(), Tensor::from_f32(&xin, xv).unwrap())]);
    let params = Bf16Params(HashMap::from([(
        "w".to_string(),
        wv.iter().map(|&v| bf16::from_f32(v)).collect(),
    )]));
    let exe = b.compile(&g, &CompileOptions::default()).unwrap();
    exe.run(&inputs, &params).unwrap();
    let mut times: Vec<(f64, f64)> = (0..runs)
        .map(|_| {
            let (_, p) = exe.run_profiled(&inputs, &params).unwrap();
            let sum = |f: &dyn Fn(&str) -> bool| -> f64 {
                p.steps.iter().filter(|(l, _)| f(l)).map(|(_, s)| s).sum()
            };
            (
                sum(&|l| l.starts_with("conv2d")),
                sum(&|l| l.contains("im2col")),
            )
        })
        .collect();
    times.sort_by(|a, b| a.0.total_cmp(&b.0));
    times[runs / 2]
}

/// Timing at real VAE sizes, not a check: run on a GPU with `--ignored`.
fn conv_timing() {
    let b = backend();
    let cases = [
        case(&[1, 384, 256, 256], &[384, 384, 3, 3], 1, 1, 1),
        case(&[1, 128, 1024, 1024], &[128, 128, 3, 3], 1, 1, 1),
        case(&[1, 96, 1024, 1024], &[96, 96, 3, 3], 1, 1, 1),
        case(&[1, 192, 513, 513], &[192, 192, 3, 3], 2, 0, 1),
    ];
    for c in &cases {
        let (t, im2col) = time_conv(b, c, 5);
        let (n, o, k) = (c.x[0], c.w[0], c.w[1] * c.w[2] * c.w[3]);
        let oh = (c.x[2] + 2 * c.padding[0] - c.dilation[0] * (c.w[2] - 1) - 1) / c.stride[0] + 1;
        let ow = (c.x[3] + 2 * c.padding[1] - c.dilation[1] * (c.w[3] - 1) - 1) / c.stride[1] + 1;
        let flop = 2.0 * (n * o * k * oh * ow) as f64;
        println!(
            "conv timing x {:?} w {:?} stride {:?}: {:.3} ms (im2col {:.3} ms), {:.1} TFLOP/s",
            c.x,
            c.w,
            c.stride,
            t * 1e3,
            im2col * 1e3,
            flop / t / 1e12
        );
    }
    // The generic direct kernel (f32 storage) on the first case, for comparison.
    {
        let f32b = CudaBackend::new(0, StorageMode::F32).unwrap();
        let c = &cases[0];
        let (t, _) = time_conv(&f32b, c, 1);
        let flop = 2.0 * 384.0 * 3456.0 * 65536.0;
        println!(
            "generic kernel (f32 storage) x {:?}: {:.3} ms, {:.2} TFLOP/s",
            c.x,
            t * 1e3,
            flop / t / 1e12
        );
    }
}
