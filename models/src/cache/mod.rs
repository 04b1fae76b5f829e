//! Training caches (`qie cache`): per row, the target's packed VAE latents, every input's packed
//! latents and the prompt embeddings, encoded exactly as inference conditions the DiT; one
//! safetensors file per row plus `manifest.json`. The trainer opens a cache with [`Cache::open`]
//! and never runs the VAE or the text encoder.

mod build;
mod encode;
pub mod hash;
pub mod identity;
pub mod manifest;
mod row_file;

pub use build::{plan_cache, CacheJob, CachePlan, CacheReport};
pub use encode::{encode_row, EncodedRow};
pub use identity::ModelIdentity;
pub use manifest::{CacheManifest, CacheRowEntry, CacheSettings, Shard, SkippedRow};

use crate::ModelError;
use qie_runtime::Tensor;
use std::path::{Path, PathBuf};

/// An opened, complete cache.
pub struct Cache {
    dir: PathBuf,
    manifest: CacheManifest,
}

/// One cached row, ready for a training step.
#[derive(Clone, Debug)]
pub struct CachedRow {
    /// [1, S_target, 64] f32, packed normalised latents.
    pub target: Tensor,
    /// [1, h/16, w/16].
    pub target_grid: [usize; 3],
    /// [1, S_refs, 64]: all inputs' tokens concatenated in order; None without inputs.
    pub references: Option<Tensor>,
    pub reference_grids: Vec<[usize; 3]>,
    /// [1, S_txt, joint_attention_dim] f32.
    pub prompt_embeds: Tensor,
    /// S_txt entries (all true for a single prompt).
    pub prompt_mask: Vec<bool>,
    /// "data.jsonl:12" for messages.
    pub source: String,
}

impl Cache {
    /// Reads `manifest.json` (or merges a complete set of shard manifests) and checks that the
    /// cache is complete and every row file exists.
    pub fn open(dir: &Path) -> Result<Cache, ModelError> {
        let manifest = manifest::read_manifest(dir)?;
        if !manifest.complete {
            return Err(ModelError::new(format!(
                "{}: the cache is incomplete (`qie cache` was interrupted or is still running); \
                 finish it with `qie cache --resume`",
                dir.display()
            )));
        }
        let missing: Vec<&str> = manifest
            .rows
            .iter()
            .map(|r| r.file.as_str())
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(ModelError::new(format!(
                "{}: {} row file(s) listed in the manifest are missing: {}{}",
                dir.display(),
                missing.len(),
                missing
                    .iter()
                    .take(5)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", "),
                if missing.len() > 5 { ", ..." } else { "" }
            )));
        }
        Ok(Cache {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    pub fn manifest(&self) -> &CacheManifest {
        &self.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn len(&self) -> usize {
        self.manifest.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.manifest.rows.is_empty()
    }

    /// Row `i` of the manifest (not the dataset index: see `manifest().rows[i].index`).
    pub fn load(&self, i: usize) -> Result<CachedRow, ModelError> {
        let entry = self.manifest.rows.get(i).ok_or_else(|| {
            ModelError::new(format!(
                "{}: row {i} requested, the cache has {}",
                self.dir.display(),
                self.len()
            ))
        })?;
        let path = self.dir.join(&entry.file);
        let t = row_file::read_row(&path)?;
        if t.target_grid != entry.target_grid || t.reference_grids != entry.reference_grids {
            return Err(ModelError::new(format!(
                "{}: grids {:?} / {:?} differ from the manifest's {:?} / {:?}",
                path.display(),
                t.target_grid,
                t.reference_grids,
                entry.target_grid,
                entry.reference_grids
            )));
        }
        let tokens = t.prompt_embeds.shape()[1];
        Ok(CachedRow {
            target: t.target,
            target_grid: t.target_grid,
            references: t.references,
            reference_grids: t.reference_grids,
            prompt_embeds: t.prompt_embeds,
            prompt_mask: vec![true; tokens],
            source: entry.source.clone(),
        })
    }

    /// Refuses a cache encoded with another model, naming what differs.
    pub fn check_compatible(&self, model: &ModelIdentity) -> Result<(), ModelError> {
        let diffs = self.manifest.model.differences(model);
        if diffs.is_empty() {
            return Ok(());
        }
        Err(ModelError::new(format!(
            "{}: the cache was encoded with another model (cache vs this model): {}; \
             re-run `qie cache` with this model",
            self.dir.display(),
            diffs.join("; ")
        )))
    }

    /// Refuses a cache made with other settings (areas, buckets, positions...), naming them.
    pub fn check_settings(&self, settings: &CacheSettings) -> Result<(), ModelError> {
        let diffs = self.manifest.settings.differences(settings);
        if diffs.is_empty() {
            return Ok(());
        }
        Err(ModelError::new(format!(
            "{}: the cache was made with other settings (cache vs requested): {}",
            self.dir.display(),
            diffs.join("; ")
        )))
    }

    /// Every row's shape key, in cache order, for [`crate::data::batches`].
    pub fn shape_keys(&self) -> Vec<crate::data::ShapeKey> {
        self.manifest
            .rows
            .iter()
            .map(|r| crate::data::ShapeKey {
                target: r.target_grid,
                references: r.reference_grids.clone(),
            })
            .collect()
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let err = |e: std::io::Error| ModelError::new(format!("{}: {e}", path.display()));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
