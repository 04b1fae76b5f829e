//! `manifest.json` of a training cache: format version, the model it was encoded with, the
//! settings, the dataset, one entry per cached row and the rows skipped (with why). A shard
//! (`--shard i/n`) writes `manifest.shard-<i>-of-<n>.json` next to the others' in the same folder;
//! [`read_manifest`] merges a complete set of shard manifests when there is no `manifest.json`.

use super::identity::ModelIdentity;
use crate::data::SizeRule;
use crate::pipeline::Flavour;
use crate::ModelError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "qie-cache";
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheManifest {
    pub format: String,
    pub version: u32,
    /// False while `qie cache` runs (or after it was interrupted: `--resume` continues).
    pub complete: bool,
    pub model: ModelIdentity,
    pub settings: CacheSettings,
    pub dataset: DatasetInfo,
    pub shard: Option<Shard>,
    pub rows: Vec<CacheRowEntry>,
    pub skipped: Vec<SkippedRow>,
}

/// Everything besides the model that changes what is cached.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheSettings {
    pub flavour: Flavour,
    /// VAE area, `--max-pixels`, buckets.
    pub size: SizeRule,
    /// Pixel area the VL model sees each input at (Plus; Edit uses the VAE-sized image).
    pub vl_area: usize,
    /// "multimodal" or "sequential" RoPE positions in the VL model.
    pub text_positions: String,
    /// "torchvision" or "pil" resize in the VL image processor.
    pub vl_resize: String,
    /// "f32" or "bf16": the precision the encoders ran at (tensors are stored as f32).
    pub precision: String,
}

impl CacheSettings {
    /// What differs from `other`, one line each.
    pub fn differences(&self, other: &CacheSettings) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name}: {a} vs {b}"));
            }
        };
        cmp(
            "flavour",
            format!("{:?}", self.flavour),
            format!("{:?}", other.flavour),
        );
        cmp(
            "VAE area",
            self.size.area.to_string(),
            other.size.area.to_string(),
        );
        cmp(
            "max pixels",
            format!("{:?}", self.size.max_pixels),
            format!("{:?}", other.size.max_pixels),
        );
        cmp(
            "buckets",
            self.size.buckets.to_string(),
            other.size.buckets.to_string(),
        );
        cmp(
            "VL area",
            self.vl_area.to_string(),
            other.vl_area.to_string(),
        );
        cmp(
            "text positions",
            self.text_positions.clone(),
            other.text_positions.clone(),
        );
        cmp("VL resize", self.vl_resize.clone(), other.vl_resize.clone());
        cmp("precision", self.precision.clone(), other.precision.clone());
        out
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub path: String,
    /// FNV-1a 64 of the dataset file's bytes.
    pub hash: String,
    /// Rows in the file (good and bad).
    pub rows: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheRowEntry {
    /// Row position in the dataset file.
    pub index: usize,
    /// "data.jsonl:12".
    pub source: String,
    /// Relative to the cache folder.
    pub file: String,
    pub target_grid: [usize; 3],
    pub reference_grids: Vec<[usize; 3]>,
    pub prompt: String,
    /// Length of the prompt embeddings (tokens after the template is dropped).
    pub prompt_tokens: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SkippedRow {
    pub index: usize,
    pub source: String,
    pub reason: String,
}

/// The manifest file name of a (possibly sharded) cache.
pub fn manifest_name(shard: Option<Shard>) -> String {
    match shard {
        None => "manifest.json".to_string(),
        Some(s) => format!("manifest.shard-{}-of-{}.json", s.index, s.count),
    }
}

pub fn write_manifest(dir: &Path, manifest: &CacheManifest) -> Result<PathBuf, ModelError> {
    let path = dir.join(manifest_name(manifest.shard));
    let text = serde_json::to_string_pretty(manifest)
        .map_err(|e| ModelError::new(format!("{}: {e}", path.display())))?;
    super::write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

pub fn read_manifest_file(path: &Path) -> Result<CacheManifest, ModelError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelError::new(format!("{}: {e}", path.display())))?;
    let m: CacheManifest = serde_json::from_str(&text).map_err(|e| {
        ModelError::new(format!("{}: not a qie cache manifest: {e}", path.display()))
    })?;
    if m.format != FORMAT || m.version != VERSION {
        return Err(ModelError::new(format!(
            "{}: format {} version {}; this qie reads {FORMAT} version {VERSION}",
            path.display(),
            m.format,
            m.version
        )));
    }
    Ok(m)
}

/// `manifest.json`, or the merge of every `manifest.shard-*-of-N.json` in `dir`.
pub fn read_manifest(dir: &Path) -> Result<CacheManifest, ModelError> {
    let single = dir.join(manifest_name(None));
    if single.exists() {
        return read_manifest_file(&single);
    }
    let mut shards = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| ModelError::new(format!("{}: {e}", dir.display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("manifest.shard-") && name.ends_with(".json") {
            shards.push(read_manifest_file(&entry.path())?);
        }
    }
    if shards.is_empty() {
        return Err(ModelError::new(format!(
            "{}: no manifest.json (not a qie cache, or `qie cache` has not started there)",
            dir.display()
        )));
    }
    merge_shards(dir, shards)
}

fn merge_shards(dir: &Path, mut shards: Vec<CacheManifest>) -> Result<CacheManifest, ModelError> {
    shards.sort_by_key(|m| m.shard.map(|s| s.index));
    let count = shards[0].shard.map_or(1, |s| s.count);
    let first = &shards[0];
    for m in &shards[1..] {
        let name = manifest_name(m.shard);
        if m.shard.map(|s| s.count) != Some(count) {
            return Err(ModelError::new(format!(
                "{}: {name} belongs to a {}-way split, {} to a {count}-way one",
                dir.display(),
                m.shard.map_or(1, |s| s.count),
                manifest_name(first.shard)
            )));
        }
        let mut diffs = first.model.differences(&m.model);
        diffs.extend(first.settings.differences(&m.settings));
        if first.dataset.hash != m.dataset.hash {
            diffs.push(format!(
                "dataset hash {} vs {}",
                first.dataset.hash, m.dataset.hash
            ));
        }
        if !diffs.is_empty() {
            return Err(ModelError::new(format!(
                "{}: {name} was made differently from {}: {}",
                dir.display(),
                manifest_name(first.shard),
                diffs.join("; ")
            )));
        }
    }
    let present: Vec<usize> = shards
        .iter()
        .filter_map(|m| m.shard.map(|s| s.index))
        .collect();
    let missing: Vec<String> = (0..count)
        .filter(|i| !present.contains(i))
        .map(|i| manifest_name(Some(Shard { index: i, count })))
        .collect();
    if !missing.is_empty() {
        return Err(ModelError::new(format!(
            "{}: shard manifests missing: {} (copy every shard's files into one folder)",
            dir.display(),
            missing.join(", ")
        )));
    }
    let mut merged = shards[0].clone();
    merged.shard = None;
    merged.complete = shards.iter().all(|m| m.complete);
    merged.rows = shards.iter().flat_map(|m| m.rows.clone()).collect();
    merged.skipped = shards.iter().flat_map(|m| m.skipped.clone()).collect();
    merged.rows.sort_by_key(|r| r.index);
    merged.skipped.sort_by_key(|r| r.index);
    if let Some(incomplete) = shards.iter().find(|m| !m.complete) {
        return Err(ModelError::new(format!(
            "{}: {} is incomplete (that shard was interrupted: run it again with --resume)",
            dir.display(),
            manifest_name(incomplete.shard)
        )));
    }
    Ok(merged)
}
