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
