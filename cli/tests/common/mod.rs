//! Shared by the CLI tests.

use std::path::PathBuf;

/// The `qie` binary under test: `$QIE_BIN` when set (a gpu-pack bundle runs the tests on a
/// machine without the build tree), else the one cargo built for these tests.
pub fn qie_bin() -> PathBuf {
    std::env::var_os("QIE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_qie")))
}

/// A file of the tiny Plus pipeline fixture.
#[allow(dead_code)] // not every test crate uses every helper
pub fn plus_fixture(rel: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/edit/plus")
        .join(rel)
}

/// Runs `qie` on the CPU without network access: (exit code, stderr). A panic fails the test.
#[allow(dead_code)]
pub fn run_qie(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(qie_bin())
        .args(args)
        .env_remove("QIE_DEVICE")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run qie");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "qie panicked: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}
