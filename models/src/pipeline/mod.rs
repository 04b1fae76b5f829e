//! The edit pipelines (Edit and Plus): text encoding, VAE encoding, sampling and decoding.

mod edit;
mod flavour;
pub mod latents;
pub mod prompt;
pub mod random;
mod settings;
mod timings;

pub use edit::{EditOutput, EditPipeline, StepCallback, StepState};
pub use flavour::Flavour;
pub use settings::EditSettings;
pub use timings::StageTimes;
