//! The gallery's images: a thumbnail (longest side 256, Pillow-exact bicubic, JPEG) of every
//! input, ground truth and prediction of the shown rows, under `images/` next to the report.

use std::path::{Path, PathBuf};

use qie_models::preprocess::{load_rgb, resize_bicubic};

/// Longest side of a thumbnail.
const THUMB: u32 = 256;

/// Writes the thumbnail of `src` as `images/<name>.jpg` under `out`; returns its path relative
/// to `out`, or `None` when the image cannot be read (the gallery then shows a gap).
pub fn thumbnail(src: &Path, out: &Path, name: &str) -> Result<Option<String>, String> {
    let Ok(img) = load_rgb(src) else {
        return Ok(None);
    };
    let (w, h) = img.dimensions();
    let scale = f64::from(THUMB) / f64::from(w.max(h));
    let img = if scale < 1.0 {
        let tw = ((f64::from(w) * scale).round() as u32).max(1);
        let th = ((f64::from(h) * scale).round() as u32).max(1);
        resize_bicubic(&img, tw, th)
    } else {
        img
    };
    let rel = format!("images/{name}.jpg");
    let path: PathBuf = out.join(&rel);
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 88)
        .encode_image(&img)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    crate::atomic::write_bytes(&path, &bytes)?;
    Ok(Some(rel))
}
