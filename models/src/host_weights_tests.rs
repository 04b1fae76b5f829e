//! HostWeights keeps bf16 checkpoints as bf16 at `WeightPrecision::Bf16` and binds them as
//! `ParamData::BF16`; f32 checkpoints are rounded; accessors for LoRA merges.

use super::*;
use qie_runtime::weights::{save_raw, Dtype, RawTensor};

fn values(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.37).sin() * 1.3).collect()
}

fn raw(name: &str, dtype: Dtype, n: usize, bytes: Vec<u8>) -> RawTensor<'static> {
    RawTensor {
        name: name.into(),
        dtype,
        shape: vec![n],
        data: Cow::Owned(bytes),
    }
}

/// A checkpoint with a bf16 tensor `b` and an f32 tensor `f` of the same values.
fn store(dir: &std::path::Path) -> WeightStore {
    let v = values(40);
    let path = dir.join("w.safetensors");
    let bf: Vec<u8> = v
        .iter()
        .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
        .collect();
    let f: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    save_raw(
        &path,
        &[raw("b", Dtype::BF16, 40, bf), raw("f", Dtype::F32, 40, f)],
    )
    .unwrap();
    WeightStore::open(&path).unwrap()
}

fn expected() -> Vec<(String, Vec<usize>)> {
    vec![("b".into(), vec![40]), ("f".into(), vec![40])]
}

#[test]
fn bf16_precision_stores_bf16() {
    let dir = tempfile::tempdir().unwrap();
    let w = HostWeights::load(&store(dir.path()), &expected(), WeightPrecision::Bf16).unwrap();
    let rounded: Vec<f32> = values(40)
        .iter()
        .map(|&x| bf16::from_f32(x).to_f32())
        .collect();
    for name in ["b", "f"] {
        assert!(matches!(w.tensor(name), Some(HostTensor::Bf16(_))));
        assert!(matches!(w.param(name), Some(ParamData::BF16(_))));
        assert_eq!(w.get_f32(name).unwrap().as_ref(), rounded.as_slice());
        assert!(w.get(name).is_none() && w.contains(name));
    }
    assert_eq!(w.bytes(), 2 * 40 * 2);
    w.check(&expected()).unwrap();
}

#[test]
fn f32_precision_widens() {
    let dir = tempfile::tempdir().unwrap();
    let w = HostWeights::load(&store(dir.path()), &expected(), WeightPrecision::F32).unwrap();
    assert_eq!(w.get("f").unwrap(), values(40).as_slice());
    let b = w.get("b").unwrap();
    assert_eq!(b[3], bf16::from_f32(values(40)[3]).to_f32());
    assert!(matches!(w.param("b"), Some(ParamData::F32(_))));
    assert_eq!(w.bytes(), 2 * 40 * 4);
}

#[test]
fn set_f32_rounds_at_bf16() {
    let mut w = HostWeights::default();
    w.set_f32("x", vec![1.0 + 1e-3, 2.0], WeightPrecision::Bf16);
    assert_eq!(w.get_f32("x").unwrap().as_ref(), &[1.0, 2.0]);
    w.set_f32("x", vec![1.0 + 1e-3], WeightPrecision::F32);
    w.get_mut("x").unwrap()[0] += 1.0;
    assert_eq!(w.get("x").unwrap(), &[2.0 + 1e-3]);
    assert!(w.check(&[("x".into(), vec![2])]).is_err());
    assert!(w.check(&[("y".into(), vec![1])]).is_err());
}

#[test]
fn missing_or_integer_tensor_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i.safetensors");
    save_raw(&path, &[raw("i", Dtype::I32, 1, vec![1, 0, 0, 0])]).unwrap();
    let store = WeightStore::open(&path).unwrap();
    let err = HostWeights::load(&store, &[("i".into(), vec![1])], WeightPrecision::Bf16)
        .err()
        .unwrap();
    assert!(err.to_string().contains("'i'"), "{err}");
    let err = HostWeights::load(&store, &[("nope".into(), vec![1])], WeightPrecision::Bf16)
        .err()
        .unwrap();
    assert!(err.to_string().contains("nope"), "{err}");
}
