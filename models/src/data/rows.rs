//! The project's edit dataset schema (DiffSynth-Studio's): rows
//! `{"prompt": ..., "image": target, "edit_image": input or [inputs], "ref_gt"?: ..., "back_mask"?: ...}`
//! in a JSON array, a JSONL file or a `metadata.csv`, paths relative to the dataset file. Rows
//! are parsed one by one so a bad row is reported and skipped instead of failing the whole file.
//! [`read_dataset`] is the inference view (`edit_image` required); the training view is
//! [`super::read_training_rows`].

use super::problem::ProblemKind;
use super::source::{read_records, RawRecord};
use crate::ModelError;
use serde_json::{Map, Value};
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq)]
pub struct DatasetRow {
    /// 0-based position in the file (JSONL: line order, blank lines skipped).
    pub index: usize,
    /// 1-based line the row starts on.
    pub line: usize,
    pub prompt: String,
    /// Target image (training target; for inference only recorded).
    pub image: Option<PathBuf>,
    /// Input image(s), in order.
    pub edit_images: Vec<PathBuf>,
    pub ref_gt: Option<PathBuf>,
    pub back_mask: Option<PathBuf>,
    /// A caption of the expected result (MagicBrush's `output_caption`), for CLIP-T.
    pub output_caption: Option<String>,
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
    /// 1-based line the row starts on (for a JSON array, the element's first line).
    pub line: usize,
    pub kind: ProblemKind,
    pub message: String,
}

impl BadRow {
    /// "data.jsonl:12" as is; "data.json[3] (line 5)" for array elements.
    pub fn place(&self) -> String {
        place(&self.location, self.line)
    }
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place(), self.message)
    }
}

/// A location with the line added when the location does not already end in it.
pub(crate) fn place(location: &str, line: usize) -> String {
    if location.ends_with(']') {
        format!("{location} (line {line})")
    } else {
        location.to_string()
    }
}

/// Reads every row; malformed rows come back as `BadRow`s, a malformed file is an error.
/// A UTF-8 byte-order mark (Windows editors write one) is skipped. In JSONL a line that is not
/// UTF-8 is a bad row like any other; a JSON array (and a CSV file) must be UTF-8 throughout.
pub fn read_dataset(path: &Path) -> Result<(Vec<DatasetRow>, Vec<BadRow>), ModelError> {
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    for record in read_records(path)? {
        match parse_record(&record, &base).and_then(|row| {
            if row.edit_images.is_empty() {
                Err(malformed(
                    "missing `edit_image` (the input image or a list of them)",
                ))
            } else {
                Ok(row)
            }
        }) {
            Ok(row) => rows.push(row),
            Err((kind, message)) => bad.push(bad_row(&record, kind, message)),
        }
    }
    Ok((rows, bad))
}

/// Reads every row for scoring (`qie eval`): `edit_image` may be absent, a ground truth
/// (`ref_gt` or `image`) may not.
pub fn read_eval_rows(path: &Path) -> Result<(Vec<DatasetRow>, Vec<BadRow>), ModelError> {
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    for record in read_records(path)? {
        match parse_record(&record, &base).and_then(|row| {
            if row.ref_gt.is_none() && row.image.is_none() {
                Err(malformed(
                    "no ground truth to score against: give `ref_gt` or `image`",
                ))
            } else {
                Ok(row)
            }
        }) {
            Ok(row) => rows.push(row),
            Err((kind, message)) => bad.push(bad_row(&record, kind, message)),
        }
    }
    Ok((rows, bad))
}

/// What is wrong with a row, before it becomes a [`BadRow`].
pub(crate) type RowError = (ProblemKind, String);

fn malformed(message: impl Into<String>) -> RowError {
    (ProblemKind::Malformed, message.into())
}

fn path_shape(message: String) -> RowError {
    (ProblemKind::PathShape, message)
}

pub(crate) fn bad_row(record: &RawRecord, kind: ProblemKind, message: String) -> BadRow {
    BadRow {
        index: record.index,
        location: record.location.clone(),
        line: record.line,
        kind,
        message,
    }
}

/// One record to a row; `edit_image` may be absent here (empty list), callers decide.
pub(crate) fn parse_record(record: &RawRecord, base: &Path) -> Result<DatasetRow, RowError> {
    let v = record.value.as_ref().map_err(|e| malformed(e.clone()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| malformed("a row must be a JSON object"))?;
    let prompt = match obj.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(malformed("`prompt` must be a string")),
        None => return Err(malformed("missing `prompt`")),
    };
    Ok(DatasetRow {
        index: record.index,
        line: record.line,
        prompt,
        image: single_path(obj, "image", base)?,
        edit_images: input_paths(obj, base)?,
        ref_gt: single_path(obj, "ref_gt", base)?,
        back_mask: single_path(obj, "back_mask", base)?,
        output_caption: match obj.get("output_caption") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(malformed("`output_caption` must be a string")),
        },
    })
}

fn single_path(
    obj: &Map<String, Value>,
    key: &str,
    base: &Path,
) -> Result<Option<PathBuf>, RowError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(base.join(s))),
        Some(Value::Array(items)) => Err(path_shape(format!(
            "`{key}` must be one path, got a list of {} (only `edit_image` takes a list)",
            items.len()
        ))),
        Some(_) => Err(malformed(format!(
            "`{key}` must be a non-empty path string"
        ))),
    }
}

fn input_paths(obj: &Map<String, Value>, base: &Path) -> Result<Vec<PathBuf>, RowError> {
    match obj.get("edit_image") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if !s.is_empty() => Ok(vec![base.join(s)]),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) if !s.is_empty() => Ok(base.join(s)),
                Value::Array(_) => Err(path_shape(format!(
                    "`edit_image` entry {i} is itself a list; write one flat list of paths"
                ))),
                _ => Err(malformed("`edit_image` entries must be path strings")),
            })
            .collect(),
        Some(_) => Err(malformed(
            "`edit_image` must be a path or a non-empty list of paths",
        )),
    }
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

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let row = r#"{"prompt": "a", "edit_image": "a.png"}"#;
        for (file, body) in [
            ("data.jsonl", format!("{row}\n{row}\n")),
            ("data.json", format!("[{row}, {row}]")),
        ] {
            let path = dir.path().join(file);
            let mut bytes = vec![0xEF, 0xBB, 0xBF];
            bytes.extend(body.as_bytes());
            std::fs::write(&path, bytes).unwrap();
            let (rows, bad) = read_dataset(&path).unwrap();
            assert_eq!((rows.len(), bad.len()), (2, 0), "{file}: {bad:?}");
            assert_eq!(rows[0].prompt, "a");
        }
        let path = dir.path().join("utf16.jsonl");
        std::fs::write(&path, [0xFF, 0xFE, b'{', 0]).unwrap();
        let err = read_dataset(&path).unwrap_err().to_string();
        assert!(
            err.contains("utf16.jsonl") && err.contains("UTF-16"),
            "{err}"
        );
    }

    #[test]
    fn a_line_that_is_not_utf8_is_one_bad_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.jsonl");
        let mut bytes = br#"{"prompt": "a", "edit_image": "a.png"}"#.to_vec();
        bytes.extend(b"\r\n{\"prompt\": \"caf\xE9\", \"edit_image\": \"b.png\"}\r\n");
        bytes.extend(br#"{"prompt": "c", "edit_image": "c.png"}"#);
        std::fs::write(&path, bytes).unwrap();
        let (rows, bad) = read_dataset(&path).unwrap();
        assert_eq!(rows.iter().map(|r| r.index).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(rows[1].prompt, "c");
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].index, 1);
        assert!(bad[0].location.ends_with("data.jsonl:2"), "{:?}", bad[0]);
        assert!(bad[0].message.contains("not UTF-8"), "{:?}", bad[0]);

        let path = dir.path().join("data.json");
        std::fs::write(
            &path,
            b"[\n{\"prompt\": \"a\", \"edit_image\": \"a.png\"},\n{\"prompt\": \"\xE9\"}]",
        )
        .unwrap();
        let err = read_dataset(&path).unwrap_err().to_string();
        assert!(
            err.contains("data.json:3") && err.contains("not UTF-8"),
            "{err}"
        );
    }
}
