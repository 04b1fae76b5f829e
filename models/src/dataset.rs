//! The project's edit dataset schema (DiffSynth-Studio's): a JSON array or JSONL file of rows
//! `{"prompt": ..., "image": target, "edit_image": input or [inputs], "ref_gt"?: ..., "back_mask"?: ...}`,
//! paths relative to the dataset file. Rows are parsed one by one so a bad row is reported and
//! skipped instead of failing the whole file.

use crate::ModelError;
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq)]
pub struct DatasetRow {
    /// 0-based position in the file (JSONL: line order, blank lines skipped).
    pub index: usize,
    pub prompt: String,
    /// Target image (training target; for inference only recorded).
    pub image: Option<PathBuf>,
    /// Input image(s), in order.
    pub edit_images: Vec<PathBuf>,
    pub ref_gt: Option<PathBuf>,
    pub back_mask: Option<PathBuf>,
}

impl DatasetRow {
    /// A file-name stem for outputs: the row index, plus the target's (or first input's) stem.
    pub fn output_stem(&self) -> String {
        let source = self.image.as_ref().or(self.edit_images.first());
        let stem = source
            .and_then(|p| p.file_stem())
            .map(|s| sanitize(&s.to_string_lossy()))
            .unwrap_or_default();
        if stem.is_empty() {
            format!("{:06}", self.index)
        } else {
            format!("{:06}_{stem}", self.index)
        }
    }

    /// Every image path the row names that does not exist.
    pub fn missing_files(&self) -> Vec<&Path> {
        self.edit_images
            .iter()
            .chain(self.back_mask.iter())
            .map(PathBuf::as_path)
            .filter(|p| !p.exists())
            .collect()
    }
}

/// A row that could not be used, with why.
#[derive(Clone, Debug, PartialEq)]
pub struct BadRow {
    pub index: usize,
    /// Where in the file ("data.jsonl:12" or "data.json[3]").
    pub location: String,
    pub message: String,
}

/// Reads every row; malformed rows come back as `BadRow`s, a malformed file is an error.
pub fn read_dataset(path: &Path) -> Result<(Vec<DatasetRow>, Vec<BadRow>), ModelError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelError::new(format!("{}: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let name = path.display().to_string();
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    let mut push = |index: usize, location: String, value: Result<Value, String>| match value
        .and_then(|v| parse_row(index, &v, &base))
    {
        Ok(row) => rows.push(row),
        Err(message) => bad.push(BadRow {
            index,
            location,
            message,
        }),
    };
    if text.trim_start().starts_with('[') {
        let values: Vec<Value> = serde_json::from_str(&text)
            .map_err(|e| ModelError::new(format!("{name}: not a JSON array of rows: {e}")))?;
        for (i, v) in values.into_iter().enumerate() {
            push(i, format!("{name}[{i}]"), Ok(v));
        }
    } else {
        let lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        for (index, (line_no, line)) in lines.enumerate() {
            let value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"));
            push(index, format!("{name}:{}", line_no + 1), value);
        }
    }
    Ok((rows, bad))
}

fn parse_row(index: usize, v: &Value, base: &Path) -> Result<DatasetRow, String> {
    let obj = v.as_object().ok_or("a row must be a JSON object")?;
    let prompt = match obj.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("`prompt` must be a string".into()),
        None => return Err("missing `prompt`".into()),
    };
    let path = |key: &str| -> Result<Option<PathBuf>, String> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(base.join(s))),
            Some(_) => Err(format!("`{key}` must be a non-empty path string")),
        }
    };
    let edit_images = match obj.get("edit_image") {
        Some(Value::String(s)) if !s.is_empty() => vec![base.join(s)],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|i| match i {
                Value::String(s) if !s.is_empty() => Ok(base.join(s)),
                _ => Err("`edit_image` entries must be path strings".to_string()),
            })
            .collect::<Result<_, _>>()?,
        None => return Err("missing `edit_image` (the input image or a list of them)".into()),
        Some(_) => return Err("`edit_image` must be a path or a non-empty list of paths".into()),
    };
    Ok(DatasetRow {
        index,
        prompt,
        image: path("image")?,
        edit_images,
        ref_gt: path("ref_gt")?,
        back_mask: path("back_mask")?,
    })
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_rows_good_and_bad() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"prompt": "红色", "image": "t/0.png", "edit_image": "in/0.png"}"#,
                "\n\n",
                r#"{"prompt": "two", "edit_image": ["a.png", "b.png"], "back_mask": "m.png"}"#,
                "\n",
                r#"{"edit_image": "x.png"}"#,
                "\n",
                "{not json\n",
                r#"{"prompt": "p", "edit_image": 3}"#,
                "\n"
            ),
        )
        .unwrap();
        let (rows, bad) = read_dataset(&path).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].edit_images, vec![dir.path().join("in/0.png")]);
        assert_eq!(rows[0].output_stem(), "000000_0");
        assert_eq!(rows[1].edit_images.len(), 2);
        assert_eq!(rows[1].index, 1);
        assert_eq!(rows[1].missing_files().len(), 3);
        assert_eq!(bad.len(), 3);
        assert!(bad[0].message.contains("missing `prompt`"), "{:?}", bad[0]);
        assert!(bad[0].location.ends_with("data.jsonl:4"), "{:?}", bad[0]);
        assert!(bad[1].message.contains("invalid JSON"));
        assert!(bad[2].message.contains("edit_image"));
    }

    #[test]
    fn json_array_and_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.json");
        std::fs::write(&path, r#"[{"prompt": "a", "edit_image": "a.png"}, 5]"#).unwrap();
        let (rows, bad) = read_dataset(&path).unwrap();
        assert_eq!((rows.len(), bad.len()), (1, 1));
        assert_eq!(bad[0].location, format!("{}[1]", path.display()));
        std::fs::write(&path, "[{").unwrap();
        assert!(read_dataset(&path).is_err());
        assert!(read_dataset(&dir.path().join("none.json")).is_err());
    }
}
