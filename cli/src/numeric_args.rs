//! clap value parsers for numeric flags. A NaN, an infinity or a value out of range is refused
//! while the arguments are parsed, so clap's message names the flag
//! (`invalid value 'NaN' for '--cfg <CFG>': not a finite number`) and nothing has run yet.
//! Interactive commands (`/cfg X`) use the same parsers.

use qie_models::pipeline::EditSettings;

/// A finite number >= 0 (guidance scales, tolerances).
pub fn non_negative_f32(text: &str) -> Result<f32, String> {
    let v = finite(text)?;
    if v < 0.0 {
        return Err(format!("{v} is negative"));
    }
    Ok(v as f32)
}

/// A finite number >= 0, in f64 (rel-L2 tolerances).
pub fn non_negative_f64(text: &str) -> Result<f64, String> {
    let v = finite(text)?;
    if v < 0.0 {
        return Err(format!("{v} is negative"));
    }
    Ok(v)
}

/// A finite number (LoRA alpha).
pub fn finite_f64(text: &str) -> Result<f64, String> {
    finite(text)
}

/// A finite number > 0 (learning rates).
pub fn positive_f64(text: &str) -> Result<f64, String> {
    let v = finite(text)?;
    if v <= 0.0 {
        return Err(format!("{v} is not > 0"));
    }
    Ok(v)
}

/// A noise level in [0, 1] (one of `--sigmas`).
pub fn sigma(text: &str) -> Result<f32, String> {
    let v = finite(text)?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{v} is not a noise level in [0, 1]"));
    }
    Ok(v as f32)
}

/// A whole number >= 1 (counts, sizes, areas).
pub fn positive(text: &str) -> Result<usize, String> {
    match whole(text)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// A denoising step count in 1..=EditSettings::MAX_STEPS.
pub fn steps(text: &str) -> Result<usize, String> {
    let n = positive(text)?;
    if n > EditSettings::MAX_STEPS {
        return Err(format!("{n} steps; at most {}", EditSettings::MAX_STEPS));
    }
    Ok(n)
}

/// A seed: a whole number in 0..=2^64-1.
pub fn seed(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<u64>()
        .map_err(|_| format!("`{text}` is not a whole number in 0..=18446744073709551615"))
}

fn finite(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if !v.is_finite() {
        return Err("not a finite number".into());
    }
    Ok(v)
}

fn whole(text: &str) -> Result<usize, String> {
    text.trim()
        .parse::<usize>()
        .map_err(|_| format!("`{text}` is not a whole number >= 0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_finite_and_out_of_range() {
        for bad in ["NaN", "nan", "inf", "-inf", "-1", "x", ""] {
            assert!(non_negative_f32(bad).is_err(), "{bad}");
            assert!(non_negative_f64(bad).is_err(), "{bad}");
        }
        assert_eq!(non_negative_f32(" 4.5 ").unwrap(), 4.5);
        assert_eq!(non_negative_f32("0").unwrap(), 0.0);
        for bad in ["1.5", "-0.1", "NaN"] {
            assert!(sigma(bad).is_err(), "{bad}");
        }
        assert_eq!(sigma("0.25").unwrap(), 0.25);
        for bad in ["0", "-3", "2.5", "1e3"] {
            assert!(positive(bad).is_err(), "{bad}");
        }
        assert!(steps("10001").is_err());
        assert_eq!(steps("40").unwrap(), 40);
        for bad in ["-1", "1.5", "nan", "18446744073709551616"] {
            assert!(seed(bad).is_err(), "{bad}");
        }
        assert_eq!(seed("18446744073709551615").unwrap(), u64::MAX);
    }
}
