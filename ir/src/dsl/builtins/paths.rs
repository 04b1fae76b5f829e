//! Checkpoint paths at compile time: `module_path()` (the running instance's checkpoint prefix)
//! and `path_matches(path, patterns)` (peft's `target_modules` rule for a list), which adapters
//! use to decide which modules they wrap.

use super::args::BoundArgs;
use crate::dsl::eval::{Lowerer, Scope, R};
use crate::dsl::value::Value;

/// `pattern` against the whole of `text`; `*` matches any run of characters other than `.`.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => {
            let run = text.iter().take_while(|&&c| c != b'.').count();
            (0..=run).any(|k| glob(rest, &text[k..]))
        }
        Some((c, rest)) => text.first() == Some(c) && glob(rest, &text[1..]),
    }
}

/// peft's rule for a list of target modules: the path equals the pattern or ends with
/// `"." + pattern` (so `to_q` matches `transformer_blocks.0.attn.to_q`, `attn.to_q` too).
pub(crate) fn path_matches(path: &str, pattern: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), path.as_bytes());
    glob(p, t)
        || t.iter()
            .enumerate()
            .any(|(i, &c)| c == b'.' && glob(p, &t[i + 1..]))
}

impl<'p> Lowerer<'p> {
    /// `module_path()`: the checkpoint prefix of the module whose code runs ("" at the root).
    pub(super) fn module_path_builtin(&self, sc: &Scope<'p>) -> Value {
        Value::Str(sc.prefix.to_string().into())
    }

    /// `path_matches(path, patterns)`: `patterns` is a list of strings (one string counts as a
    /// list of one; `none` as an empty list, so `adapter.targets ?? none` needs no default list).
    pub(super) fn path_matches_builtin(&self, args: &BoundArgs) -> R<Value> {
        let path = match args.raw(0) {
            Value::Str(s) => s,
            v => {
                let msg = format!("`path` must be a string, got {}", self.describe(&v));
                return Err(self.err(args.span(0), msg));
            }
        };
        let patterns = match args.raw(1) {
            Value::None => return Ok(Value::Bool(false)),
            Value::Str(s) => vec![Value::Str(s)],
            v => match v.items() {
                Some(items) => items.to_vec(),
                None => {
                    let msg = format!(
                        "`patterns` must be a list of strings, got {}",
                        self.describe(&v)
                    );
                    return Err(self.err(args.span(1), msg));
                }
            },
        };
        let mut hit = false;
        for p in &patterns {
            match p {
                Value::Str(p) => hit |= path_matches(&path, p),
                v => {
                    let msg = format!(
                        "`patterns` must be a list of strings, it holds {}",
                        self.describe(v)
                    );
                    return Err(self.err(args.span(1), msg));
                }
            }
        }
        Ok(Value::Bool(hit))
    }
}

#[cfg(test)]
mod tests {
    use super::path_matches;

    #[test]
    fn peft_suffix_rule_and_globs() {
        let p = "transformer_blocks.3.attn.to_q";
        assert!(path_matches(p, "to_q"));
        assert!(path_matches(p, "attn.to_q"));
        assert!(path_matches(p, p));
        assert!(!path_matches(p, "q"));
        assert!(!path_matches(p, "o_q"));
        assert!(!path_matches(p, "attn"));
        assert!(path_matches(p, "to_*"));
        assert!(path_matches(p, "transformer_blocks.*.attn.to_q"));
        assert!(!path_matches(p, "transformer_blocks.*"));
        assert!(path_matches("img_mlp.net.2", "net.2"));
        assert!(!path_matches("img_mlp.net.2", "net.*2x"));
        assert!(path_matches("a.b", "*"));
    }
}
