//! Errors of the DSL: a location (file:line:col), the source line with a caret, a message and notes.

use std::fmt;

/// A user-facing DSL error. `Display` renders it like a compiler diagnostic:
///
/// ```text
/// model.qie:12:13: error: cannot broadcast f32[2, 3] and f32[4, 3] in `+`
///    |
/// 12 |     let y = a + b;
///    |             ^^^^^
///    = note: in Block.forward (blocks.1) called at model.qie:30:21
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DslError {
    pub file: String,
    /// 1-based; 0 when the error has no position (e.g. a file that cannot be read).
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    pub message: String,
    /// The source line the error points into (without its newline).
    pub excerpt: String,
    /// Width of the underline in characters (at least 1).
    pub width: usize,
    pub notes: Vec<String>,
}

impl DslError {
    /// An error without a source position.
    pub fn bare(file: &str, message: impl Into<String>) -> DslError {
        DslError {
            file: file.to_string(),
            line: 0,
            col: 0,
            message: message.into(),
            excerpt: String::new(),
            width: 1,
            notes: Vec::new(),
        }
    }

    pub fn with_note(mut self, note: impl Into<String>) -> DslError {
        self.notes.push(note.into());
        self
    }

    /// `file:line:col`, the way other messages refer to this position.
    pub fn location(&self) -> String {
        format!("{}:{}:{}", self.file, self.line, self.col)
    }
}

impl fmt::Display for DslError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            writeln!(f, "{}: error: {}", self.file, self.message)?;
        } else {
            writeln!(
                f,
                "{}:{}:{}: error: {}",
                self.file, self.line, self.col, self.message
            )?;
            let num = self.line.to_string();
            let pad = " ".repeat(num.len());
            writeln!(f, "{pad} |")?;
            writeln!(f, "{num} | {}", self.excerpt)?;
            // Keep tabs so the caret lines up with the excerpt in a terminal.
            let lead: String = self
                .excerpt
                .chars()
                .take(self.col.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            writeln!(f, "{pad} | {lead}{}", "^".repeat(self.width.max(1)))?;
        }
        // Runs of identical notes (deep recursion) are shown once with a count.
        let mut i = 0;
        while i < self.notes.len() {
            let run = self.notes[i..]
                .iter()
                .take_while(|n| **n == self.notes[i])
                .count();
            if run > 1 {
                writeln!(f, "  = note: {} ({run} times)", self.notes[i])?;
            } else {
                writeln!(f, "  = note: {}", self.notes[i])?;
            }
            i += run;
        }
        Ok(())
    }
}

impl std::error::Error for DslError {}

/// One loaded source file with a line index, for turning byte offsets into positions.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
    line_starts: Vec<usize>,
    /// Comments that follow a value (`h // 2`, see parse.rs), to explain errors right after them.
    pub(crate) suspect_comments: Vec<SuspectComment>,
}

/// A `//` comment between two values on one line: the old floor-division spelling, now a comment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SuspectComment {
    /// End of the value before the comment.
    pub value_end: usize,
    /// Offset of the `//`.
    pub comment: usize,
    /// The first token after the comment (and any whitespace).
    pub next_token: usize,
}

impl SourceFile {
    pub fn new(name: &str, text: &str) -> SourceFile {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceFile {
            name: name.to_string(),
            text: text.to_string(),
            line_starts,
            suspect_comments: Vec::new(),
        }
    }

    /// 1-based line and character column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let start = self.line_starts[line];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line + 1, col + 1)
    }

    fn line_text(&self, line: usize) -> &str {
        let start = self.line_starts[line - 1];
        let end = self
            .line_starts
            .get(line)
            .map_or(self.text.len(), |&e| e - 1);
        self.text
            .get(start..end)
            .unwrap_or("")
            .trim_end_matches('\r')
    }

    /// `name:line:col` of a byte offset.
    pub fn pos(&self, offset: usize) -> String {
        let (l, c) = self.line_col(offset);
        format!("{}:{l}:{c}", self.name)
    }

    /// An error pointing at `start..end` (clipped to the first line of the span).
    pub fn error(&self, start: usize, end: usize, message: impl Into<String>) -> DslError {
        let (line, col) = self.line_col(start);
        let excerpt = self.line_text(line).to_string();
        let line_chars = excerpt.chars().count();
        let end = end.max(start).min(self.text.len());
        let span_chars = self
            .text
            .get(start..end)
            .map_or(1, |s| s.chars().take_while(|&c| c != '\n').count());
        let width = span_chars.clamp(1, (line_chars + 1).saturating_sub(col).max(1));
        let mut err = DslError {
            file: self.name.clone(),
            line,
            col,
            message: message.into(),
            excerpt,
            width,
            notes: Vec::new(),
        };
        if let Some(sc) = self
            .suspect_comments
            .iter()
            .find(|sc| (sc.value_end..=sc.next_token).contains(&start))
        {
            let (l, c) = self.line_col(sc.comment);
            err.notes.push(format!(
                "`//` at {l}:{c} starts a comment, so the expression before it ends there; \
                 floor division is written `~/` (`h ~/ 2`)"
            ));
        }
        err
    }
}

/// Edit distance with adjacent transpositions (optimal string alignment), for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        d[i * w] = i;
    }
    for (j, x) in d.iter_mut().enumerate().take(w) {
        *x = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

/// The closest candidate to `name`, if close enough to be a plausible typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    let lower = name.to_lowercase();
    candidates
        .into_iter()
        .filter(|c| *c != name)
        .map(|c| {
            let d = if c.to_lowercase() == lower {
                0
            } else {
                edit_distance(name, c)
            };
            (d, c)
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, c.len()))
        .map(|(_, c)| c)
}

/// "; did you mean `x`?" or "", to append to a message.
pub fn suggestion<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    did_you_mean(name, candidates).map_or(String::new(), |c| format!("; did you mean `{c}`?"))
}
