//! LoRA without merging: the DiT lowered with `lora.qie` layered on it (one adapter slot: a rank
//! and the adapted modules), its factors set from any set of LoRA files.
//!
//! Several files share the slot by concatenating along the rank: for a module, A = [A_1; A_2; ..]
//! and B = [c_1 B_1, c_2 B_2, ..] with c_i = scale_i * alpha_i / r_i, so B A = sum_i c_i B_i A_i
//! (what merging adds) and the graph's own scale is 1 (alpha = rank). Ranks below the slot's and
//! modules a set does not touch are zero-padded, so switching to another set that fits only
//! rewrites parameters (`DslModel::update_weight`): no recompilation, no reload of the base.

use super::file::LoraModule;
use super::keys::ModuleName;
use super::merge::{FileReport, LoraSet, MergeReport};
use crate::ModelError;
use std::collections::{BTreeMap, HashMap, HashSet};

/// The adapter slot a model is lowered with: every adapted module (exact checkpoint paths) and
/// the rank they share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoraSlot {
    pub rank: usize,
    pub targets: Vec<String>,
}

/// Where a LoRA module's update goes: the base weight's module path and its [out, in].
struct Target {
    module: String,
    out_features: usize,
    in_features: usize,
}

/// Module paths of the base model's linear weights (`<m>.weight`, rank 2), and kohya's flattened
/// names of them (None where two modules flatten alike).
struct BaseModules {
    dotted: HashMap<String, (usize, usize)>,
    flat: HashMap<String, Option<String>>,
}

impl BaseModules {
    fn new(base: &[(String, Vec<usize>)]) -> Self {
        let mut dotted = HashMap::new();
        let mut flat: HashMap<String, Option<String>> = HashMap::new();
        for (name, shape) in base {
            let (Some(module), [out, inp]) = (name.strip_suffix(".weight"), shape.as_slice())
            else {
                continue;
            };
            dotted.insert(module.to_string(), (*out, *inp));
            flat.entry(module.replace('.', "_"))
                .and_modify(|v| *v = None)
                .or_insert_with(|| Some(module.to_string()));
        }
        BaseModules { dotted, flat }
    }

    fn resolve(&self, m: &LoraModule) -> Result<Target, String> {
        let module = match &m.name {
            ModuleName::Dotted(d) => d.clone(),
            ModuleName::Flat(f) => match self.flat.get(f) {
                Some(Some(d)) => d.clone(),
                Some(None) => return Err(format!("`{f}` matches several DiT modules")),
                None => return Err(format!("module `{f}` is not a DiT module")),
            },
        };
        let Some(&(out_features, in_features)) = self.dotted.get(&module) else {
            return Err(format!("module `{module}` is not a DiT linear layer"));
        };
        if (m.out_features, m.in_features) != (out_features, in_features) {
            return Err(format!(
                "the update is {}x{} but `{module}.weight` is {out_features}x{in_features}",
                m.out_features, m.in_features
            ));
        }
        Ok(Target {
            module,
            out_features,
            in_features,
        })
    }
}

/// Param names with their f32 values.
pub type NamedValues = Vec<(String, Vec<f32>)>;

/// One module's contributions: (factors, c_i) per file.
type Contributions<'a> = BTreeMap<String, (Target, Vec<(&'a LoraModule, f32)>)>;

fn contributions<'a>(
    set: &'a LoraSet,
    base: &BaseModules,
) -> Result<(Contributions<'a>, MergeReport), ModelError> {
    let mut by_module: Contributions<'a> = BTreeMap::new();
    let mut report = MergeReport::default();
    for (file, scale) in &set.files {
        for m in &file.modules {
            let target = base.resolve(m).map_err(|why| {
                ModelError::new(format!(
                    "LoRA file {}: key `{}`: {why}",
                    file.path.display(),
                    m.key
                ))
            })?;
            let entry = by_module
                .entry(target.module.clone())
                .or_insert_with(|| (target, Vec::new()));
            entry.1.push((m, scale * m.alpha_scale));
        }
        report.files.push(FileReport {
            path: file.path.clone(),
            format: file.format,
            scale: *scale,
            modules: file.modules.len(),
        });
    }
    Ok((by_module, report))
}

impl LoraSlot {
    /// The smallest slot that holds `set` on a model whose weights are `base` (names and shapes):
    /// the modules any file touches, and the largest total rank of one module.
    pub fn for_set(set: &LoraSet, base: &[(String, Vec<usize>)]) -> Result<Self, ModelError> {
        let (by_module, _) = contributions(set, &BaseModules::new(base))?;
        let rank = by_module
            .values()
            .map(|(_, parts)| parts.iter().map(|(m, _)| m.rank).sum::<usize>())
            .max()
            .unwrap_or(0);
        Ok(LoraSlot {
            rank,
            targets: by_module.into_keys().collect(),
        })
    }

    /// The slot a model was lowered with, read back from its weights (`<m>.lora_A.weight`
    /// [rank, in] for every adapted module); None when it has no LoRA factors.
    pub fn of_model(weights: &[(String, Vec<usize>)]) -> Option<Self> {
        let mut targets = Vec::new();
        let mut rank = None;
        for (name, shape) in weights {
            if let Some(module) = name.strip_suffix(".lora_A.weight") {
                targets.push(module.to_string());
                rank = rank.max(shape.first().copied());
            }
        }
        targets.sort();
        Some(LoraSlot {
            rank: rank?,
            targets,
        })
    }

    /// The `adapter` settings for `lora.qie`: this rank, alpha = rank (graph scale 1), these
    /// exact module paths.
    pub fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "rank": self.rank,
            "alpha": self.rank,
            "targets": self.targets,
        })
    }

    /// The factors of every slot module for `set`, as (param name, values): `<m>.lora_A.weight`
    /// [rank, in] and `<m>.lora_B.weight` [out, rank], concatenated along the rank with the
    /// scales folded into B and zero-padded. An error when the set needs a module outside the
    /// slot or more rank than it has.
    pub fn tensors(
        &self,
        set: &LoraSet,
        base: &[(String, Vec<usize>)],
    ) -> Result<(NamedValues, MergeReport), ModelError> {
        let base = BaseModules::new(base);
        let (by_module, report) = contributions(set, &base)?;
        let reload = "load the model with a slot that holds this set (LoraSlot::for_set)";
        let in_slot: HashSet<&str> = self.targets.iter().map(String::as_str).collect();
        for (module, (_, parts)) in &by_module {
            if !in_slot.contains(module.as_str()) {
                return Err(ModelError::new(format!(
                    "LoRA module `{module}` is not in the model's adapter slot; {reload}"
                )));
            }
            let total: usize = parts.iter().map(|(m, _)| m.rank).sum();
            if total > self.rank {
                return Err(ModelError::new(format!(
                    "the LoRA files give `{module}` rank {total}, the adapter slot has {}; {reload}",
                    self.rank
                )));
            }
        }
        let mut out = Vec::with_capacity(2 * self.targets.len());
        for module in &self.targets {
            let (out_features, in_features) = match by_module.get(module) {
                Some((t, _)) => (t.out_features, t.in_features),
                None => *base.dotted.get(module).ok_or_else(|| {
                    ModelError::new(format!(
                        "adapter slot module `{module}` is not in the model"
                    ))
                })?,
            };
            let rank = self.rank;
            let mut a = vec![0.0f32; rank * in_features];
            let mut b = vec![0.0f32; out_features * rank];
            let mut offset = 0;
            for (m, c) in by_module.get(module).map_or(&[][..], |(_, p)| p) {
                a[offset * in_features..(offset + m.rank) * in_features].copy_from_slice(&m.down);
                for o in 0..out_features {
                    for k in 0..m.rank {
                        b[o * rank + offset + k] = c * m.up[o * m.rank + k];
                    }
                }
                offset += m.rank;
            }
            out.push((format!("{module}.lora_A.weight"), a));
            out.push((format!("{module}.lora_B.weight"), b));
        }
        Ok((out, report))
    }
}
