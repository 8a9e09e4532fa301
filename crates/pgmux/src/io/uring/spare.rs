//! Each worker thread's spare traffic state: a connection gives its
//! buffers and send state back once everything in them was read and sent,
//! so an idle connection holds none of it, and a busy one takes the next
//! from here (buffers included) instead of allocating.

use bytes::BytesMut;

use super::net::Traffic;

thread_local! {
    // Boxed as connections hold them, so a state moves in and out as one
    // pointer and its allocation is reused with it.
    #[allow(clippy::vec_box)]
    static SPARE: std::cell::RefCell<Vec<Box<Traffic>>> = const { std::cell::RefCell::new(Vec::new()) };
}
/// Spare states kept per thread, a buffer's size when new, and the largest
/// buffer kept.
const SPARE_MAX: usize = 64;
const SPARE_SIZE: usize = 2048;
const SPARE_LARGEST: usize = 16 * 1024;

/// A traffic state for a connection that has bytes to move.
pub(super) fn take_traffic() -> Box<Traffic> {
    SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_default()
}

/// Give `traffic`, all read and sent, back to this thread's spares (or free
/// it), keeping its buffers' allocations where nothing else shares them.
pub(super) fn give_traffic(mut traffic: Box<Traffic>) {
    for buf in [&mut traffic.inbox, &mut traffic.outbox] {
        buf.clear();
        // Room enough as it is; else the whole allocation, if nothing else
        // shares it any more.
        let room = buf.capacity() >= SPARE_SIZE || buf.try_reclaim(SPARE_SIZE);
        if !room || buf.capacity() > SPARE_LARGEST {
            *buf = BytesMut::new();
        }
    }
    SPARE.with(|s| {
        let mut spare = s.borrow_mut();
        if spare.len() < SPARE_MAX {
            spare.push(traffic);
        }
    });
}

/// Make sure `buf` has room before bytes go in.
pub(super) fn ensure_room(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        *buf = BytesMut::with_capacity(SPARE_SIZE);
    }
}
