//! The few protobuf messages of a TensorBoard event file, encoded and decoded by hand
//! (tensorflow/core/util/event.proto, framework/summary.proto):
//! Event { wall_time = 1 (double), step = 2 (int64), file_version = 3 (string), summary = 5 }
//! Summary { repeated value = 1 }, Value { tag = 1, simple_value = 2 (float), image = 4 }
//! Image { height = 1, width = 2, colorspace = 3 (int32), encoded_image_string = 4 (bytes) }.

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub wall_time: f64,
    pub step: i64,
    pub file_version: Option<String>,
    pub values: Vec<Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub tag: String,
    pub kind: ValueKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ValueKind {
    Scalar(f32),
    Image(Image),
    /// A value kind this reader does not decode (histograms, tensors...).
    Other,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub height: i32,
    pub width: i32,
    /// 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA.
    pub colorspace: i32,
    /// PNG bytes.
    pub encoded: Vec<u8>,
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const BYTES: u8 = 2;
const FIXED32: u8 = 5;

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, ((field as u64) << 3) | wire as u64);
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, BYTES);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

impl Event {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        key(&mut out, 1, FIXED64);
        out.extend_from_slice(&self.wall_time.to_le_bytes());
        if self.step != 0 {
            key(&mut out, 2, VARINT);
            varint(&mut out, self.step as u64);
        }
        if let Some(v) = &self.file_version {
            bytes_field(&mut out, 3, v.as_bytes());
        }
        if !self.values.is_empty() {
            let mut summary = Vec::new();
            for v in &self.values {
                bytes_field(&mut summary, 1, &v.encode());
            }
            bytes_field(&mut out, 5, &summary);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Event, String> {
        let mut event = Event {
            wall_time: 0.0,
            step: 0,
            file_version: None,
            values: Vec::new(),
        };
        for field in Fields::new(bytes) {
            match field? {
                (1, Field::Fixed64(v)) => event.wall_time = f64::from_bits(v),
                (2, Field::Varint(v)) => event.step = v as i64,
                (3, Field::Bytes(b)) => event.file_version = Some(utf8(b, "file_version")?),
                (5, Field::Bytes(summary)) => {
                    for f in Fields::new(summary) {
                        if let (1, Field::Bytes(v)) = f? {
                            event.values.push(Value::decode(v)?);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(event)
    }
}

impl Value {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        bytes_field(&mut out, 1, self.tag.as_bytes());
        match &self.kind {
            ValueKind::Scalar(v) => {
                key(&mut out, 2, FIXED32);
                out.extend_from_slice(&v.to_le_bytes());
            }
            ValueKind::Image(img) => {
                let mut m = Vec::new();
                for (field, v) in [(1, img.height), (2, img.width), (3, img.colorspace)] {
                    key(&mut m, field, VARINT);
                    varint(&mut m, v as u64);
                }
                bytes_field(&mut m, 4, &img.encoded);
                bytes_field(&mut out, 4, &m);
            }
            ValueKind::Other => {}
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Value, String> {
        let mut tag = String::new();
        let mut kind = ValueKind::Other;
        for field in Fields::new(bytes) {
            match field? {
                (1, Field::Bytes(b)) => tag = utf8(b, "tag")?,
                (2, Field::Fixed32(v)) => kind = ValueKind::Scalar(f32::from_bits(v)),
                (4, Field::Bytes(m)) => {
                    let mut img = Image {
                        height: 0,
                        width: 0,
                        colorspace: 0,
                        encoded: Vec::new(),
                    };
                    for f in Fields::new(m) {
                        match f? {
                            (1, Field::Varint(v)) => img.height = v as i32,
                            (2, Field::Varint(v)) => img.width = v as i32,
                            (3, Field::Varint(v)) => img.colorspace = v as i32,
                            (4, Field::Bytes(b)) => img.encoded = b.to_vec(),
                            _ => {}
                        }
                    }
                    kind = ValueKind::Image(img);
                }
                _ => {}
            }
        }
        Ok(Value { tag, kind })
    }
}

fn utf8(b: &[u8], what: &str) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| format!("`{what}` is not UTF-8"))
}

enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Iterates (field number, value) over one message's bytes.
struct Fields<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Fields { bytes, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.bytes.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= ((b & 0x7F) as u64) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or("field runs past the end of its message")?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Field<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.bytes.len() {
            return None;
        }
        let item = (|| {
            let k = self.varint()?;
            let field = (k >> 3) as u32;
            let value = match (k & 7) as u8 {
                VARINT => Field::Varint(self.varint()?),
                FIXED64 => Field::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().unwrap())),
                BYTES => {
                    let n = self.varint()? as usize;
                    Field::Bytes(self.take(n)?)
                }
                FIXED32 => Field::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().unwrap())),
                w => return Err(format!("unsupported wire type {w}")),
            };
            Ok((field, value))
        })();
        if item.is_err() {
            self.pos = self.bytes.len();
        }
        Some(item)
    }
}
