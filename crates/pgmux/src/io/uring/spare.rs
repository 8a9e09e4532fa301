//! Each worker thread's spare receive and send buffers: a connection gives
//! its inbox or outbox back once everything in it was read or sent, so an
//! idle connection holds no buffer, and a busy one takes the next from here
//! instead of allocating.

use bytes::BytesMut;

thread_local! {
    /// Empty buffers that connections gave up once all they held was read
    /// or sent: an idle connection holds no buffer, and a busy one takes
    /// the next from here instead of allocating.
    static SPARE: std::cell::RefCell<Vec<BytesMut>> = const { std::cell::RefCell::new(Vec::new()) };
}
/// Spare buffers kept per thread, their size when new, and the largest kept.
const SPARE_MAX: usize = 64;
const SPARE_SIZE: usize = 2048;
const SPARE_LARGEST: usize = 16 * 1024;

/// Give `buf`, emptied, back to this thread's spares (or free it).
pub(super) fn give_back(buf: &mut BytesMut) {
    let mut taken = std::mem::take(buf);
    // The whole allocation, if nothing else shares it any more.
    if !taken.try_reclaim(SPARE_SIZE) || taken.capacity() > SPARE_LARGEST {
        return;
    }
    SPARE.with(|s| {
        let mut spare = s.borrow_mut();
        if spare.len() < SPARE_MAX {
            spare.push(taken);
        }
    });
}

/// Make sure `buf` has room, from this thread's spares if it has none.
pub(super) fn take_spare(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        *buf = SPARE
            .with(|s| s.borrow_mut().pop())
            .unwrap_or_else(|| BytesMut::with_capacity(SPARE_SIZE));
    }
}
