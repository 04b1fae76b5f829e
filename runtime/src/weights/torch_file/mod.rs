//! `torch.save` checkpoints (`.pth`, `.pth.tar`, `.bin`) in the zip format of torch >= 1.6:
//! `{archive}/data.pkl` (the pickled object, tensors as persistent ids) and one
//! `{archive}/data/{key}` entry per storage. Read without executing anything (see
//! [`pickle`]); tensors are gathered from their strided views and converted to f32.

pub mod pickle;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use half::{bf16, f16};

use super::error::{Result, WeightsError};
pub use pickle::{TensorRef, TorchDtype, Value};

/// An opened checkpoint: its unpickled root object and the archive its storages live in.
pub struct TorchFile {
    path: PathBuf,
    root: Value,
    prefix: String,
    archive: Mutex<zip::ZipArchive<File>>,
}

/// The largest data.pkl read (the pickle holds names and shapes, the data lies elsewhere).
const MAX_PICKLE_BYTES: u64 = 1 << 30;

impl TorchFile {
    pub fn open(path: &Path) -> Result<TorchFile> {
        let bad = |reason: String| WeightsError::TorchFile {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(|e| WeightsError::io(path, e))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| {
            bad(format!(
                "not a zip-format torch checkpoint ({e}); files saved by torch older than 1.6 \
                 (or with _use_new_zipfile_serialization=False) are not supported"
            ))
        })?;
        let pkl = (0..archive.len())
            .filter_map(|i| archive.name_for_index(i).map(str::to_string))
            .find(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
            .ok_or_else(|| bad("the archive has no data.pkl".into()))?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        if let Ok(mut e) = archive.by_name(&format!("{prefix}byteorder")) {
            let mut order = String::new();
            e.read_to_string(&mut order)
                .map_err(|e| bad(format!("byteorder: {e}")))?;
            if order.trim() != "little" {
                return Err(bad(format!(
                    "byte order {:?} is not supported",
                    order.trim()
                )));
            }
        }
        let bytes = {
            let entry = archive
                .by_name(&pkl)
                .map_err(|e| bad(format!("{pkl}: {e}")))?;
            if entry.size() > MAX_PICKLE_BYTES {
                return Err(bad(format!("{pkl} is {} bytes", entry.size())));
            }
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry
                .take(MAX_PICKLE_BYTES)
                .read_to_end(&mut bytes)
                .map_err(|e| bad(format!("{pkl}: {e}")))?;
            bytes
        };
        let root = pickle::unpickle(&bytes, &mut pickle::storage_from_pid)
            .map_err(|e| bad(format!("{pkl}: {e}")))?;
        Ok(TorchFile {
            path: path.to_path_buf(),
            root,
            prefix,
            archive: Mutex::new(archive),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn root(&self) -> &Value {
        &self.root
    }

    /// The tensors of the dict reached from the root through the string keys `at` (a state
    /// dict; `[]` for the root itself), as (name, tensor) in file order. Entries that are not
    /// tensors (e.g. None buffers) are left out.
    pub fn tensors_at(&self, at: &[&str]) -> Result<Vec<(String, TensorRef)>> {
        let mut v = self.root.clone();
        let mut path = String::from("the root object");
        for key in at {
            v = v.get(key).ok_or_else(|| WeightsError::TorchFile {
                path: self.path.clone(),
                reason: format!("{path} ({}) has no key {key:?}", v.kind()),
            })?;
            path = format!("[{key:?}]");
        }
        let Value::Dict(d) = v else {
            return Err(WeightsError::TorchFile {
                path: self.path.clone(),
                reason: format!("{path} is {}, not a state dict", v.kind()),
            });
        };
        let out = d
            .borrow()
            .iter()
            .filter_map(|(k, v)| match (k, v) {
                (Value::Str(k), Value::Tensor(t)) => Some((k.clone(), t.clone())),
                _ => None,
            })
            .collect();
        Ok(out)
    }

    /// The values of `tensor` (named `name` in errors), contiguous, as f32.
    pub fn load_f32(&self, name: &str, tensor: &TensorRef) -> Result<Vec<f32>> {
        let bad = |reason: String| WeightsError::tensor(&self.path, name, reason);
        let s = &tensor.storage;
        let size = s.dtype.size();
        let entry_name = format!("{}data/{}", self.prefix, s.key);
        let bytes = {
            let mut archive = self
                .archive
                .lock()
                .expect("the archive lock is never poisoned");
            let entry = archive
                .by_name(&entry_name)
                .map_err(|e| bad(format!("storage {entry_name}: {e}")))?;
            let want = s
                .numel
                .checked_mul(size)
                .ok_or_else(|| bad("a huge storage".into()))?;
            if entry.size() != want as u64 {
                return Err(bad(format!(
                    "storage {entry_name} has {} bytes, {} elements of {:?} need {want}",
                    entry.size(),
                    s.numel,
                    s.dtype
                )));
            }
            let mut bytes = Vec::with_capacity(want);
            entry
                .take(want as u64)
                .read_to_end(&mut bytes)
                .map_err(|e| bad(format!("storage {entry_name}: {e}")))?;
            if bytes.len() != want {
                return Err(bad(format!("storage {entry_name} is truncated")));
            }
            bytes
        };
        let numel: usize = tensor.shape.iter().product();
        if numel > 0 {
            let last = tensor
                .shape
                .iter()
                .zip(&tensor.stride)
                .try_fold(tensor.offset, |acc, (&n, &st)| {
                    (n - 1).checked_mul(st).and_then(|x| acc.checked_add(x))
                });
            if last.is_none_or(|l| l >= s.numel) {
                return Err(bad(format!(
                    "the view (offset {}, size {:?}, stride {:?}) lies outside its storage of \
                     {} elements",
                    tensor.offset, tensor.shape, tensor.stride, s.numel
                )));
            }
        }
        let element = |i: usize| -> f32 {
            let b = &bytes[i * size..(i + 1) * size];
            match s.dtype {
                TorchDtype::F64 => f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
                TorchDtype::F32 => f32::from_le_bytes(b.try_into().expect("4 bytes")),
                TorchDtype::F16 => f16::from_le_bytes([b[0], b[1]]).to_f32(),
                TorchDtype::BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                TorchDtype::I64 => i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
                TorchDtype::I32 => i32::from_le_bytes(b.try_into().expect("4 bytes")) as f32,
                TorchDtype::I16 => i16::from_le_bytes([b[0], b[1]]) as f32,
                TorchDtype::I8 => b[0] as i8 as f32,
                TorchDtype::U8 | TorchDtype::Bool => b[0] as f32,
            }
        };
        let mut out = Vec::with_capacity(numel);
        gather(&tensor.shape, &tensor.stride, tensor.offset, &mut |i| {
            out.push(element(i))
        });
        Ok(out)
    }
}

/// Calls `f` with the storage index of every element of a strided view, in row-major order.
fn gather(shape: &[usize], stride: &[usize], offset: usize, f: &mut dyn FnMut(usize)) {
    match shape {
        [] => f(offset),
        [n, rest @ ..] => {
            for i in 0..*n {
                gather(rest, &stride[1..], offset + i * stride[0], f);
            }
        }
    }
}
