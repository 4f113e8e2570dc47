//! The forms every layer reads and writes the same way: time as phoenix writes it (milliseconds
//! since the epoch, RFC 3339 on the wire), durations as people write them (`"500ms"`, `"30s"`),
//! and TOML errors as people can read them.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Durations as human strings: "500ms", "30s", "2m".
pub mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration ({e}); write e.g. \"500ms\" or \"30s\""
            ))
        })
    }
}

/// Longest line of a TOML error message quoted as is (toml quotes the offending source line).
const MAX_QUOTED_LINE: usize = 240;

/// A TOML parse error for a person: toml's own text, which quotes the offending line and points
/// at the column, unless that line is too long to quote (a 200 KB line would make a 200 KB
/// message in the log and in `/readyz`); then its position and message only.
pub fn toml_error(error: &toml::de::Error) -> String {
    let full = error.to_string();
    if full.lines().all(|line| line.len() <= MAX_QUOTED_LINE) {
        return full;
    }
    let position = full.lines().next().unwrap_or("TOML parse error");
    format!("{position}: {}", error.message().trim_end())
}

/// Milliseconds since the Unix epoch; RFC 3339 on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn now() -> Timestamp {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        Timestamp(u64::try_from(millis).unwrap_or(u64::MAX))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = UNIX_EPOCH + Duration::from_millis(self.0);
        write!(f, "{}", humantime::format_rfc3339_millis(time))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let time = humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)?;
        let millis = time
            .duration_since(UNIX_EPOCH)
            .map_err(serde::de::Error::custom)?
            .as_millis();
        Ok(Timestamp(
            u64::try_from(millis).map_err(serde::de::Error::custom)?,
        ))
    }
}
