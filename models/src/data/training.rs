//! The training view of a dataset: every row needs a target (`image`) and a non-empty prompt;
//! `edit_image` may be absent (a LoRA trained without control images). The checks here are the
//! cheap ones (schema, files exist); decoding the images is [`super::check`]'s job. What to do
//! with bad rows (stop, or skip them and say so) is the caller's choice.

use super::problem::ProblemKind;
use super::rows::{bad_row, parse_record, BadRow, DatasetRow, RowError};
use super::source::read_records;
use crate::ModelError;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq)]
pub struct TrainRow {
    /// 0-based row position in the file.
    pub index: usize,
    /// 1-based line the row starts on.
    pub line: usize,
    /// "data.jsonl:12" (file name and line) for messages and cache manifests.
    pub source: String,
    pub prompt: String,
    /// The edited result the model learns to produce.
    pub target: PathBuf,
    /// Control images in order; empty for a row without inputs.
    pub inputs: Vec<PathBuf>,
    pub ref_gt: Option<PathBuf>,
    pub back_mask: Option<PathBuf>,
}

impl TrainRow {
    /// Target first, then the inputs.
    pub fn images(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.target.as_path()).chain(self.inputs.iter().map(PathBuf::as_path))
    }
}

/// Reads the rows a trainer or `qie cache` can use; the rest come back as [`BadRow`]s naming
/// file, line and what is wrong. A file that cannot be read at all is an error.
pub fn read_training_rows(path: &Path) -> Result<(Vec<TrainRow>, Vec<BadRow>), ModelError> {
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    for record in read_records(path)? {
        let source = row_source(path, record.line);
        match parse_record(&record, &base).and_then(|r| training_row(r, source)) {
            Ok(row) => rows.push(row),
            Err((kind, message)) => bad.push(bad_row(&record, kind, message)),
        }
    }
    Ok((rows, bad))
}

/// "data.jsonl:12": the dataset's file name and a 1-based line, for short messages.
pub fn row_source(dataset: &Path, line: usize) -> String {
    let name = dataset
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dataset.display().to_string());
    format!("{name}:{line}")
}

fn training_row(row: DatasetRow, source: String) -> Result<TrainRow, RowError> {
    let target = row.image.ok_or((
        ProblemKind::Malformed,
        "missing `image` (the target: the edited result the model should produce)".to_string(),
    ))?;
    if row.prompt.trim().is_empty() {
        return Err((ProblemKind::EmptyPrompt, "the prompt is empty".to_string()));
    }
    let row = TrainRow {
        index: row.index,
        line: row.line,
        source,
        prompt: row.prompt,
        target,
        inputs: row.edit_images,
        ref_gt: row.ref_gt,
        back_mask: row.back_mask,
    };
    let named = [("image", &row.target)]
        .into_iter()
        .chain(row.inputs.iter().map(|p| ("edit_image", p)))
        .chain(row.ref_gt.iter().map(|p| ("ref_gt", p)))
        .chain(row.back_mask.iter().map(|p| ("back_mask", p)));
    for (key, path) in named {
        check_exists(key, path)?;
    }
    Ok(row)
}

/// A missing file, with the comma-joined-paths mistake named when that is what it is.
fn check_exists(key: &str, path: &Path) -> Result<(), RowError> {
    if path.exists() {
        return Ok(());
    }
    let text = path.to_string_lossy();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    if name.contains(',') || text.contains(", ") {
        let parts: Vec<&str> = name
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        let advice = if key == "edit_image" {
            format!("write a list: [\"{}\"]", parts.join("\", \""))
        } else {
            format!("`{key}` takes one path; only `edit_image` takes a list")
        };
        return Err((
            ProblemKind::PathShape,
            format!(
                "`{key}`: {} does not exist; it looks like {} paths joined by commas ({advice})",
                path.display(),
                parts.len()
            ),
        ));
    }
    Err((
        ProblemKind::MissingFile,
        format!("`{key}`: {} does not exist", path.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path) {
        image::RgbImage::from_pixel(64, 64, image::Rgb([1, 2, 3]))
            .save(path)
            .unwrap();
    }

    #[test]
    fn training_rows_need_a_target_and_a_prompt() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["t.png", "a.png", "b.png"] {
            write_png(&dir.path().join(f));
        }
        let path = dir.path().join("data.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"prompt": "ok", "image": "t.png", "edit_image": ["a.png", "b.png"]}"#,
                "\n",
                r#"{"prompt": "no inputs", "image": "t.png"}"#,
                "\n",
                r#"{"prompt": "no target", "edit_image": "a.png"}"#,
                "\n",
                r#"{"prompt": "  ", "image": "t.png"}"#,
                "\n",
                r#"{"prompt": "joined", "image": "t.png", "edit_image": "a.png,b.png"}"#,
                "\n",
                r#"{"prompt": "list target", "image": ["t.png"]}"#,
                "\n",
                r#"{"prompt": "gone", "image": "t.png", "edit_image": "gone.png"}"#,
                "\n",
            ),
        )
        .unwrap();
        let (rows, bad) = read_training_rows(&path).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].source, "data.jsonl:1");
        assert_eq!(rows[0].inputs.len(), 2);
        assert!(rows[1].inputs.is_empty());
        let kinds: Vec<_> = bad.iter().map(|b| (b.line, b.kind)).collect();
        assert_eq!(
            kinds,
            [
                (3, ProblemKind::Malformed),
                (4, ProblemKind::EmptyPrompt),
                (5, ProblemKind::PathShape),
                (6, ProblemKind::PathShape),
                (7, ProblemKind::MissingFile),
            ]
        );
        assert!(bad[2].message.contains("joined by commas"), "{}", bad[2]);
        assert!(bad[4].to_string().contains("gone.png"), "{}", bad[4]);
    }
}
