//! The examples of docs/dsl.md: every `docs/examples/*.qie` file lowers, the variant lowers against
//! the real Qwen-Image DiT source (models/qie/) with a tiny config, and the document quotes each
//! example file verbatim, so the docs cannot drift from what the DSL accepts.

use qie_ir::dsl::{Program, StaticValue};
use qie_ir::eval::Tensor;
use qie_ir::{DType, Graph, Op, TensorType};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn example(name: &str) -> String {
    repo()
        .join("docs/examples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// Resolves like `qie compile` / `qie forward --model-file`: a file on disk, else a bundled model
/// source (models/qie/) by file name. `extra` supplies in-memory sources (probes).
fn load_with(root: &str, extra: &[(&str, &str)]) -> Program {
    let read = |name: &str| {
        if let Some((_, text)) = extra.iter().find(|(n, _)| *n == name) {
            return Some(text.to_string());
        }
        std::fs::read_to_string(name).ok().or_else(|| {
            let file = name.rsplit('/').next().unwrap_or(name);
            std::fs::read_to_string(repo().join("models/qie").join(file)).ok()
        })
    };
    Program::from_sources(root, &read).unwrap_or_else(|e| panic!("{e}"))
}

fn load(root: &str) -> Program {
    load_with(root, &[])
}

fn f32t(dims: &[usize]) -> TensorType {
    TensorType::new(DType::F32, dims)
}

fn ints(v: &[i64]) -> StaticValue {
    StaticValue::List(v.iter().map(|&i| StaticValue::Int(i)).collect())
}

fn img_shapes(shapes: &[[i64; 3]]) -> StaticValue {
    StaticValue::List(shapes.iter().map(|s| ints(s)).collect())
}

fn params(g: &Graph) -> Vec<(String, Vec<usize>)> {
    g.params()
        .into_iter()
        .map(|(n, id)| (n.to_string(), g.ty(id).shape.to_vec()))
        .collect()
}

fn count(g: &Graph, pred: impl Fn(&Op) -> bool) -> usize {
    g.nodes.iter().filter(|n| pred(&n.op)).count()
}

#[test]
fn every_example_file_is_tested() {
    let mut names: Vec<String> = std::fs::read_dir(repo().join("docs/examples"))
        .expect("docs/examples exists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".qie"))
        .collect();
    names.sort();
    // A new example needs a test below (and a place in docs/dsl.md).
    assert_eq!(names, ["ref_rope_shift.qie", "tiny_transformer.qie"]);
}

#[test]
fn docs_quote_the_example_files_verbatim() {
    let doc = std::fs::read_to_string(repo().join("docs/dsl.md")).expect("docs/dsl.md exists");
    for name in ["tiny_transformer.qie", "ref_rope_shift.qie"] {
        let text = std::fs::read_to_string(example(name)).unwrap();
        assert!(
            doc.contains(&text),
            "docs/dsl.md must contain docs/examples/{name} verbatim (copy the file into its code block)"
        );
    }
}

// ---- section 2: the tiny transformer -------------------------------------------------------------

fn tiny_config() -> serde_json::Value {
    json!({"in_channels": 16, "hidden_size": 64, "num_heads": 4, "num_layers": 2, "out_channels": 16})
}

#[test]
fn tiny_transformer_lowers() {
    let prog = load(&example("tiny_transformer.qie"));
    assert_eq!(prog.entry(), "TinyTransformer");
    let inputs = vec![
        ("x".to_string(), f32t(&[1, 32, 16])),
        ("mask".to_string(), TensorType::new(DType::Bool, &[1, 32])),
    ];
    let g = prog
        .lower(&tiny_config(), &inputs, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    qie_ir::verify(&g).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.ty(g.output("sample").unwrap()), &f32t(&[1, 32, 16]));
    assert_eq!(g.ty(g.output("pooled").unwrap()), &f32t(&[1, 128]));
    assert_eq!(count(&g, |op| matches!(op, Op::Attention { .. })), 2);

    let p = params(&g);
    let find = |name: &str| p.iter().find(|(n, _)| n == name).map(|(_, s)| s.clone());
    assert_eq!(find("proj_in.weight"), Some(vec![64, 16]));
    assert_eq!(find("blocks.1.attn.to_qkv.weight"), Some(vec![192, 64]));
    assert_eq!(find("blocks.0.attn.to_out.0.bias"), Some(vec![64]));
    assert_eq!(find("blocks.1.ff.net.0.proj.weight"), Some(vec![256, 64]));
    assert_eq!(find("blocks.1.ff.net.2.weight"), Some(vec![64, 256]));
    assert_eq!(find("blocks.0.norm2.weight"), Some(vec![64]));
    assert_eq!(find("norm_out.weight"), Some(vec![64]));
    assert!(
        find("blocks.0.norm1.weight").is_none(),
        "elementwise_affine = false"
    );
    assert_eq!(p.len(), 2 + 2 * 10 + 1 + 2);

    // The static argument removes a block at compile time; without the optional mask and with
    // final_norm = false the graph has neither.
    let mut cfg = tiny_config();
    cfg["final_norm"] = json!(false);
    let g = prog
        .lower(
            &cfg,
            &inputs[..1],
            &[("skip_layers".to_string(), ints(&[1]))],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    qie_ir::verify(&g).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count(&g, |op| matches!(op, Op::Attention { .. })), 1);
    assert!(g.nodes.iter().all(|n| n.ty.dtype != DType::Bool));
    assert!(!params(&g).iter().any(|(n, _)| n == "norm_out.weight"));
}

// ---- section 4: the positional-encoding variant ------------------------------------------------

/// The config of tests/fixtures/dit/multi_ref (a 2-layer random-weight DiT).
fn dit_config() -> serde_json::Value {
    json!({
        "attention_head_dim": 16, "axes_dims_rope": [4, 6, 6], "in_channels": 16,
        "joint_attention_dim": 24, "num_attention_heads": 2, "num_layers": 2, "out_channels": 4,
        "patch_size": 2, "zero_cond_t": false, "use_additional_t_cond": false
    })
}

const SHAPES: [[i64; 3]; 3] = [[1, 4, 6], [1, 6, 4], [1, 2, 2]];

fn lower_dit(prog: &Program) -> Graph {
    let inputs = vec![
        ("hidden_states".to_string(), f32t(&[1, 52, 16])),
        ("encoder_hidden_states".to_string(), f32t(&[1, 9, 24])),
        ("timestep".to_string(), f32t(&[1])),
        (
            "encoder_hidden_states_mask".to_string(),
            TensorType::new(DType::Bool, &[1, 9]),
        ),
    ];
    let statics = vec![("img_shapes".to_string(), img_shapes(&SHAPES))];
    let g = prog
        .lower(&dit_config(), &inputs, &statics)
        .unwrap_or_else(|e| panic!("{e}"));
    qie_ir::verify(&g).unwrap_or_else(|e| panic!("{e}"));
    g
}

#[test]
fn ref_rope_shift_lowers_against_the_dit() {
    let base = lower_dit(&load(
        &repo()
            .join("models/qie/qwen_image_dit.qie")
            .to_string_lossy(),
    ));
    let variant_prog = load(&example("ref_rope_shift.qie"));
    assert_eq!(variant_prog.entry(), "QwenImageTransformer2DModel");
    let variant = lower_dit(&variant_prog);
    // Same checkpoint: identical parameter names and shapes; same output.
    assert_eq!(params(&base), params(&variant));
    assert_eq!(
        variant.ty(variant.output("sample").unwrap()),
        &f32t(&[1, 52, 16])
    );
    assert_ne!(
        qie_ir::print::print_graph(&base),
        qie_ir::print::print_graph(&variant)
    );
}

/// Evaluates the (constant) image and text positions a model source computes for SHAPES.
fn positions(source: &str) -> (Tensor, Tensor) {
    let probe = format!(
        "import \"{source}\";\n\
         module Probe() {{\n    fn forward(img_shapes) {{\n        \
         output img = all_image_positions(img_shapes);\n        \
         output txt = text_positions(img_shapes, 2);\n    }}\n}}\n\
         entry Probe;\n"
    );
    let prog = load_with("probe.qie", &[("probe.qie", &probe)]);
    let statics = vec![("img_shapes".to_string(), img_shapes(&SHAPES))];
    let g = prog
        .lower(&dit_config(), &[], &statics)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out =
        qie_ir::eval::eval(&g, &HashMap::new(), &|_: &str| None).unwrap_or_else(|e| panic!("{e}"));
    (out.remove("img").unwrap(), out.remove("txt").unwrap())
}

/// (frames, min row, max row, min col, max col) of the tokens of image `i` in SHAPES.
fn extent(pos: &Tensor, i: usize) -> (Vec<i64>, i64, i64, i64, i64) {
    let start: usize = SHAPES[..i]
        .iter()
        .map(|s| (s[0] * s[1] * s[2]) as usize)
        .sum();
    let n = (SHAPES[i][0] * SHAPES[i][1] * SHAPES[i][2]) as usize;
    let col = |a: usize| -> Vec<i64> {
        (start..start + n)
            .map(|t| pos.get(&[t, a]) as i64)
            .collect()
    };
    let mut frames = col(0);
    frames.dedup();
    let (rows, cols) = (col(1), col(2));
    let (min, max) = (
        |v: &Vec<i64>| *v.iter().min().unwrap(),
        |v: &Vec<i64>| *v.iter().max().unwrap(),
    );
    (frames, min(&rows), max(&rows), min(&cols), max(&cols))
}

#[test]
fn ref_rope_shift_places_references_side_by_side() {
    let base = repo().join("models/qie/qwen_image_dit.qie");
    let (img, txt) = positions(&base.to_string_lossy());
    // Qwen-Image: one frame index per image, every image centred.
    assert_eq!(extent(&img, 0), (vec![0], -2, 1, -3, 2));
    assert_eq!(extent(&img, 1), (vec![1], -3, 2, -2, 1));
    assert_eq!(extent(&img, 2), (vec![2], -1, 0, -1, 0));
    assert_eq!(txt.get(&[0, 0]), 3.0);

    let (img, txt) = positions(&example("ref_rope_shift.qie"));
    // The variant: frame 0 everywhere, columns continue from one image to the next.
    assert_eq!(extent(&img, 0), (vec![0], -2, 1, -3, 2));
    assert_eq!(extent(&img, 1), (vec![0], -3, 2, 3, 6));
    assert_eq!(extent(&img, 2), (vec![0], -1, 0, 7, 8));
    // Text starts after the last column, on all three axes.
    assert_eq!(
        (txt.get(&[0, 0]), txt.get(&[0, 2]), txt.get(&[1, 1])),
        (9.0, 9.0, 10.0)
    );
}

// ---- section 5: the error messages shown in the document are the real ones ----------------------

fn error_text(
    root: &str,
    text: &str,
    config: &serde_json::Value,
    inputs: &[(String, TensorType)],
) -> String {
    let read = |name: &str| (name == root).then(|| text.to_string());
    let e = Program::from_sources(root, &read)
        .and_then(|p| p.lower(config, inputs, &[]))
        .expect_err("the example must fail");
    e.to_string()
}

#[test]
fn docs_show_real_error_messages() {
    let doc = std::fs::read_to_string(repo().join("docs/dsl.md")).unwrap();
    let tiny = std::fs::read_to_string(example("tiny_transformer.qie")).unwrap();
    let x = vec![("x".to_string(), f32t(&[1, 32, 16]))];

    let comment = "module M() {\n    fn forward(x: f32[B, 8]) {\n        let y = x * 2    // scale by two\n        output y = y;\n    }\n}\n";
    let bad_proj = tiny.replace(
        "sub proj_out = Linear(width, config.out_channels);",
        "sub proj_out = Linear(config.out_channels, width);",
    );
    assert_ne!(bad_proj, tiny);
    let mut typo = tiny_config();
    typo["num_head"] = typo["num_heads"].take();
    typo.as_object_mut().unwrap().remove("num_heads");

    let errors = [
        error_text(
            "comment.qie",
            comment,
            &json!({}),
            &[("x".to_string(), f32t(&[2, 8]))],
        ),
        error_text("tiny_bad.qie", &bad_proj, &tiny_config(), &x),
        error_text("docs/examples/tiny_transformer.qie", &tiny, &typo, &x),
    ];
    for e in errors {
        assert!(
            doc.contains(e.trim_end()),
            "docs/dsl.md section 5 must show this error exactly as qie prints it:\n{e}"
        );
    }
}
