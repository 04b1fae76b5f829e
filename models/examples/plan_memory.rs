//! Device memory the CUDA plan of the real-size DiT needs, without a GPU or weights: weights in
//! their storage dtype, the plan arena, and what the weight pool would allocate for them.
//!
//!     cargo run --release -p qie-models --example plan_memory -- [layers=60] [side=64] [refs=1]
use qie_models::qwen_image::dit::lower_without_weights;
use qie_models::qwen_image::random::{random_inputs, real_dit_config};
use qie_runtime::cuda::{build_plan, StorageMode};
use qie_runtime::CompileOptions;

fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn main() -> Result<(), String> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().map_err(|_| format!("not a number: {s}")))
        .collect::<Result<_, _>>()?;
    let layers = args.first().copied().unwrap_or(60);
    let side = args.get(1).copied().unwrap_or(64);
    let refs = args.get(2).copied().unwrap_or(1);
    let config = real_dit_config(layers, false);
    let inputs = random_inputs(&config, side, refs, 256);
    let graph = lower_without_weights(&config, None, &inputs).map_err(|e| e.to_string())?;
    let plan = build_plan(&graph, &CompileOptions::default(), StorageMode::Bf16)
        .map_err(|e| e.to_string())?;
    let weights: usize = plan
        .params
        .iter()
        .map(|p| p.ty.size_bytes().div_ceil(256) * 256)
        .sum();
    println!("{layers} layers, {side}x{side} patches, {refs} reference image(s)");
    println!("{}", plan.stats);
    println!(
        "weights {:.2} GiB; plan arena {:.3} GiB (memory plan {:.3} GiB, peak live {:.3} GiB)",
        gib(weights),
        gib(plan.arena_bytes),
        gib(plan.memory.arena_bytes),
        gib(plan.memory.peak_live_bytes)
    );
    Ok(())
}
