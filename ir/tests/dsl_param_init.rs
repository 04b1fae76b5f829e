//! `param w[dims] = INIT;`: initialisers reach the graph's side table, survive every pass that
//! rebuilds a graph, and bad initialisers are one clear error.

use qie_ir::dsl::Program;
use qie_ir::passes::{cse, dce, grad, optimize, simplify, Seeds, Trainable};
use qie_ir::{DType, Graph, ParamInit, TensorType};
use serde_json::json;

fn program(src: &str) -> Result<Program, String> {
    let read = |n: &str| (n == "t.qie").then(|| src.to_string());
    Program::from_sources("t.qie", &read).map_err(|e| e.to_string())
}

fn lower(src: &str, config: serde_json::Value) -> Result<Graph, String> {
    let x = ("x".to_string(), TensorType::new(DType::F32, &[2, 4]));
    program(src)?
        .lower(&config, &[x], &[])
        .map_err(|e| e.to_string())
}

const MODEL: &str = r#"
module Adapter(dim, rank) {
    param down[rank, dim] = kaiming_uniform(sqrt(5.0));
    param up[dim, rank] = zeros;
    param gate: f32[dim] = ones if config.gated ?? false;
    param scale[1] = uniform(lo = -0.5, hi = 0.5);
    param embed[3, dim] = normal(config.std ?? 0.02);
    param plain[dim];
    fn forward(x) {
        let h = linear(linear(x, down, none), up, none) * scale + plain;
        let h = if is_none(gate) { h } else { h * gate };
        h + sum(embed, 0)
    }
}
module Model() {
    sub adapter = Adapter(4, 2) @ "blocks.0.lora";
    fn forward(x: f32[B, 4]) { output y = adapter(x); }
}
"#;

#[test]
fn initialisers_are_recorded_by_checkpoint_name() {
    let g = lower(MODEL, json!({})).unwrap();
    let p = "blocks.0.lora";
    let a = 5f64.sqrt();
    assert_eq!(
        g.param_init(&format!("{p}.down")),
        Some(&ParamInit::KaimingUniform { a })
    );
    assert_eq!(g.param_init(&format!("{p}.up")), Some(&ParamInit::Zeros));
    assert_eq!(
        g.param_init(&format!("{p}.scale")),
        Some(&ParamInit::Uniform { lo: -0.5, hi: 0.5 })
    );
    assert_eq!(
        g.param_init(&format!("{p}.embed")),
        Some(&ParamInit::Normal { std: 0.02 })
    );
    assert_eq!(g.param_init(&format!("{p}.plain")), None);
    // A conditional param that is absent records nothing; present, it records its initialiser.
    assert_eq!(g.param_init(&format!("{p}.gate")), None);
    let g = lower(MODEL, json!({"gated": true, "std": 0.5})).unwrap();
    assert_eq!(g.param_init(&format!("{p}.gate")), Some(&ParamInit::Ones));
    assert_eq!(
        g.param_init(&format!("{p}.embed")),
        Some(&ParamInit::Normal { std: 0.5 })
    );
    assert_eq!(g.param_inits.len(), 5);
}

#[test]
fn initialisers_survive_the_passes() {
    let g = lower(MODEL, json!({"gated": true})).unwrap();
    let want = g.param_inits.clone();
    assert_eq!(want.len(), 5);
    for (what, h) in [
        ("optimize", optimize(&g)),
        ("cse", cse(&g)),
        ("dce", dce(&g)),
        ("simplify", simplify(&g)),
        ("clone", g.clone()),
    ] {
        assert_eq!(h.param_inits, want, "{what}");
    }
    let sum = {
        let src = MODEL.replace(
            "output y = adapter(x);",
            "output loss = sum(adapter(x), [0, 1]);",
        );
        lower(&src, json!({"gated": true})).unwrap()
    };
    let back = grad(&sum, &Seeds::Loss("loss".into()), &Trainable::AllParams).unwrap();
    assert_eq!(back.param_inits, want, "grad");
    assert_eq!(optimize(&back).param_inits, want, "grad + optimize");
}

fn lower_err(param: &str) -> String {
    let src = format!("module Model() {{ {param} fn forward(x: f32[B, 4]) {{ output y = x; }} }}");
    lower(&src, json!({})).expect_err(param)
}

#[test]
fn bad_initialisers_are_clear_errors() {
    let cases = [
        ("param w[4] = xavier;", "unknown parameter initialiser"),
        ("param w[4] = xavier;", "known initialisers: zeros, ones"),
        (
            "param w[4] = normal();",
            "`normal` needs its argument `std`",
        ),
        (
            "param w[4] = normal(0.1, 2.0);",
            "`normal` takes 1 argument(s)",
        ),
        (
            "param w[4] = uniform(lo = 0.0, top = 1.0);",
            "`uniform` has no argument `top`",
        ),
        ("param w[4] = uniform(1.0, 0.0);", "`lo` must be <= `hi`"),
        ("param w[4] = normal(-1.0);", "`std` must be >= 0"),
        (
            "param w[4] = normal(\"a\");",
            "must be a finite compile-time number, got string",
        ),
        (
            "param w: i64[4] = zeros;",
            "only float params can have an initialiser",
        ),
        ("param w[4] = 3.0;", "unknown parameter initialiser"),
    ];
    for (param, want) in cases {
        let msg = lower_err(param);
        assert!(msg.contains(want), "{param}: {msg}");
        assert!(msg.contains("t.qie:1:"), "{param}: no location in {msg}");
    }
}
