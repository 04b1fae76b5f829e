//! SSIM as scikit-image's `structural_similarity(x, y, data_range=1, gaussian_weights=True,
//! sigma=1.5, use_sample_covariance=False, channel_axis=2)` computes it on images scaled to
//! [0, 1] (the settings of Wang et al. 2004; torchmetrics' default SSIM agrees with it). The
//! 11 x 11 Gaussian window (radius `int(3.5 * 1.5 + 0.5)` = 5) only ever covers image pixels:
//! the reference filters the padded image and then drops a 5-pixel border, so the padding never
//! reaches the mean; here the border is simply never computed.

use image::RgbImage;

/// Window radius and Gaussian sigma.
const RADIUS: usize = 5;
const SIGMA: f64 = 1.5;
const C1: f64 = 0.01 * 0.01;
const C2: f64 = 0.03 * 0.03;

/// The SSIM map of each channel over the valid region: `(height - 10) x (width - 10)` values a
/// channel, row-major; pixel (r, c) of the map is image pixel (r + 5, c + 5).
#[derive(Clone, Debug)]
pub struct SsimMap {
    pub width: usize,
    pub height: usize,
    pub channels: [Vec<f64>; 3],
}

impl SsimMap {
    /// Mean over every channel and position (the reference's `mssim`).
    pub fn mean(&self) -> f64 {
        let n = (self.width * self.height * 3) as f64;
        self.channels.iter().flatten().sum::<f64>() / n
    }

    /// Mean over the positions whose image pixel is selected by `keep` (row-major over the whole
    /// image), all channels; `None` when none is.
    pub fn masked_mean(&self, keep: &[bool], image_width: usize) -> Option<f64> {
        let (mut sum, mut n) = (0f64, 0usize);
        for r in 0..self.height {
            for c in 0..self.width {
                if keep[(r + RADIUS) * image_width + c + RADIUS] {
                    let at = r * self.width + c;
                    sum += self.channels.iter().map(|ch| ch[at]).sum::<f64>();
                    n += 3;
                }
            }
        }
        (n > 0).then(|| sum / n as f64)
    }
}

/// The map for two images of one size; `None` when a side is shorter than the 11-pixel window
/// (the reference refuses such images).
pub fn ssim_map(x: &RgbImage, y: &RgbImage) -> Option<SsimMap> {
    assert_eq!(
        x.dimensions(),
        y.dimensions(),
        "SSIM of images of different sizes"
    );
    let (w, h) = (x.width() as usize, x.height() as usize);
    let win = 2 * RADIUS + 1;
    if w < win || h < win {
        return None;
    }
    let weights = gaussian_weights();
    let (ow, oh) = (w - 2 * RADIUS, h - 2 * RADIUS);
    let channels = [0, 1, 2].map(|ch| {
        let plane = |img: &RgbImage| -> Vec<f64> {
            img.pixels().map(|p| f64::from(p.0[ch]) / 255.0).collect()
        };
        let (a, b) = (plane(x), plane(y));
        let products = |f: &dyn Fn(f64, f64) -> f64| -> Vec<f64> {
            a.iter().zip(&b).map(|(&p, &q)| f(p, q)).collect()
        };
        let ux = filter(&a, w, h, &weights);
        let uy = filter(&b, w, h, &weights);
        let uxx = filter(&products(&|p, _| p * p), w, h, &weights);
        let uyy = filter(&products(&|_, q| q * q), w, h, &weights);
        let uxy = filter(&products(&|p, q| p * q), w, h, &weights);
        (0..ow * oh)
            .map(|i| {
                let (mx, my) = (ux[i], uy[i]);
                let vx = uxx[i] - mx * mx;
                let vy = uyy[i] - my * my;
                let vxy = uxy[i] - mx * my;
                let num = (2.0 * mx * my + C1) * (2.0 * vxy + C2);
                let den = (mx * mx + my * my + C1) * (vx + vy + C2);
                num / den
            })
            .collect()
    });
    Some(SsimMap {
        width: ow,
        height: oh,
        channels,
    })
}

/// scipy's `gaussian_filter1d` weights for sigma 1.5, truncate 3.5: exp(-x^2 / 2 sigma^2),
/// normalised.
fn gaussian_weights() -> [f64; 2 * RADIUS + 1] {
    let mut w = [0f64; 2 * RADIUS + 1];
    for (i, v) in w.iter_mut().enumerate() {
        let x = i as f64 - RADIUS as f64;
        *v = (-0.5 * x * x / (SIGMA * SIGMA)).exp();
    }
    let sum: f64 = w.iter().sum();
    w.iter_mut().for_each(|v| *v /= sum);
    w
}

/// The separable window sum at every valid position (rows first, then columns).
fn filter(plane: &[f64], w: usize, h: usize, k: &[f64; 2 * RADIUS + 1]) -> Vec<f64> {
    let ow = w - 2 * RADIUS;
    let mut rows = vec![0f64; ow * h];
    for r in 0..h {
        let src = &plane[r * w..(r + 1) * w];
        for c in 0..ow {
            rows[r * ow + c] = k.iter().zip(&src[c..c + k.len()]).map(|(a, b)| a * b).sum();
        }
    }
    let oh = h - 2 * RADIUS;
    let mut out = vec![0f64; ow * oh];
    for r in 0..oh {
        for (t, &kt) in k.iter().enumerate() {
            let src = &rows[(r + t) * ow..(r + t + 1) * ow];
            for (o, s) in out[r * ow..(r + 1) * ow].iter_mut().zip(src) {
                *o += kt * s;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_images_score_one() {
        let img = RgbImage::from_fn(20, 16, |x, y| {
            image::Rgb([(x * 9) as u8, (y * 13) as u8, 7])
        });
        let m = ssim_map(&img, &img).unwrap();
        assert_eq!((m.width, m.height), (10, 6));
        assert!((m.mean() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn images_smaller_than_the_window_have_no_score() {
        let img = RgbImage::new(10, 40);
        assert!(ssim_map(&img, &img).is_none());
    }

    #[test]
    fn weights_sum_to_one_and_peak_in_the_middle() {
        let w = gaussian_weights();
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        assert!(w[RADIUS] > w[RADIUS - 1] && w[0] == w[2 * RADIUS]);
    }
}
