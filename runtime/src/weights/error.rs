//! The error type of the weights module.
//!
//! Every message starts with `weights:` and names the file (and the tensor,
//! where there is one) so that a user can act on it without a debugger.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensorError};

use super::check::CheckReport;

/// Result alias for the weights module.
pub type Result<T, E = WeightsError> = std::result::Result<T, E>;

/// Everything that can go wrong while finding, reading, checking or writing
/// safetensors checkpoints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WeightsError {
    /// An operating-system error on `path` (open, read, map, write, rename).
    #[error("weights: {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The 8-byte length prefix or the JSON header of a file is unusable.
    #[error("weights: {}: invalid header: {reason}", path.display())]
    Header { path: PathBuf, reason: String },

    /// One tensor entry of a header is malformed or inconsistent.
    #[error("weights: {}: tensor '{tensor}': {reason}", path.display())]
    InvalidTensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },

    /// A tensor's data lies (partly) past the end of the file.
    #[error(
        "weights: {}: truncated: tensor '{tensor}' needs bytes {start}..{end} but the file has {file_len} bytes",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        tensor: String,
        /// Absolute byte offsets in the file.
        start: u64,
        end: u64,
        file_len: u64,
    },

    /// An error reported by the `safetensors` crate for `path`.
    #[error("weights: {}: {source}", path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: SafeTensorError,
    },

    /// The `*.safetensors.index.json` file itself is malformed.
    #[error("weights: {}: invalid index: {reason}", path.display())]
    Index { path: PathBuf, reason: String },

    /// A shard named by an index file does not exist.
    #[error(
        "weights: {}: shard file {} (listed for tensor '{tensor}'{}) does not exist",
        index.display(),
        shard.display(),
        and_more(*others)
    )]
    MissingShard {
        index: PathBuf,
        shard: PathBuf,
        /// The first tensor the index maps to this shard.
        tensor: String,
        /// How many other tensors the index maps to this shard.
        others: usize,
    },

    /// An index maps a tensor to a shard that does not contain it.
    #[error(
        "weights: {}: tensor '{tensor}' is mapped to {} but that file does not contain it",
        index.display(),
        shard.display()
    )]
    IndexTensorMissing {
        index: PathBuf,
        shard: PathBuf,
        tensor: String,
    },

    /// The same tensor name is stored in two files.
    #[error(
        "weights: tensor '{tensor}' is stored in both {} and {}",
        first.display(),
        second.display()
    )]
    DuplicateTensor {
        tensor: String,
        first: PathBuf,
        second: PathBuf,
    },

    /// A directory holds no safetensors checkpoint.
    #[error(
        "weights: {}: no *.safetensors file or *.safetensors.index.json found",
        dir.display()
    )]
    NoWeights { dir: PathBuf },

    /// A directory holds several checkpoints and none is the conventional one.
    #[error(
        "weights: {}: cannot choose between {}; open one of them directly",
        dir.display(),
        list_paths(candidates)
    )]
    Ambiguous {
        dir: PathBuf,
        candidates: Vec<PathBuf>,
    },

    /// A tensor name that is not in the store.
    #[error("weights: tensor '{tensor}' not found in {}", store.display())]
    NotFound { tensor: String, store: PathBuf },

    /// A tensor whose dtype cannot be converted to the requested type.
    #[error("weights: tensor '{tensor}' has dtype {dtype}, which cannot be loaded as {target}")]
    Dtype {
        tensor: String,
        dtype: Dtype,
        target: &'static str,
    },

    /// An integer tensor holds a value that does not fit the requested type.
    #[error("weights: tensor '{tensor}' holds the value {value}, which does not fit in {target}")]
    OutOfRange {
        tensor: String,
        value: i128,
        target: &'static str,
    },

    /// The store does not match the tensors a model expects.
    #[error("{0}")]
    Mismatch(Box<CheckReport>),

    /// A `torch.save` checkpoint that cannot be read.
    #[error("weights: {}: {reason}", path.display())]
    TorchFile { path: PathBuf, reason: String },

    /// Tensors handed to a writer are inconsistent (bad length, duplicate
    /// name, unsupported dtype).
    #[error("weights: {}: cannot write: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
}

impl WeightsError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        WeightsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn header(path: &Path, reason: impl Into<String>) -> Self {
        WeightsError::Header {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn tensor(path: &Path, tensor: &str, reason: impl Into<String>) -> Self {
        WeightsError::InvalidTensor {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn index(path: &Path, reason: impl Into<String>) -> Self {
        WeightsError::Index {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn write(path: &Path, reason: impl Into<String>) -> Self {
        WeightsError::Write {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

fn and_more(others: usize) -> String {
    match others {
        0 => String::new(),
        1 => " and 1 other".to_string(),
        n => format!(" and {n} others"),
    }
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
