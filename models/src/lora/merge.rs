//! Folding LoRA updates into the DiT's weights: `W += scale * alpha / rank * B @ A`, in f32.

use super::file::{LoraFile, LoraModule};
use super::keys::{LoraFormat, ModuleName};
use crate::{HostWeights, ModelError, WeightPrecision};
use rayon::prelude::*;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

/// LoRA files with their user scales (`--lora path:scale`), applied in order.
#[derive(Clone, Debug, Default)]
pub struct LoraSet {
    pub files: Vec<(LoraFile, f32)>,
}

impl LoraSet {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// What one file changed.
#[derive(Clone, Debug, PartialEq)]
pub struct FileReport {
    pub path: PathBuf,
    pub format: LoraFormat,
    pub scale: f32,
    pub modules: usize,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct MergeReport {
    pub files: Vec<FileReport>,
}

impl fmt::Display for MergeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.files {
            writeln!(
                f,
                "LoRA {} ({}, scale {}): {} modules",
                r.path.display(),
                r.format,
                r.scale,
                r.modules
            )?;
        }
        Ok(())
    }
}

/// Adds every file's update to `weights` (f32; round afterwards for bf16). All modules are
/// resolved and checked before any weight changes, so an error leaves `weights` untouched.
pub fn merge_into(weights: &mut HostWeights, set: &LoraSet) -> Result<MergeReport, ModelError> {
    apply(weights, set, 1.0)
}

/// Subtracts what [`merge_into`] added (up to f32 rounding of the add and subtract).
pub fn unmerge(weights: &mut HostWeights, set: &LoraSet) -> Result<MergeReport, ModelError> {
    apply(weights, set, -1.0)
}

fn apply(weights: &mut HostWeights, set: &LoraSet, sign: f32) -> Result<MergeReport, ModelError> {
    let flat = flat_names(weights);
    let mut plan = Vec::new();
    let mut report = MergeReport::default();
    for (file, scale) in &set.files {
        for module in &file.modules {
            let target = resolve(weights, &flat, module).map_err(|m| {
                ModelError::new(format!(
                    "LoRA file {}: key `{}`: {m}",
                    file.path.display(),
                    module.key
                ))
            })?;
            plan.push((target, module, sign * scale * module.alpha_scale));
        }
        report.files.push(FileReport {
            path: file.path.clone(),
            format: file.format,
            scale: *scale,
            modules: file.modules.len(),
        });
    }
    for (target, module, scale) in plan {
        // bf16-stored weights are widened, updated in f32 and rounded once.
        match weights.get_mut(&target) {
            Some(w) => add_low_rank(w, module, scale),
            None => {
                let mut w = weights
                    .get_f32(&target)
                    .expect("resolved above")
                    .into_owned();
                add_low_rank(&mut w, module, scale);
                weights.set_f32(&target, w, WeightPrecision::Bf16);
            }
        }
    }
    Ok(report)
}

/// kohya name -> DiT weight name for every `<module>.weight`; names that flatten alike map to None.
fn flat_names(weights: &HostWeights) -> HashMap<String, Option<String>> {
    let mut map: HashMap<String, Option<String>> = HashMap::new();
    for name in weights.names() {
        if let Some(module) = name.strip_suffix(".weight") {
            let flat = module.replace('.', "_");
            map.entry(flat)
                .and_modify(|v| *v = None)
                .or_insert_with(|| Some(name.to_string()));
        }
    }
    map
}

/// The DiT weight `module` updates, checked against the factor shapes.
fn resolve(
    weights: &HostWeights,
    flat: &HashMap<String, Option<String>>,
    module: &LoraModule,
) -> Result<String, String> {
    let target = match &module.name {
        ModuleName::Dotted(m) => format!("{m}.weight"),
        ModuleName::Flat(m) => match flat.get(m) {
            Some(Some(t)) => t.clone(),
            Some(None) => return Err(format!("`{m}` matches several DiT modules")),
            None => return Err(format!("module `{m}` is not a DiT module")),
        },
    };
    let Some(w) = weights.tensor(&target) else {
        return Err(format!("module `{}` is not a DiT module", module.name));
    };
    if w.len() != module.out_features * module.in_features {
        return Err(format!(
            "the update is {}x{} but `{target}` has {} elements",
            module.out_features,
            module.in_features,
            w.len()
        ));
    }
    Ok(target)
}

/// `w[o, :] += scale * sum_k up[o, k] * down[k, :]`, one output row per task.
fn add_low_rank(w: &mut [f32], m: &LoraModule, scale: f32) {
    let (rank, cols) = (m.rank, m.in_features);
    w.par_chunks_mut(cols).enumerate().for_each(|(o, row)| {
        let mut delta = vec![0.0f32; cols];
        for k in 0..rank {
            let b = m.up[o * rank + k];
            let a = &m.down[k * cols..(k + 1) * cols];
            delta.iter_mut().zip(a).for_each(|(d, &a)| *d += b * a);
        }
        row.iter_mut()
            .zip(&delta)
            .for_each(|(x, &d)| *x += scale * d);
    });
}
