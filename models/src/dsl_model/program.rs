//! A model's DSL program bound to its config: everything lowering needs, without weights, so plan
//! inspection and weight listings work before any checkpoint is read.

use super::kind::GraphKind;
use crate::{sources, ModelError};
use qie_ir::dsl::{Program, StaticValue};
use qie_ir::{Graph, ParamInit, TensorType};
use qie_runtime::Tensor;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Where a model's `.qie` text comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DslSource<'a> {
    /// A source shipped with qie (see [`sources::BUNDLED`]).
    Bundled(&'a str),
    /// A file on disk (architecture variants); its imports fall back to the bundled sources.
    File(&'a Path),
}

impl<'a> DslSource<'a> {
    /// The override file when one is given, else the bundled source `bundled`.
    pub fn new(bundled: &'a str, file: Option<&'a Path>) -> Self {
        file.map_or(DslSource::Bundled(bundled), DslSource::File)
    }

    pub fn load(&self) -> Result<Program, ModelError> {
        let result = match *self {
            DslSource::Bundled(name) => sources::load_bundled(name),
            DslSource::File(path) => sources::load_program_file(path),
        };
        result.map_err(|e| ModelError::new(e.to_string()))
    }

    /// The source with the bundled `adapter` source (`lora.qie`) layered on top: a root that
    /// imports the model, then the adapter (whose overrides replace the model's items), and
    /// keeps the model's entry module.
    fn load_layered(&self, adapter: &str, entry: &str) -> Result<Program, ModelError> {
        const ROOT: &str = "<model + adapter>";
        let model = match *self {
            DslSource::Bundled(name) => name.to_string(),
            DslSource::File(path) => path.to_string_lossy().replace('\\', "/"),
        };
        let quoted = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let root = format!(
            "import {};\nimport {};\nentry {entry};\n",
            quoted(&model),
            quoted(adapter)
        );
        let on_disk = matches!(self, DslSource::File(_));
        let read = |name: &str| {
            if name == ROOT {
                return Some(root.clone());
            }
            let file = on_disk
                .then(|| std::fs::read_to_string(name).ok())
                .flatten();
            file.or_else(|| sources::bundled(name).map(str::to_string))
        };
        Program::from_sources(ROOT, &read).map_err(|e| ModelError::new(e.to_string()))
    }
}

/// An owned [`DslSource`], kept so a program can be reloaded with an adapter layered on it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum SourceOrigin {
    Bundled(String),
    File(std::path::PathBuf),
}

impl SourceOrigin {
    fn of(source: DslSource<'_>) -> Self {
        match source {
            DslSource::Bundled(n) => SourceOrigin::Bundled(n.to_string()),
            DslSource::File(p) => SourceOrigin::File(p.to_path_buf()),
        }
    }

    fn source(&self) -> DslSource<'_> {
        match self {
            SourceOrigin::Bundled(n) => DslSource::Bundled(n),
            SourceOrigin::File(p) => DslSource::File(p),
        }
    }
}

/// The bundled LoRA adapter source (models/qie/adapters/lora.qie).
pub const LORA_ADAPTER: &str = "lora.qie";

/// What one plan is lowered for: the type of every tensor input the call binds and the static
/// (compile-time) arguments of the entry `forward`. Two calls that would share a plan must have
/// equal specialisations; the plan cache relies on the caller's shape key for that.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Specialisation {
    pub inputs: Vec<(String, TensorType)>,
    pub statics: Vec<(String, StaticValue)>,
}

impl Specialisation {
    pub fn new(inputs: Vec<(String, TensorType)>) -> Self {
        Specialisation {
            inputs,
            statics: Vec::new(),
        }
    }

    /// The types of `bindings` (sorted by name, so equal bindings give equal specialisations).
    pub fn of_bindings(bindings: &HashMap<String, Tensor>) -> Self {
        let mut inputs: Vec<(String, TensorType)> = bindings
            .iter()
            .map(|(name, t)| (name.clone(), t.ty().clone()))
            .collect();
        inputs.sort_by(|a, b| a.0.cmp(&b.0));
        Specialisation::new(inputs)
    }

    pub fn with_static(mut self, name: &str, value: StaticValue) -> Self {
        self.statics.push((name.to_string(), value));
        self
    }
}

/// Rows of integers (image grids, shapes) as a static list of lists.
pub fn static_int_rows<R: AsRef<[usize]>>(rows: &[R]) -> StaticValue {
    StaticValue::List(
        rows.iter()
            .map(|r| {
                StaticValue::List(
                    r.as_ref()
                        .iter()
                        .map(|&d| StaticValue::Int(d as i64))
                        .collect(),
                )
            })
            .collect(),
    )
}

/// A loaded program, the config values it is instantiated with (the `config.*` it reads) and the
/// model's name for errors.
pub struct DslProgram {
    name: String,
    program: Program,
    config: serde_json::Value,
    origin: SourceOrigin,
    /// The `adapter` namespace when an adapter source is layered on the model.
    adapter: Option<serde_json::Value>,
    /// Mixed into the seed of every weight created from its initialiser.
    init_seed: u64,
}

/// The weights a program reads, from one probe lowering: names and shapes in node order, and the
/// initialisers of those the source can create when a checkpoint lacks them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamTable {
    pub shapes: Vec<(String, Vec<usize>)>,
    pub inits: BTreeMap<String, ParamInit>,
}

impl DslProgram {
    /// `name` is what errors call the model ("DiT", "vision tower").
    pub fn load(
        name: &str,
        source: DslSource<'_>,
        config: serde_json::Value,
    ) -> Result<DslProgram, ModelError> {
        Ok(DslProgram {
            name: name.to_string(),
            program: source.load()?,
            config,
            origin: SourceOrigin::of(source),
            adapter: None,
            init_seed: 0,
        })
    }

    /// The same model with LoRA layered on it (`lora.qie`, see there), configured by `settings`
    /// (`{"rank": r, "alpha": a, "targets": [..]}`, the `adapter` namespace). The LoRA factors
    /// become params named like diffusers' peft keys; a checkpoint without them gets them created
    /// (peft's initialisation), so the same call serves training a new LoRA and running one.
    pub fn with_adapter(self, settings: serde_json::Value) -> Result<Self, ModelError> {
        self.with_adapter_source(LORA_ADAPTER, settings)
    }

    /// [`DslProgram::with_adapter`] with another bundled adapter source.
    pub fn with_adapter_source(
        mut self,
        adapter: &str,
        settings: serde_json::Value,
    ) -> Result<Self, ModelError> {
        if !settings.is_object() {
            return Err(ModelError::new(format!(
                "the {} adapter settings must be a JSON object, got {settings}",
                self.name
            )));
        }
        self.program = self
            .origin
            .source()
            .load_layered(adapter, self.program.entry())?;
        self.adapter = Some(settings);
        Ok(self)
    }

    /// The adapter settings, when an adapter is layered on the model.
    pub fn adapter(&self) -> Option<&serde_json::Value> {
        self.adapter.as_ref()
    }

    /// The user seed of weights created from their initialisers (default 0); each weight's
    /// stream also depends on its name, so adding a weight never changes the others.
    pub fn with_init_seed(mut self, seed: u64) -> Self {
        self.init_seed = seed;
        self
    }

    pub fn init_seed(&self) -> u64 {
        self.init_seed
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The forward graph for `spec` (the IR before optimisation).
    pub fn lower(&self, spec: &Specialisation) -> Result<Graph, ModelError> {
        let lowered = match &self.adapter {
            None => self
                .program
                .lower(&self.config, &spec.inputs, &spec.statics),
            Some(adapter) => {
                self.program
                    .lower_with_adapter(&self.config, adapter, &spec.inputs, &spec.statics)
            }
        };
        lowered.map_err(|e| ModelError::new(e.to_string()))
    }

    /// The graph of `kind` for `spec`: the forward graph, or it with its backward pass appended.
    pub fn lower_kind(&self, kind: &GraphKind, spec: &Specialisation) -> Result<Graph, ModelError> {
        kind.build(self.lower(spec)?)
            .map_err(|e| ModelError::new(format!("differentiating the {}: {e}", self.name)))
    }

    /// Names and shapes of every param the program reads, from lowering it once at `probe` (a
    /// tiny specialisation: the params must not depend on the input shapes).
    pub fn param_shapes(
        &self,
        probe: &Specialisation,
    ) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
        Ok(self.param_table(probe)?.shapes)
    }

    /// [`DslProgram::param_shapes`] plus the declared initialisers, from one lowering at `probe`.
    pub fn param_table(&self, probe: &Specialisation) -> Result<ParamTable, ModelError> {
        let graph = self.lower(probe)?;
        let shapes: Vec<(String, Vec<usize>)> = graph
            .params()
            .into_iter()
            .map(|(name, id)| (name.to_string(), graph.ty(id).shape.to_vec()))
            .collect();
        let inits = shapes
            .iter()
            .filter_map(|(name, _)| Some((name.clone(), *graph.param_init(name)?)))
            .collect();
        Ok(ParamTable { shapes, inits })
    }

    /// Initialisers of the params read at `probe` that declare one, by source name.
    pub fn param_inits(
        &self,
        probe: &Specialisation,
    ) -> Result<BTreeMap<String, ParamInit>, ModelError> {
        Ok(self.param_table(probe)?.inits)
    }
}
