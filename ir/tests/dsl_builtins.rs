//! Semantics of builtins, the prelude and compile-time evaluation, checked numerically with the
//! reference interpreter `qie_ir::eval`.

use qie_ir::dsl::{Program, StaticValue};
use qie_ir::eval::Tensor;
use qie_ir::{DType, Graph, Op, TensorType};
use serde_json::json;
use std::collections::HashMap;

fn lower(src: &str, inputs: &[(&str, &[usize])], statics: &[(&str, StaticValue)]) -> Graph {
    let read = |n: &str| (n == "t.qie").then(|| src.to_string());
    let prog = Program::from_sources("t.qie", &read).unwrap_or_else(|e| panic!("{e}"));
    let inputs: Vec<(String, TensorType)> = inputs
        .iter()
        .map(|(n, d)| (n.to_string(), TensorType::new(DType::F32, d)))
        .collect();
    let statics: Vec<(String, StaticValue)> = statics
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect();
    let g = prog
        .lower(&json!({"dim": 4}), &inputs, &statics)
        .unwrap_or_else(|e| panic!("{e}"));
    qie_ir::verify(&g).unwrap_or_else(|e| panic!("{e}"));
    g
}

fn random(dims: &[usize], seed: u64) -> Tensor {
    let mut s = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    let n: usize = dims.iter().product();
    let data = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 4.0 - 2.0
        })
        .collect();
    Tensor::new(TensorType::new(DType::F32, dims), data)
}

fn run(g: &Graph, inputs: &[(&str, &Tensor)]) -> HashMap<String, Tensor> {
    let inputs: HashMap<String, Tensor> = inputs
        .iter()
        .map(|(n, t)| (n.to_string(), (*t).clone()))
        .collect();
    qie_ir::eval::eval(g, &inputs, &|_| None).unwrap_or_else(|e| panic!("{e}"))
}

fn assert_close(got: &Tensor, want: &[f64], what: &str) {
    assert_eq!(got.data.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.data.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-9 * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// Rows of a [rows, cols] tensor.
fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    let cols = *t.shape().last().unwrap();
    t.data.chunks(cols).map(|r| r.to_vec()).collect()
}

#[test]
fn prelude_functions_match_torch_formulas() {
    let src = r#"
module M() {
    fn forward(x: f32[R, C], w: f32[C], b: f32[C]) {
        output softmax = softmax(x, -1);
        output ln = layer_norm(x, 0.00001, w, b);
        output rms = rms_norm(x, 0.000001, w);
        output gelu = gelu_tanh(x);
        output silu = silu(x);
    }
}
"#;
    let g = lower(src, &[("x", &[3, 5]), ("w", &[5]), ("b", &[5])], &[]);
    let (x, w, b) = (random(&[3, 5], 1), random(&[5], 2), random(&[5], 3));
    let out = run(&g, &[("x", &x), ("w", &w), ("b", &b)]);
    let mut softmax = Vec::new();
    let mut ln = Vec::new();
    let mut rms = Vec::new();
    for r in rows(&x) {
        let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = r.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        softmax.extend(e.iter().map(|v| v / s));
        let mean = r.iter().sum::<f64>() / 5.0;
        let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 5.0;
        ln.extend(
            r.iter()
                .enumerate()
                .map(|(j, v)| (v - mean) / (var + 1e-5).sqrt() * w.data[j] + b.data[j]),
        );
        let ms = r.iter().map(|v| v * v).sum::<f64>() / 5.0;
        rms.extend(
            r.iter()
                .enumerate()
                .map(|(j, v)| v / (ms + 1e-6).sqrt() * w.data[j]),
        );
    }
    let gelu: Vec<f64> = x
        .data
        .iter()
        .map(|v| 0.5 * v * (1.0 + (0.7978845608028654 * (v + 0.044715 * v * v * v)).tanh()))
        .collect();
    let silu: Vec<f64> = x.data.iter().map(|v| v / (1.0 + (-v).exp())).collect();
    assert_close(&out["softmax"], &softmax, "softmax");
    assert_close(&out["ln"], &ln, "layer_norm");
    assert_close(&out["rms"], &rms, "rms_norm");
    assert_close(&out["gelu"], &gelu, "gelu_tanh");
    assert_close(&out["silu"], &silu, "silu");
}

#[test]
fn linear_accepts_any_rank() {
    let src = r#"
module M() {
    fn forward(x4: f32[2, 3, 2, 5], x1: f32[5], w: f32[6, 5], b: f32[6]) {
        output y4 = linear(x4, w, b);
        output y1 = linear(x1, w);
    }
}
"#;
    let g = lower(
        src,
        &[
            ("x4", &[2, 3, 2, 5]),
            ("x1", &[5]),
            ("w", &[6, 5]),
            ("b", &[6]),
        ],
        &[],
    );
    assert_eq!(
        g.ty(g.output("y4").unwrap()).shape.as_slice(),
        &[2, 3, 2, 6]
    );
    assert_eq!(g.ty(g.output("y1").unwrap()).shape.as_slice(), &[6]);
    for n in &g.nodes {
        if let Op::MatMul { transpose_b, .. } = n.op {
            assert!(transpose_b && g.ty(n.args[1]).rank() == 2 && g.ty(n.args[0]).rank() <= 3);
        }
    }
    let (x4, x1, w, b) = (
        random(&[2, 3, 2, 5], 4),
        random(&[5], 5),
        random(&[6, 5], 6),
        random(&[6], 7),
    );
    let out = run(&g, &[("x4", &x4), ("x1", &x1), ("w", &w), ("b", &b)]);
    let lin = |x: &[f64], bias: bool| -> Vec<f64> {
        (0..6)
            .map(|o| {
                (0..5).map(|k| x[k] * w.data[o * 5 + k]).sum::<f64>()
                    + if bias { b.data[o] } else { 0.0 }
            })
            .collect()
    };
    let want4: Vec<f64> = x4.data.chunks(5).flat_map(|r| lin(r, true)).collect();
    assert_close(&out["y4"], &want4, "linear rank 4");
    assert_close(&out["y1"], &lin(&x1.data, false), "linear rank 1");
}

#[test]
fn shape_builtins() {
    let src = r#"
module M() {
    fn forward(x: f32[2, 5]) {
        let (a, b) = chunk(x, 2, -1);
        output a = a;
        output b = b;
        output tail = slice(x, 1, -2, 100);
        output cat = concat([b, a], 1);
        output t = transpose(x, [1, 0]);
        output sw = swapaxes(unsqueeze(x, 0), 0, -1);
        output sq = squeeze(unsqueeze(x, 1), 1);
        output fl = flatten(reshape(x, [2, 5, 1]), 1, 2);
        output bc = broadcast_to(x, [3, 2, 5]);
        output m = mean(x, -1, keepdim = true);
        output mx = max(x, [0, 1]);
        output w = where(x > 0, x, 0);
        output io = iota([2, 3], 1, f32) + arange(3, f32);
        output g = gather(x, cast(arange(2) + 1, i32), 1);
        output p = pow(maximum(x, 0.5), 2) - minimum(x, 0);
        output fd = cast(cast(x * 3, i32) ~/ 2, f32);
    }
}
"#;
    let g = lower(src, &[("x", &[2, 5])], &[]);
    let x = random(&[2, 5], 8);
    let out = run(&g, &[("x", &x)]);
    let at = |i: usize, j: usize| x.data[i * 5 + j];
    let sh = |n: &str| out[n].shape().to_vec();
    assert_eq!((sh("a"), sh("b")), (vec![2, 3], vec![2, 2]));
    assert_close(
        &out["tail"],
        &[at(0, 3), at(0, 4), at(1, 3), at(1, 4)],
        "slice",
    );
    assert_close(
        &out["cat"],
        &[
            at(0, 3),
            at(0, 4),
            at(0, 0),
            at(0, 1),
            at(0, 2),
            at(1, 3),
            at(1, 4),
            at(1, 0),
            at(1, 1),
            at(1, 2),
        ],
        "concat",
    );
    assert_close(
        &out["t"],
        &(0..10).map(|k| at(k % 2, k / 2)).collect::<Vec<_>>(),
        "transpose",
    );
    assert_eq!(sh("sw"), vec![5, 2, 1]);
    assert_close(&out["sq"], &x.data, "squeeze");
    assert_close(&out["fl"], &x.data, "flatten");
    assert_eq!(sh("bc"), vec![3, 2, 5]);
    let mean: Vec<f64> = rows(&x)
        .iter()
        .map(|r| r.iter().sum::<f64>() / 5.0)
        .collect();
    assert_close(&out["m"], &mean, "mean");
    assert_eq!(sh("m"), vec![2, 1]);
    assert_close(
        &out["mx"],
        &[x.data.iter().cloned().fold(f64::NEG_INFINITY, f64::max)],
        "max",
    );
    assert_close(
        &out["w"],
        &x.data.iter().map(|v| v.max(0.0)).collect::<Vec<_>>(),
        "where",
    );
    assert_close(&out["io"], &[0.0, 2.0, 4.0, 0.0, 2.0, 4.0], "iota");
    assert_close(
        &out["g"],
        &[at(0, 1), at(0, 2), at(1, 1), at(1, 2)],
        "gather",
    );
    let p: Vec<f64> = x
        .data
        .iter()
        .map(|v| v.max(0.5).powi(2) - v.min(0.0))
        .collect();
    assert_close(&out["p"], &p, "pow/maximum/minimum");
    let fd: Vec<f64> = x
        .data
        .iter()
        .map(|v| ((v * 3.0).trunc() / 2.0).floor())
        .collect();
    assert_close(&out["fd"], &fd, "floor division");
}

#[test]
fn compile_time_evaluation() {
    let src = r#"
const base = config.dim * 2 + 1;
fn pair(a, b = a + 1) { (a, b) }
fn sum_to(n) {
    let acc = 0;
    for i in range(n) { acc = acc + i; }
    acc
}
module M(k = 3) {
    let doubled = [k, k * 2];
    fn forward(x: f32[N], img_shapes) {
        assert(base == 9, "const from config");
        assert(7 ~/ 2 == 3 && -7 ~/ 2 == -4 && -7 % 3 == 2 && 7 % -3 == -2, "floor division");
        assert(7 / 2 == 3.5 && 1 + 2 * 3 == 7 && (1 + 2) * 3 == 9, "arithmetic");
        assert(!false && true || false, "bools");
        assert([1, 2] + [3] == [1, 2, 3] && len(0..5) == 5 && (0..10)[-1] == 9, "lists");
        assert([[1, 2], [3, 4]][1][0] == 3 && [1, 2, 3, 4][1..-1] == [2, 3], "indexing");
        assert(max(3, 4) == 4 && min(2.5, 1) == 1 && sum([1, 2, 3]) == 6, "min/max/sum");
        assert(int(3.7) == 3 && float(2) == 2.0 && sqrt(16) == 4.0, "conversions");
        assert((config.missing ?? 5) == 5 && (config.dim ?? 0) == 4, "coalesce");
        assert(sum_to(5) == 10, "loops");
        let (a, b) = pair(4);
        assert(a == 4 && b == 5, "defaults see earlier params");
        assert(doubled == [3, 6], "module lets");
        assert(shape(x) == [N] && rank(x) == 1 && dim(x, -1) == N, "shapes");
        assert(is_none(none) && !is_none(0) && none == none, "none");
        let total = 0;
        for (i, s) in enumerate(img_shapes) {
            total = total + s[0] * s[1] * s[2];
        }
        assert(total == N, "statics");
        let v = if N > 40 { "big" } else if N > 10 { "medium" } else { "small" };
        assert(v == "big", "if expression");
        output y = x;
    }
}
"#;
    let shapes = StaticValue::List(vec![
        StaticValue::List(vec![
            StaticValue::Int(1),
            StaticValue::Int(4),
            StaticValue::Int(6),
        ]),
        StaticValue::List(vec![
            StaticValue::Int(1),
            StaticValue::Int(6),
            StaticValue::Int(4),
        ]),
    ]);
    let g = lower(src, &[("x", &[48])], &[("img_shapes", shapes)]);
    // Nothing but the input: compile-time code emits no nodes.
    assert_eq!(g.len(), 1);
}

#[test]
fn attention_and_constants() {
    let src = r#"
module M() {
    fn forward(q: f32[1, 3, 2, 4], m: f32[1, 3]) {
        output a = attention(q, q, q, mask = m > 0.0);
        output s = attention(q, q, q, scale = 0.25);
        output c = q * 2 + 2;
    }
}
"#;
    let g = lower(src, &[("q", &[1, 3, 2, 4]), ("m", &[1, 3])], &[]);
    let scales: Vec<f64> = g
        .nodes
        .iter()
        .filter_map(|n| {
            if let Op::Attention { scale } = n.op {
                Some(scale)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(scales, [0.5, 0.25]);
    // `2` appears once as a constant (cached) even though it is used twice.
    let twos = g
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Constant { value, .. } if value == 2.0))
        .count();
    assert_eq!(twos, 1);
}
