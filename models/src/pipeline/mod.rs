//! The edit pipelines (Edit and Plus): text encoding, VAE encoding, sampling and decoding;
//! [`EditStages`] runs them with a borrowed DiT.

mod edit;
pub mod encoder;
mod flavour;
pub mod latents;
pub mod prompt;
pub mod random;
mod settings;
mod timings;

pub use edit::{EditOutput, EditPipeline, EditStages, EncodedInputs, StepCallback, StepState};
pub use encoder::{EditEncoder, PreparedImages};
pub use flavour::Flavour;
pub use settings::EditSettings;
pub use timings::StageTimes;
