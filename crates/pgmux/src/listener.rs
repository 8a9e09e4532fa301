//! The accept loop: caps clients at `max_client_conn` and hands each
//! connection to its own session task.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::session::{self, Shared};

pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, max_clients: u32) {
    let slots = Arc::new(Semaphore::new(max_clients as usize));
    loop {
        let (mut stream, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors or similar: back off briefly
                // rather than spin; existing clients keep being served.
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                tokio::spawn(session::serve(stream, shared.clone(), slot));
            }
            Err(_) => {
                tokio::spawn(async move {
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
}
