//! `qie eval`'s pixel metrics (models/src/eval) against numpy / Pillow / scikit-image values from
//! tools/golden/make_eval_fixtures.py: predictions of other sizes (PIL bicubic to the ground
//! truth), masks of other sizes (PIL nearest), identical images, an image below the SSIM window,
//! a missing prediction. Every value within 1e-9 (both sides are f64 on the same bytes).

use std::path::PathBuf;

use qie_models::data::read_eval_rows;
use qie_models::eval::{score_row, EvalSettings, MaskMode, Metric, RowScore};
use qie_tests::fixture;
use serde_json::Value;

fn settings(invert: bool, mode: MaskMode) -> EvalSettings {
    EvalSettings {
        metrics: Metric::ALL.to_vec(),
        pred_dir: fixture("eval/pred"),
        gt_dir: None,
        pred_name: None,
        mask_invert: invert,
        mask_mode: mode,
    }
}

fn expected() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("eval/expected.json")).unwrap();
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn check(score: &RowScore, want: &Value, what: &str) {
    for (key, v) in want.as_object().unwrap() {
        let m: Metric = key.parse().unwrap();
        let got = score.values.get(&m).copied().flatten();
        match v.as_f64() {
            None => assert_eq!(got, None, "{what} {key}: expected undefined"),
            Some(w) => {
                let g = got.unwrap_or_else(|| panic!("{what} {key}: no value"));
                assert!((g - w).abs() <= 1e-9, "{what} {key}: {g} vs {w}");
            }
        }
    }
}

#[test]
fn pixel_metrics_match_numpy_pillow_and_skimage() {
    let (rows, bad) = read_eval_rows(&fixture("eval/data.jsonl")).unwrap();
    assert!(bad.is_empty());
    let want = expected();
    for (invert, mode, key) in [
        (false, MaskMode::Select, "select"),
        (true, MaskMode::Select, "select_inverted"),
        (false, MaskMode::Multiply, "multiply"),
    ] {
        let s = settings(invert, mode);
        let mut scored = 0;
        for row in &rows {
            let Some(w) = want.iter().find(|w| w["index"] == row.index) else {
                let e = score_row(row, &s).unwrap_err();
                assert_eq!(e.what, "prediction", "row {}", row.index);
                assert!(e.message.contains("tried"), "{}", e.message);
                continue;
            };
            let score = score_row(row, &s).unwrap();
            let name = w["name"].as_str().unwrap();
            check(&score, &w["whole"], name);
            match w.get(key) {
                Some(bg) => check(&score, bg, &format!("{name} {key}")),
                None => assert!(
                    !score.values.contains_key(&Metric::BgL1),
                    "{name}: no mask, no bg metrics"
                ),
            }
            scored += 1;
        }
        assert_eq!(scored, want.len());
    }
}

#[test]
fn gt_dir_and_templates_choose_the_files() {
    let (rows, _) = read_eval_rows(&fixture("eval/data.jsonl")).unwrap();
    let mut s = settings(false, MaskMode::Select);
    s.gt_dir = Some(fixture("eval/pred"));
    s.pred_name = Some(qie_models::eval::NameTemplate::parse("{stem}.png").unwrap());
    // ground truth taken from the predictions folder: every defined error is zero
    let score = score_row(&rows[0], &s).unwrap();
    assert_eq!(score.gt, fixture("eval/pred/cat.png"));
    assert_eq!(score.values[&Metric::L1], Some(0.0));
    assert_eq!(score.values[&Metric::Psnr], None);
    s.pred_name = Some(qie_models::eval::NameTemplate::parse("{index:03}.png").unwrap());
    let e = score_row(&rows[0], &s).unwrap_err();
    assert_eq!(e.path, fixture("eval/pred").join("000.png"));
    let _: PathBuf = e.path;
}
