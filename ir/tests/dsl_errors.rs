//! DSL error messages: position, caret, message content and notes.

use qie_ir::dsl::{DslError, Program, StaticValue};
use qie_ir::{DType, TensorType};
use serde_json::json;

fn program(src: &str) -> Result<Program, DslError> {
    let read = |n: &str| (n == "m.qie").then(|| src.to_string());
    Program::from_sources("m.qie", &read)
}

/// Parses and lowers `src` with f32 inputs; returns the error (panics if it succeeds).
fn lower_err(src: &str, inputs: &[(&str, &[usize])]) -> DslError {
    let inputs: Vec<(String, TensorType)> = inputs
        .iter()
        .map(|(n, d)| (n.to_string(), TensorType::new(DType::F32, d)))
        .collect();
    let cfg = json!({"num_layers": 2, "dim": 3, "heads": 4});
    match program(src).and_then(|p| p.lower(&cfg, &inputs, &[])) {
        Ok(_) => panic!("expected an error for:\n{src}"),
        Err(e) => e,
    }
}

fn at(e: &DslError) -> (usize, usize) {
    (e.line, e.col)
}

#[test]
fn syntax_error_points_after_the_missing_semicolon() {
    let src = "module M() {\n    fn forward(x: f32[2]) {\n        let y = x + 1\n        output y = y;\n    }\n}\n";
    let e = program(src).unwrap_err();
    let text = e.to_string();
    assert_eq!(at(&e), (3, 22), "{text}");
    assert!(e.message.contains("expected `;`"), "{text}");
    assert!(e.message.contains("found `output`"), "{text}");
    assert!(
        text.starts_with("m.qie:3:22: error: syntax error"),
        "{text}"
    );
    // The excerpt and a caret under column 22.
    assert!(text.contains("3 |         let y = x + 1\n"), "{text}");
    assert!(
        text.contains(&format!("  | {}^\n", " ".repeat(21))),
        "{text}"
    );
}

#[test]
fn syntax_error_in_expression() {
    let src = "module M() {\n    fn forward(x: f32[2]) {\n        let y = (x + ;\n    }\n}\n";
    let e = program(src).unwrap_err();
    assert_eq!(at(&e), (3, 22), "{e}");
    assert!(
        e.message.contains("expected an expression, found `;`"),
        "{e}"
    );
}

#[test]
fn syntax_error_misspelt_keyword() {
    let src = "module M() {\n    fnn forward(x: f32[2]) {\n        output y = x;\n    }\n}\n";
    let e = program(src).unwrap_err();
    assert_eq!(at(&e), (2, 5), "{e}");
    assert!(
        e.message.contains("found `fnn`") && e.message.contains("`fn`"),
        "{e}"
    );
    assert_eq!(e.width, 3);
}

#[test]
fn syntax_error_at_end_of_file() {
    let e = program("module M() {\n    fn forward(x: f32[2]) {\n        output y = x;\n    }\n")
        .unwrap_err();
    assert!(
        e.message.contains("expected `}`") && e.message.contains("found end of file"),
        "{e}"
    );
}

#[test]
fn floor_division_explains_comment_rule() {
    let src =
        "module M() {\n    fn forward(x: f32[2]) {\n        output y = x * 2 // double\n    }\n}\n";
    let e = program(src).unwrap_err();
    // `//` is always a comment now: the statement is cut short, and the error says so.
    assert!(
        e.to_string().contains("`//` at 3:26 starts a comment"),
        "{e}"
    );
    assert!(
        e.to_string().contains("floor division is written `~/`"),
        "{e}"
    );
    let div = "module M() {\n    fn forward(x: f32[2]) {\n        output y = x * (7 ~/ 2 + -7 ~/ 2); // 3 + -4\n    }\n}\n";
    program(div).unwrap();
    // A comment after `;` is a comment.
    let ok = "module M() {\n    fn forward(x: f32[2]) {\n        output y = x * 2; // double it\n        // whole line\n    }\n}\n";
    program(ok).unwrap();
}

#[test]
fn unknown_name_suggests_close_match() {
    let src = "module M() {\n    fn forward(x: f32[2]) {\n        output y = siluu(x);\n    }\n}\n";
    let e = lower_err(src, &[("x", &[2])]);
    assert_eq!(at(&e), (3, 20), "{e}");
    assert_eq!(e.message, "unknown name `siluu`; did you mean `silu`?");
    assert_eq!(e.width, 5);
}

#[test]
fn unknown_member_and_keyword_suggest() {
    let src = "module M() {\n    sub a = Linear(2, 3, bais = false);\n    fn forward(x: f32[2]) { output y = a(x); }\n}\n";
    let e = lower_err(src, &[("x", &[2])]);
    assert_eq!(at(&e), (2, 26), "{e}");
    assert!(
        e.message
            .contains("has no parameter `bais`; did you mean `bias`?"),
        "{e}"
    );
    let src = "module M() {\n    sub a = Linear(2, 3);\n    fn forward(x: f32[2]) { output y = x + a.wieght; }\n}\n";
    let e = lower_err(src, &[("x", &[2])]);
    assert!(
        e.message
            .contains("has no member `wieght`; did you mean `weight`?"),
        "{e}"
    );
}

#[test]
fn wrong_arity_names_function_and_definition() {
    let src = "fn f(a, b) { a + b }\nmodule M() {\n    fn forward(x: f32[2]) {\n        output y = f(x, x, x);\n    }\n}\n";
    let e = lower_err(src, &[("x", &[2])]);
    let text = e.to_string();
    assert_eq!(at(&e), (4, 20), "{text}");
    assert!(
        e.message
            .contains("fn `f` takes 2 arguments (a, b) but 3 were given"),
        "{text}"
    );
    assert!(text.contains("fn `f` is defined at m.qie:1:1"), "{text}");
    let src = "fn f(a, b) { a + b }\nmodule M() {\n    fn forward(x: f32[2]) {\n        output y = f(x);\n    }\n}\n";
    let e = lower_err(src, &[("x", &[2])]);
    assert!(
        e.message.contains("missing argument `b` in call to fn `f`"),
        "{e}"
    );
    let src =
        "module M() {\n    fn forward(x: f32[2]) {\n        output y = exp(x, x);\n    }\n}\n";
    let e = lower_err(src, &[("x", &[2])]);
    assert!(
        e.message
            .contains("builtin `exp` takes 1 argument but 2 were given"),
        "{e}"
    );
}

#[test]
fn shape_mismatch_names_both_shapes_and_line() {
    let src = "module M() {\n    fn forward(x: f32[2, 3], y: f32[4, 3]) {\n        output z = x + y;\n    }\n}\n";
    let e = lower_err(src, &[("x", &[2, 3]), ("y", &[4, 3])]);
    assert_eq!(at(&e), (3, 20), "{e}");
    assert!(
        e.message.contains("f32[2, 3]") && e.message.contains("f32[4, 3]"),
        "{e}"
    );
    assert!(e.message.contains("`+`"), "{e}");
    assert!(
        e.to_string()
            .starts_with("m.qie:3:20: error: cannot broadcast"),
        "{e}"
    );
}

#[test]
fn ir_type_errors_are_reported_at_the_user_call_site() {
    // A matmul shape error inside the prelude's `linear` points at the user's call, with the chain.
    let src = "module Block(d) {\n    sub lin = Linear(d, 4);\n    fn forward(x) { lin(x) }\n}\nmodule M() {\n    sub blocks = config.num_layers x Block(3);\n    fn forward(x: f32[2, 3]) {\n        for b in blocks { x = b(x); }\n        output z = x;\n    }\n}\n";
    let e = lower_err(src, &[("x", &[2, 3])]);
    let text = e.to_string();
    assert_eq!((e.file.as_str(), e.line, e.col), ("m.qie", 3, 21), "{text}");
    assert!(
        e.message
            .contains("matmul: inner dimensions differ: f32[2, 4] x f32[4, 3]"),
        "{text}"
    );
    assert!(
        text.contains("in `Block.forward` (blocks.1) called at m.qie:8:31"),
        "{text}"
    );
    assert!(
        text.contains("in `Linear.forward` (blocks.1.lin)"),
        "{text}"
    );
}

#[test]
fn missing_config_key() {
    let src = "module M() {\n    param w[config.num_layerz];\n    fn forward(x: f32[2]) { output z = x; }\n}\n";
    let e = lower_err(src, &[("x", &[2])]);
    assert_eq!(at(&e), (2, 20), "{e}");
    assert!(e.message.contains("missing config key `num_layerz`"), "{e}");
    assert!(e.message.contains("config.json"), "{e}");
    assert!(e.message.contains("did you mean `num_layers`?"), "{e}");
    // `??` makes it optional.
    let ok = "module M() {\n    param w[config.num_layerz ?? 5];\n    fn forward(x: f32[2]) { output z = x; }\n}\n";
    program(ok)
        .unwrap()
        .lower(
            &json!({}),
            &[("x".into(), TensorType::new(DType::F32, &[2]))],
            &[],
        )
        .unwrap();
}

#[test]
fn input_dim_mismatch_between_symbols() {
    let src = "module M() {\n    fn forward(x: f32[B, S], y: f32[B, S]) {\n        output z = x + y;\n    }\n}\n";
    let e = lower_err(src, &[("x", &[2, 7]), ("y", &[2, 9])]);
    assert_eq!(at(&e), (2, 40), "{e}");
    assert!(
        e.message
            .contains("input `y`: dim 1 is 9 but S = 7 from `x`"),
        "{e}"
    );
}

#[test]
fn input_dim_mismatch_with_config_expression() {
    let src = "module M() {\n    fn forward(x: f32[B, config.dim * 2]) {\n        output z = x;\n    }\n}\n";
    let e = lower_err(src, &[("x", &[2, 7])]);
    assert_eq!(at(&e), (2, 26), "{e}");
    assert!(
        e.message.contains(
            "dim 1 is 7 but the signature f32[B, config.dim * 2] requires config.dim * 2 = 6"
        ),
        "{e}"
    );
    let e = lower_err(src, &[("x", &[2, 6, 1])]);
    assert!(e.message.contains("has rank 3"), "{e}");
}

#[test]
fn missing_and_unknown_inputs() {
    let src = "module M() {\n    fn forward(x: f32[B, S], y: f32[B, S], n) {\n        output z = x + y;\n    }\n}\n";
    let e = lower_err(src, &[("x", &[2, 7])]);
    assert_eq!(at(&e), (2, 30), "{e}");
    assert!(e.message.contains("missing required input `y`"), "{e}");
    let e = lower_err(src, &[("x", &[2, 7]), ("y", &[2, 7]), ("yy", &[1])]);
    assert!(e.message.contains("unknown input `yy`"), "{e}");
    let e = lower_err(src, &[("x", &[2, 7]), ("y", &[2, 7])]);
    assert!(e.message.contains("missing static argument `n`"), "{e}");
    let prog = program(src).unwrap();
    let f = |d: &[usize]| TensorType::new(DType::F32, d);
    let inputs = [("x".to_string(), f(&[2, 7])), ("y".to_string(), f(&[2, 7]))];
    let e = prog
        .lower(
            &json!({}),
            &inputs,
            &[("x".to_string(), StaticValue::Int(1))],
        )
        .unwrap_err();
    assert!(e.message.contains("`x` is a tensor input"), "{e}");
    let e = prog
        .lower(
            &json!({}),
            &[("x".to_string(), TensorType::new(DType::BF16, &[2, 7]))],
            &[],
        )
        .unwrap_err();
    assert!(
        e.message
            .contains("input `x` is bf16[2, 7] but the signature requires f32[B, S]"),
        "{e}"
    );
}

#[test]
fn non_compile_time_condition() {
    let src =
        "module M() {\n    fn forward(x: f32[2]) {\n        if x { output z = x; }\n    }\n}\n";
    let e = lower_err(src, &[("x", &[2])]);
    assert_eq!(at(&e), (3, 12), "{e}");
    assert!(
        e.message
            .contains("condition must be known at compile time"),
        "{e}"
    );
}

#[test]
fn no_output_and_output_outside_root() {
    let src = "module M() {\n    fn forward(x: f32[2]) { let z = x; }\n}\n";
    assert!(lower_err(src, &[("x", &[2])])
        .message
        .contains("declares no outputs"));
    let src = "fn f(x) { output y = x; }\nmodule M() {\n    fn forward(x: f32[2]) { output z = f(x); }\n}\n";
    let e = lower_err(src, &[("x", &[2])]);
    assert!(
        e.message
            .contains("only allowed in the forward of the entry module"),
        "{e}"
    );
}

#[test]
fn unbounded_recursion_is_an_error() {
    let src = "fn f(x) { f(x) }\nmodule M() {\n    fn forward(x: f32[2]) { output y = f(x); }\n}\n";
    let e = lower_err(src, &[("x", &[2])]);
    assert!(e.message.contains("nested more than"), "{e}");
    assert!(
        e.to_string().contains("times)"),
        "repeated notes are collapsed: {e}"
    );
    let src = "module A() { sub a = A(); }\nmodule M() {\n    sub a = A();\n    fn forward(x: f32[2]) { output y = x; }\n}\n";
    assert!(lower_err(src, &[("x", &[2])])
        .message
        .contains("nested more than"));
}

#[test]
fn duplicate_definitions_and_members() {
    let e = program("fn f(x) { x }\nfn f(y) { y }\n").unwrap_err();
    assert_eq!(at(&e), (2, 4), "{e}");
    assert!(e.message.contains("already defined at m.qie:1:4"), "{e}");
    let e = program("module M(d) {\n    param w[d];\n    param w[d];\n}\n").unwrap_err();
    assert_eq!(at(&e), (3, 11), "{e}");
    let src = "module M() {\n    sub a = Linear(2, 2) @ \"p\";\n    sub b = Linear(2, 2) @ \"p\";\n    fn forward(x: f32[2]) { output y = x; }\n}\n";
    let e = lower_err(src, &[("x", &[2])]);
    assert!(
        e.message
            .contains("checkpoint name `p.weight` is used twice"),
        "{e}"
    );
}

#[test]
fn assert_and_type_errors() {
    let src = "module M() {\n    fn forward(x: f32[B]) {\n        assert(B % 2 == 0, \"B must be even\");\n        output y = x;\n    }\n}\n";
    let e = lower_err(src, &[("x", &[3])]);
    assert_eq!(e.message, "assertion failed: B must be even");
    let src = "module M() {\n    fn forward(x: f32[2]) { output y = x + [1, 2]; }\n}\n";
    assert!(lower_err(src, &[("x", &[2])]).message.contains("list of 2"));
    let src = "module M() {\n    fn forward(x: f32[2]) { output y = Linear(2, 2)(x); }\n}\n";
    assert!(lower_err(src, &[("x", &[2])])
        .message
        .contains("cannot be called like a function"));
    let src = "module M() {\n    fn forward(x: f32[2]) { let y = 1; z = 2; output y = x; }\n}\n";
    assert!(lower_err(src, &[("x", &[2])])
        .message
        .contains("`z` is not a local variable"));
    let src = "module M() {\n    fn forward(x: f32[2]) { output y = x * 0.5 + cast(x, i32); }\n}\n";
    assert!(lower_err(src, &[("x", &[2])])
        .message
        .contains("operand dtypes differ"));
}

#[test]
fn missing_import_and_entry_errors() {
    let e = program("import \"nope.qie\";\nmodule M() {}\n").unwrap_err();
    assert_eq!(at(&e), (1, 1), "{e}");
    assert!(
        e.message.contains("cannot find imported file `nope.qie`"),
        "{e}"
    );
    let e = program("module M() {}\nentry N;\n").unwrap_err();
    assert!(e.message.contains("entry names unknown module `N`"), "{e}");
    let e = program("fn f(x) { x }\n").unwrap_err();
    assert!(e.message.contains("no module is defined"), "{e}");
    let e = program("module M() {}\n")
        .unwrap()
        .lower(&json!({}), &[], &[])
        .unwrap_err();
    assert!(e.message.contains("has no `fn forward(..)`"), "{e}");
}

#[test]
fn deep_nesting_is_rejected_without_overflow() {
    let deep = format!(
        "const c = {}1{};\nmodule M() {{}}\n",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    assert!(program(&deep)
        .unwrap_err()
        .message
        .contains("nested more than"));
    let chain = format!("const c = 1{};\nmodule M() {{}}\n", " + 1".repeat(5000));
    assert!(program(&chain)
        .unwrap_err()
        .message
        .contains("nested more than"));
    let neg = format!("const c = {}1;\nmodule M() {{}}\n", "-".repeat(5000));
    assert!(program(&neg).is_err());
}
