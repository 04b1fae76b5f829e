//! `qie cache`'s library on the bundled tiny pipelines (tests/fixtures/edit/{plus,edit}/model, CPU):
//! cached tensors equal what EditPipeline's own encoding gives for the same row; resume reuses
//! finished rows; shards merge on open; a truncated file, another model, other settings and bad
//! rows are refused with explanations.

use qie_models::cache::{plan_cache, Cache, CacheJob, CacheSettings, ModelIdentity, Shard};
use qie_models::data::SizeRule;
use qie_models::hub::model_paths_from_folder;
use qie_models::lora::LoraSet;
use qie_models::pipeline::{EditPipeline, EditSettings, Flavour};
use qie_models::preprocess::load_rgb;
use qie_models::ModelOptions;
use qie_runtime::Tensor;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/edit")
        .join(rel)
}

/// The fixtures shrink the pipelines' areas (see tests/fixtures/edit/*/settings.json).
const PLUS_VAE_AREA: usize = 16384;
const PLUS_VL_AREA: usize = 9216;

fn settings(flavour: Flavour) -> CacheSettings {
    CacheSettings {
        flavour,
        size: SizeRule {
            area: PLUS_VAE_AREA,
            max_pixels: None,
            buckets: false,
        },
        vl_area: match flavour {
            Flavour::Plus => PLUS_VL_AREA,
            Flavour::Edit => PLUS_VAE_AREA,
        },
        text_positions: "multimodal".into(),
        vl_resize: "torchvision".into(),
        precision: "f32".into(),
    }
}

fn pipeline(name: &str) -> EditPipeline {
    EditPipeline::load(
        model_paths_from_folder(&fixture(&format!("{name}/model"))).unwrap(),
        &ModelOptions::default(),
        &LoraSet::default(),
    )
    .unwrap()
}

fn plus() -> &'static EditPipeline {
    static P: OnceLock<EditPipeline> = OnceLock::new();
    P.get_or_init(|| pipeline("plus"))
}

fn identity(name: &str) -> ModelIdentity {
    ModelIdentity::of_model_dir(&fixture(&format!("{name}/model"))).unwrap()
}

/// A 3-row Plus dataset from the fixture images: two inputs, one input, no inputs.
fn plus_dataset(dir: &Path) -> PathBuf {
    for (from, to) in [
        ("plus/inputs/image_0.png", "a.png"),
        ("plus/inputs/image_1.png", "b.png"),
        ("plus/out.png", "t.png"),
        ("edit/inputs/image_0.png", "c.png"),
    ] {
        std::fs::copy(fixture(from), dir.join(to)).unwrap();
    }
    let path = dir.join("data.jsonl");
    std::fs::write(
        &path,
        concat!(
            r#"{"prompt": "Put the cat from Picture 1 next to the flower", "image": "t.png", "edit_image": ["a.png", "b.png"]}"#,
            "\n",
            r#"{"prompt": "把猫变成红色", "image": "c.png", "edit_image": "a.png"}"#,
            "\n",
            r#"{"prompt": "a character, no control image", "image": "b.png"}"#,
            "\n",
        ),
    )
    .unwrap();
    path
}

fn job(dataset: &Path, out: &Path, name: &str, flavour: Flavour) -> CacheJob {
    CacheJob {
        dataset: dataset.to_path_buf(),
        out: out.to_path_buf(),
        model: identity(name),
        settings: settings(flavour),
        resume: false,
        shard: None,
        skip_bad_rows: false,
    }
}

fn build(job: CacheJob, pipeline: &EditPipeline) -> qie_models::cache::CacheReport {
    let mut seen = Vec::new();
    let report = plan_cache(job)
        .unwrap()
        .run(pipeline.encoder(), &mut |done, total, source| {
            seen.push((done, total, source.to_string()))
        })
        .unwrap();
    // One progress call per encoded (or skipped) row, ending at total/total.
    if let Some((done, total, _)) = seen.last() {
        assert_eq!(done, total);
    }
    report
}

fn rows_grids(cache: &Cache, i: usize) -> Vec<[usize; 3]> {
    cache.manifest().rows[i].reference_grids.clone()
}

fn data(t: &Tensor) -> &[f32] {
    t.as_f32().unwrap()
}

fn edit_settings(prompt: &str, vl_area: usize) -> EditSettings {
    EditSettings {
        prompt: prompt.to_string(),
        negative_prompt: None,
        vl_area: Some(vl_area),
        vae_area: Some(PLUS_VAE_AREA),
        ..EditSettings::default()
    }
}

#[test]
fn cached_tensors_equal_the_pipelines_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = plus_dataset(dir.path());
    let out = dir.path().join("cache");
    let report = build(job(&dataset, &out, "plus", Flavour::Plus), plus());
    assert_eq!((report.written, report.reused), (3, 0));
    let cache = Cache::open(&out).unwrap();
    assert_eq!(cache.len(), 3);
    cache.check_compatible(&identity("plus")).unwrap();
    cache.check_settings(&settings(Flavour::Plus)).unwrap();

    let rows = [
        ("t.png", vec!["a.png", "b.png"]),
        ("c.png", vec!["a.png"]),
        ("b.png", vec![]),
    ];
    for (i, (target, inputs)) in rows.iter().enumerate() {
        let row = cache.load(i).unwrap();
        let entry = &cache.manifest().rows[i];
        assert_eq!(row.source, format!("data.jsonl:{}", i + 1));
        let images: Vec<_> = inputs
            .iter()
            .map(|p| load_rgb(dir.path().join(p)).unwrap())
            .collect();
        let prompt = entry.prompt.as_str();
        let expected_embeds = if images.is_empty() {
            plus().encode_text(&[], &[prompt]).unwrap().remove(0)
        } else {
            let enc = plus()
                .encode_inputs(&images, &edit_settings(prompt, PLUS_VL_AREA))
                .unwrap();
            assert_eq!(row.reference_grids, enc.ref_shapes, "row {i}");
            let refs = row.references.as_ref().expect("references");
            assert_eq!(refs.shape(), enc.image_latents.shape());
            assert_eq!(data(refs), data(&enc.image_latents), "row {i} references");
            enc.prompt_embeds
        };
        assert_eq!(
            row.prompt_embeds.shape(),
            expected_embeds.shape(),
            "row {i}"
        );
        assert_eq!(
            data(&row.prompt_embeds),
            data(&expected_embeds),
            "row {i} prompt"
        );
        assert_eq!(row.prompt_mask.len(), row.prompt_embeds.shape()[1]);
        // The target goes through the VAE exactly as an input image does at inference.
        let target_img = load_rgb(dir.path().join(target)).unwrap();
        let as_input = plus()
            .encode_inputs(&[target_img], &edit_settings("x", PLUS_VL_AREA))
            .unwrap();
        assert_eq!([row.target_grid], [as_input.ref_shapes[0]]);
        assert_eq!(
            data(&row.target),
            data(&as_input.image_latents),
            "row {i} target"
        );
        assert_eq!(row.target.shape()[2], 64);
    }
    assert!(cache.load(1).unwrap().references.is_some());
    assert!(cache.load(2).unwrap().references.is_none());
    assert!(cache.load(3).is_err());

    // Three different shapes: no batch mixes them.
    let keys = cache.shape_keys();
    assert_eq!(keys[0].references, rows_grids(&cache, 0));
    let batches = qie_models::data::batches(&keys, 2, 0, 0, false);
    assert_eq!(batches.len(), 3, "{batches:?}");
}

#[test]
fn the_edit_flavour_matches_too() {
    let edit = pipeline("edit");
    let dir = tempfile::tempdir().unwrap();
    let dataset = plus_dataset(dir.path());
    // Edit takes exactly one input: rows 0 and 2 are refused, row 1 is cached.
    let mut j = job(&dataset, &dir.path().join("cache"), "edit", Flavour::Edit);
    j.skip_bad_rows = true;
    let report = build(j, &edit);
    assert_eq!(report.written, 1);
    let skipped: Vec<_> = report.skipped.iter().map(|s| s.source.as_str()).collect();
    assert_eq!(skipped, ["data.jsonl:1", "data.jsonl:3"]);
    assert!(
        report.skipped[0].reason.contains("exactly one input"),
        "{:?}",
        report.skipped
    );
    let cache = Cache::open(&dir.path().join("cache")).unwrap();
    let row = cache.load(0).unwrap();
    let img = load_rgb(dir.path().join("a.png")).unwrap();
    let enc = edit
        .encode_inputs(
            &[img],
            &edit_settings(&cache.manifest().rows[0].prompt, PLUS_VAE_AREA),
        )
        .unwrap();
    assert_eq!(data(&row.prompt_embeds), data(&enc.prompt_embeds));
    assert_eq!(
        data(row.references.as_ref().unwrap()),
        data(&enc.image_latents)
    );
}

#[test]
fn resume_reuses_finished_rows() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = plus_dataset(dir.path());
    let out = dir.path().join("cache");
    build(job(&dataset, &out, "plus", Flavour::Plus), plus());
    let first = Cache::open(&out).unwrap();
    let before = data(&first.load(1).unwrap().prompt_embeds).to_vec();

    // Without --resume an existing cache is not overwritten.
    let err = plan_cache(job(&dataset, &out, "plus", Flavour::Plus))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--resume"), "{err}");

    let mut j = job(&dataset, &out, "plus", Flavour::Plus);
    j.resume = true;
    let plan = plan_cache(j).unwrap();
    assert_eq!((plan.reused, plan.remaining()), (3, 0));
    plan.finish().unwrap();

    // A lost row file is encoded again; the others are kept.
    std::fs::remove_file(out.join(&first.manifest().rows[1].file)).unwrap();
    let mut j = job(&dataset, &out, "plus", Flavour::Plus);
    j.resume = true;
    let report = build(j, plus());
    assert_eq!((report.written, report.reused), (1, 2));
    let again = Cache::open(&out).unwrap();
    assert_eq!(again.manifest().rows, first.manifest().rows);
    assert_eq!(data(&again.load(1).unwrap().prompt_embeds), &before[..]);

    // A row whose prompt changed gets a new file instead of the stale one.
    let text = std::fs::read_to_string(&dataset).unwrap();
    std::fs::write(&dataset, text.replace("把猫变成红色", "把猫变成蓝色")).unwrap();
    let mut j = job(&dataset, &out, "plus", Flavour::Plus);
    j.resume = true;
    let plan = plan_cache(j).unwrap();
    assert_eq!((plan.reused, plan.remaining()), (2, 1));

    // Resuming with other settings is refused, naming them.
    let mut j = job(&dataset, &out, "plus", Flavour::Plus);
    j.resume = true;
    j.settings.size.buckets = true;
    let err = plan_cache(j).err().unwrap().to_string();
    assert!(
        err.contains("cannot resume") && err.contains("buckets: false vs true"),
        "{err}"
    );
}

#[test]
fn shards_merge_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = plus_dataset(dir.path());
    let whole = dir.path().join("whole");
    build(job(&dataset, &whole, "plus", Flavour::Plus), plus());
    let sharded = dir.path().join("sharded");
    let shard = |index| {
        let mut j = job(&dataset, &sharded, "plus", Flavour::Plus);
        j.shard = Some(Shard { index, count: 2 });
        j
    };
    let r0 = build(shard(0), plus());
    assert_eq!(r0.written, 2, "rows 0 and 2");
    let err = Cache::open(&sharded).err().unwrap().to_string();
    assert!(err.contains("manifest.shard-1-of-2.json"), "{err}");
    build(shard(1), plus());
    let merged = Cache::open(&sharded).unwrap();
    let single = Cache::open(&whole).unwrap();
    assert_eq!(merged.manifest().rows, single.manifest().rows);
    for i in 0..3 {
        assert_eq!(
            data(&merged.load(i).unwrap().target),
            data(&single.load(i).unwrap().target)
        );
    }
}

#[test]
fn damaged_files_other_models_and_bad_rows_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = plus_dataset(dir.path());
    let out = dir.path().join("cache");
    build(job(&dataset, &out, "plus", Flavour::Plus), plus());
    let cache = Cache::open(&out).unwrap();

    let file = out.join(&cache.manifest().rows[0].file);
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let err = cache.load(0).err().unwrap().to_string();
    assert!(err.contains(&cache.manifest().rows[0].file), "{err}");

    let err = cache
        .check_compatible(&identity("edit"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("another model")
            && err.contains("QwenImageEditPlusPipeline vs QwenImageEditPipeline"),
        "{err}"
    );
    let err = cache
        .check_settings(&settings(Flavour::Edit))
        .unwrap_err()
        .to_string();
    assert!(err.contains("flavour: Plus vs Edit"), "{err}");

    // Bad rows stop the run before anything is encoded, unless skipped (and then recorded).
    std::fs::write(
        &dataset,
        format!(
            "{}\n{}\n",
            r#"{"prompt": "ok", "image": "t.png", "edit_image": "a.png"}"#,
            r#"{"prompt": "gone", "image": "t.png", "edit_image": "missing.png"}"#
        ),
    )
    .unwrap();
    let out2 = dir.path().join("cache2");
    let err = plan_cache(job(&dataset, &out2, "plus", Flavour::Plus))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("data.jsonl:2")
            && err.contains("missing.png")
            && err.contains("--skip-bad-rows"),
        "{err}"
    );
    let mut j = job(&dataset, &out2, "plus", Flavour::Plus);
    j.skip_bad_rows = true;
    let report = build(j, plus());
    assert_eq!(report.written, 1);
    let cache = Cache::open(&out2).unwrap();
    assert_eq!(cache.manifest().skipped.len(), 1);
    assert!(cache.manifest().skipped[0].reason.contains("missing.png"));
    assert_eq!(cache.manifest().skipped[0].source, "data.jsonl:2");
    assert_eq!(cache.manifest().dataset.rows, 2);

    // An interrupted cache is not opened for training.
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out2.join("manifest.json")).unwrap())
            .unwrap();
    m["complete"] = false.into();
    std::fs::write(out2.join("manifest.json"), m.to_string()).unwrap();
    let err = Cache::open(&out2).err().unwrap().to_string();
    assert!(
        err.contains("incomplete") && err.contains("--resume"),
        "{err}"
    );
}

#[test]
fn buckets_and_max_pixels_set_the_grids() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = plus_dataset(dir.path());
    let out = dir.path().join("cache");
    let mut j = job(&dataset, &out, "plus", Flavour::Plus);
    j.settings.size.buckets = true;
    j.settings.size.max_pixels = Some(12000);
    let rule = j.settings.size.clone();
    build(j, plus());
    let cache = Cache::open(&out).unwrap();
    let grid = |name: &str| {
        let img = load_rgb(dir.path().join(name)).unwrap();
        let (w, h) = rule.size_for(img.width(), img.height());
        assert!(w * h <= 12000, "{name}: {w}x{h}");
        [1, h as usize / 16, w as usize / 16]
    };
    let expected = [
        (grid("t.png"), vec![grid("a.png"), grid("b.png")]),
        (grid("c.png"), vec![grid("a.png")]),
        (grid("b.png"), vec![]),
    ];
    for (i, (target, refs)) in expected.iter().enumerate() {
        let row = cache.load(i).unwrap();
        assert_eq!(&row.target_grid, target, "row {i}");
        assert_eq!(&row.reference_grids, refs, "row {i}");
        assert_eq!(row.target.shape()[1], target[1] * target[2]);
    }
    // t.png (96x192) and b.png (48x96) are both 1:2: one bucket, one grid.
    assert_eq!(grid("t.png"), grid("b.png"));
}
