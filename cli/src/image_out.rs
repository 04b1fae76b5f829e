//! Writing result images in the format their file name asks for (`.png`, `.jpg`/`.jpeg`,
//! `.webp`), checked before anything runs so a long edit never ends in a file it cannot write.

use image::codecs::{jpeg::JpegEncoder, png::PngEncoder, webp::WebPEncoder};
use image::RgbImage;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Png,
    Jpeg,
    WebP,
}

/// JPEG quality: high enough that the encoding does not hide what an edit changed.
const JPEG_QUALITY: u8 = 95;

/// The format `path`'s extension names (case-insensitive); an error naming `flag` and the
/// path for a missing or unknown extension.
pub fn output_format(flag: &str, path: &Path) -> Result<OutputFormat, String> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => Ok(OutputFormat::Png),
        Some("jpg" | "jpeg") => Ok(OutputFormat::Jpeg),
        Some("webp") => Ok(OutputFormat::WebP),
        other => Err(format!(
            "{flag} {}: {} (use .png, .jpg/.jpeg or .webp)",
            path.display(),
            match other {
                Some(e) => format!("unknown image extension `.{e}`"),
                None => "no image extension".to_string(),
            }
        )),
    }
}

/// Encodes `image` in the format `path` names and writes it atomically.
pub fn write_image(flag: &str, path: &Path, image: &RgbImage) -> Result<(), String> {
    let format = output_format(flag, path)?;
    let mut bytes = Vec::new();
    let written = match format {
        OutputFormat::Png => image.write_with_encoder(PngEncoder::new(&mut bytes)),
        OutputFormat::Jpeg => {
            image.write_with_encoder(JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY))
        }
        // The image crate encodes WebP losslessly only.
        OutputFormat::WebP => image.write_with_encoder(WebPEncoder::new_lossless(&mut bytes)),
    };
    written.map_err(|e| format!("{}: encoding {format:?}: {e}", path.display()))?;
    crate::atomic::write_bytes(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_picks_the_format() {
        let cases = [
            ("a.png", OutputFormat::Png),
            ("a.JPG", OutputFormat::Jpeg),
            ("a.jpeg", OutputFormat::Jpeg),
            ("dir.v2/a.webp", OutputFormat::WebP),
        ];
        for (path, format) in cases {
            assert_eq!(output_format("--out", Path::new(path)).unwrap(), format);
        }
        for bad in ["a.gif", "a", "a.png.tmp"] {
            let err = output_format("--out", Path::new(bad)).unwrap_err();
            assert!(err.contains("--out") && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn written_bytes_are_the_named_format() {
        let dir = tempfile::tempdir().unwrap();
        let image = RgbImage::from_fn(8, 6, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 7]));
        let magic: [(&str, &[u8]); 3] = [
            ("o.png", b"\x89PNG"),
            ("o.jpg", b"\xFF\xD8\xFF"),
            ("o.webp", b"RIFF"),
        ];
        for (name, magic) in magic {
            let path = dir.path().join(name);
            write_image("--out", &path, &image).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert!(bytes.starts_with(magic), "{name}");
            let decoded = image::load_from_memory(&bytes).unwrap().to_rgb8();
            assert_eq!(decoded.dimensions(), (8, 6), "{name}");
        }
        assert!(write_image("--out", &dir.path().join("o.bmp"), &image).is_err());
        assert!(!dir.path().join("o.bmp").exists());
    }
}
