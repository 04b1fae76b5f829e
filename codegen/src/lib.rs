//! Lowers fused kernel groups to backend programs.
