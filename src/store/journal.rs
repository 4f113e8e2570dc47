//! The store's write-ahead journal: what makes an acknowledged write durable.
//!
//! sled makes writes durable with `flush`, which costs its I/O threads and the flusher ~0.3–0.6
//! ms per group of writes. Instead, each group's key writes are appended to a journal file and
//! synced (one `write` and one `fdatasync`, ~0.15–0.25 ms on this project's test machines);
//! sled is flushed only at a *checkpoint*, after which the journal files it covers are
//! deleted. Opening the store replays the files that are left onto sled: every write in them
//! is a plain put or removal of a key, so replaying them onto whatever sled recovered (a state
//! at or after the oldest file's start) ends in the state the last synced record left,
//! whatever part of it sled had kept already.
//!
//! The journal is a directory of segment files `{number:016x}.log`, written in order; records
//! are only appended, over zeros written ahead of them (a zero length ends the records). A
//! record is `[length: u32 LE][checksum: first 8 bytes of blake3 of the payload][payload]`;
//! the payload is a sequence of writes, each `[1][key length: u32 LE][key][value length: u32
//! LE][value]` (a put) or `[0][key length: u32 LE][key]` (a removal). Reading stops at the
//! first record that is short or fails its checksum: that is where a write was cut off, and
//! nothing after it was ever acknowledged (after a failed append the store appends nothing
//! more until it is opened anew).
//!
//! This module knows files and bytes only; the store applies the writes to sled.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const HEADER: usize = 4 + 8;
const PUT: u8 = 1;
const REMOVE: u8 = 0;

/// Appends a put of `key` to a record's payload.
pub fn encode_put(payload: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    payload.push(PUT);
    encode_bytes(payload, key);
    encode_bytes(payload, value);
}

/// Appends a removal of `key` to a record's payload.
pub fn encode_remove(payload: &mut Vec<u8>, key: &[u8]) {
    payload.push(REMOVE);
    encode_bytes(payload, key);
}

fn encode_bytes(payload: &mut Vec<u8>, bytes: &[u8]) {
    // Keys and records are far below 4 GiB (a patch module, the largest value, is capped).
    payload.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    payload.extend_from_slice(bytes);
}

/// One write of a record: a key and its new value, or None for a removal.
pub type Write<'a> = (&'a [u8], Option<&'a [u8]>);

/// The writes of one record's payload, in order; Err if the payload is malformed (which its
/// checksum makes a bug or a foreign file, not a torn write).
pub fn decode(payload: &[u8]) -> Result<Vec<Write<'_>>, String> {
    let mut writes = Vec::new();
    let mut rest = payload;
    while let Some((&kind, after)) = rest.split_first() {
        let (key, after) = take_bytes(after)?;
        let (value, after) = match kind {
            PUT => {
                let (value, after) = take_bytes(after)?;
                (Some(value), after)
            }
            REMOVE => (None, after),
            other => return Err(format!("unknown write kind {other}")),
        };
        writes.push((key, value));
        rest = after;
    }
    Ok(writes)
}

fn take_bytes(input: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let (length, rest) = input
        .split_first_chunk::<4>()
        .ok_or("a length is cut short")?;
    let length = u32::from_le_bytes(*length) as usize;
    if rest.len() < length {
        return Err(format!("{length} bytes announced, {} left", rest.len()));
    }
    Ok(rest.split_at(length))
}

fn checksum(payload: &[u8]) -> [u8; 8] {
    let hash = blake3::hash(payload);
    let mut sum = [0; 8];
    sum.copy_from_slice(&hash.as_bytes()[..8]);
    sum
}

/// The payloads of the whole records at the start of `bytes` (a segment file's contents).
pub fn records(bytes: &[u8]) -> Vec<&[u8]> {
    let mut records = Vec::new();
    let mut rest = bytes;
    while let Some((header, after)) = rest.split_at_checked(HEADER) {
        let length = u32::from_le_bytes(header[..4].try_into().unwrap_or_default()) as usize;
        let Some((payload, after)) = after.split_at_checked(length) else {
            break;
        };
        if length == 0 || header[4..] != checksum(payload) {
            break;
        }
        records.push(payload);
        rest = after;
    }
    records
}

/// The segment files in `dir`, oldest first, with their numbers.
pub fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let number = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(".log"))
            .and_then(|hex| u64::from_str_radix(hex, 16).ok());
        if let Some(number) = number {
            found.push((number, path));
        }
    }
    found.sort_unstable_by_key(|(number, _)| *number);
    Ok(found)
}

/// Deletes the segments numbered `through` and below (a checkpoint made them redundant).
pub fn remove_through(dir: &Path, through: u64) -> io::Result<()> {
    for (number, path) in segments(dir)? {
        if number <= through {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:016x}.log"))
}

/// Zeros written ahead of a segment's records, a step at a time (see [`Journal::zero_ahead`]):
/// small, so that a sync that also writes a step and the file's new size (one in 10–20 under
/// ingest load) stays short.
const ZERO_STEP: u64 = 64 << 10;
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// The segment being appended to.
pub struct Journal {
    dir: PathBuf,
    file: File,
    number: u64,
    /// Bytes of the segment known to be whole records (written, and synced if asked).
    len: u64,
    /// The file's size: zeros written ahead of the records; `None` once that failed.
    zeroed: Option<u64>,
    /// Where a record is framed before its one write (reused).
    frame: Vec<u8>,
}

impl Journal {
    /// Starts segment `number` in `dir` (which must exist), and syncs the directory so that
    /// the new file is found after a power cut (once per segment, not per append).
    pub fn start(dir: &Path, number: u64) -> io::Result<Journal> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600) // it holds what the store holds
            .open(segment_path(dir, number))?;
        File::open(dir)?.sync_all()?;
        Ok(Journal {
            dir: dir.to_owned(),
            file,
            number,
            len: 0,
            zeroed: Some(0),
            frame: Vec::new(),
        })
    }

    /// Appends one record holding `payload` and returns once it is durable: with `sync`, on
    /// disk (fdatasync); without, written to the kernel (it survives phoenix being killed, not
    /// a power cut). On failure the segment is cut back to its last whole record (the
    /// caller must not append again: see `Commits::failure` in the store).
    pub fn append(&mut self, payload: &[u8], sync: bool) -> io::Result<()> {
        if payload.is_empty() {
            return Ok(());
        }
        let Ok(length) = u32::try_from(payload.len()) else {
            // Only a restore of a store this large could come here; refused before writing.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} bytes of writes are too many for one journal record",
                    payload.len()
                ),
            ));
        };
        self.frame.clear();
        self.frame.extend_from_slice(&length.to_le_bytes());
        self.frame.extend_from_slice(&checksum(payload));
        self.frame.extend_from_slice(payload);
        self.zero_ahead(self.len + self.frame.len() as u64);
        let written = self
            .file
            .write_all_at(&self.frame, self.len)
            .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        let framed = self.frame.len() as u64;
        if self.frame.capacity() > FRAME_KEPT {
            self.frame = Vec::new();
        }
        match written {
            Ok(()) => {
                self.len += framed;
                Ok(())
            }
            Err(error) => {
                // Whatever part of it was written is cut off, so nothing after it can look
                // like a record that was acknowledged.
                let _ = self.file.set_len(self.len);
                self.zeroed = None;
                Err(error)
            }
        }
    }

    /// Writes zeros past the records, a step at a time, so that the file holds at least `end`
    /// bytes: a record then overwrites blocks the file already has, and its `fdatasync`
    /// writes that data only. A record that grows the file makes the sync also commit the
    /// file system's journal (the new size and blocks), which on ext4 can wait for what other
    /// files have pending (sled's log): with another file being written, appends synced in
    /// 0.28–0.34 ms here, overwrites in 0.19–0.24 ms. Zeros read as the end of the records. If the zeros cannot
    /// be written (a full disk), the segment gets plain appends.
    fn zero_ahead(&mut self, end: u64) {
        let Some(zeroed) = self.zeroed else {
            return;
        };
        if end <= zeroed {
            return;
        }
        let target = end.next_multiple_of(ZERO_STEP);
        let mut at = zeroed;
        while at < target {
            let chunk = (target - at).min(ZEROS.len() as u64);
            if self
                .file
                .write_all_at(&ZEROS[..chunk as usize], at)
                .is_err()
            {
                let _ = self.file.set_len(zeroed);
                self.zeroed = None;
                return;
            }
            at += chunk;
        }
        self.zeroed = Some(target);
    }

    /// Bytes in the current segment.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the current segment holds no record.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Moves on to the next segment; returns the number of the one it closed.
    pub fn rotate(&mut self) -> io::Result<u64> {
        let next = Journal::start(&self.dir, self.number + 1)?;
        let closed = self.number;
        *self = next;
        Ok(closed)
    }
}

/// Largest frame buffer kept between appends.
const FRAME_KEPT: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(writes: &[Write<'_>]) -> Vec<u8> {
        let mut payload = Vec::new();
        for (key, value) in writes {
            match value {
                Some(value) => encode_put(&mut payload, key, value),
                None => encode_remove(&mut payload, key),
            }
        }
        payload
    }

    #[test]
    fn writes_round_trip_through_a_record() {
        let writes: Vec<Write<'_>> = vec![(b"f/1", Some(b"{}")), (b"fp/x", None), (b"", Some(b""))];
        let encoded = payload(&writes);
        assert_eq!(decode(&encoded).unwrap(), writes);
        assert!(decode(&encoded[..encoded.len() - 1]).is_err());
        assert!(decode(&[7, 0, 0, 0, 0]).unwrap_err().contains("kind 7"));
    }

    #[test]
    fn reading_stops_at_a_torn_or_corrupt_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::start(dir.path(), 1).unwrap();
        let first = payload(&[(b"a", Some(b"1"))]);
        let second = payload(&[(b"b", Some(b"2")), (b"a", None)]);
        journal.append(&first, true).unwrap();
        journal.append(&second, true).unwrap();
        journal.append(&[], true).unwrap(); // nothing to write: no record
        let path = segment_path(dir.path(), 1);
        let zeroed = std::fs::read(&path).unwrap();
        assert_eq!(zeroed.len() as u64, ZERO_STEP, "zeros ahead of the records");
        assert_eq!(records(&zeroed), vec![&first[..], &second[..]]);
        let (bytes, ahead) = zeroed.split_at(journal.len() as usize);
        assert!(ahead.iter().all(|&byte| byte == 0));
        assert_eq!(records(bytes), vec![&first[..], &second[..]]);

        let first_end = HEADER + first.len();
        for cut in 0..bytes.len() {
            let expected = usize::from(cut >= first_end);
            assert_eq!(records(&bytes[..cut]).len(), expected, "cut at {cut}");
        }
        let mut flipped = zeroed.clone();
        let last = bytes.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(records(&flipped), vec![&first[..]]);
    }

    #[test]
    fn segments_are_listed_in_order_and_removed_through_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::start(dir.path(), 9).unwrap();
        journal
            .append(&payload(&[(b"k", Some(b"v"))]), false)
            .unwrap();
        assert_eq!(journal.rotate().unwrap(), 9);
        assert!(journal.is_empty());
        assert_eq!(journal.rotate().unwrap(), 10);
        std::fs::write(dir.path().join("notes.txt"), "not a segment").unwrap();
        let numbers = |dir: &Path| -> Vec<u64> {
            segments(dir).unwrap().into_iter().map(|(n, _)| n).collect()
        };
        assert_eq!(numbers(dir.path()), vec![9, 10, 11]);
        remove_through(dir.path(), 10).unwrap();
        assert_eq!(numbers(dir.path()), vec![11]);
        assert!(dir.path().join("notes.txt").exists());
    }

    #[test]
    fn a_failed_append_leaves_the_records_before_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::start(dir.path(), 1).unwrap();
        let first = payload(&[(b"a", Some(b"1"))]);
        journal.append(&first, false).unwrap();
        // A file opened read-only stands in for a disk that refuses the write.
        let path = segment_path(dir.path(), 1);
        journal.file = File::open(&path).unwrap();
        assert!(
            journal
                .append(&payload(&[(b"b", Some(b"2"))]), false)
                .is_err()
        );
        assert_eq!(journal.len(), (HEADER + first.len()) as u64);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(records(&bytes), vec![&first[..]]);
    }

    #[test]
    fn a_record_past_the_zeros_written_ahead_writes_more() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::start(dir.path(), 1).unwrap();
        let small = payload(&[(b"a", Some(b"1"))]);
        let big_value = vec![7u8; ZERO_STEP as usize + 10];
        let big = payload(&[(b"b", Some(&big_value))]);
        for record in [&small, &big, &small] {
            journal.append(record, false).unwrap();
        }
        let bytes = std::fs::read(segment_path(dir.path(), 1)).unwrap();
        assert_eq!(
            bytes.len() as u64,
            2 * ZERO_STEP,
            "the big record's end, rounded up"
        );
        assert!(bytes[journal.len() as usize..].iter().all(|&b| b == 0));
        assert_eq!(records(&bytes), vec![&small[..], &big[..], &small[..]]);
    }
}
