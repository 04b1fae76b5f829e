//! The reference scripts' image preprocessing, as torchvision / transformers' PIL image
//! processors run it on PIL images: a resize with Pillow's bicubic, either `Resize(short)`
//! (shorter side to `short`, the other `int(short * long / short_side)`) or to a fixed
//! `(width, height)` (`Resize((h, w))`, SigLIP's processor, DreamSim); an optional
//! `CenterCrop(crop)` (offsets `int(round((size - crop) / 2))`, Python's round-half-to-even);
//! `ToTensor` (/ 255 in f32) and `Normalize(mean, std)`, giving [3, H, W] channel-major f32.

use image::RgbImage;

use crate::preprocess::resize::resize_bicubic;

/// How an image is resized before the crop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resize {
    /// The shorter side to this many pixels, the aspect ratio kept.
    Shorter(usize),
    /// Exactly this size, the aspect ratio not kept.
    Exact { width: usize, height: usize },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preprocess {
    pub resize: Resize,
    /// A centred square crop of this side after the resize.
    pub crop: Option<usize>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// ImageNet's mean and std (torchvision, timm's IMAGENET_DEFAULT_*).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// OpenAI CLIP's mean and std (the same f32 as OpenAI's digits).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

impl Preprocess {
    /// MagicBrush's DINO: Resize(256), CenterCrop(224), ImageNet mean / std.
    pub const DINO: Preprocess = Preprocess {
        resize: Resize::Shorter(256),
        crop: Some(224),
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    };
    /// OpenAI CLIP's: Resize(224), CenterCrop(224), CLIP mean / std.
    pub const CLIP: Preprocess = Preprocess {
        resize: Resize::Shorter(224),
        crop: Some(224),
        mean: CLIP_MEAN,
        std: CLIP_STD,
    };

    /// An exact resize to `side` x `side`, ToTensor only (pixels in [0, 1]): DreamSim's
    /// `Resize((224, 224), BICUBIC)`, each tower normalising afterwards.
    pub const fn unit_square(side: usize) -> Preprocess {
        Preprocess {
            resize: Resize::Exact {
                width: side,
                height: side,
            },
            crop: None,
            mean: [0.0; 3],
            std: [1.0; 3],
        }
    }

    /// The (width, height) of the preprocessed pixels.
    pub fn out_size(&self) -> (usize, usize) {
        match (self.crop, self.resize) {
            (Some(c), _) => (c, c),
            (None, Resize::Exact { width, height }) => (width, height),
            (None, Resize::Shorter(s)) => (s, s), // only square inputs are cropless here
        }
    }

    /// The side of square preprocessed pixels, or None when they are not square.
    pub fn square_side(&self) -> Option<usize> {
        let (w, h) = self.out_size();
        (w == h && (self.crop.is_some() || matches!(self.resize, Resize::Exact { .. })))
            .then_some(w)
    }
}

/// The longest side the shorter-side resize may produce (an aspect ratio of 32:1): beyond it
/// the reference would resize to a huge strip only to crop its middle; qie refuses the image.
pub const MAX_RESIZED_SIDE: usize = 8192;

/// The resized (width, height), or why a `w x h` image cannot be preprocessed.
pub fn resized_size(w: usize, h: usize, p: &Preprocess) -> Result<(usize, usize), String> {
    if w == 0 || h == 0 {
        return Err(format!("a {w}x{h} image has no pixels"));
    }
    let short_side = match p.resize {
        Resize::Exact { width, height } => return Ok((width, height)),
        Resize::Shorter(s) => s,
    };
    let (short, long) = (w.min(h), w.max(h));
    let resized_long = (short_side as u64 * long as u64 / short as u64) as usize;
    if resized_long > MAX_RESIZED_SIDE {
        return Err(format!(
            "a {w}x{h} image is too elongated: resizing its shorter side to {short_side} makes \
             the other {resized_long} pixels (at most {MAX_RESIZED_SIDE})"
        ));
    }
    Ok(if w <= h {
        (short_side, resized_long)
    } else {
        (resized_long, short_side)
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
    let (ow, oh) = match p.crop {
        Some(c) => (c.min(nw), c.min(nh)),
        None => (nw, nh),
    };
    if (ow, oh) != p.out_size() {
        return Err(format!(
            "a {w}x{h} image resizes to {nw}x{nh}, smaller than the {ow}x{oh} crop"
        ));
    }
    let top = round_half_even((nh - oh) as f64 / 2.0);
    let left = round_half_even((nw - ow) as f64 / 2.0);
    let mut out = vec![0f32; 3 * ow * oh];
    for c in 0..3 {
        let plane = &mut out[c * ow * oh..(c + 1) * ow * oh];
        for y in 0..oh {
            for x in 0..ow {
                let v = resized.get_pixel((left + x) as u32, (top + y) as u32).0[c];
                plane[y * ow + x] = (f32::from(v) / 255.0 - p.mean[c]) / p.std[c];
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

    #[test]
    fn exact_resizes_ignore_the_aspect_ratio() {
        let p = Preprocess {
            resize: Resize::Exact {
                width: 32,
                height: 32,
            },
            crop: None,
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        let img = RgbImage::from_pixel(100, 7, image::Rgb([255, 255, 255]));
        let v = preprocess(&img, &p).unwrap();
        assert_eq!(v.len(), 3 * 32 * 32);
        assert!(v.iter().all(|x| (x - 1.0).abs() < 1e-6));
        assert_eq!(p.square_side(), Some(32));
    }
}
