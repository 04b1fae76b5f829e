//! A multi-turn edit session on disk: the input images, every turn's prompt, settings and result,
//! in a folder that `qie edit --interactive --session DIR` reopens and `qie edit --replay DIR`
//! re-runs exactly.

use qie_models::pipeline::EditSettings;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const FILE: &str = "session.json";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Session {
    pub model: String,
    pub loras: Vec<String>,
    /// The settings the next turn starts from (changed by /seed, /steps, ...).
    pub settings: EditSettings,
    /// The images the next turn edits (file names inside the session folder).
    pub current: Vec<String>,
    pub turns: Vec<Turn>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Turn {
    pub settings: EditSettings,
    /// Inputs of this turn (file names inside the session folder), in order.
    pub inputs: Vec<String>,
    /// The result (file name inside the session folder).
    pub output: String,
    /// What `current` was before this turn (for /undo).
    pub previous: Vec<String>,
}

impl Session {
    pub fn open(dir: &Path) -> Result<Option<Session>, String> {
        let path = dir.join(FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{}: not a qie session: {e}", path.display()))
    }

    pub fn save(&self, dir: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        crate::atomic::write_bytes(&dir.join(FILE), text.as_bytes())
    }

    /// Copies an outside image into the session folder under a fresh name; returns that name.
    pub fn import_image(&self, dir: &Path, source: &Path) -> Result<String, String> {
        let image = qie_models::preprocess::load_rgb(source).map_err(|e| e.to_string())?;
        let name = fresh_name(dir, "input", "png");
        crate::image_out::write_image("--image", &dir.join(&name), &image)?;
        Ok(name)
    }

    pub fn paths(dir: &Path, names: &[String]) -> Vec<PathBuf> {
        names.iter().map(|n| dir.join(n)).collect()
    }
}

/// `<stem>_<n>.<ext>` with the first n not taken in `dir`.
pub fn fresh_name(dir: &Path, stem: &str, ext: &str) -> String {
    (0..)
        .map(|n| format!("{stem}_{n:03}.{ext}"))
        .find(|name| !dir.join(name).exists())
        .expect("an unused name")
}
