//! The one place a model's weights meet its plans. Today they are host tensors handed to every run
//! as a [`ParamStore`]; moving them to device-resident parameter sets changes this file only.

use crate::HostWeights;
use qie_runtime::{Executable, ParamData, ParamStore, Profile, RuntimeError, Tensor};
use std::collections::HashMap;

/// Host tensors by checkpoint name, and the prefix that turns the source's param names into
/// checkpoint names (`model.language_model.` + `layers.0...`; empty for most models).
pub(crate) struct ModelWeights {
    host: HostWeights,
    prefix: String,
}

impl ModelWeights {
    pub fn new(host: HostWeights, prefix: &str) -> Self {
        ModelWeights {
            host,
            prefix: prefix.to_string(),
        }
    }

    /// The checkpoint name of the source's param `name`.
    pub fn checkpoint_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs `exe` on `inputs` with these weights bound to its params; with `profiled`, every step is
    /// timed as well.
    pub fn run(
        &self,
        exe: &dyn Executable,
        inputs: &HashMap<String, Tensor>,
        profiled: bool,
    ) -> Result<(HashMap<String, Tensor>, Option<Profile>), RuntimeError> {
        if profiled {
            let (outputs, profile) = exe.run_profiled(inputs, self)?;
            Ok((outputs, Some(profile)))
        } else {
            Ok((exe.run(inputs, self)?, None))
        }
    }
}

impl ParamStore for ModelWeights {
    fn param(&self, name: &str) -> Option<ParamData<'_>> {
        if self.prefix.is_empty() {
            self.host.param(name)
        } else {
            self.host.param(&self.checkpoint_name(name))
        }
    }
}
