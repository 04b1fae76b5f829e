//! `--img-shapes 1x4x6,1x6x4`: frames x height x width per image, in patches (target first).

use crate::ModelError;

/// (frames, height, width) of one image in latent patches.
pub type ImgShape = [usize; 3];

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
    Ok(shapes)
}

/// Number of tokens the images occupy in the packed sequence.
pub fn token_count(shapes: &[ImgShape]) -> usize {
    shapes.iter().map(|s| s[0] * s[1] * s[2]).sum()
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
}
