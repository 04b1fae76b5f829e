//! 8-bit RGB resampling that reproduces Pillow's `Image.resize` byte for byte (libImaging/Resample.c,
//! Pillow 13: whole-image box, no `reducing_gap`), plus the int16-weight variant torch uses for
//! antialiased uint8 resizes (what torchvision-backed image processors call).
//!
//! Both are separable: a horizontal pass over only the rows the vertical pass reads, rounded to
//! u8, then a vertical pass. Weights are fixed point; the accumulator starts at one half and the
//! result is shifted and clipped to 0..=255.

use image::RgbImage;

use super::filters::{precompute, to_fixed, Coefficients, Filter};

/// Pillow's fixed-point precision for 8-bit images: 32 - 8 - 2 bits.
const PILLOW_PRECISION_BITS: u32 = 22;

/// How float weights become integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arithmetic {
    /// Pillow: 22 fractional bits.
    Pillow,
    /// torch `_upsample_bicubic2d_aa` on uint8: int16 weights, precision chosen per pass from the
    /// largest weight.
    TorchInt16,
}

/// `Image.resize((width, height), Image.LANCZOS)`, as diffusers' `VaeImageProcessor.resize` calls it.
pub fn resize_lanczos(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize(img, width, height, Filter::Lanczos, Arithmetic::Pillow)
}

/// `Image.resize((width, height), Image.BICUBIC)`, as the PIL Qwen2-VL image processor calls it.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize(img, width, height, Filter::Bicubic, Arithmetic::Pillow)
}

/// torchvision `resize(uint8 tensor, BICUBIC, antialias=True)` on CPU, as the torchvision Qwen2-VL
/// image processor calls it.
pub fn resize_bicubic_torch(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize(
        img,
        width,
        height,
        Filter::BicubicTorch,
        Arithmetic::TorchInt16,
    )
}

pub fn resize(
    img: &RgbImage,
    width: u32,
    height: u32,
    filter: Filter,
    arithmetic: Arithmetic,
) -> RgbImage {
    let (in_w, in_h) = img.dimensions();
    if (in_w, in_h) == (width, height) || width == 0 || height == 0 || in_w == 0 || in_h == 0 {
        return if (in_w, in_h) == (width, height) {
            img.clone()
        } else {
            RgbImage::new(width, height)
        };
    }
    // Pillow 13 runs the vertical pass first when the height shrinks by more than twice what the
    // width shrinks by (libImaging/Resample.c, `horizontal_first`); torch always starts
    // horizontally. Transposing makes the vertical pass the first, horizontal one.
    let (dh, dw) = (
        i64::from(in_h) - i64::from(height),
        i64::from(in_w) - i64::from(width),
    );
    if arithmetic == Arithmetic::Pillow && dh > 0 && dh > 2 * dw {
        let resized = resize(&transpose(img), height, width, filter, arithmetic);
        return transpose(&resized);
    }
    let (in_w, in_h, out_w, out_h) = (
        in_w as usize,
        in_h as usize,
        width as usize,
        height as usize,
    );
    let vert = precompute(in_h, 0.0, in_h as f32, out_h, filter);
    // Only the rows the vertical pass touches are resampled horizontally.
    let row_first = vert.bounds[0].0;
    let row_last = vert.bounds[out_h - 1].0 + vert.bounds[out_h - 1].1;

    let mut data = img.as_raw().clone();
    let (mut cur_w, mut offset) = (in_w, 0);
    if out_w != in_w {
        let horiz = precompute(in_w, 0.0, in_w as f32, out_w, filter);
        let (h_fixed, h_bits) = fixed(&horiz, arithmetic);
        let rows = (row_first, row_last);
        data = horizontal(&data, in_w, rows, &horiz, &h_fixed, h_bits, out_w);
        (cur_w, offset) = (out_w, row_first);
    }
    if out_h != in_h {
        let (v_fixed, v_bits) = fixed(&vert, arithmetic);
        data = vertical(&data, cur_w, &vert, &v_fixed, v_bits, offset, out_h);
    }
    RgbImage::from_raw(width, height, data).expect("resampled buffer has the output size")
}

fn transpose(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    RgbImage::from_fn(h, w, |x, y| *img.get_pixel(y, x))
}

fn fixed(coeffs: &Coefficients, arithmetic: Arithmetic) -> (Vec<i32>, u32) {
    let bits = match arithmetic {
        Arithmetic::Pillow => PILLOW_PRECISION_BITS,
        Arithmetic::TorchInt16 => torch_precision(&coeffs.weights),
    };
    (to_fixed(&coeffs.weights, bits), bits)
}

/// torch picks the most fractional bits (< 22) for which the largest weight still fits in int16.
fn torch_precision(weights: &[f64]) -> u32 {
    let max = weights.iter().copied().fold(0.0f64, f64::max);
    let mut bits = 0;
    while bits < 22 {
        let next = (0.5 + max * (1u32 << (bits + 1)) as f64) as i32;
        if next >= 1 << 15 {
            break;
        }
        bits += 1;
    }
    bits
}

fn clip8(acc: i32, bits: u32) -> u8 {
    (acc >> bits).clamp(0, 255) as u8
}

fn horizontal(
    src: &[u8],
    in_w: usize,
    rows: (usize, usize),
    coeffs: &Coefficients,
    kk: &[i32],
    bits: u32,
    out_w: usize,
) -> Vec<u8> {
    let mut out = vec![0u8; (rows.1 - rows.0) * out_w * 3];
    let half = (1i32 << bits) >> 1;
    for (yy, y) in (rows.0..rows.1).enumerate() {
        let line = &src[y * in_w * 3..(y + 1) * in_w * 3];
        for xx in 0..out_w {
            let (xmin, count) = coeffs.bounds[xx];
            let k = &kk[xx * coeffs.ksize..xx * coeffs.ksize + count];
            let mut acc = [half; 3];
            for (x, &w) in k.iter().enumerate() {
                let px = &line[(xmin + x) * 3..(xmin + x) * 3 + 3];
                for c in 0..3 {
                    acc[c] = acc[c].wrapping_add(px[c] as i32 * w);
                }
            }
            let o = (yy * out_w + xx) * 3;
            for c in 0..3 {
                out[o + c] = clip8(acc[c], bits);
            }
        }
    }
    out
}

fn vertical(
    src: &[u8],
    width: usize,
    coeffs: &Coefficients,
    kk: &[i32],
    bits: u32,
    offset: usize,
    out_h: usize,
) -> Vec<u8> {
    let stride = width * 3;
    let mut out = vec![0u8; out_h * stride];
    let half = (1i32 << bits) >> 1;
    for yy in 0..out_h {
        let (ymin, count) = coeffs.bounds[yy];
        let k = &kk[yy * coeffs.ksize..yy * coeffs.ksize + count];
        let row_out = &mut out[yy * stride..(yy + 1) * stride];
        for (i, o) in row_out.iter_mut().enumerate() {
            let mut acc = half;
            for (y, &w) in k.iter().enumerate() {
                acc = acc.wrapping_add(src[(ymin - offset + y) * stride + i] as i32 * w);
            }
            *o = clip8(acc, bits);
        }
    }
    out
}
