//! Lowering a small complete model: params (checkpoint names and shapes), inputs, outputs, statics,
//! repeated and optional subs, config arithmetic; and the variant mechanism (imports + overrides).

use qie_ir::dsl::{InputDecl, InputKind, Program, StaticValue};
use qie_ir::{DType, Graph, Op, TensorType};
use serde_json::json;
use std::collections::HashMap;

const MODEL: &str = r#"
// A tiny model exercising most of the language.
const hidden = config.dim * config.mult;          // config arithmetic

fn act(x) { gelu_tanh(x) }

// Returns a tuple.
fn split_half(x) {
    let n = dim(x, -1) ~/ 2;
    (slice(x, -1, 0, n), slice(x, -1, n, 2 * n))
}

module Block(dim, use_scale = false) {
    sub norm = LayerNorm(dim, 1e-6, elementwise_affine = false);
    sub fc1 = Linear(dim, hidden) @ "ff.0";
    sub fc2 = Linear(hidden, dim, bias = false) @ "ff.2";
    param scale[dim] if use_scale;               // optional param
    fn forward(x) {
        let h = fc2(act(fc1(norm(x))));
        let h = if is_none(scale) { h } else { h * scale };
        x + h
    }
}

module Mlp() {
    sub layers = 2 x Linear(config.dim, config.dim);
    sub blocks = config.num_blocks x Block(config.dim, use_scale = true);
    sub head = Linear(config.dim, 2 * config.out_dim);
    param gate[config.dim] if config.use_gate ?? false;
    sub extra = RMSNorm(config.dim) if config.use_extra ?? false;

    fn forward(x: f32[B, S, config.dim], bias: f32[B, S, config.dim] = none, scales) {
        for l in layers {
            x = silu(l(x));
        }
        if !is_none(bias) {
            x = x + bias;
        }
        for (i, blk) in enumerate(blocks) {
            assert(i < len(blocks), "enumerate index");
            x = blk(x);
        }
        for s in scales {
            x = x * s;
        }
        let (a, b) = split_half(head(x));
        output a = a;
        output b = softmax(b, axis = -1);
    }
}
"#;

fn config() -> serde_json::Value {
    json!({"dim": 8, "mult": 2, "num_blocks": 3, "out_dim": 3})
}

fn resolver(files: Vec<(&'static str, &'static str)>) -> impl Fn(&str) -> Option<String> {
    move |name: &str| {
        files
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t.to_string())
    }
}

fn load(files: Vec<(&'static str, &'static str)>, root: &str) -> Program {
    let read = resolver(files);
    Program::from_sources(root, &read).unwrap_or_else(|e| panic!("{e}"))
}

fn f32t(dims: &[usize]) -> TensorType {
    TensorType::new(DType::F32, dims)
}

fn lower_mlp(prog: &Program, with_bias: bool) -> Graph {
    let mut inputs = vec![("x".to_string(), f32t(&[2, 5, 8]))];
    if with_bias {
        inputs.push(("bias".to_string(), f32t(&[2, 5, 8])));
    }
    let statics = vec![(
        "scales".to_string(),
        StaticValue::List(vec![StaticValue::Float(0.5), StaticValue::Int(3)]),
    )];
    prog.lower(&config(), &inputs, &statics)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn params(g: &Graph) -> Vec<(String, Vec<usize>)> {
    g.params()
        .into_iter()
        .map(|(n, id)| (n.to_string(), g.ty(id).shape.to_vec()))
        .collect()
}

#[test]
fn lowers_small_model() {
    let prog = load(vec![("mlp.qie", MODEL)], "mlp.qie");
    assert_eq!(prog.entry(), "Mlp");
    let g = lower_mlp(&prog, false);
    qie_ir::verify(&g).unwrap_or_else(|e| panic!("{e}"));

    let mut expected: Vec<(String, Vec<usize>)> = vec![
        ("layers.0.weight".into(), vec![8, 8]),
        ("layers.0.bias".into(), vec![8]),
        ("layers.1.weight".into(), vec![8, 8]),
        ("layers.1.bias".into(), vec![8]),
    ];
    for i in 0..3 {
        expected.push((format!("blocks.{i}.ff.0.weight"), vec![16, 8]));
        expected.push((format!("blocks.{i}.ff.0.bias"), vec![16]));
        expected.push((format!("blocks.{i}.ff.2.weight"), vec![8, 16]));
        expected.push((format!("blocks.{i}.scale"), vec![8]));
    }
    expected.push(("head.weight".into(), vec![6, 8]));
    expected.push(("head.bias".into(), vec![6]));
    assert_eq!(params(&g), expected);
    assert!(g
        .params()
        .iter()
        .all(|(_, id)| g.ty(*id).dtype == DType::F32));

    let inputs: Vec<(String, TensorType)> = g
        .inputs()
        .into_iter()
        .map(|(n, id)| (n.to_string(), g.ty(id).clone()))
        .collect();
    assert_eq!(inputs, vec![("x".to_string(), f32t(&[2, 5, 8]))]);

    let outs: Vec<(&str, TensorType)> = g
        .outputs
        .iter()
        .map(|(n, id)| (n.as_str(), g.ty(*id).clone()))
        .collect();
    assert_eq!(outs, vec![("a", f32t(&[2, 5, 3])), ("b", f32t(&[2, 5, 3]))]);

    // Origins point back to the source with the module path.
    let fc1 = g
        .nodes
        .iter()
        .find(|n| {
            matches!(n.op, Op::MatMul { .. })
                && n.origin
                    .as_deref()
                    .is_some_and(|o| o.contains("blocks.1.ff.0"))
        })
        .expect("a matmul from blocks.1.ff.0");
    let origin = fc1.origin.as_deref().unwrap();
    assert_eq!(origin, "mlp.qie:19:25 blocks.1.ff.0");
    // The static `scales` loop unrolled into two multiplies by constants 0.5 and 3.
    let consts: Vec<f64> = g
        .nodes
        .iter()
        .filter_map(|n| {
            if let Op::Constant { value, .. } = n.op {
                Some(value)
            } else {
                None
            }
        })
        .collect();
    assert!(consts.contains(&0.5) && consts.contains(&3.0), "{consts:?}");
}

#[test]
fn optional_input_and_config_flags() {
    let prog = load(vec![("mlp.qie", MODEL)], "mlp.qie");
    let without = lower_mlp(&prog, false);
    let with = lower_mlp(&prog, true);
    assert_eq!(with.inputs().len(), 2);
    assert_eq!(with.len(), without.len() + 2, "one input node and one add");

    let mut cfg = config();
    cfg["use_gate"] = json!(true);
    cfg["use_extra"] = json!(true);
    cfg["num_blocks"] = json!(1);
    let statics = vec![("scales".to_string(), StaticValue::List(vec![]))];
    let g = prog
        .lower(&cfg, &[("x".into(), f32t(&[1, 2, 8]))], &statics)
        .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = params(&g).into_iter().map(|(n, _)| n).collect();
    assert!(
        names.contains(&"gate".to_string()) && names.contains(&"extra.weight".to_string()),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.starts_with("blocks.1")));
}

#[test]
fn signature_lists_inputs_and_statics() {
    let prog = load(vec![("mlp.qie", MODEL)], "mlp.qie");
    let sig = prog.signature().unwrap();
    assert_eq!(
        sig,
        vec![
            InputDecl {
                name: "x".into(),
                kind: InputKind::Tensor {
                    dtype: DType::F32,
                    dims: vec!["B".into(), "S".into(), "config.dim".into()],
                    optional: false
                }
            },
            InputDecl {
                name: "bias".into(),
                kind: InputKind::Tensor {
                    dtype: DType::F32,
                    dims: vec!["B".into(), "S".into(), "config.dim".into()],
                    optional: true
                }
            },
            InputDecl {
                name: "scales".into(),
                kind: InputKind::Static
            },
        ]
    );
}

// ---- numerics: evaluate the lowered graph and compare with a hand computation --------------------

const TWO_LAYER: &str = r#"
module TwoLayer(d_in, d_hidden, d_out) {
    sub layers = 1 x Linear(d_in, d_hidden);
    sub out = Linear(d_hidden, d_out, bias = false);
    fn forward(x) { out(silu(layers[0](x))) }
}
module Main() {
    sub net = TwoLayer(3, 4, 2) @ "";
    fn forward(x: f32[N, 3]) { output y = net(x); }
}
"#;

fn tensor(dims: &[usize], seed: u64) -> qie_ir::eval::Tensor {
    let n: usize = dims.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    qie_ir::eval::Tensor::new(f32t(dims), data)
}

#[test]
fn two_layer_mlp_matches_hand_computation() {
    let prog = load(vec![("two.qie", TWO_LAYER)], "two.qie");
    assert_eq!(prog.entry(), "Main");
    let g = prog
        .lower(&json!({}), &[("x".into(), f32t(&[5, 3]))], &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = params(&g).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["layers.0.weight", "layers.0.bias", "out.weight"]);

    let x = tensor(&[5, 3], 1);
    let weights: HashMap<String, qie_ir::eval::Tensor> = [
        ("layers.0.weight", tensor(&[4, 3], 2)),
        ("layers.0.bias", tensor(&[4], 3)),
        ("out.weight", tensor(&[2, 4], 4)),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_string(), t))
    .collect();
    let inputs: HashMap<String, qie_ir::eval::Tensor> =
        [("x".to_string(), x.clone())].into_iter().collect();
    let out = qie_ir::eval::eval(&g, &inputs, &|n: &str| weights.get(n).cloned())
        .unwrap_or_else(|e| panic!("{e}"));
    let y = &out["y"];
    assert_eq!(y.shape(), &[5, 2]);

    let (w1, b1, w2) = (
        &weights["layers.0.weight"],
        &weights["layers.0.bias"],
        &weights["out.weight"],
    );
    for n in 0..5 {
        let h: Vec<f64> = (0..4)
            .map(|j| {
                let z = (0..3)
                    .map(|k| x.get(&[n, k]) * w1.get(&[j, k]))
                    .sum::<f64>()
                    + b1.get(&[j]);
                z / (1.0 + (-z).exp())
            })
            .collect();
        for o in 0..2 {
            let want: f64 = (0..4).map(|j| h[j] * w2.get(&[o, j])).sum();
            let got = y.get(&[n, o]);
            assert!((got - want).abs() < 1e-9, "y[{n},{o}] = {got}, want {want}");
        }
    }
}

// ---- the variant mechanism ----------------------------------------------------------------------

const BASE: &str = r#"
fn positions(n) { arange(n) }
fn mix(a, b) { a + b }
module Proj(d) {
    sub lin = Linear(d, d);
    fn forward(x) { lin(x) }
}
module Base() {
    sub proj = Proj(4);
    fn forward(x: f32[2, 4]) {
        output y = mix(proj(x), x);
        output p = positions(3);
    }
}
entry Base;
"#;

const VARIANT_FN: &str = r#"
import "base.qie";
// Late binding: Base.forward now calls this `mix`.
override fn mix(a, b) { a * b }
"#;

const VARIANT_MODULE: &str = r#"
import "base.qie";
override module Proj(d) {
    sub lin = Linear(d, d, bias = false);
    param gain[d];
    fn forward(x) { lin(x) * gain }
}
"#;

fn count(g: &Graph, pred: impl Fn(&Op) -> bool) -> usize {
    g.nodes.iter().filter(|n| pred(&n.op)).count()
}

fn lower_base(prog: &Program) -> Graph {
    prog.lower(&json!({}), &[("x".into(), f32t(&[2, 4]))], &[])
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn override_fn_changes_imported_callers() {
    let files = vec![("base.qie", BASE), ("variant.qie", VARIANT_FN)];
    let base = lower_base(&load(files.clone(), "base.qie"));
    let variant = lower_base(&load(files, "variant.qie"));
    let is = |b: qie_ir::BinaryOp| move |op: &Op| *op == Op::Binary(b);
    // Base: the linear's bias add and mix's add; variant: mix multiplies instead.
    assert_eq!(count(&base, is(qie_ir::BinaryOp::Add)), 2);
    assert_eq!(count(&base, is(qie_ir::BinaryOp::Mul)), 0);
    assert_eq!(count(&variant, is(qie_ir::BinaryOp::Add)), 1);
    assert_eq!(count(&variant, is(qie_ir::BinaryOp::Mul)), 1);
    // The entry comes from the import when the root declares none.
    assert_eq!(
        load(
            vec![("base.qie", BASE), ("variant.qie", VARIANT_FN)],
            "variant.qie"
        )
        .entry(),
        "Base"
    );
}

#[test]
fn override_module_changes_params() {
    let files = vec![
        ("base.qie", BASE),
        ("models/variant.qie", VARIANT_MODULE),
        ("models/base.qie", BASE),
    ];
    let g = lower_base(&load(files, "models/variant.qie"));
    let names: Vec<String> = params(&g).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["proj.lin.weight", "proj.gain"]);
}

#[test]
fn imports_resolve_relative_to_importer() {
    // `import "base.qie"` from models/variant.qie finds models/base.qie when the host has no
    // top-level base.qie.
    let files = vec![
        ("models/variant.qie", VARIANT_FN),
        ("models/base.qie", BASE),
    ];
    let prog = load(files, "models/variant.qie");
    let names: Vec<&str> = prog.files().iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["std.qie", "models/variant.qie", "models/base.qie"]);
}

#[test]
fn program_load_reads_from_disk() {
    let dir = std::env::temp_dir().join(format!("qie_dsl_test_{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/base.qie"), BASE).unwrap();
    std::fs::write(dir.join("sub/variant.qie"), VARIANT_FN).unwrap();
    let prog = Program::load(&dir.join("sub/variant.qie")).unwrap_or_else(|e| panic!("{e}"));
    let g = lower_base(&prog);
    assert_eq!(count(&g, |op| *op == Op::Binary(qie_ir::BinaryOp::Mul)), 1);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn redefinition_without_override_is_an_error() {
    let src = "import \"base.qie\";\nfn mix(a, b) { a - b }\n";
    let read = resolver(vec![("base.qie", BASE), ("bad.qie", src)]);
    let e = Program::from_sources("bad.qie", &read).unwrap_err();
    let text = e.to_string();
    assert_eq!(
        (e.file.as_str(), e.line, e.col),
        ("bad.qie", 2, 4),
        "{text}"
    );
    assert!(
        text.contains("`mix` is already defined at base.qie:3:4"),
        "{text}"
    );
    assert!(text.contains("override fn mix"), "{text}");
}

#[test]
fn override_of_unknown_item_is_an_error() {
    let src = "import \"base.qie\";\noverride fn mixx(a, b) { a - b }\n";
    let read = resolver(vec![("base.qie", BASE), ("bad.qie", src)]);
    let e = Program::from_sources("bad.qie", &read).unwrap_err();
    let text = e.to_string();
    assert_eq!((e.line, e.col), (2, 13), "{text}");
    assert!(text.contains("`override` of unknown item `mixx`"), "{text}");
    assert!(text.contains("did you mean `mix`?"), "{text}");
}

#[test]
fn override_must_keep_the_kind() {
    let src = "import \"base.qie\";\noverride module mix() { fn forward(x) { x } }\n";
    let read = resolver(vec![("base.qie", BASE), ("bad.qie", src)]);
    let e = Program::from_sources("bad.qie", &read).unwrap_err();
    assert!(e.message.contains("replaces a fn"), "{e}");
}

#[test]
fn prelude_items_can_be_overridden() {
    let src = r#"
override fn silu(x) { x * 2 }
module M() { fn forward(x: f32[3]) { output y = silu(x); } }
"#;
    let g = load(vec![("m.qie", src)], "m.qie");
    let g = g
        .lower(&json!({}), &[("x".into(), f32t(&[3]))], &[])
        .unwrap();
    assert_eq!(
        count(&g, |op| matches!(op, Op::Unary(qie_ir::UnaryOp::Sigmoid))),
        0
    );
    assert_eq!(count(&g, |op| *op == Op::Binary(qie_ir::BinaryOp::Mul)), 1);
}

#[test]
fn methods_members_and_function_values() {
    let src = r#"
fn apply(f, x) { f(x) }
module Enc(d) {
    param ids: i64[4];
    sub proj = Linear(d, d);
    fn encode(x, scale = 1.0) { proj(x) * scale }
    fn forward(x) { encode(x, scale = 2.0) }
}
module M() {
    sub enc = Enc(3);
    sub blocks = 2 x Enc(3);
    fn forward(x: f32[2, 3]) {
        let y = enc.encode(x) + enc(x) + blocks[len(blocks) - 1](x);
        output y = apply(silu, y) + enc.proj.bias;
        output ids = enc.ids;
    }
}
"#;
    let prog = load(vec![("m.qie", src)], "m.qie");
    let g = prog
        .lower(&json!({}), &[("x".into(), f32t(&[2, 3]))], &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let ids = g.output("ids").unwrap();
    assert_eq!(g.ty(ids), &TensorType::new(DType::I64, &[4]));
    assert!(matches!(&g.node(ids).op, Op::Param { name, .. } if name == "enc.ids"));
    assert_eq!(g.ty(g.output("y").unwrap()), &f32t(&[2, 3]));
    assert_eq!(
        count(&g, |op| matches!(op, Op::Unary(qie_ir::UnaryOp::Sigmoid))),
        1
    );
    assert_eq!(count(&g, |op| matches!(op, Op::MatMul { .. })), 3);
    assert!(params(&g).iter().any(|(n, _)| n == "blocks.1.proj.weight"));
}

#[test]
fn program_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Program>();
    check::<qie_ir::dsl::DslError>();
}
