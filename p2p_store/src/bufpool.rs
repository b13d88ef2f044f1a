//! Recycled stripe buffers.
//!
//! Every stripe passes through a buffer of up to 16 MiB: read from disk on the
//! seeder, read off the wire on the downloader. A fresh allocation of that
//! size is either zeroed (`calloc`, `vec![0; n]`, or the zero-fill of an async
//! `read_to_end`) or page-faulted in from the kernel, per stripe. Buffers
//! handed back here keep their initialised bytes, so the next stripe reuses
//! them as they are: they are always fully overwritten (`read_exact`) before
//! anyone looks at them. The pool is bounded in count and bytes; anything
//! beyond is simply freed.

use std::sync::Mutex;

/// At most this many buffers are kept…
const MAX_BUFFERS: usize = 48;
/// …and at most this many bytes in all.
const MAX_BYTES: usize = 64 << 20;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

fn pool() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A buffer of exactly `len` bytes whose contents are unspecified (old
/// bytes of an earlier stripe, or zeros): the caller overwrites all of it.
pub(crate) fn take(len: usize) -> Vec<u8> {
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

/// Hands a stripe buffer back for reuse.
pub(crate) fn give(b: Vec<u8>) {
    if b.len() < 4096 {
        return;
    }
    let mut p = pool();
    let held: usize = p.iter().map(Vec::len).sum();
    if p.len() < MAX_BUFFERS && held + b.len() <= MAX_BYTES {
        p.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_sizes_exactly() {
        let mut a = take(1 << 20);
        assert_eq!(a.len(), 1 << 20);
        a[0] = 9;
        give(a);
        let b = take(1000 + 4096);
        assert_eq!(b.len(), 1000 + 4096);
        give(b);
        let c = take(2 << 20);
        assert_eq!(c.len(), 2 << 20);
        give(c);
    }
}
