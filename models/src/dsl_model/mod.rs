//! One generic model driver for every `.qie` model: a program bound to its config, the weights it
//! reads (checked once against the program), and compiled plans cached per (graph kind, shape key).
//!
//! A model wraps it in a few lines: its source name, its config as the DSL reads it, a probe
//! [`Specialisation`] to list its weights, and per call a shape key, the input types and statics
//! ([`Specialisation`]) and the input tensors. What is special about a model (host-side index
//! tables, tiling, prefixes in its checkpoints) stays in the wrapper.

mod kind;
pub mod objective;
mod program;
mod weights;

pub use kind::{Gradients, GraphKind};
pub use objective::Objective;
pub use program::{static_int_rows, DslProgram, DslSource, ParamTable, Specialisation};

use crate::{HostWeights, ModelError, ModelOptions, PlanCache};
use qie_runtime::weights::{CheckMode, WeightStore};
use qie_runtime::{
    Backend, CompileOptions, Executable, ParamCopy, ParamSet, ParamWrite, Profile, Tensor,
};
use std::collections::HashMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weights::{ModelWeights, WeightSources};

/// A plan's shape key: calls with equal keys (and equal graph kinds) must lower to equal graphs.
pub trait ShapeKey: Clone + Eq + Hash {
    /// The part of the model this key's plans compute, for errors ("encoder"); None = all of it.
    fn part(&self) -> Option<&'static str> {
        None
    }
}

pub struct DslModel<K> {
    program: DslProgram,
    /// Source param names and shapes the program reads (from the probe lowering).
    expected: Vec<(String, Vec<usize>)>,
    weights: ModelWeights,
    backend: Arc<dyn Backend>,
    compile: CompileOptions,
    plans: PlanCache<(GraphKind, K)>,
}

impl<K: ShapeKey> DslModel<K> {
    /// Reads the weights `program` expects (its params, lowered at `probe`) from `store`, where
    /// they are named `prefix` + the source's name, after checking names and shapes (`mode`:
    /// whether other tensors may be in the files, e.g. the language model next to the tower).
    pub fn load(
        program: DslProgram,
        probe: &Specialisation,
        store: &WeightStore,
        prefix: &str,
        mode: CheckMode,
        options: &ModelOptions,
    ) -> Result<Self, ModelError> {
        let table = program.param_table(probe)?;
        let sources = WeightSources::split(&table, prefix, |name| store.contains(name));
        let checkpoint = with_prefix(&sources.read, prefix);
        store
            .check_with(&checkpoint, mode)
            .map_err(|e| ModelError::new(e.to_string()))?;
        let mut host = HostWeights::load(store, &checkpoint, options.precision)?;
        let seed = program.init_seed();
        let created = sources.create_into(&mut host, prefix, seed, options.precision);
        let mut model = Self::from_parts(program, table.shapes, host, prefix, options);
        model.weights.set_created(created);
        Ok(model)
    }

    /// Like [`DslModel::load`] from weights already in memory (named `prefix` + source name).
    pub fn from_weights(
        program: DslProgram,
        probe: &Specialisation,
        weights: HostWeights,
        prefix: &str,
        options: &ModelOptions,
    ) -> Result<Self, ModelError> {
        let table = program.param_table(probe)?;
        let sources = WeightSources::split(&table, prefix, |name| weights.contains(name));
        let mut weights = weights;
        let seed = program.init_seed();
        let created = sources.create_into(&mut weights, prefix, seed, options.precision);
        weights.check(&with_prefix(&table.shapes, prefix))?;
        let mut model = Self::from_parts(program, table.shapes, weights, prefix, options);
        model.weights.set_created(created);
        Ok(model)
    }

    fn from_parts(
        program: DslProgram,
        expected: Vec<(String, Vec<usize>)>,
        host: HostWeights,
        prefix: &str,
        options: &ModelOptions,
    ) -> Self {
        let backend = options.backend_or_cpu();
        DslModel {
            program,
            weights: ModelWeights::new(host, prefix, expected.clone(), backend.clone()),
            expected,
            backend,
            compile: options.compile.clone(),
            plans: PlanCache::default(),
        }
    }

    pub fn program(&self) -> &DslProgram {
        &self.program
    }

    /// Source param names and shapes of every weight the program reads.
    pub fn expected_weights(&self) -> &[(String, Vec<usize>)] {
        &self.expected
    }

    /// Source names of the weights the checkpoint lacked and the source's initialisers created
    /// (new layers, adapters), in program order: what a CLI reports after loading.
    pub fn created_weights(&self) -> &[String] {
        self.weights.created()
    }

    /// Name of the backend plans run on (`cpu`, `cuda:0`, ...).
    pub fn backend_name(&self) -> &str {
        self.backend.name()
    }

    /// The backend's device memory (`None` on the CPU).
    pub fn device_memory(&self) -> Option<qie_runtime::MemoryReport> {
        self.backend.memory()
    }

    /// Replaces the weight the source calls `name` with `values` (same element count), on the
    /// host and in place on the backend: the next run of every plan reads the new values.
    pub fn update_weight(&mut self, name: &str, values: &[f32]) -> Result<(), ModelError> {
        self.weights.update(name, values)
    }

    /// The current values of the weight the source calls `name`, in f32.
    pub fn weight_f32(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let checkpoint = self.weights.checkpoint_name(name);
        self.weights
            .read_f32(name)
            .map_err(|e| ModelError::new(format!("reading {checkpoint}: {e}")))?
            .ok_or_else(|| ModelError::new(format!("the model has no weight \"{checkpoint}\"")))
    }

    /// Overwrites ranges of the weights (source names in `copies`' `to`) from `from`, another
    /// parameter set of the model's backend, without a host round trip.
    pub fn copy_weights_from(
        &mut self,
        from: &ParamSet,
        copies: &[ParamCopy],
    ) -> Result<(), ModelError> {
        self.weights.copy_into_resident(from, copies).map_err(|e| {
            ModelError::new(format!("updating the {} weights: {e}", self.program.name()))
        })
    }

    /// [`DslModel::run`] with the outputs named in `writes` going into `sink`, a parameter set
    /// of the model's backend, instead of coming back.
    pub fn run_into(
        &self,
        kind: &GraphKind,
        key: &K,
        spec: &Specialisation,
        inputs: &HashMap<String, Tensor>,
        sink: &mut ParamSet,
        writes: &[ParamWrite],
    ) -> Result<Outputs, ModelError> {
        let exe = self.plan(kind, key, spec)?;
        let tensors = self
            .weights
            .run_into(&*exe, inputs, sink, writes)
            .map_err(|e| ModelError::new(format!("running the {}: {e}", self.what(key))))?;
        Ok(Outputs {
            model: self.program.name().to_string(),
            tensors,
        })
    }

    /// The backend the model's plans run on.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// How many weight updates the backend's copy has seen (`None` before the first run uploads it).
    pub fn weights_version(&self) -> Option<u64> {
        self.weights.version()
    }

    /// The compiled plan of `kind` for `key`, lowered for `spec` on first use.
    pub fn plan(
        &self,
        kind: &GraphKind,
        key: &K,
        spec: &Specialisation,
    ) -> Result<Arc<dyn Executable>, ModelError> {
        let what = format!("{}{}", self.what(key), kind.label());
        self.plans.get_or_compile(
            &(kind.clone(), key.clone()),
            &*self.backend,
            &kind.compile_options(&self.compile),
            &what,
            || self.program.lower_kind(kind, spec),
        )
    }

    /// Runs the plan of `kind` for `key` on `inputs` (which `spec` describes).
    pub fn run(
        &self,
        kind: &GraphKind,
        key: &K,
        spec: &Specialisation,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<Outputs, ModelError> {
        let exe = self.plan(kind, key, spec)?;
        let (tensors, _) = self.execute(&*exe, key, inputs, false)?;
        Ok(Outputs {
            model: self.program.name().to_string(),
            tensors,
        })
    }

    /// The forward pass: [`DslModel::run`] with [`GraphKind::Forward`].
    pub fn forward(
        &self,
        key: &K,
        spec: &Specialisation,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<Outputs, ModelError> {
        self.run(&GraphKind::Forward, key, spec, inputs)
    }

    /// Runs the forward pass once with every step timed (see [`Profile`]).
    pub fn profile(
        &self,
        key: &K,
        spec: &Specialisation,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<Profile, ModelError> {
        self.profile_kind(&GraphKind::Forward, key, spec, inputs)
    }

    /// Runs the plan of `kind` once with every step timed.
    pub fn profile_kind(
        &self,
        kind: &GraphKind,
        key: &K,
        spec: &Specialisation,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<Profile, ModelError> {
        let exe = self.plan(kind, key, spec)?;
        let (_, profile) = self.execute(&*exe, key, inputs, true)?;
        Ok(profile.expect("a profiled run returns a profile"))
    }

    fn execute(
        &self,
        exe: &dyn Executable,
        key: &K,
        inputs: &HashMap<String, Tensor>,
        profiled: bool,
    ) -> Result<(HashMap<String, Tensor>, Option<Profile>), ModelError> {
        self.weights
            .run(exe, inputs, profiled)
            .map_err(|e| ModelError::new(format!("running the {}: {e}", self.what(key))))
    }

    /// The model (and part) a key's plans compute, in errors: "DiT", "VAE decoder".
    fn what(&self, key: &K) -> String {
        match key.part() {
            Some(part) => format!("{} {part}", self.program.name()),
            None => self.program.name().to_string(),
        }
    }
}

/// The outputs of one run, by the names the source declares.
pub struct Outputs {
    model: String,
    tensors: HashMap<String, Tensor>,
}

impl Outputs {
    /// Removes and returns output `name`; an error naming the model when the source has none.
    pub fn take(&mut self, name: &str) -> Result<Tensor, ModelError> {
        self.tensors.remove(name).ok_or_else(|| {
            ModelError::new(format!(
                "the {} source declared no `{name}` output",
                self.model
            ))
        })
    }

    pub fn into_map(self) -> HashMap<String, Tensor> {
        self.tensors
    }
}

/// `dir/config.json`, or an error saying which folder was expected (`what`: "a diffusers vae/
/// folder").
pub fn config_json(dir: &Path, what: &str) -> Result<PathBuf, ModelError> {
    let path = dir.join("config.json");
    if !path.exists() {
        return Err(ModelError::new(format!(
            "{}: no config.json (expected {what})",
            dir.display()
        )));
    }
    Ok(path)
}

/// The safetensors of a model folder (sharded or not).
pub fn open_store(dir: &Path) -> Result<WeightStore, ModelError> {
    WeightStore::open(dir).map_err(|e| ModelError::new(e.to_string()))
}

fn with_prefix(expected: &[(String, Vec<usize>)], prefix: &str) -> Vec<(String, Vec<usize>)> {
    expected
        .iter()
        .map(|(name, shape)| (format!("{prefix}{name}"), shape.clone()))
        .collect()
}
