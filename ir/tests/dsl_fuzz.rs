//! Random mutations of a valid source (deleted, inserted and replaced characters) must give either a
//! graph or a `DslError`, never a panic.

use proptest::prelude::*;
use qie_ir::dsl::{Program, StaticValue};
use qie_ir::{DType, TensorType};
use serde_json::json;

const SOURCE: &str = r#"
const hidden = config.dim * 2;
fn act(x) { gelu_tanh(x) }
fn split(x) {
    let n = dim(x, -1) ~/ 2;
    (slice(x, -1, 0, n), slice(x, -1, n, 2 * n))
}
module Block(dim, gate = false) {
    sub norm = LayerNorm(dim, 1e-6, elementwise_affine = false);
    sub fc1 = Linear(dim, hidden) @ "ff.0";
    sub fc2 = Linear(hidden, dim, bias = false) @ "ff.2";
    param scale[dim] if gate;
    fn forward(x) {
        let h = fc2(act(fc1(norm(x))));
        let h = if is_none(scale) { h } else { h * scale };
        x + h
    }
}
module Model() {
    sub layers = 2 x Linear(config.dim, config.dim);
    sub blocks = config.n x Block(config.dim, gate = true);
    sub head = Linear(config.dim, 4);
    fn forward(x: f32[B, S, config.dim], m: bool[B, S] = none, scales) {
        for l in layers { x = silu(l(x)); }
        for (i, b) in enumerate(blocks) { x = b(x); }
        for s in scales { x = x * s; }
        let q = reshape(x, [B, S, 2, -1]);
        let a = attention(q, q, q, mask = m);
        let (u, v) = split(head(reshape(a, [B, S, -1])));
        let w = where(u > 0.0, u, v * 0.5);
        output y = softmax(w, -1) + max(v, -1, keepdim = true);
        output z = mean(concat([u, v], 0), [0, 1]);
    }
}
"#;

const ALPHABET: &[u8] = b"(){}[];,.=+-*/<>!?&|\"x0123456789 \nabcdefz_@:";

fn lower(src: &str) {
    let read = |n: &str| (n == "m.qie").then(|| src.to_string());
    let Ok(prog) = Program::from_sources("m.qie", &read) else {
        return;
    };
    let _ = prog.signature();
    let inputs = [
        ("x".to_string(), TensorType::new(DType::F32, &[2, 3, 8])),
        ("m".to_string(), TensorType::new(DType::Bool, &[2, 3])),
    ];
    let statics = [(
        "scales".to_string(),
        StaticValue::List(vec![StaticValue::Float(0.5)]),
    )];
    let _ = prog.lower(&json!({"dim": 8, "n": 2}), &inputs, &statics);
}

#[derive(Clone, Debug)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, u8),
    Replace(usize, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    let n = SOURCE.len();
    prop_oneof![
        (0..n, 1usize..4).prop_map(|(i, k)| Edit::Delete(i, k)),
        (0..n, 0..ALPHABET.len()).prop_map(|(i, c)| Edit::Insert(i, ALPHABET[c])),
        (0..n, 0..ALPHABET.len()).prop_map(|(i, c)| Edit::Replace(i, ALPHABET[c])),
    ]
}

fn apply(edits: &[Edit]) -> String {
    let mut b = SOURCE.as_bytes().to_vec();
    for e in edits {
        match *e {
            Edit::Delete(i, k) if i < b.len() => {
                let end = (i + k).min(b.len());
                b.drain(i..end);
            }
            Edit::Insert(i, c) => b.insert(i.min(b.len()), c),
            Edit::Replace(i, c) if i < b.len() => b[i] = c,
            _ => {}
        }
    }
    String::from_utf8(b).expect("the source and the alphabet are ASCII")
}

#[test]
fn unmutated_source_lowers() {
    let read = |n: &str| (n == "m.qie").then(|| SOURCE.to_string());
    let prog = Program::from_sources("m.qie", &read).unwrap_or_else(|e| panic!("{e}"));
    let inputs = [("x".to_string(), TensorType::new(DType::F32, &[2, 3, 8]))];
    let statics = [(
        "scales".to_string(),
        StaticValue::List(vec![StaticValue::Float(0.5)]),
    )];
    let g = prog
        .lower(&json!({"dim": 8, "n": 2}), &inputs, &statics)
        .unwrap_or_else(|e| panic!("{e}"));
    qie_ir::verify(&g).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.ty(g.output("y").unwrap()).shape.as_slice(), &[2, 3, 2]);
    assert_eq!(g.ty(g.output("z").unwrap()).shape.as_slice(), &[2]);
    lower(SOURCE);
}

proptest! {
    // DSL_FUZZ_CASES=20000 for a longer run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("DSL_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(400),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutations_never_panic(edits in proptest::collection::vec(edit(), 1..4)) {
        lower(&apply(&edits));
    }
}
