//! Training: timestep schemes, the fused AdamW update, learning-rate schedules, the training
//! loop with its checkpoints and logs. The loss is appended to the model's forward graph
//! ([`crate::dsl_model::Objective`]) and differentiated with it, so one plan computes loss and
//! gradients. Validation edits run the edit pipeline with the DiT being trained.

pub mod adamw;
pub mod checkpoint;
pub mod config;
pub mod log;
pub mod lora_grad;
pub mod lr;
pub mod rng;
pub mod run;
pub mod sample;
pub mod timesteps;
pub mod trainer;
pub mod validation;

pub use adamw::{AdamW, AdamWConfig, AdamWState};
pub use config::{matches_target, TrainConfig, DEFAULT_LORA_TARGETS};
pub use log::{StepLog, StepRecord};
pub use lr::LrSchedule;
pub use sample::{InMemoryData, TrainSample, TrainingData};
pub use timesteps::{TimestepDraw, TimestepSampler, TimestepScheme};
pub use trainer::{LoopSettings, StepReport, Trainer};
