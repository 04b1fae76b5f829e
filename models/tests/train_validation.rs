//! Validation edits during a LoRA run on the tiny Plus pipeline (CPU): every 2 steps and after
//! the last, the named rows' images and grid land under validation/step-<step>/ and in
//! TensorBoard; the last validation equals an edit with the exported adapter applied on the fly
//! (so it used the weights being trained), and differs from the base model's edit. Bad
//! `[validation]` values are refused at prepare time, naming the key.

mod common;

use common::{lora_config, make_cache, model_paths, VAE_AREA, VL_AREA};
use qie_models::lora::{load_dit_with_loras_on_the_fly, LoraSet, DIFFUSERS_FILE};
use qie_models::pipeline::{EditOutput, EditSettings, EditStages};
use qie_models::preprocess::load_rgb;
use qie_models::qwen_image::{DitOptions, QwenImageDit};
use qie_models::tensorboard::{read_events, ValueKind};
use qie_models::train::config::ValidationSection;
use qie_models::train::run::TrainRun;
use qie_models::ModelOptions;
use std::collections::BTreeSet;
use std::path::Path;

fn section(every: u64, rows: Vec<usize>) -> ValidationSection {
    ValidationSection {
        every,
        rows,
        steps: 2,
        cfg: 4.0,
        seed: 7,
    }
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn max_pixel_diff(a: &image::RgbImage, b: &image::RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap()
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// `qie edit` of cache row 0 ("make it blue" on a.png) at its cached target size, written out
/// flag by flag rather than taken from the validation code.
fn edit_row0(dit: &QwenImageDit, stages: &EditStages, width: usize, height: usize) -> EditOutput {
    let settings = EditSettings {
        prompt: "make it blue".into(),
        negative_prompt: Some(" ".into()),
        steps: 2,
        cfg: 4.0,
        seed: 7,
        width: Some(width),
        height: Some(height),
        vae_area: Some(VAE_AREA),
        vl_area: Some(VL_AREA),
        ..EditSettings::default()
    };
    let input = load_rgb(common::fixture("inputs/image_0.png")).unwrap();
    stages
        .edit(dit, &[input], &settings, None, &mut |_, _| {})
        .unwrap()
}

#[test]
fn validation_edits_use_the_weights_being_trained() {
    let dir = tempfile::tempdir().unwrap();
    let cache = make_cache(dir.path());
    let out = dir.path().join("run");
    let mut config = lora_config(&cache, &out, 5);
    config.validation = Some(section(2, vec![0, 2]));
    let mut run = TrainRun::prepare(config, None, None).unwrap();
    while !run.is_done() {
        run.step_once().unwrap();
    }

    // Every 2 steps and after the last one (5), each with both rows and the grid.
    let validation = out.join("validation");
    assert_eq!(
        names(&validation),
        ["step-2", "step-4", "step-5"].map(String::from).into()
    );
    let files: BTreeSet<String> = ["row-0.png", "row-2.png", "grid.png"]
        .map(String::from)
        .into();
    for step in [2, 4, 5] {
        assert_eq!(names(&validation.join(format!("step-{step}"))), files);
    }
    let png = |step: u64, name: &str| {
        image::open(validation.join(format!("step-{step}")).join(name))
            .unwrap()
            .to_rgb8()
    };
    // The grid: each row's control image scaled to the output's height, then the output.
    let (row0, row2) = (png(5, "row-0.png"), png(5, "row-2.png"));
    let grid = png(5, "grid.png");
    assert_eq!(grid.height(), row0.height() + row2.height());
    assert!(grid.width() > row0.width().max(row2.width()));
    // Training between two validations changes what they show.
    assert!(max_pixel_diff(&png(2, "row-0.png"), &row0) > 0);

    // TensorBoard: one image per row per validation, the PNGs written to disk.
    let tb = std::fs::read_dir(out.join("tensorboard"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut logged = Vec::new();
    for event in read_events(&tb).unwrap() {
        for v in &event.values {
            if let ValueKind::Image(img) = &v.kind {
                let decoded = image::load_from_memory(&img.encoded).unwrap().to_rgb8();
                let name = v.tag.strip_prefix("validation/").unwrap();
                assert_eq!(decoded, png(event.step as u64, &format!("{name}.png")));
                logged.push((event.step, v.tag.clone()));
            }
        }
    }
    let expected: Vec<(i64, String)> = [2, 4, 5]
        .iter()
        .flat_map(|&s| ["validation/row-0", "validation/row-2"].map(|t| (s, t.to_string())))
        .collect();
    assert_eq!(logged, expected);

    // The last validation, again, as values; then the adapter the run exports.
    let last = run.validate().unwrap();
    assert_eq!(last.iter().map(|v| v.row).collect::<Vec<_>>(), [0, 2]);
    assert_eq!(last[0].output.image, row0, "a validation repeats exactly");
    let written = run.finish().unwrap();
    let adapter = out.join(DIFFUSERS_FILE);
    assert!(written.contains(&adapter), "{written:?}");

    // `qie edit`'s loop with that adapter applied on the fly equals the validation edit.
    let paths = model_paths();
    let stages = EditStages::load(&paths, &ModelOptions::default()).unwrap();
    let loras = LoraSet::from_specs(&[adapter.to_str().unwrap()]).unwrap();
    let (trained, _) =
        load_dit_with_loras_on_the_fly(&paths.transformer, &DitOptions::default(), &loras).unwrap();
    let (w, h) = (last[0].output.width, last[0].output.height);
    let ours = last[0].output.latents.to_f32_vec();
    let with_adapter = edit_row0(&trained, &stages, w, h);
    let err = rel_l2(&ours, &with_adapter.latents.to_f32_vec());
    assert!(
        err <= 1e-5,
        "validation vs the exported adapter: rel-L2 {err:.2e}"
    );
    assert!(max_pixel_diff(&row0, &with_adapter.image) <= 1);
    // The cached target size of row 0 (t.png at the VAE area).
    let target = qie_models::cache::Cache::open(&cache)
        .unwrap()
        .manifest()
        .rows[0]
        .target_grid;
    assert_eq!((w, h), (target[2] * 16, target[1] * 16));

    // The base model's edit is far from it: the test sees the trained weights.
    let base = QwenImageDit::load(&paths.transformer, &DitOptions::default()).unwrap();
    let untrained = edit_row0(&base, &stages, w, h);
    let moved = rel_l2(&ours, &untrained.latents.to_f32_vec());
    eprintln!("rel-L2 vs the exported adapter {err:.2e}, vs the base model {moved:.2e}");
    assert!(
        moved > 1e-3,
        "the LoRA barely changed the edit: rel-L2 {moved:.2e}"
    );
}

#[test]
fn bad_validation_values_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cache = make_cache(dir.path());
    let cases: [(ValidationSection, &str); 6] = [
        (
            section(2, vec![0, 4]),
            "[validation] rows: row 4 is past the end",
        ),
        (section(0, vec![0]), "[validation] every"),
        (section(2, vec![]), "[validation] rows is empty"),
        (
            ValidationSection {
                steps: 0,
                ..section(2, vec![0])
            },
            "[validation] steps",
        ),
        (
            ValidationSection {
                cfg: f32::NAN,
                ..section(2, vec![0])
            },
            "[validation] cfg",
        ),
        (
            section(2, vec![3]),
            "cache row 3 (data.jsonl:4) has no control image",
        ),
    ];
    for (i, (validation, needle)) in cases.into_iter().enumerate() {
        let out = dir.path().join(format!("run{i}"));
        let mut config = lora_config(&cache, &out, 2);
        config.validation = Some(validation);
        let err = match TrainRun::prepare(config, None, None) {
            Ok(_) => panic!("{needle}: prepared"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(needle), "{needle}: {err}");
        assert!(
            !out.exists(),
            "{needle}: nothing is written before the checks pass"
        );
    }

    // A dataset edited since `qie cache`: the rows no longer match.
    let data = dir.path().join("data.jsonl");
    let text = std::fs::read_to_string(&data).unwrap();
    std::fs::write(&data, text.replace("make it blue", "make it green")).unwrap();
    let mut config = lora_config(&cache, &dir.path().join("changed"), 2);
    config.validation = Some(section(2, vec![0]));
    let err = TrainRun::prepare(config, None, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cache row 0") && err.contains("changed"),
        "{err}"
    );
}
