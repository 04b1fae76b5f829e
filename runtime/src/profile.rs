//! Per-step timing of one run ([`crate::Executable::run_profiled`]) and its summary: where the
//! time of a forward goes, with the steps of repeated layers (same kernel, same GEMM shape)
//! added up.

use qie_ir::plan::FusionPlan;
use qie_ir::Graph;
use std::collections::HashMap;
use std::fmt::Write;

/// The time of every step of one run, in execution order: (step label, seconds). Device time
/// on GPUs (events around each step, so no CUDA graph), wall time on the CPU.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    pub steps: Vec<(String, f64)>,
}

/// `label` followed by what kernel group `group` (a lowered program name, `g47` or `g47_1`)
/// computes: its kind and first output's type, so a profile says more than a symbol.
pub(crate) fn with_group(label: String, group: &str, fusion: &FusionPlan, graph: &Graph) -> String {
    let index = group
        .strip_prefix('g')
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<usize>().ok());
    match index.and_then(|i| fusion.groups.get(i)) {
        Some(g) => match g.outputs.first() {
            Some(&o) => format!("{label} {:?} -> {}", g.kind, graph.ty(o)),
            None => format!("{label} {:?}", g.kind),
        },
        None => label,
    }
}

/// Steps that do the same work in different layers share a key: group names (`g123_...`) are
/// dropped from the label, so what is left is the kernel symbol or the library call's shape.
fn step_key(label: &str) -> String {
    label
        .split_whitespace()
        .filter(|w| {
            let w = w.trim_start_matches('(');
            !(w.starts_with('g') && w[1..].starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first word of a key: `matmul`, `attention`, `copy`, or a generated kernel's op summary.
fn category(key: &str) -> &str {
    match key.split_whitespace().next() {
        Some(w @ ("matmul" | "attention" | "conv2d" | "copy" | "zero")) => w,
        _ => "generated kernels",
    }
}

impl Profile {
    pub fn total(&self) -> f64 {
        self.steps.iter().map(|(_, s)| s).sum()
    }

    /// Totals per category, then the `top` most expensive step keys.
    pub fn summary(&self, top: usize) -> String {
        let total = self.total().max(f64::MIN_POSITIVE);
        let mut by_key: HashMap<String, (usize, f64)> = HashMap::new();
        let mut by_cat: HashMap<&str, (usize, f64)> = HashMap::new();
        for (label, s) in &self.steps {
            let key = step_key(label);
            let e = by_key.entry(key).or_default();
            e.0 += 1;
            e.1 += s;
        }
        for (key, (n, s)) in &by_key {
            let e = by_cat.entry(category(key)).or_default();
            e.0 += n;
            e.1 += s;
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} steps, {:.3} ms of step time",
            self.steps.len(),
            total * 1e3
        );
        let mut cats: Vec<_> = by_cat.into_iter().collect();
        cats.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        for (cat, (n, s)) in cats {
            let _ = writeln!(
                out,
                "  {cat:<18} {n:>6} steps {:>10.3} ms {:>5.1}%",
                s * 1e3,
                100.0 * s / total
            );
        }
        let mut keys: Vec<_> = by_key.into_iter().collect();
        keys.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let _ = writeln!(out, "  top steps (count, total, mean):");
        for (key, (n, s)) in keys.into_iter().take(top) {
            let _ = writeln!(
                out,
                "  {n:>5} x {:>9.3} ms {:>8.1} us {:>5.1}%  {key}",
                s * 1e3,
                s * 1e6 / n as f64,
                100.0 * s / total
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_layers_share_a_key() {
        let p = Profile {
            steps: vec![
                ("g4_rms (qk_00ab)".into(), 1e-3),
                ("g90_rms (qk_00ab)".into(), 3e-3),
                ("matmul g5_mm [1x8x4] x [2]".into(), 2e-3),
                ("attention g6 [B1 Sq8 Sk8 H2 D4]".into(), 4e-3),
            ],
        };
        assert_eq!(step_key("g90_rms (qk_00ab)"), "(qk_00ab)");
        let s = p.summary(10);
        assert!(s.contains("4 steps, 10.000 ms"), "{s}");
        assert!(s.contains("    2 x     4.000 ms"), "{s}");
        assert!(s.contains("attention") && s.contains("40.0%"), "{s}");
        assert!(s.contains("generated kernels"), "{s}");
    }
}
