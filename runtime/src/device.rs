//! Device selection, the same for every backend: `--device` / `$QIE_DEVICE` parsing, opening a
//! [`Backend`] for a [`DeviceSpec`], and the listing `qie devices` prints.

use crate::backend::Backend;
use crate::storage::StorageMode;
use std::sync::Arc;

/// Which backend a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

/// The backends this build can open, in the order `qie devices` lists them.
pub const BACKENDS: &[&str] = &["cpu", "cuda"];

impl DeviceSpec {
    /// Parses `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(DeviceSpec::Cuda)
                    .map_err(|_| format!("bad device '{s}': expected cuda:N with N a number")),
                None => Err(format!(
                    "unknown device '{s}': expected cpu, cuda or cuda:N"
                )),
            },
        }
    }

    /// `--device` if given, else `$QIE_DEVICE`, else `cpu`.
    pub fn from_arg_or_env(arg: Option<&str>) -> Result<Self, String> {
        match arg {
            Some(a) => Self::parse(a),
            None => match std::env::var("QIE_DEVICE") {
                Ok(v) if !v.trim().is_empty() => {
                    Self::parse(&v).map_err(|e| format!("QIE_DEVICE: {e}"))
                }
                _ => Ok(DeviceSpec::Cpu),
            },
        }
    }

    /// Opens the backend: the CPU reference, or a device backend storing floats as `mode` says
    /// (the CPU always computes and stores f32). Errors say why the device cannot be used.
    pub fn open(self, mode: StorageMode) -> Result<Arc<dyn Backend>, String> {
        match self {
            DeviceSpec::Cpu => Ok(Arc::new(crate::cpu::CpuBackend)),
            DeviceSpec::Cuda(ordinal) => crate::cuda::CudaBackend::new(ordinal, mode)
                .map(|b| Arc::new(b) as Arc<dyn Backend>)
                .map_err(|e| e.to_string()),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// What `qie devices` prints: the backends compiled in, then each one's devices, or why it has
/// none on this machine.
pub fn device_report() -> String {
    let mut lines = vec![format!("backends: {}", BACKENDS.join(", "))];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    lines.push(format!("cpu: {threads} threads"));
    match crate::cuda::list_devices() {
        Ok(devs) if devs.is_empty() => lines.push("cuda: no device".to_string()),
        Ok(devs) => lines.extend(devs.iter().map(|d| d.to_string())),
        Err(e) => lines.push(format!("cuda: no device ({})", e.reason)),
    }
    lines.join("\n")
}
