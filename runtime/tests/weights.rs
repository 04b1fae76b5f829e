//! Tests of `qie_runtime::weights`: files are written into temp dirs.

use std::borrow::Cow;
use std::fs;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use qie_runtime::weights::{
    save_raw, save_safetensors, save_safetensors_as, CheckMode, Dtype, RawTensor, ShapeMismatch,
    WeightStore, WeightsError,
};

/// Writes a file with a hand-made header: `len(header) | header | data`.
fn craft(path: &Path, header: &str, data: &[u8]) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    fs::write(path, bytes).unwrap();
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn open_err(path: &Path) -> WeightsError {
    WeightStore::open(path).expect_err("open should fail")
}

/// Saves `name -> (shape, values)` as F32 and returns the path.
fn save(dir: &Path, file: &str, tensors: &[(&str, Vec<usize>)]) -> PathBuf {
    let data: Vec<Vec<f32>> = tensors
        .iter()
        .map(|(_, s)| (0..s.iter().product::<usize>()).map(|i| i as f32).collect())
        .collect();
    let list: Vec<(&str, Vec<usize>, &[f32])> = tensors
        .iter()
        .zip(&data)
        .map(|((n, s), d)| (*n, s.clone(), d.as_slice()))
        .collect();
    let path = dir.join(file);
    save_safetensors(&path, &list).unwrap();
    path
}

// ---------------------------------------------------------------- round trips

#[test]
fn f32_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    let v = [
        0.0,
        -1.5,
        3.25,
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-30,
        f32::INFINITY,
        -0.0,
    ];
    save_safetensors(&path, &[("layer.weight", vec![2, 4], &v[..])]).unwrap();

    let store = WeightStore::open(&path).unwrap();
    assert_eq!(store.names(), vec!["layer.weight"]);
    let info = store.info("layer.weight").unwrap();
    assert_eq!(info.dtype, Dtype::F32);
    assert_eq!(info.shape, vec![2, 4]);
    assert_eq!(info.file, path);
    assert_eq!(info.numel(), 8);
    let back = store.load_f32("layer.weight").unwrap();
    let bits: Vec<u32> = back.iter().map(|x| x.to_bits()).collect();
    let want: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
    assert_eq!(bits, want);
    let meta = store.file_metadata(&path).unwrap();
    assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
}

#[test]
fn bf16_round_trip_matches_half_rounding() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    let v = [
        1.0f32,
        -2.0,
        0.5,
        3.140625,
        0.1,
        1.0 + 1.0 / 256.0,
        1e38,
        -7.0e-3,
    ];
    save_safetensors_as(&path, &[("w", vec![8], &v[..])], Dtype::BF16).unwrap();

    let store = WeightStore::open(&path).unwrap();
    assert_eq!(store.info("w").unwrap().dtype, Dtype::BF16);
    assert_eq!(store.bytes("w").unwrap().len(), 16);
    let back = store.load_f32("w").unwrap();
    let want: Vec<f32> = v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
    assert_eq!(back, want);
    // Exactly representable values survive; 0.1 and 1 + 2^-8 are rounded.
    assert_eq!(&back[..4], &[1.0, -2.0, 0.5, 3.140625]);
    assert_eq!(back[4], f32::from_bits(0x3dcd_0000)); // 0.10009765625
    assert_eq!(back[5], 1.0);
}

#[test]
fn f16_round_trip_matches_half_rounding() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    let v = [1.0f32, -0.25, 65504.0, 70000.0, 0.1, 6.0e-8];
    save_safetensors_as(&path, &[("w", vec![2, 3], &v[..])], Dtype::F16).unwrap();

    let store = WeightStore::open(&path).unwrap();
    assert_eq!(store.info("w").unwrap().dtype, Dtype::F16);
    let back = store.load_f32("w").unwrap();
    let want: Vec<f32> = v.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
    assert_eq!(back, want);
    assert_eq!(&back[..3], &[1.0, -0.25, 65504.0]);
    assert_eq!(back[3], f32::INFINITY);
}

#[test]
fn f64_and_integer_tensors_convert() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    let f64s: Vec<u8> = [1.5f64, -1e300, 0.1]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let i64s: Vec<u8> = [-3i64, 0, 1 << 40]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let small_i64s: Vec<u8> = [-3i64, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
    let i32s: Vec<u8> = [-5i32, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
    let raw = |name: &str, dtype, shape: Vec<usize>, data: Vec<u8>| RawTensor {
        name: name.to_string(),
        dtype,
        shape,
        data: Cow::Owned(data),
    };
    save_raw(
        &path,
        &[
            raw("f64", Dtype::F64, vec![3], f64s),
            raw("i64", Dtype::I64, vec![3], i64s),
            raw("small_i64", Dtype::I64, vec![2], small_i64s),
            raw("i32", Dtype::I32, vec![2], i32s),
            raw("u8", Dtype::U8, vec![2], vec![0, 255]),
            raw("i8", Dtype::I8, vec![2], vec![0x80, 0x7f]),
            raw("mask", Dtype::BOOL, vec![3], vec![0, 1, 2]),
        ],
    )
    .unwrap();

    let s = WeightStore::open(&path).unwrap();
    assert_eq!(
        s.load_f32("f64").unwrap(),
        vec![1.5, f32::NEG_INFINITY, 0.1f64 as f32]
    );
    assert_eq!(s.load_i64("i64").unwrap(), vec![-3, 0, 1 << 40]);
    assert_eq!(s.load_i64("i32").unwrap(), vec![-5, 9]);
    assert_eq!(s.load_i64("u8").unwrap(), vec![0, 255]);
    assert_eq!(s.load_i32("i8").unwrap(), vec![-128, 127]);
    assert_eq!(s.load_i32("mask").unwrap(), vec![0, 1, 1]);
    assert_eq!(s.load_i32("small_i64").unwrap(), vec![-3, 7]);
    assert_eq!(s.load_i32("i32").unwrap(), vec![-5, 9]);

    let msg = s.load_i32("i64").unwrap_err().to_string();
    assert_eq!(
        msg,
        "weights: tensor 'i64' holds the value 1099511627776, which does not fit in i32"
    );
    let msg = s.load_f32("i64").unwrap_err().to_string();
    assert_eq!(
        msg,
        "weights: tensor 'i64' has dtype I64, which cannot be loaded as f32"
    );
    assert!(matches!(
        s.load_i64("f64").unwrap_err(),
        WeightsError::Dtype {
            dtype: Dtype::F64,
            target: "i64",
            ..
        }
    ));
}

#[test]
fn unaligned_data_loads_correctly_in_parallel_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    // Large enough for the parallel path; odd header length so the data
    // starts at an odd file offset (the mapping itself is page aligned).
    let n = 200_001usize;
    let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 7.0).collect();
    let b: Vec<bf16> = (0..n).map(|i| bf16::from_f32(i as f32)).collect();
    let mut data = f32_bytes(&a);
    data.extend(b.iter().flat_map(|v| v.to_le_bytes()));
    let mut header = format!(
        r#"{{"a":{{"dtype":"F32","shape":[{n}],"data_offsets":[0,{}]}},"b":{{"dtype":"BF16","shape":[{n}],"data_offsets":[{},{}]}}}}"#,
        4 * n,
        4 * n,
        6 * n
    );
    if header.len() % 2 == 0 {
        header.push(' ');
    }
    craft(&path, &header, &data);

    let store = WeightStore::open(&path).unwrap();
    assert_ne!(store.bytes("a").unwrap().as_ptr() as usize % 4, 0);
    assert_eq!(store.load_f32("a").unwrap(), a);
    let want_b: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
    assert_eq!(store.load_f32("b").unwrap(), want_b);
}

// ---------------------------------------------------------------- locating

fn write_index(path: &Path, map: &[(&str, &str)]) {
    let entries: Vec<String> = map
        .iter()
        .map(|(t, f)| format!("\"{t}\": \"{f}\""))
        .collect();
    let json = format!(
        "{{\"metadata\": {{\"total_size\": 0}}, \"weight_map\": {{{}}}}}",
        entries.join(", ")
    );
    fs::write(path, json).unwrap();
}

#[test]
fn sharded_directory_with_index() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s1 = "diffusion_pytorch_model-00001-of-00002.safetensors";
    let s2 = "diffusion_pytorch_model-00002-of-00002.safetensors";
    save(
        d,
        s1,
        &[("blocks.0.w", vec![2, 3]), ("blocks.0.b", vec![3])],
    );
    save(d, s2, &[("proj_out.w", vec![4])]);
    let index = d.join("diffusion_pytorch_model.safetensors.index.json");
    write_index(
        &index,
        &[("blocks.0.w", s1), ("blocks.0.b", s1), ("proj_out.w", s2)],
    );

    for opened in [d.to_path_buf(), index.clone()] {
        let store = WeightStore::open(&opened).unwrap();
        assert_eq!(store.source(), opened.as_path());
        assert_eq!(
            store.names(),
            vec!["blocks.0.b", "blocks.0.w", "proj_out.w"]
        );
        assert_eq!(store.files(), vec![d.join(s1), d.join(s2)]);
        assert_eq!(store.info("proj_out.w").unwrap().file, d.join(s2));
        assert_eq!(store.info("blocks.0.w").unwrap().shape, vec![2, 3]);
        assert_eq!(store.load_f32("proj_out.w").unwrap(), vec![0., 1., 2., 3.]);
        let block = store.prefixed("blocks").pp("0");
        assert_eq!(block.load_f32("b").unwrap(), vec![0., 1., 2.]);
        assert_eq!(block.info("w").unwrap().shape, vec![2, 3]);
    }
}

#[test]
fn directory_with_one_file_of_any_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = save(dir.path(), "weights.safetensors", &[("t", vec![1])]);
    fs::write(dir.path().join("config.json"), "{}").unwrap();
    let store = WeightStore::open(dir.path()).unwrap();
    assert_eq!(store.files(), vec![p.as_path()]);
}

#[test]
fn directory_prefers_conventional_names_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conventional = save(d, "model.safetensors", &[("main", vec![1])]);
    save(d, "model.fp16.safetensors", &[("variant", vec![1])]);
    let store = WeightStore::open(d).unwrap();
    assert_eq!(store.files(), vec![conventional.as_path()]);
    assert!(store.contains("main") && !store.contains("variant"));

    // An index wins over plain files.
    let shard = save(
        d,
        "model-00001-of-00001.safetensors",
        &[("sharded", vec![1])],
    );
    write_index(
        &d.join("model.safetensors.index.json"),
        &[("sharded", "model-00001-of-00001.safetensors")],
    );
    let store = WeightStore::open(d).unwrap();
    assert_eq!(store.files(), vec![shard.as_path()]);
    assert_eq!(store.names(), vec!["sharded"]);
}

#[test]
fn ambiguous_directory_lists_candidates() {
    let dir = tempfile::tempdir().unwrap();
    save(dir.path(), "b.safetensors", &[("t", vec![1])]);
    save(dir.path(), "a.safetensors", &[("t", vec![1])]);
    let err = open_err(dir.path());
    assert_eq!(
        err.to_string(),
        format!(
            "weights: {}: cannot choose between a.safetensors, b.safetensors; open one of them directly",
            dir.path().display()
        )
    );
}

#[test]
fn empty_directory_and_missing_path() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("pytorch_model.bin"), "x").unwrap();
    let msg = open_err(dir.path()).to_string();
    assert_eq!(
        msg,
        format!(
            "weights: {}: no *.safetensors file or *.safetensors.index.json found",
            dir.path().display()
        )
    );
    let missing = dir.path().join("nope.safetensors");
    let err = open_err(&missing);
    assert!(matches!(err, WeightsError::Io { ref path, .. } if *path == missing));
    assert!(err.to_string().contains("nope.safetensors"), "{err}");
}

// ---------------------------------------------------------------- checking

fn check_store(dir: &Path) -> WeightStore {
    save(
        dir,
        "m.safetensors",
        &[
            ("a", vec![2]),
            ("b", vec![3, 4]),
            ("extra.1", vec![1]),
            ("extra.0", vec![1]),
        ],
    );
    WeightStore::open(dir.join("m.safetensors")).unwrap()
}

#[test]
fn check_reports_missing_unexpected_and_misshaped_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = check_store(dir.path());
    let expected = vec![
        ("a".to_string(), vec![2]),
        ("b".to_string(), vec![3, 5]),
        ("d".to_string(), vec![1]),
        ("c".to_string(), vec![7]),
    ];
    let report = store.check_report(&expected, CheckMode::Strict);
    assert_eq!(report.missing, vec!["d", "c"]);
    assert_eq!(report.unexpected, vec!["extra.0", "extra.1"]);
    assert_eq!(
        report.mismatched,
        vec![ShapeMismatch {
            name: "b".into(),
            expected: vec![3, 5],
            found: vec![3, 4]
        }]
    );

    let msg = store.check(&expected).unwrap_err().to_string();
    let want = format!(
        "weights: {}: tensors do not match the model: 2 missing, 2 unexpected, 1 mis-shaped\n\
         missing tensors (2):\n  d\n  c\n\
         unexpected tensors (2):\n  extra.0\n  extra.1\n\
         mis-shaped tensors (1):\n  b: expected [3, 5], found [3, 4]",
        dir.path().join("m.safetensors").display()
    );
    assert_eq!(msg, want);
}

#[test]
fn check_can_allow_unexpected_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let store = check_store(dir.path());
    let partial = [("a", vec![2]), ("b", vec![3, 4])];
    store
        .check_with(&partial, CheckMode::AllowUnexpected)
        .unwrap();
    let err = store.check(&partial).unwrap_err();
    let WeightsError::Mismatch(report) = err else {
        panic!("expected a mismatch, got {err}");
    };
    assert!(report.missing.is_empty() && report.mismatched.is_empty());
    assert_eq!(report.unexpected, vec!["extra.0", "extra.1"]);

    // Mis-shaped tensors still fail in the tolerant mode.
    let bad = [("a", vec![3])];
    let msg = store
        .check_with(&bad, CheckMode::AllowUnexpected)
        .unwrap_err()
        .to_string();
    assert!(msg.ends_with("1 mis-shaped\nmis-shaped tensors (1):\n  a: expected [3], found [2]"));
}

#[test]
fn check_truncates_long_lists() {
    let dir = tempfile::tempdir().unwrap();
    let store = check_store(dir.path());
    let mut expected: Vec<(String, Vec<usize>)> = (0..25)
        .map(|i| (format!("missing.{i:02}"), vec![1]))
        .collect();
    expected.push(("a".into(), vec![2]));
    let msg = store
        .check_with(&expected, CheckMode::AllowUnexpected)
        .unwrap_err()
        .to_string();
    let listed: Vec<&str> = msg
        .lines()
        .filter(|l| l.starts_with("  missing."))
        .collect();
    assert_eq!(listed.len(), 20);
    assert_eq!(listed[19], "  missing.19");
    assert!(msg.contains("missing tensors (25):"), "{msg}");
    assert!(msg.ends_with("\n  ... and 5 more"), "{msg}");
}

// ---------------------------------------------------------------- corrupt files

#[test]
fn truncated_file_names_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = save(
        dir.path(),
        "x.safetensors",
        &[("a.b", vec![10]), ("c.d", vec![25])],
    );
    let full = fs::read(&path).unwrap();
    fs::write(&path, &full[..full.len() - 10]).unwrap();
    let file_len = full.len() - 10;
    let end = full.len();
    let start = end - 100; // c.d is last in the file: 25 f32 values.

    let err = open_err(&path);
    assert_eq!(
        err.to_string(),
        format!(
            "weights: {}: truncated: tensor 'c.d' needs bytes {start}..{end} but the file has {file_len} bytes",
            path.display()
        )
    );
    assert!(matches!(err, WeightsError::Truncated { ref tensor, .. } if tensor == "c.d"));
}

#[test]
fn garbage_header_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    craft(&path, "this is not json", &[0; 16]);
    let msg = open_err(&path).to_string();
    let prefix = format!(
        "weights: {}: invalid header: not a json object:",
        path.display()
    );
    assert!(msg.starts_with(&prefix), "{msg}");

    fs::write(&path, [3, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe, 0xfd]).unwrap();
    let msg = open_err(&path).to_string();
    assert!(msg.contains("invalid header: not valid utf-8"), "{msg}");

    craft(&path, "[1, 2]", &[]);
    let msg = open_err(&path).to_string();
    assert!(msg.contains("invalid header: not a json object"), "{msg}");

    fs::write(&path, [1, 2, 3]).unwrap();
    let msg = open_err(&path).to_string();
    assert!(
        msg.ends_with("invalid header: the file has 3 bytes, too few for the 8-byte header length"),
        "{msg}"
    );
}

#[test]
fn header_length_past_end_of_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}  ");
    fs::write(&path, &bytes).unwrap();
    let msg = open_err(&path).to_string();
    assert_eq!(
        msg,
        format!(
            "weights: {}: invalid header: header length 1000 exceeds the 4 bytes that follow it (file has 12 bytes)",
            path.display()
        )
    );
    // A huge length must not overflow either.
    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    fs::write(&path, &bytes).unwrap();
    assert!(matches!(open_err(&path), WeightsError::Header { .. }));
}

#[test]
fn inconsistent_tensor_entries_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    craft(
        &path,
        r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}"#,
        &[0; 12],
    );
    let msg = open_err(&path).to_string();
    assert_eq!(
        msg,
        format!(
            "weights: {}: tensor 'w': dtype F32 and shape [2, 2] need 16 bytes but data_offsets [0, 12] span 12",
            path.display()
        )
    );

    craft(
        &path,
        r#"{"q":{"dtype":"F99","shape":[1],"data_offsets":[0,4]}}"#,
        &[0; 4],
    );
    let err = open_err(&path);
    assert!(matches!(err, WeightsError::InvalidTensor { ref tensor, .. } if tensor == "q"));
    assert!(err.to_string().contains("invalid entry"), "{err}");

    // A gap between tensors is caught by the safetensors crate; wrapped with the path.
    craft(
        &path,
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
        &[0; 12],
    );
    let err = open_err(&path);
    assert!(matches!(err, WeightsError::Format { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("weights: {}: ", path.display())),
        "{err}"
    );
}

#[test]
fn index_naming_a_missing_shard_names_index_and_shard() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s1 = "model-00001-of-00002.safetensors";
    save(d, s1, &[("a", vec![1])]);
    let index = d.join("model.safetensors.index.json");
    let s2 = "model-00002-of-00002.safetensors";
    write_index(&index, &[("a", s1), ("b.0", s2), ("b.1", s2), ("b.2", s2)]);
    let err = open_err(d);
    assert_eq!(
        err.to_string(),
        format!(
            "weights: {}: shard file {} (listed for tensor 'b.0' and 2 others) does not exist",
            index.display(),
            d.join(s2).display()
        )
    );
}

#[test]
fn index_errors_name_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s1 = "model-00001-of-00001.safetensors";
    save(d, s1, &[("a", vec![1])]);
    let index = d.join("model.safetensors.index.json");

    write_index(&index, &[("a", s1), ("ghost", s1)]);
    assert_eq!(
        open_err(d).to_string(),
        format!(
            "weights: {}: tensor 'ghost' is mapped to {} but that file does not contain it",
            index.display(),
            d.join(s1).display()
        )
    );

    fs::write(&index, "{\"weight_map\": ").unwrap();
    let msg = open_err(d).to_string();
    let prefix = format!(
        "weights: {}: invalid index: not valid json",
        index.display()
    );
    assert!(msg.starts_with(&prefix), "{msg}");

    fs::write(&index, "{\"metadata\": {}}").unwrap();
    let msg = open_err(d).to_string();
    assert!(
        msg.ends_with("invalid index: no \"weight_map\" object"),
        "{msg}"
    );
}

#[test]
fn unknown_tensor_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = save(dir.path(), "x.safetensors", &[("a", vec![1])]);
    let store = WeightStore::open(&path).unwrap();
    assert_eq!(
        store.load_f32("nope").unwrap_err().to_string(),
        format!("weights: tensor 'nope' not found in {}", path.display())
    );
    assert!(store.info("nope").is_none());
}

// ---------------------------------------------------------------- writing

fn dir_listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn writer_replaces_atomically_and_leaves_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.safetensors");
    save_safetensors(&path, &[("t", vec![2], &[1.0f32, 2.0][..])]).unwrap();
    save_safetensors(&path, &[("u", vec![1], &[5.0f32][..])]).unwrap();
    assert_eq!(dir_listing(dir.path()), vec!["out.safetensors"]);
    let store = WeightStore::open(&path).unwrap();
    assert_eq!(store.names(), vec!["u"]);
    assert_eq!(store.load_f32("u").unwrap(), vec![5.0]);
}

#[test]
fn writer_rejects_inconsistent_input_without_touching_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.safetensors");
    let err = save_safetensors(&path, &[("t", vec![2, 2], &[1.0f32, 2.0][..])]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "weights: {}: cannot write: tensor 't' has shape [2, 2] (4 elements) but 2 values",
            path.display()
        )
    );
    let v = [1.0f32];
    let err =
        save_safetensors(&path, &[("t", vec![1], &v[..]), ("t", vec![1], &v[..])]).unwrap_err();
    assert!(
        err.to_string().ends_with("tensor 't' is given twice"),
        "{err}"
    );
    let err = save_safetensors_as(&path, &[("t", vec![1], &v[..])], Dtype::I32).unwrap_err();
    assert!(err.to_string().contains("cannot be stored as I32"), "{err}");
    assert!(dir_listing(dir.path()).is_empty());
}
