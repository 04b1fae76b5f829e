//! Qwen-Image model family: DSL sources, config readers and drivers.

pub mod cache;
pub mod data;
pub mod dsl_model;
pub mod error;
pub mod eval;
pub mod host_weights;
pub mod hub;
pub mod lora;
pub mod options;
pub mod pipeline;
pub mod plan_cache;
pub mod preprocess;
pub mod qwen25vl;
pub mod qwen_image;
pub mod scheduler;
pub mod sources;
pub mod tensorboard;
pub mod train;

/// The dataset reader's old path (`qie infer` and existing users).
pub use data::rows as dataset;
pub use dsl_model::DslModel;
pub use error::ModelError;
pub use host_weights::HostWeights;
pub use options::{ModelOptions, WeightPrecision};
pub use plan_cache::PlanCache;
