//! LoRA merging against diffusers + peft (tools/golden/make_lora_fixtures.py): the same random LoRA
//! saved in the peft, DiffSynth, kohya and ComfyUI layouts must give diffusers' unfused output.

use qie_models::lora::{load_dit_with_loras, merge_into, unmerge, LoraFile, LoraFormat, LoraSet};
use qie_models::qwen_image::dit::expected_weights_for;
use qie_models::qwen_image::{DitConfig, DitInputs, DitOptions};
use qie_models::{HostWeights, WeightPrecision};
use qie_runtime::weights::{save_safetensors, WeightStore};
use qie_tests::{dit_img_shapes, fixture, rel_l2};
use std::path::Path;

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

fn run(set: &LoraSet) -> Vec<f32> {
    let (dit, report) = load_dit_with_loras(
        &fixture("dit/single/transformer"),
        &DitOptions::default(),
        set,
    )
    .unwrap();
    for file in &report.files {
        assert_eq!(file.modules, 24, "2 blocks x 12 target modules");
    }
    let inputs = DitInputs::load(
        &fixture("dit/single/inputs.safetensors"),
        dit_img_shapes("single"),
    )
    .unwrap();
    dit.forward(&inputs).unwrap().to_f32_vec()
}

#[test]
fn every_format_matches_diffusers_peft_output() {
    let reference = expected("sample");
    let formats = [
        ("peft", LoraFormat::Peft),
        ("diffsynth", LoraFormat::DiffSynth),
        ("kohya", LoraFormat::Kohya),
        ("comfyui", LoraFormat::ComfyUi),
    ];
    for (name, format) in formats {
        let file = lora(name);
        assert_eq!(file.format, format, "{name}");
        let err = rel_l2(
            &run(&LoraSet {
                files: vec![(file, 0.7)],
            }),
            &reference,
        );
        println!("{name}: rel-L2 {err:.2e}");
        assert!(err <= 1e-4, "{name}: rel-L2 {err:.3e}");
    }
}

#[test]
fn scales_add_across_files_and_no_lora_is_the_base_model() {
    let set = LoraSet {
        files: vec![(lora("peft"), 0.35), (lora("kohya"), 0.35)],
    };
    let err = rel_l2(&run(&set), &expected("sample"));
    assert!(err <= 1e-4, "two files: rel-L2 {err:.3e}");
    let base = rel_l2(&run(&LoraSet::default()), &expected("sample_base"));
    assert!(base <= 1e-4, "base: rel-L2 {base:.3e}");
}

fn base_weights() -> HostWeights {
    let dir = fixture("dit/single/transformer");
    let config = DitConfig::load(&dir.join("config.json")).unwrap();
    let expected = expected_weights_for(&config, None).unwrap();
    let store = WeightStore::open(&dir).unwrap();
    HostWeights::load(&store, &expected, WeightPrecision::F32).unwrap()
}

#[test]
fn unmerge_restores_the_weights() {
    let original = base_weights();
    let mut weights = base_weights();
    let set = LoraSet {
        files: vec![(lora("comfyui"), 0.7)],
    };
    let report = merge_into(&mut weights, &set).unwrap();
    assert!(report.to_string().contains("24 modules"), "{report}");
    let name = "transformer_blocks.1.attn.to_q.weight";
    assert!(rel_l2(weights.get(name).unwrap(), original.get(name).unwrap()) > 1e-3);
    unmerge(&mut weights, &set).unwrap();
    for name in original.names() {
        let err = rel_l2(weights.get(name).unwrap(), original.get(name).unwrap());
        assert!(err < 1e-6, "{name}: {err:.2e}");
    }
}

fn write_lora(dir: &Path, file: &str, tensors: &[(&str, Vec<usize>)]) -> std::path::PathBuf {
    let path = dir.join(file);
    let data: Vec<(String, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s)| {
            let count: usize = s.iter().product();
            let values = (0..count).map(|i| 0.01 * (i as f32 + 1.0)).collect();
            (n.to_string(), s.clone(), values)
        })
        .collect();
    let refs: Vec<(&str, Vec<usize>, &[f32])> = data
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.as_slice()))
        .collect();
    save_safetensors(&path, &refs).unwrap();
    path
}

#[test]
fn bad_files_error_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = LoraFile::load(&tmp.path().join("nope.safetensors")).unwrap_err();
    assert!(missing.message.contains("nope.safetensors"), "{missing}");

    let q = "transformer.transformer_blocks.0.attn.to_q";
    let lone = write_lora(
        tmp.path(),
        "lone.safetensors",
        &[(&format!("{q}.lora_A.weight"), vec![4, 32])],
    );
    let err = LoraFile::load(&lone).unwrap_err();
    assert!(
        err.message.contains("lone.safetensors") && err.message.contains("lora_B"),
        "{err}"
    );

    let foreign = write_lora(
        tmp.path(),
        "foreign.safetensors",
        &[("model.layers.0.mlp.weight", vec![2, 2])],
    );
    let err = LoraFile::load(&foreign).unwrap_err();
    assert!(err.message.contains("model.layers.0.mlp.weight"), "{err}");

    let ranks = write_lora(
        tmp.path(),
        "ranks.safetensors",
        &[
            (&format!("{q}.lora_A.weight"), vec![4, 32]),
            (&format!("{q}.lora_B.weight"), vec![32, 2]),
        ],
    );
    assert!(LoraFile::load(&ranks)
        .unwrap_err()
        .message
        .contains("ranks differ"));

    let mut weights = base_weights();
    let before = weights
        .get("transformer_blocks.0.attn.to_q.weight")
        .unwrap()
        .to_vec();
    let unknown = write_lora(
        tmp.path(),
        "unknown.safetensors",
        &[
            (&format!("{q}.lora_A.weight"), vec![2, 32]),
            (&format!("{q}.lora_B.weight"), vec![32, 2]),
            (
                "lora_unet_transformer_blocks_0_attn_to_zz.lora_down.weight",
                vec![2, 32],
            ),
            (
                "lora_unet_transformer_blocks_0_attn_to_zz.lora_up.weight",
                vec![32, 2],
            ),
        ],
    );
    let set = LoraSet {
        files: vec![(LoraFile::load(&unknown).unwrap(), 1.0)],
    };
    let err = merge_into(&mut weights, &set).unwrap_err();
    assert!(
        err.message.contains("unknown.safetensors") && err.message.contains("to_zz"),
        "{err}"
    );
    assert_eq!(
        weights
            .get("transformer_blocks.0.attn.to_q.weight")
            .unwrap(),
        before,
        "untouched"
    );

    let shape = write_lora(
        tmp.path(),
        "shape.safetensors",
        &[
            (&format!("{q}.lora_A.weight"), vec![2, 16]),
            (&format!("{q}.lora_B.weight"), vec![32, 2]),
        ],
    );
    let set = LoraSet {
        files: vec![(LoraFile::load(&shape).unwrap(), 1.0)],
    };
    let err = merge_into(&mut weights, &set).unwrap_err();
    assert!(err.message.contains("32x16"), "{err}");
}
