//! Reads an event file back, checking both CRCs of every record (tests, and `qie` tools that
//! summarise a run).

use super::crc32c::masked_crc32c;
use super::proto::Event;
use crate::ModelError;
use std::path::Path;

pub fn read_events(path: &Path) -> Result<Vec<Event>, ModelError> {
    let bytes =
        std::fs::read(path).map_err(|e| ModelError::new(format!("{}: {e}", path.display())))?;
    let err = |n: usize, at: usize, what: String| {
        ModelError::new(format!(
            "{}: record {n} (byte {at}): {what}",
            path.display()
        ))
    };
    let mut events = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let n = events.len();
        let header = bytes
            .get(pos..pos + 12)
            .ok_or_else(|| err(n, pos, "truncated record header".into()))?;
        let len_bytes = &header[..8];
        let stored = u32::from_le_bytes(header[8..12].try_into().unwrap());
        if masked_crc32c(len_bytes) != stored {
            return Err(err(n, pos, "length CRC mismatch (corrupted file)".into()));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let start = pos + 12;
        let end = start
            .checked_add(len)
            .filter(|&e| e + 4 <= bytes.len())
            .ok_or_else(|| err(n, pos, format!("truncated record of {len} bytes")))?;
        let data = &bytes[start..end];
        let stored = u32::from_le_bytes(bytes[end..end + 4].try_into().unwrap());
        if masked_crc32c(data) != stored {
            return Err(err(n, pos, "data CRC mismatch (corrupted file)".into()));
        }
        events.push(Event::decode(data).map_err(|e| err(n, pos, e))?);
        pos = end + 4;
    }
    Ok(events)
}
