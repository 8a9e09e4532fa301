//! Read buffers, kept per worker thread: a client (or a TLS session's
//! ciphertext) holds one only while it has something to say (an idle
//! client holds none), and the next busy connection of the same worker
//! takes it again, so a request costs no allocation.

use std::cell::RefCell;

use bytes::BytesMut;

/// The size a client read buffer starts at.
pub const CLIENT_BUFFER: usize = 16 * 1024;

/// Buffers a worker keeps for its clients (1 MiB at most).
const KEPT: usize = 64;

thread_local! {
    static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for a read.
pub fn take() -> BytesMut {
    FREE.with(|free| free.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(CLIENT_BUFFER))
}

/// Give a buffer back once it is empty; one that is shared (part of it was
/// kept for a replay) or too small is dropped.
pub fn give(mut buf: BytesMut) {
    if !buf.is_empty() || buf.capacity() == 0 {
        return;
    }
    buf.clear();
    if !buf.try_reclaim(CLIENT_BUFFER) {
        return;
    }
    FREE.with(|free| {
        let mut free = free.borrow_mut();
        if free.len() < KEPT {
            free.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_buffer_comes_back_without_an_allocation() {
        let mut buf = take();
        buf.extend_from_slice(b"some request");
        let _ = buf.split_to(buf.len());
        let at = buf.as_ptr();
        give(buf);
        let again = take();
        assert!(again.is_empty() && again.capacity() >= CLIENT_BUFFER);
        assert_eq!(again.as_ptr(), at.wrapping_sub(b"some request".len()));
        give(again);
        // A buffer still holding bytes is not kept.
        let mut full = take();
        full.extend_from_slice(b"x");
        give(full);
        assert!(take().is_empty());
    }
}
