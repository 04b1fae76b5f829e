//! `qie compile`: lower a .qie model for given shapes and print each compiler stage.

use crate::shapes_arg::{parse_shapes, parse_static, tensor_type};
use clap::Args;
use qie_ir::dsl::InputKind;
use qie_ir::passes::{fusion, memplan, optimize, schedule_dump};
use qie_ir::print::print_graph;
use std::path::PathBuf;

#[derive(Args)]
pub struct CompileArgs {
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
    /// Print the IR after lowering and after optimisation.
    #[arg(long)]
    pub dump_ir: bool,
    /// Print the kernel groups chosen by fusion.
    #[arg(long)]
    pub dump_fusion: bool,
    /// Print the memory plan (buffer offsets, lifetimes, peak bytes).
    #[arg(long)]
    pub dump_memplan: bool,
}

pub fn run(args: CompileArgs) -> Result<(), String> {
    let program = crate::cmd_forward::load_program(&args.file)?;
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| format!("{}: invalid JSON: {e}", path.display()))?
        }
        None => serde_json::json!({}),
    };
    let signature = program.signature().map_err(|e| e.to_string())?;
    let specs = parse_shapes(&args.shapes)?;
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
    let statics = args
        .statics
        .iter()
        .map(|s| parse_static(s))
        .collect::<Result<Vec<_>, _>>()?;

    let graph = program
        .lower(&config, &inputs, &statics)
        .map_err(|e| e.to_string())?;
    let optimized = optimize(&graph);
    let plan = fusion::fuse(&optimized, &fusion::FusionOptions::default());
    let memory = memplan::plan_memory(&optimized, &plan, &memplan::MemPlanOptions::default());

    let mut text = String::new();
    if args.dump_ir {
        text += &format!("== IR after lowering ({} nodes)\n", graph.len());
        text += &print_graph(&graph);
        text += &format!("== IR after optimisation ({} nodes)\n", optimized.len());
        text += &print_graph(&optimized);
    }
    if args.dump_fusion {
        text += &format!("== fusion ({} kernel groups)\n", plan.groups.len());
        text += &schedule_dump::dump_fusion(&optimized, &plan);
    }
    if args.dump_memplan {
        text += "== memory plan\n";
        text += &schedule_dump::dump_memplan(&optimized, &plan, &memory);
    }
    text += &format!(
        "compiled: {} nodes -> {} after optimisation, {} kernel groups, arena {:.2} MiB (peak live {:.2} MiB), {:.3} GFLOP in matmul/attention/conv",
        graph.len(),
        optimized.len(),
        plan.groups.len(),
        memory.arena_bytes as f64 / (1 << 20) as f64,
        memory.peak_live_bytes as f64 / (1 << 20) as f64,
        optimized.matmul_flops() / 1e9,
    );
    crate::write_stdout(&text)
}
