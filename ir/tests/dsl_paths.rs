//! Computed checkpoint paths: `sub x = M(..) @ "blocks.{k + 1}"` interpolates ints and strings,
//! `{{` / `}}` are braces, and bad interpolations are errors at their place in the file.

use qie_ir::dsl::Program;
use qie_ir::{DType, TensorType};
use serde_json::json;

fn lower(src: &str) -> Result<Vec<String>, String> {
    let read = |n: &str| (n == "t.qie").then(|| src.to_string());
    let prog = Program::from_sources("t.qie", &read).map_err(|e| e.to_string())?;
    let x = [("x".to_string(), TensorType::new(DType::F32, &[4]))];
    let g = prog
        .lower(&json!({"first": 2}), &x, &[])
        .map_err(|e| e.to_string())?;
    Ok(g.params().iter().map(|(n, _)| n.to_string()).collect())
}

fn model(path: &str) -> String {
    format!(
        r#"
module Leaf() {{ param w[4]; fn forward(x) {{ x * w }} }}
module Chain(list, k, count) {{
    sub head = Leaf() @ "{path}";
    sub rest = Chain(list, k + 1, count - 1) @ "" if count > 1;
    fn forward(x) {{ if is_none(rest) {{ head(x) }} else {{ rest(head(x)) }} }}
}}
module Model() {{
    sub chain = Chain("down_blocks", config.first, 3) @ "";
    fn forward(x: f32[4]) {{ output y = chain(x); }}
}}
"#
    )
}

#[test]
fn interpolated_paths_compute_flat_indices() {
    assert_eq!(
        lower(&model("{list}.{k}")).unwrap(),
        ["down_blocks.2.w", "down_blocks.3.w", "down_blocks.4.w"]
    );
    assert_eq!(
        lower(&model("b{{{k * 10}}}")).unwrap(),
        ["b{20}.w", "b{30}.w", "b{40}.w"]
    );
}

#[test]
fn bad_interpolations_are_errors_in_place() {
    let cases = [
        ("{k", "unclosed `{` in the path"),
        ("k}", "unmatched `}` in the path"),
        ("{}", "empty `{}` in the path"),
        ("{k +}", "`k +` in the path is not an expression"),
        (
            "{k * 0.5}",
            "a path interpolation must be an int or a string, got float",
        ),
        ("{nope}", "unknown name `nope`"),
    ];
    for (path, want) in cases {
        let e = lower(&model(path)).expect_err(path);
        assert!(e.contains(want), "{path}: {e}");
        assert!(e.contains("t.qie:4:"), "{path}: not at the path: {e}");
    }
}
