//! The one place a model's weights meet its plans: host tensors by checkpoint name, uploaded on
//! the first run into a parameter set resident on the model's backend ([`ParamSet`]), which every
//! plan of the model (each shape, each graph kind) then reads without another upload.

use super::program::ParamTable;
use crate::host_weights::HostTensor;
use crate::{HostWeights, ModelError, WeightPrecision};
use qie_ir::{DType, ParamInit, TensorType};
use qie_runtime::{
    Backend, Executable, ParamCopy, ParamData, ParamSet, ParamStore, ParamWrite, Profile,
    RuntimeError, Tensor,
};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

/// Host tensors by checkpoint name, the prefix that turns the source's param names into
/// checkpoint names (`model.language_model.` + `layers.0...`; empty for most models), and their
/// resident copy on the backend.
pub(crate) struct ModelWeights {
    host: HostWeights,
    prefix: String,
    /// Source names and shapes of every weight the program reads.
    expected: Vec<(String, Vec<usize>)>,
    backend: Arc<dyn Backend>,
    /// Uploaded on the first run; runs share it (read lock), updates write it in place.
    resident: RwLock<Option<ParamSet>>,
    /// Source names of the weights created from their initialisers (the checkpoint lacked them).
    created: Vec<String>,
    /// Source names whose newest values exist only in the resident set (written on the
    /// device by [`ModelWeights::copy_into_resident`]); reads of them go to the set.
    device_newer: HashSet<String>,
}

/// Which of a program's weights come from the checkpoint and which its initialisers create: a
/// weight is created only when the checkpoint lacks it and the source declares an initialiser;
/// any other missing weight stays in `read`, so the checkpoint check reports it by name.
pub(crate) struct WeightSources {
    /// Source names and shapes to read from the checkpoint.
    pub read: Vec<(String, Vec<usize>)>,
    /// Source names, shapes and initialisers of the weights to create.
    pub create: Vec<(String, Vec<usize>, ParamInit)>,
}

impl WeightSources {
    /// Splits `table`; `has(checkpoint_name)` says whether the checkpoint holds a weight.
    pub fn split(table: &ParamTable, prefix: &str, has: impl Fn(&str) -> bool) -> Self {
        let mut sources = WeightSources {
            read: Vec::new(),
            create: Vec::new(),
        };
        for (name, shape) in &table.shapes {
            match table.inits.get(name) {
                Some(init) if !has(&format!("{prefix}{name}")) => {
                    sources.create.push((name.clone(), shape.clone(), *init))
                }
                _ => sources.read.push((name.clone(), shape.clone())),
            }
        }
        sources
    }

    /// Creates the missing weights in `host` (under their checkpoint names) and returns their
    /// source names.
    pub fn create_into(
        &self,
        host: &mut HostWeights,
        prefix: &str,
        seed: u64,
        precision: WeightPrecision,
    ) -> Vec<String> {
        self.create
            .iter()
            .map(|(name, shape, init)| {
                // Seeded by the source name, so a prefix in the files does not change the values.
                let values = crate::host_weights::init::init_values(init, name, shape, seed);
                host.set_f32(&format!("{prefix}{name}"), values, precision);
                name.clone()
            })
            .collect()
    }
}

/// The host weights under the source's names (what the plans' params are called).
struct SourceNamed<'a> {
    host: &'a HostWeights,
    prefix: &'a str,
}

impl ParamStore for SourceNamed<'_> {
    fn param(&self, name: &str) -> Option<ParamData<'_>> {
        if self.prefix.is_empty() {
            self.host.param(name)
        } else {
            self.host.param(&format!("{}{name}", self.prefix))
        }
    }
}

impl ModelWeights {
    pub fn new(
        host: HostWeights,
        prefix: &str,
        expected: Vec<(String, Vec<usize>)>,
        backend: Arc<dyn Backend>,
    ) -> Self {
        ModelWeights {
            host,
            prefix: prefix.to_string(),
            expected,
            backend,
            resident: RwLock::new(None),
            created: Vec::new(),
            device_newer: HashSet::new(),
        }
    }

    /// Records which weights were created from their initialisers (source names).
    pub fn set_created(&mut self, created: Vec<String>) {
        self.created = created;
    }

    /// Source names of the weights created from their initialisers, in program order.
    pub fn created(&self) -> &[String] {
        &self.created
    }

    /// The checkpoint name of the source's param `name`.
    pub fn checkpoint_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn source_named(&self) -> SourceNamed<'_> {
        SourceNamed {
            host: &self.host,
            prefix: &self.prefix,
        }
    }

    /// Uploads the weights to the backend unless they are there already.
    fn ensure_resident(&self) -> Result<(), RuntimeError> {
        if self
            .resident
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return Ok(());
        }
        let mut slot = self.resident.write().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            let specs: Vec<(String, TensorType)> = self
                .expected
                .iter()
                .map(|(name, shape)| (name.clone(), TensorType::new(DType::F32, shape)))
                .collect();
            *slot = Some(self.backend.upload_params(&specs, &self.source_named())?);
        }
        Ok(())
    }

    /// Runs `exe` on `inputs` with the resident weights bound to its params; with `profiled`,
    /// every step is timed as well.
    pub fn run(
        &self,
        exe: &dyn Executable,
        inputs: &HashMap<String, Tensor>,
        profiled: bool,
    ) -> Result<(HashMap<String, Tensor>, Option<Profile>), RuntimeError> {
        self.ensure_resident()?;
        let guard = self.resident.read().unwrap_or_else(|e| e.into_inner());
        let set = guard.as_ref().expect("uploaded above");
        if profiled {
            let (outputs, profile) = exe.run_profiled(inputs, set)?;
            Ok((outputs, Some(profile)))
        } else {
            Ok((exe.run(inputs, set)?, None))
        }
    }

    /// [`ModelWeights::run`] with the outputs named in `writes` going into `sink` on the backend.
    pub fn run_into(
        &self,
        exe: &dyn Executable,
        inputs: &HashMap<String, Tensor>,
        sink: &mut ParamSet,
        writes: &[ParamWrite],
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        self.ensure_resident()?;
        let guard = self.resident.read().unwrap_or_else(|e| e.into_inner());
        let set = guard.as_ref().expect("uploaded above");
        exe.run_into(inputs, set, sink, writes)
    }

    /// Overwrites ranges of resident weights (source names in `to`) from another set of the
    /// backend, on the device; the host copies of those weights are no longer read.
    pub fn copy_into_resident(
        &mut self,
        from: &ParamSet,
        copies: &[ParamCopy],
    ) -> Result<(), RuntimeError> {
        self.ensure_resident()?;
        let resident = self.resident.get_mut().unwrap_or_else(|e| e.into_inner());
        let set = resident.as_mut().expect("uploaded above");
        self.backend.copy_params(from, set, copies)?;
        self.device_newer
            .extend(copies.iter().map(|c| c.to.clone()));
        Ok(())
    }

    /// The current values of the weight the source calls `name`, in f32 (`None`: no such
    /// weight).
    pub fn read_f32(&self, name: &str) -> Result<Option<Vec<f32>>, RuntimeError> {
        if self.device_newer.contains(name) {
            let guard = self.resident.read().unwrap_or_else(|e| e.into_inner());
            let set = guard.as_ref().expect("device-newer weights are resident");
            return Ok(Some(set.read(name)?.to_f32_vec()));
        }
        Ok(self
            .host
            .get_f32(&self.checkpoint_name(name))
            .map(|v| v.into_owned()))
    }

    /// Replaces the weight the source calls `name` (same element count), on the host in its
    /// storage dtype and in place on the backend: the next run of every plan reads it.
    pub fn update(&mut self, name: &str, values: &[f32]) -> Result<(), ModelError> {
        let checkpoint = self.checkpoint_name(name);
        let held = self
            .host
            .tensor(&checkpoint)
            .ok_or_else(|| ModelError::new(format!("the model has no weight \"{checkpoint}\"")))?;
        if held.len() != values.len() {
            return Err(ModelError::new(format!(
                "weight \"{checkpoint}\": {} values given, it has {}",
                values.len(),
                held.len()
            )));
        }
        let tensor = match held {
            HostTensor::F32(_) => HostTensor::F32(values.to_vec()),
            HostTensor::Bf16(_) => HostTensor::Bf16(crate::host_weights::to_bf16(values)),
        };
        self.host.insert_tensor(checkpoint.clone(), tensor);
        self.device_newer.remove(name);
        let resident = self.resident.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = resident.as_mut() {
            let data = self.host.param(&checkpoint).expect("inserted above");
            set.update(name, data)
                .map_err(|e| ModelError::new(format!("updating {checkpoint}: {e}")))?;
        }
        Ok(())
    }

    /// The resident set's version (updates since the upload); `None` before the first run.
    pub fn version(&self) -> Option<u64> {
        self.resident
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(ParamSet::version)
    }
}
