//! `--model` resolution on local folders and a fake offline HF cache (no network).

use qie_models::hub::{
    model_paths_from_folder, parse_hub_id, pipeline_file, resolve_model_with,
    resolve_transformers_folder_with, transformers_file, HubSettings,
};
use std::fs;
use std::path::Path;

const EDIT_INDEX: &str = r#"{
  "_class_name": "QwenImageEditPlusPipeline",
  "_diffusers_version": "0.36.0.dev0",
  "processor": ["transformers", "Qwen2VLProcessor"],
  "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
  "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
  "tokenizer": ["transformers", "Qwen2Tokenizer"],
  "transformer": ["diffusers", "QwenImageTransformer2DModel"],
  "vae": ["diffusers", "AutoencoderKLQwenImage"]
}"#;

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// A complete pipeline layout (weights are placeholders: resolution does not read them).
fn make_pipeline(dir: &Path, skip: &[&str]) {
    write(&dir.join("model_index.json"), EDIT_INDEX);
    let files = [
        "transformer/config.json",
        "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
        "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/tokenizer.json",
        "processor/preprocessor_config.json",
        "scheduler/scheduler_config.json",
    ];
    for f in files
        .iter()
        .filter(|f| !skip.iter().any(|s| f.starts_with(s)))
    {
        write(&dir.join(f), "{}");
    }
    if !skip.iter().any(|s| "transformer/".starts_with(s)) {
        let index = r#"{"weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors",
            "b": "diffusion_pytorch_model-00002-of-00002.safetensors"}}"#;
        write(
            &dir.join("transformer/diffusion_pytorch_model.safetensors.index.json"),
            index,
        );
    }
}

fn offline(cache: &Path) -> HubSettings {
    HubSettings {
        endpoint: None,
        cache_dir: cache.to_path_buf(),
        offline: true,
        token: None,
    }
}

#[test]
fn local_folder_resolves_every_component() {
    let tmp = tempfile::tempdir().unwrap();
    make_pipeline(tmp.path(), &[]);
    let spec = tmp.path().to_str().unwrap();
    let paths = resolve_model_with(spec, &offline(tmp.path())).unwrap();
    assert_eq!(paths.pipeline_class, "QwenImageEditPlusPipeline");
    assert_eq!(paths.vae, tmp.path().join("vae"));
    assert_eq!(paths.processor, Some(tmp.path().join("processor")));
    assert_eq!(paths.scheduler, tmp.path().join("scheduler"));
}

#[test]
fn missing_component_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    make_pipeline(tmp.path(), &["vae/"]);
    let err = model_paths_from_folder(tmp.path()).unwrap_err();
    assert!(
        err.message
            .contains("has no vae/ (model_index.json lists it)"),
        "{err}"
    );
    let empty = tempfile::tempdir().unwrap();
    let err = model_paths_from_folder(empty.path()).unwrap_err();
    assert!(err.message.contains("model_index.json"), "{err}");
}

#[test]
fn text_to_image_pipeline_has_no_processor() {
    let tmp = tempfile::tempdir().unwrap();
    make_pipeline(tmp.path(), &["processor/"]);
    let index = EDIT_INDEX.replace(
        "  \"processor\": [\"transformers\", \"Qwen2VLProcessor\"],\n",
        "",
    );
    write(&tmp.path().join("model_index.json"), &index);
    assert_eq!(model_paths_from_folder(tmp.path()).unwrap().processor, None);
}

fn fake_cache(cache: &Path, commit: &str, skip: &[&str]) {
    let repo = cache.join("models--Qwen--Qwen-Image-Edit-2511");
    make_pipeline(&repo.join("snapshots").join(commit), skip);
    write(&repo.join("refs/main"), commit);
}

#[test]
fn offline_hub_id_resolves_from_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    fake_cache(tmp.path(), commit, &[]);
    let paths = resolve_model_with("Qwen/Qwen-Image-Edit-2511", &offline(tmp.path())).unwrap();
    let snapshot = tmp
        .path()
        .join("models--Qwen--Qwen-Image-Edit-2511/snapshots")
        .join(commit);
    assert_eq!(paths.root, snapshot);
    assert_eq!(paths.transformer, snapshot.join("transformer"));
    let by_commit = format!("Qwen/Qwen-Image-Edit-2511@{commit}");
    assert_eq!(
        resolve_model_with(&by_commit, &offline(tmp.path()))
            .unwrap()
            .root,
        snapshot
    );
}

#[test]
fn offline_errors_say_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let err = resolve_model_with("Qwen/Qwen-Image-Edit", &offline(tmp.path())).unwrap_err();
    assert!(
        err.message.contains("not in the cache") && err.message.contains("HF_HUB_OFFLINE"),
        "{err}"
    );

    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    fake_cache(tmp.path(), commit, &[]);
    let err = resolve_model_with("Qwen/Qwen-Image-Edit-2511@v2", &offline(tmp.path())).unwrap_err();
    assert!(err.message.contains("refs"), "{err}");

    let shard = tmp.path().join(format!(
        "models--Qwen--Qwen-Image-Edit-2511/snapshots/{commit}/transformer/diffusion_pytorch_model-00002-of-00002.safetensors"
    ));
    fs::remove_file(&shard).unwrap();
    let err = resolve_model_with("Qwen/Qwen-Image-Edit-2511", &offline(tmp.path())).unwrap_err();
    assert!(err.message.contains("00002-of-00002"), "{err}");
}

#[test]
fn specs_and_file_selection() {
    assert_eq!(
        parse_hub_id("Qwen/Qwen-Image-Edit"),
        Some(("Qwen/Qwen-Image-Edit".into(), "main".into()))
    );
    assert_eq!(parse_hub_id("a/b@dev"), Some(("a/b".into(), "dev".into())));
    assert_eq!(parse_hub_id("./a/b"), None);
    assert_eq!(parse_hub_id("a/b/c"), None);
    assert_eq!(parse_hub_id("a/b@"), None);
    let err =
        resolve_model_with("no/such/folder", &offline(Path::new("/nonexistent"))).unwrap_err();
    assert!(err.message.contains("no such folder"), "{err}");
    assert!(pipeline_file("model_index.json"));
    assert!(pipeline_file(
        "transformer/diffusion_pytorch_model-00001-of-00009.safetensors"
    ));
    assert!(pipeline_file("tokenizer/merges.txt"));
    assert!(!pipeline_file("README.md"));
    assert!(!pipeline_file("transformer/diffusion_pytorch_model.bin"));
    assert!(!pipeline_file("assets/demo.png"));
}

#[test]
fn transformers_hub_ids_resolve_from_the_cache_and_name_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let commit = "fedcba9876543210fedcba9876543210fedcba98";
    let repo = tmp.path().join("models--facebook--dino-vits16");
    let snapshot = repo.join("snapshots").join(commit);
    write(&snapshot.join("config.json"), "{}");
    write(&repo.join("refs/main"), commit);
    let hub = offline(tmp.path());
    // no weights yet: named, with the safetensors-only rule
    let err =
        resolve_transformers_folder_with("--dino-model", "facebook/dino-vits16", &hub).unwrap_err();
    assert!(
        err.message.contains("--dino-model") && err.message.contains("safetensors"),
        "{err}"
    );
    write(&snapshot.join("model.safetensors"), "");
    let dir =
        resolve_transformers_folder_with("--dino-model", "facebook/dino-vits16", &hub).unwrap();
    assert_eq!(dir, snapshot);
    // a local folder is used as is; a missing one that is no hub id is refused
    let local = resolve_transformers_folder_with("--clip-model", snapshot.to_str().unwrap(), &hub);
    assert_eq!(local.unwrap(), snapshot);
    let err = resolve_transformers_folder_with("--clip-model", "./nope/x/y", &hub).unwrap_err();
    assert!(err.message.contains("no such folder"), "{err}");
    assert!(transformers_file("preprocessor_config.json"));
    assert!(transformers_file("model.safetensors"));
    assert!(!transformers_file("pytorch_model.bin"));
    assert!(!transformers_file("onnx/model.safetensors"));
}
