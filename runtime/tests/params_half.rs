//! Weights kept as bf16 / f16 on the host: the CPU backend widens them when it binds them, so a
//! plan gives exactly the results of f32 weights holding the same (rounded) values; the weights
//! store loads bf16 tensors without widening them.

mod cpu_suite;

use cpu_suite::{f32_type, GraphBuilder};
use half::{bf16, f16};
use qie_ir::{BinaryOp, Op};
use qie_runtime::cpu::CpuBackend;
use qie_runtime::weights::{save_raw, Dtype, RawTensor, StoredTensor, WeightStore, WeightsError};
use qie_runtime::{Backend, CompileOptions, ParamData, ParamStore, RuntimeError, Tensor};
use std::borrow::Cow;
use std::collections::HashMap;

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

/// Params held in one dtype for the whole store.
enum Store {
    F32(HashMap<String, Vec<f32>>),
    Bf16(HashMap<String, Vec<bf16>>),
    F16(HashMap<String, Vec<f16>>),
}

impl ParamStore for Store {
    fn param(&self, name: &str) -> Option<ParamData<'_>> {
        match self {
            Store::F32(m) => m.get(name).map(|v| ParamData::F32(v)),
            Store::Bf16(m) => m.get(name).map(|v| ParamData::BF16(v)),
            Store::F16(m) => m.get(name).map(|v| ParamData::F16(v)),
        }
    }
}

/// `y = conv(x, w) + b` and `z = x2 @ m`: params of several kinds of steps.
fn graph() -> qie_ir::Graph {
    let mut g = GraphBuilder::new();
    let x = g.input("x", f32_type(&[1, 3, 6, 5]));
    let w = g.param("w", f32_type(&[4, 3, 3, 3]));
    let b = g.param("b", f32_type(&[1, 4, 6, 5]));
    let c = g.op(
        Op::Conv2d {
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
            groups: 1,
        },
        &[x, w],
    );
    let y = g.binary(BinaryOp::Add, c, b);
    g.out("y", y);
    let x2 = g.input("x2", f32_type(&[7, 16]));
    let m = g.param("m", f32_type(&[16, 9]));
    let z = g.matmul(x2, m, false, false);
    g.out("z", z);
    g.graph
}

fn params() -> Vec<(&'static str, Vec<f32>)> {
    vec![
        ("w", values(4 * 27, 1)),
        ("b", values(4 * 30, 2)),
        ("m", values(16 * 9, 3)),
    ]
}

fn run(store: &Store) -> HashMap<String, Tensor> {
    let exe = CpuBackend
        .compile(&graph(), &CompileOptions::default())
        .unwrap();
    let mut inputs = HashMap::new();
    inputs.insert(
        "x".to_string(),
        Tensor::from_f32(&[1, 3, 6, 5], values(90, 4)).unwrap(),
    );
    inputs.insert(
        "x2".to_string(),
        Tensor::from_f32(&[7, 16], values(112, 5)).unwrap(),
    );
    exe.run(&inputs, store).unwrap()
}

fn assert_same(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) {
    for name in ["y", "z"] {
        let (x, y) = (a[name].as_f32().unwrap(), b[name].as_f32().unwrap());
        assert!(x.iter().any(|v| *v != 0.0), "{name} is all zeros");
        let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "{name} differs");
    }
}

#[test]
fn cpu_bf16_params_equal_rounded_f32() {
    let bf: HashMap<String, Vec<bf16>> = params()
        .into_iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                v.iter().map(|&x| bf16::from_f32(x)).collect(),
            )
        })
        .collect();
    let rounded: HashMap<String, Vec<f32>> = bf
        .iter()
        .map(|(n, v)| (n.clone(), v.iter().map(|x| x.to_f32()).collect()))
        .collect();
    assert_same(&run(&Store::Bf16(bf)), &run(&Store::F32(rounded)));
}

#[test]
fn cpu_f16_params_equal_rounded_f32() {
    let h: HashMap<String, Vec<f16>> = params()
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.iter().map(|&x| f16::from_f32(x)).collect()))
        .collect();
    let rounded: HashMap<String, Vec<f32>> = h
        .iter()
        .map(|(n, v)| (n.clone(), v.iter().map(|x| x.to_f32()).collect()))
        .collect();
    assert_same(&run(&Store::F16(h)), &run(&Store::F32(rounded)));
}

#[test]
fn cpu_bf16_param_with_wrong_length_is_named() {
    let mut bf: HashMap<String, Vec<bf16>> = params()
        .into_iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                v.iter().map(|&x| bf16::from_f32(x)).collect(),
            )
        })
        .collect();
    bf.get_mut("m").unwrap().pop();
    let exe = CpuBackend
        .compile(&graph(), &CompileOptions::default())
        .unwrap();
    let mut inputs = HashMap::new();
    inputs.insert(
        "x".into(),
        Tensor::from_f32(&[1, 3, 6, 5], values(90, 4)).unwrap(),
    );
    inputs.insert(
        "x2".into(),
        Tensor::from_f32(&[7, 16], values(112, 5)).unwrap(),
    );
    let err = exe.run(&inputs, &Store::Bf16(bf)).unwrap_err();
    assert!(
        matches!(err, RuntimeError::BadParam { ref name, .. } if name == "m"),
        "{err}"
    );
}

fn raw<'a>(name: &str, dtype: Dtype, shape: &[usize], data: Vec<u8>) -> RawTensor<'a> {
    RawTensor {
        name: name.to_string(),
        dtype,
        shape: shape.to_vec(),
        data: Cow::Owned(data),
    }
}

#[test]
fn store_keeps_bf16_and_rounds_other_floats() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let v = values(37, 9);
    let bf: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
    let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
    save_raw(
        &path,
        &[
            raw(
                "b",
                Dtype::BF16,
                &[37],
                bf.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            raw(
                "f",
                Dtype::F32,
                &[37],
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            raw(
                "h",
                Dtype::F16,
                &[37],
                h.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            raw("i", Dtype::I32, &[2], vec![1, 0, 0, 0, 2, 0, 0, 0]),
        ],
    )
    .unwrap();
    let store = WeightStore::open(&path).unwrap();
    assert_eq!(
        store.load_stored("b").unwrap(),
        StoredTensor::BF16(bf.clone())
    );
    assert_eq!(
        store.load_stored("f").unwrap(),
        StoredTensor::F32(v.clone())
    );
    assert_eq!(store.load_stored("h").unwrap(), StoredTensor::F16(h));
    assert_eq!(store.load_bf16("b").unwrap(), bf);
    assert_eq!(store.load_bf16("f").unwrap(), bf);
    let view = store.view_bf16("b").unwrap();
    assert!(
        matches!(view, Cow::Borrowed(_)),
        "aligned bf16 data is borrowed from the map"
    );
    assert_eq!(view.as_ref(), bf.as_slice());
    for err in [
        store.load_bf16("i").unwrap_err(),
        store.load_stored("i").unwrap_err(),
        store.view_bf16("f").unwrap_err(),
    ] {
        assert!(matches!(err, WeightsError::Dtype { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("tensor '") && text.contains("has dtype"),
            "{text}"
        );
    }
    let missing = store.load_bf16("nope").unwrap_err();
    assert!(
        matches!(missing, WeightsError::NotFound { .. }),
        "{missing}"
    );
}

#[test]
fn store_bf16_view_of_unaligned_data_is_copied() {
    // A hand-made file whose bf16 data starts at an odd byte (after a 1-byte U8 tensor).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.safetensors");
    let bf: Vec<bf16> = values(9, 3).iter().map(|&x| bf16::from_f32(x)).collect();
    let mut header = r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"BF16","shape":[9],"data_offsets":[1,19]}}"#.to_string();
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.push(7);
    bytes.extend(bf.iter().flat_map(|x| x.to_le_bytes()));
    std::fs::write(&path, bytes).unwrap();
    let store = WeightStore::open(&path).unwrap();
    let view = store.view_bf16("b").unwrap();
    assert!(
        matches!(view, Cow::Owned(_)),
        "unaligned data cannot be borrowed"
    );
    assert_eq!(view.as_ref(), bf.as_slice());
    assert_eq!(store.load_bf16("b").unwrap(), bf);
}

#[test]
fn truncated_bf16_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.safetensors");
    let bf: Vec<u8> = (0..64u8).collect();
    save_raw(&path, &[raw("w.weight", Dtype::BF16, &[32], bf)]).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let err = WeightStore::open(&path).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, WeightsError::Truncated { .. }), "{text}");
    assert!(
        text.contains("w.weight") && text.contains("t.safetensors"),
        "{text}"
    );
}
