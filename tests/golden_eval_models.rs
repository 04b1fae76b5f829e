//! `qie eval`'s model metrics (models/src/eval/encoder.rs + vit.qie: DINO, DINOv2, CLIP, SigLIP)
//! against transformers 5.24 / torchvision 0.29 on tiny random models saved with save_pretrained
//! (tools/golden/make_eval_model_fixtures.py): the preprocessed pixels of the first pair, every
//! image embedding (rel-L2 <= 1e-5) and every gt-prediction cosine (within 1e-4).

use qie_models::eval::preprocess::preprocess;
use qie_models::eval::{EncoderKind, ImageEncoder};
use qie_models::preprocess::load_rgb;
use qie_models::ModelOptions;
use qie_runtime::weights::WeightStore;
use qie_tests::{eval_pairs, fixture, rel_l2};

fn check(kind: EncoderKind, dir: &str, metric: &str) {
    let expected = WeightStore::open(fixture("eval_models/expected.safetensors")).unwrap();
    let encoder = ImageEncoder::load(&fixture(dir), kind, &ModelOptions::default()).unwrap();
    let pairs = eval_pairs();
    let images: Vec<_> = pairs
        .iter()
        .flat_map(|(g, p)| [load_rgb(g).unwrap(), load_rgb(p).unwrap()])
        .collect();

    let want_pixels = expected.load_f32(&format!("{metric}.pixels")).unwrap();
    let pixels: Vec<f32> = images[..2]
        .iter()
        .flat_map(|img| preprocess(img, encoder.preprocessing()).unwrap())
        .collect();
    let worst = pixels
        .iter()
        .zip(&want_pixels)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-6, "{metric}: preprocessing differs by {worst}");

    let refs: Vec<_> = images.iter().collect();
    let embeds = encoder.embed(&refs, 3).unwrap();
    let flat: Vec<f32> = embeds.iter().flatten().copied().collect();
    let want = expected.load_f32(&format!("{metric}.embeds")).unwrap();
    let err = rel_l2(&flat, &want);
    assert!(err <= 1e-5, "{metric}: embeddings rel-L2 {err:e}");

    let cos = expected.load_f32(&format!("{metric}.cosine")).unwrap();
    assert_eq!(cos.len(), pairs.len());
    for (i, want) in cos.iter().enumerate() {
        let got = qie_models::eval::encoder::cosine(&embeds[2 * i], &embeds[2 * i + 1]);
        assert!(
            (got - f64::from(*want)).abs() <= 1e-4,
            "{metric} pair {i}: cosine {got} vs {want}"
        );
    }
}

#[test]
fn dino_matches_transformers_vit() {
    check(EncoderKind::Dino, "eval_models/dino", "dino");
}

#[test]
fn clip_image_embeddings_match_transformers_clip() {
    check(EncoderKind::Clip, "eval_models/clip", "clip_i");
}

#[test]
fn wrong_model_kind_is_one_clear_error() {
    let e = ImageEncoder::load(
        &fixture("eval_models/clip"),
        EncoderKind::Dino,
        &ModelOptions::default(),
    )
    .err()
    .expect("a CLIP folder is not a DINO model")
    .to_string();
    assert!(e.contains("config.json") && e.contains("clip"), "{e}");
}

#[test]
fn clip_text_embeddings_match_transformers_clip() {
    let expected = WeightStore::open(fixture("eval_models/expected.safetensors")).unwrap();
    let dir = fixture("eval_models/clip");
    let text = qie_models::eval::TextEncoder::load(&dir, &ModelOptions::default()).unwrap();
    let prompts: Vec<String> = eval_pairs()
        .iter()
        .map(|(gt, _)| format!("edit {}", gt.file_stem().unwrap().to_string_lossy()))
        .collect();
    let want_ids = expected.load_i32("clip_t.input_ids").unwrap();
    let ids: Vec<i32> = prompts
        .iter()
        .flat_map(|p| text.tokenize(p).unwrap())
        .map(|i| i as i32)
        .collect();
    assert_eq!(ids, want_ids, "token ids");
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let embeds = text.embed(&refs, 3).unwrap();
    let flat: Vec<f32> = embeds.iter().flatten().copied().collect();
    let want = expected.load_f32("clip_t.text_embeds").unwrap();
    let err = rel_l2(&flat, &want);
    assert!(err <= 1e-5, "text embeddings rel-L2 {err:e}");

    let image = ImageEncoder::load(&dir, EncoderKind::Clip, &ModelOptions::default()).unwrap();
    let preds: Vec<_> = eval_pairs()
        .iter()
        .map(|(_, p)| load_rgb(p).unwrap())
        .collect();
    let image_embeds = image.embed(&preds.iter().collect::<Vec<_>>(), 4).unwrap();
    let cos = expected.load_f32("clip_t.cosine").unwrap();
    for (i, want) in cos.iter().enumerate() {
        let got = qie_models::eval::encoder::cosine(&image_embeds[i], &embeds[i]);
        assert!(
            (got - f64::from(*want)).abs() <= 1e-4,
            "clip_t row {i}: {got} vs {want}"
        );
    }
}

#[test]
fn dinov2_matches_transformers_with_its_position_table_interpolated() {
    check(EncoderKind::Dinov2, "eval_models/dinov2", "dinov2");
}

#[test]
fn siglip_pooled_embeddings_match_transformers_siglip() {
    check(EncoderKind::Siglip, "eval_models/siglip", "siglip");
}

#[test]
fn siglip_without_its_processor_config_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("eval_models/siglip").join(f), tmp.path().join(f)).unwrap();
    }
    let e = ImageEncoder::load(tmp.path(), EncoderKind::Siglip, &ModelOptions::default())
        .err()
        .expect("no preprocessor_config.json")
        .to_string();
    assert!(e.contains("preprocessor_config.json"), "{e}");
}
