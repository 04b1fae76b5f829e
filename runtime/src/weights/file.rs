//! One memory-mapped, validated `.safetensors` file.
//!
//! Layout: an 8-byte little-endian header length `n`, `n` bytes of JSON, then
//! the tensor data. Offsets in the JSON are relative to the start of the data.
//! We check everything ourselves first so that errors name the file and the
//! tensor, then let the `safetensors` crate parse the header (which also
//! rejects overlapping offsets, gaps and trailing bytes).

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::TensorInfo as RawInfo;
use safetensors::{Dtype, SafeTensors};
use serde_json::{Map, Value};

use super::error::{Result, WeightsError};

/// The limit the `safetensors` crate applies to the JSON header.
const MAX_HEADER_LEN: u64 = 100_000_000;
const LEN_PREFIX: usize = 8;

/// A tensor entry of one file: dtype, shape and absolute byte range.
pub(crate) struct FileTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub range: Range<usize>,
}

/// A mapped file plus its parsed header.
pub(crate) struct MappedFile {
    pub path: PathBuf,
    pub mmap: Mmap,
    pub tensors: Vec<FileTensor>,
    /// The free-form `__metadata__` map of the header, if any.
    pub metadata: Option<HashMap<String, String>>,
}

impl MappedFile {
    /// Maps `path` and validates its header against the file size.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| WeightsError::io(path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| WeightsError::io(path, e))?
            .len();
        if file_len < LEN_PREFIX as u64 {
            return Err(WeightsError::header(
                path,
                format!("the file has {file_len} bytes, too few for the 8-byte header length"),
            ));
        }
        // SAFETY: the map is read-only; like every mmap-based loader we rely
        // on the checkpoint not being modified while the store is alive.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| WeightsError::io(path, e))?;
        let data_start = check_layout(path, &mmap)?;

        let (_, meta) =
            SafeTensors::read_metadata(&mmap).map_err(|source| WeightsError::Format {
                path: path.to_path_buf(),
                source,
            })?;
        let mut tensors: Vec<FileTensor> = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| FileTensor {
                name,
                dtype: info.dtype,
                shape: info.shape.clone(),
                range: data_start + info.data_offsets.0..data_start + info.data_offsets.1,
            })
            .collect();
        tensors.sort_by_key(|t| t.range.start);
        Ok(MappedFile {
            path: path.to_path_buf(),
            metadata: meta.metadata().clone(),
            mmap,
            tensors,
        })
    }
}

/// Validates the header length, the JSON and every tensor's offsets against
/// the mapped bytes. Returns the absolute offset where tensor data starts.
fn check_layout(path: &Path, bytes: &[u8]) -> Result<usize> {
    let file_len = bytes.len() as u64;
    let mut prefix = [0u8; LEN_PREFIX];
    prefix.copy_from_slice(&bytes[..LEN_PREFIX]);
    let header_len = u64::from_le_bytes(prefix);
    let available = file_len - LEN_PREFIX as u64;
    if header_len > available {
        return Err(WeightsError::header(
            path,
            format!(
                "header length {header_len} exceeds the {available} bytes that follow it (file has {file_len} bytes)"
            ),
        ));
    }
    if header_len > MAX_HEADER_LEN {
        return Err(WeightsError::header(
            path,
            format!("header length {header_len} is over the {MAX_HEADER_LEN}-byte limit"),
        ));
    }
    // Both fit in the file, hence in usize.
    let data_start = LEN_PREFIX + header_len as usize;
    let text = std::str::from_utf8(&bytes[LEN_PREFIX..data_start])
        .map_err(|e| WeightsError::header(path, format!("not valid utf-8: {e}")))?;
    let json: Map<String, Value> = serde_json::from_str(text)
        .map_err(|e| WeightsError::header(path, format!("not a json object: {e}")))?;

    let mut entries = Vec::with_capacity(json.len());
    for (name, value) in json {
        if name == "__metadata__" {
            continue;
        }
        let info: RawInfo = serde_json::from_value(value)
            .map_err(|e| WeightsError::tensor(path, &name, format!("invalid entry: {e}")))?;
        check_entry_size(path, &name, &info)?;
        entries.push((name, info));
    }
    // Report the first broken tensor in file order.
    entries.sort_by_key(|(_, info)| info.data_offsets);
    let data_len = file_len - data_start as u64;
    for (name, info) in &entries {
        let (start, end) = info.data_offsets;
        if end as u64 > data_len {
            return Err(WeightsError::Truncated {
                path: path.to_path_buf(),
                tensor: name.clone(),
                start: data_start as u64 + start as u64,
                end: data_start as u64 + end as u64,
                file_len,
            });
        }
    }
    Ok(data_start)
}

/// Checks that `data_offsets` span exactly `shape * dtype` bytes.
fn check_entry_size(path: &Path, name: &str, info: &RawInfo) -> Result<()> {
    let (start, end) = info.data_offsets;
    if end < start {
        return Err(WeightsError::tensor(
            path,
            name,
            format!("data_offsets [{start}, {end}] end before they start"),
        ));
    }
    let bits = info
        .shape
        .iter()
        .try_fold(info.dtype.bitsize(), |acc, &d| acc.checked_mul(d));
    let needed = match bits {
        Some(bits) if bits % 8 == 0 => bits / 8,
        Some(_) => {
            return Err(WeightsError::tensor(
                path,
                name,
                format!(
                    "shape {:?} of dtype {} does not fill whole bytes",
                    info.shape, info.dtype
                ),
            ))
        }
        None => {
            return Err(WeightsError::tensor(
                path,
                name,
                format!("shape {:?} is too large", info.shape),
            ))
        }
    };
    if end - start != needed {
        return Err(WeightsError::tensor(
            path,
            name,
            format!(
                "dtype {} and shape {:?} need {needed} bytes but data_offsets [{start}, {end}] span {}",
                info.dtype,
                info.shape,
                end - start
            ),
        ));
    }
    Ok(())
}
