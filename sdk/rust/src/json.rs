//! Actions as JSON, written into a fixed buffer: strings escaped as RFC 8259 says (quotes,
//! backslashes and control characters; everything else, non-ASCII included, as UTF-8).

use core::mem::MaybeUninit;

use crate::plan::MAX_ACTION_BYTES;
use crate::Stop;

/// Writes one action with `build` and appends it to the plan.
pub(crate) fn action(build: impl FnOnce(&mut Json)) -> Result<(), Stop> {
    with_buffer(|buffer| {
        let mut json = Json {
            buffer,
            len: 0,
            overflow: false,
        };
        build(&mut json);
        crate::host::action(json.finish()?);
        Ok(())
    })
}

/// Lends the action buffer. It is a static, not a local: a local of 8 KiB is zeroed at every
/// action (LLVM merges its few initialized fields into one memset of the whole), which cost
/// a run more than all the rest of it, and dirtied two pages of memory.
#[cfg(target_arch = "wasm32")]
fn with_buffer<R>(lend: impl FnOnce(&mut [MaybeUninit<u8>]) -> R) -> R {
    static mut BUFFER: [MaybeUninit<u8>; MAX_ACTION_BYTES] =
        [MaybeUninit::uninit(); MAX_ACTION_BYTES];
    // SAFETY: a patch runs on one thread, and the buffer is lent to one action at a time:
    // `action` is the only borrower and nothing it calls borrows it again.
    lend(unsafe { &mut *core::ptr::addr_of_mut!(BUFFER) })
}

#[cfg(not(target_arch = "wasm32"))]
fn with_buffer<R>(lend: impl FnOnce(&mut [MaybeUninit<u8>]) -> R) -> R {
    lend(&mut std::vec![MaybeUninit::uninit(); MAX_ACTION_BYTES])
}

/// One action being written. Past the end of its buffer it only records that it overflowed.
pub(crate) struct Json<'a> {
    buffer: &'a mut [MaybeUninit<u8>],
    /// The first `len` bytes of `buffer` are written.
    len: usize,
    overflow: bool,
}

impl Json<'_> {
    /// Appends bytes that are JSON already.
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        match self.buffer.get_mut(self.len..self.len + bytes.len()) {
            Some(room) if !self.overflow => {
                crate::buf::copy_into(room, bytes);
                self.len += bytes.len();
            }
            _ => self.overflow = true,
        }
        self
    }

    /// Appends `text` as a JSON string, quotes included.
    pub(crate) fn string(&mut self, text: &str) -> &mut Self {
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
    pub(crate) fn field(&mut self, name: &str, value: &str) -> &mut Self {
        self.raw(b"\"")
            .raw(name.as_bytes())
            .raw(b"\":")
            .string(value)
    }

    /// The JSON written, or [`Stop::ActionTooLarge`] if it did not fit.
    fn finish(&self) -> Result<&[u8], Stop> {
        if self.overflow {
            return Err(Stop::ActionTooLarge);
        }
        // SAFETY: the first `len` bytes were written (`raw` keeps it so), and
        // `MaybeUninit<u8>` has the layout of `u8`.
        Ok(unsafe { core::slice::from_raw_parts(self.buffer.as_ptr().cast::<u8>(), self.len) })
    }
}

#[cfg(test)]
mod tests {
    use super::{with_buffer, Json};
    use crate::Stop;

    /// What `write` puts in an action, or why it did not fit.
    fn written(write: impl FnOnce(&mut Json)) -> Result<std::string::String, Stop> {
        with_buffer(|buffer| {
            let mut json = Json {
                buffer,
                len: 0,
                overflow: false,
            };
            write(&mut json);
            let bytes = json.finish()?;
            Ok(std::string::String::from_utf8(bytes.to_vec()).unwrap())
        })
    }

    fn string(text: &str) -> std::string::String {
        written(|json| {
            json.string(text);
        })
        .unwrap()
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
        let big = "x".repeat(super::MAX_ACTION_BYTES);
        let too_big = written(|json| {
            json.string(&big);
        });
        assert_eq!(too_big, Err(Stop::ActionTooLarge));
        let fits = written(|json| {
            json.string(&big[2..]);
        });
        assert_eq!(fits.map(|s| s.len()), Ok(super::MAX_ACTION_BYTES));
    }
}
