//! The backup format: a consistent snapshot of the store as JSON lines — a header line, then
//! one `{"k": HEX, "v": HEX}` line per key. Plain text, so it diffs, greps and survives any
//! transport; hex, because some values (patch modules) are binary.

use serde::{Deserialize, Serialize};

/// A store snapshot: every key with its value.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Format version written in the header.
pub const FORMAT: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    phoenix_backup: u32,
    at: crate::core::fault::Timestamp,
    entries: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    k: String,
    v: String,
}

/// Why a backup could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// Not a phoenix backup, or of a newer format.
    #[error("not a phoenix backup (format {FORMAT}): {0}")]
    Header(String),
    /// A line is damaged.
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    /// Fewer entries than the header announced: the file is truncated.
    #[error("truncated: the header announces {expected} entries, the file has {found}")]
    Truncated { expected: usize, found: usize },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Writes `entries` in the backup format.
pub fn encode(entries: &[(Vec<u8>, Vec<u8>)]) -> String {
    let header = Header {
        phoenix_backup: FORMAT,
        at: crate::core::fault::Timestamp::now(),
        entries: entries.len(),
    };
    let mut out = serde_json::to_string(&header).unwrap_or_default();
    out.push('\n');
    for (key, value) in entries {
        out.push_str(
            &serde_json::to_string(&Line {
                k: hex(key),
                v: hex(value),
            })
            .unwrap_or_default(),
        );
        out.push('\n');
    }
    out
}

/// Reads a backup; every line is checked and the count must match the header.
pub fn decode(text: &str) -> Result<Entries, BackupError> {
    let mut lines = text.lines();
    let header: Header = lines
        .next()
        .ok_or_else(|| BackupError::Header("empty file".into()))
        .and_then(|line| {
            serde_json::from_str(line).map_err(|e| BackupError::Header(e.to_string()))
        })?;
    if header.phoenix_backup != FORMAT {
        return Err(BackupError::Header(format!(
            "format {}",
            header.phoenix_backup
        )));
    }
    let mut entries = Vec::with_capacity(header.entries);
    for (index, line) in lines.enumerate() {
        let damaged = |message: String| BackupError::Line {
            line: index + 2,
            message,
        };
        let line: Line = serde_json::from_str(line).map_err(|e| damaged(e.to_string()))?;
        let key = unhex(&line.k).ok_or_else(|| damaged("bad hex in `k`".into()))?;
        let value = unhex(&line.v).ok_or_else(|| damaged("bad hex in `v`".into()))?;
        entries.push((key, value));
    }
    if entries.len() != header.entries {
        return Err(BackupError::Truncated {
            expected: header.entries,
            found: entries.len(),
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_round_trips_and_damage_is_caught() {
        let entries = vec![
            (b"f/1".to_vec(), b"{\"a\":1}".to_vec()),
            (b"pm/x".to_vec(), vec![0, 97, 115, 109, 255]),
        ];
        let text = encode(&entries);
        assert_eq!(decode(&text).unwrap(), entries);
        let truncated: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        assert!(matches!(
            decode(&truncated),
            Err(BackupError::Truncated {
                expected: 2,
                found: 1
            })
        ));
        assert!(matches!(decode("hello"), Err(BackupError::Header(_))));
        let damaged = text.replace("\"k\":\"662f31\"", "\"k\":\"6g\"");
        assert!(
            matches!(decode(&damaged), Err(BackupError::Line { line: 2, .. })),
            "{damaged}"
        );
    }
}
