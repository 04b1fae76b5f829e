//! The `adapter` namespace and the path builtins an adapter source uses: `adapter.key ?? d`
//! without an adapter, `module_path()` inside nested and repeated modules, `path_matches` with
//! peft's rule, and clear errors.

use qie_ir::dsl::Program;
use qie_ir::{DType, Graph, TensorType};
use serde_json::{json, Value};

const MODEL: &str = r#"
module Leaf(n) {
    let here = module_path();
    let hit = path_matches(here, adapter.targets ?? none);
    param w[n] if hit;
    param extra[adapter.rank ?? 1];
    fn forward(x) { if is_none(w) { x } else { x * w } }
}
module Block() {
    sub to_q = Leaf(4);
    sub to_k = Leaf(4) @ "attn.k";
    fn forward(x) { to_k(to_q(x)) }
}
module Model() {
    sub blocks = 2 x Block();
    fn forward(x: f32[4]) {
        for b in blocks { x = b(x); }
        output y = x;
    }
}
"#;

fn lower(src: &str, adapter: Option<Value>) -> Result<Graph, String> {
    let read = |n: &str| (n == "t.qie").then(|| src.to_string());
    let prog = Program::from_sources("t.qie", &read).map_err(|e| e.to_string())?;
    let x = [("x".to_string(), TensorType::new(DType::F32, &[4]))];
    match adapter {
        None => prog.lower(&json!({}), &x, &[]),
        Some(a) => prog.lower_with_adapter(&json!({}), &a, &x, &[]),
    }
    .map_err(|e| e.to_string())
}

fn names(g: &Graph) -> Vec<String> {
    let mut n: Vec<String> = g.params().iter().map(|(n, _)| n.to_string()).collect();
    n.sort();
    n
}

#[test]
fn without_an_adapter_every_lookup_is_a_missing_optional_key() {
    let g = lower(MODEL, None).unwrap();
    assert!(
        names(&g).iter().all(|n| n.ends_with(".extra")),
        "{:?}",
        names(&g)
    );
    assert_eq!(g.ty(g.params()[0].1).shape.as_slice(), &[1]);
}

#[test]
fn module_path_and_path_matches_select_modules() {
    let g = lower(
        MODEL,
        Some(json!({"rank": 3, "targets": ["0.to_q", "attn.k"]})),
    )
    .unwrap();
    let w: Vec<String> = names(&g)
        .into_iter()
        .filter(|n| n.ends_with(".w"))
        .collect();
    assert_eq!(
        w,
        ["blocks.0.attn.k.w", "blocks.0.to_q.w", "blocks.1.attn.k.w"]
    );
    let extra = g
        .params()
        .into_iter()
        .find(|(n, _)| n.ends_with("extra"))
        .unwrap();
    assert_eq!(g.ty(extra.1).shape.as_slice(), &[3]);

    let g = lower(MODEL, Some(json!({"targets": ["blocks.*.to_q"]}))).unwrap();
    let w: Vec<String> = names(&g)
        .into_iter()
        .filter(|n| n.ends_with(".w"))
        .collect();
    assert_eq!(w, ["blocks.0.to_q.w", "blocks.1.to_q.w"]);
    // One string is a list of one.
    let g = lower(MODEL, Some(json!({"targets": "to_q"}))).unwrap();
    assert_eq!(names(&g).iter().filter(|n| n.ends_with(".w")).count(), 2);
}

#[test]
fn adapter_errors_are_clear() {
    let src = MODEL.replace("adapter.targets ?? none", "adapter.targets");
    let err = lower(&src, Some(json!({"rank": 2, "target": ["x"]}))).unwrap_err();
    assert!(err.contains("missing adapter key `targets`"), "{err}");
    assert!(err.contains("did you mean `target`"), "{err}");
    assert!(err.contains("adapter.targets ?? default"), "{err}");
    let err = lower(MODEL, Some(json!({"targets": [1, 2]}))).unwrap_err();
    assert!(
        err.contains("`patterns` must be a list of strings, it holds int 1"),
        "{err}"
    );
    let src = MODEL.replace("path_matches(here,", "path_matches(3,");
    let err = lower(&src, None).unwrap_err();
    assert!(err.contains("`path` must be a string, got int 3"), "{err}");
}
