//! Shared helpers for cross-crate tests: fixture paths and tolerance checks.

use std::path::PathBuf;

/// `tests/fixtures/<rel>` in this checkout.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// ||out - ref|| / ||ref|| in f64; NaN or a length mismatch gives infinity so it never passes.
pub fn rel_l2(out: &[f32], reference: &[f32]) -> f64 {
    if out.len() != reference.len() {
        return f64::INFINITY;
    }
    let mut diff = 0.0f64;
    let mut norm = 0.0f64;
    for (&o, &r) in out.iter().zip(reference) {
        if !o.is_finite() {
            return f64::INFINITY;
        }
        diff += (o as f64 - r as f64).powi(2);
        norm += (r as f64).powi(2);
    }
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}
