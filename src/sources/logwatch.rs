//! Log watching as a detection source: follows a file and reports a fault for each new line that
//! matches a regex; the regex's named capture groups become the fault's labels.
//!
//! It reads only lines written after phoenix started, follows rotation (the file renamed away and
//! a new one created: the old file is read to its end first) and truncation (reading restarts at
//! the top), and is driven by file-system events (notify), never by polling. Each watched file
//! has its own thread: the reads are blocking and small, and the thread submits to the intake
//! through the runtime handle.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use notify::{RecursiveMode, Watcher};
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::core::fault::{Report, Severity, Source};
use crate::sources::intake::Intake;

/// Longest line considered; longer lines are cut (and still matched on their start).
const MAX_LINE: usize = 64 << 10;
/// Bytes remembered just before the reading position, to notice a file rewritten in place even
/// when it grew past the old position before phoenix looked.
const TAIL: usize = 64;

/// One `[[log]]` of the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Unique among log watches; becomes the fault's `log` label.
    pub name: String,
    /// The file to follow (relative paths resolve against the config file's folder).
    pub path: PathBuf,
    /// A regex; each new line it matches is a fault. Named groups become labels.
    pub pattern: String,
    /// The fault's `app`.
    pub app: String,
    /// The fault's `kind` (default `log_match`).
    #[serde(default = "default_kind")]
    pub kind: String,
    #[serde(default)]
    pub severity: Severity,
}

fn default_kind() -> String {
    "log_match".into()
}

impl LogConfig {
    /// Compiles the pattern and checks names; the message names the watch.
    pub fn validate(&self) -> Result<Regex, String> {
        let name = &self.name;
        let regex = Regex::new(&self.pattern)
            .map_err(|e| format!("log `{name}`: `pattern` is not a valid regex: {e}"))?;
        for group in regex.capture_names().flatten() {
            // A line's text must not make its fault pose as another source's (a `signal` group
            // would make a log line look like a program's exit).
            if crate::core::fault::RESERVED_LABELS.contains(&group) {
                return Err(format!(
                    "log `{name}`: capture group `{group}` is reserved (phoenix's own sources set that label)"
                ));
            }
        }
        let probe = Report {
            app: self.app.clone(),
            kind: self.kind.clone(),
            labels: BTreeMap::new(),
            message: None,
            severity: self.severity,
            dedup_key: None,
            reopen_within: None,
        };
        probe.validate().map_err(|e| format!("log `{name}`: {e}"))?;
        Ok(regex)
    }

    /// The report for a matching line, or None when it does not match.
    pub fn report_for(&self, regex: &Regex, line: &str) -> Option<Report> {
        let captures = regex.captures(line)?;
        let mut labels = BTreeMap::new();
        labels.insert("log".to_string(), self.name.clone());
        for name in regex.capture_names().flatten() {
            if let Some(value) = captures.name(name) {
                let mut value = value.as_str().to_owned();
                value.truncate(floor_boundary(
                    &value,
                    crate::core::fault::MAX_LABEL_VALUE_LEN,
                ));
                labels.insert(name.to_owned(), value);
            }
        }
        let mut message = line.to_owned();
        message.truncate(floor_boundary(line, crate::core::fault::MAX_MESSAGE_LEN));
        Some(Report {
            app: self.app.clone(),
            kind: self.kind.clone(),
            labels,
            message: Some(message),
            severity: self.severity,
            dedup_key: None,
            reopen_within: None,
        })
    }
}

fn floor_boundary(text: &str, max: usize) -> usize {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// The reading position in one file: which file (by inode) and how far.
struct Follower {
    path: PathBuf,
    file: Option<File>,
    inode: u64,
    offset: u64,
    /// The last bytes before `offset`, as read.
    tail: Vec<u8>,
    partial: Vec<u8>,
}

impl Follower {
    /// Starts at the current end of `path` (if it exists): only new lines count.
    fn at_end(path: &Path) -> Follower {
        let mut follower = Follower {
            path: path.to_owned(),
            file: None,
            inode: 0,
            offset: 0,
            tail: Vec::new(),
            partial: Vec::new(),
        };
        if let Ok(mut file) = File::open(path)
            && let Ok(meta) = file.metadata()
        {
            follower.inode = meta.ino();
            follower.offset = meta.len();
            follower.tail = read_tail(&mut file, follower.offset);
            follower.file = Some(file);
        }
        follower
    }

    /// Reads everything new, following truncation and rotation; returns complete lines.
    fn read_new_lines(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        // Bounded: each pass either finishes or switches to a newer file.
        for _ in 0..4 {
            if let Some(file) = self.file.as_mut() {
                let shrunk = file.metadata().is_ok_and(|m| m.len() < self.offset);
                if shrunk || read_tail(file, self.offset) != self.tail {
                    // Truncated or rewritten in place: start over from the top.
                    self.offset = 0;
                    self.tail.clear();
                    self.partial.clear();
                }
                let mut chunk = Vec::new();
                if file.seek(SeekFrom::Start(self.offset)).is_ok()
                    && file.read_to_end(&mut chunk).is_ok()
                {
                    self.offset += chunk.len() as u64;
                    self.tail.extend_from_slice(&chunk);
                    let excess = self.tail.len().saturating_sub(TAIL);
                    self.tail.drain(..excess);
                    self.split_lines(&chunk, &mut lines);
                }
            }
            // Rotated (a different file now has the name) or appeared: switch to it, from its start.
            match std::fs::metadata(&self.path) {
                Ok(meta) if self.file.is_none() || meta.ino() != self.inode => {
                    match File::open(&self.path) {
                        Ok(file) => {
                            self.inode = meta.ino();
                            self.offset = 0;
                            self.tail.clear();
                            self.partial.clear();
                            self.file = Some(file);
                        }
                        Err(_) => break,
                    }
                }
                _ => break,
            }
        }
        lines
    }

    fn split_lines(&mut self, chunk: &[u8], lines: &mut Vec<String>) {
        for byte in chunk {
            if *byte == b'\n' {
                let line = String::from_utf8_lossy(&self.partial)
                    .trim_end_matches('\r')
                    .to_owned();
                lines.push(line);
                self.partial.clear();
            } else if self.partial.len() < MAX_LINE {
                self.partial.push(*byte);
            }
        }
    }
}

/// The up to [`TAIL`] bytes just before `offset` (empty if they cannot be read).
fn read_tail(file: &mut File, offset: u64) -> Vec<u8> {
    let start = offset.saturating_sub(TAIL as u64);
    let mut tail = vec![0; (offset - start) as usize];
    match file
        .seek(SeekFrom::Start(start))
        .and_then(|_| file.read_exact(&mut tail))
    {
        Ok(()) => tail,
        Err(_) => Vec::new(),
    }
}

/// Why a watch could not start.
#[derive(Debug, thiserror::Error)]
#[error("log `{name}`: cannot watch {dir}: {message}")]
pub struct LogWatchError {
    pub name: String,
    pub dir: PathBuf,
    pub message: String,
}

/// Follows `config.path` on its own thread until the process ends.
pub fn spawn(config: LogConfig, regex: Regex, intake: Intake) -> Result<(), LogWatchError> {
    let dir = config
        .path
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = config.name.clone();
    let error = |message: String| LogWatchError {
        name: name.clone(),
        dir: dir.clone(),
        message,
    };
    let (events, receiver) = mpsc::channel::<()>();
    let file_name = config.path.file_name().map(|n| n.to_owned());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Only events about our file name (in its directory) matter; errors may hide some.
        let ours = match &event {
            Ok(event) => event
                .paths
                .iter()
                .any(|p| p.file_name() == file_name.as_deref()),
            Err(_) => true,
        };
        if ours {
            let _ = events.send(());
        }
    })
    .map_err(|e| error(e.to_string()))?;
    // The directory, not the file: rotation replaces the file.
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| error(e.to_string()))?;
    let runtime = tokio::runtime::Handle::current();
    // Position at the end now, not in the thread: a line written after this call returns counts.
    let mut follower = Follower::at_end(&config.path);
    std::thread::Builder::new()
        .name(format!("phoenix-log-{}", config.name))
        .spawn(move || {
            let _watcher = watcher;
            while receiver.recv().is_ok() {
                while receiver.try_recv().is_ok() {}
                for line in follower.read_new_lines() {
                    let Some(report) = config.report_for(&regex, &line) else { continue };
                    if let Err(error) = runtime.block_on(intake.submit(report, Source::Log, None)) {
                        tracing::error!(message = "Cannot report log match.", log = %config.name, %error);
                    }
                }
            }
        })
        .map_err(|e| LogWatchError { name, dir, message: e.to_string() })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &Path, text: &str) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    #[test]
    fn only_new_complete_lines_are_read_through_rotation_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, "old line\n");
        let mut follower = Follower::at_end(&path);
        assert!(
            follower.read_new_lines().is_empty(),
            "lines before the start are not read"
        );

        append(&path, "one\ntw");
        assert_eq!(follower.read_new_lines(), ["one"]);
        append(&path, "o\n");
        assert_eq!(
            follower.read_new_lines(),
            ["two"],
            "a line written in two parts is one line"
        );

        // Rotation: the last lines of the old file, then the new file from its start.
        append(&path, "last of old\n");
        std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
        append(&path, "first of new\n");
        assert_eq!(follower.read_new_lines(), ["last of old", "first of new"]);

        // Truncation in place.
        std::fs::write(&path, "").unwrap();
        append(&path, "after truncate\n");
        assert_eq!(follower.read_new_lines(), ["after truncate"]);
    }

    #[test]
    fn a_file_that_appears_later_is_read_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("late.log");
        let mut follower = Follower::at_end(&path);
        assert!(follower.read_new_lines().is_empty());
        append(&path, "hello\n");
        assert_eq!(follower.read_new_lines(), ["hello"]);
    }

    #[test]
    fn named_groups_become_labels() {
        let config = LogConfig {
            name: "errors".into(),
            path: "x.log".into(),
            pattern: r"ERROR (?P<code>E\d+) in (?P<module>\w+)".into(),
            app: "web".into(),
            kind: "log_error".into(),
            severity: Severity::Warning,
        };
        let regex = config.validate().unwrap();
        let report = config
            .report_for(&regex, "12:00 ERROR E42 in billing: boom")
            .unwrap();
        assert_eq!(report.labels["code"], "E42");
        assert_eq!(report.labels["module"], "billing");
        assert_eq!(report.labels["log"], "errors");
        assert!(config.report_for(&regex, "INFO fine").is_none());
        let bad = LogConfig {
            pattern: "(unclosed".into(),
            ..config
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("`pattern` is not a valid regex")
        );
    }
}
