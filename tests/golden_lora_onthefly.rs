//! LoRA on the fly (lora.qie layered on the DiT, factors as parameters, nothing merged) against
//! diffusers + peft (tools/golden/make_lora_fixtures.py, set_adapters 0.7, unfused): every file
//! format, two files at once against merging them, and switching sets without reloading.

use qie_models::lora::{
    load_dit_with_lora_slot, load_dit_with_loras, load_dit_with_loras_on_the_fly, LoraFile,
    LoraSet, LoraSlot,
};
use qie_models::qwen_image::{DitInputs, DitOptions, QwenImageDit};
use qie_runtime::weights::WeightStore;
use qie_tests::{dit_img_shapes, fixture, rel_l2};

fn expected(name: &str) -> Vec<f32> {
    WeightStore::open(fixture("lora/expected.safetensors"))
        .unwrap()
        .load_f32(name)
        .unwrap()
}

fn lora(name: &str) -> LoraFile {
    LoraFile::load(&fixture(&format!("lora/{name}.safetensors")))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn set(files: &[(&str, f32)]) -> LoraSet {
    LoraSet {
        files: files.iter().map(|(n, s)| (lora(n), *s)).collect(),
    }
}

fn dir() -> std::path::PathBuf {
    fixture("dit/single/transformer")
}

fn forward(dit: &QwenImageDit) -> Vec<f32> {
    let inputs = DitInputs::load(
        &fixture("dit/single/inputs.safetensors"),
        dit_img_shapes("single"),
    )
    .unwrap();
    dit.forward(&inputs).unwrap().to_f32_vec()
}

fn on_the_fly(files: &[(&str, f32)]) -> (QwenImageDit, Vec<f32>) {
    let (dit, report) =
        load_dit_with_loras_on_the_fly(&dir(), &DitOptions::default(), &set(files)).unwrap();
    for file in &report.files {
        assert_eq!(file.modules, 24, "2 blocks x 12 target modules");
    }
    // The factors are params of the graph, created as peft does, then set from the files.
    assert_eq!(dit.created_weights().len(), 2 * 24);
    let out = forward(&dit);
    (dit, out)
}

#[test]
fn every_format_matches_diffusers_peft_output() {
    let reference = expected("sample");
    let base = expected("sample_base");
    assert!(
        rel_l2(&base, &reference) > 1e-2,
        "the LoRA must change the output"
    );
    for name in ["peft", "diffsynth", "kohya", "comfyui"] {
        let (dit, out) = on_the_fly(&[(name, 0.7)]);
        let err = rel_l2(&out, &reference);
        println!("{name}: rel-L2 {err:.2e}");
        assert!(err <= 1e-4, "{name}: rel-L2 {err:.3e}");
        let names = dit.created_weights();
        assert!(
            names.contains(&"transformer_blocks.0.attn.to_q.lora_A.weight".to_string()),
            "peft's key names minus `transformer.`: {names:?}"
        );
    }
}

#[test]
fn two_files_on_the_fly_equal_merging_them() {
    let files = [("peft", 0.35), ("kohya", 0.35)];
    let (dit, out) = on_the_fly(&files);
    let slot = LoraSlot::of_model(&dit.expected_weights().unwrap()).unwrap();
    assert_eq!(slot.rank, 8, "two rank-4 files concatenate along the rank");
    let (merged, _) = load_dit_with_loras(&dir(), &DitOptions::default(), &set(&files)).unwrap();
    let err = rel_l2(&out, &forward(&merged));
    assert!(err <= 1e-5, "on the fly vs merged: rel-L2 {err:.3e}");
    let err = rel_l2(&out, &expected("sample"));
    assert!(err <= 1e-4, "vs diffusers: rel-L2 {err:.3e}");
}

#[test]
fn switching_sets_only_updates_parameters() {
    let (mut dit, _) = on_the_fly(&[("peft", 0.35), ("kohya", 0.35)]);
    // A single rank-4 file fits the rank-8 slot (zero-padded), as does no LoRA at all.
    dit.set_loras(&set(&[("comfyui", 0.7)])).unwrap();
    let err = rel_l2(&forward(&dit), &expected("sample"));
    assert!(err <= 1e-4, "after switching: rel-L2 {err:.3e}");
    dit.set_loras(&LoraSet::default()).unwrap();
    let err = rel_l2(&forward(&dit), &expected("sample_base"));
    assert!(err <= 1e-4, "no LoRA: rel-L2 {err:.3e}");
    // Three rank-4 files need rank 12: a clear error, the slot is unchanged.
    let err = dit
        .set_loras(&set(&[("peft", 0.2), ("kohya", 0.2), ("diffsynth", 0.3)]))
        .unwrap_err();
    assert!(
        err.message.contains("rank 12") && err.message.contains("slot has 8"),
        "{err}"
    );
}

#[test]
fn a_fresh_slot_is_the_base_model_and_a_dit_without_one_refuses_loras() {
    let slot = LoraSlot {
        rank: 2,
        targets: vec!["transformer_blocks.1.attn.to_q".into(), "img_in".into()],
    };
    let dit = load_dit_with_lora_slot(&dir(), &DitOptions::default(), &slot).unwrap();
    let mut created = dit.created_weights().to_vec();
    created.sort();
    assert_eq!(
        created,
        [
            "img_in.lora_A.weight",
            "img_in.lora_B.weight",
            "transformer_blocks.1.attn.to_q.lora_A.weight",
            "transformer_blocks.1.attn.to_q.lora_B.weight",
        ]
    );
    // B starts at zero (peft), so the adapted model is the base model.
    let err = rel_l2(&forward(&dit), &expected("sample_base"));
    assert!(err <= 1e-5, "fresh slot: rel-L2 {err:.3e}");

    let mut plain = QwenImageDit::load(&dir(), &DitOptions::default()).unwrap();
    let err = plain.set_loras(&set(&[("peft", 0.7)])).unwrap_err();
    assert!(err.message.contains("without a LoRA adapter slot"), "{err}");
}

#[test]
fn a_variant_file_with_loras_on_the_fly_equals_it_merged() {
    let tmp = tempfile::tempdir().unwrap();
    let variant = tmp.path().join("shifted_text.qie");
    std::fs::write(
        &variant,
        r#"import "qwen_image_dit.qie";
// Text positions start 3 further out: a change the LoRA path must carry through.
override fn text_position_start(img_shapes) {
    let start = 3;
    for s in img_shapes {
        start = max(start, 3 + max(s[1] ~/ 2, s[2] ~/ 2));
    }
    start
}
"#,
    )
    .unwrap();
    let options = DitOptions {
        source: Some(variant),
        ..DitOptions::default()
    };
    let files = set(&[("peft", 0.7)]);
    let (dit, _) = load_dit_with_loras_on_the_fly(&dir(), &options, &files).unwrap();
    let (merged, _) = load_dit_with_loras(&dir(), &options, &files).unwrap();
    let out = forward(&dit);
    let err = rel_l2(&out, &forward(&merged));
    assert!(
        err <= 1e-5,
        "variant on the fly vs merged: rel-L2 {err:.3e}"
    );
    let moved = rel_l2(&out, &expected("sample"));
    assert!(
        moved > 1e-3,
        "the variant must change the output ({moved:.2e})"
    );
}
