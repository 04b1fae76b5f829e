//! Parsing of `--shapes name=1x24x64,name2=f32:1x7` and `--static name=<json>` arguments.

use qie_ir::dsl::StaticValue;
use qie_ir::{DType, TensorType};

/// `name=DIMS` or `name=DTYPE:DIMS`, DIMS like `1x24x64` (`scalar` for rank 0). The dtype defaults to
/// the one the model declares for that input.
pub struct ShapeSpec {
    pub name: String,
    pub dtype: Option<DType>,
    pub dims: Vec<usize>,
}

pub fn parse_shapes(text: &str) -> Result<Vec<ShapeSpec>, String> {
    let mut specs = Vec::new();
    for item in split_top_level(text) {
        let (name, rest) = item.split_once('=').ok_or_else(|| {
            format!("--shapes: `{item}` is not NAME=DIMS (e.g. hidden_states=1x24x64)")
        })?;
        let (dtype, dims_text) = match rest.split_once(':') {
            Some((d, dims)) => {
                let dtype = DType::parse(d.trim())
                    .ok_or_else(|| format!("--shapes: unknown dtype `{d}` for `{name}` (f32, bf16, f16, i32, i64, bool)"))?;
                (Some(dtype), dims)
            }
            None => (None, rest),
        };
        let dims = parse_dims(dims_text).map_err(|e| format!("--shapes: `{name}`: {e}"))?;
        specs.push(ShapeSpec {
            name: name.trim().to_string(),
            dtype,
            dims,
        });
    }
    Ok(specs)
}

fn split_top_level(text: &str) -> Vec<&str> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

fn parse_dims(text: &str) -> Result<Vec<usize>, String> {
    let text = text.trim();
    if text == "scalar" || text.is_empty() {
        return Ok(Vec::new());
    }
    text.split('x')
        .map(|d| {
            d.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{text}` is not a list of sizes like 1x24x64"))
        })
        .collect()
}

pub fn tensor_type(spec: &ShapeSpec, declared: Option<DType>) -> TensorType {
    TensorType::new(spec.dtype.or(declared).unwrap_or(DType::F32), &spec.dims)
}

/// `name=<json>`: ints, floats, bools and nested lists.
pub fn parse_static(text: &str) -> Result<(String, StaticValue), String> {
    let (name, json) = text.split_once('=').ok_or_else(|| {
        format!("--static: `{text}` is not NAME=JSON (e.g. img_shapes=[[1,4,6]])")
    })?;
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("--static {name}: invalid JSON: {e}"))?;
    Ok((
        name.trim().to_string(),
        json_to_static(&value).map_err(|e| format!("--static {name}: {e}"))?,
    ))
}

pub fn json_to_static(v: &serde_json::Value) -> Result<StaticValue, String> {
    match v {
        serde_json::Value::Bool(b) => Ok(StaticValue::Bool(*b)),
        serde_json::Value::Number(n) => Ok(match n.as_i64() {
            Some(i) => StaticValue::Int(i),
            None => StaticValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        }),
        serde_json::Value::Array(items) => Ok(StaticValue::List(
            items.iter().map(json_to_static).collect::<Result<_, _>>()?,
        )),
        other => Err(format!(
            "unsupported value {other} (use numbers, booleans and lists)"
        )),
    }
}
