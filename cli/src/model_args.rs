//! The model arguments `qie compile` and `qie kernels export` share: a .qie file, its config,
//! input shapes and static arguments, lowered to a graph.

use crate::shapes_arg::{parse_shapes, parse_static, tensor_type};
use clap::Args;
use qie_ir::dsl::InputKind;
use qie_ir::Graph;
use std::path::PathBuf;

#[derive(Args)]
pub struct ModelArgs {
    /// The .qie model source (imports resolve next to it, then among the bundled models).
    pub file: PathBuf,
    /// config.json whose values the source reads as `config.<key>`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Input shapes: `name=1x24x64,name2=i64:2` (dtype defaults to the declared one).
    #[arg(long, default_value = "")]
    pub shapes: String,
    /// Static (compile-time) arguments: `name=<json>`, e.g. `img_shapes=[[1,4,6],[1,6,4]]`. Repeatable.
    #[arg(long = "static")]
    pub statics: Vec<String>,
}

impl ModelArgs {
    /// Parses the model, config, shapes and statics and lowers the model to a graph.
    pub fn lower(&self) -> Result<Graph, String> {
        let program = crate::cmd_forward::load_program(&self.file)?;
        let config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
                serde_json::from_str(&text)
                    .map_err(|e| format!("{}: invalid JSON: {e}", path.display()))?
            }
            None => serde_json::json!({}),
        };
        let signature = program.signature().map_err(|e| e.to_string())?;
        let specs = parse_shapes(&self.shapes)?;
        let mut inputs = Vec::new();
        for spec in &specs {
            let declared = signature
                .iter()
                .find(|d| d.name == spec.name)
                .ok_or_else(|| {
                    let names: Vec<&str> = signature.iter().map(|d| d.name.as_str()).collect();
                    format!(
                        "--shapes: the model has no input `{}` (inputs: {})",
                        spec.name,
                        names.join(", ")
                    )
                })?;
            let dtype = match &declared.kind {
                InputKind::Tensor { dtype, .. } => Some(*dtype),
                InputKind::Static => {
                    return Err(format!(
                        "--shapes: `{}` is a static argument; pass it with --static",
                        spec.name
                    ))
                }
            };
            inputs.push((spec.name.clone(), tensor_type(spec, dtype)));
        }
        let statics = self
            .statics
            .iter()
            .map(|s| parse_static(s))
            .collect::<Result<Vec<_>, _>>()?;
        program
            .lower(&config, &inputs, &statics)
            .map_err(|e| e.to_string())
    }
}
