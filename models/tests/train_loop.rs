//! The trainer on the tiny DiT fixture, on the CPU: training lowers a fixed evaluation loss, a
//! batch's loss is the mean of its samples' losses, a resumed run repeats the uninterrupted one
//! step for step, and non-finite values stop the run naming the tensor.

use qie_models::qwen_image::{DitInputs, DitOptions, QwenImageDit};
use qie_models::train::sample::{noise_batch, NoisedBatch};
use qie_models::train::{
    AdamWConfig, InMemoryData, LoopSettings, LrSchedule, TimestepSampler, TimestepScheme,
    TrainSample, Trainer,
};
use qie_runtime::Tensor;
use std::path::PathBuf;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/dit/multi_ref/transformer")
}

fn load_dit() -> QwenImageDit {
    QwenImageDit::load(&fixture(), &DitOptions::default()).unwrap()
}

/// Deterministic values in [-1, 1).
fn values(seed: u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ seed.wrapping_mul(0xD6E8_FEB8_6659_FD93);
            let x = (x ^ (x >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A row with the fixture's grids: target 1x4x6, references 1x6x4 and 1x2x2; `txt` tokens.
fn row(seed: u64, txt: usize) -> TrainSample {
    let t = |shape: &[usize], s: u64| {
        Tensor::from_f32(shape, values(s, shape.iter().product())).unwrap()
    };
    TrainSample {
        target: t(&[1, 24, 16], seed),
        target_grid: [1, 4, 6],
        references: Some(t(&[1, 28, 16], seed + 1000)),
        reference_grids: vec![[1, 6, 4], [1, 2, 2]],
        prompt_embeds: t(&[1, txt, 24], seed + 2000),
        prompt_mask: vec![true; txt],
        source: format!("row{seed}"),
    }
}

fn settings(steps: u64) -> LoopSettings {
    LoopSettings {
        steps,
        batch_size: 1,
        grad_accum: 1,
        lr: 3e-3,
        schedule: LrSchedule::Constant,
        optimizer: AdamWConfig::default(),
        max_grad_norm: Some(1.0),
        seed: 11,
        timesteps: TimestepScheme::default(),
    }
}

/// A small full fine-tune: the output projection and the first block's image attention.
fn trainable() -> Vec<String> {
    [
        "proj_out.weight",
        "proj_out.bias",
        "transformer_blocks.0.attn.to_q.weight",
        "transformer_blocks.0.attn.to_v.weight",
        "transformer_blocks.1.img_mlp.net.2.weight",
    ]
    .map(String::from)
    .to_vec()
}

/// The loss on fixed noise draws (seed 999) of every row, averaged.
fn eval_loss(dit: &QwenImageDit, rows: &[TrainSample]) -> f64 {
    let sampler = TimestepSampler::new(&TimestepScheme::Uniform).unwrap();
    let mut total = 0.0;
    for (i, r) in rows.iter().enumerate() {
        let b = noise_batch(std::slice::from_ref(r), &sampler, 999, i as u64, 0).unwrap();
        total += dit
            .loss_and_grads(
                &b.inputs,
                &b.target,
                &b.weight,
                &["proj_out.bias".to_string()],
            )
            .unwrap()
            .loss as f64;
    }
    total / rows.len() as f64
}

#[test]
fn training_lowers_the_loss() {
    let rows: Vec<TrainSample> = (0..3).map(|i| row(i, 7)).collect();
    let data = InMemoryData(rows.clone());
    let mut dit = load_dit();
    let before = eval_loss(&dit, &rows);
    let mut trainer = Trainer::new(&dit, trainable(), settings(40)).unwrap();
    for _ in 0..40 {
        let r = trainer.train_step(&mut dit, &data).unwrap();
        assert!(r.loss.is_finite() && r.grad_norm > 0.0, "{r:?}");
    }
    let after = eval_loss(&dit, &rows);
    eprintln!("evaluation loss {before:.4} -> {after:.4}");
    assert!(
        after < 0.8 * before,
        "40 steps should lower the evaluation loss by 20%: {before:.4} -> {after:.4}"
    );
}

/// Sample `j` of a noised batch as a batch of one, its text cut to `txt` tokens (no padding).
fn sample_of(batch: &NoisedBatch, j: usize, txt: usize) -> NoisedBatch {
    let part = |t: &Tensor, len: usize, keep: usize| {
        let shape = t.shape();
        let row: usize = shape[1..].iter().product();
        let v = t.to_f32_vec()[j * row..j * row + len].to_vec();
        let mut s = shape.to_vec();
        s[0] = 1;
        if keep > 0 {
            s[1] = keep;
        }
        Tensor::from_f32(&s, v).unwrap()
    };
    let i = &batch.inputs;
    let hs_row: usize = i.hidden_states.shape()[1..].iter().product();
    let dim = i.encoder_hidden_states.shape()[2];
    let tg_row: usize = batch.target.shape()[1..].iter().product();
    NoisedBatch {
        inputs: DitInputs {
            hidden_states: part(&i.hidden_states, hs_row, 0),
            encoder_hidden_states: part(&i.encoder_hidden_states, txt * dim, txt),
            encoder_hidden_states_mask: None,
            timestep: part(&i.timestep, 1, 0),
            additional_t_cond: None,
            img_shapes: i.img_shapes.clone(),
        },
        target: part(&batch.target, tg_row, 0),
        weight: part(&batch.weight, 1, 0),
        draws: vec![batch.draws[j]],
    }
}

#[test]
fn a_batch_loss_is_the_mean_of_its_samples() {
    let dit = load_dit();
    let sampler = TimestepSampler::new(&TimestepScheme::default()).unwrap();
    // Different prompt lengths: the batch pads the shorter prompt and masks it.
    let batch = noise_batch(&[row(1, 7), row(2, 5)], &sampler, 5, 0, 0).unwrap();
    assert!(batch.inputs.encoder_hidden_states_mask.is_some());
    assert_ne!(batch.draws[0], batch.draws[1]);
    let names = ["proj_out.weight".to_string()];
    let run = |b: &NoisedBatch| {
        dit.loss_and_grads(&b.inputs, &b.target, &b.weight, &names)
            .unwrap()
    };
    let both = run(&batch);
    let (a, b) = (run(&sample_of(&batch, 0, 7)), run(&sample_of(&batch, 1, 5)));
    let mean = (a.loss as f64 + b.loss as f64) / 2.0;
    assert!(
        ((both.loss as f64) - mean).abs() <= 1e-5 * mean.abs(),
        "batch loss {} vs mean of samples {mean}",
        both.loss
    );
    // Gradients average the same way.
    let g2 = both.grads[&names[0]].to_f32_vec();
    let (ga, gb) = (
        a.grads[&names[0]].to_f32_vec(),
        b.grads[&names[0]].to_f32_vec(),
    );
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for i in 0..g2.len() {
        let m = (ga[i] as f64 + gb[i] as f64) / 2.0;
        diff += (g2[i] as f64 - m).powi(2);
        norm += m * m;
    }
    assert!(
        (diff / norm).sqrt() < 1e-5,
        "gradient rel-L2 {}",
        (diff / norm).sqrt()
    );
}

#[test]
fn a_resumed_run_repeats_the_uninterrupted_run() {
    let data = InMemoryData((0..3).map(|i| row(i, 6)).collect());
    let run = |steps: u64, dit: &mut QwenImageDit, trainer: &mut Trainer| -> Vec<f64> {
        (0..steps)
            .map(|_| trainer.train_step(dit, &data).unwrap().loss)
            .collect()
    };
    let mut dit = load_dit();
    let mut straight = Trainer::new(&dit, trainable(), settings(6)).unwrap();
    let expected = run(6, &mut dit, &mut straight);

    let out = tempfile::tempdir().unwrap();
    let mut dit = load_dit();
    let mut first = Trainer::new(&dit, trainable(), settings(6)).unwrap();
    let mut losses = run(3, &mut dit, &mut first);
    let ckpt = first.save_checkpoint(out.path()).unwrap();
    drop((dit, first));

    let mut dit = load_dit();
    let mut resumed = Trainer::new(&dit, trainable(), settings(6)).unwrap();
    resumed.resume(&mut dit, &ckpt).unwrap();
    assert_eq!(resumed.step(), 3);
    losses.extend(run(3, &mut dit, &mut resumed));
    assert_eq!(
        losses, expected,
        "resumed losses must equal the uninterrupted run's"
    );

    // Other settings are refused.
    let mut other = settings(6);
    other.lr = 1e-3;
    let mut dit = load_dit();
    let mut t = Trainer::new(&dit, trainable(), other).unwrap();
    let err = t.resume(&mut dit, &ckpt).unwrap_err().to_string();
    assert!(err.contains("other settings"), "{err}");
}

#[test]
fn a_non_finite_row_stops_the_run_naming_it() {
    let mut bad = row(4, 6);
    let mut v = bad.target.to_f32_vec();
    v[3] = f32::NAN;
    bad.target = Tensor::from_f32(&[1, 24, 16], v).unwrap();
    let data = InMemoryData(vec![bad]);
    let mut dit = load_dit();
    let mut trainer = Trainer::new(&dit, trainable(), settings(1)).unwrap();
    let err = trainer.train_step(&mut dit, &data).unwrap_err().to_string();
    assert!(err.contains("step 1") && err.contains("row4"), "{err}");
}

#[test]
fn unknown_trainable_weights_are_refused() {
    let dit = load_dit();
    let err = Trainer::new(&dit, vec!["nope.weight".into()], settings(1))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nope.weight"), "{err}");
}

#[test]
fn gradient_checkpointing_gives_the_same_gradients() {
    let rows: Vec<TrainSample> = (0..2).map(|i| row(i, 5)).collect();
    let sampler = TimestepSampler::new(&TimestepScheme::Uniform).unwrap();
    let batch = noise_batch(&rows[..1], &sampler, 5, 0, 0).unwrap();
    let mut dit = load_dit();
    let plain = dit
        .loss_and_grads(&batch.inputs, &batch.target, &batch.weight, &trainable())
        .unwrap();
    // The DiT's nodes carry `transformer_blocks.N` origins, so the pass has work to do.
    let graph =
        qie_ir::passes::optimize(&dit.lower_training(&batch.inputs, 24, &trainable()).unwrap());
    let options = qie_ir::passes::RecomputeOptions {
        loss: "loss".into(),
        segment_prefix: qie_models::qwen_image::CHECKPOINT_SEGMENTS.into(),
    };
    let recomputed = qie_ir::passes::recompute(&graph, &options);
    assert!(
        recomputed.len() > graph.len() + 50,
        "{} -> {} nodes",
        graph.len(),
        recomputed.len()
    );
    dit.set_gradient_checkpointing(true);
    let checkpointed = dit
        .loss_and_grads(&batch.inputs, &batch.target, &batch.weight, &trainable())
        .unwrap();
    assert!((plain.loss - checkpointed.loss).abs() <= 1e-6 * plain.loss.abs().max(1.0));
    for name in trainable() {
        let (a, b) = (
            plain.grads[&name].to_f32_vec(),
            checkpointed.grads[&name].to_f32_vec(),
        );
        let err: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum();
        let norm: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
        assert!(
            err.sqrt() <= 1e-6 * norm.sqrt().max(1e-30),
            "{name}: rel-L2 {}",
            err.sqrt() / norm.sqrt()
        );
    }
}
