//! Device discovery and selection. On machines without CUDA, discovery must fail with a reason
//! (never panic); with a GPU it lists each device.

use qie_runtime::cuda::{list_devices, CudaDevice, DeviceSpec};

#[test]
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
            println!("no CUDA: {e}");
            assert!(!e.reason.is_empty());
            assert!(e.to_string().starts_with("CUDA unavailable: "));
            // Opening a device fails the same way, without panicking.
            let err = CudaDevice::new(0).unwrap_err().to_string();
            assert!(err.contains("CUDA unavailable"), "{err}");
        }
    }
}

#[test]
fn out_of_range_ordinal_is_an_error() {
    let Ok(devices) = list_devices() else { return };
    let err = CudaDevice::new(devices.len()).unwrap_err().to_string();
    assert!(err.contains("requested"), "{err}");
}

#[test]
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

#[test]
fn weight_pool_reserve_packs_without_waste() {
    use qie_runtime::cuda::WeightPool;
    let Ok(dev) = CudaDevice::new(0) else {
        println!("skipped: no CUDA device");
        return;
    };
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
