//! Building a cache in two steps so nothing heavy loads before the cheap checks pass:
//! [`plan_cache`] reads the dataset, applies the bad-row policy, checks an existing manifest on
//! `--resume` and finds the rows already done; [`CachePlan::run`] encodes the rest with a loaded
//! [`EditEncoder`]. Row files are named by dataset index plus a key of the row's content, so a
//! resumed run never reuses a file made for a row that has since changed.

use super::encode::encode_row;
use super::hash::{fnv1a64, hex};
use super::identity::ModelIdentity;
use super::manifest::{
    manifest_name, read_manifest_file, write_manifest, CacheManifest, CacheRowEntry, CacheSettings,
    DatasetInfo, Shard, SkippedRow, FORMAT, VERSION,
};
use super::row_file::{read_row, write_row};
use crate::data::training::row_source;
use crate::data::{read_training_rows, TrainRow};
use crate::pipeline::EditEncoder;
use crate::ModelError;
use std::path::PathBuf;

/// What `qie cache` was asked to do.
pub struct CacheJob {
    pub dataset: PathBuf,
    pub out: PathBuf,
    pub model: ModelIdentity,
    pub settings: CacheSettings,
    pub resume: bool,
    pub shard: Option<Shard>,
    /// Record bad rows in the manifest and go on; otherwise any bad row stops the run.
    pub skip_bad_rows: bool,
}

/// The rows still to encode and the manifest so far.
pub struct CachePlan {
    job: CacheJob,
    manifest: CacheManifest,
    todo: Vec<TrainRow>,
    /// Rows whose files a previous run completed.
    pub reused: usize,
}

#[derive(Debug)]
pub struct CacheReport {
    pub written: usize,
    pub reused: usize,
    pub skipped: Vec<SkippedRow>,
    pub manifest: PathBuf,
}

pub fn plan_cache(job: CacheJob) -> Result<CachePlan, ModelError> {
    let bytes = std::fs::read(&job.dataset)
        .map_err(|e| ModelError::new(format!("{}: {e}", job.dataset.display())))?;
    let (rows, bad) = read_training_rows(&job.dataset)?;
    let total_rows = read_total(&rows, &bad);
    let mine = |index: usize| job.shard.is_none_or(|s| index % s.count == s.index);
    let rows: Vec<TrainRow> = rows.into_iter().filter(|r| mine(r.index)).collect();
    let bad: Vec<_> = bad.into_iter().filter(|b| mine(b.index)).collect();
    if !bad.is_empty() && !job.skip_bad_rows {
        let lines: Vec<String> = bad.iter().map(|b| format!("  {b}")).collect();
        return Err(ModelError::new(format!(
            "{}: {} bad row(s); fix them, or pass --skip-bad-rows to cache the others \
             (the skipped rows are listed in the manifest):\n{}",
            job.dataset.display(),
            bad.len(),
            lines.join("\n")
        )));
    }
    let manifest_path = job.out.join(manifest_name(job.shard));
    if manifest_path.exists() {
        if !job.resume {
            return Err(ModelError::new(format!(
                "{} already exists: pass --resume to continue that cache, or choose another --out",
                manifest_path.display()
            )));
        }
        let old = read_manifest_file(&manifest_path)?;
        let mut diffs = old.model.differences(&job.model);
        diffs.extend(old.settings.differences(&job.settings));
        if !diffs.is_empty() {
            return Err(ModelError::new(format!(
                "{}: cannot resume, the cache was made differently (cache vs now): {}",
                manifest_path.display(),
                diffs.join("; ")
            )));
        }
    }
    std::fs::create_dir_all(job.out.join("rows"))
        .map_err(|e| ModelError::new(format!("{}: {e}", job.out.display())))?;
    let mut manifest = CacheManifest {
        format: FORMAT.to_string(),
        version: VERSION,
        complete: false,
        model: job.model.clone(),
        settings: job.settings.clone(),
        dataset: DatasetInfo {
            path: job.dataset.display().to_string(),
            hash: hex(fnv1a64(&bytes)),
            rows: total_rows,
        },
        shard: job.shard,
        rows: Vec::new(),
        skipped: bad
            .iter()
            .map(|b| SkippedRow {
                index: b.index,
                source: row_source(&job.dataset, b.line),
                reason: b.message.clone(),
            })
            .collect(),
    };
    let mut todo = Vec::new();
    for row in rows {
        let file = row_file_name(&row);
        let path = job.out.join(&file);
        let reusable = job.resume && path.is_file();
        match reusable.then(|| read_row(&path)) {
            Some(Ok(t)) => manifest.rows.push(CacheRowEntry {
                index: row.index,
                source: row.source.clone(),
                file,
                target_grid: t.target_grid,
                reference_grids: t.reference_grids,
                prompt: row.prompt.clone(),
                prompt_tokens: t.prompt_embeds.shape()[1],
            }),
            // A damaged file from an earlier run is encoded again.
            Some(Err(_)) | None => todo.push(row),
        }
    }
    let reused = manifest.rows.len();
    write_manifest(&job.out, &manifest)?;
    Ok(CachePlan {
        job,
        manifest,
        todo,
        reused,
    })
}

/// Rows in the file: the largest index seen + 1 (both lists are in file order).
fn read_total(rows: &[TrainRow], bad: &[crate::data::BadRow]) -> usize {
    let last = rows
        .iter()
        .map(|r| r.index)
        .chain(bad.iter().map(|b| b.index))
        .max();
    last.map_or(0, |i| i + 1)
}

/// `rows/000012-<key>.safetensors`; the key covers the prompt and each image's path and size.
fn row_file_name(row: &TrainRow) -> String {
    let mut text = row.prompt.clone();
    for p in row.images() {
        let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        text.push_str(&format!("\0{}\0{size}", p.display()));
    }
    format!(
        "rows/{:06}-{}.safetensors",
        row.index,
        &hex(fnv1a64(text.as_bytes()))[..12]
    )
}

impl CachePlan {
    /// Rows left to encode.
    pub fn remaining(&self) -> usize {
        self.todo.len()
    }

    pub fn rows_in_shard(&self) -> usize {
        self.todo.len() + self.reused
    }

    /// Encodes the remaining rows; `on_row(done, total, source)` after each. An encoding failure
    /// stops the run (the manifest stays incomplete, `--resume` continues) unless
    /// `skip_bad_rows`, which records it and goes on.
    pub fn run(
        mut self,
        encoder: &EditEncoder,
        on_row: &mut dyn FnMut(usize, usize, &str),
    ) -> Result<CacheReport, ModelError> {
        if encoder.flavour != self.job.settings.flavour {
            return Err(ModelError::new(format!(
                "the encoder is {:?}, the cache settings say {:?}",
                encoder.flavour, self.job.settings.flavour
            )));
        }
        let total = self.todo.len();
        let mut written = 0;
        for (n, row) in std::mem::take(&mut self.todo).into_iter().enumerate() {
            let file = row_file_name(&row);
            match encode_row(encoder, &row, &self.job.settings) {
                Ok(encoded) => {
                    write_row(&self.job.out.join(&file), &encoded)?;
                    self.manifest.rows.push(CacheRowEntry {
                        index: row.index,
                        source: row.source.clone(),
                        file,
                        target_grid: encoded.target_grid,
                        reference_grids: encoded.reference_grids.clone(),
                        prompt: row.prompt.clone(),
                        prompt_tokens: encoded.prompt_embeds.shape()[1],
                    });
                    written += 1;
                }
                Err(e) if self.job.skip_bad_rows => self.manifest.skipped.push(SkippedRow {
                    index: row.index,
                    source: row.source.clone(),
                    reason: e.to_string(),
                }),
                Err(e) => {
                    write_manifest(&self.job.out, &self.manifest)?;
                    return Err(e.context(&row.source));
                }
            }
            on_row(n + 1, total, &row.source);
        }
        self.write_complete(written)
    }

    /// Completes the manifest when a resumed run finds every row done (no encoder needed).
    pub fn finish(self) -> Result<CacheReport, ModelError> {
        if !self.todo.is_empty() {
            return Err(ModelError::new(format!(
                "{} row(s) still need encoding",
                self.todo.len()
            )));
        }
        self.write_complete(0)
    }

    fn write_complete(mut self, written: usize) -> Result<CacheReport, ModelError> {
        self.manifest.rows.sort_by_key(|r| r.index);
        self.manifest.skipped.sort_by_key(|r| r.index);
        self.manifest.complete = true;
        let manifest = write_manifest(&self.job.out, &self.manifest)?;
        Ok(CacheReport {
            written,
            reused: self.reused,
            skipped: self.manifest.skipped.clone(),
            manifest,
        })
    }
}
