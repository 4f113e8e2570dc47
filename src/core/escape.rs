//! One rule for showing text from outside to a person: a log line, a CLI table, a `show` view.
//!
//! Much of what phoenix shows was written by someone else (a reporter's labels and message, an
//! alert's fingerprint, an approver's comment, a patch's log lines). Written raw to a terminal,
//! a control character in it could clear the screen, move the cursor or forge a line of its own,
//! and a bidirectional-override character could make one line read as another. [`Escaped`]
//! writes every such character as a Rust escape (`\n`, `\u{1b}`, `\u{202e}`); everything else,
//! other scripts included, is shown as it is. Machine output (`--json`, the log's JSON format)
//! is exact JSON instead, which escapes by construction.

use std::fmt::{self, Write as _};

/// Text with every character that could act on a terminal written as a Rust escape.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if acts_on_terminal(c) {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// `text` escaped as [`Escaped`] shows it.
pub fn escaped(text: &str) -> String {
    Escaped(text).to_string()
}

/// Control characters (C0, DEL, C1), and the characters that reorder or isolate text.
fn acts_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_could_act_on_a_terminal_is_escaped_and_nothing_else() {
        for (text, shown) in [
            ("plain text, ünïcödé, 日本語", "plain text, ünïcödé, 日本語"),
            ("a\nb\r\tc", r"a\nb\r\tc"),
            (
                "\u{1b}[2J\u{1b}]0;title\u{7}",
                r"\u{1b}[2J\u{1b}]0;title\u{7}",
            ),
            ("\u{7f}\u{9b}31m", r"\u{7f}\u{9b}31m"),
            ("admin\u{202e}txt.exe", r"admin\u{202e}txt.exe"),
            ("\u{2066}x\u{2069}\u{200f}", r"\u{2066}x\u{2069}\u{200f}"),
            ("a backslash \\ stays", "a backslash \\ stays"),
        ] {
            assert_eq!(escaped(text), shown, "{text:?}");
        }
    }
}
