//! Shared by the CLI tests.

use std::path::PathBuf;

/// The `qie` binary under test: `$QIE_BIN` when set (a gpu-pack bundle runs the tests on a
/// machine without the build tree), else the one cargo built for these tests.
pub fn qie_bin() -> PathBuf {
    std::env::var_os("QIE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_qie")))
}
