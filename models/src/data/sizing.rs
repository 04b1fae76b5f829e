//! Training sizes as the checkpoint expects them: every image (target and inputs) at the
//! flavour's VAE area and its own aspect, multiples of 32 ([`calculate_dimensions`], the edit
//! pipeline's rule), capped by `--max-pixels`. With buckets, each image is first snapped to the
//! nearest of a fixed list of aspect ratios at that area (centre crop), so a mixed dataset forms
//! batches of equal latent grids.

use crate::preprocess::{calculate_dimensions, resize_lanczos};
use image::RgbImage;
use serde::{Deserialize, Serialize};

/// How images are sized for training (recorded in cache manifests).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SizeRule {
    /// Pixel area each image is VAE-encoded at (the flavour's VAE area, 1024²).
    pub area: usize,
    /// Upper bound on width x height after resizing.
    pub max_pixels: Option<usize>,
    /// Snap aspect ratios to [`BUCKET_RATIOS`].
    pub buckets: bool,
}

/// Bucket aspect ratios (width:height), landscape and portrait.
pub const BUCKET_RATIOS: [(u32, u32); 13] = [
    (1, 1),
    (5, 4),
    (4, 5),
    (4, 3),
    (3, 4),
    (3, 2),
    (2, 3),
    (16, 9),
    (9, 16),
    (2, 1),
    (1, 2),
    (21, 9),
    (9, 21),
];

impl SizeRule {
    /// The area actually used: the VAE area, or less under `max_pixels`.
    pub fn effective_area(&self) -> usize {
        self.max_pixels.map_or(self.area, |m| self.area.min(m))
    }

    /// (width, height) an image of `width` x `height` is trained at.
    pub fn size_for(&self, width: u32, height: u32) -> (u32, u32) {
        let ratio = match self.buckets {
            true => {
                let (bw, bh) = nearest_ratio(width, height);
                bw as f64 / bh as f64
            }
            false => width as f64 / height.max(1) as f64,
        };
        self.size_at_ratio(ratio)
    }

    fn size_at_ratio(&self, ratio: f64) -> (u32, u32) {
        let (mut w, mut h) = calculate_dimensions(self.effective_area() as f64, ratio);
        // Rounding to 32 can land just above the cap; step the longer side down until it fits.
        if let Some(max) = self.max_pixels {
            while (w as usize) * (h as usize) > max && w.max(h) > 32 {
                if w >= h {
                    w -= 32;
                } else {
                    h -= 32;
                }
            }
        }
        (w.max(32), h.max(32))
    }

    /// The image at its training size: Lanczos resize, after a centre crop to the bucket's
    /// aspect when buckets are on.
    pub fn apply(&self, img: &RgbImage) -> RgbImage {
        let (w, h) = self.size_for(img.width(), img.height());
        let cropped;
        let source = if self.buckets {
            cropped = centre_crop_to_aspect(img, w, h);
            &cropped
        } else {
            img
        };
        resize_lanczos(source, w, h)
    }

    /// The image cropped (not resized) to the aspect it will be trained at: what the VL model
    /// should see so its view matches the VAE's.
    pub fn crop(&self, img: &RgbImage) -> RgbImage {
        if !self.buckets {
            return img.clone();
        }
        let (w, h) = self.size_for(img.width(), img.height());
        centre_crop_to_aspect(img, w, h)
    }
}

/// The bucket ratio closest to `width:height` on a log scale.
pub fn nearest_ratio(width: u32, height: u32) -> (u32, u32) {
    let r = (width.max(1) as f64 / height.max(1) as f64).ln();
    *BUCKET_RATIOS
        .iter()
        .min_by(|a, b| {
            let da = ((a.0 as f64 / a.1 as f64).ln() - r).abs();
            let db = ((b.0 as f64 / b.1 as f64).ln() - r).abs();
            da.total_cmp(&db)
        })
        .expect("bucket list is not empty")
}

/// The largest centred window of `img` with aspect `w:h`.
pub fn centre_crop_to_aspect(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (iw, ih) = img.dimensions();
    // Compare iw/ih with w/h without floats.
    let (cw, ch) = if (iw as u64) * (h as u64) > (ih as u64) * (w as u64) {
        (((ih as u64 * w as u64) / h as u64).max(1) as u32, ih)
    } else {
        (iw, ((iw as u64 * h as u64) / w as u64).max(1) as u32)
    };
    image::imageops::crop_imm(img, (iw - cw) / 2, (ih - ch) / 2, cw, ch).to_image()
}

/// The latent grid `[1, h/16, w/16]` of a training size (one frame, 2x2 patches of /8 latents).
pub fn latent_grid((w, h): (u32, u32)) -> [usize; 3] {
    [1, h as usize / 16, w as usize / 16]
}

#[cfg(test)]
mod tests {
    use super::*;

    const AREA: usize = 1024 * 1024;

    #[test]
    fn sizes_follow_the_pipeline_rule() {
        let rule = SizeRule {
            area: AREA,
            max_pixels: None,
            buckets: false,
        };
        assert_eq!(rule.size_for(1024, 1024), (1024, 1024));
        assert_eq!(
            rule.size_for(800, 600),
            calculate_dimensions(AREA as f64, 800. / 600.)
        );
        let (w, h) = rule.size_for(3000, 1000);
        assert!(w % 32 == 0 && h % 32 == 0);
        assert_eq!(latent_grid((w, h)), [1, h as usize / 16, w as usize / 16]);
        // An absurd aspect still gives a usable size.
        assert!(rule.size_for(100_000, 1).1 >= 32);
    }

    #[test]
    fn the_cap_holds() {
        let rule = SizeRule {
            area: AREA,
            max_pixels: Some(512 * 512),
            buckets: false,
        };
        for (w, h) in [(1000, 1000), (1920, 1080), (777, 1333), (4000, 900)] {
            let (tw, th) = rule.size_for(w, h);
            assert!((tw * th) as usize <= 512 * 512, "{w}x{h} -> {tw}x{th}");
            assert!(tw % 32 == 0 && th % 32 == 0);
        }
    }

    #[test]
    fn buckets_snap_and_crop() {
        let rule = SizeRule {
            area: AREA,
            max_pixels: None,
            buckets: true,
        };
        assert_eq!(nearest_ratio(1000, 990), (1, 1));
        assert_eq!(nearest_ratio(1920, 1080), (16, 9));
        assert_eq!(nearest_ratio(600, 1210), (1, 2));
        // Two nearby aspects land in one bucket.
        assert_eq!(rule.size_for(1000, 760), rule.size_for(1024, 770));
        let img = RgbImage::from_fn(300, 100, |x, _| image::Rgb([x as u8, 0, 0]));
        let c = centre_crop_to_aspect(&img, 2, 1);
        assert_eq!(c.dimensions(), (200, 100));
        assert_eq!(c.get_pixel(0, 0)[0], 50);
        let out = rule.apply(&img);
        assert_eq!(out.dimensions(), rule.size_for(300, 100));
    }
}
