//! Qwen-Image DiT at real width with random weights: 3072 wide, 24 heads, 3584-wide text.
//! `cargo bench -p qie-benches --bench dit`. Settings by environment:
//! QIE_BENCH_DEVICE cpu|cuda (cpu), QIE_BENCH_LAYERS (1), QIE_BENCH_IMG image side in patches (64 =
//! 1024 px), QIE_BENCH_REFS reference images of the same size (0), QIE_BENCH_TXT (256),
//! QIE_BENCH_RUNS (3). CPU target: one block at 4096 + 256 tokens in under 30 s on 2 cores.
//! PyTorch on the same inputs: benches/torch/dit.py.

use qie_benches::{median, time_runs};
use qie_models::qwen_image::dit::expected_weights_for;
use qie_models::qwen_image::random::{random_inputs, random_weights, real_dit_config};
use qie_models::qwen_image::{DitOptions, QwenImageDit};
use qie_runtime::cuda::{CudaBackend, StorageMode};
use qie_runtime::Backend;
use std::sync::Arc;
use std::time::Instant;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = env_usize("QIE_BENCH_RUNS", 3);
    let layers = env_usize("QIE_BENCH_LAYERS", 1);
    let side = env_usize("QIE_BENCH_IMG", 64);
    let refs = env_usize("QIE_BENCH_REFS", 0);
    let txt = env_usize("QIE_BENCH_TXT", 256);
    let device = std::env::var("QIE_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    let backend: Option<Arc<dyn Backend>> = match device.as_str() {
        "cpu" => None,
        "cuda" => match CudaBackend::new(0, StorageMode::Bf16) {
            Ok(b) => Some(Arc::new(b)),
            Err(e) => {
                println!("dit bench: skipped on cuda: {e}");
                return;
            }
        },
        other => panic!("QIE_BENCH_DEVICE={other}: expected cpu or cuda"),
    };
    let config = real_dit_config(layers, false);
    let start = Instant::now();
    let expected = expected_weights_for(&config, None).expect("lower the model");
    let weights = random_weights(&expected);
    let options = DitOptions {
        backend,
        ..DitOptions::default()
    };
    let dit = QwenImageDit::from_weights(config.clone(), weights, &options).expect("model");
    let setup = start.elapsed();

    let inputs = random_inputs(&config, side, refs, txt);
    let s_img = inputs.img_tokens();
    let flops = dit.lower(&inputs).expect("lower").matmul_flops();
    let start = Instant::now();
    let first = dit.forward(&inputs).expect("forward");
    let first_time = start.elapsed();
    assert!(
        first.to_f32_vec().iter().all(|v| v.is_finite()),
        "non-finite output"
    );
    let times = time_runs(runs, || {
        dit.forward(&inputs).expect("forward");
    });
    let med = median(times.clone());
    println!(
        "dit bench on {}: {layers} block(s), {s_img} image + {txt} text tokens, {:.3} TFLOP (matmul+attention)",
        dit.backend_name(),
        flops / 1e12,
    );
    println!(
        "  setup {:.1} s, first run (compile + run) {:.2} s, median of {runs} {:.4} s ({:.1} TFLOP/s), runs {:?}",
        setup.as_secs_f64(),
        first_time.as_secs_f64(),
        med.as_secs_f64(),
        flops / med.as_secs_f64() / 1e12,
        times.iter().map(|t| format!("{:.4}", t.as_secs_f64())).collect::<Vec<_>>()
    );
}
