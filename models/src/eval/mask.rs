//! Background masks: `Image.open(m).convert("L").resize(gt.size, Image.NEAREST)`, background =
//! pixels >= 128 (or < 128 with `invert`), reproduced byte for byte (Pillow's ITU-R 601 luma in
//! fixed point, and its nearest-neighbour scaling, which steps the source coordinate by
//! accumulating the scale factor in f64).

use std::path::Path;

use image::RgbImage;

use crate::preprocess::image_io::load_rgb;
use crate::ModelError;

/// Which pixels of a `width x height` image are background, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Background {
    pub width: usize,
    pub height: usize,
    pub keep: Vec<bool>,
}

impl Background {
    pub fn count(&self) -> usize {
        self.keep.iter().filter(|&&k| k).count()
    }
}

/// Reads the mask file at `path` and maps it onto a `width x height` ground truth.
pub fn load_background(
    path: &Path,
    width: u32,
    height: u32,
    invert: bool,
) -> Result<Background, ModelError> {
    let mask = load_rgb(path)?;
    Ok(background_of(&mask, width, height, invert))
}

/// [`load_background`] for a decoded mask.
pub fn background_of(mask: &RgbImage, width: u32, height: u32, invert: bool) -> Background {
    let xs = nearest_sources(mask.width(), width);
    let ys = nearest_sources(mask.height(), height);
    if xs.is_empty() || ys.is_empty() {
        return Background {
            width: width as usize,
            height: height as usize,
            keep: vec![false; width as usize * height as usize],
        };
    }
    let mut keep = Vec::with_capacity(xs.len() * ys.len());
    for &y in &ys {
        for &x in &xs {
            let bright = pil_luma(mask.get_pixel(x, y).0) >= 128;
            keep.push(bright != invert);
        }
    }
    Background {
        width: width as usize,
        height: height as usize,
        keep,
    }
}

/// Pillow's RGB -> L: (R 19595 + G 38470 + B 7471 + 0x8000) >> 16.
pub fn pil_luma([r, g, b]: [u8; 3]) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

/// Source index of every output index for a nearest resize from `input` to `output` pixels
/// (Pillow's `ImagingScaleAffine`: start at scale / 2, add scale per pixel, truncate).
fn nearest_sources(input: u32, output: u32) -> Vec<u32> {
    if input == 0 {
        return Vec::new(); // a decoded image always has pixels; an empty mask keeps nothing
    }
    if input == output {
        return (0..output).collect();
    }
    let scale = f64::from(input) / f64::from(output);
    let mut at = scale * 0.5;
    (0..output)
        .map(|_| {
            let i = (at as u32).min(input - 1);
            at += scale;
            i
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luma_matches_pillow_on_greys_and_primaries() {
        for g in [0u8, 1, 127, 128, 254, 255] {
            assert_eq!(pil_luma([g, g, g]), g);
        }
        assert_eq!(pil_luma([255, 0, 0]), 76);
        assert_eq!(pil_luma([0, 255, 0]), 150);
        assert_eq!(pil_luma([0, 0, 255]), 29);
    }

    #[test]
    fn nearest_sources_downscale_and_upscale() {
        assert_eq!(nearest_sources(4, 2), vec![1, 3]);
        assert_eq!(nearest_sources(2, 4), vec![0, 0, 1, 1]);
        assert_eq!(nearest_sources(3, 3), vec![0, 1, 2]);
    }

    #[test]
    fn invert_flips_every_pixel() {
        let mask = RgbImage::from_fn(4, 4, |x, _| image::Rgb([if x < 2 { 255 } else { 0 }; 3]));
        let bg = background_of(&mask, 4, 4, false);
        let inv = background_of(&mask, 4, 4, true);
        assert_eq!(bg.count(), 8);
        assert!(bg.keep.iter().zip(&inv.keep).all(|(a, b)| a != b));
    }
}
