//! Resident parameter sets: uploaded once, updated in place, seen by the next run (also through
//! a replayed CUDA graph), freed when dropped; and clear errors for sets that do not fit.
//! The CUDA tests are reported ignored, with the reason, on machines without a CUDA device.

mod gpu_harness;

use qie_ir::{BinaryOp, DType, Graph, Op, TensorType};
use qie_runtime::cpu::CpuBackend;
use qie_runtime::cuda::CudaBackend;
use qie_runtime::StorageMode;
use qie_runtime::{
    Backend, CompileOptions, Executable, ParamData, ParamStore, RuntimeError, Tensor,
};
use std::collections::HashMap;
use std::process::ExitCode;

fn main() -> ExitCode {
    gpu_harness::run(gpu_tests![
        Cpu => cpu_updates_are_seen, cpu_bad_updates_and_sets;
        Cuda => cuda_updates_are_seen, cuda_bad_updates_and_sets,
            cuda_memory_returns_when_a_set_is_dropped;
    ])
}

const M: usize = 16;
const K: usize = 64;
const N: usize = 32;

/// `y = x @ w + b` over f32 graph types.
fn linear() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", TensorType::new(DType::F32, &[M, K]));
    let w = g.param("w", TensorType::new(DType::F32, &[K, N]));
    let b = g.param("b", TensorType::new(DType::F32, &[N]));
    let y = g
        .add(
            Op::MatMul {
                transpose_a: false,
                transpose_b: false,
            },
            &[x, w],
        )
        .unwrap();
    let bb = g
        .add(
            Op::Broadcast {
                shape: qie_ir::shape(&[M, N]),
            },
            &[b],
        )
        .unwrap();
    let out = g.add(Op::Binary(BinaryOp::Add), &[y, bb]).unwrap();
    g.set_output("y", out);
    g
}

/// Values away from zero, so that a changed weight changes every output.
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed * 40_503);
            0.25 + (h % 1000) as f32 / 1000.0
        })
        .collect()
}

fn reference(x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; M * N];
    for i in 0..M {
        for j in 0..N {
            let dot: f64 = (0..K)
                .map(|k| x[i * K + k] as f64 * w[k * N + j] as f64)
                .sum();
            y[i * N + j] = dot as f32 + b[j];
        }
    }
    y
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn run_y(exe: &dyn Executable, x: &Tensor, weights: &dyn ParamStore) -> Vec<f32> {
    let inputs = HashMap::from([("x".to_string(), x.clone())]);
    let out = exe.run(&inputs, weights).expect("run");
    out["y"].as_f32().expect("f32 output").to_vec()
}

/// The body every backend runs: upload, run, update in place, run again.
fn updates_are_seen(backend: &dyn Backend, tol: f64) {
    let exe = backend
        .compile(&linear(), &CompileOptions::default())
        .expect("compile");
    let x_data = values(M * K, 1);
    let x = Tensor::from_f32(&[M, K], x_data.clone()).unwrap();
    let (w0, b0) = (values(K * N, 2), values(N, 3));
    let host: HashMap<String, Vec<f32>> =
        HashMap::from([("w".into(), w0.clone()), ("b".into(), b0.clone())]);
    let mut set = backend.upload_params(&exe.params(), &host).expect("upload");
    assert_eq!(set.version(), 0);
    assert_eq!(set.backend_name(), backend.name());

    let first = run_y(exe.as_ref(), &x, &set);
    let err = rel_l2(&first, &reference(&x_data, &w0, &b0));
    assert!(err <= tol, "{}: first run rel-L2 {err:e}", backend.name());
    // The same set again (on CUDA: the captured graph replays).
    let again = run_y(exe.as_ref(), &x, &set);
    assert!(rel_l2(&again, &first) <= tol);

    let w1: Vec<f32> = values(K * N, 7).iter().map(|v| -v).collect();
    set.update("w", ParamData::F32(&w1)).expect("update");
    assert_eq!(set.version(), 1);
    assert_eq!(set.entries()[set.position("w").unwrap()].version, 1);
    let read = set.read("w").expect("read back");
    assert!(rel_l2(read.as_f32().unwrap(), &w1) <= tol);

    let second = run_y(exe.as_ref(), &x, &set);
    let want = reference(&x_data, &w1, &b0);
    let err = rel_l2(&second, &want);
    assert!(
        err <= tol,
        "{}: the run after an in-place update reads stale weights (rel-L2 {err:e} to the new reference)",
        backend.name()
    );
    assert!(rel_l2(&second, &first) > 0.5, "the result did not change");
}

/// The errors every backend gives for sets that do not fit.
fn bad_updates_and_sets(backend: &dyn Backend) {
    let exe = backend
        .compile(&linear(), &CompileOptions::default())
        .expect("compile");
    let host: HashMap<String, Vec<f32>> =
        HashMap::from([("w".into(), values(K * N, 2)), ("b".into(), values(N, 3))]);
    let mut set = backend.upload_params(&exe.params(), &host).unwrap();
    let short = vec![1f32; 3];
    match set.update("w", ParamData::F32(&short)) {
        Err(RuntimeError::BadParam { name, message }) => {
            assert_eq!(name, "w");
            assert!(message.contains("elements"), "{message}");
        }
        other => panic!("expected BadParam, got {other:?}"),
    }
    let ints = vec![1i32; K * N];
    assert!(matches!(
        set.update("w", ParamData::I32(&ints)),
        Err(RuntimeError::BadParam { .. })
    ));
    assert!(matches!(
        set.update("nope", ParamData::F32(&short)),
        Err(RuntimeError::MissingParam(n)) if n == "nope"
    ));
    assert_eq!(set.version(), 0, "a refused update must not count");

    // A set without one of the plan's weights.
    let only_w = vec![("w".to_string(), TensorType::new(DType::F32, &[K, N]))];
    let partial = backend.upload_params(&only_w, &host).unwrap();
    let x = Tensor::from_f32(&[M, K], values(M * K, 1)).unwrap();
    let inputs = HashMap::from([("x".to_string(), x)]);
    assert!(matches!(
        exe.run(&inputs, &partial),
        Err(RuntimeError::MissingParam(n)) if n == "b"
    ));
    // Uploading a weight the store does not have.
    let empty: HashMap<String, Vec<f32>> = HashMap::new();
    assert!(matches!(
        backend.upload_params(&exe.params(), &empty),
        Err(RuntimeError::MissingParam(_))
    ));
}

fn cpu_updates_are_seen() {
    updates_are_seen(&CpuBackend, 1e-6);
}

fn cpu_bad_updates_and_sets() {
    bad_updates_and_sets(&CpuBackend);
}

fn backend(mode: StorageMode) -> CudaBackend {
    CudaBackend::on_device(qie_runtime::cuda::test_device(), mode).expect("CUDA backend")
}

fn cuda_updates_are_seen() {
    for (mode, tol) in [(StorageMode::F32, 1e-5), (StorageMode::Bf16, 2e-2)] {
        updates_are_seen(&backend(mode), tol);
    }
}

fn cuda_bad_updates_and_sets() {
    let b = backend(StorageMode::Bf16);
    bad_updates_and_sets(&b);
    // A set of another backend instance cannot be read.
    let other = backend(StorageMode::Bf16);
    let exe = b.compile(&linear(), &CompileOptions::default()).unwrap();
    let host: HashMap<String, Vec<f32>> =
        HashMap::from([("w".into(), values(K * N, 2)), ("b".into(), values(N, 3))]);
    let foreign = other.upload_params(&exe.params(), &host).unwrap();
    let x = Tensor::from_f32(&[M, K], values(M * K, 1)).unwrap();
    let inputs = HashMap::from([("x".to_string(), x)]);
    let err = exe.run(&inputs, &foreign).unwrap_err().to_string();
    assert!(err.contains("cannot be read"), "{err}");
    // A CPU set on CUDA, and a CUDA set on the CPU.
    let cpu_exe = CpuBackend
        .compile(&linear(), &CompileOptions::default())
        .unwrap();
    let cpu_set = CpuBackend.upload_params(&exe.params(), &host).unwrap();
    assert!(exe.run(&inputs, &cpu_set).is_err());
    assert!(cpu_exe.run(&inputs, &foreign).is_err());
}

fn cuda_memory_returns_when_a_set_is_dropped() {
    let b = backend(StorageMode::Bf16);
    let exe = b.compile(&linear(), &CompileOptions::default()).unwrap();
    let big: HashMap<String, Vec<f32>> =
        HashMap::from([("w".into(), values(K * N, 2)), ("b".into(), values(N, 3))]);
    let before = b.memory().unwrap();
    let set = b.upload_params(&exe.params(), &big).unwrap();
    let during = b.memory().unwrap();
    assert!(during.weights >= (K * N + N) * 2, "{during:?}");
    assert!(
        during.allocated > before.allocated,
        "{before:?} -> {during:?}"
    );
    drop(set);
    let after = b.memory().unwrap();
    assert_eq!(after.weights, before.weights, "{after:?}");
    assert_eq!(after.allocated, before.allocated, "{before:?} -> {after:?}");
}
