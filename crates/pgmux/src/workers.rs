//! Per-core event loops: `worker_threads` threads, each running its own
//! single-threaded runtime that owns the clients it accepted and the
//! servers lent to them. A transaction's client and server sockets are
//! driven by one thread: no work stealing, no cross-thread wake-up, no
//! futex on the hot path. What must stay global (pool limits, FIFO order,
//! the cancel registry, statistics) is shared state, not a thread.
//!
//! The control plane (signals, reloads, the metrics endpoint, pool
//! housekeeping) runs on the runtime that started the [`crate::app::App`].

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::watch;

use crate::io::{uring, Backend};

thread_local! {
    /// The worker this thread is, if it is one.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The most workers any App of this process started (per-worker lists are
/// sized by it).
static CONFIGURED: AtomicUsize = AtomicUsize::new(0);

/// How many workers there are (the most any App of this process started).
pub fn configured() -> usize {
    CONFIGURED.load(Ordering::Relaxed)
}

/// The worker running on this thread (`None` on the control plane).
pub fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

/// How many workers `worker_threads` asks for (0: one per CPU).
pub fn count(configured: u32) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    }
}

/// The backend `io_backend` asks for (`auto`: io_uring where the kernel
/// allows it); remembered for SHOW CONFIG.
pub fn backend(configured: crate::config::IoBackend) -> Backend {
    use crate::config::IoBackend;
    let chosen = match configured {
        IoBackend::Epoll => Backend::Epoll,
        IoBackend::IoUring => Backend::IoUring,
        IoBackend::Auto if uring::available() => Backend::IoUring,
        IoBackend::Auto => Backend::Epoll,
    };
    let _ = IN_USE.set(chosen);
    chosen
}

/// The backend the workers of this process run (the first App's).
pub fn backend_in_use() -> Option<Backend> {
    IN_USE.get().copied()
}

static IN_USE: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();

/// What one worker runs until the workers stop.
pub type WorkerMain = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// The running workers; dropping them stops them.
pub struct Workers {
    stop: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Start one worker thread per entry of `mains`, on `backend`.
    pub fn start(mains: Vec<WorkerMain>, backend: Backend) -> std::io::Result<Workers> {
        let (stop, _) = watch::channel(false);
        CONFIGURED.fetch_max(mains.len(), Ordering::Relaxed);
        let mut threads = Vec::with_capacity(mains.len());
        for (index, main) in mains.into_iter().enumerate() {
            let mut stopped = stop.subscribe();
            let thread = std::thread::Builder::new().name(format!("pgmux-worker-{index}"));
            // The worker lives until it is told to stop: its sessions go on
            // after its accepting ends (a drain). Tasks still running then
            // are dropped with the runtime.
            let thread = match backend {
                Backend::Epoll => {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    thread.spawn(move || {
                        CURRENT.with(|c| c.set(Some(index)));
                        let local = tokio::task::LocalSet::new();
                        local.block_on(&runtime, async move {
                            let accepting = tokio::task::spawn_local(main());
                            let _ = stopped.wait_for(|s| *s).await;
                            accepting.abort();
                        });
                        drop(local);
                        drop(runtime);
                    })?
                }
                Backend::IoUring => thread.spawn(move || {
                    CURRENT.with(|c| c.set(Some(index)));
                    let run = uring::block_on(
                        async move {
                            uring::spawn(main());
                            let _ = stopped.wait_for(|s| *s).await;
                        },
                    );
                    if let Err(e) = run {
                        tracing::error!(worker = index, error = %e, "the io_uring worker could not run");
                    }
                })?,
            };
            threads.push(thread);
        }
        Ok(Workers { stop, threads })
    }

    /// Stop every worker (their tasks are dropped); does not wait.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Stop and wait for the threads to end.
    pub fn join(mut self) {
        self.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}
