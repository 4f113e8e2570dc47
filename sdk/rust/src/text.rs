//! `Text<N>`: a string of at most `N` bytes kept inline (on the stack), for reading fault fields
//! and building content without an allocator.

use core::fmt;
use core::mem::MaybeUninit;
use core::ops::Deref;

use crate::buf::Buf;

/// A UTF-8 string of at most `N` bytes, stored inline. Reads of fault fields return one sized
/// for phoenix's limits, so a field is never cut; [`Text::is_truncated`] says if one was.
/// It is also a [`core::fmt::Write`] target: `write!(text, "port = {}", port)`.
#[derive(Clone, Copy)]
pub struct Text<const N: usize> {
    buf: Buf<N>,
    truncated: bool,
}

impl<const N: usize> Text<N> {
    /// An empty text.
    pub const fn new() -> Self {
        Text {
            buf: Buf::new(),
            truncated: false,
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // SAFETY: a text holds UTF-8 only: `push_str` appends whole characters of a `str`, and
        // `from_host` keeps the prefix `from_utf8` accepted.
        unsafe { core::str::from_utf8_unchecked(self.buf.as_bytes()) }
    }

    /// True when something did not fit: a field longer than `N` bytes, or a `push_str` or
    /// `write!` past the end (what fitted, up to a whole character, is kept).
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// Appends `text`, all of it or (when it does not fit) as many whole characters as fit.
    pub fn push_str(&mut self, text: &str) -> Result<(), fmt::Error> {
        let room = N - self.buf.len();
        let mut take = text.len().min(room);
        while !text.is_char_boundary(take) {
            take -= 1;
        }
        self.buf.push(&text.as_bytes()[..take]);
        if take < text.len() {
            self.truncated = true;
            return Err(fmt::Error);
        }
        Ok(())
    }

    /// Fills the text from a host read into its buffer: `full` is the field's whole length,
    /// of which the host copied at most `N` bytes.
    pub(crate) fn from_host(read: impl FnOnce(&mut [MaybeUninit<u8>]) -> i32) -> Option<Self> {
        let (mut buf, full) = Buf::fill(|out| usize::try_from(read(out)).ok())?;
        // A cut field may end inside a character: keep the whole ones.
        if let Err(error) = core::str::from_utf8(buf.as_bytes()) {
            buf.truncate(error.valid_up_to());
        }
        Some(Text {
            buf,
            truncated: full > N,
        })
    }
}

impl<const N: usize> Default for Text<N> {
    fn default() -> Self {
        Text::new()
    }
}

impl<const N: usize> Deref for Text<N> {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> AsRef<str> for Text<N> {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> PartialEq<str> for Text<N> {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl<const N: usize> PartialEq<&str> for Text<N> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl<const N: usize, const M: usize> PartialEq<Text<M>> for Text<N> {
    fn eq(&self, other: &Text<M>) -> bool {
        self.as_str() == other.as_str()
    }
}

impl<const N: usize> Eq for Text<N> {}

impl<const N: usize> fmt::Write for Text<N> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.push_str(text)
    }
}

impl<const N: usize> fmt::Display for Text<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> fmt::Debug for Text<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::Text;
    use core::fmt::Write;
    use core::mem::MaybeUninit;

    #[test]
    fn a_text_keeps_whole_characters_and_says_when_it_cut() {
        let mut text = Text::<6>::new();
        assert_eq!(text.push_str("ab"), Ok(()));
        assert!(text.push_str("cdé").is_ok());
        assert_eq!(text, "abcdé"[..]);
        let mut cut = Text::<4>::new();
        // "é" is two bytes: 3 + 2 > 4, so only "abc" fits.
        assert!(cut.push_str("abcé").is_err());
        assert_eq!(cut.as_str(), "abc");
        assert!(cut.is_truncated());
        let mut formatted = Text::<16>::new();
        write!(formatted, "port = {}", 8080).unwrap();
        assert_eq!(formatted, "port = 8080");
        assert!(!formatted.is_truncated());
    }

    #[test]
    fn a_field_read_from_the_host_is_cut_at_a_character() {
        let read = |field: &'static str| {
            move |out: &mut [MaybeUninit<u8>]| {
                for (slot, byte) in out.iter_mut().zip(field.as_bytes()) {
                    *slot = MaybeUninit::new(*byte);
                }
                field.len() as i32
            }
        };
        let whole = Text::<8>::from_host(read("/var")).unwrap();
        assert_eq!((whole.as_str(), whole.is_truncated()), ("/var", false));
        let cut = Text::<4>::from_host(read("abcé")).unwrap();
        assert_eq!((cut.as_str(), cut.is_truncated()), ("abc", true));
        assert!(Text::<4>::from_host(|_| -1).is_none());
    }
}
