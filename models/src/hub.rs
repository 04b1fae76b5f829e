//! `--model` resolution: a local diffusers pipeline folder, or a Hugging Face hub id
//! (`owner/name[@revision]`) fetched into the standard HF cache with `hf-hub`.
//!
//! Environment (read by [`HubSettings::from_env`]): `HF_ENDPOINT` (mirror), `HF_HUB_CACHE`, else
//! `HF_HOME/hub`, else `~/.cache/huggingface/hub`; `HF_TOKEN` (else `HF_HOME/token`);
//! `HF_HUB_OFFLINE=1` uses only what the cache holds.

use crate::ModelError;
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use std::path::{Path, PathBuf};

/// The component folders of a diffusers Qwen-Image(-Edit) pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPaths {
    pub root: PathBuf,
    pub transformer: PathBuf,
    pub vae: PathBuf,
    pub text_encoder: PathBuf,
    pub tokenizer: PathBuf,
    /// `processor/` (the VL image processor) of the edit pipelines; absent for text-to-image.
    pub processor: Option<PathBuf>,
    pub scheduler: PathBuf,
    /// `_class_name` of model_index.json, e.g. `QwenImageEditPlusPipeline`.
    pub pipeline_class: String,
}

/// Where hub files come from and go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubSettings {
    /// None = https://huggingface.co
    pub endpoint: Option<String>,
    /// The hub cache (`.../huggingface/hub`, holding `models--owner--name/`).
    pub cache_dir: PathBuf,
    pub offline: bool,
    pub token: Option<String>,
}

impl HubSettings {
    pub fn from_env() -> Result<HubSettings, ModelError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let cache_dir = if let Some(dir) = var("HF_HUB_CACHE") {
            PathBuf::from(dir)
        } else if let Some(home) = var("HF_HOME") {
            Path::new(&home).join("hub")
        } else if let Some(home) = var("HOME").or_else(|| var("USERPROFILE")) {
            Path::new(&home).join(".cache/huggingface/hub")
        } else {
            return Err(ModelError::new(
                "hub: cannot find the HF cache (set HF_HOME or HF_HUB_CACHE)",
            ));
        };
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        let token = var("HF_TOKEN").or_else(|| {
            let home = var("HF_HOME")?;
            let t = std::fs::read_to_string(Path::new(&home).join("token")).ok()?;
            Some(t.trim().to_string()).filter(|t| !t.is_empty())
        });
        Ok(HubSettings {
            endpoint: var("HF_ENDPOINT"),
            cache_dir,
            offline,
            token,
        })
    }
}

/// The components the pipeline reads, in model_index.json's names.
const COMPONENTS: [&str; 6] = [
    "transformer",
    "vae",
    "text_encoder",
    "tokenizer",
    "processor",
    "scheduler",
];

/// Resolves `--model` with the environment's hub settings.
pub fn resolve_model(spec: &str) -> Result<ModelPaths, ModelError> {
    resolve_model_with(spec, &HubSettings::from_env()?)
}

/// A folder that exists is used as is; otherwise `owner/name[@revision]` is a hub id.
pub fn resolve_model_with(spec: &str, hub: &HubSettings) -> Result<ModelPaths, ModelError> {
    let path = Path::new(spec);
    if path.is_dir() {
        return model_paths_from_folder(path);
    }
    if path.exists() {
        return Err(ModelError::new(format!(
            "--model {spec}: is a file, expected a diffusers pipeline folder or a hub id"
        )));
    }
    let Some((repo, revision)) = parse_hub_id(spec) else {
        return Err(ModelError::new(format!(
            "--model {spec}: no such folder, and not a hub id (owner/name[@revision])"
        )));
    };
    let root = if hub.offline {
        cached_snapshot(hub, &repo, &revision)?
    } else {
        download_snapshot(hub, &repo, &revision)?
    };
    let paths = model_paths_from_folder(&root)?;
    check_complete(&paths).map_err(|m| {
        ModelError::new(format!(
            "hub model {repo}@{revision} in {}: {m}{}",
            root.display(),
            if hub.offline {
                " (HF_HUB_OFFLINE is set: download it first or unset HF_HUB_OFFLINE)"
            } else {
                ""
            }
        ))
    })?;
    Ok(paths)
}

/// A transformers model folder (`config.json` + safetensors, with any processor and tokenizer
/// files) named by `flag`: a folder that exists is used as is; otherwise `owner/name[@revision]`
/// is a hub id, taken from the cache (HF_HUB_OFFLINE) or downloaded into it.
pub fn resolve_transformers_folder(flag: &str, spec: &str) -> Result<PathBuf, ModelError> {
    resolve_transformers_folder_with(flag, spec, &HubSettings::from_env()?)
}

pub fn resolve_transformers_folder_with(
    flag: &str,
    spec: &str,
    hub: &HubSettings,
) -> Result<PathBuf, ModelError> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        return Err(ModelError::new(format!(
            "{flag} {spec}: is a file, expected a model folder or a hub id"
        )));
    }
    let Some((repo, revision)) = parse_hub_id(spec) else {
        return Err(ModelError::new(format!(
            "{flag} {spec}: no such folder, and not a hub id (owner/name[@revision])"
        )));
    };
    let root = if hub.offline {
        cached_snapshot(hub, &repo, &revision)?
    } else {
        download_files(hub, &repo, &revision, &TRANSFORMERS_FILES)?
    };
    let mut missing = Vec::new();
    if !root.join("config.json").exists() {
        missing.push(root.join("config.json"));
    }
    missing.extend(missing_weights(&root));
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
        return Err(ModelError::new(format!(
            "{flag} {repo}@{revision}: missing {} (qie reads safetensors weights only){}",
            list.join(", "),
            if hub.offline {
                " (HF_HUB_OFFLINE is set: download it first or unset HF_HUB_OFFLINE)"
            } else {
                ""
            }
        )));
    }
    Ok(root)
}

/// `owner/name` or `owner/name@revision` (revision defaults to `main`).
pub fn parse_hub_id(spec: &str) -> Option<(String, String)> {
    let (id, revision) = match spec.split_once('@') {
        Some((id, rev)) if !rev.is_empty() => (id, rev),
        Some(_) => return None,
        None => (spec, "main"),
    };
    let (owner, name) = id.split_once('/')?;
    let valid = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (valid(owner) && valid(name)).then(|| (id.to_string(), revision.to_string()))
}

/// Reads model_index.json of a diffusers pipeline folder and finds its component folders.
pub fn model_paths_from_folder(dir: &Path) -> Result<ModelPaths, ModelError> {
    let index_path = dir.join("model_index.json");
    let text = std::fs::read_to_string(&index_path).map_err(|_| {
        ModelError::new(format!(
            "model folder {} has no model_index.json (expected a diffusers pipeline folder)",
            dir.display()
        ))
    })?;
    let index: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::new(format!("{}: {e}", index_path.display())))?;
    let pipeline_class = index["_class_name"]
        .as_str()
        .ok_or_else(|| ModelError::new(format!("{}: no `_class_name`", index_path.display())))?
        .to_string();
    let listed = |c: &str| {
        index[c]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| !x.is_null()))
    };
    let component = |c: &str| -> Result<Option<PathBuf>, ModelError> {
        let folder = dir.join(c);
        match (listed(c), folder.is_dir()) {
            (_, true) => Ok(Some(folder)),
            (true, false) => Err(ModelError::new(format!(
                "model folder {} has no {c}/ (model_index.json lists it)",
                dir.display()
            ))),
            (false, false) => Ok(None),
        }
    };
    let required = |c: &str| -> Result<PathBuf, ModelError> {
        component(c)?.ok_or_else(|| {
            ModelError::new(format!(
                "model folder {} has no {c}/ (the pipeline needs it)",
                dir.display()
            ))
        })
    };
    Ok(ModelPaths {
        root: dir.to_path_buf(),
        transformer: required("transformer")?,
        vae: required("vae")?,
        text_encoder: required("text_encoder")?,
        tokenizer: required("tokenizer")?,
        processor: component("processor")?,
        scheduler: required("scheduler")?,
        pipeline_class,
    })
}

/// Names the files a (partially downloaded) snapshot lacks.
fn check_complete(paths: &ModelPaths) -> Result<(), String> {
    let mut missing = Vec::new();
    for dir in [&paths.transformer, &paths.vae, &paths.text_encoder] {
        if !dir.join("config.json").exists() {
            missing.push(dir.join("config.json"));
        }
        missing.extend(missing_weights(dir));
    }
    if !paths.scheduler.join("scheduler_config.json").exists() {
        missing.push(paths.scheduler.join("scheduler_config.json"));
    }
    let tok = &paths.tokenizer;
    if !tok.join("tokenizer.json").exists() && !tok.join("vocab.json").exists() {
        missing.push(tok.join("tokenizer.json"));
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
    Err(format!("missing {}", list.join(", ")))
}

/// The shards an index lists that are absent, or the folder itself when it has no safetensors.
fn missing_weights(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![dir.to_path_buf()];
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    if let Some(index) = names
        .iter()
        .find(|n| n.ends_with(".safetensors.index.json"))
    {
        let shards = std::fs::read_to_string(dir.join(index))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| {
                v["weight_map"].as_object().map(|m| {
                    m.values()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect::<std::collections::BTreeSet<_>>()
                })
            })
            .unwrap_or_default();
        return shards
            .into_iter()
            .map(|s| dir.join(s))
            .filter(|p| !p.exists())
            .collect();
    }
    if names.iter().any(|n| n.ends_with(".safetensors")) {
        Vec::new()
    } else {
        vec![dir.join("*.safetensors")]
    }
}

/// The cache's snapshot of `repo` at `revision` (a branch/tag in refs/, or a commit hash).
fn cached_snapshot(hub: &HubSettings, repo: &str, revision: &str) -> Result<PathBuf, ModelError> {
    let repo_dir = hub
        .cache_dir
        .join(format!("models--{}", repo.replace('/', "--")));
    let offline_err = |what: String| {
        ModelError::new(format!(
            "hub model {repo}@{revision}: {what} (HF_HUB_OFFLINE is set, so nothing is downloaded)"
        ))
    };
    if !repo_dir.is_dir() {
        return Err(offline_err(format!(
            "not in the cache {}",
            hub.cache_dir.display()
        )));
    }
    let direct = repo_dir.join("snapshots").join(revision);
    if revision.len() == 40 && direct.is_dir() {
        return Ok(direct);
    }
    let ref_path = repo_dir.join("refs").join(revision);
    let commit = std::fs::read_to_string(&ref_path)
        .map_err(|_| offline_err(format!("the cache has no {}", ref_path.display())))?;
    let snapshot = repo_dir.join("snapshots").join(commit.trim());
    if !snapshot.is_dir() {
        return Err(offline_err(format!(
            "the cache has no snapshot {}",
            snapshot.display()
        )));
    }
    Ok(snapshot)
}

/// What a snapshot must hold and which of its files are fetched.
struct SnapshotFiles {
    /// The file that says the repository is of the expected kind.
    marker: &'static str,
    what: &'static str,
    wanted: fn(&str) -> bool,
}

const PIPELINE_FILES: SnapshotFiles = SnapshotFiles {
    marker: "model_index.json",
    what: "a diffusers pipeline",
    wanted: pipeline_file,
};

const TRANSFORMERS_FILES: SnapshotFiles = SnapshotFiles {
    marker: "config.json",
    what: "a transformers model",
    wanted: transformers_file,
};

/// Downloads model_index.json and the listed components' config, tokenizer and safetensors files
/// (files already in the snapshot are kept); returns the snapshot folder.
fn download_snapshot(
    hub: &HubSettings,
    repo_id: &str,
    revision: &str,
) -> Result<PathBuf, ModelError> {
    download_files(hub, repo_id, revision, &PIPELINE_FILES)
}

/// Downloads the repository's `files.wanted` files (those already in the snapshot are kept);
/// returns the snapshot folder.
fn download_files(
    hub: &HubSettings,
    repo_id: &str,
    revision: &str,
    kind: &SnapshotFiles,
) -> Result<PathBuf, ModelError> {
    let hub_err = |what: &str, e: &dyn std::fmt::Display| {
        ModelError::new(format!(
            "hub model {repo_id}@{revision}: {what}: {e} (set HF_ENDPOINT for a mirror, or \
             HF_HUB_OFFLINE=1 to use the cache only)"
        ))
    };
    // from_cache also reads `<cache>/../token` (HF_HOME/token); an explicit token wins
    let mut builder = ApiBuilder::from_cache(Cache::new(hub.cache_dir.clone())).with_progress(true);
    if hub.token.is_some() {
        builder = builder.with_token(hub.token.clone());
    }
    if let Some(endpoint) = &hub.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let api = builder.build().map_err(|e| hub_err("client", &e))?;
    let repo = api.repo(Repo::with_revision(
        repo_id.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let info = repo
        .info()
        .map_err(|e| hub_err("listing the repository", &e))?;
    let snapshot = hub
        .cache_dir
        .join(format!("models--{}", repo_id.replace('/', "--")))
        .join("snapshots")
        .join(&info.sha);
    let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    if !files.iter().any(|f| f == kind.marker) {
        return Err(hub_err(
            "repository",
            &format!("has no {} (not {})", kind.marker, kind.what),
        ));
    }
    for file in files.iter().filter(|f| (kind.wanted)(f)) {
        if !snapshot.join(file).exists() {
            repo.download(file)
                .map_err(|e| hub_err(file.as_str(), &e))?;
        }
    }
    Ok(snapshot)
}

/// Files the pipeline reads: model_index.json and each component's configs, tokenizer files and
/// safetensors weights (no .bin / .onnx / README / images).
pub fn pipeline_file(path: &str) -> bool {
    if path == "model_index.json" {
        return true;
    }
    let Some((folder, name)) = path.split_once('/') else {
        return false;
    };
    const EXTENSIONS: [&str; 6] = [
        ".json",
        ".safetensors",
        ".txt",
        ".model",
        ".jinja",
        ".tiktoken",
    ];
    COMPONENTS.contains(&folder) && EXTENSIONS.iter().any(|e| name.ends_with(e))
}

/// Files an image / text encoder reads from a transformers repository: the top-level configs,
/// processor and tokenizer files and safetensors weights (no .bin / .onnx / subfolders).
pub fn transformers_file(path: &str) -> bool {
    const NAMES: [&str; 7] = [
        "config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.json",
        "merges.txt",
    ];
    !path.contains('/')
        && (NAMES.contains(&path)
            || path.ends_with(".safetensors")
            || path.ends_with(".safetensors.index.json"))
}
