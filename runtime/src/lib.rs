//! Executes compiled qie plans.

pub mod cuda;
pub mod weights;
