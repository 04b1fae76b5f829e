//! Values of the lowering interpreter. Everything but `Tensor` is known at compile time.

use super::builtins::Builtin;
use crate::{DType, NodeId};
use std::collections::HashMap;
use std::rc::Rc;

/// Longest range that may be unrolled or materialised.
pub(crate) const MAX_RANGE: i64 = 1 << 20;

#[derive(Clone, Debug)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    DType(DType),
    List(Rc<Vec<Value>>),
    Tuple(Rc<Vec<Value>>),
    /// `a..b` (half open).
    Range(i64, i64),
    Tensor(NodeId),
    Instance(Rc<Instance>),
    Func(Callable),
    /// A module name used as a value (it can only be instantiated by `sub`).
    Module(u32),
    /// A JSON object: `config` or one of its nested objects.
    Dict(Rc<Dict>),
}

#[derive(Clone, Debug)]
pub(crate) enum Callable {
    /// A global function (index into `Items::fns`).
    Fn(u32),
    /// A method of an instance (index into its module's `methods`).
    Method(Rc<Instance>, u32),
    Builtin(Builtin),
}

#[derive(Debug)]
pub(crate) struct Dict {
    /// How the user reaches it: `config`, `config.text_config`.
    pub path: String,
    pub entries: HashMap<String, Value>,
}

/// An instantiated module: its checkpoint prefix and its module-scope names (constructor args, lets,
/// params, subs; later definitions shadow earlier ones).
#[derive(Debug)]
pub(crate) struct Instance {
    pub module: u32,
    pub prefix: Rc<str>,
    pub env: HashMap<Rc<str>, Value>,
}

impl Value {
    pub fn list(items: Vec<Value>) -> Value {
        Value::List(Rc::new(items))
    }

    pub fn tuple(items: Vec<Value>) -> Value {
        Value::Tuple(Rc::new(items))
    }

    pub fn is_number(&self) -> bool {
        matches!(self, Value::Int(_) | Value::Float(_))
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// Items of a list, tuple or range (ranges are materialised, up to [`MAX_RANGE`] items).
    pub fn items(&self) -> Option<Rc<Vec<Value>>> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v.clone()),
            Value::Range(a, b) if b.saturating_sub(*a) <= MAX_RANGE => {
                Some(Rc::new((*a..*b).map(Value::Int).collect()))
            }
            _ => None,
        }
    }

    /// Converts a JSON value (from config.json) into a value.
    pub fn from_json(v: &serde_json::Value, path: &str) -> Value {
        match v {
            serde_json::Value::Null => Value::None,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::Str(s.as_str().into()),
            serde_json::Value::Array(a) => Value::list(
                a.iter()
                    .enumerate()
                    .map(|(i, x)| Value::from_json(x, &format!("{path}[{i}]")))
                    .collect(),
            ),
            serde_json::Value::Object(o) => Value::Dict(Rc::new(Dict {
                path: path.to_string(),
                entries: o
                    .iter()
                    .map(|(k, x)| (k.clone(), Value::from_json(x, &format!("{path}.{k}"))))
                    .collect(),
            })),
        }
    }

    /// Structural equality of compile-time values (tensors compare by node).
    pub fn same(&self, other: &Value) -> bool {
        use Value::*;
        match (self, other) {
            (None, None) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (Int(_) | Float(_), Int(_) | Float(_)) => self.as_f64() == other.as_f64(),
            (Str(a), Str(b)) => a == b,
            (DType(a), DType(b)) => a == b,
            (List(a), List(b)) | (Tuple(a), Tuple(b)) => {
                a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x.same(y))
            }
            (Range(a, b), Range(c, d)) => a == c && b == d,
            (Tensor(a), Tensor(b)) => a == b,
            (Instance(a), Instance(b)) => Rc::ptr_eq(a, b),
            (Module(a), Module(b)) => a == b,
            _ => false,
        }
    }
}
