//! The I/O beneath the workers, in two backends the same session code runs
//! on (chosen by `io_backend`):
//!
//! - `epoll`: each worker is a single-threaded tokio runtime;
//! - `io_uring` ([`uring`]): each worker is pgmux's own small runtime on an
//!   io_uring instance, where one `io_uring_enter` hands the kernel every
//!   send and receive queued during a turn and waits for completions.
//!
//! The flows and the relay see only [`Stream`] (tokio's `AsyncRead` and
//! `AsyncWrite`, plus the few readiness calls the relay needs), [`spawn`],
//! [`sleep`], [`timeout`] and [`connect`]; each picks the backend of the
//! thread it runs on. The control plane (signals, metrics, housekeeping)
//! always runs on tokio.

pub mod buffers;
pub mod uring;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Which backend the workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Epoll,
    IoUring,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Epoll => "epoll",
            Backend::IoUring => "io_uring",
        }
    }
}

/// A connection, on whichever backend its worker runs, possibly with a
/// TLS session over it.
pub enum Stream {
    Tokio(tokio::net::TcpStream),
    Uring(uring::Stream),
    Tls(Box<crate::tls::TlsStream>),
}

impl Stream {
    /// Adopt a connected socket on this thread's backend.
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<Stream> {
        stream.set_nonblocking(true)?;
        if uring::active() {
            uring::Stream::from_std(stream).map(Stream::Uring)
        } else {
            tokio::net::TcpStream::from_std(stream).map(Stream::Tokio)
        }
    }

    /// Read what has arrived without waiting (`WouldBlock` if nothing).
    pub fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Stream::Tokio(s) => {
                let room = buf.capacity() - buf.len();
                let n = s.try_read_buf(buf)?;
                if n > 0 && n < room {
                    // A read that filled less than its room emptied the
                    // socket (readiness is edge-triggered): forget the
                    // readiness now, so the next wait sleeps instead of
                    // trying a read that can only say EAGAIN. (tokio
                    // forgets it only after an EAGAIN; the closure makes
                    // no syscall.)
                    let _ = s.try_io(tokio::io::Interest::READABLE, || {
                        Err::<(), _>(io::ErrorKind::WouldBlock.into())
                    });
                }
                Ok(n)
            }
            Stream::Uring(s) => s.try_read_buf(buf),
            Stream::Tls(s) => s.try_read_buf(buf),
        }
    }

    /// Ready when a read would not wait.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tokio(s) => s.poll_read_ready(cx),
            Stream::Uring(s) => s.poll_read_ready(cx),
            Stream::Tls(s) => s.poll_read_ready(cx),
        }
    }

    /// Ready when a write would take at least some bytes without waiting.
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tokio(s) => s.poll_write_ready(cx),
            Stream::Uring(s) => s.poll_write_ready(cx),
            Stream::Tls(s) => s.poll_write_ready(cx),
        }
    }

    /// Write what the socket takes without waiting (`WouldBlock` if none).
    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tokio(s) => s.try_write(data),
            Stream::Uring(s) => s.try_write(data),
            Stream::Tls(s) => s.try_write(data),
        }
    }

    /// Write from several buffers in one call (one `writev` on epoll).
    pub fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tokio(s) => s.try_write_vectored(bufs),
            // The ring's writes are copies into its send buffer: no
            // syscall to save.
            _ => {
                let mut total = 0;
                for buf in bufs.iter().filter(|b| !b.is_empty()) {
                    match self.try_write(buf) {
                        Ok(n) => {
                            total += n;
                            if n < buf.len() {
                                break;
                            }
                        }
                        Err(e) if total > 0 && e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                Ok(total)
            }
        }
    }

    /// Nothing has arrived on an idle connection and the peer has not
    /// closed; with `peek`, asked of the kernel (a syscall).
    pub fn quiet(&self, peek: bool) -> bool {
        let result = match (self, peek) {
            (Stream::Tls(s), _) => return s.quiet(peek),
            (Stream::Uring(s), false) => return s.looks_quiet(),
            (Stream::Uring(s), true) if !s.looks_quiet() => return false,
            (Stream::Tokio(s), false) => {
                let mut probe = [0u8; 1];
                s.try_read(&mut probe)
            }
            (s, true) => {
                let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
                s.socket().peek(&mut probe)
            }
        };
        matches!(result, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Give up on a peer that stopped reading: what was written and not
    /// sent is dropped, and the socket is shut both ways, which also ends a
    /// send waiting for the peer's window.
    pub fn abort(&self) {
        match self {
            Stream::Uring(s) => s.drop_unsent(),
            Stream::Tls(s) => return s.inner().abort(),
            Stream::Tokio(_) => {}
        }
        let _ = self.socket().shutdown(std::net::Shutdown::Both);
    }

    /// The socket beneath, for options and peeks.
    pub fn socket(&self) -> socket2::SockRef<'_> {
        match self {
            Stream::Tokio(s) => socket2::SockRef::from(s),
            Stream::Uring(s) => socket2::SockRef::from(s.socket()),
            Stream::Tls(s) => s.inner().socket(),
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Stream::Tokio(s) => s.peer_addr(),
            Stream::Uring(s) => s.peer_addr(),
            Stream::Tls(s) => s.inner().peer_addr(),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Stream::Tokio(s) => s.local_addr(),
            Stream::Uring(s) => s.local_addr(),
            Stream::Tls(s) => s.inner().local_addr(),
        }
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.socket().set_tcp_nodelay(on)
    }

    /// Move into this thread's reactor (a server taken from another
    /// worker). Only epoll needs it: a ring works on any descriptor.
    pub fn rehome(self) -> io::Result<Stream> {
        match self {
            Stream::Tokio(s) => Stream::from_std(s.into_std()?),
            uring @ Stream::Uring(_) => Ok(uring),
            Stream::Tls(s) => Ok(Stream::Tls(Box::new(s.rehome()?))),
        }
    }

    /// The TLS session, if any.
    pub fn tls(&self) -> Option<&crate::tls::TlsStream> {
        match self {
            Stream::Tls(s) => Some(s),
            _ => None,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tokio(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Uring(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tokio(s) => Pin::new(s).poll_write(cx, data),
            Stream::Uring(s) => Pin::new(s).poll_write(cx, data),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tokio(s) => Pin::new(s).poll_flush(cx),
            Stream::Uring(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tokio(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Uring(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// TCP keepalive and user timeout for a socket (PgBouncer's settings; a
/// timing of 0 leaves the OS default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpOptions {
    pub keepalive: bool,
    pub idle: u32,
    pub interval: u32,
    pub count: u32,
    pub user_timeout_ms: u32,
}

impl TcpOptions {
    pub fn apply(&self, socket: socket2::SockRef<'_>) -> io::Result<()> {
        if self.keepalive {
            let secs = |s: u32| Duration::from_secs(u64::from(s));
            let mut keepalive = socket2::TcpKeepalive::new();
            if self.idle > 0 {
                keepalive = keepalive.with_time(secs(self.idle));
            }
            if self.interval > 0 {
                keepalive = keepalive.with_interval(secs(self.interval));
            }
            if self.count > 0 {
                keepalive = keepalive.with_retries(self.count);
            }
            socket.set_tcp_keepalive(&keepalive)?;
        } else {
            socket.set_keepalive(false)?;
        }
        if self.user_timeout_ms > 0 {
            let timeout = Duration::from_millis(u64::from(self.user_timeout_ms));
            socket.set_tcp_user_timeout(Some(timeout))?;
        }
        Ok(())
    }
}

/// Connect to `addr` on this thread's backend.
pub async fn connect(addr: SocketAddr) -> io::Result<Stream> {
    if uring::active() {
        uring::connect(addr).await.map(Stream::Uring)
    } else {
        tokio::net::TcpStream::connect(addr)
            .await
            .map(Stream::Tokio)
    }
}

/// Run `task` on this thread's backend.
pub fn spawn(task: impl Future<Output = ()> + Send + 'static) {
    if uring::executor_active() {
        uring::spawn(task);
    } else {
        tokio::spawn(task);
    }
}

/// Wait `duration` on this thread's backend.
pub fn sleep(duration: Duration) -> Sleep {
    Sleep {
        deadline: Deadline::after(duration),
    }
}

pin_project_lite::pin_project! {
    /// [`sleep`]'s future: a type that can be named (and boxed).
    pub struct Sleep {
        #[pin]
        deadline: Deadline,
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().deadline.poll(cx)
    }
}

/// The time ran out before the work was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline has elapsed")]
pub struct Elapsed;

pin_project_lite::pin_project! {
    /// `work`, unless its time runs out first ([`timeout`]). A struct
    /// rather than an `async fn`: an `async fn` keeps its argument and the
    /// pinned future it polls as two copies, which doubled the box every
    /// login lives in.
    pub struct Timeout<F> {
        #[pin]
        work: F,
        #[pin]
        deadline: Deadline,
    }
}

pin_project_lite::pin_project! {
    #[project = DeadlineProj]
    enum Deadline {
        Tokio { #[pin] sleep: tokio::time::Sleep },
        Uring { sleep: uring::Sleep },
    }
}

impl Deadline {
    /// `duration` from now, on this thread's backend.
    fn after(duration: Duration) -> Deadline {
        if uring::executor_active() {
            Deadline::Uring {
                sleep: uring::sleep_until(std::time::Instant::now() + duration),
            }
        } else {
            Deadline::Tokio {
                sleep: tokio::time::sleep(duration),
            }
        }
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.project() {
            DeadlineProj::Tokio { sleep } => sleep.poll(cx),
            DeadlineProj::Uring { sleep } => Pin::new(sleep).poll(cx),
        }
    }
}

/// `work`, unless `duration` passes first (on this thread's backend).
pub fn timeout<F: Future>(duration: Duration, work: F) -> Timeout<F> {
    Timeout {
        work,
        deadline: Deadline::after(duration),
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(done) = this.work.poll(cx) {
            return Poll::Ready(Ok(done));
        }
        this.deadline.poll(cx).map(|()| Err(Elapsed))
    }
}
