//! TensorBoard event files, written by our own small writer (no TensorFlow, no protobuf
//! compiler): TFRecord framing with masked CRC-32C and hand-encoded Event / Summary messages.
//! W&B users can `wandb sync` the folder.

pub mod crc32c;
pub mod proto;
mod reader;
mod writer;

pub use proto::{Event, Image, Value, ValueKind};
pub use reader::read_events;
pub use writer::{frame, EventWriter};

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;

    fn write_some(dir: &std::path::Path) -> std::path::PathBuf {
        let mut w = EventWriter::create(dir).unwrap();
        w.scalar("loss", 1, 0.5).unwrap();
        w.scalar("loss", 2, 0.25).unwrap();
        w.scalar("lr", -3, 1e-4).unwrap();
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 80, 7]));
        w.image("samples/0", 2, &img).unwrap();
        w.flush().unwrap();
        w.path().to_path_buf()
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_some(dir.path());
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("events.out.tfevents.") && name.ends_with(".qie"),
            "{name}"
        );
        let events = read_events(&path).unwrap();
        assert_eq!(events.len(), 5);
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        assert!(events[0].wall_time > 1.6e9);
        let scalars: Vec<(i64, &str, f32)> = events[1..4]
            .iter()
            .map(|e| match &e.values[0].kind {
                ValueKind::Scalar(v) => (e.step, e.values[0].tag.as_str(), *v),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            scalars,
            [(1, "loss", 0.5), (2, "loss", 0.25), (-3, "lr", 1e-4)]
        );
        let ValueKind::Image(img) = &events[4].values[0].kind else {
            panic!("not an image: {:?}", events[4]);
        };
        assert_eq!((img.width, img.height, img.colorspace), (5, 3, 3));
        let decoded = image::load_from_memory(&img.encoded).unwrap().to_rgb8();
        assert_eq!(decoded.get_pixel(4, 2).0, [160, 160, 7]);
    }

    #[test]
    fn a_corrupted_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_some(dir.path());
        let good = std::fs::read(&path).unwrap();
        // One flipped bit in every position of the second record: each is caught.
        let first_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize + 16;
        let second_len =
            u64::from_le_bytes(good[first_len..first_len + 8].try_into().unwrap()) as usize + 16;
        for at in first_len..first_len + second_len {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let err = read_events(&path).unwrap_err().to_string();
            assert!(err.contains("record 1"), "byte {at}: {err}");
        }
        std::fs::write(&path, &good[..good.len() - 3]).unwrap();
        let err = read_events(&path).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn the_framing_matches_tensorflow() {
        // An empty Event record, as tf.io.TFRecordWriter frames 0 bytes: length 0, its masked
        // CRC, no data, the masked CRC of nothing.
        let f = frame(&[]);
        assert_eq!(&f[..8], &[0; 8]);
        assert_eq!(
            u32::from_le_bytes(f[8..12].try_into().unwrap()),
            crc32c::masked_crc32c(&[0; 8])
        );
        assert_eq!(crc32c::masked_crc32c(&[]), 0xA282_EAD8);
    }
}
