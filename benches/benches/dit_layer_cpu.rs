//! One Qwen-Image DiT block at real width on the CPU: 3072 wide, 24 heads, 4096 image + 256 text
//! tokens (~1.2 TFLOP). Target: under 30 s on 2 cores. `cargo bench -p qie-benches`
//! (env QIE_BENCH_RUNS, default 3; QIE_BENCH_IMG=64 gives a 64x64-patch image).

use qie_benches::{median, random_values, random_weights, real_dit_config, time_runs};
use qie_models::qwen_image::dit::expected_weights_for;
use qie_models::qwen_image::{DitInputs, DitOptions, QwenImageDit};
use qie_runtime::Tensor;
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
    let side = env_usize("QIE_BENCH_IMG", 64);
    let txt = env_usize("QIE_BENCH_TXT", 256);
    let config = real_dit_config(1, false);
    let start = Instant::now();
    let expected = expected_weights_for(&config, None).expect("lower the model");
    let weights = random_weights(&expected);
    let dit =
        QwenImageDit::from_weights(config.clone(), weights, &DitOptions::default()).expect("model");
    let setup = start.elapsed();

    let img_shapes = vec![[1, side, side]];
    let s_img = side * side;
    let inputs = DitInputs {
        hidden_states: Tensor::from_f32(&[1, s_img, 64], random_values(s_img * 64, 7, 1.0))
            .unwrap(),
        encoder_hidden_states: Tensor::from_f32(&[1, txt, 3584], random_values(txt * 3584, 8, 1.0))
            .unwrap(),
        encoder_hidden_states_mask: Some(Tensor::from_bool(&[1, txt], vec![true; txt]).unwrap()),
        timestep: Tensor::from_f32(&[1], vec![0.7]).unwrap(),
        additional_t_cond: None,
        img_shapes,
    };
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
        "dit_layer_cpu: 1 block, {} image + {txt} text tokens, {:.3} TFLOP (matmul+attention), {} threads",
        s_img,
        flops / 1e12,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "  setup {:.1} s, first run (compile + run) {:.2} s, median of {runs} {:.2} s ({:.1} GFLOP/s), runs {:?}",
        setup.as_secs_f64(),
        first_time.as_secs_f64(),
        med.as_secs_f64(),
        flops / med.as_secs_f64() / 1e9,
        times.iter().map(|t| format!("{:.2}", t.as_secs_f64())).collect::<Vec<_>>()
    );
}
