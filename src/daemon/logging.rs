//! The daemon's log lines: one event, one line, whatever the text in it.
//!
//! Much of what phoenix logs was written by someone else: a patch's `log` calls, reasons and
//! messages in fault reports and alerts, the details of a plan a policy denied. In the text
//! format a line break or terminal escape in such a value would forge log lines of its own
//! (`…\n… ERROR phoenix: Rollback failed`) in journald or a log file. [`EscapedFields`] writes
//! every value by the one escaping rule of [`crate::core::escape`] (`\n`, `\u{1b}`), so a line always
//! ends where the event does.
//! The JSON format escapes by construction.

use std::fmt;

use crate::core::escape::Escaped;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// Starts logging to standard error, as text (`json: false`) or one JSON object per line, at the
/// level `RUST_LOG` asks for (default `info`).
pub fn init(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal, never in journald or a log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.fmt_fields(EscapedFields).init();
    }
}

/// Formats an event's fields as the default text format does (`message key=value …`), with
/// every control character in a value escaped.
#[derive(Debug, Default, Clone, Copy)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            writer,
            result: Ok(()),
            first: true,
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'writer> {
    writer: Writer<'writer>,
    result: fmt::Result,
    first: bool,
}

impl EscapingVisitor<'_> {
    fn write(&mut self, field: &Field, text: &str) {
        if self.result.is_err() {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        self.result = if field.name() == "message" {
            write!(self.writer, "{separator}{}", Escaped(text))
        } else {
            write!(self.writer, "{separator}{}={}", field.name(), Escaped(text))
        };
    }
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, value);
        } else {
            // Quoted, as the default format writes strings (and already escaped by Debug).
            self.write(field, &format!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields arrive here too, formatted by their Display: raw text.
        self.write(field, &format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(emit: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .without_time()
            .fmt_fields(EscapedFields)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn text_from_outside_cannot_forge_log_lines() {
        let line = "ok\n2026-11-23T00:00:00Z ERROR phoenix: Rollback failed\r\u{1b}[2J";
        let text = logged(|| {
            tracing::info!(message = "Patch log.", patch = %"p", line = %line, quoted = line, count = 3);
        });
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains(
                r"line=ok\n2026-11-23T00:00:00Z ERROR phoenix: Rollback failed\r\u{1b}[2J"
            ),
            "{text}"
        );
        assert!(text.contains(r#"quoted="ok\n2026"#), "{text}");
        assert!(text.contains("Patch log. patch=p "), "{text}");
        assert!(text.ends_with("count=3\n"), "{text}");
    }

    #[test]
    fn ordinary_lines_look_as_before() {
        let text = logged(|| {
            tracing::warn!(message = "Probe failed.", probe = %"web", status = 503, why = "refused");
        });
        assert!(
            text.ends_with("Probe failed. probe=web status=503 why=\"refused\"\n"),
            "{text}"
        );
    }
}
