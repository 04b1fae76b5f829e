//! What a CUDA test needs from the machine it runs on, and what happens when it is missing.
//!
//! A test that needs a GPU (or only NVRTC) runs where one is found. Where none is, it is reported
//! *ignored*, with the reason, never as a pass; with `QIE_REQUIRE_CUDA=1` (set by the GPU runner)
//! it fails instead, so a GPU machine that lost its driver cannot turn the GPU suite green.
//! The test binaries' harness (`runtime/tests/gpu_harness`) asks [`gate`] before every test.

use super::libs::{self, Lib};
use super::CudaDevice;
use std::sync::{Arc, OnceLock};

/// What a test needs beyond the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestNeed {
    /// A CUDA device: the driver and a GPU (the backend also loads NVRTC and cuBLASLt, and
    /// fails the test if they are missing there).
    Device,
    /// NVRTC only: compiling kernels, no GPU.
    Nvrtc,
}

/// What the harness does with a test that has a [`TestNeed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TestGate {
    Run,
    /// Report the test ignored, with the reason.
    Ignore(String),
    /// Fail the test with the reason (`QIE_REQUIRE_CUDA=1`).
    Fail(String),
}

/// `QIE_REQUIRE_CUDA=1`: a missing device or NVRTC fails the tests that need it.
pub fn cuda_required() -> bool {
    std::env::var("QIE_REQUIRE_CUDA").is_ok_and(|v| v == "1")
}

/// The ordinal CUDA tests use: `QIE_CUDA_TEST_DEVICE=N`, default 0.
pub fn test_ordinal() -> usize {
    std::env::var("QIE_CUDA_TEST_DEVICE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Why tests that need `need` cannot run on this machine; `None` when they can. Probed once
/// per process.
pub fn missing(need: TestNeed) -> Option<String> {
    static DEVICE: OnceLock<Option<String>> = OnceLock::new();
    static NVRTC: OnceLock<Option<String>> = OnceLock::new();
    match need {
        TestNeed::Device => DEVICE
            .get_or_init(|| CudaDevice::new(test_ordinal()).err().map(|e| e.to_string()))
            .clone(),
        TestNeed::Nvrtc => NVRTC
            .get_or_init(|| libs::require(Lib::Nvrtc).err().map(|e| e.to_string()))
            .clone(),
    }
}

/// The decision for a test that needs `need`, on this machine and under this environment.
pub fn gate(need: TestNeed) -> TestGate {
    decide(need, missing(need), cuda_required())
}

/// [`gate`] without the probing: `missing` is why the need is not met here.
pub fn decide(need: TestNeed, missing: Option<String>, required: bool) -> TestGate {
    let what = match need {
        TestNeed::Device => "a CUDA device",
        TestNeed::Nvrtc => "NVRTC",
    };
    match missing {
        None => TestGate::Run,
        Some(why) if required => TestGate::Fail(format!(
            "QIE_REQUIRE_CUDA=1 but this test needs {what}: {why}"
        )),
        Some(why) => TestGate::Ignore(format!("needs {what}: {why}")),
    }
}

/// Opens the test device (`cuda:0`, or `QIE_CUDA_TEST_DEVICE`). For tests gated on
/// [`TestNeed::Device`]: panics with the reason when there is none.
pub fn test_device() -> Arc<CudaDevice> {
    CudaDevice::new(test_ordinal()).unwrap_or_else(|e| panic!("this test needs a CUDA device: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_need_is_ignored_or_fails_when_required() {
        let why = || Some("no libcuda.so.1".to_string());
        assert_eq!(decide(TestNeed::Device, None, true), TestGate::Run);
        assert_eq!(decide(TestNeed::Nvrtc, None, false), TestGate::Run);
        match decide(TestNeed::Device, why(), false) {
            TestGate::Ignore(m) => assert!(m.contains("CUDA device") && m.contains("libcuda")),
            other => panic!("{other:?}"),
        }
        match decide(TestNeed::Nvrtc, why(), true) {
            TestGate::Fail(m) => assert!(m.contains("QIE_REQUIRE_CUDA=1") && m.contains("NVRTC")),
            other => panic!("{other:?}"),
        }
    }
}
