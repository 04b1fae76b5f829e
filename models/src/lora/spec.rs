//! `--lora path[:scale]` command-line specs.

use crate::ModelError;
use std::path::PathBuf;

/// Splits `path[:scale]` (scale 1 when absent). A suffix after the last `:` that holds a path
/// separator is part of the path (`C:\loras\x.safetensors`).
pub fn parse_lora_spec(spec: &str) -> Result<(PathBuf, f32), ModelError> {
    let bad =
        |why: &str| ModelError::new(format!("LoRA spec `{spec}`: {why} (expected path[:scale])"));
    let (path, scale) = match spec.rsplit_once(':') {
        Some((path, s)) if !s.contains(['/', '\\']) => {
            let scale: f32 = s
                .trim()
                .parse()
                .map_err(|_| bad(&format!("`{s}` is not a number")))?;
            (path, scale)
        }
        _ => (spec, 1.0),
    };
    if path.is_empty() {
        return Err(bad("no path"));
    }
    if !scale.is_finite() {
        return Err(bad("the scale is not finite"));
    }
    Ok((PathBuf::from(path), scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let p = |s: &str| parse_lora_spec(s).map(|(p, s)| (p.display().to_string(), s));
        assert_eq!(
            p("a/b.safetensors").unwrap(),
            ("a/b.safetensors".into(), 1.0)
        );
        assert_eq!(
            p("a/b.safetensors:0.7").unwrap(),
            ("a/b.safetensors".into(), 0.7)
        );
        assert_eq!(
            p("x.safetensors:-1").unwrap(),
            ("x.safetensors".into(), -1.0)
        );
        assert_eq!(
            p(r"C:\l\x.safetensors").unwrap(),
            (r"C:\l\x.safetensors".into(), 1.0)
        );
        assert!(p("x.safetensors:abc").unwrap_err().message.contains("abc"));
        assert!(p(":0.5").is_err());
        assert!(p("x:inf").is_err());
    }
}
