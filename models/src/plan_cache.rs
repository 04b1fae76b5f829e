//! Compiled plans cached per input-shape specialisation, so a loop over equal shapes compiles once.

use crate::ModelError;
use qie_ir::Graph;
use qie_runtime::{Backend, CompileOptions, Executable};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

pub struct PlanCache<K> {
    plans: Mutex<HashMap<K, Arc<dyn Executable>>>,
}

impl<K> Default for PlanCache<K> {
    fn default() -> Self {
        PlanCache {
            plans: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone> PlanCache<K> {
    /// The plan for `key`, lowering (`lower`) and compiling it on first use. `what` names the
    /// model in errors ("compiling the VAE decoder for cuda:0: ...").
    pub fn get_or_compile(
        &self,
        key: &K,
        backend: &dyn Backend,
        options: &CompileOptions,
        what: &str,
        lower: impl FnOnce() -> Result<Graph, ModelError>,
    ) -> Result<Arc<dyn Executable>, ModelError> {
        if let Some(exe) = self.plans.lock().expect("plan cache poisoned").get(key) {
            return Ok(exe.clone());
        }
        let graph = lower()?;
        let exe: Arc<dyn Executable> =
            Arc::from(backend.compile(&graph, options).map_err(|e| {
                ModelError::new(format!("compiling the {what} for {}: {e}", backend.name()))
            })?);
        self.plans
            .lock()
            .expect("plan cache poisoned")
            .insert(key.clone(), exe.clone());
        Ok(exe)
    }
}
