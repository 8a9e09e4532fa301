//! Listening sockets on the io_uring worker: one multishot accept each.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use socket2::Socket;

use super::net::Stream;
use super::reactor::{self, Tag};

/// A listening socket accepting through the ring (one multishot accept).
pub struct Listener {
    socket: Socket,
    accepted: Arc<Accepted>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // The multishot accept holds the socket open: stop it.
        let op = self
            .accepted
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .op
            .take();
        if let Some(op) = op {
            reactor::cancel(op);
        }
    }
}

#[derive(Default)]
pub struct Accepted {
    state: Mutex<AcceptState>,
}

#[derive(Default)]
struct AcceptState {
    ready: std::collections::VecDeque<io::Result<OwnedFd>>,
    /// The multishot accept in flight.
    op: Option<super::ring::OpId>,
    waiter: Option<Waker>,
}

impl Accepted {
    /// A completion of the multishot accept.
    pub fn accepted(&self, result: i32, more: bool, fd: Option<OwnedFd>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !more {
            st.op = None;
        }
        match fd {
            Some(fd) => st.ready.push_back(Ok(fd)),
            None if result < 0 && result != -libc::ECANCELED => st
                .ready
                .push_back(Err(io::Error::from_raw_os_error(-result))),
            None => {}
        }
        if let Some(w) = st.waiter.take() {
            w.wake();
        }
    }
}

impl Listener {
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<Listener> {
        listener.set_nonblocking(true)?;
        Ok(Listener {
            socket: Socket::from(listener),
            accepted: Arc::default(),
        })
    }

    pub async fn accept(&self) -> io::Result<Stream> {
        let fd = std::future::poll_fn(|cx| {
            let mut st = self
                .accepted
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(next) = st.ready.pop_front() {
                return Poll::Ready(next);
            }
            if st.op.is_none() {
                st.op =
                    reactor::accept(self.socket.as_raw_fd(), Tag::Accept(self.accepted.clone()));
            }
            st.waiter = Some(cx.waker().clone());
            Poll::Pending
        })
        .await?;
        Stream::from_fd(fd)
    }

    /// Connections already accepted and not yet taken (a drain serves them).
    pub fn take_ready(&self) -> Vec<std::net::TcpStream> {
        let mut st = self
            .accepted
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        st.ready
            .drain(..)
            .filter_map(Result::ok)
            .map(std::net::TcpStream::from)
            .collect()
    }

    /// Take the socket back (a drain accepts what is queued directly).
    pub fn into_std(self) -> io::Result<std::net::TcpListener> {
        self.socket.try_clone().map(Into::into)
    }
}
