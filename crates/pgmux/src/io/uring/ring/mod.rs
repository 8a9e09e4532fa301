//! The one module of pgmux allowed `unsafe`: an io_uring instance whose
//! submissions only ever point at memory the ring itself owns until their
//! completion has been reaped, which is what makes the API below safe.
//!
//! - Receives select a buffer from the ring's own arena (provided buffers,
//!   buffer group [`GROUP`]): nothing of the caller's is lent to the
//!   kernel, so a receive in flight for an idle client holds no memory, and
//!   a caller that stops waiting cannot leave the kernel writing into freed
//!   memory. The data is handed to the completion callback, then the buffer
//!   is given back to the kernel.
//! - A send owns its `Bytes`, a connect its socket address, the eventfd
//!   read its 8 bytes, in the ring's table of kept memory, until the
//!   completion comes back.
//! - The shared ring of receive buffers is in [`buf_ring`].
//! - On drop, whatever may still be in flight is cancelled and waited for
//!   (briefly); anything the kernel may still touch after that is leaked,
//!   never freed.

#![allow(unsafe_code)]

mod buf_ring;

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use self::buf_ring::BufRing;

/// The buffer group the ring provides its arena's buffers in.
pub const GROUP: u16 = 1;
/// Receive buffers: how many, and how big. A buffer is lent only from a
/// receive's completion until its bytes are copied out in the same turn,
/// so a few per connection that completes in one turn are plenty (a turn
/// that runs short gets ENOBUFS and receives again next turn). The kernel
/// hands provided buffers out first in, first out, so every buffer of the
/// arena gets touched: its size is resident memory, and 1 MiB is what a
/// thousand idle clients would otherwise cost.
const BUFFERS: u16 = 128;
// A buffer ring's size must be a power of two.
const _: () = assert!(BUFFERS.is_power_of_two());
pub const BUFFER_SIZE: usize = 8 * 1024;
/// Submission queue entries (completions: twice as many).
const ENTRIES: u32 = 2048;
/// `user_data` of submissions whose completion nobody waits for.
const UNTRACKED: u64 = u64::MAX;

/// An operation in flight: the caller's tag to hand back with its
/// completion, and where what it keeps alive for the kernel is.
struct InFlight<T> {
    tag: T,
    /// Which use of its slot this is: a cancel names the slot and the use,
    /// so it can never reach a later operation that took the slot over.
    seq: u32,
    /// Its entry in `Ring::kept`, or [`KEPT_NOTHING`]. Apart, because
    /// every idle connection has a receive in flight that keeps nothing,
    /// and the table of operations would otherwise be sized for a send's
    /// bytes in every entry.
    kept: u32,
}

const KEPT_NOTHING: u32 = u32::MAX;

/// Held only to keep memory alive for the kernel; never read.
#[allow(dead_code)]
enum Keep {
    Nothing,
    Bytes(Bytes),
    /// A connect's address, and its socket: the descriptor must stay open
    /// (its number not reused) until the kernel is done with the op.
    Connect(Box<socket2::SockAddr>, std::sync::Arc<socket2::Socket>),
    Word(Box<[u8; 8]>),
}

/// An operation in flight, to cancel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpId(u64);

pub struct Ring<T> {
    ring: IoUring,
    /// The receive buffers, `BUFFERS` of `BUFFER_SIZE`; lent to the kernel
    /// for the ring's whole life (see `Drop`).
    arena: Box<[u8]>,
    ops: Vec<Option<InFlight<T>>>,
    free: Vec<u64>,
    /// What operations in flight keep alive for the kernel (a send's
    /// bytes, a connect's address), and the free entries.
    kept: Vec<Keep>,
    kept_free: Vec<u32>,
    in_flight: usize,
    /// Numbers the uses of slots (see [`InFlight::seq`]).
    seq: u32,
    /// Where the kernel finds free receive buffers, if this kernel shares a
    /// buffer ring (5.19 and later); otherwise each buffer goes back with
    /// a ProvideBuffers submission.
    buf_ring: Option<BufRing>,
    /// Completions taken off the queue, reused each turn.
    reaped: Vec<cqueue::Entry>,
}

/// A completion, as the callback sees it.
pub struct Done<'a, T> {
    pub tag: &'a T,
    /// The operation's result: bytes moved, a new descriptor, or -errno.
    pub result: i32,
    /// More completions of this (multishot) operation will come.
    pub more: bool,
    /// What a receive brought (in the ring's buffer, given back after the
    /// callback returns).
    pub data: &'a [u8],
}

impl<T> Ring<T> {
    /// A ring for one worker thread, its receive buffers provided.
    pub fn new() -> io::Result<Ring<T>> {
        // Only this thread submits, and completions' work runs when it
        // waits: fewer interruptions.
        let ring = Self::builder().setup_cqsize(ENTRIES * 2).build(ENTRIES)?;
        let mut ring = Ring {
            ring,
            arena: vec![0u8; usize::from(BUFFERS) * BUFFER_SIZE].into_boxed_slice(),
            ops: Vec::new(),
            free: Vec::new(),
            kept: Vec::new(),
            kept_free: Vec::new(),
            in_flight: 0,
            seq: 0,
            reaped: Vec::new(),
            buf_ring: None,
        };
        ring.buf_ring = BufRing::register(&ring.ring);
        ring.provide(0, BUFFERS);
        ring.submit()?;
        Ok(ring)
    }

    fn builder() -> io_uring::Builder {
        let mut builder = IoUring::builder();
        builder.setup_single_issuer().setup_defer_taskrun();
        builder
    }

    /// Whether this kernel lets the process use io_uring as pgmux does
    /// (containers often forbid io_uring): a ring set up as `new` sets it
    /// up, which takes Linux 6.1 and so brings what the probe cannot tell
    /// apart (multishot accept and receive share their opcodes with the
    /// single ones), plus the wait with a timeout.
    pub fn available() -> bool {
        let Ok(ring) = Self::builder().build(8) else {
            return false;
        };
        if !ring.params().is_feature_ext_arg() {
            return false;
        }
        let mut probe = io_uring::Probe::new();
        if ring.submitter().register_probe(&mut probe).is_err() {
            return false;
        }
        [
            opcode::Recv::CODE,
            opcode::Send::CODE,
            opcode::Connect::CODE,
            opcode::AcceptMulti::CODE,
            opcode::ProvideBuffers::CODE,
            opcode::AsyncCancel::CODE,
            opcode::Read::CODE,
        ]
        .iter()
        .all(|&op| probe.is_supported(op))
    }

    /// Operations in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Keep `tag` (and `keep`) for an operation; its `user_data`: the
    /// slot in the low half, the use of the slot in the high half.
    fn track(&mut self, tag: T, keep: Keep) -> u64 {
        self.in_flight += 1;
        // Never all ones: that is UNTRACKED's high half.
        self.seq = self.seq.wrapping_add(1) % u32::MAX;
        let seq = self.seq;
        let kept = match keep {
            Keep::Nothing => KEPT_NOTHING,
            keep => match self.kept_free.pop() {
                Some(at) => {
                    self.kept[at as usize] = keep;
                    at
                }
                None => {
                    self.kept.push(keep);
                    (self.kept.len() - 1) as u32
                }
            },
        };
        let entry = Some(InFlight { tag, seq, kept });
        let slot = match self.free.pop() {
            Some(slot) => {
                self.ops[slot as usize] = entry;
                slot
            }
            None => {
                self.ops.push(entry);
                (self.ops.len() - 1) as u64
            }
        };
        u64::from(seq) << 32 | slot
    }

    /// Queue `entry`, making room by submitting what is queued if the
    /// submission queue is full.
    ///
    /// # Safety
    ///
    /// Every buffer `entry` points at must stay valid until its completion
    /// is reaped.
    unsafe fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: the caller vouches for the entry's buffers.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            // Full: hand the queued entries to the kernel, then retry.
            if self.ring.submit().is_err() {
                std::thread::yield_now();
            }
        }
    }

    /// Give the kernel `count` buffers of the arena from buffer `first` on.
    fn provide(&mut self, first: u16, count: u16) {
        if let Some(buf_ring) = &mut self.buf_ring {
            let base = self.arena.as_mut_ptr();
            for bid in first..first + count {
                let addr = base.wrapping_add(usize::from(bid) * BUFFER_SIZE);
                buf_ring.push(addr as u64, bid);
            }
            buf_ring.publish();
            return;
        }
        let start = usize::from(first) * BUFFER_SIZE;
        let addr = self.arena[start..].as_mut_ptr();
        let entry = opcode::ProvideBuffers::new(addr, BUFFER_SIZE as i32, count, GROUP, first)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(UNTRACKED);
        // SAFETY: the arena is the ring's for its whole life and is never
        // freed while the kernel may write into it (see `Drop`).
        unsafe { self.push(entry) };
    }

    /// Receive into a buffer of the ring's choosing.
    pub fn recv(&mut self, fd: RawFd, tag: T) -> OpId {
        let id = self.track(tag, Keep::Nothing);
        let entry = opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), BUFFER_SIZE as u32)
            .buf_group(GROUP)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(id);
        // SAFETY: no buffer of ours: the kernel picks one of the arena's.
        unsafe { self.push(entry) };
        OpId(id)
    }

    /// A multishot receive on `fd`: a completion (with a buffer of the
    /// arena) each time data arrives, until it ends (no `more` flag: an
    /// error, end of file, no free buffer, or a cancel).
    pub fn recv_multi(&mut self, fd: RawFd, tag: T) -> OpId {
        let id = self.track(tag, Keep::Nothing);
        let entry = opcode::RecvMulti::new(types::Fd(fd), GROUP)
            .build()
            .user_data(id);
        // SAFETY: no buffer of ours: the kernel picks one of the arena's
        // for each completion.
        unsafe { self.push(entry) };
        OpId(id)
    }

    /// Send `bytes` (kept here until the send completes).
    pub fn send(&mut self, fd: RawFd, bytes: Bytes, tag: T) -> OpId {
        let (ptr, len) = (bytes.as_ptr(), bytes.len() as u32);
        let id = self.track(tag, Keep::Bytes(bytes));
        let entry = opcode::Send::new(types::Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(id);
        // SAFETY: the `Bytes` are in the op's slot until the completion is
        // reaped; their heap memory does not move with the value.
        unsafe { self.push(entry) };
        OpId(id)
    }

    /// Connect `fd` (a non-blocking socket) to `addr`.
    pub fn connect(
        &mut self,
        socket: std::sync::Arc<socket2::Socket>,
        addr: socket2::SockAddr,
        tag: T,
    ) -> OpId {
        let addr = Box::new(addr);
        let (ptr, len, fd) = (
            addr.as_ptr(),
            addr.len(),
            std::os::fd::AsRawFd::as_raw_fd(&*socket),
        );
        let id = self.track(tag, Keep::Connect(addr, socket));
        let entry = opcode::Connect::new(types::Fd(fd), ptr.cast(), len)
            .build()
            .user_data(id);
        // SAFETY: the boxed address and the socket are in the op's slot
        // until the completion.
        unsafe { self.push(entry) };
        OpId(id)
    }

    /// Accept connections on `fd` until cancelled (one completion each).
    pub fn accept_multi(&mut self, fd: RawFd, tag: T) -> OpId {
        let id = self.track(tag, Keep::Nothing);
        let entry = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
            .build()
            .user_data(id);
        // SAFETY: no buffer: the peer address is not asked for.
        unsafe { self.push(entry) };
        OpId(id)
    }

    /// Read an eventfd's counter (8 bytes, kept here until it completes).
    pub fn read_word(&mut self, fd: RawFd, tag: T) -> OpId {
        let mut word = Box::new([0u8; 8]);
        let ptr = word.as_mut_ptr();
        let id = self.track(tag, Keep::Word(word));
        let entry = opcode::Read::new(types::Fd(fd), ptr, 8)
            .build()
            .user_data(id);
        // SAFETY: the boxed word is in the op's slot until the completion.
        unsafe { self.push(entry) };
        OpId(id)
    }

    /// Ask the kernel to cancel `op`; its completion still comes.
    pub fn cancel(&mut self, op: OpId) {
        let entry = opcode::AsyncCancel::new(op.0)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(UNTRACKED);
        // SAFETY: a cancel refers to no memory.
        unsafe { self.push(entry) };
    }

    /// Hand what is queued to the kernel without waiting.
    pub fn submit(&mut self) -> io::Result<()> {
        self.ring.submit().map(|_| ())
    }

    /// Hand what is queued to the kernel and wait for at least one
    /// completion, at most `timeout`.
    ///
    /// The kernel's minimum-wait batching (`min_wait_usec`, 6.12+) was
    /// measured here and left out: at 16 pgbench clients it cut the
    /// io_uring_enter calls by half but cost more CPU per transaction and
    /// a fifth of the throughput (benches/RESULTS.md).
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let result = match timeout {
            Some(t) => {
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match result {
            Ok(_) => Ok(()),
            // A timeout or a signal is an ordinary way to come back.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Hand every completion to `on`; receive buffers go back to the
    /// kernel after it returns.
    pub fn complete(&mut self, mut on: impl FnMut(Done<'_, T>)) {
        let mut reaped = std::mem::take(&mut self.reaped);
        reaped.extend(self.ring.completion());
        for cqe in reaped.drain(..) {
            let id = cqe.user_data();
            if id == UNTRACKED {
                continue;
            }
            let (slot, seq) = ((id & u64::from(u32::MAX)) as usize, (id >> 32) as u32);
            let more = cqueue::more(cqe.flags());
            let buffer = cqueue::buffer_select(cqe.flags());
            let Some(Some(op)) = self
                .ops
                .get(slot)
                .filter(|op| op.as_ref().is_some_and(|op| op.seq == seq))
            else {
                // Not ours any more: a buffer it took still goes back.
                if let Some(bid) = buffer {
                    self.provide(bid, 1);
                }
                continue;
            };
            let data = match buffer {
                Some(bid) if cqe.result() > 0 => {
                    let start = usize::from(bid) * BUFFER_SIZE;
                    &self.arena[start..start + cqe.result() as usize]
                }
                _ => &[],
            };
            on(Done {
                tag: &op.tag,
                result: cqe.result(),
                more,
                data,
            });
            if let Some(bid) = buffer {
                self.provide(bid, 1);
            }
            if !more {
                if let Some(op) = self.ops[slot].take() {
                    if op.kept != KEPT_NOTHING {
                        // The kernel is done with it.
                        self.kept[op.kept as usize] = Keep::Nothing;
                        self.kept_free.push(op.kept);
                    }
                }
                self.free.push(slot as u64);
                self.in_flight -= 1;
            }
        }
        self.reaped = reaped;
    }
}

/// Own a descriptor the kernel just created for this process (an accepted
/// connection, the result of an accept completion).
pub fn adopt_fd(fd: i32) -> std::os::fd::OwnedFd {
    // SAFETY: an accept completion's result is a new descriptor that the
    // kernel opened for this process and that nothing else owns.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // Cancel what is in flight and wait for it a little; whatever the
        // kernel may still touch afterwards is leaked, not freed.
        let ids: Vec<u64> = self
            .ops
            .iter()
            .enumerate()
            .filter_map(|(slot, op)| op.as_ref().map(|op| u64::from(op.seq) << 32 | slot as u64))
            .collect();
        for id in ids {
            self.cancel(OpId(id));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while self.in_flight > 0 && std::time::Instant::now() < deadline {
            if self.wait(Some(Duration::from_millis(50))).is_err() {
                break;
            }
            self.complete(|_| {});
        }
        if self.in_flight > 0 {
            // The kernel may still write into the arena or read a send's
            // bytes: never free them. (With nothing in flight, the ring
            // is closed before the arena is freed: fields drop in order.)
            std::mem::forget(std::mem::take(&mut self.arena));
            std::mem::forget(std::mem::take(&mut self.kept));
        }
    }
}
