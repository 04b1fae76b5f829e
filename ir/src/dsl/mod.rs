//! The qie model DSL (see SPEC.md): `.qie` sources -> [`Program`] -> a static-shape [`Graph`].
//!
//! Lowering is symbolic evaluation: an interpreter walks the AST with concrete input shapes and a
//! config.json, inlines every call, unrolls every loop and emits IR through `Graph::add`.
//!
//! ```
//! use qie_ir::dsl::Program;
//! use qie_ir::{DType, TensorType};
//! let src = r#"
//!     module Model() {
//!         sub proj = Linear(4, 2);
//!         fn forward(x: f32[B, 4]) { output y = silu(proj(x)); }
//!     }
//! "#;
//! let prog = Program::from_sources("model.qie", &|name: &str| (name == "model.qie").then(|| src.to_string())).unwrap();
//! let g = prog
//!     .lower(&serde_json::json!({}), &[("x".into(), TensorType::new(DType::F32, &[3, 4]))], &[])
//!     .unwrap();
//! assert_eq!(g.ty(g.output("y").unwrap()).shape.as_slice(), &[3, 2]);
//! ```

mod ast;
mod builtins;
mod error;
mod eval;
mod instance;
mod items;
mod lower;
mod ops;
mod param_init;
mod parse;
mod value;

pub use error::{DslError, SourceFile};

use crate::{DType, Graph, TensorType};
use std::path::{Path, PathBuf};

/// Parsed files and the resolved item table (prelude, root file and its imports, overrides applied).
#[derive(Debug)]
pub struct Program {
    files: Vec<SourceFile>,
    items: items::Items,
}

/// One parameter of the entry module's `forward`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputDecl {
    pub name: String,
    pub kind: InputKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// A graph input; `dims` are the source text of each dimension (`"B"`, `"dim * 2"`).
    Tensor {
        dtype: DType,
        dims: Vec<String>,
        optional: bool,
    },
    /// A compile-time argument supplied by the caller (part of the specialisation key).
    Static,
}

/// A compile-time argument of the entry `forward`.
#[derive(Clone, Debug, PartialEq)]
pub enum StaticValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    List(Vec<StaticValue>),
}

fn parent_dir(name: &str) -> &str {
    name.rfind('/').map_or("", |i| &name[..i])
}

fn join_path(dir: &str, rel: &str) -> String {
    let mut parts: Vec<&str> = if dir.is_empty() {
        Vec::new()
    } else {
        dir.split('/').collect()
    };
    for seg in rel.split('/') {
        match seg {
            "." | "" => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    parts.join("/")
}

impl Program {
    /// Loads `path` and its imports from disk (imports are relative to the importing file).
    pub fn load(path: &Path) -> Result<Program, DslError> {
        let root = path.to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(path)
            .map_err(|e| DslError::bare(&root, format!("cannot read the model source: {e}")))?;
        let resolve = |importer: &str, import: &str| {
            let name = join_path(parent_dir(importer), import);
            std::fs::read_to_string(PathBuf::from(&name))
                .ok()
                .map(|t| (name, t))
        };
        Program::build(&root, &text, &resolve)
    }

    /// Loads from a host resolver: `read(name)` returns a file's text. The root is `read(root)`;
    /// an `import "p"` is first asked as `p` (embedded sources), then relative to the importer.
    pub fn from_sources(
        root: &str,
        read: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Program, DslError> {
        let text = read(root).ok_or_else(|| DslError::bare(root, "source not found"))?;
        let resolve = |importer: &str, import: &str| {
            if let Some(t) = read(import) {
                return Some((import.to_string(), t));
            }
            let rel = join_path(parent_dir(importer), import);
            read(&rel).map(|t| (rel, t))
        };
        Program::build(root, &text, &resolve)
    }

    fn build(root: &str, text: &str, resolve: items::Resolver<'_>) -> Result<Program, DslError> {
        let (files, items) = items::load(root, text, resolve)?;
        Ok(Program { files, items })
    }

    /// Name of the entry module.
    pub fn entry(&self) -> &str {
        &self.items.modules[self.items.entry as usize].name.text
    }

    /// The loaded files (prelude first), e.g. to show source excerpts.
    pub fn files(&self) -> &[SourceFile] {
        &self.files
    }

    /// The parameters of the entry module's `forward`.
    pub fn signature(&self) -> Result<Vec<InputDecl>, DslError> {
        lower::signature(self)
    }

    /// Lowers the entry module for a config (config.json contents), tensor inputs (name, type; every
    /// required annotated forward parameter) and static arguments (the unannotated ones).
    pub fn lower(
        &self,
        config: &serde_json::Value,
        inputs: &[(String, TensorType)],
        statics: &[(String, StaticValue)],
    ) -> Result<Graph, DslError> {
        lower::lower(self, config, None, inputs, statics)
    }

    /// [`Program::lower`] with the `adapter` namespace set to `adapter` (a JSON object: the
    /// settings of an adapter source layered on the model, e.g. LoRA's rank, alpha and targets).
    /// Without one, `adapter.key` is missing like an absent optional config key.
    pub fn lower_with_adapter(
        &self,
        config: &serde_json::Value,
        adapter: &serde_json::Value,
        inputs: &[(String, TensorType)],
        statics: &[(String, StaticValue)],
    ) -> Result<Graph, DslError> {
        lower::lower(self, config, Some(adapter), inputs, statics)
    }
}
