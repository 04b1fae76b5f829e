//! Gather indices outside the gathered axis: the CPU backend reports them as an execution error
//! naming the kernel, the index and the axis size (as the reference interpreter rejects them),
//! on the serial and the parallel paths, fused and unfused; in-range indices match the
//! reference exactly.

use qie_ir::eval;
use qie_ir::testing::{random_tensor, Rng};
use qie_ir::{BinaryOp, DType, Graph, Op, ReduceOp, TensorType};
use qie_runtime::cpu::compile;
use qie_runtime::{CompileOptions, RuntimeError, Tensor};
use std::collections::HashMap;

/// Unoptimised and unfused, then the full pipeline; the arena poisoned before every run.
fn option_sets() -> [CompileOptions; 2] {
    [
        CompileOptions {
            optimize: false,
            fuse: false,
            poison: true,
            ..Default::default()
        },
        CompileOptions {
            optimize: true,
            fuse: true,
            poison: true,
            ..Default::default()
        },
    ]
}

/// A graph gathering rows of a `table` param along `axis` with an `ids` input, then using the
/// rows elementwise (so the gather may be fused with a consumer) and in a reduction.
struct Case {
    graph: Graph,
    table: TensorType,
    ids: TensorType,
}

fn case(table_shape: &[usize], axis: usize, ids_dtype: DType, ids_shape: &[usize]) -> Case {
    let table = TensorType::new(DType::F32, table_shape);
    let ids = TensorType::new(ids_dtype, ids_shape);
    let mut g = Graph::new();
    let t = g.param("table", table.clone());
    let i = g.input("ids", ids.clone());
    let rows = g.add(Op::Gather { axis }, &[t, i]).expect("gather");
    g.set_output("rows", rows);
    let doubled = g
        .add(Op::Binary(BinaryOp::Add), &[rows, rows])
        .expect("add");
    g.set_output("doubled", doubled);
    let last = g.ty(rows).rank() - 1;
    let sums = g
        .add(
            Op::Reduce {
                op: ReduceOp::Sum,
                axes: [last].as_slice().into(),
            },
            &[doubled],
        )
        .expect("reduce");
    g.set_output("sums", sums);
    Case {
        graph: g,
        table,
        ids,
    }
}

type Values = HashMap<String, eval::Tensor>;

fn values(c: &Case, ids: &[i64], seed: u64) -> Values {
    let mut rng = Rng::new(seed);
    let mut v = HashMap::new();
    v.insert("table".into(), random_tensor(&mut rng, &c.table, 0));
    let ids = ids.iter().map(|&i| i as f64).collect();
    v.insert("ids".into(), eval::Tensor::new(c.ids.clone(), ids));
    v
}

fn reference(c: &Case, v: &Values) -> Result<HashMap<String, eval::Tensor>, eval::EvalError> {
    let inputs: Values = [("ids".to_string(), v["ids"].clone())].into();
    eval::eval(&c.graph, &inputs, &|name| v.get(name).cloned())
}

/// Every output of one run on the CPU backend, or its error.
fn run_cpu(
    c: &Case,
    v: &Values,
    options: &CompileOptions,
) -> Result<HashMap<String, Tensor>, RuntimeError> {
    let exe = compile(&c.graph, options).expect("compile");
    let inputs: HashMap<String, Tensor> =
        [("ids".to_string(), Tensor::from_eval(&v["ids"]))].into();
    let params: HashMap<String, Tensor> =
        [("table".to_string(), Tensor::from_eval(&v["table"]))].into();
    exe.run(&inputs, &params)
}

/// In range: the gathered rows are exact copies, the sums close to the reference.
fn assert_matches_reference(c: &Case, ids: &[i64]) {
    let v = values(c, ids, 7);
    let want = reference(c, &v).expect("reference accepts in-range indices");
    for options in option_sets() {
        let got = run_cpu(c, &v, &options).expect("in-range indices run");
        for name in ["rows", "doubled"] {
            let want: Vec<f32> = want[name].data.iter().map(|&x| x as f32).collect();
            assert_eq!(got[name].to_f32_vec(), want, "{name} ({options:?})");
        }
        let (got, want) = (got["sums"].to_f32_vec(), &want["sums"].data);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!(
                (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "sums: {g} vs {w}"
            );
        }
    }
}

/// Out of range: the reference rejects the input, and the CPU backend returns an execution
/// error naming a gather kernel, the bad index and the axis size (for both option sets).
fn assert_rejects(c: &Case, ids: &[i64], bad: i64, axis_len: usize) {
    let v = values(c, ids, 11);
    let reference_error = reference(c, &v).expect_err("the reference rejects the index");
    // (The reference holds values as f64 and prints i64::MIN rounded.)
    assert!(
        reference_error.message.contains("index"),
        "reference: {reference_error}"
    );
    for options in option_sets() {
        let message = match run_cpu(c, &v, &options) {
            Err(RuntimeError::Execution(m)) => m,
            Err(e) => panic!("expected an execution error, got {e}"),
            Ok(_) => panic!("gather index {bad} ran ({options:?})"),
        };
        let want = format!("gather index {bad} out of range for an axis of size {axis_len}");
        assert!(message.contains(&want), "{message:?} lacks {want:?}");
        assert!(
            message.starts_with("kernel g") && message.contains("_gather: "),
            "{message:?} does not name the gather kernel"
        );
    }
}

#[test]
fn in_range_indices_match_the_reference() {
    let c = case(&[5, 8], 0, DType::I64, &[2, 3]);
    assert_matches_reference(&c, &[0, 4, 2, 2, 1, 3]);
    let c = case(&[3, 5, 4], 1, DType::I32, &[4]);
    assert_matches_reference(&c, &[4, 0, 3, 1]);
}

#[test]
fn an_index_past_the_axis_is_an_error() {
    let c = case(&[5, 8], 0, DType::I64, &[2, 3]);
    assert_rejects(&c, &[0, 1, 7, 2, 3, 4], 7, 5);
    // The first index not below the size.
    assert_rejects(&c, &[0, 1, 2, 3, 4, 5], 5, 5);
    let c = case(&[3, 5, 4], 1, DType::I32, &[4]);
    assert_rejects(&c, &[4, 0, 9, 1], 9, 5);
}

#[test]
fn a_negative_index_is_an_error() {
    let c = case(&[5, 8], 0, DType::I64, &[2, 3]);
    assert_rejects(&c, &[0, 1, 2, -1, 3, 4], -1, 5);
    let c = case(&[3, 5, 4], 1, DType::I32, &[4]);
    assert_rejects(&c, &[4, -3, 0, 1], -3, 5);
}

/// Enough elements for the kernels to run in parallel (rayon): a bad index in one task comes
/// back as an error, not a panic, and the same plan still runs good indices afterwards.
#[test]
fn large_gathers_report_errors_from_worker_threads() {
    let c = case(&[4, 100, 64], 1, DType::I64, &[300]);
    let mut ids: Vec<i64> = (0..300).map(|i| (i * 37) % 100).collect();
    assert_matches_reference(&c, &ids);
    ids[217] = 100;
    assert_rejects(&c, &ids, 100, 100);
    ids[217] = i64::MIN;
    assert_rejects(&c, &ids, i64::MIN, 100);

    let v = values(&c, &ids, 3);
    let exe = compile(&c.graph, &CompileOptions::default()).expect("compile");
    let params: HashMap<String, Tensor> =
        [("table".to_string(), Tensor::from_eval(&v["table"]))].into();
    let bad: HashMap<String, Tensor> = [("ids".to_string(), Tensor::from_eval(&v["ids"]))].into();
    assert!(exe.run(&bad, &params).is_err());
    ids[217] = 5;
    let good = values(&c, &ids, 3);
    let want = reference(&c, &good).expect("reference");
    let inputs: HashMap<String, Tensor> =
        [("ids".to_string(), Tensor::from_eval(&good["ids"]))].into();
    let got = exe.run(&inputs, &params).expect("the plan runs again");
    let want_rows: Vec<f32> = want["rows"].data.iter().map(|&x| x as f32).collect();
    assert_eq!(got["rows"].to_f32_vec(), want_rows);
}
