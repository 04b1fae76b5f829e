//! models/src/preprocess against Pillow 13 / diffusers 0.42.1 / transformers 5.24 (+ torchvision)
//! outputs from tools/golden/make_preprocess_fixtures.py.

use qie_models::preprocess::{
    calculate_dimensions, load_rgb, resize_bicubic, resize_bicubic_torch, resize_lanczos,
    smart_resize, ImageBackend, Qwen2VlImageProcessor, QwenTokenizer, RgbImage, VaeImageProcessor,
};
use qie_runtime::weights::WeightStore;
use qie_runtime::Tensor;
use qie_tests::fixture;
use serde_json::Value;

fn cases() -> Value {
    let text = std::fs::read_to_string(fixture("preprocess/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn src_image(name: &str) -> RgbImage {
    load_rgb(fixture(&format!("preprocess/images/{name}.png"))).unwrap()
}

/// Max |a - b| over bytes and how many bytes differ.
fn byte_diff(a: &[u8], b: &[u8]) -> (u8, usize) {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold((0, 0), |(m, n), (&x, &y)| {
        let d = x.abs_diff(y);
        (m.max(d), n + (d != 0) as usize)
    })
}

fn check_resize_set(set: &str, dir: &str) {
    let all = cases();
    let list = all[set].as_array().unwrap();
    assert!(!list.is_empty(), "{set}: no cases");
    let mut failures = Vec::new();
    for case in list {
        let name = case["name"].as_str().unwrap();
        let src = src_image(case["src"].as_str().unwrap());
        let (w, h) = (
            case["width"].as_u64().unwrap() as u32,
            case["height"].as_u64().unwrap() as u32,
        );
        let out = match (set, case["filter"].as_str().unwrap()) {
            ("resize", "lanczos") => resize_lanczos(&src, w, h),
            ("resize", "bicubic") => resize_bicubic(&src, w, h),
            ("resize_torch", "bicubic") => resize_bicubic_torch(&src, w, h),
            other => panic!("unknown case {other:?}"),
        };
        let expected = load_rgb(fixture(&format!("preprocess/{dir}/{name}.png"))).unwrap();
        assert_eq!(out.dimensions(), expected.dimensions(), "{name}");
        let (max, count) = byte_diff(out.as_raw(), expected.as_raw());
        if count != 0 {
            failures.push(format!("{name}: {count} bytes differ, max {max}"));
        }
    }
    assert!(failures.is_empty(), "{set}:\n{}", failures.join("\n"));
}

#[test]
fn resize_matches_pillow_bytes() {
    check_resize_set("resize", "resize");
}

#[test]
fn resize_matches_torchvision_uint8_bicubic_bytes() {
    check_resize_set("resize_torch", "resize_torch");
}

#[test]
fn calculate_dimensions_matches_python() {
    for c in cases()["calculate_dimensions"].as_array().unwrap() {
        let ratio = c["width"].as_f64().unwrap() / c["height"].as_f64().unwrap();
        let got = calculate_dimensions(c["target_area"].as_f64().unwrap(), ratio);
        let want = (
            c["out_width"].as_u64().unwrap() as u32,
            c["out_height"].as_u64().unwrap() as u32,
        );
        assert_eq!(got, want, "{c}");
    }
}

#[test]
fn smart_resize_matches_python() {
    for c in cases()["smart_resize"].as_array().unwrap() {
        let u = |k: &str| c[k].as_u64().unwrap();
        let got = smart_resize(
            u("height") as usize,
            u("width") as usize,
            28,
            u("min_pixels"),
            u("max_pixels"),
        )
        .unwrap();
        assert_eq!(
            got,
            (u("out_height") as usize, u("out_width") as usize),
            "{c}"
        );
    }
}

fn store(name: &str) -> WeightStore {
    WeightStore::open(fixture(&format!("preprocess/{name}"))).unwrap()
}

#[test]
fn vae_preprocess_matches_diffusers() {
    let vae = store("vae.safetensors");
    let proc = VaeImageProcessor::default();
    for c in cases()["vae"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let src = src_image(c["src"].as_str().unwrap());
        let out = proc.preprocess(
            &src,
            c["width"].as_u64().unwrap() as u32,
            c["height"].as_u64().unwrap() as u32,
        );
        let shape: Vec<usize> = c["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(out.shape(), &shape[..], "{name}");
        let want = vae.load_f32(name).unwrap();
        assert_eq!(out.as_f32().unwrap(), &want[..], "{name}: not bit-exact");
    }
}

#[test]
fn vae_postprocess_matches_diffusers() {
    let vae = store("vae.safetensors");
    let x = vae.load_f32("postprocess_input").unwrap();
    let want = vae.load_i64("postprocess_output").unwrap();
    let images = VaeImageProcessor::default()
        .postprocess(&Tensor::from_f32(&[2, 3, 5, 7], x).unwrap())
        .unwrap();
    let got: Vec<i64> = images
        .iter()
        .flat_map(|im| im.as_raw().iter().map(|&v| v as i64))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn vae_postprocess_rejects_bad_shape() {
    let t = Tensor::from_f32(&[1, 4, 2, 2], vec![0.5; 16]).unwrap();
    let err = VaeImageProcessor::default().postprocess(&t).unwrap_err();
    assert!(err.message.contains("[B, 3, H, W]"), "{err}");
}

fn check_processor(backend: &str) {
    let proc_store = store("processor.safetensors");
    let mut checked = 0;
    for c in cases()["processor"].as_array().unwrap() {
        if c["backend"] != backend {
            continue;
        }
        let name = c["name"].as_str().unwrap();
        let dir = fixture(&format!("preprocess/{}", c["folder"].as_str().unwrap()));
        let b = if backend == "pil" {
            ImageBackend::Pil
        } else {
            ImageBackend::Torchvision
        };
        let ip = Qwen2VlImageProcessor::load(&dir).unwrap().with_backend(b);
        let images: Vec<_> = c["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| src_image(s.as_str().unwrap()))
            .collect();
        let (pixels, grids) = ip.preprocess(&images).unwrap();
        let want_grid = proc_store
            .load_i64(&format!("{name}.image_grid_thw"))
            .unwrap();
        let got_grid: Vec<i64> = grids.iter().flatten().map(|&g| g as i64).collect();
        assert_eq!(got_grid, want_grid, "{name}: grid");
        let want = proc_store
            .load_f32(&format!("{name}.pixel_values"))
            .unwrap();
        let got = pixels.as_f32().unwrap();
        assert_eq!(got.len(), want.len(), "{name}: pixel_values size");
        let max = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert_eq!(max, 0.0, "{name}: pixel_values differ (max abs {max})");

        let texts: Vec<String> = c["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        let expanded =
            qie_models::preprocess::expand_image_pads(&texts, &grids, ip.config.merge_size)
                .unwrap();
        let tok = QwenTokenizer::load(&dir).unwrap();
        let enc = tok.encode_batch(&expanded).unwrap();
        assert_eq!(
            enc.ids,
            proc_store.load_i64(&format!("{name}.input_ids")).unwrap(),
            "{name}: input_ids"
        );
        assert_eq!(
            enc.mask,
            proc_store
                .load_i64(&format!("{name}.attention_mask"))
                .unwrap(),
            "{name}: mask"
        );
        checked += 1;
    }
    assert!(checked > 0);
}

#[test]
fn qwen2vl_processor_torchvision_backend_matches_transformers() {
    check_processor("torchvision");
}

#[test]
fn qwen2vl_processor_pil_backend_matches_transformers() {
    check_processor("pil");
}

#[test]
fn tokenizer_matches_transformers_samples_in_both_layouts() {
    let text = std::fs::read_to_string(fixture("tokenizer/samples.json")).unwrap();
    let samples: Value = serde_json::from_str(&text).unwrap();
    for layout in ["vocab_merges", "tokenizer_json"] {
        let tok = QwenTokenizer::load(fixture(&format!("tokenizer/{layout}"))).unwrap();
        for s in samples["samples"].as_array().unwrap() {
            let want: Vec<u32> = s["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let got = tok.encode(s["text"].as_str().unwrap()).unwrap();
            assert_eq!(got, want, "{layout}: {:?}", s["text"]);
        }
    }
}

#[test]
fn load_rgb_drops_alpha_like_pillow_convert() {
    let rgba = load_rgb(fixture("preprocess/images/rgba_37x23.png")).unwrap();
    let rgb = src_image("noise_37x23");
    assert_eq!(rgba.as_raw(), rgb.as_raw());
}

#[test]
fn bad_inputs_give_errors_naming_the_file() {
    let missing = fixture("preprocess/images/does_not_exist.png");
    let err = load_rgb(&missing).unwrap_err();
    assert!(err.message.contains("does_not_exist.png"), "{err}");
    let err = load_rgb(fixture("preprocess/cases.json")).unwrap_err();
    assert!(err.message.contains("cases.json"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let err = Qwen2VlImageProcessor::load(dir.path()).unwrap_err();
    assert!(err.message.contains("preprocessor_config.json"), "{err}");
    std::fs::write(dir.path().join("preprocessor_config.json"), "{not json").unwrap();
    let err = Qwen2VlImageProcessor::load(dir.path()).unwrap_err();
    assert!(
        err.message.contains("preprocessor_config.json") && err.message.contains("malformed"),
        "{err}"
    );
    std::fs::write(
        dir.path().join("preprocessor_config.json"),
        r#"{"patch_size": "x"}"#,
    )
    .unwrap();
    let err = Qwen2VlImageProcessor::load(dir.path()).unwrap_err();
    assert!(err.message.contains("patch_size"), "{err}");

    let err = QwenTokenizer::load(dir.path()).map(|_| ()).unwrap_err();
    assert!(err.message.contains("vocab.json"), "{err}");
    std::fs::write(dir.path().join("vocab.json"), "{}").unwrap();
    std::fs::write(dir.path().join("merges.txt"), "#version: 0.2\nbroken\n").unwrap();
    let err = QwenTokenizer::load(dir.path()).map(|_| ()).unwrap_err();
    assert!(err.message.contains("merges.txt"), "{err}");
}
