//! One-shot ring operations a task waits for: a connect, and the
//! completion record such an operation reports to.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use socket2::{Domain, Socket, Type};

use super::net::Stream;
use super::reactor::{self, Tag};

/// Connect to `addr` through the ring. The op holds the socket until it
/// completes, and a connect given up (a timeout) is cancelled.
pub async fn connect(addr: SocketAddr) -> io::Result<Stream> {
    let socket = Arc::new(Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        None,
    )?);
    let done = Arc::new(Completion::default());
    let Some(op) = reactor::connect(socket.clone(), addr.into(), Tag::Done(done.clone())) else {
        return Err(io::ErrorKind::Unsupported.into());
    };
    let mut in_flight = CancelOnDrop(Some(op));
    let result = std::future::poll_fn(|cx| done.poll(cx)).await;
    in_flight.0 = None;
    if result < 0 {
        return Err(io::Error::from_raw_os_error(-result));
    }
    // The op's slot let go of its copy when it completed.
    let socket = Arc::try_unwrap(socket).or_else(|shared| shared.try_clone())?;
    Stream::from_socket(socket)
}

/// Cancels an operation still in flight when its future is dropped.
struct CancelOnDrop(Option<super::ring::OpId>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(op) = self.0.take() {
            reactor::cancel(op);
        }
    }
}

/// The result of a one-shot operation, and who waits for it.
#[derive(Default)]
pub struct Completion {
    state: Mutex<(Option<i32>, Option<Waker>)>,
}

impl Completion {
    pub fn complete(&self, result: i32) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 = Some(result);
        if let Some(w) = st.1.take() {
            w.wake();
        }
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<i32> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.0 {
            Some(r) => Poll::Ready(r),
            None => {
                st.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
