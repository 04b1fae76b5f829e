//! The harness of the test binaries that hold GPU tests (`harness = false` in Cargo.toml).
//!
//! A test that needs a CUDA device (or only NVRTC) runs where one is found; where none is, it is
//! reported `ignored (needs a CUDA device: <why>)`, never `ok`; under `QIE_REQUIRE_CUDA=1` (the GPU
//! runner sets it) it fails instead (`qie_runtime::cuda::test_device` decides). Filters, `--list`,
//! `--test-threads`, `--ignored` / `--include-ignored` behave as with the standard harness;
//! output is not captured.
//!
//! One file for every crate with GPU tests: `tests/lib.rs` (qie-tests) mounts it with `#[path]`,
//! since the runtime's tests cannot depend on that crate. Mount it as `gpu_harness` at the crate
//! root: `gpu_tests!` names it through `$crate`.
#![allow(dead_code)]

use libtest_mimic::{Arguments, Completion, Trial};
use qie_runtime::cuda::test_device::{gate, TestGate, TestNeed};
use std::process::ExitCode;

/// What a test needs to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    Cpu,
    Cuda,
    Nvrtc,
}

/// One test: a function that panics on failure, like a `#[test]` body.
pub struct Test {
    name: String,
    needs: Needs,
    timing: bool,
    body: Box<dyn FnOnce() + Send>,
}

impl Test {
    pub fn new(
        name: impl Into<String>,
        needs: Needs,
        body: impl FnOnce() + Send + 'static,
    ) -> Test {
        Test {
            name: name.into(),
            needs,
            timing: false,
            body: Box::new(body),
        }
    }

    /// A timing run, not a check: ignored unless asked for (`--ignored`), like `#[ignore]`.
    pub fn timing(mut self) -> Test {
        self.timing = true;
        self
    }

    fn trial(self) -> Trial {
        let Test {
            name,
            needs,
            timing,
            body,
        } = self;
        let need = match needs {
            Needs::Cpu => None,
            Needs::Cuda => Some(TestNeed::Device),
            Needs::Nvrtc => Some(TestNeed::Nvrtc),
        };
        Trial::ignorable_test(name, move || match need.map(gate) {
            None | Some(TestGate::Run) => {
                body();
                Ok(Completion::Completed)
            }
            Some(TestGate::Ignore(why)) => Ok(Completion::ignored_with(why)),
            Some(TestGate::Fail(why)) => Err(why.into()),
        })
        .with_ignored_flag(timing)
    }
}

/// Runs `tests` under the command line's libtest arguments; the binary's exit code.
pub fn run(tests: impl IntoIterator<Item = Test>) -> ExitCode {
    let args = Arguments::from_args();
    let trials = tests.into_iter().map(Test::trial).collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// `gpu_tests![Cuda => f, g; Cpu => h]`: one [`Test`] per function, named after it.
#[macro_export]
macro_rules! gpu_tests {
    ($($needs:ident => $($f:ident),+ $(,)?);+ $(;)?) => {
        vec![$($(
            $crate::gpu_harness::Test::new(stringify!($f), $crate::gpu_harness::Needs::$needs, $f),
        )+)+]
    };
}
