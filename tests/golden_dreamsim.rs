//! `qie eval`'s `dreamsim` metric (models/src/eval/dreamsim.rs + vit.qie's `dino_vit`) against
//! the dreamsim 0.2.1 package on a tiny random ensemble in the released on-disk layout
//! (tools/golden/make_dreamsim_fixtures.py): torch checkpoints, a peft LoRA merged into every
//! `attn.qkv`; the preprocessed pixels, every normalised embedding (rel-L2 <= 1e-5) and every
//! distance (within 1e-4).

use qie_models::eval::preprocess::preprocess;
use qie_models::eval::{EncoderKind, ImageEncoder};
use qie_models::preprocess::load_rgb;
use qie_models::ModelOptions;
use qie_runtime::weights::WeightStore;
use qie_tests::{eval_pairs, fixture, rel_l2};
use std::path::Path;

fn load(dir: &Path) -> Result<ImageEncoder, String> {
    ImageEncoder::load(dir, EncoderKind::DreamSim, &ModelOptions::default())
        .map_err(|e| e.to_string())
}

fn load_err(dir: &Path) -> String {
    load(dir).err().expect("the folder is refused")
}

#[test]
fn dreamsim_matches_the_dreamsim_package() {
    let expected = WeightStore::open(fixture("dreamsim/expected.safetensors")).unwrap();
    let encoder = load(&fixture("dreamsim/models")).expect("the fixture loads");
    let pairs = eval_pairs();
    let images: Vec<_> = pairs
        .iter()
        .flat_map(|(g, p)| [load_rgb(g).unwrap(), load_rgb(p).unwrap()])
        .collect();

    let want_pixels = expected.load_f32("dreamsim.pixels").unwrap();
    let pixels: Vec<f32> = images[..2]
        .iter()
        .flat_map(|img| preprocess(img, encoder.preprocessing()).unwrap())
        .collect();
    let worst = pixels
        .iter()
        .zip(&want_pixels)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-6, "preprocessing differs by {worst}");

    let refs: Vec<_> = images.iter().collect();
    let embeds = encoder.embed(&refs, 3).unwrap();
    let flat: Vec<f32> = embeds.iter().flatten().copied().collect();
    let want = expected.load_f32("dreamsim.embeds").unwrap();
    assert_eq!(flat.len(), want.len(), "embedding width");
    let err = rel_l2(&flat, &want);
    assert!(err <= 1e-5, "embeddings rel-L2 {err:e}");

    let distance = expected.load_f32("dreamsim.distance").unwrap();
    assert_eq!(distance.len(), pairs.len());
    for (i, want) in distance.iter().enumerate() {
        let got = encoder.score(&embeds[2 * i], &embeds[2 * i + 1]);
        assert!(
            (got - f64::from(*want)).abs() <= 1e-4,
            "pair {i}: distance {got} vs {want}"
        );
    }
    // an image against itself is at distance 0
    assert!(encoder.score(&embeds[0], &embeds[0]).abs() < 1e-6);
}

/// A copy of the fixture folder, for the tests that break it.
fn copy_models() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("dreamsim/models"), tmp.path());
    tmp
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn the_lora_changes_the_scores() {
    // without the adapter's factors the merge is a no-op: the scores must differ
    let tmp = copy_models();
    let lora = tmp.path().join("ensemble_lora/adapter_model.safetensors");
    let store = WeightStore::open(&lora).unwrap();
    let zeroed: Vec<_> = store
        .names()
        .iter()
        .map(|n| {
            let shape = store.require(n).unwrap().shape.clone();
            let len = shape.iter().product();
            (n.to_string(), shape, vec![0f32; len])
        })
        .collect();
    drop(store);
    let tensors: Vec<_> = zeroed
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.as_slice()))
        .collect();
    qie_runtime::weights::save_safetensors(&lora, &tensors).unwrap();
    let plain = load(tmp.path()).expect("loads");
    let merged = load(&fixture("dreamsim/models")).expect("loads");
    let img = load_rgb(&eval_pairs()[0].0).unwrap();
    let a = plain.embed(&[&img], 1).unwrap();
    let b = merged.embed(&[&img], 1).unwrap();
    assert!(rel_l2(&a[0], &b[0]) > 1e-3, "the LoRA made no difference");
}

#[test]
fn broken_dreamsim_folders_are_clear_errors() {
    let e = load_err(&fixture("dreamsim/expected.safetensors"));
    assert!(e.contains("not a folder"), "{e}");

    let tmp = copy_models();
    std::fs::remove_file(tmp.path().join("open_clip_vitb16_pretrain.pth.tar")).unwrap();
    let e = load_err(tmp.path());
    assert!(
        e.contains("open_clip_vitb16_pretrain.pth.tar") && e.contains("missing"),
        "{e}"
    );

    let tmp = copy_models();
    std::fs::remove_dir_all(tmp.path().join("ensemble_lora")).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("adapter_config.json"), "{e}");

    let tmp = copy_models();
    let path = tmp.path().join("clip_vitb16_pretrain.pth.tar");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("clip_vitb16_pretrain.pth.tar"), "{e}");

    let tmp = copy_models();
    let config = tmp.path().join("ensemble_lora/adapter_config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("\"use_dora\": false", "\"use_dora\": true"),
    )
    .unwrap();
    let e = load_err(tmp.path());
    assert!(
        e.contains("use_dora") && e.contains("adapter_config.json"),
        "{e}"
    );

    // a DINO checkpoint as the CLIP tower: no `proj`, named with its file
    let tmp = copy_models();
    std::fs::copy(
        tmp.path().join("checkpoints/dino_vitbase16_pretrain.pth"),
        tmp.path().join("clip_vitb16_pretrain.pth.tar"),
    )
    .unwrap();
    let e = load_err(tmp.path());
    assert!(
        e.contains("clip_vitb16_pretrain.pth.tar") && e.contains("state_dict"),
        "{e}"
    );
}
