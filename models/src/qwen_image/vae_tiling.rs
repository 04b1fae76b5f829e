//! diffusers' `AutoencoderKLQwenImage.tiled_decode` on host tensors: the latent is cut into
//! overlapping tiles, each decoded on its own, and every tile is blended into its upper and left
//! neighbours (already blended, as diffusers mutates them in place) before being cropped to the
//! stride.

use crate::ModelError;
use qie_runtime::Tensor;

/// Tile sizes in sample (image) pixels, as `enable_tiling(...)` takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VaeTiling {
    pub tile_sample_min_height: usize,
    pub tile_sample_min_width: usize,
    pub tile_sample_stride_height: usize,
    pub tile_sample_stride_width: usize,
}

impl Default for VaeTiling {
    /// diffusers' defaults: 256-pixel tiles every 192 pixels.
    fn default() -> Self {
        VaeTiling {
            tile_sample_min_height: 256,
            tile_sample_min_width: 256,
            tile_sample_stride_height: 192,
            tile_sample_stride_width: 192,
        }
    }
}

impl VaeTiling {
    pub fn validate(&self, scale: usize) -> Result<(), ModelError> {
        let t = self;
        if t.tile_sample_stride_height < scale || t.tile_sample_stride_width < scale {
            return Err(ModelError::new(format!(
                "VAE tiling: strides {}x{} must be at least {scale} pixels",
                t.tile_sample_stride_height, t.tile_sample_stride_width
            )));
        }
        if t.tile_sample_min_height < t.tile_sample_stride_height
            || t.tile_sample_min_width < t.tile_sample_stride_width
        {
            return Err(ModelError::new(format!(
                "VAE tiling: tiles {}x{} must not be smaller than the strides {}x{}",
                t.tile_sample_min_height,
                t.tile_sample_min_width,
                t.tile_sample_stride_height,
                t.tile_sample_stride_width
            )));
        }
        Ok(())
    }

    /// Whether diffusers tiles a latent of `h` x `w` (otherwise it decodes it whole).
    pub fn applies(&self, h: usize, w: usize, scale: usize) -> bool {
        w > self.tile_sample_min_width / scale || h > self.tile_sample_min_height / scale
    }
}

/// A [B, C, H, W] f32 image on the host, mutated while blending.
pub(crate) struct Plane {
    pub shape: [usize; 4],
    pub data: Vec<f32>,
}

impl Plane {
    pub fn from_tensor(t: &Tensor) -> Plane {
        let s = t.shape();
        Plane {
            shape: [s[0], s[1], s[2], s[3]],
            data: t.to_f32_vec(),
        }
    }

    fn at(&self, b: usize, c: usize, y: usize, x: usize) -> usize {
        let [_, cs, hs, ws] = self.shape;
        ((b * cs + c) * hs + y) * ws + x
    }
}

/// Latent window `[y0, y0 + h) x [x0, x0 + w)` of every batch element and channel.
pub(crate) fn crop(t: &Tensor, y0: usize, x0: usize, h: usize, w: usize) -> Tensor {
    let s = t.shape();
    let (b, c, hs, ws) = (s[0], s[1], s[2], s[3]);
    let h = h.min(hs - y0);
    let w = w.min(ws - x0);
    let src = t.to_f32_vec();
    let mut out = Vec::with_capacity(b * c * h * w);
    for plane in 0..b * c {
        for y in y0..y0 + h {
            let row = (plane * hs + y) * ws;
            out.extend_from_slice(&src[row + x0..row + x0 + w]);
        }
    }
    Tensor::from_f32(&[b, c, h, w], out).expect("crop shape")
}

/// blend_v: the top rows of `b` fade in from the bottom rows of `a` (the tile above).
fn blend_v(a: &Plane, b: &mut Plane, extent: usize) {
    let extent = extent.min(a.shape[2]).min(b.shape[2]);
    for y in 0..extent {
        let (wa, wb) = weights(y, extent);
        let ya = a.shape[2] - extent + y;
        for n in 0..b.shape[0] {
            for c in 0..b.shape[1] {
                for x in 0..b.shape[3] {
                    let i = b.at(n, c, y, x);
                    b.data[i] = a.data[a.at(n, c, ya, x)] * wa + b.data[i] * wb;
                }
            }
        }
    }
}

/// blend_h: the left columns of `b` fade in from the right columns of `a` (the tile to the left).
fn blend_h(a: &Plane, b: &mut Plane, extent: usize) {
    let extent = extent.min(a.shape[3]).min(b.shape[3]);
    for x in 0..extent {
        let (wa, wb) = weights(x, extent);
        let xa = a.shape[3] - extent + x;
        for n in 0..b.shape[0] {
            for c in 0..b.shape[1] {
                for y in 0..b.shape[2] {
                    let i = b.at(n, c, y, x);
                    b.data[i] = a.data[a.at(n, c, y, xa)] * wa + b.data[i] * wb;
                }
            }
        }
    }
}

/// (1 - i / extent, i / extent), computed in f64 and rounded to f32 like PyTorch's scalars.
fn weights(i: usize, extent: usize) -> (f32, f32) {
    let r = i as f64 / extent as f64;
    ((1.0 - r) as f32, r as f32)
}

/// Decodes `latents` [B, C, h, w] tile by tile with `decode_tile` (which must not clamp) and
/// blends the tiles exactly like diffusers' tiled_decode.
pub(crate) fn tiled_decode(
    latents: &Tensor,
    tiling: &VaeTiling,
    scale: usize,
    mut decode_tile: impl FnMut(&Tensor) -> Result<Tensor, ModelError>,
) -> Result<Tensor, ModelError> {
    let s = latents.shape();
    let (height, width) = (s[2], s[3]);
    let tile_h = tiling.tile_sample_min_height / scale;
    let tile_w = tiling.tile_sample_min_width / scale;
    let stride_h = tiling.tile_sample_stride_height / scale;
    let stride_w = tiling.tile_sample_stride_width / scale;
    let blend_h_extent = tiling.tile_sample_min_width - tiling.tile_sample_stride_width;
    let blend_v_extent = tiling.tile_sample_min_height - tiling.tile_sample_stride_height;

    let mut rows: Vec<Vec<Plane>> = Vec::new();
    for i in (0..height).step_by(stride_h) {
        let mut row: Vec<Plane> = Vec::new();
        for j in (0..width).step_by(stride_w) {
            let tile = crop(latents, i, j, tile_h, tile_w);
            let mut decoded = Plane::from_tensor(&decode_tile(&tile)?);
            if let Some(above) = rows.last() {
                blend_v(&above[row.len()], &mut decoded, blend_v_extent);
            }
            if let Some(left) = row.last() {
                blend_h(left, &mut decoded, blend_h_extent);
            }
            row.push(decoded);
        }
        rows.push(row);
    }

    // Each tile contributes its top-left stride x stride pixels (fewer at the edges).
    let (batch, channels) = (rows[0][0].shape[0], rows[0][0].shape[1]);
    let out_h = (height * scale).min(total(
        &rows,
        |p| p.shape[2],
        tiling.tile_sample_stride_height,
        true,
    ));
    let out_w = (width * scale).min(total(
        &rows,
        |p| p.shape[3],
        tiling.tile_sample_stride_width,
        false,
    ));
    let mut out = vec![0.0f32; batch * channels * out_h * out_w];
    let mut y0 = 0;
    for row in &rows {
        let mut x0 = 0;
        let mut row_h = 0;
        for tile in row {
            let h = tile.shape[2].min(tiling.tile_sample_stride_height);
            let w = tile.shape[3].min(tiling.tile_sample_stride_width);
            row_h = h;
            for n in 0..batch {
                for c in 0..channels {
                    for y in 0..h {
                        if y0 + y >= out_h {
                            break;
                        }
                        for x in 0..w.min(out_w.saturating_sub(x0)) {
                            out[((n * channels + c) * out_h + y0 + y) * out_w + x0 + x] =
                                tile.data[tile.at(n, c, y, x)];
                        }
                    }
                }
            }
            x0 += w;
        }
        y0 += row_h;
    }
    Tensor::from_f32(&[batch, channels, out_h, out_w], out)
        .map_err(|e| ModelError::new(format!("tiled decode: {e}")))
}

/// Height (rows) or width (columns) of the stitched, uncropped result.
fn total(rows: &[Vec<Plane>], size: impl Fn(&Plane) -> usize, stride: usize, down: bool) -> usize {
    if down {
        rows.iter().map(|r| size(&r[0]).min(stride)).sum()
    } else {
        rows[0].iter().map(|p| size(p).min(stride)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blend_weights_follow_diffusers() {
        assert_eq!(weights(0, 8), (1.0, 0.0));
        assert_eq!(weights(2, 8), (0.75, 0.25));
    }

    #[test]
    fn an_identity_decoder_tiles_back_to_the_input_upscaled() {
        // A "decoder" that repeats each latent pixel 2x2: blending equal overlaps changes nothing.
        let (h, w) = (5, 7);
        let data: Vec<f32> = (0..2 * h * w).map(|i| i as f32).collect();
        let latents = Tensor::from_f32(&[1, 2, h, w], data).unwrap();
        let up = |t: &Tensor| -> Result<Tensor, ModelError> {
            let s = t.shape();
            let v = t.to_f32_vec();
            let mut out = Vec::new();
            for c in 0..s[1] {
                for y in 0..2 * s[2] {
                    for x in 0..2 * s[3] {
                        out.push(v[(c * s[2] + y / 2) * s[3] + x / 2]);
                    }
                }
            }
            Ok(Tensor::from_f32(&[1, s[1], 2 * s[2], 2 * s[3]], out).unwrap())
        };
        let tiling = VaeTiling {
            tile_sample_min_height: 6,
            tile_sample_min_width: 8,
            tile_sample_stride_height: 4,
            tile_sample_stride_width: 4,
        };
        let tiled = tiled_decode(&latents, &tiling, 2, up).unwrap();
        assert_eq!(tiled, up(&latents).unwrap());
    }
}
