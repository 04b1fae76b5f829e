//! Safetensors checkpoints: finding, memory-mapping, validating, loading,
//! checking against a model, and writing.
//!
//! [`WeightStore::open`] accepts
//! - a `.safetensors` file,
//! - a `*.safetensors.index.json` (sharded checkpoint), or
//! - a directory holding either. An index wins over plain files; with
//!   several candidates of a kind, the conventional diffusers
//!   (`diffusion_pytorch_model.*`) or transformers (`model.*`) name is
//!   chosen, and anything else is an [`WeightsError::Ambiguous`] error.
//!
//! Every file is validated before use (header length, JSON, offsets against
//! the file size and `shape * dtype`), so a truncated or corrupt checkpoint
//! yields an error naming the file and the tensor instead of a panic.
//!
//! ```no_run
//! use qie_runtime::weights::{CheckMode, WeightStore};
//! # fn main() -> Result<(), qie_runtime::weights::WeightsError> {
//! let store = WeightStore::open("Qwen-Image-Edit/transformer")?;
//! store.check_with(&[("img_in.weight", vec![3072, 64])], CheckMode::AllowUnexpected)?;
//! let w: Vec<f32> = store.load_f32("img_in.weight")?;
//! # Ok(()) }
//! ```

mod check;
mod convert;
mod error;
mod file;
mod index;
mod locate;
mod prefix;
mod store;
mod stored;
pub mod torch_file;
mod write;

pub use check::{CheckMode, CheckReport, ShapeMismatch};
pub use error::{Result, WeightsError};
pub use prefix::Prefixed;
pub use safetensors::Dtype;
pub use store::{TensorInfo, WeightStore};
pub use stored::StoredTensor;
pub use torch_file::TorchFile;
pub use write::{
    save_raw, save_raw_with_metadata, save_safetensors, save_safetensors_as,
    save_safetensors_with_metadata, RawTensor,
};
