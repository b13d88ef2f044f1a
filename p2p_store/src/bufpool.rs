//! Recycled stripe buffers.
//!
//! Every stripe passes through a buffer of up to 16 MiB: read from disk on the
//! seeder, read off the wire on the downloader. A fresh allocation of that
//! size is either zeroed (`calloc`, `vec![0; n]`, or the zero-fill of an async
//! `read_to_end`) or page-faulted in from the kernel, per stripe. A dropped
//! [`StripeBuf`] hands its buffer back here with its initialised bytes, so
//! the next stripe reuses it as it is: it is always fully overwritten
//! (`read_exact`) before anyone looks at it. The pool is bounded in count
//! and bytes; anything beyond is simply freed.

use std::sync::Mutex;

/// At most this many buffers are kept…
const MAX_BUFFERS: usize = 48;
/// …and at most this many bytes in all.
const MAX_BYTES: usize = 64 << 20;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

fn pool() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A raw buffer of exactly `len` bytes whose contents are unspecified
/// (old bytes of an earlier stripe, or zeros): the caller overwrites all of it.
fn take(len: usize) -> Vec<u8> {
    let reused = {
        let mut p = pool();
        // Prefer one that needs no growth; otherwise any (grown below).
        match p.iter().position(|b| b.len() >= len) {
            Some(i) => Some(p.swap_remove(i)),
            None => p.pop(),
        }
    };
    match reused {
        Some(mut b) => {
            if b.len() >= len {
                b.truncate(len);
            } else {
                b.resize(len, 0);
            }
            b
        }
        None => vec![0; len],
    }
}

fn give(b: Vec<u8>) {
    if b.len() < 4096 {
        return;
    }
    let mut p = pool();
    let held: usize = p.iter().map(Vec::len).sum();
    if p.len() < MAX_BUFFERS && held + b.len() <= MAX_BYTES {
        p.push(b);
    }
}

/// The alignment `O_DIRECT` needs of a buffer, a file offset and a length.
pub(crate) const DIRECT_ALIGN: usize = 4096;

/// The bytes of one stripe in a recycled buffer, handed back to the pool
/// when dropped. Those from [`StripeBuf::take`] start at a [`DIRECT_ALIGN`]ed
/// address, so the downloader receives a stripe off the wire straight into
/// memory that a direct write takes as it is.
pub struct StripeBuf {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl StripeBuf {
    /// `len` bytes at an aligned address whose contents are unspecified:
    /// the caller overwrites them.
    pub(crate) fn take(len: usize) -> Self {
        let buf = take(len + DIRECT_ALIGN);
        let start = (DIRECT_ALIGN - buf.as_ptr().addr() % DIRECT_ALIGN) % DIRECT_ALIGN;
        Self { buf, start, len }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

impl From<&[u8]> for StripeBuf {
    fn from(bytes: &[u8]) -> Self {
        let mut b = Self::take(bytes.len());
        b.as_mut_slice().copy_from_slice(bytes);
        b
    }
}

impl Drop for StripeBuf {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.buf));
    }
}

impl std::ops::Deref for StripeBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for StripeBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Clone for StripeBuf {
    fn clone(&self) -> Self {
        Self::from(self.as_slice())
    }
}

impl PartialEq for StripeBuf {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for StripeBuf {}

impl std::fmt::Debug for StripeBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StripeBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_sizes_exactly() {
        let mut a = StripeBuf::take(1 << 20);
        assert_eq!(a.len(), 1 << 20);
        a.as_mut_slice()[0] = 9;
        drop(a);
        let b = StripeBuf::take(1000 + 4096);
        assert_eq!(b.len(), 1000 + 4096);
        drop(b);
        let c = StripeBuf::take(2 << 20);
        assert_eq!(c.len(), 2 << 20);
    }

    #[test]
    fn stripe_buffers_start_on_the_direct_alignment() {
        for len in [1, 4095, 4096, 1 << 20, (1 << 20) + 17] {
            let b = StripeBuf::take(len);
            assert_eq!(b.as_ptr().addr() % DIRECT_ALIGN, 0, "len {len}");
            assert_eq!(b.len(), len);
        }
    }
}
