//! A TLS session over a plain [`Stream`], offering the relay the same calls
//! a socket does: non-blocking reads and writes, and readiness.
//!
//! rustls is driven by pgmux's buffers, not by a socket: ciphertext is read
//! in one receive per readiness event into a buffer taken from the worker's
//! spares (held only while bytes wait; an idle connection holds none) and
//! handed to rustls from memory, which spares a syscall per 4 KiB rustls
//! would read by itself; what rustls encrypts goes out in one write per
//! call. On io_uring the plain stream beneath is the ring's, so TLS costs
//! no syscall of its own.
//!
//! Writes are buffered in rustls (up to [`UNSENT_LIMIT`] bytes of
//! ciphertext): a write returns once its bytes are encrypted, and what the
//! socket did not take goes out at the next write, flush, read or wait for
//! readiness, each of which pushes it first. pgmux always waits for an
//! answer after it writes, so nothing stays behind.

use std::io::{self, BufRead, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use rustls::Connection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::io::buffers;
use crate::io::Stream;

/// Ciphertext rustls may hold unsent; past it a write waits.
const UNSENT_LIMIT: usize = 64 * 1024;

pub struct TlsStream {
    inner: Stream,
    /// Where pgmux is the TLS server: the channel binding data of the
    /// certificate it presented (see [`TlsStream::server_end_point`]).
    own_end_point: Option<Arc<[u8]>>,
    /// The session's state. A mutex because the relay asks for read and
    /// write readiness from two branches of one `select!` (both `&self`);
    /// it is only ever taken by the connection's own task, so never waits.
    state: Mutex<State>,
}

struct State {
    conn: Connection,
    /// Ciphertext received and not yet taken by rustls.
    incoming: BytesMut,
}

/// What the handshake waits for next.
enum Step {
    Done,
    Again,
    WaitWritable,
    WaitReadable,
}

/// rustls' outgoing records to the socket beneath, in one write.
struct Sink<'a>(&'a Stream);

impl Write for Sink<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.try_write(data)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl State {
    /// Push the ciphertext rustls holds; `WouldBlock` if some stays.
    fn send(&mut self, inner: &Stream) -> io::Result<()> {
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut Sink(inner))? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    /// Hand rustls the ciphertext received, as far as it takes it (it
    /// stops when 16 KiB of plaintext wait to be read).
    fn absorb(&mut self, inner: &Stream) -> io::Result<()> {
        while !self.incoming.is_empty() {
            let taken = match self.conn.read_tls(&mut &self.incoming[..]) {
                Ok(n) => n,
                // Plaintext waits to be read first.
                Err(e) if e.kind() == io::ErrorKind::Other => break,
                Err(e) => return Err(e),
            };
            self.incoming.advance(taken);
            if let Err(e) = self.conn.process_new_packets() {
                // rustls queued an alert for the peer: tell it why.
                let _ = self.send(inner);
                return Err(tls_error(e));
            }
            if taken == 0 {
                break;
            }
        }
        if self.incoming.is_empty() {
            buffers::give(std::mem::take(&mut self.incoming));
        }
        Ok(())
    }

    /// One receive from the socket into `incoming`; `Ok(false)` at the
    /// end of the stream.
    fn receive(&mut self, inner: &Stream) -> io::Result<bool> {
        if self.incoming.capacity() == 0 {
            self.incoming = buffers::take();
        }
        match inner.try_read_buf(&mut self.incoming) {
            Ok(0) => {
                // Tell rustls the peer is gone (a read then says whether
                // it said goodbye first).
                self.conn.read_tls(&mut io::empty())?;
                Ok(false)
            }
            Ok(_) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Plaintext waits in rustls, or the session is over: a read would not
    /// wait.
    fn readable(&mut self) -> bool {
        !self.incoming.is_empty()
            || !matches!(self.conn.reader().fill_buf(), Err(e) if would_block(&e))
    }

    /// Copy plaintext out through `put` (which takes what fits and says how
    /// much), receiving once from the socket if rustls has none.
    fn read_with(
        &mut self,
        inner: &Stream,
        mut put: impl FnMut(&[u8]) -> usize,
    ) -> io::Result<usize> {
        let mut total = 0;
        let mut received = false;
        loop {
            let mut reader = self.conn.reader();
            match reader.fill_buf() {
                // The peer said goodbye.
                Ok([]) => break,
                Ok(chunk) => {
                    let len = chunk.len();
                    let n = put(chunk);
                    reader.consume(n);
                    total += n;
                    if n < len {
                        break;
                    }
                    continue;
                }
                Err(e) if would_block(&e) => {}
                Err(_) if total > 0 => break,
                Err(e) => return Err(e),
            }
            if !self.incoming.is_empty() {
                let before = self.incoming.len();
                self.absorb(inner)?;
                if self.incoming.len() < before {
                    continue;
                }
            }
            // One receive per call, and none once there is something to
            // return: a receive that can only say EAGAIN is a wasted syscall.
            if received || total > 0 {
                break;
            }
            received = true;
            match self.receive(inner) {
                Ok(_) => self.absorb(inner)?,
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        // Answer what the peer's records asked for (a key update).
        match self.send(inner) {
            Err(e) if !would_block(&e) => return Err(e),
            _ => {}
        }
        let closed = !matches!(self.conn.reader().fill_buf(), Err(e) if would_block(&e));
        if total == 0 && !closed {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(total)
    }
}

impl TlsStream {
    /// Start a session over `inner`, whose first bytes (`received`) were
    /// already read; [`TlsStream::handshake`] completes it.
    pub fn new(inner: Stream, conn: impl Into<Connection>, received: &[u8]) -> TlsStream {
        let mut conn = conn.into();
        conn.set_buffer_limit(Some(UNSENT_LIMIT));
        TlsStream {
            inner,
            own_end_point: None,
            state: Mutex::new(State {
                conn,
                incoming: BytesMut::from(received),
            }),
        }
    }

    /// Say which channel binding data the certificate pgmux presents has.
    pub fn with_own_end_point(mut self, end_point: Option<Arc<[u8]>>) -> TlsStream {
        self.own_end_point = end_point;
        self
    }

    /// SCRAM's `tls-server-end-point` data for this session: of the
    /// certificate pgmux presented (toward a client), or of the one the
    /// server presented (toward PostgreSQL). `None` when the certificate's
    /// signature names no hash.
    pub fn server_end_point(&self) -> Option<Vec<u8>> {
        match &self.state().conn {
            Connection::Server(_) => self.own_end_point.as_deref().map(<[u8]>::to_vec),
            Connection::Client(c) => super::server_end_point(c.peer_certificates()?.first()?),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run the handshake to its end (bytes the peer sent after it stay
    /// buffered for the first read).
    pub async fn handshake(&self) -> io::Result<()> {
        loop {
            match self.handshake_step()? {
                Step::Done => return Ok(()),
                Step::Again => {}
                Step::WaitWritable => {
                    std::future::poll_fn(|cx| self.inner.poll_write_ready(cx)).await?
                }
                Step::WaitReadable => {
                    std::future::poll_fn(|cx| self.inner.poll_read_ready(cx)).await?
                }
            }
        }
    }

    /// As far as the handshake goes without waiting.
    fn handshake_step(&self) -> io::Result<Step> {
        let mut st = self.state();
        match st.send(&self.inner) {
            Ok(()) => {}
            Err(e) if would_block(&e) => return Ok(Step::WaitWritable),
            Err(e) => return Err(e),
        }
        if !st.conn.is_handshaking() {
            return Ok(Step::Done);
        }
        if !st.incoming.is_empty() {
            st.absorb(&self.inner)?;
            return Ok(Step::Again);
        }
        match st.receive(&self.inner) {
            Ok(true) => {
                st.absorb(&self.inner)?;
                Ok(Step::Again)
            }
            Ok(false) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection during the TLS handshake",
            )),
            Err(e) if would_block(&e) => Ok(Step::WaitReadable),
            Err(e) => Err(e),
        }
    }

    /// The plain stream beneath (socket options, addresses).
    pub fn inner(&self) -> &Stream {
        &self.inner
    }

    /// Move the plain stream into this thread's reactor (see
    /// [`Stream::rehome`]); the session goes with it.
    pub fn rehome(self) -> io::Result<TlsStream> {
        Ok(TlsStream {
            inner: self.inner.rehome()?,
            own_end_point: self.own_end_point,
            state: self.state,
        })
    }

    /// The ALPN protocol both ends agreed on.
    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.state().conn.alpn_protocol().map(<[u8]>::to_vec)
    }

    /// Protocol and cipher, as SHOW CLIENTS and SHOW SERVERS print them
    /// (`TLSv1.3/TLS13_AES_256_GCM_SHA384`).
    pub fn describe(&self) -> String {
        let st = self.state();
        let version = match st.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(v) => format!("{v:?}"),
            None => return String::new(),
        };
        match st.conn.negotiated_cipher_suite() {
            Some(suite) => format!("{version}/{:?}", suite.suite()),
            None => version,
        }
    }

    /// Whether the handshake has not finished yet.
    pub fn is_handshaking(&self) -> bool {
        self.state().conn.is_handshaking()
    }

    /// The client's certificate (DER), first of its chain.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        let st = self.state();
        st.conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
    }

    pub fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        let mut st = self.state();
        st.read_with(&self.inner, |chunk| {
            buf.extend_from_slice(chunk);
            chunk.len()
        })
    }

    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.state().readable() {
            return Poll::Ready(Ok(()));
        }
        // Ciphertext still owed to the peer goes first: the peer may be
        // waiting for it before it says anything.
        if let Poll::Ready(Err(e)) = self.poll_write_ready(cx) {
            return Poll::Ready(Err(e));
        }
        self.inner.poll_read_ready(cx)
    }

    /// Ready when every byte of ciphertext has gone to the socket beneath.
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.state().send(&self.inner) {
                Ok(()) => return Poll::Ready(Ok(())),
                Err(e) if would_block(&e) => ready!(self.inner.poll_write_ready(cx))?,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        let mut st = self.state();
        st.send(&self.inner)?;
        let n = st.conn.writer().write(data)?;
        match st.send(&self.inner) {
            Err(e) if !would_block(&e) => Err(e),
            _ => Ok(n),
        }
    }

    /// Nothing has arrived (see [`Stream::quiet`]).
    pub fn quiet(&self, peek: bool) -> bool {
        !self.state().readable() && self.inner.quiet(peek)
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let read = self.state().read_with(&self.inner, |chunk| {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                n
            });
            match read {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if would_block(&e) => ready!(self.poll_read_ready(cx))?,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    // A peer gone without close_notify reads as the end
                    // of the stream, as on a plain socket.
                    return Poll::Ready(Ok(()));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.try_write(data) {
                Err(e) if would_block(&e) => ready!(self.poll_write_ready(cx))?,
                other => return Poll::Ready(other),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_ready(cx))?;
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.state().conn.send_close_notify();
        ready!(self.poll_write_ready(cx))?;
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
