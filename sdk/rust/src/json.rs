//! Actions as JSON, written into a fixed buffer: strings escaped as RFC 8259 says (quotes,
//! backslashes and control characters; everything else, non-ASCII included, as UTF-8).

use crate::plan::MAX_ACTION_BYTES;
use crate::Stop;

/// One action being written. Past the end of its buffer it only records that it overflowed.
pub(crate) struct Json {
    bytes: [u8; MAX_ACTION_BYTES],
    len: usize,
    overflow: bool,
}

impl Json {
    pub(crate) fn new() -> Json {
        Json {
            bytes: [0; MAX_ACTION_BYTES],
            len: 0,
            overflow: false,
        }
    }

    /// Appends bytes that are JSON already.
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> &mut Json {
        match self.bytes.get_mut(self.len..self.len + bytes.len()) {
            Some(room) if !self.overflow => {
                room.copy_from_slice(bytes);
                self.len += bytes.len();
            }
            _ => self.overflow = true,
        }
        self
    }

    /// Appends `text` as a JSON string, quotes included.
    pub(crate) fn string(&mut self, text: &str) -> &mut Json {
        self.raw(b"\"");
        let bytes = text.as_bytes();
        let mut clean = 0; // start of the run of bytes that need no escape
        for (index, &byte) in bytes.iter().enumerate() {
            let escape: &[u8] = match byte {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                0x00..=0x1f => b"",
                _ => continue,
            };
            self.raw(&bytes[clean..index]);
            if escape.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                self.raw(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(byte >> 4)],
                    HEX[usize::from(byte & 0xf)],
                ]);
            } else {
                self.raw(escape);
            }
            clean = index + 1;
        }
        self.raw(&bytes[clean..]);
        self.raw(b"\"")
    }

    /// `"name":` followed by `value` as a string.
    pub(crate) fn field(&mut self, name: &str, value: &str) -> &mut Json {
        self.raw(b"\"")
            .raw(name.as_bytes())
            .raw(b"\":")
            .string(value)
    }

    /// The JSON written, or [`Stop::ActionTooLarge`] if it did not fit.
    pub(crate) fn finish(&self) -> Result<&[u8], Stop> {
        if self.overflow {
            Err(Stop::ActionTooLarge)
        } else {
            Ok(&self.bytes[..self.len])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Json;

    fn string(text: &str) -> std::string::String {
        let mut json = Json::new();
        json.string(text);
        std::string::String::from_utf8(json.finish().unwrap().to_vec()).unwrap()
    }

    #[test]
    fn strings_are_escaped_as_json_says() {
        assert_eq!(string("plain"), r#""plain""#);
        assert_eq!(string(r#"say "hi""#), r#""say \"hi\"""#);
        assert_eq!(string(r"C:\temp\"), r#""C:\\temp\\""#);
        assert_eq!(string("a\nb\rc\td\u{8}e\u{c}f"), r#""a\nb\rc\td\be\ff""#);
        assert_eq!(
            string("\u{0}\u{1}\u{1f}\u{7f}"),
            "\"\\u0000\\u0001\\u001f\u{7f}\""
        );
        assert_eq!(string("é ü 日本 🔥"), "\"é ü 日本 🔥\"");
        assert_eq!(string(""), r#""""#);
    }

    #[test]
    fn what_does_not_fit_is_refused_whole() {
        let mut json = Json::new();
        let big = "x".repeat(super::MAX_ACTION_BYTES);
        json.string(&big);
        assert_eq!(json.finish(), Err(crate::Stop::ActionTooLarge));
        let mut json = Json::new();
        json.string(&big[2..]);
        assert_eq!(json.finish().map(<[u8]>::len), Ok(super::MAX_ACTION_BYTES));
    }
}
