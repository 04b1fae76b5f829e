//! Executes compiled qie plans.
