//! A TCP proxy that misbehaves on demand, for fault-injection tests: put it
//! between pgmux and PostgreSQL (aim one database's `port` at it), or
//! between a client and pgmux, and switch a fault on each direction while
//! traffic flows.
//!
//! Each connection is two pipes, one per direction, each reading a chunk
//! and forwarding it under the fault its direction has at that moment. A
//! fault applies from the next chunk read: at most one chunk already read
//! when it is switched on is forwarded as before.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// What a direction does with the bytes it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Forward each chunk as it comes.
    Pass,
    /// Hold each chunk this long before forwarding it: a slow network.
    Delay(Duration),
    /// Read and drop everything, the end of the stream too: a peer that
    /// accepts and never answers. A connection accepted while its
    /// `ToTarget` side is a black hole is never even connected onwards.
    BlackHole,
    /// Forward this many more bytes, then reset both sockets of the
    /// connection (an RST each, not a FIN: SO_LINGER 0). Counted from the
    /// first chunk read under this fault; setting it again while it is
    /// set does not restart the count.
    ResetAfter(usize),
    /// Read nothing: the sender's socket buffers fill up and its writes
    /// block, as when the peer is stuck. Reading resumes when lifted.
    StopReading,
    /// Forward one byte per write, yielding between writes, so the
    /// receiver gets its messages cut at every possible place.
    ByteAtATime,
}

/// A direction through the proxy. The "client" is whoever connects to the
/// proxy (pgmux, on the server side; a test's client, on the client side),
/// the "target" the address the proxy forwards to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    ToTarget = 0,
    ToClient = 1,
}

/// The faults of the connections, and who is watching them.
struct Controls {
    /// What a new connection starts with, per direction.
    default: [Fault; 2],
    /// Each connection accepted so far (closed ones too: a send to them
    /// costs nothing), per direction.
    conns: Vec<[watch::Sender<Fault>; 2]>,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    controls: Arc<Mutex<Controls>>,
    accepted: watch::Receiver<usize>,
    /// Owns every connection's task (in a `JoinSet`): dropping the proxy
    /// ends them all.
    acceptor: JoinHandle<()>,
}

impl FaultProxy {
    /// Listen on a free loopback port and forward to `target`, every
    /// direction passing until told otherwise.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let controls = Arc::new(Mutex::new(Controls {
            default: [Fault::Pass, Fault::Pass],
            conns: Vec::new(),
        }));
        let (count, accepted) = watch::channel(0);
        let shared = controls.clone();
        let acceptor = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let faults = {
                    let mut c = shared.lock().unwrap();
                    let (to_target, to_target_rx) = watch::channel(c.default[0].clone());
                    let (to_client, to_client_rx) = watch::channel(c.default[1].clone());
                    c.conns.push([to_target, to_client]);
                    [to_target_rx, to_client_rx]
                };
                conns.spawn(serve(client, target, faults));
                count.send_modify(|n| *n += 1);
                // Forget the finished ones as we go.
                while conns.try_join_next().is_some() {}
            }
        });
        FaultProxy {
            addr,
            controls,
            accepted,
            acceptor,
        }
    }

    /// Set `fault` on `dir` of every open connection, and of every
    /// connection accepted from now on.
    pub fn set(&self, dir: Dir, fault: Fault) {
        let mut c = self.controls.lock().unwrap();
        c.default[dir as usize] = fault.clone();
        for conn in &c.conns {
            conn[dir as usize].send_replace(fault.clone());
        }
    }

    /// Set `fault` on `dir` of the connections open now only: those
    /// accepted later pass (a CancelRequest pgmux sends about a faulty
    /// connection, or the replacement for a server it gave up).
    pub fn set_open(&self, dir: Dir, fault: Fault) {
        let c = self.controls.lock().unwrap();
        for conn in &c.conns {
            conn[dir as usize].send_replace(fault.clone());
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        *self.accepted.borrow()
    }

    /// Wait until `n` connections in all have been accepted.
    pub async fn wait_accepted(&self, n: usize) {
        let mut accepted = self.accepted.clone();
        accepted.wait_for(|&a| a >= n).await.unwrap();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// One connection: connect onwards and run both pipes. When one resets,
/// the other is dropped and both sockets are reset.
async fn serve(mut client: TcpStream, target: SocketAddr, faults: [watch::Receiver<Fault>; 2]) {
    let [to_target, to_client] = faults;
    if *to_target.borrow() == Fault::BlackHole {
        // Accept and hold: read and drop until the client gives up.
        let mut sink = [0u8; 4096];
        while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
        return;
    }
    // A target that refuses is passed on as a reset.
    let Ok(mut server) = TcpStream::connect(target).await else {
        return reset(&client);
    };
    // One write, one segment: ByteAtATime and Delay must not be undone by
    // Nagle's algorithm coalescing small writes.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_in, mut client_out) = client.split();
    let (mut server_in, mut server_out) = server.split();
    let ended = tokio::try_join!(
        pipe(&mut client_in, &mut server_out, to_target),
        pipe(&mut server_in, &mut client_out, to_client),
    );
    if ended.is_err() {
        reset(&client);
        reset(&server);
    }
}

/// Make the socket's close an RST (it is closed when dropped): SO_LINGER 0.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// The connection must be reset (a ResetAfter ran out, or a peer reset).
struct Reset;

/// Copy `from` to `to` under the direction's fault, until the end of the
/// stream (passed on as a FIN) or a reset.
async fn pipe(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    mut fault: watch::Receiver<Fault>,
) -> Result<(), Reset> {
    let mut buf = vec![0u8; 16 * 1024];
    // Bytes left before a reset, while ResetAfter is on.
    let mut budget: Option<usize> = None;
    loop {
        // Not reading is the fault itself: wait until it is lifted.
        if fault.wait_for(|f| *f != Fault::StopReading).await.is_err() {
            return Ok(()); // the proxy is gone
        }
        // A peer's reset is passed on as one.
        let n = from.read(&mut buf).await.map_err(|_| Reset)?;
        let chunk = &buf[..n];
        let current = fault.borrow().clone();
        if !matches!(current, Fault::ResetAfter(_)) {
            budget = None;
        }
        if n == 0 {
            if current == Fault::BlackHole {
                // Swallow the end too: the other side hears nothing.
                std::future::pending::<()>().await;
            }
            let _ = to.shutdown().await;
            return Ok(());
        }
        let written = match current {
            Fault::Pass | Fault::StopReading => to.write_all(chunk).await,
            Fault::Delay(d) => {
                tokio::time::sleep(d).await;
                to.write_all(chunk).await
            }
            Fault::BlackHole => Ok(()),
            Fault::ResetAfter(limit) => {
                let left = budget.get_or_insert(limit);
                let take = (*left).min(n);
                *left -= take;
                to.write_all(&chunk[..take]).await.map_err(|_| Reset)?;
                if take < n || *left == 0 {
                    return Err(Reset);
                }
                Ok(())
            }
            Fault::ByteAtATime => {
                for byte in chunk {
                    // With TCP_NODELAY each write leaves as its own segment.
                    to.write_all(std::slice::from_ref(byte))
                        .await
                        .map_err(|_| Reset)?;
                    tokio::task::yield_now().await;
                }
                Ok(())
            }
        };
        written.map_err(|_| Reset)?;
    }
}
