//! Device discovery and selection. On machines without CUDA, discovery must fail with a reason
//! (never panic); with a GPU it lists each device. Also checks the GPU test harness itself: a
//! GPU test is reported ignored without a GPU and fails under `QIE_REQUIRE_CUDA=1`.

mod gpu_harness;

use qie_runtime::cuda::test_device::{cuda_required, missing, TestNeed};
use qie_runtime::cuda::{list_devices, test_device, CudaDevice, DeviceSpec};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    gpu_harness::run(gpu_tests![
        Cpu => list_devices_lists_or_explains, device_spec_parsing,
            a_missing_gpu_is_ignored_or_fails_when_required;
        Cuda => out_of_range_ordinal_is_an_error, weight_pool_reserve_packs_without_waste;
    ])
}

/// Without a device this checks the error path; `QIE_REQUIRE_CUDA=1` makes that a failure.
fn list_devices_lists_or_explains() {
    match list_devices() {
        Ok(devices) => {
            assert!(!devices.is_empty());
            for d in &devices {
                println!("{d}");
                assert!(!d.name.is_empty());
                assert!(d.total_memory > 0);
                assert!(d.compute_capability.0 >= 5);
            }
        }
        Err(e) => {
            assert!(!cuda_required(), "QIE_REQUIRE_CUDA=1 but {e}");
            println!("no CUDA: {e}");
            assert!(!e.reason.is_empty());
            assert!(e.to_string().starts_with("CUDA unavailable: "));
            // Opening a device fails the same way, without panicking.
            let err = CudaDevice::new(0).unwrap_err().to_string();
            assert!(err.contains("CUDA unavailable"), "{err}");
        }
    }
}

fn out_of_range_ordinal_is_an_error() {
    let devices = list_devices().unwrap();
    let err = CudaDevice::new(devices.len()).unwrap_err().to_string();
    assert!(err.contains("requested"), "{err}");
}

fn device_spec_parsing() {
    assert_eq!(DeviceSpec::parse("cpu").unwrap(), DeviceSpec::Cpu);
    assert_eq!(DeviceSpec::parse("cuda").unwrap(), DeviceSpec::Cuda(0));
    assert_eq!(DeviceSpec::parse("CUDA:3").unwrap(), DeviceSpec::Cuda(3));
    assert!(DeviceSpec::parse("cuda:x").is_err());
    assert!(DeviceSpec::parse("tpu").is_err());
    assert_eq!(
        DeviceSpec::from_arg_or_env(Some("cuda:1")).unwrap(),
        DeviceSpec::Cuda(1)
    );
    assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
}

fn weight_pool_reserve_packs_without_waste() {
    use qie_runtime::cuda::WeightPool;
    let dev = test_device();
    let before = dev.allocations().current();
    let mut pool = WeightPool::new(&dev, 64 << 20);
    // Three 40 MiB tensors: one 64 MiB chunk each without a reservation (72 MiB wasted).
    let sizes = [40usize << 20; 3];
    pool.reserve(sizes.iter().sum()).unwrap();
    let ptrs: Vec<_> = sizes.iter().map(|&b| pool.alloc(b).unwrap()).collect();
    assert_eq!(dev.allocations().current() - before, 120 << 20);
    assert_eq!(ptrs[1].0 - ptrs[0].0, 40 << 20);
    assert_eq!(ptrs[2].0 - ptrs[1].0, 40 << 20);
    // Small allocations after the reservation get a normal chunk.
    pool.alloc(1 << 20).unwrap();
    assert_eq!(
        dev.allocations().current() - before,
        (120 << 20) + (64 << 20)
    );
    assert!(dev.allocations().peak() >= dev.allocations().current());
    drop(pool);
    assert_eq!(dev.allocations().current(), before);
}

/// Runs this binary's `out_of_range_ordinal_is_an_error` (a GPU test) alone, with and without
/// `QIE_REQUIRE_CUDA=1`: without a device it is reported ignored, or fails when required; with
/// one it passes either way.
fn a_missing_gpu_is_ignored_or_fails_when_required() {
    let exe = std::env::current_exe().unwrap();
    let run = |required: &str| {
        let out = Command::new(&exe)
            .args([
                "--exact",
                "out_of_range_ordinal_is_an_error",
                "--test-threads=1",
            ])
            .env("QIE_REQUIRE_CUDA", required)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (skip_ok, skip_text) = run("0");
    let (require_ok, require_text) = run("1");
    match missing(TestNeed::Device) {
        Some(why) => {
            assert!(skip_ok, "{skip_text}");
            assert!(
                skip_text.contains("1 ignored") && skip_text.contains("0 passed"),
                "{skip_text}"
            );
            assert!(
                skip_text.contains(&why),
                "the reason is printed: {skip_text}"
            );
            assert!(!require_ok, "QIE_REQUIRE_CUDA=1 must fail: {require_text}");
            assert!(require_text.contains("1 failed"), "{require_text}");
            assert!(
                require_text.contains("QIE_REQUIRE_CUDA=1 but"),
                "{require_text}"
            );
        }
        None => {
            for (ok, text) in [(skip_ok, skip_text), (require_ok, require_text)] {
                assert!(ok && text.contains("1 passed"), "{text}");
            }
        }
    }
}
