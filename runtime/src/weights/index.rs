//! Parsing `*.safetensors.index.json`:
//! `{"metadata": {...}, "weight_map": {"tensor.name": "shard-file.safetensors"}}`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::error::{Result, WeightsError};

/// The weight map of an index, grouped by shard.
pub(crate) struct ShardIndex {
    pub path: PathBuf,
    /// Shard path (resolved against the index's directory) -> tensor names
    /// the index maps to it, in name order.
    pub shards: BTreeMap<PathBuf, Vec<String>>,
}

impl ShardIndex {
    /// Reads and validates the index file; shard files are not opened here.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| WeightsError::io(path, e))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| WeightsError::index(path, format!("not valid json: {e}")))?;
        let Some(map) = json.get("weight_map").and_then(Value::as_object) else {
            return Err(WeightsError::index(path, "no \"weight_map\" object"));
        };
        let dir = path.parent().unwrap_or(Path::new(""));
        let mut shards: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
        for (tensor, file) in map {
            let Some(file) = file.as_str() else {
                return Err(WeightsError::index(
                    path,
                    format!("weight_map entry '{tensor}' is not a file name: {file}"),
                ));
            };
            if file.is_empty() {
                return Err(WeightsError::index(
                    path,
                    format!("weight_map entry '{tensor}' has an empty file name"),
                ));
            }
            shards
                .entry(dir.join(file))
                .or_default()
                .push(tensor.clone());
        }
        Ok(ShardIndex {
            path: path.to_path_buf(),
            shards,
        })
    }

    /// Fails naming the index and the first shard that does not exist.
    pub fn check_shards_exist(&self) -> Result<()> {
        for (shard, tensors) in &self.shards {
            if !shard.exists() {
                return Err(WeightsError::MissingShard {
                    index: self.path.clone(),
                    shard: shard.clone(),
                    tensor: tensors[0].clone(),
                    others: tensors.len() - 1,
                });
            }
        }
        Ok(())
    }
}
