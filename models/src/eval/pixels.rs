//! Pixel metrics of a prediction against its ground truth, as MagicBrush's
//! `evaluation/image_eval.py` computes L1 / L2: the prediction resized to the ground truth's
//! size with PIL bicubic, both `ToTensor`-scaled to [0, 1], the mean absolute / squared error
//! over C x H x W. PSNR is `10 log10(1 / L2)` on that scale; SSIM is [`super::ssim`].
//!
//! The background variants use the same definitions over background pixels only
//! ([`Region::Select`]), or PIE-Bench's convention ([`Region::Multiply`]: both images multiplied
//! by the 0/1 mask first, then the whole-image metrics).

use image::RgbImage;

use super::mask::Background;
use super::ssim::{ssim_map, SsimMap};
use crate::preprocess::resize::resize_bicubic;
use std::cell::OnceCell;

/// Where the metrics are taken.
#[derive(Clone, Copy, Debug)]
pub enum Region<'a> {
    Whole,
    /// Only the pixels the mask keeps.
    Select(&'a Background),
    /// Both images times the 0/1 mask, then the whole image.
    Multiply(&'a Background),
}

/// L1, L2, PSNR and SSIM of one pair; a value is `None` where it is undefined (PSNR of
/// identical images, SSIM of an image smaller than its window, an empty background).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PixelScores {
    pub l1: Option<f64>,
    pub l2: Option<f64>,
    pub psnr: Option<f64>,
    pub ssim: Option<f64>,
}

/// The prediction at the ground truth's size (PIL bicubic, as `img.resize(gt.size)` does).
pub fn match_size(pred: &RgbImage, gt: &RgbImage) -> RgbImage {
    if pred.dimensions() == gt.dimensions() {
        pred.clone()
    } else {
        resize_bicubic(pred, gt.width(), gt.height())
    }
}

/// The scores of `pred` (already at the ground truth's size) over `region`.
/// The SSIM map of a row's two whole images, computed on first use: the whole-image and the
/// background-selected SSIM share it (it is most of a row's pixel work).
pub struct WholeSsim<'a> {
    pred: &'a RgbImage,
    gt: &'a RgbImage,
    map: OnceCell<Option<SsimMap>>,
}

impl<'a> WholeSsim<'a> {
    pub fn new(pred: &'a RgbImage, gt: &'a RgbImage) -> Self {
        WholeSsim {
            pred,
            gt,
            map: OnceCell::new(),
        }
    }

    fn get(&self) -> Option<&SsimMap> {
        self.map
            .get_or_init(|| ssim_map(self.pred, self.gt))
            .as_ref()
    }
}

/// The scores of `region`; SSIM only when `ssim` is given (the map of the same two images).
pub fn pixel_scores(
    pred: &RgbImage,
    gt: &RgbImage,
    region: Region,
    ssim: Option<&WholeSsim>,
) -> PixelScores {
    assert_eq!(pred.dimensions(), gt.dimensions(), "sizes must match");
    match region {
        Region::Whole => {
            let mut s = whole(pred, gt);
            s.ssim = ssim.and_then(|m| m.get()).map(SsimMap::mean);
            s
        }
        Region::Multiply(bg) => {
            let (p, g) = (multiplied(pred, bg), multiplied(gt, bg));
            let mut s = whole(&p, &g);
            if ssim.is_some() {
                s.ssim = ssim_map(&p, &g).map(|m| m.mean());
            }
            s
        }
        Region::Select(bg) => {
            let (mut abs, mut sq, mut n) = (0f64, 0f64, 0usize);
            for ((p, g), &keep) in pred.pixels().zip(gt.pixels()).zip(&bg.keep) {
                if keep {
                    add_pixel(p.0, g.0, &mut abs, &mut sq);
                    n += 3;
                }
            }
            if n == 0 {
                return PixelScores::default();
            }
            let l2 = sq / n as f64;
            PixelScores {
                l1: Some(abs / n as f64),
                l2: Some(l2),
                psnr: psnr(l2),
                ssim: ssim
                    .and_then(|m| m.get())
                    .and_then(|m| m.masked_mean(&bg.keep, bg.width)),
            }
        }
    }
}

/// l1, l2 and psnr over every pixel.
fn whole(pred: &RgbImage, gt: &RgbImage) -> PixelScores {
    let (mut abs, mut sq) = (0f64, 0f64);
    for (p, g) in pred.pixels().zip(gt.pixels()) {
        add_pixel(p.0, g.0, &mut abs, &mut sq);
    }
    let n = (pred.width() as usize * pred.height() as usize * 3) as f64;
    let l2 = sq / n;
    PixelScores {
        l1: Some(abs / n),
        l2: Some(l2),
        psnr: psnr(l2),
        ssim: None,
    }
}

fn add_pixel(p: [u8; 3], g: [u8; 3], abs: &mut f64, sq: &mut f64) {
    for (a, b) in p.iter().zip(&g) {
        let d = (f64::from(*a) - f64::from(*b)) / 255.0;
        *abs += d.abs();
        *sq += d * d;
    }
}

/// `10 log10(1 / mse)` for images in [0, 1]; undefined (infinite) for identical images.
fn psnr(mse: f64) -> Option<f64> {
    (mse > 0.0).then(|| -10.0 * mse.log10())
}

fn multiplied(img: &RgbImage, bg: &Background) -> RgbImage {
    let mut out = img.clone();
    for (p, &keep) in out.pixels_mut().zip(&bg.keep) {
        if !keep {
            p.0 = [0; 3];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (RgbImage, RgbImage) {
        let a = RgbImage::from_fn(16, 12, |x, y| {
            image::Rgb([(x * 16) as u8, (y * 20) as u8, 50])
        });
        let mut b = a.clone();
        for x in 0..8 {
            b.get_pixel_mut(x, 0).0[0] = b.get_pixel(x, 0).0[0].wrapping_add(51);
        }
        (a, b)
    }

    #[test]
    fn l1_l2_psnr_by_hand() {
        let (a, b) = pair();
        let s = pixel_scores(&a, &b, Region::Whole, Some(&WholeSsim::new(&a, &b)));
        let n = 16.0 * 12.0 * 3.0;
        // 8 values differ by 51/255 = 0.2 (no wrap-around below 205 in that row)
        assert!((s.l1.unwrap() - 8.0 * 0.2 / n).abs() < 1e-12);
        assert!((s.l2.unwrap() - 8.0 * 0.04 / n).abs() < 1e-12);
        assert!((s.psnr.unwrap() + 10.0 * (8.0 * 0.04 / n).log10()).abs() < 1e-9);
        assert_eq!(pixel_scores(&a, &a, Region::Whole, None).psnr, None);
    }

    #[test]
    fn selecting_the_unchanged_rows_scores_zero_error() {
        let (a, b) = pair();
        let keep = (0..16 * 12).map(|i| i >= 16).collect();
        let bg = Background {
            width: 16,
            height: 12,
            keep,
        };
        let s = pixel_scores(&a, &b, Region::Select(&bg), Some(&WholeSsim::new(&a, &b)));
        assert_eq!(s.l1, Some(0.0));
        assert_eq!(s.psnr, None);
        let m = pixel_scores(&a, &b, Region::Multiply(&bg), Some(&WholeSsim::new(&a, &b)));
        assert_eq!(m.l1, Some(0.0));
        let empty = Background {
            width: 16,
            height: 12,
            keep: vec![false; 16 * 12],
        };
        assert_eq!(
            pixel_scores(&a, &b, Region::Select(&empty), None),
            PixelScores::default()
        );
    }
}
