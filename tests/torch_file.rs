//! The torch checkpoint reader (runtime/src/weights/torch_file) against torch.save itself
//! (tools/golden/make_dreamsim_fixtures.py writes values.pth and what torch reads back from it):
//! every dtype, strided views, shared storages, nested dicts, objects it does not interpret;
//! and damaged files give an error naming the file, never a panic.

use qie_runtime::weights::torch_file::Value;
use qie_runtime::weights::{TorchFile, WeightStore};
use qie_tests::fixture;

#[test]
fn every_tensor_reads_as_torch_wrote_it() {
    let file = TorchFile::open(&fixture("torch_file/values.pth")).unwrap();
    let expected = WeightStore::open(fixture("torch_file/expected.safetensors")).unwrap();
    let mut seen = 0;
    for (at, prefix) in [
        (vec![], ""),
        (vec!["nested"], "nested/"),
        (vec!["nested", "state_dict"], "nested/state_dict/"),
    ] {
        for (name, tensor) in file.tensors_at(&at).unwrap() {
            let key = format!("{prefix}{name}");
            let want = expected.load_f32(&key).unwrap();
            let info = expected.require(&key).unwrap();
            assert_eq!(tensor.shape, info.shape, "{key}: shape");
            assert_eq!(file.load_f32(&key, &tensor).unwrap(), want, "{key}: values");
            seen += 1;
        }
    }
    assert_eq!(seen, expected.len(), "every expected tensor was found");

    let root = file.root();
    assert!(matches!(root.get("args"), Some(Value::Object(o)) if o == "argparse.Namespace"));
    assert!(matches!(root.get("big"), Some(Value::Int(v)) if v == 1 << 40));
    let Some(Value::List(plain)) = root.get("plain") else {
        panic!("`plain` is a list")
    };
    let plain = plain.borrow();
    assert!(matches!(&plain[2], Value::Str(s) if s == "three"));
    assert!(matches!(plain[1], Value::Float(f) if f == 2.0));
    assert!(matches!(&plain[5], Value::Tuple(t) if t.len() == 2));

    let e = file
        .tensors_at(&["nested", "missing"])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("values.pth") && e.contains("missing"), "{e}");
    let e = file.tensors_at(&["plain"]).err().unwrap().to_string();
    assert!(e.contains("a list, not a state dict"), "{e}");
}

#[test]
fn damaged_files_are_errors_naming_the_file() {
    let bytes = std::fs::read(fixture("torch_file/values.pth")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cut.pth");
    // every truncation, and a flipped byte at many offsets: an error or a clean read, no panic
    for cut in (0..bytes.len()).step_by(97) {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let e = TorchFile::open(&path)
            .err()
            .expect("a truncated file does not open");
        assert!(e.to_string().contains("cut.pth"), "{e}");
    }
    for at in (0..bytes.len()).step_by(13) {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x5a;
        std::fs::write(&path, &damaged).unwrap();
        if let Ok(file) = TorchFile::open(&path) {
            for (name, t) in file.tensors_at(&[]).unwrap_or_default() {
                let _ = file.load_f32(&name, &t);
            }
        }
    }
    std::fs::write(&path, b"not a checkpoint").unwrap();
    let e = TorchFile::open(&path).err().unwrap().to_string();
    assert!(e.contains("not a zip-format torch checkpoint"), "{e}");
}
