//! Sockets on the io_uring worker: a connection's receive and send state,
//! shared by its stream, the ring operations in flight for it and whichever
//! worker completes them (a server may move between workers).
//!
//! - Reading takes from the connection's inbox, filled by the receive in
//!   flight (at most one): a multishot receive, armed once and completing
//!   each time data arrives, so a busy connection costs no submission per
//!   read. A reader that stops waiting loses nothing, the data waits in the
//!   inbox for the next read; past [`INBOX_HIGH`] unread the receive is
//!   ended and the kernel holds the rest (TCP flow control), and a
//!   connection whose reader moved to another worker (a server lent across
//!   workers) has its receive ended so the next one starts on the reader's
//!   ring.
//! - Writing appends to the outbox and returns; one send at a time carries
//!   the outbox to the kernel, and everything written while it is in
//!   flight goes in the next. A writer waits only when the outbox is over
//!   [`OUTBOX_HIGH`] (the peer is not reading).
//! - Dropping the stream lets queued sends finish, then shuts the socket,
//!   which ends a receive in flight; the descriptor closes with the last
//!   operation.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use socket2::{SockRef, Socket};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::reactor::{self, Tag};
use super::spare::{ensure_room, give_traffic, take_traffic};

/// A writer waits while this much is queued and unsent.
const OUTBOX_HIGH: usize = 1 << 20;
/// The multishot receive stops while this much waits unread.
const INBOX_HIGH: usize = 64 * 1024;

/// Multishot receives work here (Linux 6.0 and later); cleared for good
/// at the first one the kernel refuses, and single receives take over.
static MULTISHOT: AtomicBool = AtomicBool::new(true);

pub struct Conn {
    socket: Socket,
    state: Mutex<ConnState>,
}

#[derive(Default)]
struct ConnState {
    /// The buffers and the send in flight while bytes move; none while the
    /// connection is idle (most clients, most of the time).
    traffic: Option<Box<Traffic>>,
    eof: bool,
    error: Option<io::ErrorKind>,
    /// A receive is in flight.
    receiving: bool,
    /// The multishot receive in flight; taken when it is asked to end.
    multishot: Option<super::ring::OpId>,
    /// The ring it runs on.
    multishot_ring: u32,
    /// The ring of the thread that last waited to read.
    reader_ring: u32,
    reader: Option<Waker>,
    /// A send is in flight (its bytes are `Traffic::unsent`).
    sending: bool,
    /// The stream is gone: shut the socket once the sends are done.
    closing: bool,
    /// The socket is being taken back whole ([`Stream::into_std`]): the
    /// stream's drop leaves it open.
    detached: bool,
}

/// What a connection holds only while bytes move: given back to the
/// thread's spares (see [`super::spare`]) once all is read and sent.
#[derive(Default)]
pub(super) struct Traffic {
    /// Received, not yet read.
    pub(super) inbox: BytesMut,
    /// Written, not yet handed to a send.
    pub(super) outbox: BytesMut,
    /// The bytes of the send in flight, or what a partial send left (to go
    /// first); `ConnState::sending` says which.
    unsent: Option<Bytes>,
    writer: Option<Waker>,
}

impl ConnState {
    fn traffic(&mut self) -> &mut Traffic {
        self.traffic.get_or_insert_with(take_traffic)
    }

    fn inbox_len(&self) -> usize {
        self.traffic.as_ref().map_or(0, |t| t.inbox.len())
    }

    fn outbox_len(&self) -> usize {
        self.traffic.as_ref().map_or(0, |t| t.outbox.len())
    }

    fn has_unsent(&self) -> bool {
        self.traffic.as_ref().is_some_and(|t| t.unsent.is_some())
    }

    /// Give the traffic state back once nothing is left in it.
    fn settle(&mut self) {
        let sending = self.sending;
        let idle = |t: &mut Box<Traffic>| {
            !sending
                && t.inbox.is_empty()
                && t.outbox.is_empty()
                && t.unsent.is_none()
                && t.writer.is_none()
        };
        if let Some(t) = self.traffic.take_if(idle) {
            give_traffic(t);
        }
    }
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// A receive completed with `result` and `data`; `more`: a multishot
    /// receive goes on. Returns a multishot receive to end (on this ring).
    pub fn received(
        self: &Arc<Self>,
        result: i32,
        more: bool,
        data: &[u8],
    ) -> Option<super::ring::OpId> {
        let mut st = self.lock();
        let was_multishot = st.multishot.is_some();
        if !more {
            st.receiving = false;
            st.multishot = None;
        }
        match result {
            n if n > 0 => {
                let inbox = &mut st.traffic().inbox;
                ensure_room(inbox);
                inbox.extend_from_slice(data)
            }
            0 => st.eof = true,
            // This kernel has no multishot receive: single ones from now.
            e if e == -libc::EINVAL && was_multishot && !more => {
                MULTISHOT.store(false, Ordering::Relaxed);
            }
            // No buffer was free, or the receive was cancelled: the next
            // read asks again.
            e if e == -libc::ENOBUFS || e == -libc::ECANCELED || e == -libc::EINTR => {}
            e => st.error = Some(io::Error::from_raw_os_error(-e).kind()),
        }
        let mut end = None;
        if more {
            let here = reactor::ring_id();
            let stop = st.inbox_len() >= INBOX_HIGH || st.reader_ring != here;
            if stop {
                end = st.multishot.take();
            }
        }
        if let Some(w) = st.reader.take() {
            w.wake();
        }
        end
    }

    /// A send completed with `result`: what is left of it stays for the
    /// next send ([`Conn::after_send`], once the ring is free).
    pub fn send_done(&self, result: i32) {
        let mut st = self.lock();
        if !std::mem::take(&mut st.sending) {
            return;
        }
        let Some(t) = st.traffic.as_mut() else {
            return;
        };
        let Some(sent) = t.unsent.take() else {
            return;
        };
        if result < 0 {
            t.outbox.clear();
            st.error = Some(io::Error::from_raw_os_error(-result).kind());
        } else if (result as usize) < sent.len() {
            t.unsent = Some(sent.slice(result as usize..));
        }
    }

    /// After a send completed: the next one, waiting writers, the close.
    pub fn after_send(self: &Arc<Self>) {
        self.push_sends();
        let mut st = self.lock();
        if let Some(t) = st.traffic.as_mut() {
            if t.outbox.len() < OUTBOX_HIGH {
                if let Some(w) = t.writer.take() {
                    w.wake();
                }
            }
        }
        if st.closing && !st.sending && st.outbox_len() == 0 {
            st.closing = false;
            let _ = self.socket.shutdown(std::net::Shutdown::Both);
        }
        st.settle();
    }

    /// Start the next send if none is in flight and something waits.
    fn push_sends(self: &Arc<Self>) {
        let mut st = self.lock();
        if st.error.is_some() {
            return;
        }
        if st.sending {
            return;
        }
        let Some(t) = st.traffic.as_mut() else {
            return;
        };
        let next = match &t.unsent {
            Some(rest) => rest.clone(),
            None if t.outbox.is_empty() => return,
            None => t.outbox.split().freeze(),
        };
        t.unsent = Some(next.clone());
        st.sending = true;
        drop(st);
        if !reactor::send(self.fd(), next.clone(), Tag::Send(self.clone())) {
            // Not on a worker (the control plane closing a server): send
            // directly, once; what does not fit is dropped with an error.
            let result = match SockRef::from(&self.socket).send(&next) {
                Ok(n) if n == next.len() => n as i32,
                Ok(_) | Err(_) => -libc::EPIPE,
            };
            self.send_done(result);
            let mut st = self.lock();
            if st.closing {
                st.closing = false;
                let _ = self.socket.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    fn arm_receive(self: &Arc<Self>, st: &mut ConnState) {
        let here = reactor::ring_id();
        st.reader_ring = here;
        if st.receiving || st.eof || st.error.is_some() || here == 0 {
            return;
        }
        if MULTISHOT.load(Ordering::Relaxed) {
            st.multishot = reactor::recv_multi(self.fd(), Tag::Recv(self.clone()));
            st.multishot_ring = here;
            st.receiving = st.multishot.is_some();
        } else {
            st.receiving = reactor::recv(self.fd(), Tag::Recv(self.clone()));
        }
    }
}

/// A TCP connection served by the io_uring worker.
pub struct Stream {
    conn: Arc<Conn>,
}

impl Stream {
    /// `socket` must be nonblocking already (accepted with SOCK_NONBLOCK,
    /// created nonblocking, or set so by `io::Stream::from_std`).
    pub fn from_socket(socket: Socket) -> io::Result<Stream> {
        Ok(Stream {
            conn: Arc::new(Conn {
                socket,
                state: Mutex::new(ConnState::default()),
            }),
        })
    }

    pub fn from_std(stream: std::net::TcpStream) -> io::Result<Stream> {
        Stream::from_socket(Socket::from(stream))
    }

    pub fn from_fd(fd: OwnedFd) -> io::Result<Stream> {
        Stream::from_socket(Socket::from(fd))
    }

    /// Take the socket back (a connection just accepted, to hand it to
    /// another worker): only while no operation holds it.
    pub fn into_std(self) -> io::Result<std::net::TcpStream> {
        let conn = self.conn.clone();
        conn.lock().detached = true;
        drop(self);
        match Arc::try_unwrap(conn) {
            Ok(conn) => Ok(conn.socket.into()),
            Err(conn) => {
                let _ = conn.socket.shutdown(std::net::Shutdown::Both);
                Err(io::Error::other("the connection has operations in flight"))
            }
        }
    }

    /// Read what has arrived, without waiting; `WouldBlock` if nothing has
    /// (a receive is then in flight, so readiness is watched).
    pub fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        let mut st = self.conn.lock();
        if let Some(t) = st.traffic.as_mut().filter(|t| !t.inbox.is_empty()) {
            let n = t.inbox.len();
            if buf.is_empty() && buf.capacity() < n {
                // Hand the inbox over whole rather than copy it.
                std::mem::swap(buf, &mut t.inbox);
            } else {
                buf.extend_from_slice(&t.inbox);
                t.inbox.clear();
            }
            st.settle();
            return Ok(n);
        }
        if let Some(kind) = st.error {
            return Err(kind.into());
        }
        if st.eof {
            return Ok(0);
        }
        self.conn.arm_receive(&mut st);
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// Ready when a read would not wait.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.conn.lock();
        if st.inbox_len() > 0 || st.eof || st.error.is_some() {
            return Poll::Ready(Ok(()));
        }
        st.reader = Some(cx.waker().clone());
        self.conn.arm_receive(&mut st);
        Poll::Pending
    }

    /// Ready when [`Stream::try_write`] would take bytes.
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.conn.lock();
        if st.error.is_some() || st.outbox_len() < OUTBOX_HIGH {
            return Poll::Ready(Ok(()));
        }
        st.traffic().writer = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Queue `data` for sending unless the outbox is full (`WouldBlock`).
    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        let mut st = self.conn.lock();
        if let Some(kind) = st.error {
            return Err(kind.into());
        }
        if st.outbox_len() >= OUTBOX_HIGH {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let outbox = &mut st.traffic().outbox;
        ensure_room(outbox);
        outbox.extend_from_slice(data);
        drop(st);
        self.conn.push_sends();
        Ok(data.len())
    }

    /// Forget what was written and not yet handed to a send (the peer is
    /// given up on); a send in flight keeps its own bytes for the kernel.
    pub fn drop_unsent(&self) {
        let mut st = self.conn.lock();
        let sending = st.sending;
        if let Some(t) = st.traffic.as_mut() {
            t.outbox.clear();
            if !sending {
                t.unsent = None;
            }
        }
        st.settle();
    }

    /// Nothing has arrived and the peer has not closed (a server checked
    /// for health before it is lent).
    pub fn looks_quiet(&self) -> bool {
        let st = self.conn.lock();
        st.inbox_len() == 0 && !st.eof && st.error.is_none()
    }

    pub fn socket(&self) -> &Socket {
        &self.conn.socket
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.conn
            .socket
            .peer_addr()?
            .as_socket()
            .ok_or_else(|| io::ErrorKind::Unsupported.into())
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.conn
            .socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::ErrorKind::Unsupported.into())
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.conn.lock();
        if let Some(t) = st.traffic.as_mut().filter(|t| !t.inbox.is_empty()) {
            let n = t.inbox.len().min(buf.remaining());
            buf.put_slice(&t.inbox[..n]);
            bytes::Buf::advance(&mut t.inbox, n);
            st.settle();
            return Poll::Ready(Ok(()));
        }
        if let Some(kind) = st.error {
            return Poll::Ready(Err(kind.into()));
        }
        if st.eof {
            return Poll::Ready(Ok(()));
        }
        st.reader = Some(cx.waker().clone());
        self.conn.arm_receive(&mut st);
        Poll::Pending
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut st = self.conn.lock();
        if let Some(kind) = st.error {
            return Poll::Ready(Err(kind.into()));
        }
        if st.outbox_len() >= OUTBOX_HIGH {
            st.traffic().writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let outbox = &mut st.traffic().outbox;
        ensure_room(outbox);
        outbox.extend_from_slice(data);
        drop(st);
        self.conn.push_sends();
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.conn.lock();
        if let Some(kind) = st.error {
            return Poll::Ready(Err(kind.into()));
        }
        if !st.has_unsent() && st.outbox_len() == 0 {
            return Poll::Ready(Ok(()));
        }
        st.traffic().writer = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.as_mut().poll_flush(cx) {
            Poll::Ready(_) => {
                let _ = self.conn.socket.shutdown(std::net::Shutdown::Write);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut st = self.conn.lock();
        if st.detached {
            return;
        }
        if st.has_unsent() || st.outbox_len() > 0 {
            // Let what was written go first (refusals, Terminate).
            st.closing = true;
            drop(st);
            self.conn.push_sends();
        } else {
            // A receive in flight holds the descriptor: end it, with a
            // cancel on its ring where this is that ring's thread (no
            // system call), or else by shutting the socket. The descriptor
            // closes with the last operation holding it; with none in
            // flight (the peer closed first, as clients that say Terminate
            // do), that is now, and a shutdown would be a wasted call.
            let here = reactor::ring_id();
            let receiving = st.receiving;
            let receive = st
                .multishot
                .filter(|_| here != 0 && st.multishot_ring == here);
            drop(st);
            if receiving && !receive.is_some_and(reactor::cancel) {
                let _ = self.conn.socket.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}
