//! Training: timestep schemes, the fused AdamW update, learning-rate schedules, the training
//! loop with its checkpoints and logs. The loss is appended to the model's forward graph
//! ([`crate::dsl_model::Objective`]) and differentiated with it, so one plan computes loss and
//! gradients.

pub mod adamw;
pub mod lr;
pub mod rng;
pub mod timesteps;

pub use adamw::{AdamW, AdamWConfig, AdamWState};
pub use lr::LrSchedule;
pub use timesteps::{TimestepDraw, TimestepSampler, TimestepScheme};
