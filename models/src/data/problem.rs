//! What can be wrong with a training row, and which of those stop a run. Errors make the row
//! unusable (or almost certainly a mistake); warnings are legitimate in some datasets and are
//! reported without failing `qie data check`.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProblemKind {
    /// Not a JSON object, invalid JSON, wrong types, a missing required key.
    Malformed,
    /// A list where one path is expected, a comma-joined string of paths, a nested list.
    PathShape,
    EmptyPrompt,
    MissingFile,
    UnreadableImage,
    /// A side shorter than [`super::check::MIN_SIDE`] pixels.
    TooSmall,
    /// Warning: the target and an input are the same file or have identical pixels (a copied or
    /// swapped dataset teaches the model to return its input; identity pairs are sometimes
    /// added on purpose, so it is not an error).
    IdenticalInput,
    /// Warning: an image wider or taller than [`super::check::MAX_ASPECT`]:1.
    ExtremeAspect,
    /// Warning: an image the training resize enlarges more than 2x per side.
    Upscaled,
}

impl ProblemKind {
    pub fn is_error(self) -> bool {
        !matches!(
            self,
            ProblemKind::IdenticalInput | ProblemKind::ExtremeAspect | ProblemKind::Upscaled
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::Malformed => "malformed row",
            ProblemKind::PathShape => "path/list mistake",
            ProblemKind::EmptyPrompt => "empty prompt",
            ProblemKind::MissingFile => "missing image",
            ProblemKind::UnreadableImage => "unreadable image",
            ProblemKind::TooSmall => "image too small",
            ProblemKind::IdenticalInput => "target identical to an input",
            ProblemKind::ExtremeAspect => "extreme aspect ratio",
            ProblemKind::Upscaled => "upscaled more than 2x",
        }
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
