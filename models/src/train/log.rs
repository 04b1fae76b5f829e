//! `train.jsonl`: one JSON object per optimizer step, appended and flushed as it happens, so a
//! crashed run keeps every step it finished. On resume, lines beyond the checkpoint's step are
//! dropped (they belong to steps that will be redone).

use crate::ModelError;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepRecord {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub step_s: f64,
    pub samples: usize,
    pub epoch: u64,
}

pub struct StepLog {
    path: PathBuf,
    file: std::fs::File,
}

impl StepLog {
    /// Opens `dir/train.jsonl`, keeping only the records of steps <= `keep_through`.
    pub fn open(dir: &Path, keep_through: u64) -> Result<StepLog, ModelError> {
        let path = dir.join("train.jsonl");
        let err = |e: std::io::Error| ModelError::new(format!("{}: {e}", path.display()));
        let kept: Vec<String> = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s <= keep_through)
                })
                .map(str::to_string)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(err(e)),
        };
        let mut body = kept.join("\n");
        if !body.is_empty() {
            body.push('\n');
        }
        std::fs::create_dir_all(dir).map_err(err)?;
        std::fs::write(&path, body).map_err(err)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(err)?;
        Ok(StepLog { path, file })
    }

    pub fn append(&mut self, record: &StepRecord) -> Result<(), ModelError> {
        let line = serde_json::to_string(record).expect("plain data");
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .map_err(|e| ModelError::new(format!("{}: {e}", self.path.display())))
    }
}

/// Reads the records of a `train.jsonl` (tests, reports).
pub fn read_log(path: &Path) -> Result<Vec<serde_json::Value>, ModelError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelError::new(format!("{}: {e}", path.display())))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| ModelError::new(format!("{}:{}: {e}", path.display(), i + 1)))
        })
        .collect()
}
