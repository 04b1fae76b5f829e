//! LoRA gradients of one training step on the tiny golden DiTs (an edit with two reference
//! images, and the same with 2511's zero_cond_t) against diffusers 0.42.1 + peft 0.21
//! (tools/golden/make_lora_grad_fixtures.py): rel-L2 <= 1e-4 per tensor in f32, the loss to 1e-5,
//! and exact zeros where the loss does not depend on a tensor.

use qie_models::qwen_image::{DitInputs, DitOptions};
use qie_models::train::lora_grad::lora_file_gradients;
use qie_runtime::weights::WeightStore;
use qie_runtime::Tensor;
use qie_tests::{dit_img_shapes, fixture, rel_l2};

fn check(case: &str) {
    let dir = fixture(&format!("lora_grad/{case}"));
    let inputs = DitInputs::load(
        &fixture(&format!("dit/{case}/inputs.safetensors")),
        dit_img_shapes(case),
    )
    .unwrap();
    let targets = WeightStore::open(dir.join("target.safetensors")).unwrap();
    let info = targets.info("target").unwrap();
    let target = Tensor::from_f32(&info.shape, targets.load_f32("target").unwrap()).unwrap();
    let out = lora_file_gradients(
        &fixture(&format!("dit/{case}/transformer")),
        &DitOptions::default(),
        &dir.join("lora.safetensors"),
        &inputs,
        &target,
    )
    .unwrap();
    let expected = WeightStore::open(dir.join("expected.safetensors")).unwrap();
    let loss = expected.load_f32("loss").unwrap()[0];
    println!("{case}: loss {} vs torch {loss}", out.loss);
    assert!(
        ((out.loss - loss) / loss).abs() < 1e-5,
        "{case}: loss {} vs {loss}",
        out.loss
    );
    assert_eq!(
        out.grads.len(),
        expected.names().len() - 1,
        "{case}: one gradient per tensor"
    );
    let mut worst = (0.0, String::new());
    for (name, shape, values) in &out.grads {
        assert_eq!(&expected.info(name).unwrap().shape, shape, "{name}");
        let want = expected.load_f32(name).unwrap();
        if want.iter().all(|&v| v == 0.0) {
            assert!(
                values.iter().all(|&v| v == 0.0),
                "{case}: {name} should be zero"
            );
            continue;
        }
        let e = rel_l2(values, &want);
        assert!(!e.is_nan() && e <= 1e-4, "{case}: {name}: rel-L2 {e:.3e}");
        if e > worst.0 {
            worst = (e, name.clone());
        }
    }
    println!(
        "{case}: worst gradient rel-L2 {:.2e} ({})",
        worst.0, worst.1
    );
}

#[test]
fn lora_gradients_two_reference_images() {
    check("multi_ref");
}

#[test]
fn lora_gradients_zero_cond_t() {
    check("zero_cond_t");
}
