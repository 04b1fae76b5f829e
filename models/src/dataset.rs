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
/// A UTF-8 byte-order mark (Windows editors write one) is skipped. In JSONL a line that is not
/// UTF-8 is a bad row like any other; a JSON array must be UTF-8 throughout.
pub fn read_dataset(path: &Path) -> Result<(Vec<DatasetRow>, Vec<BadRow>), ModelError> {
    let bytes =
        std::fs::read(path).map_err(|e| ModelError::new(format!("{}: {e}", path.display())))?;
    let name = path.display().to_string();
    let bytes = strip_bom(&name, &bytes)?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
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
    if bytes.trim_ascii_start().starts_with(b"[") {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let line = line_of(bytes, e.valid_up_to());
            ModelError::new(format!(
                "{name}:{line}: not UTF-8 (byte {}); save the file as UTF-8",
                e.valid_up_to()
            ))
        })?;
        let values: Vec<Value> = serde_json::from_str(text)
            .map_err(|e| ModelError::new(format!("{name}: not a JSON array of rows: {e}")))?;
        for (i, v) in values.into_iter().enumerate() {
            push(i, format!("{name}[{i}]"), Ok(v));
        }
    } else {
        let lines = bytes
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .enumerate()
            .filter(|(_, l)| !l.trim_ascii().is_empty());
        for (index, (line_no, line)) in lines.enumerate() {
            let value = std::str::from_utf8(line)
                .map_err(|e| format!("not UTF-8 (byte {} of the line)", e.valid_up_to() + 1))
                .and_then(|l| serde_json::from_str(l).map_err(|e| format!("invalid JSON: {e}")));
            push(index, format!("{name}:{}", line_no + 1), value);
        }
    }
    Ok((rows, bad))
}

/// The file without its UTF-8 byte-order mark; UTF-16 (BOM FF FE or FE FF) is refused by name
/// rather than reported as garbage on every line.
fn strip_bom<'a>(name: &str, bytes: &'a [u8]) -> Result<&'a [u8], ModelError> {
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Err(ModelError::new(format!(
            "{name}: UTF-16 text; save the dataset as UTF-8"
        )));
    }
    Ok(bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes))
}

/// 1-based line number of byte `offset`.
fn line_of(bytes: &[u8], offset: usize) -> usize {
    1 + bytes[..offset].iter().filter(|&&b| b == b'\n').count()
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
