//! The bundled reference-image positional-encoding variants (models/qie/variants/) compile against
//! the tiny DiT (multi_ref fixture: a target and references), run, give finite output, and differ
//! from the baseline, since they move the references' positions; the positions of the base DiT,
//! OmniGen2, the aligned grid and UNO match hand-written tables.

use qie_ir::dsl::{Program, StaticValue};
use qie_models::qwen_image::{DitInputs, DitOptions, QwenImageDit};
use qie_tests::{dit_expected, dit_img_shapes, fixture, rel_l2};
use std::collections::HashMap;
use std::path::Path;

const VARIANTS: [&str; 6] = [
    "kontext_shared_frame.qie",
    "flux2_scaled_frame.qie",
    "uno_diagonal.qie",
    "dreamomni2_width_shift.qie",
    "omnigen2_index_embedding.qie",
    "diffsynth_aligned_grid.qie",
];

fn run(source: Option<&Path>) -> Vec<f32> {
    let options = DitOptions {
        source: source.map(Path::to_path_buf),
        ..DitOptions::default()
    };
    let dit = QwenImageDit::load(&fixture("dit/multi_ref/transformer"), &options)
        .unwrap_or_else(|e| panic!("{source:?}: {e}"));
    let inputs = DitInputs::load(
        &fixture("dit/multi_ref/inputs.safetensors"),
        dit_img_shapes("multi_ref"),
    )
    .unwrap();
    dit.forward(&inputs).unwrap().to_f32_vec()
}

#[test]
fn each_variant_runs_and_moves_the_output() {
    let baseline = run(None);
    assert!(rel_l2(&baseline, &dit_expected("multi_ref", "sample")) <= 1e-4);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/qie/variants");
    for name in VARIANTS {
        let out = run(Some(&dir.join(name)));
        assert!(
            out.iter().all(|v| v.is_finite()),
            "{name}: non-finite output"
        );
        let moved = rel_l2(&out, &baseline);
        println!("{name}: rel-L2 to the baseline {moved:.2e}");
        assert!(
            moved > 1e-3,
            "{name}: output equals the baseline ({moved:.2e})"
        );
    }
}

/// The fixture's grids: target 1x4x6, references 1x6x4 and 1x2x2.
const SHAPES: [[i64; 3]; 3] = [[1, 4, 6], [1, 6, 4], [1, 2, 2]];
const TXT: i64 = 9;

/// (image positions [S_img, 3], text positions [TXT, 3]) that a variant computes for SHAPES, by
/// lowering a probe program that imports it and outputs the positions as constants.
fn positions(variant: &str) -> (Vec<[i64; 3]>, Vec<[i64; 3]>) {
    let probe = format!(
        "import \"{variant}\";\n\
         module Probe() {{\n    fn forward(img_shapes) {{\n        \
         output img = all_image_positions_with_text(img_shapes, {TXT});\n        \
         output txt = text_positions(img_shapes, {TXT});\n    }}\n}}\n\
         entry Probe;\n"
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/qie/variants");
    let prog = Program::from_sources("probe.qie", &|name| {
        if name == "probe.qie" {
            return Some(probe.clone());
        }
        std::fs::read_to_string(dir.join(name))
            .ok()
            .or_else(|| qie_models::sources::bundled(name).map(str::to_string))
    })
    .unwrap_or_else(|e| panic!("{variant}: {e}"));
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("dit/multi_ref/transformer/config.json")).unwrap(),
    )
    .unwrap();
    let ints = |v: &[i64]| StaticValue::List(v.iter().map(|&i| StaticValue::Int(i)).collect());
    let shapes = StaticValue::List(SHAPES.iter().map(|s| ints(s)).collect());
    let g = prog
        .lower(&config, &[], &[("img_shapes".to_string(), shapes)])
        .unwrap_or_else(|e| panic!("{variant}: {e}"));
    let out = qie_ir::eval::eval(&g, &HashMap::new(), &|_: &str| None)
        .unwrap_or_else(|e| panic!("{variant}: {e}"));
    let rows = |name: &str| {
        let t = &out[name];
        assert_eq!(
            t.shape()[1],
            3,
            "{variant}: {name} positions {:?}",
            t.shape()
        );
        (0..t.shape()[0])
            .map(|s| [0, 1, 2].map(|a| t.get(&[s, a]) as i64))
            .collect::<Vec<_>>()
    };
    (rows("img"), rows("txt"))
}

/// Positions (frame, row, col) of a grid whose rows and columns take the given values, row-major.
fn grid(frame: i64, rows: &[i64], cols: &[i64]) -> Vec<[i64; 3]> {
    rows.iter()
        .flat_map(|&r| cols.iter().map(move |&c| [frame, r, c]))
        .collect()
}

fn text_from(start: i64) -> Vec<[i64; 3]> {
    (start..start + TXT).map(|k| [k, k, k]).collect()
}

#[test]
fn omnigen2_places_references_after_the_text_and_the_target_last() {
    let (img, txt) = positions("omnigen2_index_embedding.qie");
    // Text 0..9; reference 1 on frame 9, reference 2 on 9 + max(6, 4) = 15, target on 15 + 2.
    let expected = [
        grid(17, &[0, 1, 2, 3], &[0, 1, 2, 3, 4, 5]),
        grid(9, &[0, 1, 2, 3, 4, 5], &[0, 1, 2, 3]),
        grid(15, &[0, 1], &[0, 1]),
    ]
    .concat();
    assert_eq!(img, expected);
    assert_eq!(txt, text_from(0));
}

#[test]
fn diffsynth_aligned_grid_samples_the_targets_centred_grid() {
    let (img, txt) = positions("diffsynth_aligned_grid.qie");
    // Target rows -2..2, columns -3..3. Reference 1 (6x4): rows linspace(0, 3, 6).long() =
    // 0 0 1 1 2 3, columns linspace(0, 5, 4).long() = 0 1 3 5; reference 2 (2x2): 0 3 and 0 5.
    let expected = [
        grid(0, &[-2, -1, 0, 1], &[-3, -2, -1, 0, 1, 2]),
        grid(1, &[-2, -2, -1, -1, 0, 1], &[-3, -2, 0, 2]),
        grid(2, &[-2, 1], &[-3, 2]),
    ]
    .concat();
    assert_eq!(img, expected);
    // As the base: after max(h / 2, w / 2) = 3 over the images.
    assert_eq!(txt, text_from(3));
}

#[test]
fn uno_shifts_references_diagonally_beyond_the_target() {
    let (img, txt) = positions("uno_diagonal.qie");
    let expected = [
        grid(0, &[0, 1, 2, 3], &[0, 1, 2, 3, 4, 5]),
        grid(0, &[4, 5, 6, 7, 8, 9], &[6, 7, 8, 9]),
        grid(0, &[10, 11], &[10, 11]),
    ]
    .concat();
    assert_eq!(img, expected);
    // After every image: 6 + 6 + 2.
    assert_eq!(txt, text_from(14));
}

#[test]
fn the_base_dit_centres_every_image_on_its_own_frame() {
    let (img, txt) = positions("qwen_image_dit.qie");
    let expected = [
        grid(0, &[-2, -1, 0, 1], &[-3, -2, -1, 0, 1, 2]),
        grid(1, &[-3, -2, -1, 0, 1, 2], &[-2, -1, 0, 1]),
        grid(2, &[-1, 0], &[-1, 0]),
    ]
    .concat();
    assert_eq!(img, expected);
    assert_eq!(txt, text_from(3));
}
