//! NVRTC compile + on-disk cache (needs NVRTC, no GPU), and a launch of the compiled kernel
//! (needs a device). Each is reported ignored, with the reason, where its need is missing.

mod cuda_common;
mod gpu_harness;

use cuda_common::*;
use half::bf16;
use qie_runtime::cuda::nvrtc::{Arg, Module};
use qie_runtime::cuda::{sources, test_device, Arena, KernelCache};
use std::process::ExitCode;

fn main() -> ExitCode {
    gpu_harness::run(gpu_tests![
        Nvrtc => nvrtc_compiles_once_then_reads_the_cache;
        Cuda => nvrtc_kernel_runs_on_the_device;
    ])
}

const SAXPY: &str = r#"
extern "C" __global__ void scale_add_bf16(const unsigned short* x, unsigned short* y, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float xf = __uint_as_float((unsigned)x[i] << 16);
        float yf = __uint_as_float((unsigned)y[i] << 16);
        float r = a * xf + yf;
        unsigned short out;
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(out) : "f"(r));
        y[i] = out;
    }
}
"#;

/// The device's arch and driver version, or sm_90 / 0 when compiling without a device.
fn target() -> (String, i32) {
    match qie_runtime::cuda::CudaDevice::new(0) {
        Ok(dev) => (dev.arch(), dev.driver_version()),
        Err(e) => {
            println!("no CUDA device ({e}); compiling for sm_90 only");
            ("sm_90".to_string(), 0)
        }
    }
}

fn nvrtc_compiles_once_then_reads_the_cache() {
    let (arch, driver) = target();
    let dir = tempfile::tempdir().unwrap();
    let cache = KernelCache::at(dir.path().join("kernels"));

    let first = cache
        .compile(SAXPY, "saxpy.cu", &arch, driver, &[])
        .unwrap();
    assert!(!first.from_cache, "empty cache: must compile");
    assert!(
        first.ptx.contains(".entry scale_add_bf16"),
        "PTX lacks the kernel"
    );
    assert!(
        first.ptx_path.exists(),
        "cache file not written: {}",
        first.ptx_path.display()
    );
    let cubin_path = first.ptx_path.with_extension("cubin");
    assert!(cubin_path.exists(), "cubin not cached for a real arch");
    let written = std::fs::metadata(&first.ptx_path)
        .unwrap()
        .modified()
        .unwrap();

    let second = cache
        .compile(SAXPY, "saxpy.cu", &arch, driver, &[])
        .unwrap();
    assert!(second.from_cache, "second compile must be a cache hit");
    assert_eq!(second.key, first.key);
    assert_eq!(second.ptx, first.ptx);
    assert_eq!(second.cubin, first.cubin);
    assert_eq!(
        std::fs::metadata(&first.ptx_path)
            .unwrap()
            .modified()
            .unwrap(),
        written
    );

    // Any change of source, options or driver is a new key.
    let edited = cache
        .compile(&format!("{SAXPY}\n// edit"), "saxpy.cu", &arch, driver, &[])
        .unwrap();
    assert!(!edited.from_cache);
    assert_ne!(edited.key, first.key);
    let other_driver = cache
        .compile(SAXPY, "saxpy.cu", &arch, driver + 10, &[])
        .unwrap();
    assert_ne!(other_driver.key, first.key);
    let files = std::fs::read_dir(cache.dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .count();
    assert_eq!(
        files, 6,
        "3 keys x (.ptx + .cubin), no temporary files left"
    );

    // The flash-attention source compiles without spilling (ptxas report in the log).
    let fa = cache
        .compile(
            sources::FLASH_ATTENTION,
            "flash_attention.cu",
            &arch,
            driver,
            &["--ptxas-options=-v".into()],
        )
        .unwrap();
    println!("{}", fa.log);
    assert!(fa.ptx.contains("flash_attn_fwd_d128") && fa.ptx.contains("flash_attn_fwd_d64"));
    assert!(
        fa.ptx.contains("mma.sync.aligned.m16n8k16"),
        "tensor-core mma expected in PTX"
    );
}

fn nvrtc_kernel_runs_on_the_device() {
    let dev = test_device();
    let dir = tempfile::tempdir().unwrap();
    let cache = KernelCache::at(dir.path().join("kernels"));
    let (arch, driver) = (dev.arch(), dev.driver_version());
    cache
        .compile(SAXPY, "saxpy.cu", &arch, driver, &[])
        .unwrap();
    let second = cache
        .compile(SAXPY, "saxpy.cu", &arch, driver, &[])
        .unwrap();
    let module = Module::load(&dev, &second).unwrap();
    assert!(module.from_cache);
    let kernel = module.function("scale_add_bf16").unwrap();
    let n = 1000usize;
    let mut rng = Rng::new(5);
    let (x, xf) = random_bf16(&mut rng, n, 1.0);
    let (y, yf) = random_bf16(&mut rng, n, 1.0);
    let arena = Arena::new(&dev, 4 * n).unwrap();
    let (px, py) = (arena.base(), arena.at(2 * n, 2 * n).unwrap());
    dev.htod(px, &x).unwrap();
    dev.htod(py, &y).unwrap();
    let args = [
        Arg::Ptr(px),
        Arg::Ptr(py),
        Arg::F32(0.5),
        Arg::I32(n as i32),
    ];
    kernel
        .launch((n.div_ceil(256) as u32, 1, 1), (256, 1, 1), 0, &args)
        .unwrap();
    let mut out = vec![bf16::ZERO; n];
    dev.dtoh(&mut out, py).unwrap();
    let reference: Vec<f64> = xf.iter().zip(&yf).map(|(a, b)| 0.5 * a + b).collect();
    let err = rel_l2(&to_f64(&out), &reference);
    assert!(err < 5e-3, "rel-L2 {err}");
}
