//! `Buf<N>`: up to `N` bytes kept inline and never zeroed first. A patch's every run starts
//! from a fresh memory, and what it writes is reset after it: a buffer that is zeroed whole
//! (8 KiB for an action) costs the run its time and dirties memory it never uses.

use core::mem::MaybeUninit;

pub(crate) struct Buf<const N: usize> {
    bytes: [MaybeUninit<u8>; N],
    /// The first `len` bytes are written; the rest are not to be read.
    len: usize,
}

impl<const N: usize> Clone for Buf<N> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<const N: usize> Copy for Buf<N> {}

impl<const N: usize> Buf<N> {
    pub(crate) const fn new() -> Self {
        Buf {
            bytes: [MaybeUninit::uninit(); N],
            len: 0,
        }
    }

    /// The bytes written.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        // SAFETY: the first `len` bytes were written (`push` and `fill` keep it so), and
        // `MaybeUninit<u8>` has the layout of `u8`.
        unsafe { core::slice::from_raw_parts(self.bytes.as_ptr().cast::<u8>(), self.len) }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends `bytes` if they fit; false (and nothing appended) if not.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> bool {
        let room = match self.bytes.get_mut(self.len..self.len + bytes.len()) {
            Some(room) => room,
            None => return false,
        };
        copy_into(room, bytes);
        self.len += bytes.len();
        true
    }

    /// Lets `write` fill the buffer from its start. `write` returns a length of which it wrote
    /// the first `N` bytes at most (the host's `fault_get` returns the field's whole length
    /// and copies what fits), or None; `fill` returns that length with the buffer.
    pub(crate) fn fill(
        write: impl FnOnce(&mut [MaybeUninit<u8>]) -> Option<usize>,
    ) -> Option<(Self, usize)> {
        let mut buf = Buf::new();
        let length = write(&mut buf.bytes)?;
        buf.len = length.min(N);
        Some((buf, length))
    }

    /// Keeps only the first `len` bytes (`len` at most the length).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

/// Writes `bytes` into `room`, which is exactly as long: one copy (a `memory.copy`), where a
/// loop over the bytes cost a patch most of its instructions.
pub(crate) fn copy_into(room: &mut [MaybeUninit<u8>], bytes: &[u8]) {
    assert_eq!(room.len(), bytes.len());
    // SAFETY: both are `bytes.len()` long (checked), do not overlap (`room` is borrowed
    // mutably), and `MaybeUninit<u8>` has the layout of `u8`.
    unsafe {
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), room.as_mut_ptr().cast::<u8>(), bytes.len());
    }
}
