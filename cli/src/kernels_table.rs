//! The table `qie kernels bench` prints: one row per entry, slowest per forward first.

use qie_runtime::cuda::kernel_bench::{BenchReport, EntryResult};
use std::fmt::Write;

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{:.0}%", 100.0 * x))
}

pub fn table(r: &BenchReport) -> String {
    let c = &r.ceilings;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "device {} ({}), export for {} ({} storage), median of {} replays",
        r.device, r.device_arch, r.export_arch, r.storage, r.iters
    );
    let _ = writeln!(
        out,
        "ceilings: copy {:.0} GB/s (read + write, {} MiB copied); GEMM {} ({})",
        c.copy_gbps,
        c.copy_bytes >> 20,
        c.gemm_tflops
            .map_or("-".into(), |t| format!("{t:.0} TFLOP/s")),
        c.gemm
    );
    let mut rows: Vec<&EntryResult> = r.results.iter().collect();
    rows.sort_by(|a, b| {
        b.us_per_forward
            .unwrap_or(-1.0)
            .total_cmp(&a.us_per_forward.unwrap_or(-1.0))
    });
    let total = r.kernels_us_per_forward + r.library_us_per_forward;
    let _ = writeln!(
        out,
        "{:<24} {:>8} {:>10} {:>9} {:>6} {:>9} {:>6} {:>11} {:>6}  what",
        "entry", "launches", "µs", "GB/s", "%copy", "TFLOP/s", "%gemm", "µs/forward", "%"
    );
    for e in &rows {
        let what = if e.kind == "kernel" {
            e.label.clone()
        } else {
            format!("{} {}", e.kind, e.label)
        };
        if let Some(why) = &e.skipped {
            let _ = writeln!(out, "{:<24} {:>8} skipped: {why}", e.id, e.launches);
            continue;
        }
        let share = e.us_per_forward.map(|u| u / total.max(1e-9));
        let _ = writeln!(
            out,
            "{:<24} {:>8} {:>10} {:>9} {:>6} {:>9} {:>6} {:>11} {:>6}  {what}",
            e.id,
            e.launches,
            opt(e.median_us, 2),
            opt(e.gbps, 1),
            pct(e.copy_fraction),
            opt(e.tflops, 3),
            pct(e.gemm_fraction),
            opt(e.us_per_forward, 1),
            pct(share),
        );
    }
    let skipped = r.results.iter().filter(|e| e.skipped.is_some()).count();
    let _ = writeln!(
        out,
        "per forward: generated kernels {:.1} µs, library steps {:.1} µs, total {:.1} µs ({} entries timed, {skipped} skipped)",
        r.kernels_us_per_forward,
        r.library_us_per_forward,
        total,
        r.results.len() - skipped
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use qie_runtime::cuda::Ceilings;

    fn entry(id: &str, median_us: Option<f64>, skipped: Option<&str>) -> EntryResult {
        EntryResult {
            id: id.into(),
            kind: "kernel".into(),
            label: "g3_add_mul".into(),
            launches: 60,
            bytes: 1 << 20,
            flops: 0,
            median_us,
            min_us: median_us,
            gbps: median_us.map(|u| (1 << 20) as f64 / u / 1e3),
            copy_fraction: median_us.map(|_| 0.5),
            tflops: None,
            gemm_fraction: None,
            us_per_forward: median_us.map(|u| u * 60.0),
            skipped: skipped.map(str::to_string),
        }
    }

    #[test]
    fn rows_sorted_by_time_per_forward_with_skips_last() {
        let report = BenchReport {
            device: "cuda:0  NVIDIA H100".into(),
            device_arch: "sm_90".into(),
            export_arch: "sm_90".into(),
            storage: "bf16".into(),
            iters: 20,
            ceilings: Ceilings {
                copy_bytes: 1 << 30,
                copy_gbps: 3000.0,
                gemm: "M=N=K=8192".into(),
                gemm_tflops: Some(700.0),
            },
            results: vec![
                entry("qk_small", Some(1.0), None),
                entry("qk_gone", None, Some("no NVRTC")),
                entry("qk_big", Some(10.0), None),
            ],
            kernels_us_per_forward: 660.0,
            library_us_per_forward: 0.0,
        };
        let t = table(&report);
        let big = t.find("qk_big").unwrap();
        let small = t.find("qk_small").unwrap();
        let gone = t.find("qk_gone").unwrap();
        assert!(big < small && small < gone, "{t}");
        assert!(t.contains("skipped: no NVRTC"), "{t}");
        assert!(
            t.contains("copy 3000 GB/s") && t.contains("700 TFLOP/s"),
            "{t}"
        );
        assert!(
            t.contains("total 660.0 µs (2 entries timed, 1 skipped)"),
            "{t}"
        );
    }
}
