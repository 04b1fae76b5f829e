//! Loading files (the prelude, the root, its imports) and building the item table: definitions,
//! overrides (the variant mechanism) and the entry module.

use super::ast::*;
use super::error::{suggestion, DslError, SourceFile};
use super::parse::{mask_comments, parse_file};
use std::collections::{HashMap, HashSet};

/// The prelude, imported implicitly by every program.
pub(crate) const PRELUDE_NAME: &str = "std.qie";
const PRELUDE: &str = include_str!("std.qie");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ItemRef {
    Fn(u32),
    Module(u32),
    Const(u32),
}

impl ItemRef {
    fn kind(self) -> &'static str {
        match self {
            ItemRef::Fn(_) => "fn",
            ItemRef::Module(_) => "module",
            ItemRef::Const(_) => "const",
        }
    }
}

/// The resolved item table. Overridden definitions stay in the vectors but not in `table`.
#[derive(Debug, Default)]
pub(crate) struct Items {
    pub fns: Vec<FnDef>,
    pub modules: Vec<ModuleDef>,
    pub consts: Vec<ConstDef>,
    pub table: HashMap<String, ItemRef>,
    pub entry: u32,
}

/// Resolves `import` (importer file name, import string) to (file name, text).
pub(crate) type Resolver<'a> = &'a dyn Fn(&str, &str) -> Option<(String, String)>;

struct Loader<'a> {
    files: Vec<SourceFile>,
    parsed: Vec<Vec<Item>>,
    /// Files in dependency order (imports before importers).
    order: Vec<u32>,
    seen: HashSet<String>,
    resolve: Resolver<'a>,
}

impl Loader<'_> {
    fn add(&mut self, name: &str, text: &str) -> Result<u32, DslError> {
        let id = self.files.len() as u32;
        let (masked, suspects) = mask_comments(text);
        let mut src = SourceFile::new(name, text);
        src.suspect_comments = suspects;
        self.files.push(src);
        self.seen.insert(name.to_string());
        let items = parse_file(id, &self.files[id as usize], &masked)?;
        self.parsed.push(Vec::new());
        for item in &items {
            if let ItemKind::Import(path) = &item.kind {
                if path == PRELUDE_NAME {
                    continue;
                }
                let file = &self.files[id as usize];
                let Some((rname, rtext)) = (self.resolve)(&file.name, path) else {
                    return Err(file.error(
                        item.span.start as usize,
                        item.span.end as usize,
                        format!("cannot find imported file `{path}` (paths are relative to the importing file)"),
                    ));
                };
                if !self.seen.contains(&rname) {
                    self.add(&rname, &rtext)?;
                }
            }
        }
        self.parsed[id as usize] = items;
        self.order.push(id);
        Ok(id)
    }
}

/// Loads the prelude, `root` and its imports, and resolves the item table.
pub(crate) fn load(
    root: &str,
    root_text: &str,
    resolve: Resolver<'_>,
) -> Result<(Vec<SourceFile>, Items), DslError> {
    let mut loader = Loader {
        files: Vec::new(),
        parsed: Vec::new(),
        order: Vec::new(),
        seen: HashSet::new(),
        resolve,
    };
    loader.add(PRELUDE_NAME, PRELUDE)?;
    let root_id = loader.add(root, root_text)?;
    let Loader {
        files,
        parsed,
        order,
        ..
    } = loader;
    let items = build_table(&files, parsed, &order, root_id)?;
    Ok((files, items))
}

fn err_at(files: &[SourceFile], span: Span, msg: impl Into<String>) -> DslError {
    files[span.file as usize].error(span.start as usize, span.end as usize, msg)
}

fn pos(files: &[SourceFile], span: Span) -> String {
    files[span.file as usize].pos(span.start as usize)
}

fn check_module<'a>(files: &[SourceFile], m: &'a ModuleDef) -> Result<(), DslError> {
    let mut seen: HashMap<&str, Span> = HashMap::new();
    let mut check = |name: &'a Name, what: &str| -> Result<(), DslError> {
        if let Some(prev) = seen.insert(&name.text, name.span) {
            return Err(err_at(
                files,
                name.span,
                format!(
                    "{what} `{}` is already defined in module `{}` at {}",
                    name.text,
                    m.name.text,
                    pos(files, prev)
                ),
            ));
        }
        Ok(())
    };
    for member in &m.members {
        match member {
            Member::Param(p) => check(&p.name, "param")?,
            Member::Sub(s) => check(&s.name, "sub")?,
            Member::Let(..) => {}
        }
    }
    for f in &m.methods {
        check(&f.name, "method")?;
    }
    Ok(())
}

fn build_table(
    files: &[SourceFile],
    parsed: Vec<Vec<Item>>,
    order: &[u32],
    root: u32,
) -> Result<Items, DslError> {
    let mut items = Items::default();
    let mut defined_at: HashMap<String, Span> = HashMap::new();
    let mut entries: Vec<(u32, Name)> = Vec::new();
    let mut last_module: Option<u32> = None;
    let mut parsed: Vec<Option<Vec<Item>>> = parsed.into_iter().map(Some).collect();
    for &fid in order {
        let Some(file_items) = parsed[fid as usize].take() else {
            continue;
        };
        for item in file_items {
            let (name, new_ref) = match item.kind {
                ItemKind::Import(_) => continue,
                ItemKind::Entry(n) => {
                    entries.push((fid, n));
                    continue;
                }
                ItemKind::Const(c) => {
                    items.consts.push(c);
                    let c = items.consts.last().map(|c| c.name.clone());
                    (c, ItemRef::Const(items.consts.len() as u32 - 1))
                }
                ItemKind::Fn(f) => {
                    items.fns.push(f);
                    let n = items.fns.last().map(|f| f.name.clone());
                    (n, ItemRef::Fn(items.fns.len() as u32 - 1))
                }
                ItemKind::Module(m) => {
                    check_module(files, &m)?;
                    items.modules.push(m);
                    let idx = items.modules.len() as u32 - 1;
                    if fid != 0 {
                        last_module = Some(idx);
                    }
                    (
                        items.modules.last().map(|m| m.name.clone()),
                        ItemRef::Module(idx),
                    )
                }
            };
            let Some(name) = name else { continue };
            match (items.table.get(&name.text).copied(), item.is_override) {
                (Some(old), false) => {
                    let prev = defined_at.get(&name.text).copied().unwrap_or(name.span);
                    return Err(err_at(
                        files,
                        name.span,
                        format!(
                            "`{}` is already defined at {}; write `override {} {}` to replace it",
                            name.text,
                            pos(files, prev),
                            old.kind(),
                            name.text
                        ),
                    ));
                }
                (None, true) => {
                    let msg = format!(
                        "`override` of unknown item `{}`: nothing named so is defined before this point{}",
                        name.text,
                        suggestion(&name.text, items.table.keys().map(|k| k.as_str()))
                    );
                    return Err(err_at(files, name.span, msg));
                }
                (Some(old), true) if old.kind() != new_ref.kind() => {
                    let prev = defined_at.get(&name.text).copied().unwrap_or(name.span);
                    return Err(err_at(
                        files,
                        name.span,
                        format!(
                            "`override {} {}` replaces a {} (defined at {}); an override must keep the kind",
                            new_ref.kind(),
                            name.text,
                            old.kind(),
                            pos(files, prev)
                        ),
                    ));
                }
                _ => {}
            }
            items.table.insert(name.text.clone(), new_ref);
            defined_at.insert(name.text.clone(), name.span);
        }
    }
    // Entry: the root file's, else the last one among its imports, else the last module defined.
    let root_entries: Vec<&(u32, Name)> = entries.iter().filter(|(f, _)| *f == root).collect();
    if root_entries.len() > 1 {
        let second = &root_entries[1].1;
        return Err(err_at(
            files,
            second.span,
            "a file may declare only one `entry`",
        ));
    }
    let entry_name = root_entries
        .first()
        .copied()
        .or_else(|| entries.last())
        .map(|(_, n)| n.clone());
    items.entry = match entry_name {
        Some(n) => match items.table.get(&n.text) {
            Some(ItemRef::Module(i)) => *i,
            Some(other) => {
                return Err(err_at(
                    files,
                    n.span,
                    format!("entry `{}` is a {}, not a module", n.text, other.kind()),
                ))
            }
            None => {
                let modules = items
                    .table
                    .iter()
                    .filter(|(_, r)| matches!(r, ItemRef::Module(_)));
                let msg = format!(
                    "entry names unknown module `{}`{}",
                    n.text,
                    suggestion(&n.text, modules.map(|(k, _)| k.as_str()))
                );
                return Err(err_at(files, n.span, msg));
            }
        },
        None => match last_module {
            Some(i) => {
                // The last module defined, or whatever replaced it.
                let name = &items.modules[i as usize].name.text;
                match items.table.get(name) {
                    Some(ItemRef::Module(j)) => *j,
                    _ => i,
                }
            }
            None => {
                return Err(DslError::bare(
                    &files[root as usize].name,
                    "no module is defined, so there is no entry module to lower",
                ))
            }
        },
    };
    Ok(items)
}
