//! The forms every layer reads and writes the same way: durations as people write them
//! (`"500ms"`, `"30s"`), and TOML errors as people can read them.

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
