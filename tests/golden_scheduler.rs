//! FlowMatchEuler scheduler, pipeline sigma/mu arithmetic and CFG against diffusers 0.42.1
//! (tools/golden/make_scheduler_fixtures.py).

use qie_models::scheduler::{
    layered_default_sigmas, plain_cfg, qwen_default_sigmas, true_cfg, FlowMatchEulerScheduler,
    SchedulerConfig,
};
use qie_runtime::weights::WeightStore;
use qie_tests::fixture;
use serde_json::Value;

/// Largest element-wise |out - ref| / max(|ref|, 1e-3).
fn max_rel(out: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(out.len(), reference.len(), "length");
    out.iter()
        .zip(reference)
        .map(|(&o, &r)| {
            if !o.is_finite() {
                return f64::INFINITY;
            }
            (o as f64 - r as f64).abs() / (r as f64).abs().max(1e-3)
        })
        .fold(0.0, f64::max)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn schedules() -> Value {
    let text = std::fs::read_to_string(fixture("scheduler/schedules.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn schedules_match_diffusers() {
    let all = schedules();
    for case in all["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let config = SchedulerConfig::from_json(&case["config"].to_string())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let steps = case["steps"].as_u64().unwrap() as usize;
        let mu = case["image_seq_len"].as_u64().map(|n| {
            let mu = config.mu_for(n as usize);
            let want = case["mu"].as_f64().unwrap();
            assert!(
                (mu - want).abs() <= 1e-12 * want.abs(),
                "{name}: mu {mu} vs {want}"
            );
            mu
        });
        let sigmas = match case["sigmas_arg"].as_str() {
            Some("qwen") => Some(qwen_default_sigmas(steps)),
            Some("layered") => Some(layered_default_sigmas(steps)),
            Some("custom") => Some(floats(&case["custom_sigmas"])),
            _ => None,
        };
        let num_steps = if sigmas.is_some() { None } else { Some(steps) };
        let mut sched = FlowMatchEulerScheduler::new(config).unwrap();
        sched
            .set_timesteps(num_steps, sigmas, mu)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let es = max_rel(sched.sigmas(), &floats(&case["sigmas"]));
        let et = max_rel(sched.timesteps(), &floats(&case["timesteps"]));
        println!("{name}: sigmas {es:.1e}, timesteps {et:.1e}");
        assert!(
            es <= 1e-6 && et <= 1e-6,
            "{name}: sigmas {es:.2e} timesteps {et:.2e}"
        );
    }
}

fn qwen_10_steps(stochastic: bool) -> FlowMatchEulerScheduler {
    let mut config = SchedulerConfig::qwen_image();
    config.stochastic_sampling = stochastic;
    let mu = config.mu_for(64);
    let mut sched = FlowMatchEulerScheduler::new(config).unwrap();
    sched
        .set_timesteps(None, Some(qwen_default_sigmas(10)), Some(mu))
        .unwrap();
    sched
}

#[test]
fn euler_steps_match_diffusers() {
    let store = WeightStore::open(fixture("scheduler/step.safetensors")).unwrap();
    let load = |n: &str| store.load_f32(n).unwrap();
    let mut sched = qwen_10_steps(false);
    for idx in [0usize, 5, 9] {
        sched.set_step_index(idx);
        let out = sched
            .step(
                &load(&format!("step{idx}_model_output")),
                &load(&format!("step{idx}_sample")),
            )
            .unwrap();
        let err = max_rel(&out, &load(&format!("step{idx}_prev")));
        println!("step {idx}: max rel {err:.1e}");
        assert!(err <= 1e-6, "step {idx}: {err:.2e}");
        assert_eq!(sched.step_index(), idx + 1);
    }
    assert!(sched.step(&[1.0], &[1.0]).is_err(), "stepping past the end");
}

#[test]
fn stochastic_step_matches_diffusers_given_its_noise() {
    let store = WeightStore::open(fixture("scheduler/step.safetensors")).unwrap();
    let load = |n: &str| store.load_f32(n).unwrap();
    let mut sched = qwen_10_steps(true);
    sched.set_step_index(3);
    let mut sample = load("stoch3_sample");
    assert!(sched.step(&load("stoch3_model_output"), &sample).is_err());
    sched
        .step_with_noise(
            &load("stoch3_model_output"),
            &mut sample,
            &load("stoch3_noise"),
        )
        .unwrap();
    let err = max_rel(&sample, &load("stoch3_prev"));
    println!("stochastic step: max rel {err:.1e}");
    assert!(err <= 1e-6, "{err:.2e}");
}

#[test]
fn cfg_matches_the_qwen_pipelines() {
    let store = WeightStore::open(fixture("scheduler/cfg.safetensors")).unwrap();
    let load = |n: &str| store.load_f32(n).unwrap();
    let (cond, uncond) = (load("cond"), load("uncond"));
    let rescaled = true_cfg(&cond, &uncond, 4.0, true, 64).unwrap();
    let plain = plain_cfg(&cond, &uncond, 4.0, 64).unwrap();
    let (e1, e2) = (
        max_rel(&rescaled, &load("true_cfg")),
        max_rel(&plain, &load("plain_cfg")),
    );
    println!("true cfg: {e1:.1e}, plain cfg: {e2:.1e}");
    assert!(e1 <= 1e-6 && e2 <= 1e-6, "{e1:.2e} {e2:.2e}");
}

#[test]
fn bad_configs_and_arguments_error_clearly() {
    let bad = SchedulerConfig::from_json(r#"{"use_karras_sigmas": true}"#).unwrap_err();
    assert!(bad.message.contains("use_karras_sigmas"), "{bad}");
    let bad = SchedulerConfig::from_json(r#"{"time_shift_type": "cosine"}"#).unwrap_err();
    assert!(bad.message.contains("time_shift_type"), "{bad}");
    assert!(SchedulerConfig::from_json(r#"{"shift": "x"}"#).is_err());
    let missing = FlowMatchEulerScheduler::load(&fixture("scheduler/nope")).unwrap_err();
    assert!(
        missing.message.contains("scheduler_config.json"),
        "{missing}"
    );

    let mut sched = FlowMatchEulerScheduler::new(SchedulerConfig::qwen_image()).unwrap();
    let no_mu = sched.set_timesteps(None, Some(qwen_default_sigmas(4)), None);
    assert!(no_mu.unwrap_err().message.contains("mu"));
    let one_step = sched.set_timesteps(None, Some(qwen_default_sigmas(1)), Some(0.7));
    assert!(one_step.unwrap_err().message.contains("shift_terminal"));
    let wrong_len = sched.set_timesteps(Some(3), Some(qwen_default_sigmas(4)), Some(0.7));
    assert!(wrong_len.is_err());
    assert!(sched.step(&[1.0, 2.0], &[1.0]).is_err());
}
