//! Resumable training checkpoints: the trainable tensors (f32 master copies), the AdamW moments
//! and the loop's position, written into a temporary folder and renamed into place, so a
//! checkpoint either exists whole or not at all.

use super::adamw::AdamWState;
use crate::ModelError;
use qie_runtime::weights::{save_safetensors, WeightStore};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const WEIGHTS: &str = "trainable.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";

/// Where the loop stands after `step` optimizer steps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopState {
    pub step: u64,
    /// Epoch and batch index within it of the next batch.
    pub epoch: u64,
    pub batch_in_epoch: u64,
    pub seed: u64,
    /// Fingerprint of the settings that must not change across a resume.
    pub fingerprint: String,
}

/// Trainable tensors by name and shape, flattened in order into the master vector.
pub type Layout = [(String, Vec<usize>)];

pub struct Checkpoint {
    pub state: LoopState,
    pub master: Vec<f32>,
    pub optimizer: AdamWState,
}

/// Writes `OUT/checkpoint-<step>/` atomically and returns its path.
pub fn save(
    out: &Path,
    layout: &Layout,
    master: &[f32],
    optimizer: &AdamWState,
    state: &LoopState,
) -> Result<PathBuf, ModelError> {
    let io = |p: &Path, e: &dyn std::fmt::Display| ModelError::new(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(out).map_err(|e| io(out, &e))?;
    let final_dir = out.join(format!("checkpoint-{}", state.step));
    let tmp = tempfile::Builder::new()
        .prefix(".checkpoint-")
        .tempdir_in(out)
        .map_err(|e| io(out, &e))?;
    let split = |values: &[f32], prefix: &str| -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut at = 0;
        layout
            .iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let v = values[at..at + n].to_vec();
                at += n;
                (format!("{prefix}{name}"), shape.clone(), v)
            })
            .collect()
    };
    let write = |path: PathBuf, tensors: Vec<(String, Vec<usize>, Vec<f32>)>| {
        let refs: Vec<(&str, Vec<usize>, &[f32])> = tensors
            .iter()
            .map(|(n, s, v)| (n.as_str(), s.clone(), v.as_slice()))
            .collect();
        save_safetensors(&path, &refs).map_err(|e| io(&path, &e))
    };
    write(tmp.path().join(WEIGHTS), split(master, ""))?;
    let mut moments = split(&optimizer.exp_avg, "exp_avg.");
    moments.extend(split(&optimizer.exp_avg_sq, "exp_avg_sq."));
    write(tmp.path().join(OPTIMIZER), moments)?;
    let json = serde_json::json!({ "loop": state, "optimizer_step": optimizer.step });
    let state_path = tmp.path().join(STATE);
    std::fs::write(
        &state_path,
        serde_json::to_string_pretty(&json).expect("plain data"),
    )
    .map_err(|e| io(&state_path, &e))?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| io(&final_dir, &e))?;
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, &final_dir).map_err(|e| io(&final_dir, &e))?;
    Ok(final_dir)
}

/// The newest complete `checkpoint-<step>` in `dir`, or `dir` itself when it is one.
pub fn find_latest(dir: &Path) -> Result<PathBuf, ModelError> {
    if dir.join(STATE).exists() {
        return Ok(dir.to_path_buf());
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ModelError::new(format!("--resume {}: {e}", dir.display())))?;
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(step) = name
            .strip_prefix("checkpoint-")
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if entry.path().join(STATE).exists() && best.as_ref().is_none_or(|(b, _)| step > *b) {
            best = Some((step, entry.path()));
        }
    }
    best.map(|(_, p)| p).ok_or_else(|| {
        ModelError::new(format!(
            "--resume {}: no checkpoint-<step> folder with a {STATE} in it",
            dir.display()
        ))
    })
}

/// Reads a checkpoint written by [`save`] for `layout`; every mismatch is an error naming the
/// file and tensor.
pub fn load(dir: &Path, layout: &Layout) -> Result<Checkpoint, ModelError> {
    let at = |file: &str, e: &dyn std::fmt::Display| {
        ModelError::new(format!("{}: {e}", dir.join(file).display()))
    };
    let text = std::fs::read_to_string(dir.join(STATE)).map_err(|e| at(STATE, &e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| at(STATE, &e))?;
    let state: LoopState =
        serde_json::from_value(json["loop"].clone()).map_err(|e| at(STATE, &e))?;
    let optimizer_step = json["optimizer_step"]
        .as_u64()
        .ok_or_else(|| at(STATE, &"no optimizer_step"))?;
    let read = |file: &str, prefix: &str| -> Result<Vec<f32>, ModelError> {
        let store = WeightStore::open(dir.join(file)).map_err(|e| at(file, &e))?;
        let mut out = Vec::new();
        for (name, shape) in layout {
            let key = format!("{prefix}{name}");
            let info = store
                .info(&key)
                .ok_or_else(|| at(file, &format!("no tensor `{key}`")))?;
            if info.shape != *shape {
                return Err(at(
                    file,
                    &format!(
                        "tensor `{key}` has shape {:?}, expected {shape:?}",
                        info.shape
                    ),
                ));
            }
            out.extend(store.load_f32(&key).map_err(|e| at(file, &e))?);
        }
        Ok(out)
    };
    Ok(Checkpoint {
        master: read(WEIGHTS, "")?,
        optimizer: AdamWState {
            step: optimizer_step,
            exp_avg: read(OPTIMIZER, "exp_avg.")?,
            exp_avg_sq: read(OPTIMIZER, "exp_avg_sq.")?,
        },
        state,
    })
}
