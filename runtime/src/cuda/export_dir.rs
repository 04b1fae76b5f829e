//! The folder `qie kernels export` writes: one standalone `<symbol>.cu` per kernel (the NVRTC
//! module text: prelude, generic library kernels, the kernel), `<symbol>.ptx` when NVRTC can
//! be loaded, and `manifest.json` last. The `--out` policy: a missing folder is created; an
//! existing one must be empty, or hold an earlier export and `--force` be given.

use super::backend::module_source;
use super::libs::{self, Lib};
use super::manifest::{Manifest, PtxStatus, MANIFEST_FILE};
use super::plan::CudaPlan;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// The standalone source of `symbol`: a comment header, then the NVRTC module text.
fn source_text(symbol: &str, label: &str, kind: &str, body: &str, arch: &str) -> String {
    format!(
        "// qie kernel {symbol}: {label} ({kind}), written by `qie kernels export`.\n\
         // The qie prelude and the generic library kernels come first, the kernel last; this is\n\
         // the text NVRTC compiles (options: --gpu-architecture={arch} -default-device --std=c++17).\n\
         // Standalone: nvcc -ptx -arch={arch} -std=c++17 {symbol}.cu\n\n{}",
        module_source(&[(&symbol.to_string(), &body.to_string())])
    )
}

/// Checks `--out` without changing anything: a missing folder is fine (it is created); an
/// existing one must be empty, or hold an earlier export (`manifest.json`) with `force` set.
/// Returns whether the folder exists with files to replace.
pub fn check_out_dir(dir: &Path, force: bool) -> Result<bool, String> {
    let d = dir.display();
    if !dir.exists() {
        return Ok(false);
    }
    if !dir.is_dir() {
        return Err(format!("--out {d}: exists and is not a folder"));
    }
    let mut entries = std::fs::read_dir(dir).map_err(|e| format!("--out {d}: cannot read: {e}"))?;
    if entries.next().is_none() {
        return Ok(false);
    }
    if !dir.join(MANIFEST_FILE).is_file() {
        return Err(format!(
            "--out {d}: the folder is not empty and holds no {MANIFEST_FILE}; choose a new or empty folder"
        ));
    }
    if !force {
        return Err(format!(
            "--out {d}: the folder holds an earlier export; pass --force to replace it, or choose a new folder"
        ));
    }
    Ok(true)
}

/// Prepares `dir` as [`check_out_dir`] allows: creates it, or removes the earlier export's
/// files (`*.cu`, `*.ptx`, `manifest.json`, `bench.json`; nothing else).
fn prepare_dir(dir: &Path, force: bool) -> Result<(), String> {
    if !check_out_dir(dir, force)? {
        return std::fs::create_dir_all(dir)
            .map_err(|e| format!("--out {}: cannot create: {e}", dir.display()));
    }
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("--out {}: cannot read: {e}", dir.display()))?;
    for e in entries.filter_map(|e| e.ok()) {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name == MANIFEST_FILE
            || name == super::kernel_bench::BENCH_FILE
            || p.extension().is_some_and(|x| x == "cu" || x == "ptx");
        if ours && p.is_file() {
            std::fs::remove_file(&p).map_err(|e| format!("cannot remove {}: {e}", p.display()))?;
        }
    }
    Ok(())
}

/// Writes the export folder: every kernel's source, PTX when `want_ptx` and NVRTC loads
/// (its absence is noted in the manifest, not an error), then `manifest.json` last (so a
/// folder with a manifest is a complete export). Returns the manifest as written.
pub fn write_export(
    plan: &CudaPlan,
    mut manifest: Manifest,
    dir: &Path,
    force: bool,
    want_ptx: bool,
) -> Result<Manifest, String> {
    prepare_dir(dir, force)?;
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))
    };
    // symbol -> (label, kind) of its first entry.
    let mut symbols: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    for k in &manifest.kernels {
        symbols
            .entry(&k.symbol)
            .or_insert((k.label.as_str(), k.kind.as_str()));
    }
    let sources: Vec<(String, String)> = symbols
        .iter()
        .map(|(s, (label, kind))| {
            let body = &plan.kernels[*s];
            (
                s.to_string(),
                source_text(s, label, kind, body, &manifest.arch),
            )
        })
        .collect();
    for (s, text) in &sources {
        write(&format!("{s}.cu"), text)?;
    }
    manifest.ptx = if !want_ptx {
        PtxStatus {
            produced: false,
            note: "PTX not produced: --no-ptx".into(),
        }
    } else if let Err(e) = libs::require(Lib::Nvrtc) {
        PtxStatus {
            produced: false,
            note: format!(
                "PTX not produced: NVRTC was not found ({}); `qie kernels bench` compiles the sources with NVRTC instead",
                e.reason
            ),
        }
    } else {
        let arch = manifest.arch.clone();
        let ptx: Vec<(String, String)> = sources
            .par_iter()
            .map(|(s, text)| {
                super::nvrtc::compile_ptx(text, &format!("{s}.cu"), &arch)
                    .map(|(ptx, _)| (s.clone(), ptx))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        for (s, text) in &ptx {
            write(&format!("{s}.ptx"), text)?;
        }
        for k in &mut manifest.kernels {
            k.ptx = Some(format!("{}.ptx", k.symbol));
        }
        let version = super::nvrtc::nvrtc_version()
            .map(|(a, b)| format!("{a}.{b}"))
            .unwrap_or_default();
        PtxStatus {
            produced: true,
            note: format!("PTX for {arch} by NVRTC {version}"),
        }
    };
    write(MANIFEST_FILE, &manifest.to_json())?;
    Ok(manifest)
}
