//! Prefix views, like candle's `VarBuilder::pp`: `store.prefixed("blocks.3")`
//! then `.load_f32("attn.to_q.weight")` reads `blocks.3.attn.to_q.weight`.

use super::error::Result;
use super::store::{TensorInfo, WeightStore};

/// A borrowed view of a store under a name prefix.
#[derive(Debug, Clone)]
pub struct Prefixed<'a> {
    store: &'a WeightStore,
    prefix: String,
}

impl WeightStore {
    /// A view whose names are relative to `prefix` (joined with `.`).
    pub fn prefixed(&self, prefix: &str) -> Prefixed<'_> {
        Prefixed {
            store: self,
            prefix: prefix.to_string(),
        }
    }
}

impl<'a> Prefixed<'a> {
    /// A deeper view: `prefixed("a").pp("b")` is `prefixed("a.b")`.
    pub fn pp(&self, sub: &str) -> Prefixed<'a> {
        Prefixed {
            store: self.store,
            prefix: self.full_name(sub),
        }
    }

    /// The full tensor name for `name` under this prefix.
    pub fn full_name(&self, name: &str) -> String {
        match (self.prefix.is_empty(), name.is_empty()) {
            (true, _) => name.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}.{name}", self.prefix),
        }
    }

    /// The prefix of this view.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The underlying store.
    pub fn store(&self) -> &'a WeightStore {
        self.store
    }

    /// See [`WeightStore::info`].
    pub fn info(&self, name: &str) -> Option<&'a TensorInfo> {
        self.store.info(&self.full_name(name))
    }

    /// See [`WeightStore::load_f32`].
    pub fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.store.load_f32(&self.full_name(name))
    }

    /// See [`WeightStore::load_i64`].
    pub fn load_i64(&self, name: &str) -> Result<Vec<i64>> {
        self.store.load_i64(&self.full_name(name))
    }

    /// See [`WeightStore::load_i32`].
    pub fn load_i32(&self, name: &str) -> Result<Vec<i32>> {
        self.store.load_i32(&self.full_name(name))
    }
}
