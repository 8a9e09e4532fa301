//! The accept loop: caps clients at `max_client_conn` and hands each
//! connection to its own session task, until a shutdown begins.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::session::{self, Shared};
use crate::stats::{self, LoginFailure};

pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, max_clients: u32) {
    let slots = Arc::new(Semaphore::new(max_clients as usize));
    let lifecycle = shared.pools.lifecycle.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = lifecycle.drain_started() => break,
        };
        match accepted {
            Ok((stream, _)) => admit(stream, &shared, &slots),
            Err(e) => {
                // Out of file descriptors or similar: back off briefly
                // rather than spin; existing clients keep being served.
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Connections the kernel queued before we stopped would be reset when
    // the socket closes: take them, so they log in and are told why they
    // are closed (57P01) rather than refused.
    if let Ok(std_listener) = listener.into_std() {
        while let Ok((stream, _)) = std_listener.accept() {
            if let Ok(stream) = stream
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(stream))
            {
                admit(stream, &shared, &slots);
            }
        }
    }
    tracing::info!("stopped accepting new clients");
}

fn admit(stream: TcpStream, shared: &Arc<Shared>, slots: &Arc<Semaphore>) {
    let _ = stream.set_nodelay(true);
    let tracker = &shared.pools.lifecycle.sessions;
    match slots.clone().try_acquire_owned() {
        Ok(slot) => {
            tracker.spawn(session::serve(stream, shared.clone(), slot));
        }
        Err(_) => {
            stats::login_failed(LoginFailure::TooManyClients);
            let mut stream = stream;
            tracker.spawn(async move {
                session::refuse(
                    &mut stream,
                    "53300",
                    "sorry, too many clients already (max_client_conn)",
                )
                .await;
            });
        }
    }
}
