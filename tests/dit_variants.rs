//! The bundled reference-image positional-encoding variants (models/qie/variants/) compile against
//! the tiny DiT (multi_ref fixture: a target and references), run, give finite output, and differ
//! from the baseline, since they move the references' positions.

use qie_models::qwen_image::{DitInputs, DitOptions, QwenImageDit};
use qie_tests::{dit_expected, dit_img_shapes, fixture, rel_l2};
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
