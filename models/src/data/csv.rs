//! A small RFC 4180 CSV reader for DiffSynth-style `metadata.csv` files: a header row, then one
//! record per row; quoted fields may hold commas, doubled quotes and newlines. Each record keeps
//! the 1-based line it starts on so problems can name it.

/// One data record: the line it starts on and its fields (not yet matched to the header).
#[derive(Clone, Debug, PartialEq)]
pub struct CsvRecord {
    pub line: usize,
    pub fields: Vec<String>,
}

/// Splits `text` into records; an unterminated quote is an error naming the line it opened on.
pub fn parse_csv(text: &str) -> Result<Vec<CsvRecord>, String> {
    let mut records = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut line = 1;
    let mut record_line = 1;
    let mut quote_line = 0;
    let mut in_quotes = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => {
                in_quotes = true;
                quote_line = line;
            }
            ',' => fields.push(std::mem::take(&mut field)),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                push_record(&mut records, record_line, std::mem::take(&mut fields));
                line += 1;
                record_line = line;
            }
            _ => field.push(c),
        }
    }
    if in_quotes {
        return Err(format!(
            "line {quote_line}: a quoted field is never closed (a missing `\"`)"
        ));
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        push_record(&mut records, record_line, fields);
    }
    Ok(records)
}

/// Blank lines are not records.
fn push_record(records: &mut Vec<CsvRecord>, line: usize, fields: Vec<String>) {
    if fields.len() == 1 && fields[0].trim().is_empty() {
        return;
    }
    records.push(CsvRecord { line, fields });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_commas_and_newlines() {
        let text = "a,b\r\n1,\"x, \"\"y\"\"\"\n\n\"multi\nline\",2\nlast,";
        let r = parse_csv(text).unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].fields, ["a", "b"]);
        assert_eq!(r[1].fields, ["1", "x, \"y\""]);
        assert_eq!((r[2].line, r[2].fields[0].as_str()), (4, "multi\nline"));
        assert_eq!(
            (r[3].line, r[3].fields.clone()),
            (6, vec!["last".into(), String::new()])
        );
        let err = parse_csv("a\n\"open\nmore").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }
}
