//! Finding the CUDA shared libraries at run time.
//!
//! cudarc is built with `dynamic-loading`: nothing CUDA is linked, and each library is opened
//! with `dlopen` by its plain name (`libcuda.so.1`, `libnvrtc.so.13`, `libcublasLt.so.13`, ...)
//! the first time one of its functions is called. A missing library would then panic inside
//! cudarc, so every entry point of this backend calls [`require`] first, which
//!
//! 1. checks that the library can be opened by name (driver-installed or on the loader path);
//! 2. otherwise looks for it in the usual toolkit places (`$QIE_CUDA_LIB_DIR`, `$CUDA_HOME/lib64`,
//!    `$CUDA_PATH/lib64`, `/usr/local/cuda/lib64`, `/usr/local/cuda-*/lib64`, the `nvidia/cu13/lib`
//!    folder of pip's CUDA wheels, ...) and, when found, opens it there by full path and keeps
//!    it open. The dynamic loader matches a later `dlopen("libnvrtc.so.13")` against the soname of
//!    an already loaded library, so cudarc then finds it without `LD_LIBRARY_PATH`;
//! 3. otherwise returns a [`CudaUnavailable`] naming what was searched.
//!
//! NVRTC itself `dlopen`s `libnvrtc-builtins.so.<major>.<minor>` by name, so that one is
//! preloaded from the same folder as well.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::CudaUnavailable;

/// CUDA major version the bindings were generated for (cudarc feature `cuda-13000`).
pub const CUDA_MAJOR: u32 = 13;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lib {
    /// `libcuda.so.1`, installed with the NVIDIA driver.
    Driver,
    /// `libnvrtc.so.13`, from the CUDA toolkit or the `nvidia-cuda-nvrtc` wheel.
    Nvrtc,
    /// `libcublasLt.so.13`, from the CUDA toolkit or the `nvidia-cublas` wheel.
    CublasLt,
}

impl Lib {
    fn stem(self) -> &'static str {
        match self {
            Lib::Driver => "libcuda.so",
            Lib::Nvrtc => "libnvrtc.so",
            Lib::CublasLt => "libcublasLt.so",
        }
    }

    /// (what is missing, where it comes from).
    fn what(self) -> (&'static str, &'static str) {
        match self {
            Lib::Driver => (
                "the NVIDIA driver library libcuda.so.1",
                "no NVIDIA driver is installed, or it is not visible to this process",
            ),
            Lib::Nvrtc => (
                "NVRTC (libnvrtc.so.13)",
                "it comes with the CUDA 13 toolkit or the pip wheel nvidia-cuda-nvrtc",
            ),
            Lib::CublasLt => (
                "cuBLASLt (libcublasLt.so.13)",
                "it comes with the CUDA 13 toolkit or the pip wheel nvidia-cublas",
            ),
        }
    }

    /// Whether cudarc's own by-name lookup succeeds.
    fn present_by_name(self) -> bool {
        // SAFETY: these only dlopen/dlclose candidate names; no symbol is called.
        unsafe {
            match self {
                Lib::Driver => cudarc::driver::sys::is_culib_present(),
                Lib::Nvrtc => cudarc::nvrtc::sys::is_culib_present(),
                Lib::CublasLt => cudarc::cublaslt::sys::is_culib_present(),
            }
        }
    }
}

/// Makes sure `lib` can be loaded by cudarc; see the module docs. Cached per library.
pub fn require(lib: Lib) -> Result<(), CudaUnavailable> {
    type Outcomes = Vec<(Lib, Result<(), CudaUnavailable>)>;
    static DONE: OnceLock<Mutex<Outcomes>> = OnceLock::new();
    let done = DONE.get_or_init(|| Mutex::new(Vec::new()));
    let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, r)) = done.iter().find(|(l, _)| *l == lib) {
        return r.clone();
    }
    let r = locate(lib);
    done.push((lib, r.clone()));
    r
}

fn locate(lib: Lib) -> Result<(), CudaUnavailable> {
    if lib.present_by_name() {
        return Ok(());
    }
    let dirs = search_dirs(lib);
    for dir in &dirs {
        if let Some(path) = find_versioned(dir, lib.stem()) {
            if lib == Lib::Nvrtc {
                if let Some(builtins) = find_versioned(dir, "libnvrtc-builtins.so") {
                    keep_open(&builtins);
                }
            }
            if keep_open(&path) && lib.present_by_name() {
                return Ok(());
            }
        }
    }
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let (what, hint) = lib.what();
    let places = if searched.is_empty() {
        String::new()
    } else {
        format!(" nor in {}", searched.join(", "))
    };
    Err(CudaUnavailable::new(format!(
        "{what} was not found on the loader path{places}: {hint} (QIE_CUDA_LIB_DIR or \
         LD_LIBRARY_PATH can name its folder)"
    )))
}

/// Opens `path` and leaks the handle so that the library stays mapped for the process lifetime.
fn keep_open(path: &Path) -> bool {
    // SAFETY: loading a vendor library runs its initialisers, as any use of CUDA does.
    match unsafe { libloading::Library::new(path) } {
        Ok(l) => {
            std::mem::forget(l);
            true
        }
        Err(_) => false,
    }
}

/// `<stem>.<CUDA_MAJOR>` or `<stem>.<CUDA_MAJOR>.<minor>...` in `dir`, preferring the shortest
/// name (the soname link).
fn find_versioned(dir: &Path, stem: &str) -> Option<PathBuf> {
    let exact = dir.join(format!("{stem}.{CUDA_MAJOR}"));
    if exact.exists() {
        return Some(exact);
    }
    let prefix = format!("{stem}.{CUDA_MAJOR}.");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    found.sort_by_key(|p| p.as_os_str().len());
    found.into_iter().next()
}

/// Toolkit roots, in order of preference: `$CUDA_HOME`, `$CUDA_PATH`, `$CUDA_ROOT`,
/// `/usr/local/cuda`, `/usr/local/cuda-<version>` (newest first), `/opt/cuda`.
pub fn toolkit_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            roots.push(PathBuf::from(v));
        }
    }
    roots.push(PathBuf::from("/usr/local/cuda"));
    if let Ok(entries) = std::fs::read_dir("/usr/local") {
        let mut versioned: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("cuda-"))
            .map(|e| e.path())
            .collect();
        versioned.sort();
        versioned.reverse();
        roots.extend(versioned);
    }
    roots.push(PathBuf::from("/opt/cuda"));
    roots
}

/// `site-packages/nvidia/cu<major>` folders of pip's CUDA wheels (PyTorch installs them), found
/// under the usual Python prefixes, `$VIRTUAL_ENV` and `/opt/*/.venv`.
pub fn wheel_roots() -> Vec<PathBuf> {
    let mut prefixes: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        prefixes.push(PathBuf::from(v));
    }
    if let Ok(entries) = std::fs::read_dir("/opt") {
        for e in entries.filter_map(|e| e.ok()) {
            prefixes.push(e.path().join(".venv"));
            prefixes.push(e.path());
        }
    }
    prefixes.push(PathBuf::from("/usr/local"));
    prefixes.push(PathBuf::from("/usr"));
    let mut roots = Vec::new();
    for prefix in prefixes {
        for lib in ["lib", "lib64"] {
            let Ok(entries) = std::fs::read_dir(prefix.join(lib)) else {
                continue;
            };
            for e in entries.filter_map(|e| e.ok()) {
                if !e.file_name().to_string_lossy().starts_with("python3") {
                    continue;
                }
                for pkgs in ["site-packages", "dist-packages"] {
                    let root = e
                        .path()
                        .join(pkgs)
                        .join("nvidia")
                        .join(format!("cu{CUDA_MAJOR}"));
                    if root.is_dir() {
                        roots.push(root);
                    }
                }
            }
        }
    }
    roots
}

fn search_dirs(lib: Lib) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(v) = std::env::var_os("QIE_CUDA_LIB_DIR").filter(|v| !v.is_empty()) {
        dirs.extend(std::env::split_paths(&v));
    }
    if lib == Lib::Driver {
        // The driver is normally on the loader path; containers sometimes mount it here.
        dirs.extend(
            [
                "/usr/local/nvidia/lib64",
                "/usr/lib/x86_64-linux-gnu",
                "/usr/lib64",
                "/usr/lib/wsl/lib",
            ]
            .map(PathBuf::from),
        );
    } else {
        for root in toolkit_roots() {
            dirs.push(root.join("lib64"));
            dirs.push(root.join("targets/x86_64-linux/lib"));
            dirs.push(root.join("lib"));
        }
        for root in wheel_roots() {
            dirs.push(root.join("lib"));
        }
    }
    dirs.retain(|d| d.is_dir());
    dirs.dedup();
    dirs
}
