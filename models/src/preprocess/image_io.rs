//! Image files to 8-bit RGB, like `PIL.Image.open(path).convert("RGB")`.

use std::path::Path;

use image::RgbImage;

use crate::ModelError;

/// Decodes a PNG / JPEG / WebP file into RGB8. Alpha is dropped (not composited), grey is
/// replicated, as Pillow's `convert("RGB")` does; EXIF orientation is ignored, as Pillow does
/// unless asked. 16-bit inputs are reduced to 8 bits by the `image` crate.
pub fn load_rgb(path: impl AsRef<Path>) -> Result<RgbImage, ModelError> {
    let path = path.as_ref();
    let reader = image::ImageReader::open(path)
        .map_err(|e| ModelError::new(format!("{}: cannot open image: {e}", path.display())))?
        .with_guessed_format()
        .map_err(|e| ModelError::new(format!("{}: cannot read image: {e}", path.display())))?;
    let decoded = reader
        .decode()
        .map_err(|e| ModelError::new(format!("{}: cannot decode image: {e}", path.display())))?;
    Ok(decoded.to_rgb8())
}

/// Decodes an in-memory PNG / JPEG / WebP file into RGB8 (see [`load_rgb`]).
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, ModelError> {
    let decoded = image::load_from_memory(bytes)
        .map_err(|e| ModelError::new(format!("cannot decode image: {e}")))?;
    Ok(decoded.to_rgb8())
}
