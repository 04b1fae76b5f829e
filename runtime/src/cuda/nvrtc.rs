//! CUDA C -> PTX/CUBIN through NVRTC, with an on-disk cache; module loading and kernel launches.
//!
//! Cache: `$QIE_CACHE_DIR/kernels/` if `QIE_CACHE_DIR` is set, else `$XDG_CACHE_HOME/qie/kernels/`,
//! else `~/.cache/qie/kernels/`. Files are `<key>.ptx` and, for a real architecture (`sm_90`),
//! `<key>.cubin` (loaded in preference: no driver JIT at start). The key hashes the source, the
//! options, the architecture, the driver version and the NVRTC version, so a change to any of
//! them compiles afresh. Files are written to a temporary name and renamed into place, so a
//! reader never sees a partial file and concurrent writers are harmless.

use std::ffi::{c_char, c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cudarc::driver::sys::CUfunction_attribute as FuncAttr;
use cudarc::driver::{result as drv, CudaFunction, CudaModule};
use cudarc::nvrtc::{result as rtc, sys as rtc_sys};

use super::libs::{self, Lib};
use super::{CudaDevice, CudaError, Result};

/// Where compiled kernels are kept between runs.
#[derive(Clone, Debug)]
pub struct KernelCache {
    dir: PathBuf,
}

impl KernelCache {
    /// The cache at its default location (see the module docs).
    pub fn default_location() -> Self {
        let base = if let Some(d) = std::env::var_os("QIE_CACHE_DIR").filter(|v| !v.is_empty()) {
            PathBuf::from(d)
        } else if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            PathBuf::from(d).join("qie")
        } else if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            PathBuf::from(h).join(".cache").join("qie")
        } else {
            std::env::temp_dir().join("qie-cache")
        };
        KernelCache {
            dir: base.join("kernels"),
        }
    }

    /// A cache in `dir` (tests use a temporary folder).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        KernelCache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Compiles `source` for `arch` (e.g. `sm_90`), or reads the result of an earlier compile.
    /// `driver_version` is part of the key (pass [`CudaDevice::driver_version`]).
    pub fn compile(
        &self,
        source: &str,
        name: &str,
        arch: &str,
        driver_version: i32,
        extra_options: &[String],
    ) -> Result<CompiledKernel> {
        libs::require(Lib::Nvrtc)?;
        let options = compile_options(arch, extra_options);
        let nvrtc_version = nvrtc_version()?;
        let key = cache_key(source, &options, arch, driver_version, nvrtc_version);
        let ptx_path = self.dir.join(format!("{key}.ptx"));
        let cubin_path = self.dir.join(format!("{key}.cubin"));
        let wants_cubin = arch.starts_with("sm_");

        if let Ok(ptx) = std::fs::read_to_string(&ptx_path) {
            let cubin = if wants_cubin {
                std::fs::read(&cubin_path).ok()
            } else {
                None
            };
            if !wants_cubin || cubin.is_some() {
                return Ok(CompiledKernel {
                    name: name.to_string(),
                    key,
                    ptx,
                    cubin,
                    from_cache: true,
                    ptx_path,
                    log: String::new(),
                });
            }
        }

        let (ptx, cubin, log) = nvrtc_compile(source, name, &options, wants_cubin)?;
        std::fs::create_dir_all(&self.dir).map_err(|source| CudaError::Cache {
            path: self.dir.clone(),
            source,
        })?;
        // The cubin goes first: a reader that sees the .ptx also finds the .cubin.
        if let Some(c) = &cubin {
            write_atomic(&cubin_path, c)?;
        }
        write_atomic(&ptx_path, ptx.as_bytes())?;
        Ok(CompiledKernel {
            name: name.to_string(),
            key,
            ptx,
            cubin,
            from_cache: false,
            ptx_path,
            log,
        })
    }

    /// Compiles (or reads from the cache) `source` for `dev` and loads it there.
    pub fn load(&self, dev: &Arc<CudaDevice>, source: &str, name: &str) -> Result<Module> {
        let compiled = self.compile(source, name, &dev.arch(), dev.driver_version(), &[])?;
        Module::load(dev, &compiled)
    }
}

/// The output of one NVRTC compile.
#[derive(Clone, Debug)]
pub struct CompiledKernel {
    pub name: String,
    /// Cache key (hex).
    pub key: String,
    pub ptx: String,
    /// Machine code for a real architecture (`sm_XX`); `None` for virtual ones (`compute_XX`).
    pub cubin: Option<Vec<u8>>,
    /// True when nothing was compiled: both files came from the cache.
    pub from_cache: bool,
    pub ptx_path: PathBuf,
    /// NVRTC's log (warnings, and ptxas' resource report with `--ptxas-options=-v`).
    pub log: String,
}

/// Compiles `source` to PTX for `arch` with the usual options, bypassing the cache (for
/// `qie kernels export`); returns (ptx, NVRTC log). Needs NVRTC but no driver or GPU.
pub fn compile_ptx(source: &str, name: &str, arch: &str) -> Result<(String, String)> {
    libs::require(Lib::Nvrtc)?;
    let (ptx, _, log) = nvrtc_compile(source, name, &compile_options(arch, &[]), false)?;
    Ok((ptx, log))
}

/// The options every kernel is compiled with.
pub fn compile_options(arch: &str, extra: &[String]) -> Vec<String> {
    let mut o = vec![
        format!("--gpu-architecture={arch}"),
        "-default-device".to_string(),
        "--std=c++17".to_string(),
        "-lineinfo".to_string(),
    ];
    if let Some(inc) = cuda_include_dir() {
        o.push(format!("-I{}", inc.display()));
    }
    o.extend(extra.iter().cloned());
    o
}

/// The CUDA headers folder (holding `cuda_bf16.h`): `$QIE_CUDA_INCLUDE`, else `include/` of
/// `$CUDA_HOME`, `$CUDA_PATH`, `/usr/local/cuda`, ..., else pip's `nvidia/cu13/include`.
/// Kernels of this crate need no header; generated kernels may `#include <cuda_bf16.h>`.
pub fn cuda_include_dir() -> Option<PathBuf> {
    let has_bf16 = |d: &Path| d.join("cuda_bf16.h").is_file();
    if let Some(d) = std::env::var_os("QIE_CUDA_INCLUDE").filter(|v| !v.is_empty()) {
        let d = PathBuf::from(d);
        if has_bf16(&d) {
            return Some(d);
        }
    }
    let roots = libs::toolkit_roots().into_iter().chain(libs::wheel_roots());
    for root in roots {
        for sub in ["include", "targets/x86_64-linux/include"] {
            let d = root.join(sub);
            if has_bf16(&d) {
                return Some(d);
            }
        }
    }
    None
}

/// NVRTC's version as (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    libs::require(Lib::Nvrtc)?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain query into locals.
    unsafe { rtc_sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| CudaError::Compile {
            name: "nvrtcVersion".into(),
            message: format!("{e:?}"),
        })?;
    Ok((major, minor))
}

fn cache_key(
    source: &str,
    options: &[String],
    arch: &str,
    driver_version: i32,
    nvrtc: (i32, i32),
) -> String {
    let mut h = Fnv128::new();
    h.write(b"qie-kernel-v1\0");
    h.write(source.as_bytes());
    h.write(b"\0");
    for o in options {
        h.write(o.as_bytes());
        h.write(b"\0");
    }
    h.write(arch.as_bytes());
    h.write(format!("\0driver={driver_version}\0nvrtc={}.{}", nvrtc.0, nvrtc.1).as_bytes());
    format!("{:032x}", h.finish())
}

/// FNV-1a, 128 bits: stable across Rust versions and platforms (unlike `DefaultHasher`).
struct Fnv128(u128);

impl Fnv128 {
    fn new() -> Self {
        Fnv128(0x6c62272e07bb014262b821756295c58d)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u128;
            self.0 = self.0.wrapping_mul(0x0000000001000000000000000000013B);
        }
    }
    fn finish(&self) -> u128 {
        self.0
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let err = |source| CudaError::Cache {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

fn c_chars_to_string(v: &[c_char]) -> String {
    let bytes: Vec<u8> = v
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// One NVRTC compile: (ptx, cubin, log).
fn nvrtc_compile(
    source: &str,
    name: &str,
    options: &[String],
    want_cubin: bool,
) -> Result<(String, Option<Vec<u8>>, String)> {
    let err = |message: String| CudaError::Compile {
        name: name.to_string(),
        message,
    };
    let src = CString::new(source).map_err(|_| err("source contains a NUL byte".into()))?;
    let cname = CString::new(name).map_err(|_| err("name contains a NUL byte".into()))?;
    let prog = rtc::create_program(&src, Some(&cname)).map_err(|e| err(format!("{e:?}")))?;
    struct Guard(rtc_sys::nvrtcProgram);
    impl Drop for Guard {
        fn drop(&mut self) {
            // SAFETY: created above, destroyed once.
            let _ = unsafe { rtc::destroy_program(self.0) };
        }
    }
    let guard = Guard(prog);
    // SAFETY: `prog` is live (guard); `src`/`cname` outlive it.
    let compiled = unsafe { rtc::compile_program(guard.0, options) };
    let log = unsafe { rtc::get_program_log(guard.0) }
        .map(|l| c_chars_to_string(&l))
        .unwrap_or_default();
    if let Err(e) = compiled {
        return Err(err(format!("{e:?} with options {options:?}\n{log}")));
    }
    let ptx = unsafe { rtc::get_ptx(guard.0) }.map_err(|e| err(format!("nvrtcGetPTX: {e:?}")))?;
    let ptx = c_chars_to_string(&ptx);
    let cubin = if want_cubin {
        let mut size = 0usize;
        // SAFETY: `prog` compiled for a real architecture; buffer sized by the size query.
        unsafe { rtc_sys::nvrtcGetCUBINSize(guard.0, &mut size) }
            .result()
            .map_err(|e| err(format!("nvrtcGetCUBINSize: {e:?}")))?;
        let mut buf = vec![0u8; size];
        unsafe { rtc_sys::nvrtcGetCUBIN(guard.0, buf.as_mut_ptr() as *mut c_char) }
            .result()
            .map_err(|e| err(format!("nvrtcGetCUBIN: {e:?}")))?;
        Some(buf)
    } else {
        None
    };
    Ok((ptx, cubin, log))
}

/// A module loaded on one device.
#[derive(Clone)]
pub struct Module {
    module: Arc<CudaModule>,
    dev: Arc<CudaDevice>,
    pub from_cache: bool,
}

impl Module {
    /// Loads the CUBIN when there is one (falling back to the PTX, which the driver JIT-compiles).
    pub fn load(dev: &Arc<CudaDevice>, k: &CompiledKernel) -> Result<Module> {
        let ctx = dev.context();
        let module = match &k.cubin {
            Some(c) => ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(c.clone()))
                .or_else(|_| ctx.load_module(cudarc::nvrtc::Ptx::from_src(k.ptx.clone())))?,
            None => ctx.load_module(cudarc::nvrtc::Ptx::from_src(k.ptx.clone()))?,
        };
        Ok(Module {
            module,
            dev: dev.clone(),
            from_cache: k.from_cache,
        })
    }

    pub fn function(&self, name: &str) -> Result<Kernel> {
        let func = self.module.load_function(name).map_err(|e| {
            CudaError::Driver(format!("kernel {name}: {}", super::driver_error_text(&e)))
        })?;
        Ok(Kernel {
            func,
            dev: self.dev.clone(),
            name: name.to_string(),
        })
    }
}

/// One scalar or pointer kernel argument.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    Ptr(super::DevPtr),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
}

/// A kernel function of a loaded module.
#[derive(Clone)]
pub struct Kernel {
    func: CudaFunction,
    dev: Arc<CudaDevice>,
    name: String,
}

/// Resource usage of a kernel as the driver reports it.
#[derive(Clone, Copy, Debug)]
pub struct KernelAttributes {
    pub registers: i32,
    pub static_shared_bytes: i32,
    pub local_bytes: i32,
    pub max_threads_per_block: i32,
}

impl Kernel {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Allows `bytes` of dynamic shared memory per block (needed above 48 KiB).
    pub fn set_max_dynamic_shared(&self, bytes: u32) -> Result<()> {
        self.func.set_attribute(
            FuncAttr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )?;
        Ok(())
    }

    pub fn attributes(&self) -> Result<KernelAttributes> {
        Ok(KernelAttributes {
            registers: self.func.num_regs()?,
            static_shared_bytes: self.func.shared_size_bytes()?,
            local_bytes: self.func.local_size_bytes()?,
            max_threads_per_block: self.func.max_threads_per_block()?,
        })
    }

    /// Queues the kernel on the device's stream. Launch errors are returned; faults inside the
    /// kernel surface at the next synchronisation.
    pub fn launch(
        &self,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared: u32,
        args: &[Arg],
    ) -> Result<()> {
        // Each argument lives in its own 8-byte slot; the driver reads the parameter's size
        // from the slot's start (little-endian, so 4-byte values sit in the low half).
        let mut slots: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                Arg::Ptr(p) => p.0,
                Arg::I32(v) => v as u32 as u64,
                Arg::U32(v) => v as u64,
                Arg::I64(v) => v as u64,
                Arg::F32(v) => v.to_bits() as u64,
            })
            .collect();
        let mut params: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut c_void)
            .collect();
        self.dev.bind()?;
        // SAFETY: argument count and types must match the kernel's signature (callers in this
        // module are written against the .cu sources); `slots` outlives the call.
        unsafe {
            drv::launch_kernel(
                self.func.cu_function(),
                grid,
                block,
                shared,
                self.dev.cu_stream(),
                &mut params,
            )
        }
        .map_err(|e| {
            CudaError::Driver(format!(
                "launching {}: {}",
                self.name,
                super::driver_error_text(&e)
            ))
        })
    }
}
