//! `qie compile`: lower a .qie model for given shapes and print each compiler stage.

use crate::model_args::ModelArgs;
use clap::Args;
use qie_ir::passes::{fusion, memplan, optimize, schedule_dump};
use qie_ir::print::print_graph;

#[derive(Args)]
pub struct CompileArgs {
    #[command(flatten)]
    pub model: ModelArgs,
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
    let graph = args.model.lower()?;
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
