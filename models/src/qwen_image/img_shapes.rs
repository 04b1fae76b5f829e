//! `--img-shapes 1x4x6,1x6x4`: frames x height x width per image, in patches (target first).

use crate::ModelError;

/// (frames, height, width) of one image in latent patches.
pub type ImgShape = [usize; 3];

/// The most image tokens a sequence may hold: 2^20, a 16384² target (plus references) at 16
/// pixels per token, far beyond any released checkpoint's sizes. Larger counts are typos, and
/// their RoPE tables and activations would not fit in memory anyway.
pub const MAX_IMAGE_TOKENS: usize = 1 << 20;

pub fn parse_img_shapes(text: &str) -> Result<Vec<ImgShape>, ModelError> {
    let bad = |part: &str| {
        ModelError::new(format!(
            "--img-shapes: `{part}` is not FxHxW (e.g. `1x32x32,1x32x48`: frames x height x width in patches per image)"
        ))
    };
    let mut shapes = Vec::new();
    for part in text.split(',').map(str::trim) {
        let dims: Vec<usize> = part
            .split('x')
            .map(|d| d.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| bad(part))?;
        match dims.as_slice() {
            [f, h, w] if *f > 0 && *h > 0 && *w > 0 => shapes.push([*f, *h, *w]),
            _ => return Err(bad(part)),
        }
    }
    if shapes.is_empty() {
        return Err(bad(text));
    }
    checked_token_count(&shapes).map_err(|e| ModelError::new(format!("--img-shapes: {e}")))?;
    Ok(shapes)
}

/// Number of tokens the images occupy in the packed sequence, or why it is out of range (an
/// overflow or more than [`MAX_IMAGE_TOKENS`]).
pub fn checked_token_count(shapes: &[ImgShape]) -> Result<usize, String> {
    let mut total = 0usize;
    for s in shapes {
        let [f, h, w] = *s;
        let too_many = || {
            format!(
                "`{f}x{h}x{w}` makes more than {MAX_IMAGE_TOKENS} image tokens in all (the limit)"
            )
        };
        let tokens = f
            .checked_mul(h)
            .and_then(|n| n.checked_mul(w))
            .ok_or_else(too_many)?;
        total = total
            .checked_add(tokens)
            .filter(|&t| t <= MAX_IMAGE_TOKENS)
            .ok_or_else(too_many)?;
    }
    Ok(total)
}

/// Number of tokens the images occupy in the packed sequence. Saturates instead of wrapping, so
/// an absurd shape that did not come through [`parse_img_shapes`] fails the callers' token-count
/// checks instead of matching a wrapped-around tensor size.
pub fn token_count(shapes: &[ImgShape]) -> usize {
    shapes
        .iter()
        .map(|s| s[0].saturating_mul(s[1]).saturating_mul(s[2]))
        .fold(0, usize::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_several_images() {
        assert_eq!(
            parse_img_shapes("1x4x6, 1x6x4").unwrap(),
            vec![[1, 4, 6], [1, 6, 4]]
        );
        assert_eq!(token_count(&[[1, 4, 6], [1, 6, 4]]), 48);
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "1x4", "1x4x0", "axbxc", "1x2x3,"] {
            let err = parse_img_shapes(bad).unwrap_err().to_string();
            assert!(err.contains("--img-shapes"), "{bad}: {err}");
        }
    }

    #[test]
    fn rejects_overflowing_and_huge_token_counts() {
        for (bad, part) in [
            ("99999999x99999999x9999999", "99999999x99999999x9999999"),
            ("1x4x4,18446744073709551615x2x1", "18446744073709551615x2x1"),
            ("1x1024x1024,1x1x1", "1x1x1"),
        ] {
            let err = parse_img_shapes(bad).unwrap_err().to_string();
            assert!(
                err.contains("--img-shapes") && err.contains(part) && err.contains("limit"),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            parse_img_shapes("1x1024x1024").unwrap(),
            vec![[1, 1024, 1024]]
        );
    }

    #[test]
    fn token_count_saturates() {
        assert_eq!(token_count(&[[usize::MAX, 2, 1], [1, 1, 1]]), usize::MAX);
    }
}
