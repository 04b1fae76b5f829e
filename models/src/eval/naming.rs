//! Which files a dataset row is scored with: its ground truth (`ref_gt`, else `image`; or the
//! file of that name in `--gt-dir`) and its prediction (`--pred-name` in `--pred-dir`, or by
//! default what `qie infer` writes, then `{stem}.png`, then `{stem}.jpg`).

use std::path::{Path, PathBuf};

use crate::data::rows::DatasetRow;
use crate::ModelError;

/// A `--pred-name` template: literal text with `{index}`, `{index:0N}` (zero-padded to N
/// digits), `{stem}` (the ground truth's file stem) and `{name}` (its file name).
#[derive(Clone, Debug, PartialEq)]
pub struct NameTemplate {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    Index { width: usize },
    Stem,
    Name,
}

impl NameTemplate {
    pub fn parse(text: &str) -> Result<NameTemplate, ModelError> {
        let bad = |m: String| ModelError::new(format!("--pred-name {text:?}: {m}"));
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| bad("a `{` is not closed".into()))?;
            let field = &rest[open + 1..open + close];
            parts.push(match field {
                "index" => Part::Index { width: 0 },
                "stem" => Part::Stem,
                "name" => Part::Name,
                f if f.starts_with("index:0") => {
                    let width: usize = f["index:0".len()..]
                        .parse()
                        .ok()
                        .filter(|w| (1..=20).contains(w))
                        .ok_or_else(|| bad(format!("`{{{f}}}`: the width must be 1..=20")))?;
                    Part::Index { width }
                }
                f => {
                    return Err(bad(format!(
                    "unknown field `{{{f}}}` (known: {{index}}, {{index:06}}, {{stem}}, {{name}})"
                )))
                }
            });
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(bad("a `}` has no `{`".into()));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if parts.is_empty() {
            return Err(bad("empty template".into()));
        }
        Ok(NameTemplate { parts })
    }

    /// The file name for row `index` whose ground truth is `gt`.
    pub fn render(&self, index: usize, gt: &Path) -> String {
        let stem = gt
            .file_stem()
            .map(|s| s.to_string_lossy())
            .unwrap_or_default();
        let name = gt
            .file_name()
            .map(|s| s.to_string_lossy())
            .unwrap_or_default();
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Index { width } => out.push_str(&format!("{index:0width$}")),
                Part::Stem => out.push_str(&stem),
                Part::Name => out.push_str(&name),
            }
        }
        out
    }
}

/// The ground truth of `row`: `ref_gt`, else `image`; with `gt_dir`, that file's name there.
pub fn ground_truth(row: &DatasetRow, gt_dir: Option<&Path>) -> Option<PathBuf> {
    let gt = row.ref_gt.as_ref().or(row.image.as_ref())?;
    Some(match gt_dir {
        Some(dir) => dir.join(gt.file_name()?),
        None => gt.clone(),
    })
}

/// The prediction files tried for `row`, in order: the template's, or `qie infer`'s name, then
/// `{stem}.png` and `{stem}.jpg`.
pub fn prediction_candidates(
    row: &DatasetRow,
    gt: &Path,
    pred_dir: &Path,
    template: Option<&NameTemplate>,
) -> Vec<PathBuf> {
    if let Some(t) = template {
        return vec![pred_dir.join(t.render(row.index, gt))];
    }
    let stem = gt
        .file_stem()
        .map(|s| s.to_string_lossy())
        .unwrap_or_default();
    vec![
        pred_dir.join(format!("{}.png", row.output_stem())),
        pred_dir.join(format!("{stem}.png")),
        pred_dir.join(format!("{stem}.jpg")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_every_field() {
        let t = NameTemplate::parse("out_{index:06}_{stem}-{index}.png").unwrap();
        assert_eq!(
            t.render(7, Path::new("a/b/cat.jpg")),
            "out_000007_cat-7.png"
        );
        let t = NameTemplate::parse("{name}").unwrap();
        assert_eq!(t.render(0, Path::new("x/dog.webp")), "dog.webp");
    }

    #[test]
    fn bad_templates_name_the_problem() {
        for (t, want) in [
            ("{idx}.png", "unknown field"),
            ("{index.png", "not closed"),
            ("a}.png", "has no"),
            ("{index:0}.png", "width"),
            ("", "empty"),
        ] {
            let e = NameTemplate::parse(t).unwrap_err().to_string();
            assert!(e.contains(want), "{t}: {e}");
        }
    }
}
