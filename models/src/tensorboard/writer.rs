//! Appends events to `events.out.tfevents.<secs>.<host>.<pid>.qie` in a log folder, as
//! TensorFlow's summary writer names and frames them (`.<n>` before `.qie` when a second writer
//! starts in the same second). The first record is the file version.

use super::crc32c::masked_crc32c;
use super::proto::{Event, Image, Value, ValueKind};
use crate::ModelError;
use image::RgbImage;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

/// Seconds since the Unix epoch, as TensorBoard's `wall_time`.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// One TFRecord: u64 length, masked CRC of the length, data, masked CRC of the data.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

impl EventWriter {
    /// Creates the log folder if needed and a new event file in it.
    pub fn create(dir: &Path) -> Result<EventWriter, ModelError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ModelError::new(format!("{}: {e}", dir.display())))?;
        let secs = now() as u64;
        let (host, pid) = (hostname(), std::process::id());
        // A second writer in the same second and process must not truncate the first's file.
        let mut n = 0;
        let (path, file) = loop {
            let suffix = if n == 0 {
                String::new()
            } else {
                format!(".{n}")
            };
            let path = dir.join(format!(
                "events.out.tfevents.{secs}.{host}.{pid}{suffix}.qie"
            ));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(ModelError::new(format!("{}: {e}", path.display()))),
            }
        };
        let mut writer = EventWriter {
            path,
            out: BufWriter::new(file),
        };
        writer.write(&Event {
            wall_time: now(),
            step: 0,
            file_version: Some("brain.Event:2".into()),
            values: Vec::new(),
        })?;
        writer.flush()?;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, event: &Event) -> Result<(), ModelError> {
        self.out
            .write_all(&frame(&event.encode()))
            .map_err(|e| ModelError::new(format!("{}: {e}", self.path.display())))
    }

    /// A scalar summary (loss, learning rate...) at `step`.
    pub fn scalar(&mut self, tag: &str, step: i64, value: f32) -> Result<(), ModelError> {
        self.value(tag, step, ValueKind::Scalar(value))
    }

    /// An image summary (validation samples), stored as PNG.
    pub fn image(&mut self, tag: &str, step: i64, img: &RgbImage) -> Result<(), ModelError> {
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| ModelError::new(format!("{tag}: cannot encode PNG: {e}")))?;
        let image = Image {
            height: img.height() as i32,
            width: img.width() as i32,
            colorspace: 3,
            encoded: png,
        };
        self.value(tag, step, ValueKind::Image(image))
    }

    fn value(&mut self, tag: &str, step: i64, kind: ValueKind) -> Result<(), ModelError> {
        self.write(&Event {
            wall_time: now(),
            step,
            file_version: None,
            values: vec![Value {
                tag: tag.to_string(),
                kind,
            }],
        })
    }

    /// Writes buffered events to the file (TensorBoard sees them after this).
    pub fn flush(&mut self) -> Result<(), ModelError> {
        self.out
            .flush()
            .map_err(|e| ModelError::new(format!("{}: {e}", self.path.display())))
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}
