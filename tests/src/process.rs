//! pgmux as a real process, for what only a process has: signals, exit
//! codes, its log on stderr, and two instances sharing a port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::{cluster, APP_PASSWORD, APP_USER};

/// The pgmux binary cargo built beside this test (`cargo test --workspace`
/// builds it for the pgmux crate's own integration tests).
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join("pgmux");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p pgmux` (or `cargo test --workspace`) first",
        bin.display()
    );
    bin
}

/// A proxy.toml aimed at the test cluster; `extra` is appended verbatim.
pub fn config_text(listen: &str, extra: &str) -> String {
    let c = cluster();
    format!(
        "listen_addr = \"{listen}\"\nmetrics_addr = \"127.0.0.1:0\"\nserver_host = \"127.0.0.1\"\nserver_port = {}\nserver_lifetime = 300\nserver_connect_timeout = 10\n{extra}\n[users.{APP_USER}]\npassword = \"{APP_PASSWORD}\"\n",
        c.port
    )
}

pub struct Proc {
    child: Child,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    pub config: PathBuf,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line pgmux has written to stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
    /// Becomes true once the log has been read to its end (pgmux closed
    /// stderr, at exit at the latest).
    log_read: tokio::sync::watch::Receiver<bool>,
    _dir: TempDir,
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Proc {
    /// Start pgmux with `config` as its proxy.toml and wait for it to listen.
    pub async fn start(name: &str, config: &str, env: &[(&str, &str)]) -> Proc {
        let dir = std::env::temp_dir().join(format!("pgmux-proc-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("proxy.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(binary())
            .arg("--config")
            .arg(&path)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            // The suite's choice of I/O backend (see `test_config`).
            .envs(std::env::var("PGMUX_IO_BACKEND").map(|v| ("PGMUX_IO_BACKEND", v)))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let keep = log.clone();
        let (read_to_end, log_read) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match reader.read_until(b'\n', &mut raw).await {
                    Ok(0) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&raw).trim_end().to_string();
                        keep.lock().unwrap().push(line.clone());
                        let _ = tx.send(line);
                    }
                    Err(e) => {
                        keep.lock()
                            .unwrap()
                            .push(format!("(test: reading the log failed: {e})"));
                        break;
                    }
                }
            }
            let _ = read_to_end.send(true);
        });
        let mut proc = Proc {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            metrics: "0.0.0.0:0".parse().unwrap(),
            config: path,
            lines: rx,
            log,
            log_read,
            _dir: TempDir(dir),
        };
        let ready = proc.wait_for_line("pgmux is listening").await;
        proc.addr = field(&ready, "addr").parse().unwrap();
        proc.metrics = field(&ready, "metrics")
            .trim_start_matches("Some(")
            .trim_end_matches(')')
            .parse()
            .unwrap();
        proc
    }

    /// Block until pgmux logs a line containing `text` (60 s at most).
    pub async fn wait_for_line(&mut self, text: &str) -> String {
        loop {
            match tokio::time::timeout(Duration::from_secs(60), self.lines.recv()).await {
                Ok(Some(line)) if line.contains(text) => return line,
                Ok(Some(_)) => {}
                _ => panic!(
                    "pgmux never logged {text:?} (exit status: {:?}); it logged:\n{}",
                    self.child.try_wait(),
                    self.log_text()
                ),
            }
        }
    }

    /// pgmux's resident memory now (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("pgmux is still running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.id().expect("pgmux is still running") as i32;
        // SAFETY: kill(2) with our own child's pid has no memory effects.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// Wait for the process to exit (60 s at most: a hang guard, not a
    /// timing assertion).
    /// Wait for pgmux to exit (60 s at most), and for its last log lines
    /// to be read, so `log_text` has all of them.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let status = match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("pgmux did not exit; it logged:\n{}", self.log_text()),
        };
        let read = tokio::time::timeout(Duration::from_secs(10), self.log_read.wait_for(|r| *r));
        assert!(
            read.await.is_ok(),
            "pgmux exited but its stderr stayed open"
        );
        status
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

/// `key=value` (text log) or `"key":"value"` (JSON log) from a log line.
fn field(line: &str, key: &str) -> String {
    for pattern in [format!("{key}="), format!("\"{key}\":\"")] {
        if let Some(start) = line.find(&pattern) {
            let rest = &line[start + pattern.len()..];
            let end = rest.find([' ', '"', ',']).unwrap_or(rest.len());
            return rest[..end].to_string();
        }
    }
    panic!("no {key} in {line:?}")
}

/// A port free right now (for two processes that must share one).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
