//! Latent packing as diffusers' Qwen-Image pipelines do it: [B, C, H, W] latents become
//! [B, (H/2)(W/2), 4C] tokens of 2x2 patches, channel-major inside a token.

use crate::ModelError;
use qie_runtime::Tensor;

/// [B, C, H, W] -> [B, (H/2)·(W/2), C·4] (`_pack_latents`).
pub fn pack(latents: &Tensor) -> Result<Tensor, ModelError> {
    let [b, c, h, w] = dims4(latents, "latents to pack")?;
    if h % 2 != 0 || w % 2 != 0 {
        return Err(ModelError::new(format!(
            "latents to pack must have even height and width, got {h}x{w}"
        )));
    }
    let x = f32_data(latents)?;
    let (h2, w2) = (h / 2, w / 2);
    let mut out = vec![0f32; x.len()];
    for bi in 0..b {
        for ci in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    let token = (y / 2) * w2 + xx / 2;
                    let feature = ci * 4 + (y % 2) * 2 + xx % 2;
                    out[(bi * h2 * w2 + token) * c * 4 + feature] =
                        x[((bi * c + ci) * h + y) * w + xx];
                }
            }
        }
    }
    tensor(&[b, h2 * w2, c * 4], out)
}

/// [B, (H/2)·(W/2), C·4] -> [B, C, H, W] for a latent grid of `h`x`w` (`_unpack_latents`).
pub fn unpack(tokens: &Tensor, h: usize, w: usize) -> Result<Tensor, ModelError> {
    let shape = tokens.shape();
    if shape.len() != 3 || shape[1] != (h / 2) * (w / 2) || !shape[2].is_multiple_of(4) {
        return Err(ModelError::new(format!(
            "packed latents {shape:?} do not fit a {h}x{w} latent grid"
        )));
    }
    let (b, c) = (shape[0], shape[2] / 4);
    let x = f32_data(tokens)?;
    let w2 = w / 2;
    let mut out = vec![0f32; x.len()];
    for bi in 0..b {
        for ci in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    let token = (y / 2) * w2 + xx / 2;
                    let feature = ci * 4 + (y % 2) * 2 + xx % 2;
                    out[((bi * c + ci) * h + y) * w + xx] =
                        x[(bi * shape[1] + token) * c * 4 + feature];
                }
            }
        }
    }
    tensor(&[b, c, h, w], out)
}

/// Concatenates [B, S_i, D] token tensors along the sequence.
pub fn concat_tokens(parts: &[&Tensor]) -> Result<Tensor, ModelError> {
    let first = parts
        .first()
        .ok_or_else(|| ModelError::new("no token tensors to concatenate"))?;
    let (b, d) = (first.shape()[0], first.shape()[2]);
    let mut seq = 0;
    for p in parts {
        if p.shape().len() != 3 || p.shape()[0] != b || p.shape()[2] != d {
            return Err(ModelError::new(format!(
                "cannot concatenate token tensors {:?} and {:?}",
                first.shape(),
                p.shape()
            )));
        }
        seq += p.shape()[1];
    }
    let mut out = Vec::with_capacity(b * seq * d);
    for bi in 0..b {
        for p in parts {
            let s = p.shape()[1];
            out.extend_from_slice(&f32_data(p)?[bi * s * d..(bi + 1) * s * d]);
        }
    }
    tensor(&[b, seq, d], out)
}

/// The first `n` tokens of [B, S, D].
pub fn leading_tokens(x: &Tensor, n: usize) -> Result<Tensor, ModelError> {
    let s = x.shape();
    if s.len() != 3 || s[1] < n {
        return Err(ModelError::new(format!("cannot take {n} tokens of {s:?}")));
    }
    let data = f32_data(x)?;
    let mut out = Vec::with_capacity(s[0] * n * s[2]);
    for bi in 0..s[0] {
        out.extend_from_slice(&data[bi * s[1] * s[2]..(bi * s[1] + n) * s[2]]);
    }
    tensor(&[s[0], n, s[2]], out)
}

pub(crate) fn f32_data(t: &Tensor) -> Result<&[f32], ModelError> {
    t.as_f32()
        .ok_or_else(|| ModelError::new(format!("expected an f32 tensor, got {:?}", t.dtype())))
}

pub(crate) fn tensor(shape: &[usize], data: Vec<f32>) -> Result<Tensor, ModelError> {
    Tensor::from_f32(shape, data).map_err(|e| ModelError::new(e.to_string()))
}

fn dims4(t: &Tensor, what: &str) -> Result<[usize; 4], ModelError> {
    match *t.shape() {
        [a, b, c, d] => Ok([a, b, c, d]),
        ref s => Err(ModelError::new(format!(
            "{what}: expected [B, C, H, W], got {s:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_matches_the_torch_permutation() {
        // [1, 2, 2, 4]: value = c*100 + y*10 + x.
        let mut data = vec![];
        for c in 0..2 {
            for y in 0..2 {
                for x in 0..4 {
                    data.push((c * 100 + y * 10 + x) as f32);
                }
            }
        }
        let t = Tensor::from_f32(&[1, 2, 2, 4], data).unwrap();
        let p = pack(&t).unwrap();
        assert_eq!(p.shape(), &[1, 2, 8]);
        // token 1 = columns 2..4; features c-major then (dy, dx).
        assert_eq!(
            &p.as_f32().unwrap()[8..],
            &[2., 3., 12., 13., 102., 103., 112., 113.]
        );
        let u = unpack(&p, 2, 4).unwrap();
        assert_eq!(u.as_f32(), t.as_f32());
        assert!(unpack(&p, 4, 4).is_err());
    }

    #[test]
    fn token_helpers() {
        let a = Tensor::from_f32(&[1, 1, 2], vec![1., 2.]).unwrap();
        let b = Tensor::from_f32(&[1, 2, 2], vec![3., 4., 5., 6.]).unwrap();
        let c = concat_tokens(&[&a, &b]).unwrap();
        assert_eq!(c.as_f32().unwrap(), &[1., 2., 3., 4., 5., 6.]);
        assert_eq!(
            leading_tokens(&c, 2).unwrap().as_f32().unwrap(),
            &[1., 2., 3., 4.]
        );
    }
}
