//! The io_uring worker's loop: run the tasks that are ready, fire the
//! timers that are due, then hand every queued operation to the kernel and
//! wait for completions in one `io_uring_enter`, and dispatch them.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::exec;
use super::listen::Accepted;
use super::net::Conn;
use super::oneshot::Completion;
use super::ring::{OpId, Ring};

/// What a ring operation is for.
pub enum Tag {
    Recv(Arc<Conn>),
    Send(Arc<Conn>),
    Accept(Arc<Accepted>),
    Done(Arc<Completion>),
    /// The loop's wake-up socket had a byte.
    Wakeup,
}

/// Numbers the rings, so a connection can tell which ring its multishot
/// receive runs on.
static RINGS: AtomicU32 = AtomicU32::new(0);

thread_local! {
    static RING: RefCell<Option<Ring<Tag>>> = const { RefCell::new(None) };
    /// This thread's ring's number (0: none).
    static RING_ID: Cell<u32> = const { Cell::new(0) };
    /// Connections whose send completed: their next send goes out once the
    /// completions are dispatched (the ring is busy meanwhile).
    static SENT: RefCell<Vec<Arc<Conn>>> = const { RefCell::new(Vec::new()) };
}

fn with_ring<R>(f: impl FnOnce(&mut Ring<Tag>) -> R) -> Option<R> {
    RING.with(|r| r.try_borrow_mut().ok()?.as_mut().map(f))
}

/// Queue a receive on this thread's ring; false if there is none.
pub fn recv(fd: RawFd, tag: Tag) -> bool {
    with_ring(|r| r.recv(fd, tag)).is_some()
}

/// Start a multishot receive on this thread's ring.
pub fn recv_multi(fd: RawFd, tag: Tag) -> Option<OpId> {
    with_ring(|r| r.recv_multi(fd, tag))
}

/// This thread's ring's number; 0 off the workers.
pub fn ring_id() -> u32 {
    RING_ID.with(Cell::get)
}

pub fn send(fd: RawFd, bytes: Bytes, tag: Tag) -> bool {
    with_ring(|r| r.send(fd, bytes, tag)).is_some()
}

pub fn connect(socket: Arc<socket2::Socket>, addr: socket2::SockAddr, tag: Tag) -> Option<OpId> {
    with_ring(|r| r.connect(socket, addr, tag))
}

pub fn accept(fd: RawFd, tag: Tag) -> Option<OpId> {
    with_ring(|r| r.accept_multi(fd, tag))
}

/// Cancel `op` on this thread's ring; false if there is none.
pub fn cancel(op: OpId) -> bool {
    with_ring(|r| r.cancel(op)).is_some()
}

/// Whether this thread runs an io_uring worker.
pub fn active() -> bool {
    RING.with(|r| r.borrow().is_some())
}

/// Run `main` and every task it spawns on this thread until `main` ends.
pub fn block_on(main: impl Future<Output = ()> + 'static) -> std::io::Result<()> {
    let wakeup = exec::install()?;
    RING.with(|r| Ring::new().map(|ring| *r.borrow_mut() = Some(ring)))?;
    RING_ID.with(|id| id.set(RINGS.fetch_add(1, Ordering::Relaxed) + 1));
    let finished = std::rc::Rc::new(Cell::new(false));
    let done = finished.clone();
    exec::spawn(async move {
        main.await;
        done.set(true);
    });
    let mut wakeup_armed = false;
    while !finished.get() {
        exec::run_ready();
        let next_timer = exec::fire_timers();
        if exec::run_ready() > 0 || finished.get() {
            // Timers woke tasks: run them before sleeping.
            continue;
        }
        if !wakeup_armed {
            wakeup_armed = arm_wakeup(&wakeup);
        }
        let asleep = exec::may_sleep();
        let waited = with_ring(|r| {
            if asleep {
                r.wait(next_timer)
            } else {
                r.submit()
            }
        });
        exec::woke_up();
        if let Some(Err(e)) = waited {
            tracing::error!(error = %e, "io_uring wait failed");
            std::thread::sleep(Duration::from_millis(10));
        }
        if dispatch() {
            wakeup_armed = false;
            drain(&wakeup);
        }
    }
    exec::clear();
    RING.with(|r| r.borrow_mut().take());
    RING_ID.with(|id| id.set(0));
    Ok(())
}

fn arm_wakeup(wakeup: &UnixStream) -> bool {
    with_ring(|r| r.read_word(wakeup.as_raw_fd(), Tag::Wakeup)).is_some()
}

/// Empty the wake-up socket (wakes are counted by the shared queue).
fn drain(wakeup: &UnixStream) {
    let mut sink = [0u8; 64];
    while matches!(std::io::Read::read(&mut &*wakeup, &mut sink), Ok(n) if n > 0) {}
}

/// Hand the completions to their connections; true if the wake-up socket
/// fired.
fn dispatch() -> bool {
    let mut woke = false;
    with_ring(|r| {
        // Multishot receives to end: issued once the completions are
        // handed out (the ring is busy meanwhile).
        let mut to_cancel = Vec::new();
        r.complete(|done| match done.tag {
            Tag::Recv(conn) => {
                if let Some(op) = conn.received(done.result, done.more, done.data) {
                    to_cancel.push(op);
                }
            }
            Tag::Send(conn) => {
                conn.send_done(done.result);
                SENT.with(|s| s.borrow_mut().push(conn.clone()));
            }
            Tag::Done(c) => c.complete(done.result),
            Tag::Accept(a) => {
                let fd = (done.result >= 0).then(|| super::ring::adopt_fd(done.result));
                a.accepted(done.result, done.more, fd);
            }
            Tag::Wakeup => woke = true,
        });
        for op in to_cancel {
            r.cancel(op);
        }
    });
    // With the ring free again: next sends, waiting writers.
    let mut sent = SENT.with(|s| std::mem::take(&mut *s.borrow_mut()));
    for conn in sent.drain(..) {
        conn.after_send();
    }
    // The list's allocation serves the next turn.
    SENT.with(|s| {
        let mut s = s.borrow_mut();
        if s.is_empty() {
            *s = sent;
        }
    });
    woke
}
