//! Which checkpoint a cache was encoded with: the pipeline class and, for every component whose
//! output the cache holds (VAE, text encoder, tokenizer, processor), the hashes of its small text
//! files (configs, vocabularies) and the names and sizes of its weight files. Cheap to compute
//! (no weight is read) and precise enough to refuse a cache made with another model.

use super::hash::{fnv1a64, hex};
use crate::hub::{model_paths_from_folder, ModelPaths};
use crate::ModelError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Files larger than this are identified by name and size only.
const HASHED_FILE_LIMIT: u64 = 64 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    pub pipeline_class: String,
    /// "vae", "text_encoder", "tokenizer", "processor".
    pub components: BTreeMap<String, ComponentIdentity>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentIdentity {
    /// File name -> content hash (small files) or "size:<bytes>" (weights).
    pub files: BTreeMap<String, String>,
}

impl ModelIdentity {
    /// The identity of a diffusers-layout folder.
    pub fn of_model_dir(dir: &Path) -> Result<ModelIdentity, ModelError> {
        Self::of_paths(&model_paths_from_folder(dir)?)
    }

    /// The identity of resolved model paths (a local folder or a hub snapshot).
    pub fn of_paths(paths: &ModelPaths) -> Result<ModelIdentity, ModelError> {
        let mut components = BTreeMap::new();
        let mut dirs = vec![
            ("vae", paths.vae.as_path()),
            ("text_encoder", paths.text_encoder.as_path()),
            ("tokenizer", paths.tokenizer.as_path()),
        ];
        if let Some(p) = &paths.processor {
            dirs.push(("processor", p.as_path()));
        }
        for (name, dir) in dirs {
            components.insert(name.to_string(), ComponentIdentity::of_dir(dir)?);
        }
        Ok(ModelIdentity {
            pipeline_class: paths.pipeline_class.clone(),
            components,
        })
    }

    /// What differs from `other`, one line each ("" when nothing does).
    pub fn differences(&self, other: &ModelIdentity) -> Vec<String> {
        let mut out = Vec::new();
        if self.pipeline_class != other.pipeline_class {
            out.push(format!(
                "pipeline {} vs {}",
                self.pipeline_class, other.pipeline_class
            ));
        }
        let names: std::collections::BTreeSet<&String> = self
            .components
            .keys()
            .chain(other.components.keys())
            .collect();
        for name in names {
            match (self.components.get(name), other.components.get(name)) {
                (Some(a), Some(b)) => {
                    let files: std::collections::BTreeSet<&String> =
                        a.files.keys().chain(b.files.keys()).collect();
                    for f in files {
                        match (a.files.get(f), b.files.get(f)) {
                            (Some(x), Some(y)) if x == y => {}
                            (Some(x), Some(y)) => out.push(format!("{name}/{f}: {x} vs {y}")),
                            (Some(_), None) => {
                                out.push(format!("{name}/{f}: only in the cache's model"))
                            }
                            (None, Some(_)) => out.push(format!("{name}/{f}: only in this model")),
                            (None, None) => {}
                        }
                    }
                }
                (Some(_), None) => out.push(format!("{name}/: only in the cache's model")),
                (None, Some(_)) => out.push(format!("{name}/: only in this model")),
                (None, None) => {}
            }
        }
        out
    }
}

impl ComponentIdentity {
    fn of_dir(dir: &Path) -> Result<ComponentIdentity, ModelError> {
        let err = |e: std::io::Error| ModelError::new(format!("{}: {e}", dir.display()));
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(err)? {
            let entry = entry.map_err(err)?;
            // Hub snapshots are symlinks into the blob store: follow them.
            let meta = std::fs::metadata(entry.path()).map_err(err)?;
            if !meta.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let weights = name.ends_with(".safetensors") || name.ends_with(".bin");
            let stamp = if weights || meta.len() > HASHED_FILE_LIMIT {
                format!("size:{}", meta.len())
            } else {
                let bytes = std::fs::read(entry.path()).map_err(err)?;
                format!("fnv:{}", hex(fnv1a64(&bytes)))
            };
            files.insert(name, stamp);
        }
        Ok(ComponentIdentity { files })
    }
}
