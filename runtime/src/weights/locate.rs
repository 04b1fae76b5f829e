//! Finding the checkpoint inside a path the user gave us.
//!
//! Conventions (diffusers / transformers):
//! - `diffusion_pytorch_model.safetensors[.index.json]` (diffusers models),
//! - `model.safetensors[.index.json]` (transformers models).
//!
//! A directory is searched for `*.safetensors.index.json` first (sharded
//! checkpoints), then for `*.safetensors`. Several candidates are fine when
//! exactly one has a conventional name; otherwise we refuse to guess.

use std::path::{Path, PathBuf};

use super::error::{Result, WeightsError};

const INDEX_SUFFIX: &str = ".safetensors.index.json";
const FILE_SUFFIX: &str = ".safetensors";
const CONVENTIONAL_STEMS: [&str; 2] = ["diffusion_pytorch_model", "model"];

/// What a user path resolved to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Checkpoint {
    /// One `.safetensors` file.
    Single(PathBuf),
    /// A `*.safetensors.index.json` listing shard files.
    Sharded(PathBuf),
}

/// Resolves a file or directory to the checkpoint it holds.
pub(crate) fn locate(path: &Path) -> Result<Checkpoint> {
    let meta = std::fs::metadata(path).map_err(|e| WeightsError::io(path, e))?;
    if !meta.is_dir() {
        let is_index = file_name(path).is_some_and(|n| n.ends_with(".index.json"));
        return Ok(if is_index {
            Checkpoint::Sharded(path.to_path_buf())
        } else {
            Checkpoint::Single(path.to_path_buf())
        });
    }

    let mut indexes = Vec::new();
    let mut files = Vec::new();
    let entries = std::fs::read_dir(path).map_err(|e| WeightsError::io(path, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| WeightsError::io(path, e))?;
        let is_file = entry
            .file_type()
            .map(|t| t.is_file() || t.is_symlink())
            .unwrap_or(false);
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !is_file || name.starts_with('.') {
            continue;
        }
        if name.ends_with(INDEX_SUFFIX) {
            indexes.push(name);
        } else if name.ends_with(FILE_SUFFIX) {
            files.push(name);
        }
    }

    if !indexes.is_empty() {
        let name = pick(path, indexes, INDEX_SUFFIX)?;
        return Ok(Checkpoint::Sharded(path.join(name)));
    }
    if !files.is_empty() {
        let name = pick(path, files, FILE_SUFFIX)?;
        return Ok(Checkpoint::Single(path.join(name)));
    }
    Err(WeightsError::NoWeights {
        dir: path.to_path_buf(),
    })
}

/// Picks the only candidate, or the only conventionally named one.
fn pick(dir: &Path, mut names: Vec<String>, suffix: &str) -> Result<String> {
    if names.len() == 1 {
        return Ok(names.remove(0));
    }
    let conventional: Vec<&String> = names
        .iter()
        .filter(|n| {
            CONVENTIONAL_STEMS
                .iter()
                .any(|s| **n == format!("{s}{suffix}"))
        })
        .collect();
    if let [one] = conventional.as_slice() {
        return Ok((*one).clone());
    }
    names.sort();
    Err(WeightsError::Ambiguous {
        dir: dir.to_path_buf(),
        candidates: names.into_iter().map(PathBuf::from).collect(),
    })
}

fn file_name(path: &Path) -> Option<&str> {
    path.file_name().and_then(|n| n.to_str())
}
