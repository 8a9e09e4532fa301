//! `/metrics` (Prometheus text format), `/healthz` and `/readyz` on one
//! small HTTP/1.1 listener. Requests are read with a size cap and a
//! deadline; every response closes the connection; at most
//! [`MAX_CONNECTIONS`] are open at once, so a stranger cannot spend the
//! file descriptors the clients need.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::pool::Pools;
use crate::stats;

const MAX_REQUEST: usize = 8 * 1024;
/// Connections served at once; more are closed unanswered. Prometheus,
/// a health checker and a person with curl need a handful.
pub const MAX_CONNECTIONS: usize = 32;
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How long /readyz waits for a backend to accept a TCP connection.
const BACKEND_PROBE: Duration = Duration::from_secs(2);

pub async fn serve(listener: TcpListener, pools: Arc<Pools>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors or similar: back off rather
                // than spin.
                tracing::warn!(error = %e, "metrics listener cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: closed at once, unanswered.
            continue;
        };
        let pools = pools.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(REQUEST_DEADLINE, answer(stream, &pools)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, pools: &Pools) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > MAX_REQUEST {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request too large\n",
            )
            .await;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/metrics") => {
            let body = render_metrics(pools);
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4",
                body.as_bytes(),
            )
            .await
        }
        (b"GET", b"/healthz") => respond(&mut stream, "200 OK", "text/plain", b"ok\n").await,
        (b"GET", b"/readyz") => match readiness(pools).await {
            Ok(()) => respond(&mut stream, "200 OK", "text/plain", b"ready\n").await,
            Err(why) => {
                let body = format!("not ready: {why}\n");
                respond(
                    &mut stream,
                    "503 Service Unavailable",
                    "text/plain",
                    body.as_bytes(),
                )
                .await
            }
        },
        (b"GET", _) => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n").await,
        _ => {
            respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                b"GET only\n",
            )
            .await
        }
    }
}

/// Ready: not shutting down, and every PostgreSQL server pgmux points at
/// either served a pool within `server_check_delay` or accepts a TCP
/// connection now (a probe makes PostgreSQL fork a backend, so it is made
/// only when pgmux knows nothing recent).
async fn readiness(pools: &Pools) -> Result<(), String> {
    if pools.lifecycle.draining() {
        return Err("shutting down".into());
    }
    let config = pools.config();
    // Each server list (the general one and every database's) must have
    // a server that answers: with several, any one (the others may be a
    // failed primary that pgmux has moved away from).
    let lists = std::iter::once(config.server_hosts())
        .chain(
            config
                .databases
                .keys()
                .filter_map(|name| config.target(name))
                .map(|t| t.hosts),
        )
        .collect::<std::collections::BTreeSet<_>>();
    let (now, delay) = (std::time::Instant::now(), config.server_check_delay());
    let all = pools.all();
    let answered_lately = |hosts: &Vec<crate::config::Endpoint>| {
        all.iter()
            .any(|p| &p.target().hosts == hosts && p.answered.within(delay, now))
    };
    for hosts in lists {
        if !delay.is_zero() && answered_lately(&hosts) {
            continue;
        }
        let mut why = String::new();
        for e in &hosts {
            let probe = tokio::net::TcpStream::connect((e.host.as_str(), e.port));
            match tokio::time::timeout(BACKEND_PROBE, probe).await {
                Ok(Ok(_)) => {
                    why.clear();
                    break;
                }
                Ok(Err(err)) => why = format!("PostgreSQL at {e}: {err}"),
                Err(_) => why = format!("PostgreSQL at {e}: no answer within {BACKEND_PROBE:?}"),
            }
        }
        if !why.is_empty() {
            return Err(why);
        }
    }
    Ok(())
}

/// Publish the pools' current levels, then render everything recorded.
pub fn render_metrics(pools: &Pools) -> String {
    let all = pools.all();
    // Every live series is touched before the render; what is not (the
    // series of pools that are gone) expires (see `stats::SERIES_IDLE`).
    for pool in &all {
        pool.stats.publish(&pool.levels());
    }
    stats::touch_process_series();
    pools.host_book().publish();
    stats::recorder().run_upkeep();
    let mut out = stats::recorder().render();
    stats::catalog::render_histograms(&all, &mut out);
    out
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}
