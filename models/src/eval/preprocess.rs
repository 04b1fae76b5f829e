//! The reference scripts' image preprocessing, as torchvision runs it on PIL images:
//! `Resize(short, BICUBIC)` (shorter side to `short`, the other `int(short * long / short_side)`,
//! Pillow's bicubic), `CenterCrop(crop)` (offsets `int(round((size - crop) / 2))`, Python's
//! round-half-to-even), `ToTensor` (/ 255 in f32) and `Normalize(mean, std)`, giving [3, crop, crop]
//! channel-major f32.

use image::RgbImage;

use crate::preprocess::resize::resize_bicubic;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preprocess {
    pub short_side: usize,
    pub crop: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    /// MagicBrush's DINO: Resize(256), CenterCrop(224), ImageNet mean / std.
    pub const DINO: Preprocess = Preprocess {
        short_side: 256,
        crop: 224,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    /// OpenAI CLIP's: Resize(224), CenterCrop(224), CLIP mean / std.
    pub const CLIP: Preprocess = Preprocess {
        short_side: 224,
        crop: 224,
        mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
        std: [0.268_629_54, 0.261_302_6, 0.275_777_1], // the same f32 as OpenAI's digits
    };
}

/// The longest side the shorter-side resize may produce (an aspect ratio of 32:1): beyond it
/// the reference would resize to a huge strip only to crop its middle; qie refuses the image.
pub const MAX_RESIZED_SIDE: usize = 8192;

/// The resized (width, height), or why a `w x h` image cannot be preprocessed.
pub fn resized_size(w: usize, h: usize, p: &Preprocess) -> Result<(usize, usize), String> {
    if w == 0 || h == 0 {
        return Err(format!("a {w}x{h} image has no pixels"));
    }
    let (short, long) = (w.min(h), w.max(h));
    let resized_long = (p.short_side as u64 * long as u64 / short as u64) as usize;
    if resized_long > MAX_RESIZED_SIDE {
        return Err(format!(
            "a {w}x{h} image is too elongated: resizing its shorter side to {} makes the other \
             {resized_long} pixels (at most {MAX_RESIZED_SIDE})",
            p.short_side
        ));
    }
    Ok(if w <= h {
        (p.short_side, resized_long)
    } else {
        (resized_long, p.short_side)
    })
}

pub fn preprocess(img: &RgbImage, p: &Preprocess) -> Result<Vec<f32>, String> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (nw, nh) = resized_size(w, h, p)?;
    let resized = if (nw, nh) == (w, h) {
        img.clone()
    } else {
        resize_bicubic(img, nw as u32, nh as u32)
    };
    let top = round_half_even((nh - p.crop) as f64 / 2.0);
    let left = round_half_even((nw - p.crop) as f64 / 2.0);
    let mut out = vec![0f32; 3 * p.crop * p.crop];
    for c in 0..3 {
        let plane = &mut out[c * p.crop * p.crop..(c + 1) * p.crop * p.crop];
        for y in 0..p.crop {
            for x in 0..p.crop {
                let v = resized.get_pixel((left + x) as u32, (top + y) as u32).0[c];
                plane[y * p.crop + x] = (f32::from(v) / 255.0 - p.mean[c]) / p.std[c];
            }
        }
    }
    Ok(out)
}

/// Python's `round` for non-negative halves and integers.
fn round_half_even(v: f64) -> usize {
    let floor = v.floor();
    let frac = v - floor;
    let f = floor as usize;
    if frac > 0.5 || (frac == 0.5 && f % 2 == 1) {
        f + 1
    } else {
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_offsets_round_half_to_even() {
        assert_eq!(round_half_even(16.5), 16);
        assert_eq!(round_half_even(17.5), 18);
        assert_eq!(round_half_even(3.0), 3);
    }

    #[test]
    fn output_is_channel_major_at_the_crop_size() {
        let img = RgbImage::from_pixel(300, 224, image::Rgb([255, 0, 0]));
        let v = preprocess(&img, &Preprocess::CLIP).unwrap();
        assert_eq!(v.len(), 3 * 224 * 224);
        let red = (1.0 - Preprocess::CLIP.mean[0]) / Preprocess::CLIP.std[0];
        assert!((v[0] - red).abs() < 1e-6);
        let green = (0.0 - Preprocess::CLIP.mean[1]) / Preprocess::CLIP.std[1];
        assert!((v[224 * 224] - green).abs() < 1e-6);
    }

    #[test]
    fn elongated_and_empty_images_are_refused() {
        let strip = RgbImage::new(1, 100);
        let e = preprocess(&strip, &Preprocess::DINO).unwrap_err();
        assert!(e.contains("1x100") && e.contains("elongated"), "{e}");
        assert!(preprocess(&RgbImage::new(0, 5), &Preprocess::DINO).is_err());
    }
}
