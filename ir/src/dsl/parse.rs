//! Source text -> AST: comment masking, the pest parser, and syntax-error messages.

use super::ast::*;
use super::error::{DslError, SourceFile, SuspectComment};
use crate::DType;
use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser;
use std::sync::LazyLock;

#[derive(pest_derive::Parser)]
#[grammar = "dsl/qie.pest"]
struct QieParser;

type R<T> = Result<T, DslError>;

/// Replaces `//` comments with spaces (byte offsets are kept) and returns the masked text and the
/// comments that directly follow a value and precede one on the same line (`h // 2`): before `~/`
/// became floor division those divided, so a syntax error right after one gets a note.
pub(crate) fn mask_comments(text: &str) -> (String, Vec<SuspectComment>) {
    let b = text.as_bytes();
    let mut out = b.to_vec();
    let mut suspects = Vec::new();
    let mut i = 0;
    let mut in_string = false;
    while i < b.len() {
        let c = b[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' | b'\n' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            if let Some(value_end) = value_end_before(b, i) {
                if starts_value_after(b, i + 2) {
                    suspects.push(SuspectComment {
                        value_end,
                        comment: i,
                        next_token: 0,
                    });
                }
            }
            while i < b.len() && b[i] != b'\n' {
                out[i] = b' ';
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    for s in &mut suspects {
        let mut j = s.comment;
        while j < out.len() && out[j].is_ascii_whitespace() {
            j += 1;
        }
        s.next_token = j;
    }
    // Only ASCII bytes were replaced by spaces, whole comments at a time, so this stays UTF-8.
    (
        String::from_utf8(out).unwrap_or_else(|_| text.to_string()),
        suspects,
    )
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Where the value ending just before offset `i` (spaces aside) ends, if one does: a name that is
/// not a keyword, a number, `)` or `]`.
fn value_end_before(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    while j > 0 && (b[j - 1] == b' ' || b[j - 1] == b'\t') {
        j -= 1;
    }
    if j == 0 {
        return None;
    }
    let c = b[j - 1];
    if c == b')' || c == b']' {
        return Some(j);
    }
    if !is_word(c) {
        return None;
    }
    let mut k = j;
    while k > 0 && is_word(b[k - 1]) {
        k -= 1;
    }
    let word = std::str::from_utf8(&b[k..j]).unwrap_or("");
    let keyword = matches!(
        word,
        "import"
            | "const"
            | "fn"
            | "module"
            | "param"
            | "sub"
            | "let"
            | "for"
            | "in"
            | "if"
            | "else"
            | "output"
            | "override"
            | "entry"
    );
    (!keyword).then_some(j)
}

fn starts_value_after(b: &[u8], i: usize) -> bool {
    let mut j = i;
    while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
        j += 1;
    }
    j < b.len() && (is_word(b[j]) || matches!(b[j], b'(' | b'[' | b'-'))
}

/// Parses one file. `src.suspect_comments` must already be filled by [`mask_comments`] of the same
/// text.
/// Deepest expression tree accepted (keeps the recursive evaluator far from the stack limit).
const MAX_EXPR_DEPTH: u32 = 256;
/// Deepest bracket nesting accepted.
const MAX_BRACKETS: usize = 128;

/// Rejects absurd bracket nesting before the recursive parser sees it.
fn check_nesting(src: &SourceFile, masked: &str) -> R<()> {
    let mut depth = 0usize;
    let mut unary_run = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in masked.bytes().enumerate() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"' | b'\n') => in_string = false,
                _ => {}
            }
            continue;
        }
        // Long runs of prefix operators (`- - - x`) nest like brackets.
        match c {
            b'-' | b'!' => unary_run += 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => unary_run = 0,
        }
        if unary_run > MAX_BRACKETS {
            return Err(src.error(i, i + 1, "too many operators in a row"));
        }
        match c {
            b'"' => in_string = true,
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_BRACKETS {
                    return Err(src.error(
                        i,
                        i + 1,
                        format!("brackets are nested more than {MAX_BRACKETS} deep"),
                    ));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

pub(crate) fn parse_file(file: u32, src: &SourceFile, masked: &str) -> R<Vec<Item>> {
    check_nesting(src, masked)?;
    let pairs = match QieParser::parse(Rule::file, masked) {
        Ok(p) => p,
        Err(_) => {
            // Parse again with detailed tracking of expected tokens (slower, error path only).
            // (A process-wide flag: a concurrent parse may briefly see it; that only changes the
            // detail of its error message.)
            pest::set_error_detail(true);
            let reparsed = QieParser::parse(Rule::file, masked);
            pest::set_error_detail(false);
            let e = match reparsed {
                Err(e) => e,
                Ok(_) => {
                    return Err(DslError::bare(
                        &src.name,
                        "internal error: inconsistent parse",
                    ))
                }
            };
            return Err(syntax_error(src, masked, e));
        }
    };
    let b = Builder { file, src };
    let mut items = Vec::new();
    for p in pairs.into_iter().flat_map(|file| file.into_inner()) {
        if p.as_rule() != Rule::EOI {
            items.push(b.item(p)?);
        }
    }
    Ok(items)
}

// ---- syntax errors ------------------------------------------------------------------------------

/// How an expected rule is described in a syntax error.
fn rule_desc(r: Rule) -> Option<&'static str> {
    use Rule::*;
    Some(match r {
        ident => "a name",
        int | float | string | lit_true | lit_false | lit_none | neg | not | paren | tuple_lit
        | list_lit | if_expr | expr => "an expression",
        call | member_access | index | coalesce | or | and | eq | ne | le | ge | lt | gt | add
        | sub | floordiv | mul | div | rem | range => "an operator",
        dtype => "a dtype (f32, bf16, f16, i32, i64, bool)",
        kw_import => "`import`",
        kw_const => "`const`",
        kw_fn => "`fn`",
        kw_module => "`module`",
        kw_param => "`param`",
        kw_sub => "`sub`",
        kw_let => "`let`",
        kw_for => "`for`",
        kw_in => "`in`",
        kw_if => "`if`",
        kw_else => "`else`",
        kw_output => "`output`",
        kw_override => "`override`",
        kw_entry => "`entry`",
        kw_x => "`x`",
        semi => "`;`",
        EOI => "end of file",
        _ => return None,
    })
}

/// Literal tokens that stand for "an operator" or "an expression" (already described by rules).
const COVERED_TOKENS: &[&str] = &[
    "??", "||", "&&", "==", "!=", "<=", ">=", "<", ">", "+", "-", "~/", "*", "/", "%", "..", ".",
    "(", "[", "!", "\"", "\\", "_", "true", "false", "none", "if",
];

fn found_token(masked: &str, pos: usize) -> String {
    let rest = masked.get(pos..).unwrap_or("");
    let Some(c) = rest.chars().next() else {
        return "end of file".to_string();
    };
    if c.is_ascii_alphanumeric() || c == '_' {
        let w: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        return format!("`{w}`");
    }
    for op in ["??", "||", "&&", "==", "!=", "<=", ">=", "~/", ".."] {
        if rest.starts_with(op) {
            return format!("`{op}`");
        }
    }
    format!("`{c}`")
}

fn syntax_error(src: &SourceFile, masked: &str, e: pest::error::Error<Rule>) -> DslError {
    let mut pos = match e.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    let mut punct: Vec<String> = Vec::new();
    let mut described: Vec<&'static str> = Vec::new();
    if let Some(attempts) = e.parse_attempts() {
        pos = pos.max(attempts.max_position);
        for t in attempts.expected_tokens() {
            // `ParsingToken` is not exported by pest; its Display is the literal token, or
            // `a..z` for ranges and `BUILTIN_RULE` for builtins (skipped, as are case-insensitive
            // tokens, which display in upper case and only occur inside numbers).
            let token = t.to_string();
            let is_range = token.len() == 4 && &token[1..3] == "..";
            let skip = is_range
                || token == "BUILTIN_RULE"
                || token.trim().is_empty()
                || token.chars().any(|c| c.is_ascii_uppercase())
                || COVERED_TOKENS.contains(&token.as_str());
            if !skip {
                let t = format!("`{token}`");
                if !punct.contains(&t) {
                    punct.push(t);
                }
            }
        }
    }
    if let pest::error::ErrorVariant::ParsingError { positives, .. } = &e.variant {
        for r in positives {
            if let Some(d) = rule_desc(*r) {
                if !described.contains(&d) {
                    described.push(d);
                }
            }
        }
    }
    if described.contains(&"an expression") {
        described.retain(|d| *d != "a name" && *d != "`if`");
    }
    // Punctuation, then keywords, then categories; keywords may come from both sources.
    let mut expected: Vec<String> = Vec::new();
    let mut kws: Vec<String> = Vec::new();
    for t in punct {
        if t[1..].starts_with(|c: char| c.is_ascii_alphabetic()) {
            kws.push(t);
        } else {
            expected.push(t);
        }
    }
    let mut cats: Vec<String> = Vec::new();
    for d in described {
        if d.starts_with('`') {
            if !kws.iter().any(|k| k == d) {
                kws.push(d.to_string());
            }
        } else {
            cats.push(d.to_string());
        }
    }
    cats.sort_by_key(|c| c == "an operator");
    expected.extend(kws);
    expected.extend(cats);
    expected.truncate(7);
    // An error inside a word (`fnn`) is reported at the start of the word.
    let b = masked.as_bytes();
    while pos > 0
        && pos <= b.len()
        && is_word(b[pos - 1])
        && b.get(pos).is_some_and(|c| is_word(*c))
    {
        pos -= 1;
    }
    let found = found_token(masked, pos);
    let list = match expected.len() {
        0 => "something else".to_string(),
        1 => expected[0].clone(),
        n => format!("{} or {}", expected[..n - 1].join(", "), expected[n - 1]),
    };
    let message = format!("syntax error: expected {list}, found {found}");
    // A missing `;` is best reported right after the previous token, not at the next line.
    let wants_semi = expected.iter().any(|s| s == "`;`");
    let before = &masked[..pos.min(masked.len())];
    let trimmed = before.trim_end();
    if wants_semi && before[trimmed.len()..].contains('\n') && !trimmed.is_empty() {
        let at = trimmed.len();
        let (l, c) = src.line_col(pos);
        return src
            .error(at, at + 1, message)
            .with_note(format!("the next token is at {}:{l}:{c}", src.name));
    }
    let width = found.trim_matches('`').len().max(1);
    src.error(pos, pos + width, message)
}

// ---- AST building --------------------------------------------------------------------------------

static PRATT: LazyLock<PrattParser<Rule>> = LazyLock::new(|| {
    use Rule::*;
    PrattParser::new()
        .op(Op::infix(range, Assoc::Left))
        .op(Op::infix(coalesce, Assoc::Left))
        .op(Op::infix(or, Assoc::Left))
        .op(Op::infix(and, Assoc::Left))
        .op(Op::infix(eq, Assoc::Left)
            | Op::infix(ne, Assoc::Left)
            | Op::infix(lt, Assoc::Left)
            | Op::infix(le, Assoc::Left)
            | Op::infix(gt, Assoc::Left)
            | Op::infix(ge, Assoc::Left))
        .op(Op::infix(add, Assoc::Left) | Op::infix(sub, Assoc::Left))
        .op(Op::infix(mul, Assoc::Left)
            | Op::infix(div, Assoc::Left)
            | Op::infix(floordiv, Assoc::Left)
            | Op::infix(rem, Assoc::Left))
        .op(Op::prefix(neg) | Op::prefix(not))
        .op(Op::postfix(call) | Op::postfix(member_access) | Op::postfix(index))
});

fn is_keyword_rule(r: Rule) -> bool {
    use Rule::*;
    matches!(
        r,
        kw_import
            | kw_const
            | kw_fn
            | kw_module
            | kw_param
            | kw_sub
            | kw_let
            | kw_for
            | kw_in
            | kw_if
            | kw_else
            | kw_output
            | kw_override
            | kw_entry
            | kw_x
    )
}

/// Children of a pair without keyword tokens.
fn kids(p: Pair<'_, Rule>) -> impl Iterator<Item = Pair<'_, Rule>> {
    p.into_inner().filter(|c| !is_keyword_rule(c.as_rule()))
}

struct Builder<'a> {
    file: u32,
    src: &'a SourceFile,
}

impl Builder<'_> {
    fn span(&self, p: &Pair<'_, Rule>) -> Span {
        let s = p.as_span();
        Span {
            file: self.file,
            start: s.start() as u32,
            end: s.end() as u32,
        }
    }

    fn err(&self, span: Span, msg: impl Into<String>) -> DslError {
        self.src.error(span.start as usize, span.end as usize, msg)
    }

    fn name(&self, p: Pair<'_, Rule>) -> Name {
        Name {
            span: self.span(&p),
            text: p.as_str().to_string(),
        }
    }

    fn item(&self, p: Pair<'_, Rule>) -> R<Item> {
        let span = self.span(&p);
        let rule = p.as_rule();
        if rule == Rule::override_item {
            let inner = kids(p)
                .next()
                .ok_or_else(|| self.err(span, "empty override"))?;
            let mut item = self.item(inner)?;
            item.is_override = true;
            item.span = span;
            return Ok(item);
        }
        let mut it = kids(p);
        let mut next = || {
            it.next()
                .ok_or_else(|| self.err(span, "internal error: malformed item"))
        };
        let kind = match rule {
            Rule::import_item => ItemKind::Import(self.string(next()?)?),
            Rule::entry_item => ItemKind::Entry(self.name(next()?)),
            Rule::const_item => {
                let name = self.name(next()?);
                ItemKind::Const(ConstDef {
                    name,
                    value: self.expr(next()?)?,
                })
            }
            Rule::fn_item => {
                return Ok(Item {
                    kind: ItemKind::Fn(self.fn_def(span, it)?),
                    is_override: false,
                    span,
                })
            }
            Rule::module_item => {
                return Ok(Item {
                    kind: ItemKind::Module(self.module(span, it)?),
                    is_override: false,
                    span,
                })
            }
            _ => return Err(self.err(span, format!("internal error: unexpected {rule:?}"))),
        };
        Ok(Item {
            kind,
            is_override: false,
            span,
        })
    }

    fn fn_def<'i>(&self, span: Span, mut it: impl Iterator<Item = Pair<'i, Rule>>) -> R<FnDef> {
        let bad = || self.err(span, "internal error: malformed fn");
        let name = self.name(it.next().ok_or_else(bad)?);
        let params = self.params(it.next().ok_or_else(bad)?)?;
        let body_pair = it.next().ok_or_else(bad)?;
        let header = Span {
            end: body_pair.as_span().start() as u32,
            ..span
        };
        Ok(FnDef {
            name,
            params,
            body: self.block(body_pair)?,
            span: header,
        })
    }

    fn params(&self, p: Pair<'_, Rule>) -> R<Vec<ParamDecl>> {
        let mut out: Vec<ParamDecl> = Vec::new();
        for d in kids(p) {
            let mut it = kids(d);
            let Some(first) = it.next() else { continue };
            let name = self.name(first);
            if let Some(prev) = out.iter().find(|o| o.name.text == name.text) {
                let (l, c) = self.src.line_col(prev.name.span.start as usize);
                return Err(self.err(
                    name.span,
                    format!(
                        "parameter `{}` is declared twice (first at line {l}:{c})",
                        name.text
                    ),
                ));
            }
            let mut decl = ParamDecl {
                name,
                ty: None,
                default: None,
            };
            for part in it {
                match part.as_rule() {
                    Rule::type_ann => {
                        let span = self.span(&part);
                        let mut t = kids(part);
                        let dt = t.next().ok_or_else(|| self.err(span, "missing dtype"))?;
                        let dtype = self.dtype(dt)?;
                        let dims = match t.next() {
                            Some(dl) => self.expr_list(dl)?,
                            None => Vec::new(),
                        };
                        decl.ty = Some(TypeAnn { dtype, dims, span });
                    }
                    _ => decl.default = Some(self.expr(part)?),
                }
            }
            out.push(decl);
        }
        Ok(out)
    }

    fn dtype(&self, p: Pair<'_, Rule>) -> R<DType> {
        DType::parse(p.as_str())
            .ok_or_else(|| self.err(self.span(&p), format!("unknown dtype `{}`", p.as_str())))
    }

    fn expr_list(&self, p: Pair<'_, Rule>) -> R<Vec<Expr>> {
        kids(p).map(|e| self.expr(e)).collect()
    }

    fn module<'i>(&self, span: Span, mut it: impl Iterator<Item = Pair<'i, Rule>>) -> R<ModuleDef> {
        let bad = || self.err(span, "internal error: malformed module");
        let name = self.name(it.next().ok_or_else(bad)?);
        let params = self.params(it.next().ok_or_else(bad)?)?;
        let mut members = Vec::new();
        let mut methods = Vec::new();
        for m in it {
            let mspan = self.span(&m);
            match m.as_rule() {
                Rule::let_stmt => {
                    let mut k = kids(m);
                    let pat = self.pattern(k.next().ok_or_else(bad)?)?;
                    members.push(Member::Let(pat, self.expr(k.next().ok_or_else(bad)?)?));
                }
                Rule::param_member => {
                    let mut k = kids(m).peekable();
                    let name = self.name(k.next().ok_or_else(bad)?);
                    let mut dtype = DType::F32;
                    if k.peek().map(|p| p.as_rule()) == Some(Rule::dtype) {
                        dtype = self.dtype(k.next().ok_or_else(bad)?)?;
                    }
                    let dims = self.expr_list(k.next().ok_or_else(bad)?)?;
                    let mut init = None;
                    let mut cond = None;
                    for rest in k {
                        match rest.as_rule() {
                            Rule::param_init => init = Some(self.cond(rest)?),
                            _ => cond = Some(self.cond(rest)?),
                        }
                    }
                    members.push(Member::Param(ParamMember {
                        name,
                        dtype,
                        dims,
                        init,
                        cond,
                        span: mspan,
                    }));
                }
                Rule::sub_member => {
                    let mut k = kids(m).peekable();
                    let name = self.name(k.next().ok_or_else(bad)?);
                    let mut count = None;
                    if k.peek().map(|p| p.as_rule()) == Some(Rule::repeat) {
                        let rep = k.next().ok_or_else(bad)?;
                        let e = kids(rep).next().ok_or_else(bad)?;
                        count = Some(self.expr(e)?);
                    }
                    let module = self.name(k.next().ok_or_else(bad)?);
                    let args = self.args(k.next().ok_or_else(bad)?)?;
                    let mut path = None;
                    let mut cond = None;
                    for rest in k {
                        match rest.as_rule() {
                            Rule::at_path => {
                                let s = kids(rest).next().ok_or_else(bad)?;
                                let sp = self.span(&s);
                                path = Some((self.path_template(s)?, sp));
                            }
                            _ => cond = Some(self.cond(rest)?),
                        }
                    }
                    members.push(Member::Sub(SubMember {
                        name,
                        count,
                        module,
                        args,
                        path,
                        cond,
                        span: mspan,
                    }));
                }
                Rule::fn_item => methods.push(self.fn_def(mspan, kids(m))?),
                r => {
                    return Err(
                        self.err(mspan, format!("internal error: unexpected {r:?} in module"))
                    )
                }
            }
        }
        Ok(ModuleDef {
            name,
            params,
            members,
            methods,
        })
    }

    fn cond(&self, p: Pair<'_, Rule>) -> R<Expr> {
        let span = self.span(&p);
        let e = kids(p)
            .next()
            .ok_or_else(|| self.err(span, "missing condition"))?;
        self.expr(e)
    }

    /// An `@` path with `{expr}` interpolations; `{{` and `}}` stand for braces.
    fn path_template(&self, p: Pair<'_, Rule>) -> R<Vec<PathPart>> {
        let start = p.as_span().start();
        let raw = p.as_str();
        if !raw.contains(['{', '}']) {
            return Ok(vec![PathPart::Text(self.string(p)?)]);
        }
        let sp = self.span(&p);
        if raw.contains('\\') {
            return Err(self.err(sp, "a path with `{..}` interpolations cannot hold escapes"));
        }
        let body = &raw[1..raw.len() - 1];
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut i = 0;
        let b = body.as_bytes();
        while i < b.len() {
            match b[i] {
                b'{' if b.get(i + 1) == Some(&b'{') => {
                    text.push('{');
                    i += 2;
                }
                b'}' if b.get(i + 1) == Some(&b'}') => {
                    text.push('}');
                    i += 2;
                }
                b'{' => {
                    let Some(len) = body[i + 1..].find('}') else {
                        return Err(
                            self.err(sp, "unclosed `{` in the path (write `{{` for a brace)")
                        );
                    };
                    let at = start + 1 + i + 1;
                    let expr = self.interpolation(at, &body[i + 1..i + 1 + len])?;
                    if !text.is_empty() {
                        parts.push(PathPart::Text(std::mem::take(&mut text)));
                    }
                    parts.push(PathPart::Expr(expr));
                    i += len + 2;
                }
                b'}' => {
                    return Err(self.err(sp, "unmatched `}` in the path (write `}}` for a brace)"))
                }
                _ => {
                    let c = body[i..].chars().next().unwrap_or(' ');
                    text.push(c);
                    i += c.len_utf8();
                }
            }
        }
        if !text.is_empty() {
            parts.push(PathPart::Text(text));
        }
        Ok(parts)
    }

    /// Parses the expression `text` found at byte `at` of the file, with spans into the file.
    fn interpolation(&self, at: usize, text: &str) -> R<Expr> {
        let span = Span {
            file: self.file,
            start: at as u32,
            end: (at + text.len()) as u32,
        };
        if text.trim().is_empty() {
            return Err(self.err(span, "empty `{}` in the path"));
        }
        let padded = format!("{}{text}", " ".repeat(at));
        let pairs = QieParser::parse(Rule::interp, &padded)
            .map_err(|_| self.err(span, format!("`{text}` in the path is not an expression")))?;
        let e = pairs
            .flat_map(|p| p.into_inner())
            .find(|p| p.as_rule() == Rule::expr)
            .ok_or_else(|| self.err(span, "internal error: empty interpolation"))?;
        self.expr(e)
    }

    fn string(&self, p: Pair<'_, Rule>) -> R<String> {
        let raw = p.as_str();
        let body = &raw[1..raw.len().saturating_sub(1).max(1)];
        let mut out = String::with_capacity(body.len());
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(c @ ('\\' | '"')) => out.push(c),
                other => {
                    let esc = other.map_or(String::new(), |c| c.to_string());
                    return Err(
                        self.err(self.span(&p), format!("unknown escape `\\{esc}` in string"))
                    );
                }
            }
        }
        Ok(out)
    }

    fn pattern(&self, p: Pair<'_, Rule>) -> R<Pattern> {
        match p.as_rule() {
            Rule::ident => Ok(Pattern::Name(self.name(p))),
            _ => {
                let span = self.span(&p);
                Ok(Pattern::Tuple(
                    kids(p).map(|c| self.pattern(c)).collect::<R<_>>()?,
                    span,
                ))
            }
        }
    }

    fn block(&self, p: Pair<'_, Rule>) -> R<Block> {
        let items: Vec<Pair<'_, Rule>> = kids(p).collect();
        let n = items.len();
        let mut stmts = Vec::with_capacity(n);
        let mut tail = None;
        for (i, s) in items.into_iter().enumerate() {
            let sspan = self.span(&s);
            let rule = s.as_rule();
            let mut k = kids(s);
            let bad = || self.err(sspan, "internal error: malformed statement");
            match rule {
                Rule::let_stmt => {
                    let pat = self.pattern(k.next().ok_or_else(bad)?)?;
                    stmts.push(Stmt::Let(pat, self.expr(k.next().ok_or_else(bad)?)?));
                }
                Rule::assign_stmt => {
                    let name = self.name(k.next().ok_or_else(bad)?);
                    stmts.push(Stmt::Assign(name, self.expr(k.next().ok_or_else(bad)?)?));
                }
                Rule::output_stmt => {
                    let name = self.name(k.next().ok_or_else(bad)?);
                    stmts.push(Stmt::Output(name, self.expr(k.next().ok_or_else(bad)?)?));
                }
                Rule::for_stmt => {
                    let pat = self.pattern(k.next().ok_or_else(bad)?)?;
                    let iter = self.expr(k.next().ok_or_else(bad)?)?;
                    stmts.push(Stmt::For(pat, iter, self.block(k.next().ok_or_else(bad)?)?));
                }
                Rule::expr_item => {
                    let e = self.expr(k.next().ok_or_else(bad)?)?;
                    let has_semi = k.next().is_some();
                    if has_semi {
                        stmts.push(Stmt::Expr(e));
                    } else if i + 1 == n {
                        tail = Some(e);
                    } else if matches!(e.kind, ExprKind::If(..)) {
                        stmts.push(Stmt::Expr(e));
                    } else {
                        let end = e.span.end as usize;
                        return Err(self.src.error(
                            end,
                            end + 1,
                            "syntax error: expected `;` after this expression",
                        ));
                    }
                }
                r => {
                    return Err(
                        self.err(sspan, format!("internal error: unexpected {r:?} in block"))
                    )
                }
            }
        }
        Ok(Block::new(stmts, tail))
    }

    fn args(&self, p: Pair<'_, Rule>) -> R<Vec<Arg>> {
        let mut out: Vec<Arg> = Vec::new();
        for a in kids(p) {
            let arg = if a.as_rule() == Rule::kwarg {
                let span = self.span(&a);
                let mut k = kids(a);
                let name = self.name(
                    k.next()
                        .ok_or_else(|| self.err(span, "bad keyword argument"))?,
                );
                let value = self.expr(
                    k.next()
                        .ok_or_else(|| self.err(span, "bad keyword argument"))?,
                )?;
                Arg {
                    name: Some(name),
                    value,
                }
            } else {
                let value = self.expr(a)?;
                if let Some(prev) = out.iter().rev().find_map(|a| a.name.as_ref()) {
                    return Err(self.err(
                        value.span,
                        format!("positional argument after keyword argument `{}`", prev.text),
                    ));
                }
                Arg { name: None, value }
            };
            if let Some(n) = &arg.name {
                if out
                    .iter()
                    .any(|o| o.name.as_ref().is_some_and(|m| m.text == n.text))
                {
                    return Err(
                        self.err(n.span, format!("keyword argument `{}` given twice", n.text))
                    );
                }
            }
            out.push(arg);
        }
        Ok(out)
    }

    fn expr(&self, p: Pair<'_, Rule>) -> R<Expr> {
        let span = self.span(&p);
        let e = self.expr_inner(p)?;
        if e.depth > MAX_EXPR_DEPTH {
            return Err(self.err(
                span,
                format!("expression is nested more than {MAX_EXPR_DEPTH} levels deep"),
            ));
        }
        Ok(e)
    }

    fn expr_inner(&self, p: Pair<'_, Rule>) -> R<Expr> {
        if p.as_rule() != Rule::expr {
            return self.primary(p);
        }
        PRATT
            .map_primary(|p| self.primary(p))
            .map_prefix(|op, rhs| {
                let rhs = rhs?;
                let uop = if op.as_rule() == Rule::neg {
                    UnOp::Neg
                } else {
                    UnOp::Not
                };
                let span = self.span(&op).to(rhs.span);
                Ok(Expr::new(ExprKind::Unary(uop, Box::new(rhs)), span))
            })
            .map_postfix(|lhs, op| {
                let lhs = lhs?;
                let span = lhs.span.to(self.span(&op));
                let kind = match op.as_rule() {
                    Rule::call => {
                        let list = kids(op).next();
                        let args = match list {
                            Some(l) => self.args(l)?,
                            None => Vec::new(),
                        };
                        ExprKind::Call(Box::new(lhs), args)
                    }
                    Rule::member_access => {
                        let name = kids(op)
                            .next()
                            .ok_or_else(|| self.err(span, "missing member name"))?;
                        ExprKind::Member(Box::new(lhs), self.name(name))
                    }
                    _ => {
                        let ix = kids(op)
                            .next()
                            .ok_or_else(|| self.err(span, "missing index"))?;
                        ExprKind::Index(Box::new(lhs), Box::new(self.expr(ix)?))
                    }
                };
                Ok(Expr::new(kind, span))
            })
            .map_infix(|lhs, op, rhs| {
                let (lhs, rhs) = (lhs?, rhs?);
                use Rule::*;
                let bop = match op.as_rule() {
                    coalesce => BinOp::Coalesce,
                    or => BinOp::Or,
                    and => BinOp::And,
                    eq => BinOp::Eq,
                    ne => BinOp::Ne,
                    lt => BinOp::Lt,
                    le => BinOp::Le,
                    gt => BinOp::Gt,
                    ge => BinOp::Ge,
                    add => BinOp::Add,
                    sub => BinOp::Sub,
                    mul => BinOp::Mul,
                    div => BinOp::Div,
                    floordiv => BinOp::FloorDiv,
                    rem => BinOp::Rem,
                    _ => BinOp::Range,
                };
                let span = lhs.span.to(rhs.span);
                Ok(Expr::new(
                    ExprKind::Binary(bop, Box::new(lhs), Box::new(rhs)),
                    span,
                ))
            })
            .parse(kids(p))
    }

    fn primary(&self, p: Pair<'_, Rule>) -> R<Expr> {
        let span = self.span(&p);
        let kind = match p.as_rule() {
            Rule::int => match p.as_str().parse::<i64>() {
                Ok(v) => ExprKind::Int(v),
                Err(_) => {
                    return Err(self.err(
                        span,
                        format!("integer literal `{}` is too large", p.as_str()),
                    ))
                }
            },
            Rule::float => ExprKind::Float(p.as_str().parse::<f64>().unwrap_or(f64::NAN)),
            Rule::string => ExprKind::Str(self.string(p)?),
            Rule::ident => ExprKind::Ident(p.as_str().to_string()),
            Rule::lit_true => ExprKind::Bool(true),
            Rule::lit_false => ExprKind::Bool(false),
            Rule::lit_none => ExprKind::None,
            Rule::paren => {
                let inner = kids(p)
                    .next()
                    .ok_or_else(|| self.err(span, "empty parentheses"))?;
                let mut e = self.expr(inner)?;
                e.span = span;
                return Ok(e);
            }
            Rule::tuple_lit => ExprKind::Tuple(kids(p).map(|e| self.expr(e)).collect::<R<_>>()?),
            Rule::list_lit => ExprKind::List(kids(p).map(|e| self.expr(e)).collect::<R<_>>()?),
            Rule::if_expr => {
                let parts: Vec<Pair<'_, Rule>> = kids(p).collect();
                let mut arms = Vec::new();
                let mut i = 0;
                while i + 1 < parts.len() {
                    arms.push((
                        self.expr(parts[i].clone())?,
                        self.block(parts[i + 1].clone())?,
                    ));
                    i += 2;
                }
                let else_block = match parts.get(i) {
                    Some(b) => Some(Box::new(self.block(b.clone())?)),
                    None => None,
                };
                ExprKind::If(arms, else_block)
            }
            Rule::expr => return self.expr(p),
            r => {
                return Err(self.err(
                    span,
                    format!("internal error: unexpected {r:?} in expression"),
                ))
            }
        };
        Ok(Expr::new(kind, span))
    }
}
