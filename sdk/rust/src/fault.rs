//! The fault a patch is asked to heal, read field by field from phoenix (`fault_get`).
//!
//! Each reader returns a [`Text`] sized for phoenix's limits on that field, so nothing is cut
//! and nothing is allocated: `fault::kind() == "disk_full"`,
//! `fault::label("mount").as_deref() == Some("/var")`.

use crate::host;
use crate::text::Text;

/// The longest `app`, `kind` and label name phoenix accepts.
pub const MAX_NAME_BYTES: usize = 128;
/// The longest label value phoenix accepts.
pub const MAX_LABEL_VALUE_BYTES: usize = 1024;
/// The longest message phoenix accepts.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// The most labels a fault has.
pub const MAX_LABELS: usize = 32;
/// The longest list of label names: each name and a newline.
pub const MAX_LABEL_LIST_BYTES: usize = MAX_LABELS * (MAX_NAME_BYTES + 1);

/// Reads field `key` into a text of `N` bytes (None: the fault has no such field). The keys of
/// ABI version 1: `app`, `kind`, `message`, `severity`, `fingerprint`, `occurrences`,
/// `source`, `attempt`, `labels`, and `labels.NAME`.
pub fn get<const N: usize>(key: &str) -> Option<Text<N>> {
    Text::from_host(|out| host::fault_get(key.as_bytes(), out))
}

/// Reads field `key` into `out` and returns the field's whole length (more than `out.len()`
/// when it was cut), or None when the fault has no such field.
pub fn get_into(key: &str, out: &mut [u8]) -> Option<usize> {
    // SAFETY: `&mut [u8]` and `&mut [MaybeUninit<u8>]` have one layout, and the host writes
    // only bytes (never uninitialized ones) into it.
    let out = unsafe {
        core::slice::from_raw_parts_mut(
            out.as_mut_ptr().cast::<core::mem::MaybeUninit<u8>>(),
            out.len(),
        )
    };
    usize::try_from(host::fault_get(key.as_bytes(), out)).ok()
}

/// The application the fault is about (the program's name for a supervised program's exit).
pub fn app() -> Text<MAX_NAME_BYTES> {
    get("app").unwrap_or_default()
}

/// What went wrong, e.g. `disk_full`, `exited`, an alert's name.
pub fn kind() -> Text<MAX_NAME_BYTES> {
    get("kind").unwrap_or_default()
}

/// The reporter's message, if it gave one.
pub fn message() -> Option<Text<MAX_MESSAGE_BYTES>> {
    get("message")
}

/// The value of label `name`, if the fault has it.
pub fn label(name: &str) -> Option<Text<MAX_LABEL_VALUE_BYTES>> {
    let mut key = Text::<{ MAX_NAME_BYTES + 7 }>::new();
    key.push_str("labels.").ok()?;
    key.push_str(name).ok()?;
    get(key.as_str())
}

/// The names of the fault's labels, sorted: `for name in fault::labels().iter() { … }`.
pub fn labels() -> LabelNames {
    LabelNames(get("labels").unwrap_or_default())
}

/// The names of a fault's labels (see [`labels`]).
pub struct LabelNames(Text<MAX_LABEL_LIST_BYTES>);

impl LabelNames {
    /// Each name, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.split('\n').filter(|name| !name.is_empty())
    }

    /// How many labels the fault has.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// True when the fault has no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The attempt being planned: 1 for the first; a policy with `max_attempts` may plan again
/// after a failed check, and a patch may plan differently then.
pub fn attempt() -> u32 {
    number("attempt").map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// How many times the fault was reported (repeats of an open fault count here).
pub fn occurrences() -> u64 {
    number("occurrences").unwrap_or(1)
}

/// The fault's fingerprint: blake3 of its app, kind and labels, in hex.
pub fn fingerprint() -> Text<64> {
    get("fingerprint").unwrap_or_default()
}

fn number(key: &str) -> Option<u64> {
    get::<20>(key)?.parse().ok()
}

/// How bad the reporter says the fault is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

impl Severity {
    /// Its name, as phoenix writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
}

/// The fault's severity (`error` when the reporter gave none).
pub fn severity() -> Severity {
    match get::<16>("severity").as_deref() {
        Some("info") => Severity::Info,
        Some("warning") => Severity::Warning,
        Some("critical") => Severity::Critical,
        _ => Severity::Error,
    }
}

/// Where the fault came from. Only phoenix sets it: a reporter cannot pose as a supervised
/// program's exit or a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Reported over the API (`POST /v1/faults`, `phoenix report`).
    Api,
    /// A Prometheus Alertmanager webhook.
    Alertmanager,
    /// One of phoenix's probes.
    Probe,
    /// One of phoenix's log watches.
    Log,
    /// A program phoenix supervises exited.
    Supervisor,
    /// A systemd unit failed (its `OnFailure=` reported it).
    Systemd,
    /// A source newer than this SDK.
    Other,
}

impl Source {
    /// Its name, as phoenix writes it (`other` for one newer than this SDK).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Alertmanager => "alertmanager",
            Source::Probe => "probe",
            Source::Log => "log",
            Source::Supervisor => "supervisor",
            Source::Systemd => "systemd",
            Source::Other => "other",
        }
    }
}

/// Where the fault came from.
pub fn source() -> Source {
    match get::<16>("source").as_deref() {
        Some("api") => Source::Api,
        Some("alertmanager") => Source::Alertmanager,
        Some("probe") => Source::Probe,
        Some("log") => Source::Log,
        Some("supervisor") => Source::Supervisor,
        Some("systemd") => Source::Systemd,
        _ => Source::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::run;

    #[test]
    fn the_fault_reads_as_phoenix_wrote_it() {
        let fields = [
            ("app", "web"),
            ("kind", "disk_full"),
            ("severity", "critical"),
            ("source", "alertmanager"),
            ("attempt", "2"),
            ("occurrences", "7"),
            ("labels", "mount\nzone"),
            ("labels.mount", "/var/log"),
            ("labels.zone", "é"),
        ];
        let run = run(&fields, || {
            assert_eq!(app(), "web");
            assert_eq!(kind(), "disk_full");
            assert_eq!(label("mount").as_deref(), Some("/var/log"));
            assert_eq!(label("zone").as_deref(), Some("é"));
            assert_eq!(label("nope").as_deref(), None);
            assert_eq!(label(&"x".repeat(MAX_NAME_BYTES + 1)).as_deref(), None);
            assert_eq!(severity(), Severity::Critical);
            assert_eq!(source(), Source::Alertmanager);
            assert_eq!((attempt(), occurrences()), (2, 7));
            assert!(message().is_none());
            let names = labels();
            let names: std::vec::Vec<&str> = names.iter().collect();
            assert_eq!(names, ["mount", "zone"]);
            Ok(())
        });
        assert_eq!(run.status, 0);
    }

    #[test]
    fn a_fault_without_the_optional_fields_reads_as_defaults() {
        let run = run(&[("kind", "oom")], || {
            assert_eq!((attempt(), occurrences()), (1, 1));
            assert_eq!(severity(), Severity::Error);
            assert_eq!(source(), Source::Other);
            assert!(labels().is_empty());
            assert_eq!(labels().iter().count(), 0);
            assert_eq!(app(), "");
            Ok(())
        });
        assert_eq!(run.status, 0);
    }

    #[test]
    fn the_longest_fields_phoenix_accepts_are_read_whole() {
        let value = "v".repeat(MAX_LABEL_VALUE_BYTES);
        let message_text = "m".repeat(MAX_MESSAGE_BYTES);
        let fields = [
            ("labels.a", value.as_str()),
            ("message", message_text.as_str()),
        ];
        run(&fields, || {
            let label = label("a").unwrap();
            assert_eq!(
                (label.len(), label.is_truncated()),
                (MAX_LABEL_VALUE_BYTES, false)
            );
            assert_eq!(message().unwrap().len(), MAX_MESSAGE_BYTES);
            Ok(())
        });
    }
}
