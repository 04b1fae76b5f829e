//! Dataset files to raw records: a JSON array, JSONL, or DiffSynth's `metadata.csv` (chosen by the
//! `.csv` extension). Every record knows its row index, its 1-based line and a location string
//! for messages; a record that does not parse is kept as an error so one bad row never hides the
//! others.

use super::csv::parse_csv;
use crate::ModelError;
use serde_json::{Map, Value};
use std::path::Path;

/// Keys whose values are image paths (CSV cells holding a list are parsed for these).
pub const PATH_KEYS: [&str; 4] = ["image", "edit_image", "ref_gt", "back_mask"];

#[derive(Clone, Debug)]
pub struct RawRecord {
    /// 0-based row position (blank lines skipped).
    pub index: usize,
    /// 1-based line the row starts on.
    pub line: usize,
    /// "data.jsonl:12", "data.json[3]" or "metadata.csv:5".
    pub location: String,
    pub value: Result<Value, String>,
}

/// Reads `path` into records; a file that cannot be read or split into rows at all is an error.
pub fn read_records(path: &Path) -> Result<Vec<RawRecord>, ModelError> {
    let bytes =
        std::fs::read(path).map_err(|e| ModelError::new(format!("{}: {e}", path.display())))?;
    let name = path.display().to_string();
    let bytes = strip_bom(&name, &bytes)?;
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if is_csv {
        csv_records(&name, whole_utf8(&name, bytes)?)
    } else if bytes.trim_ascii_start().starts_with(b"[") {
        json_array_records(&name, whole_utf8(&name, bytes)?)
    } else {
        Ok(jsonl_records(&name, bytes))
    }
}

fn whole_utf8<'a>(name: &str, bytes: &'a [u8]) -> Result<&'a str, ModelError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let line = line_of(bytes, e.valid_up_to());
        ModelError::new(format!(
            "{name}:{line}: not UTF-8 (byte {}); save the file as UTF-8",
            e.valid_up_to()
        ))
    })
}

fn jsonl_records(name: &str, bytes: &[u8]) -> Vec<RawRecord> {
    bytes
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .enumerate()
        .filter(|(_, l)| !l.trim_ascii().is_empty())
        .enumerate()
        .map(|(index, (line_no, line))| {
            let value = std::str::from_utf8(line)
                .map_err(|e| format!("not UTF-8 (byte {} of the line)", e.valid_up_to() + 1))
                .and_then(|l| serde_json::from_str(l).map_err(|e| format!("invalid JSON: {e}")));
            RawRecord {
                index,
                line: line_no + 1,
                location: format!("{name}:{}", line_no + 1),
                value,
            }
        })
        .collect()
}

fn json_array_records(name: &str, text: &str) -> Result<Vec<RawRecord>, ModelError> {
    let values: Vec<Value> = serde_json::from_str(text)
        .map_err(|e| ModelError::new(format!("{name}: not a JSON array of rows: {e}")))?;
    let starts = array_element_offsets(text);
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(i, v)| RawRecord {
            index: i,
            line: starts.get(i).map_or(1, |&o| line_of(text.as_bytes(), o)),
            location: format!("{name}[{i}]"),
            value: Ok(v),
        })
        .collect())
}

/// Byte offsets where each top-level element of a (valid) JSON array starts.
fn array_element_offsets(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let (mut depth, mut in_string, mut escaped, mut expect) = (0usize, false, false, false);
    for (i, b) in text.bytes().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        if expect && !b.is_ascii_whitespace() && b != b']' {
            starts.push(i);
            expect = false;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                expect = depth == 1;
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => expect = true,
            _ => {}
        }
    }
    starts
}

fn csv_records(name: &str, text: &str) -> Result<Vec<RawRecord>, ModelError> {
    let records = parse_csv(text).map_err(|e| ModelError::new(format!("{name}: {e}")))?;
    let mut records = records.into_iter();
    let header: Vec<String> = match records.next() {
        Some(h) => h.fields.iter().map(|f| f.trim().to_string()).collect(),
        None => return Ok(Vec::new()),
    };
    if !header.iter().any(|h| h == "prompt") {
        return Err(ModelError::new(format!(
            "{name}:1: the header row has no `prompt` column (found: {})",
            header.join(", ")
        )));
    }
    Ok(records
        .enumerate()
        .map(|(index, r)| RawRecord {
            index,
            line: r.line,
            location: format!("{name}:{}", r.line),
            value: csv_row_value(&header, &r.fields),
        })
        .collect())
}

/// A CSV row as the JSON object the other formats give: empty path cells are absent (pandas
/// reads them as NaN), a path cell written as a list (`["a.png", "b.png"]`, or Python's
/// `['a.png', 'b.png']` as `DataFrame.to_csv` writes it) becomes a list.
fn csv_row_value(header: &[String], fields: &[String]) -> Result<Value, String> {
    if fields.len() > header.len() {
        return Err(format!(
            "{} fields but the header has {} columns (an unquoted comma?)",
            fields.len(),
            header.len()
        ));
    }
    let mut obj = Map::new();
    for (key, cell) in header.iter().zip(fields) {
        // An empty prompt cell is an empty prompt (a named problem), not a missing column.
        if cell.trim().is_empty() && key != "prompt" {
            continue;
        }
        let value = if PATH_KEYS.contains(&key.as_str()) && cell.trim_start().starts_with('[') {
            Value::Array(
                parse_list_cell(cell)
                    .ok_or_else(|| format!("`{key}` cell `{cell}` looks like a list but is not one (write [\"a.png\", \"b.png\"])"))?
                    .into_iter()
                    .map(Value::String)
                    .collect(),
            )
        } else {
            Value::String(cell.clone())
        };
        obj.insert(key.clone(), value);
    }
    Ok(Value::Object(obj))
}

/// `["a", "b"]` (JSON) or `['a', 'b']` (Python) to its strings.
fn parse_list_cell(cell: &str) -> Option<Vec<String>> {
    if let Ok(items) = serde_json::from_str::<Vec<String>>(cell) {
        return Some(items);
    }
    let inner = cell.trim().strip_prefix('[')?.strip_suffix(']')?;
    if inner.trim().is_empty() {
        return Some(Vec::new());
    }
    inner
        .split(',')
        .map(|item| {
            let item = item.trim();
            item.strip_prefix('\'')
                .and_then(|s| s.strip_suffix('\''))
                .map(str::to_string)
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_array_elements_know_their_lines() {
        let text = "[\n  {\"prompt\": \"a, [b]\"},\n\n  {\"prompt\": \"\\\"c\"},\n  5\n]";
        let starts = array_element_offsets(text);
        let lines: Vec<usize> = starts
            .iter()
            .map(|&o| line_of(text.as_bytes(), o))
            .collect();
        assert_eq!(lines, [2, 4, 5]);
        assert!(array_element_offsets("[]").is_empty());
    }

    #[test]
    fn csv_cells_become_rows() {
        let header: Vec<String> = ["prompt", "image", "edit_image"].map(String::from).to_vec();
        let row = |f: &[&str]| {
            csv_row_value(
                &header,
                &f.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        let v = row(&["p", "t.png", "['a.png', 'b.png']"]).unwrap();
        assert_eq!(v["edit_image"], serde_json::json!(["a.png", "b.png"]));
        let v = row(&["p", "", "[\"a.png\"]"]).unwrap();
        assert!(v.get("image").is_none());
        assert_eq!(v["edit_image"], serde_json::json!(["a.png"]));
        assert!(row(&["p", "t.png", "[a.png"])
            .unwrap_err()
            .contains("looks like a list"));
        assert!(row(&["p", "t", "a", "extra"])
            .unwrap_err()
            .contains("4 fields"));
    }
}
