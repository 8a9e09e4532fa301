//! The ring of receive buffers shared with the kernel (5.19 and later),
//! under the ring module's `unsafe` allowance and its rules.

use io_uring::{types, IoUring};

use super::{BUFFERS, BUFFER_SIZE, GROUP};

/// A ring of buffer entries shared with the kernel: pgmux writes an entry
/// and moves the tail; the kernel takes entries from the head as receives
/// complete. `BUFFERS` entries in one page, allocated here and never freed
/// while the ring lives (leaked with the arena, see `Ring`'s `Drop`).
pub(super) struct BufRing {
    entries: *mut types::BufRingEntry,
    /// The tail as pgmux has written it; published with `publish`.
    tail: u16,
}

impl BufRing {
    const PAGE: usize = 4096;

    pub(super) fn register(ring: &IoUring) -> Option<BufRing> {
        let size = usize::from(BUFFERS) * std::mem::size_of::<types::BufRingEntry>();
        let layout = std::alloc::Layout::from_size_align(size.max(Self::PAGE), Self::PAGE).ok()?;
        // SAFETY: the layout has a non-zero size.
        let entries = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<types::BufRingEntry>();
        if entries.is_null() {
            return None;
        }
        // SAFETY: `entries` is page-aligned, zeroed memory for `BUFFERS`
        // entries that stays allocated as long as the kernel may read it:
        // on success it is never freed; on failure the kernel holds nothing.
        let registered = unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, BUFFERS, GROUP, 0)
        };
        match registered {
            Ok(()) => Some(BufRing { entries, tail: 0 }),
            Err(_) => {
                // SAFETY: allocated above with this layout; not registered.
                unsafe { std::alloc::dealloc(entries.cast(), layout) };
                None
            }
        }
    }

    /// Write buffer `bid` at `addr` into the next entry (not yet visible).
    pub(super) fn push(&mut self, addr: u64, bid: u16) {
        let index = usize::from(self.tail & (BUFFERS - 1));
        // SAFETY: `index` is below `BUFFERS`, the entries' count; the
        // kernel reads only entries before the published tail, and this one
        // is past it. Only the address, length and id are written: the
        // first entry's reserved field is the shared tail.
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(addr);
        entry.set_len(BUFFER_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make the entries pushed so far visible to the kernel.
    pub(super) fn publish(&self) {
        // SAFETY: `entries` is the page-aligned base of the ring, as
        // `tail` requires; the tail field is a u16 the kernel reads
        // atomically, so it is written through an atomic with Release
        // ordering, after the entries it publishes.
        let tail = unsafe {
            &*types::BufRingEntry::tail(self.entries).cast::<std::sync::atomic::AtomicU16>()
        };
        tail.store(self.tail, std::sync::atomic::Ordering::Release);
    }
}
