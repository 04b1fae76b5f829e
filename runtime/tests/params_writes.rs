//! Outputs written into parameter sets (`run_into`, `run_in_place`) and copies between sets
//! (`copy_params`): the values land where they should, on the CPU and on CUDA (where they never
//! leave the device, converted between f32 and bf16 storage), and bad writes are refused whole.
//! The CUDA tests are reported ignored, with the reason, on machines without a CUDA device.

mod gpu_harness;

use qie_ir::{BinaryOp, DType, Graph, Op, TensorType};
use qie_runtime::cpu::CpuBackend;
use qie_runtime::cuda::plan::BufRef;
use qie_runtime::cuda::{build_plan, CudaBackend};
use qie_runtime::{
    Backend, CompileOptions, NoParams, ParamCopy, ParamWrite, RuntimeError, StorageMode, Tensor,
};
use std::collections::HashMap;
use std::process::ExitCode;

fn main() -> ExitCode {
    gpu_harness::run(gpu_tests![
        Cpu => cpu_writes_and_copies, updates_are_planned_in_the_params_memory;
        Cuda => cuda_writes_and_copies, cuda_updates_in_the_params_memory;
    ])
}

fn f32_type(shape: &[usize]) -> TensorType {
    TensorType::new(DType::F32, shape)
}

/// `s = g * 3` from an input.
fn scaled_input() -> Graph {
    let mut g = Graph::new();
    let x = g.input("g", f32_type(&[5]));
    let three = g.constant(3.0, DType::F32);
    let three = g
        .add(
            Op::Broadcast {
                shape: qie_ir::shape(&[5]),
            },
            &[three],
        )
        .unwrap();
    let s = g.add(Op::Binary(BinaryOp::Mul), &[x, three]).unwrap();
    g.set_output("s", s);
    g
}

/// `next = state + 1` and `sum = state[0] + state[1]` from a parameter.
fn increment() -> Graph {
    let mut g = Graph::new();
    let state = g.param("state", f32_type(&[8]));
    let one = g.constant(1.0, DType::F32);
    let one = g
        .add(
            Op::Broadcast {
                shape: qie_ir::shape(&[8]),
            },
            &[one],
        )
        .unwrap();
    let next = g.add(Op::Binary(BinaryOp::Add), &[state, one]).unwrap();
    g.set_output("next", next);
    g
}

fn write(output: &str, param: &str, offset: usize) -> ParamWrite {
    ParamWrite {
        output: output.into(),
        param: param.into(),
        offset,
    }
}

/// What every backend must do; `exact` compiles and stores in f32 (`storage` override).
fn writes_and_copies(b: &dyn Backend) {
    let exact = CompileOptions {
        storage: Some(StorageMode::F32),
        ..CompileOptions::default()
    };
    let start: Vec<f32> = (0..8).map(|i| 1.0 + i as f32 * 1e-3).collect();
    let host = HashMap::from([("state".to_string(), start.clone())]);
    let specs = [("state".to_string(), f32_type(&[8]))];
    let mut set = b
        .upload_params_stored(&specs, &host, StorageMode::F32)
        .unwrap();

    // An input-driven output into elements 2..7.
    let exe = b.compile(&scaled_input(), &exact).unwrap();
    let g = Tensor::from_f32(&[5], vec![1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    let inputs = HashMap::from([("g".to_string(), g)]);
    let rest = exe
        .run_into(&inputs, &NoParams, &mut set, &[write("s", "state", 2)])
        .unwrap();
    assert!(rest.is_empty(), "a written output must not come back");
    let mut want = start.clone();
    for (i, v) in [3.0, 6.0, 9.0, 12.0, 15.0].into_iter().enumerate() {
        want[2 + i] = v;
    }
    assert_eq!(set.read("state").unwrap().to_f32_vec(), want);
    assert_eq!(set.version(), 1);

    // In place, twice: updates of 1 to values near 1 stay exact in f32 storage.
    let inc = b.compile(&increment(), &exact).unwrap();
    for _ in 0..2 {
        inc.run_in_place(&HashMap::new(), &mut set, &[write("next", "state", 0)])
            .unwrap();
    }
    let want: Vec<f32> = want.iter().map(|v| v + 2.0).collect();
    assert_eq!(set.read("state").unwrap().to_f32_vec(), want);

    // Into a set stored as the backend's mode (bf16 on a bf16 device), and back.
    let dst_specs = [("dst".to_string(), f32_type(&[4]))];
    let zeros = HashMap::from([("dst".to_string(), vec![0.0f32; 4])]);
    let mut narrow = b.upload_params(&dst_specs, &zeros).unwrap();
    let copy = ParamCopy {
        from: "state".into(),
        from_offset: 1,
        to: "dst".into(),
        to_offset: 0,
        len: 4,
    };
    b.copy_params(&set, &mut narrow, std::slice::from_ref(&copy))
        .unwrap();
    let got = narrow.read("dst").unwrap().to_f32_vec();
    for (g, w) in got.iter().zip(&want[1..5]) {
        assert!(
            (g - w).abs() <= w.abs() / 128.0,
            "{got:?} vs {:?}",
            &want[1..5]
        );
    }
    let back = ParamCopy {
        from: "dst".into(),
        from_offset: 0,
        to: "state".into(),
        to_offset: 4,
        len: 4,
    };
    b.copy_params(&narrow, &mut set, &[back]).unwrap();
    assert_eq!(&set.read("state").unwrap().to_f32_vec()[4..8], &got[..]);

    // Refused whole, the set unchanged: a range past the end, an unknown output or parameter.
    let before = (set.version(), set.read("state").unwrap().to_f32_vec());
    let err = exe
        .run_into(&inputs, &NoParams, &mut set, &[write("s", "state", 4)])
        .unwrap_err();
    assert!(
        matches!(&err, RuntimeError::BadParam { name, message } if name == "state" && message.contains("outside")),
        "{err}"
    );
    assert!(exe
        .run_into(&inputs, &NoParams, &mut set, &[write("t", "state", 0)])
        .unwrap_err()
        .to_string()
        .contains("no output \"t\""));
    assert!(matches!(
        exe.run_into(&inputs, &NoParams, &mut set, &[write("s", "nope", 0)]),
        Err(RuntimeError::MissingParam(n)) if n == "nope"
    ));
    let long = ParamCopy { len: 5, ..copy };
    assert!(matches!(
        b.copy_params(&set, &mut narrow, &[long]),
        Err(RuntimeError::BadParam { .. })
    ));
    assert_eq!(
        (set.version(), set.read("state").unwrap().to_f32_vec()),
        before
    );
}

fn cpu_writes_and_copies() {
    writes_and_copies(&CpuBackend);
}

fn cuda_writes_and_copies() {
    for mode in [StorageMode::Bf16, StorageMode::F32] {
        let b = CudaBackend::on_device(qie_runtime::cuda::test_device(), mode).unwrap();
        writes_and_copies(&b);
        // A set of another backend is refused.
        let other = CudaBackend::on_device(qie_runtime::cuda::test_device(), mode).unwrap();
        let host = HashMap::from([("state".to_string(), vec![0.0f32; 8])]);
        let specs = [("state".to_string(), f32_type(&[8]))];
        let mut foreign = other.upload_params(&specs, &host).unwrap();
        let exe = b.compile(&increment(), &CompileOptions::default()).unwrap();
        let set = b.upload_params(&specs, &host).unwrap();
        let err = exe
            .run_into(
                &HashMap::new(),
                &set,
                &mut foreign,
                &[write("next", "state", 0)],
            )
            .unwrap_err();
        assert!(err.to_string().contains("cannot be read"), "{err}");
    }
}

fn updating() -> CompileOptions {
    CompileOptions {
        storage: Some(StorageMode::F32),
        param_outputs: vec![("next".into(), "state".into())],
        ..CompileOptions::default()
    }
}

/// With `param_outputs`, the CUDA plan computes `next` straight into `state` (no arena buffer);
/// a request the planner cannot honour (no such output) is a compile error.
fn updates_are_planned_in_the_params_memory() {
    let plan = build_plan(&increment(), &updating(), StorageMode::Bf16).unwrap();
    assert_eq!(plan.memory.param_in_place.len(), 1);
    let next = plan.outputs.iter().find(|o| o.name == "next").unwrap();
    assert!(matches!(next.buf, BufRef::Param { .. }), "{:?}", next.buf);
    let plain = build_plan(&increment(), &CompileOptions::default(), StorageMode::Bf16).unwrap();
    assert!(plain.memory.param_in_place.is_empty());
    assert!(plain.arena_bytes > plan.arena_bytes);
    let bad = CompileOptions {
        param_outputs: vec![("nope".into(), "state".into())],
        ..CompileOptions::default()
    };
    let err = build_plan(&increment(), &bad, StorageMode::Bf16).unwrap_err();
    assert!(err.to_string().contains("no output \"nope\""), "{err}");
}

/// Such a plan updates the set only through run_in_place; any other run is refused, the set
/// unchanged.
fn cuda_updates_in_the_params_memory() {
    let b = CudaBackend::on_device(qie_runtime::cuda::test_device(), StorageMode::Bf16).unwrap();
    let host = HashMap::from([("state".to_string(), vec![1.0f32; 8])]);
    let specs = [("state".to_string(), f32_type(&[8]))];
    let mut set = b
        .upload_params_stored(&specs, &host, StorageMode::F32)
        .unwrap();
    let inc = b.compile(&increment(), &updating()).unwrap();
    let err = inc.run(&HashMap::new(), &set).unwrap_err();
    assert!(err.to_string().contains("run_in_place"), "{err}");
    assert_eq!(set.read("state").unwrap().to_f32_vec(), vec![1.0; 8]);
    for _ in 0..3 {
        inc.run_in_place(&HashMap::new(), &mut set, &[write("next", "state", 0)])
            .unwrap();
    }
    assert_eq!(set.read("state").unwrap().to_f32_vec(), vec![4.0; 8]);
}
