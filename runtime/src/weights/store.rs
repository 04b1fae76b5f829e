//! `WeightStore`: every tensor of a (possibly sharded) checkpoint, by name.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use safetensors::Dtype;

use super::error::{Result, WeightsError};
use super::file::MappedFile;
use super::index::ShardIndex;
use super::locate::{locate, Checkpoint};

/// Metadata of one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// The `.safetensors` file holding the data.
    pub file: PathBuf,
}

impl TensorInfo {
    /// Number of elements (1 for a scalar of shape `[]`).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

struct Entry {
    info: TensorInfo,
    file: usize,
    range: Range<usize>,
}

/// Memory-mapped safetensors checkpoint: one file, or shards listed in an
/// index. Tensor data stays in the page cache until loaded.
///
/// The files must not be modified while the store is alive (they are mapped).
pub struct WeightStore {
    source: PathBuf,
    files: Vec<MappedFile>,
    tensors: BTreeMap<String, Entry>,
}

impl std::fmt::Debug for WeightStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightStore")
            .field("source", &self.source)
            .field("files", &self.files.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl WeightStore {
    /// Opens a `.safetensors` file, a `*.safetensors.index.json`, or a
    /// directory holding either (see the module docs for how one is chosen).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut store = WeightStore {
            source: path.to_path_buf(),
            files: Vec::new(),
            tensors: BTreeMap::new(),
        };
        match locate(path)? {
            Checkpoint::Single(file) => {
                store.add_file(MappedFile::open(&file)?)?;
            }
            Checkpoint::Sharded(index) => store.add_shards(&ShardIndex::read(&index)?)?,
        }
        Ok(store)
    }

    fn add_shards(&mut self, index: &ShardIndex) -> Result<()> {
        index.check_shards_exist()?;
        for (shard, listed) in &index.shards {
            let file = MappedFile::open(shard)?;
            for name in listed {
                if !file.tensors.iter().any(|t| &t.name == name) {
                    return Err(WeightsError::IndexTensorMissing {
                        index: index.path.clone(),
                        shard: shard.clone(),
                        tensor: name.clone(),
                    });
                }
            }
            self.add_file(file)?;
        }
        Ok(())
    }

    fn add_file(&mut self, file: MappedFile) -> Result<()> {
        let idx = self.files.len();
        for t in &file.tensors {
            if let Some(prev) = self.tensors.get(&t.name) {
                return Err(WeightsError::DuplicateTensor {
                    tensor: t.name.clone(),
                    first: prev.info.file.clone(),
                    second: file.path.clone(),
                });
            }
            let info = TensorInfo {
                dtype: t.dtype,
                shape: t.shape.clone(),
                file: file.path.clone(),
            };
            let entry = Entry {
                info,
                file: idx,
                range: t.range.clone(),
            };
            self.tensors.insert(t.name.clone(), entry);
        }
        self.files.push(file);
        Ok(())
    }

    /// The path given to [`WeightStore::open`].
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The mapped `.safetensors` files, in load order.
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// The `__metadata__` map of each file's header (e.g. `{"format": "pt"}`).
    pub fn file_metadata(&self, file: &Path) -> Option<&HashMap<String, String>> {
        let f = self.files.iter().find(|f| f.path == file)?;
        f.metadata.as_ref()
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when the checkpoint holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// True when `name` is in the store.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Dtype, shape and file of `name`.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name).map(|e| &e.info)
    }

    /// Like [`WeightStore::info`], with an error naming the tensor.
    pub fn require(&self, name: &str) -> Result<&TensorInfo> {
        self.info(name).ok_or_else(|| self.not_found(name))
    }

    /// The raw little-endian bytes of `name` (zero-copy, any alignment).
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        let e = self.tensors.get(name).ok_or_else(|| self.not_found(name))?;
        Ok(&self.files[e.file].mmap[e.range.clone()])
    }

    /// Metadata and raw bytes together.
    pub(crate) fn raw(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let e = self.tensors.get(name).ok_or_else(|| self.not_found(name))?;
        Ok((&e.info, &self.files[e.file].mmap[e.range.clone()]))
    }

    fn not_found(&self, name: &str) -> WeightsError {
        WeightsError::NotFound {
            tensor: name.to_string(),
            store: self.source.clone(),
        }
    }
}
