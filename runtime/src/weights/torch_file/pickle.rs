//! A restricted unpickler for `torch.save` checkpoints: the opcodes of pickle protocols 2-5
//! that state dicts use, no code execution. Callables are interpreted by name only for what a
//! checkpoint of tensors needs (`OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `_rebuild_parameter`, ...); any other global becomes an opaque [`Value::Object`], so a file
//! with extra metadata (an `argparse.Namespace`, an optimizer state) still reads, and only a
//! tensor that is actually asked for must be one.

use std::cell::RefCell;
use std::rc::Rc;

/// A storage a tensor views: `data/{key}` of the archive, `numel` elements of `dtype`.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    pub key: String,
    pub dtype: TorchDtype,
    pub numel: usize,
}

/// A strided view of a storage (`torch._utils._rebuild_tensor_v2`'s arguments).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// The element types of torch's legacy typed storages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TorchDtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl TorchDtype {
    fn from_storage(name: &str) -> Option<TorchDtype> {
        let short = name.rsplit('.').next().unwrap_or(name);
        Some(match short {
            "DoubleStorage" => TorchDtype::F64,
            "FloatStorage" => TorchDtype::F32,
            "HalfStorage" => TorchDtype::F16,
            "BFloat16Storage" => TorchDtype::BF16,
            "LongStorage" => TorchDtype::I64,
            "IntStorage" => TorchDtype::I32,
            "ShortStorage" => TorchDtype::I16,
            "CharStorage" => TorchDtype::I8,
            "ByteStorage" => TorchDtype::U8,
            "BoolStorage" => TorchDtype::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            TorchDtype::F64 | TorchDtype::I64 => 8,
            TorchDtype::F32 | TorchDtype::I32 => 4,
            TorchDtype::F16 | TorchDtype::BF16 | TorchDtype::I16 => 2,
            TorchDtype::I8 | TorchDtype::U8 | TorchDtype::Bool => 1,
        }
    }
}

pub type Shared<T> = Rc<RefCell<T>>;

/// An unpickled value. Lists and dicts are shared, as pickle's memo shares them.
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Shared<Vec<Value>>),
    Dict(Shared<Vec<(Value, Value)>>),
    /// A `module.name` global not yet called.
    Global(String),
    Storage(StorageRef),
    Tensor(TensorRef),
    /// An instance of a class this reader does not interpret, by its global's name.
    Object(String),
}

impl Value {
    /// The value under string key `key` of a dict.
    pub fn get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(d) => d
                .borrow()
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v.clone()),
            _ => None,
        }
    }

    /// What kind of value this is, for error messages.
    pub fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) => "an int".into(),
            Value::Float(_) => "a float".into(),
            Value::Str(_) => "a string".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::List(_) => "a list".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Global(g) => format!("the global {g}"),
            Value::Storage(_) => "a storage".into(),
            Value::Tensor(_) => "a tensor".into(),
            Value::Object(o) => format!("a {o} object"),
        }
    }
}

/// Turns a persistent id (BINPERSID) into a value.
pub type PersistentLoad<'a> = dyn FnMut(Value) -> Result<Value, String> + 'a;

/// Unpickles `bytes`; errors name the byte offset.
pub fn unpickle(bytes: &[u8], persistent: &mut PersistentLoad) -> Result<Value, String> {
    let mut m = Machine {
        bytes,
        at: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: Vec::new(),
    };
    m.run(persistent)
        .map_err(|e| format!("pickle byte {}: {e}", m.at))
}

struct Machine<'a> {
    bytes: &'a [u8],
    at: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: Vec<Option<Value>>,
}

/// Larger memo indices than this are refused (a hostile file could ask for a huge memo).
const MAX_MEMO: usize = 1 << 24;

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or("the pickle ends early")?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<usize, String> {
        Ok(self.take(1)?[0] as usize)
    }

    fn u32(&mut self) -> Result<usize, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn u64(&mut self) -> Result<usize, String> {
        let b: [u8; 8] = self.take(8)?.try_into().expect("8 bytes");
        usize::try_from(u64::from_le_bytes(b)).map_err(|_| "a length does not fit".to_string())
    }

    fn string(&mut self, n: usize) -> Result<String, String> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.bytes[self.at..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("a GLOBAL line has no end")?;
        let s = self.string(n)?;
        self.at += 1;
        Ok(s)
    }

    fn pop(&mut self) -> Result<Value, String> {
        self.stack
            .pop()
            .ok_or_else(|| "the stack is empty".to_string())
    }

    fn top(&mut self) -> Result<&mut Value, String> {
        self.stack
            .last_mut()
            .ok_or_else(|| "the stack is empty".to_string())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or("no MARK")?;
        if mark > self.stack.len() {
            return Err("a MARK lies above the stack".into());
        }
        Ok(self.stack.split_off(mark))
    }

    fn put(&mut self, index: usize) -> Result<(), String> {
        if index >= MAX_MEMO {
            return Err(format!("memo index {index} is too large"));
        }
        let v = self.top()?.clone();
        if self.memo.len() <= index {
            self.memo.resize(index + 1, None);
        }
        self.memo[index] = Some(v);
        Ok(())
    }

    fn get(&mut self, index: usize) -> Result<(), String> {
        let v = self.memo.get(index).cloned().flatten();
        self.stack
            .push(v.ok_or_else(|| format!("memo entry {index} is unset"))?);
        Ok(())
    }

    fn run(&mut self, persistent: &mut PersistentLoad) -> Result<Value, String> {
        loop {
            let op = self.u8()? as u8;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.take(8)?; // FRAME
                }
                b'.' => return self.pop(),
                b'}' => self.stack.push(Value::Dict(Rc::default())),
                b']' | 0x8f => self.stack.push(Value::List(Rc::default())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b'(' => self.marks.push(self.stack.len()),
                b'X' => {
                    let n = self.u32()?;
                    let s = self.string(n)?;
                    self.stack.push(Value::Str(s));
                }
                0x8c => {
                    let n = self.u8()?;
                    let s = self.string(n)?;
                    self.stack.push(Value::Str(s));
                }
                0x8d => {
                    let n = self.u64()?;
                    let s = self.string(n)?;
                    self.stack.push(Value::Str(s));
                }
                b'U' | b'C' => {
                    let n = self.u8()?;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b));
                }
                b'T' | b'B' => {
                    let n = self.u32()?;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b));
                }
                0x8e => {
                    let n = self.u64()?;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b));
                }
                b'J' => {
                    let b = self.take(4)?;
                    let v = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let b = self.take(2)?;
                    let v = u16::from_le_bytes([b[0], b[1]]);
                    self.stack.push(Value::Int(i64::from(v)));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.u8()? } else { self.u32()? };
                    let b = self.take(n)?.to_vec();
                    self.stack.push(long(&b)?);
                }
                b'G' => {
                    let b: [u8; 8] = self.take(8)?.try_into().expect("8 bytes");
                    self.stack.push(Value::Float(f64::from_be_bytes(b)));
                }
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'N' => self.stack.push(Value::None),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("TUPLE on a short stack".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b'l' | 0x91 => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    self.stack.push(Value::Dict(Rc::new(RefCell::new(pairs))));
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    set_items(self.top()?, vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    set_items(self.top()?, pairs)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    append(self.top()?, vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    append(self.top()?, items)?;
                }
                b'q' => {
                    let i = self.u8()?;
                    self.put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.put(i)?;
                }
                0x94 => {
                    let i = self.memo.len();
                    self.put(i)?;
                }
                b'h' => {
                    let i = self.u8()?;
                    self.get(i)?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.get(i)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(format!("{module}.{name}")));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            self.stack.push(Value::Global(format!("{m}.{n}")))
                        }
                        _ => return Err("STACK_GLOBAL needs two strings".into()),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = call(callable, args)?;
                    self.stack.push(v);
                }
                0x81 => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let v = call(class, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    // BUILD: state set on an object; a tensor's or dict's state is metadata.
                    self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = persistent(pid)?;
                    self.stack.push(v);
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                other => return Err(format!("unsupported pickle opcode 0x{other:02x}")),
            }
        }
    }
}

fn long(b: &[u8]) -> Result<Value, String> {
    if b.len() > 8 {
        return Err("an integer wider than 64 bits".into());
    }
    let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
        0xff
    } else {
        0
    };
    let mut full = [fill; 8];
    full[..b.len()].copy_from_slice(b);
    Ok(Value::Int(i64::from_le_bytes(full)))
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("SETITEMS with an odd number of items".into());
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn set_items(target: &mut Value, items: Vec<(Value, Value)>) -> Result<(), String> {
    match target {
        Value::Dict(d) => {
            d.borrow_mut().extend(items);
            Ok(())
        }
        Value::Object(_) => Ok(()), // items of an uninterpreted mapping
        other => Err(format!("SETITEM on {}", other.kind())),
    }
}

fn append(target: &mut Value, items: Vec<Value>) -> Result<(), String> {
    match target {
        Value::List(l) => {
            l.borrow_mut().extend(items);
            Ok(())
        }
        Value::Object(_) => Ok(()),
        other => Err(format!("APPEND on {}", other.kind())),
    }
}

/// What calling a global does: only what a checkpoint of tensors needs is interpreted.
fn call(callable: Value, args: Value) -> Result<Value, String> {
    let name = match callable {
        Value::Global(g) => g,
        Value::Object(o) => return Ok(Value::Object(o)),
        other => return Err(format!("REDUCE calls {}", other.kind())),
    };
    let args = match args {
        Value::Tuple(a) => a,
        other => return Err(format!("{name} called with {}", other.kind())),
    };
    match name.as_str() {
        "collections.OrderedDict" | "builtins.dict" => Ok(Value::Dict(Rc::default())),
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => rebuild_tensor(&args),
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => args
            .into_iter()
            .next()
            .ok_or_else(|| format!("{name} without arguments")),
        "torch._tensor._rebuild_from_type_v2" => {
            let mut it = args.into_iter();
            match (it.next(), it.next(), it.next()) {
                (Some(f), Some(_), Some(a)) => call(f, a),
                _ => Err(format!("{name} needs (func, type, args, state)")),
            }
        }
        _ => Ok(Value::Object(name)),
    }
}

fn rebuild_tensor(args: &[Value]) -> Result<Value, String> {
    let [storage, offset, shape, stride, ..] = args else {
        return Err("_rebuild_tensor needs (storage, offset, size, stride)".into());
    };
    let Value::Storage(storage) = storage else {
        return Err(format!("a tensor's storage is {}", storage.kind()));
    };
    let offset = index(offset, "offset")?;
    let shape = indices(shape, "size")?;
    let stride = indices(stride, "stride")?;
    if shape.len() != stride.len() {
        return Err(format!("a tensor has size {shape:?} but stride {stride:?}"));
    }
    Ok(Value::Tensor(TensorRef {
        storage: storage.clone(),
        offset,
        shape,
        stride,
    }))
}

fn index(v: &Value, what: &str) -> Result<usize, String> {
    match v {
        Value::Int(i) => usize::try_from(*i).map_err(|_| format!("a tensor {what} of {i}")),
        other => Err(format!("a tensor {what} is {}", other.kind())),
    }
}

fn indices(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items) => items.iter().map(|i| index(i, what)).collect(),
        other => Err(format!("a tensor {what} is {}", other.kind())),
    }
}

/// The storage a zip-format persistent id `('storage', type, key, location, numel)` names.
pub fn storage_from_pid(pid: Value) -> Result<Value, String> {
    let Value::Tuple(items) = pid else {
        return Err(format!("a persistent id is {}", pid.kind()));
    };
    match items.as_slice() {
        [Value::Str(tag), Value::Global(kind), key, _location, Value::Int(numel), ..]
            if tag == "storage" =>
        {
            let dtype = TorchDtype::from_storage(kind)
                .ok_or_else(|| format!("unsupported storage type {kind}"))?;
            let key = match key {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                other => return Err(format!("a storage key is {}", other.kind())),
            };
            let numel =
                usize::try_from(*numel).map_err(|_| format!("a storage of {numel} elements"))?;
            Ok(Value::Storage(StorageRef { key, dtype, numel }))
        }
        _ => Err("a persistent id that is not a storage".into()),
    }
}
