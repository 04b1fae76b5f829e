//! The model sources shipped with qie, embedded so the binary works from any directory. A path on
//! disk overrides an embedded name, which is how users try variants without rebuilding.

use qie_ir::dsl::{DslError, Program};
use std::path::Path;

/// (file name, text) of every bundled `.qie` source.
pub const BUNDLED: &[(&str, &str)] = &[
    (
        "qwen_image_dit.qie",
        include_str!("../qie/qwen_image_dit.qie"),
    ),
    (
        "qwen_image_layered.qie",
        include_str!("../qie/qwen_image_layered.qie"),
    ),
    (
        "qwen_image_vae.qie",
        include_str!("../qie/qwen_image_vae.qie"),
    ),
    (
        "qwen25vl_text.qie",
        include_str!("../qie/qwen25vl_text.qie"),
    ),
    (
        "qwen25vl_vision.qie",
        include_str!("../qie/qwen25vl_vision.qie"),
    ),
    // The image encoders of the evaluation metrics (DINO ViT, CLIP vision).
    ("vit.qie", include_str!("../qie/vit.qie")),
    ("clip_text.qie", include_str!("../qie/clip_text.qie")),
    // Reference-image positional-encoding variants of the DiT (docs/dsl.md).
    (
        "kontext_shared_frame.qie",
        include_str!("../qie/variants/kontext_shared_frame.qie"),
    ),
    (
        "flux2_scaled_frame.qie",
        include_str!("../qie/variants/flux2_scaled_frame.qie"),
    ),
    (
        "uno_diagonal.qie",
        include_str!("../qie/variants/uno_diagonal.qie"),
    ),
    (
        "dreamomni2_width_shift.qie",
        include_str!("../qie/variants/dreamomni2_width_shift.qie"),
    ),
    (
        "omnigen2_index_embedding.qie",
        include_str!("../qie/variants/omnigen2_index_embedding.qie"),
    ),
    (
        "diffsynth_aligned_grid.qie",
        include_str!("../qie/variants/diffsynth_aligned_grid.qie"),
    ),
    // Adapters layered on a model (DslProgram::with_adapter), not models of their own.
    ("lora.qie", include_str!("../qie/adapters/lora.qie")),
];

pub fn bundled(name: &str) -> Option<&'static str> {
    let file = name.rsplit('/').next().unwrap_or(name);
    BUNDLED
        .iter()
        .find(|(n, _)| *n == file)
        .map(|(_, text)| *text)
}

/// Compiles a bundled source by file name.
pub fn load_bundled(name: &str) -> Result<Program, DslError> {
    Program::from_sources(name, &|n| bundled(n).map(str::to_string))
}

/// Compiles a source file; its imports resolve next to it first, then among the bundled sources,
/// so a variant file anywhere can `import "qwen_image_dit.qie";`.
pub fn load_program_file(path: &Path) -> Result<Program, DslError> {
    let root = path.to_string_lossy().replace('\\', "/");
    if !path.exists() {
        return Err(DslError::bare(&root, "model source not found"));
    }
    Program::from_sources(&root, &|name| {
        std::fs::read_to_string(name)
            .ok()
            .or_else(|| bundled(name).map(str::to_string))
    })
}
