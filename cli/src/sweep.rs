//! `qie eval --runs PATTERN`: the run folders a pattern matches, and one table over their
//! evaluations with the `run.json` settings (written by `qie infer`) that differ between runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qie_models::eval::Metric;
use serde_json::{json, Map, Value};

use crate::cmd_eval::RunResult;
use crate::report::tables::csv_field;

/// The folders matching `pattern`, sorted; an error when there are none.
pub fn run_folders(pattern: &str) -> Result<Vec<PathBuf>, String> {
    let paths = glob::glob(pattern).map_err(|e| format!("--runs {pattern:?}: {e}"))?;
    let mut dirs: Vec<PathBuf> = paths
        .filter_map(Result::ok)
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(format!("--runs {pattern:?}: no folder matches"));
    }
    Ok(dirs)
}

/// `run.json` flattened to `a.b` keys (arrays and scalars as JSON text); empty when absent.
fn run_settings(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(text) = std::fs::read_to_string(dir.join("run.json")) else {
        return out;
    };
    let Ok(v) = serde_json::from_str::<Value>(&text) else {
        return out;
    };
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, x, out);
                }
            }
            Value::String(s) => {
                out.insert(prefix.to_string(), s.clone());
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    walk("", &v, &mut out);
    out
}

pub struct Sweep {
    pub json: String,
    pub csv: String,
    pub text: String,
}

pub fn table(results: &[(PathBuf, RunResult)], metrics: &[Metric], rows: usize) -> Sweep {
    let settings: Vec<BTreeMap<String, String>> =
        results.iter().map(|(d, _)| run_settings(d)).collect();
    // the keys whose value is not the same in every run
    let mut keys: Vec<String> = settings.iter().flat_map(|s| s.keys().cloned()).collect();
    keys.sort();
    keys.dedup();
    keys.retain(|k| {
        let first = settings[0].get(k);
        settings.iter().any(|s| s.get(k) != first)
    });
    let mut header = vec!["run".to_string()];
    header.extend(keys.iter().cloned());
    header.extend(metrics.iter().map(|m| m.name().to_string()));
    header.extend(["scored".to_string(), "missing".to_string()]);
    let mut lines = Vec::new();
    let mut objects = Vec::new();
    for ((dir, r), s) in results.iter().zip(&settings) {
        let mut cells = vec![dir.display().to_string()];
        let mut o = Map::new();
        o.insert("run".into(), json!(dir.display().to_string()));
        let mut set = Map::new();
        for k in &keys {
            let v = s.get(k).cloned().unwrap_or_default();
            set.insert(k.clone(), json!(v));
            cells.push(v);
        }
        o.insert("settings".into(), Value::Object(set));
        let mut means = Map::new();
        for m in metrics {
            let st = r.summary[m];
            let mean = (st.n > 0).then_some(st.mean);
            cells.push(mean.map_or(String::new(), |x| format!("{x:.6}")));
            means.insert(
                m.name().into(),
                json!({"mean": mean, "std": (st.n > 0).then_some(st.std), "n": st.n}),
            );
        }
        o.insert("summary".into(), Value::Object(means));
        o.insert("scored".into(), json!(r.scored));
        o.insert("missing".into(), json!(r.missing));
        cells.push(r.scored.to_string());
        cells.push(r.missing.to_string());
        lines.push(cells);
        objects.push(Value::Object(o));
    }
    let csv = std::iter::once(&header)
        .chain(&lines)
        .map(|cells| {
            cells
                .iter()
                .map(|c| csv_field(c))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let widths: Vec<usize> = (0..header.len())
        .map(|j| {
            std::iter::once(&header)
                .chain(&lines)
                .map(|l| l[j].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = format!("{} runs, {rows} dataset rows\n", results.len());
    for cells in std::iter::once(&header).chain(&lines) {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        text.push_str(padded.join("  ").trim_end());
        text.push('\n');
    }
    let json = serde_json::to_string_pretty(&json!({"runs": objects, "rows": rows}))
        .expect("a JSON value serialises");
    Sweep { json, csv, text }
}
