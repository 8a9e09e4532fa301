//! A primary and a streaming standby (or two), for the failover and
//! read-replica tests: each test makes its own pair (initdb,
//! `pg_basebackup -R`), on free loopback ports, torn down when dropped. Logins are trusted: these tests are about
//! which server pgmux reaches, not about passwords.

#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::process::free_port;

/// One PostgreSQL server of a pair.
pub struct Node {
    pub port: u16,
    data: PathBuf,
    log: PathBuf,
}

pub struct Pair {
    pub primary: Node,
    pub standby: Node,
    /// A second standby of the same primary (see [`started`]).
    pub second: Option<Node>,
    dir: PathBuf,
    bindir: PathBuf,
    as_postgres: bool,
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// A pair (with a second standby when `two_standbys`), started off the
/// runtime: starting one blocks for seconds.
pub async fn started(name: &'static str, two_standbys: bool) -> Arc<Pair> {
    let start = move || Pair::start_with(name, two_standbys);
    Arc::new(tokio::task::spawn_blocking(start).await.unwrap())
}

/// Run a blocking step of the pair off the runtime.
pub async fn on_pair(pair: &Arc<Pair>, step: impl FnOnce(&Pair) + Send + 'static) {
    let pair = pair.clone();
    tokio::task::spawn_blocking(move || step(&pair))
        .await
        .unwrap();
}

impl Pair {
    /// Start a primary, copy it with `pg_basebackup -R` (twice when
    /// `second`), start the copies as its standbys, and wait until they
    /// stream.
    fn start_with(name: &str, second: bool) -> Pair {
        let c = crate::cluster();
        let bindir = c.bindir.clone();
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = std::env::temp_dir().join(format!("pgmux-pair-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pair = Pair {
            primary: Node {
                port: free_port(),
                data: dir.join("primary"),
                log: dir.join("primary.log"),
            },
            standby: Node {
                port: free_port(),
                data: dir.join("standby"),
                log: dir.join("standby.log"),
            },
            second: second.then(|| Node {
                port: free_port(),
                data: dir.join("second"),
                log: dir.join("second.log"),
            }),
            dir,
            bindir,
            as_postgres,
        };
        pair.chown(&pair.dir.clone());
        let primary = pair.primary.data.clone();
        pair.run(
            "initdb",
            &[
                "-D",
                path(&primary),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(primary.join("pg_hba.conf"))
            .and_then(|mut f| {
                use std::io::Write;
                writeln!(f, "host replication all 127.0.0.1/32 trust")
            })
            .unwrap();
        pair.start_node(&pair.primary);
        pair.psql(pair.primary.port, "CREATE ROLE app LOGIN");
        pair.psql(pair.primary.port, "CREATE DATABASE app OWNER app");
        let standbys: Vec<&Node> = std::iter::once(&pair.standby)
            .chain(pair.second.as_ref())
            .collect();
        for node in &standbys {
            pair.run(
                "pg_basebackup",
                &[
                    "-D",
                    path(&node.data),
                    "-R",
                    "-c",
                    "fast",
                    "-X",
                    "stream",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &pair.primary.port.to_string(),
                    "-U",
                    "postgres",
                ],
            );
            pair.start_node(node);
        }
        let streaming = pair.wait(Duration::from_secs(60), || {
            pair.query(
                pair.primary.port,
                "select count(*) from pg_stat_replication where state = 'streaming'",
            ) == standbys.len().to_string()
        });
        assert!(streaming, "the standbys did not start streaming");
        pair
    }

    fn options(&self, port: u16) -> String {
        format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c synchronous_commit=off -c wal_level=replica -c max_wal_senders=4 -c hot_standby=on",
            path(&self.dir)
        )
    }

    /// Start (or restart) a node of this pair.
    pub fn start_node(&self, node: &Node) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                path(&node.data),
                "-l",
                path(&node.log),
                "-w",
                "-t",
                "120",
                "-o",
                &self.options(node.port),
                "start",
            ],
        );
    }

    /// Wait until the standby has replayed everything the primary wrote
    /// so far (replication is asynchronous).
    pub fn sync(&self) {
        let lsn = self.query(self.primary.port, "select pg_current_wal_insert_lsn()");
        let caught_up = self.wait(Duration::from_secs(60), || {
            self.query(
                self.standby.port,
                &format!("select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"),
            ) == "t"
        });
        assert!(caught_up, "the standby did not catch up with {lsn}");
    }

    /// Stop the primary at once (as a crash would).
    pub fn stop_primary(&self) {
        self.stop_node(&self.primary);
    }

    /// Stop a node at once (as a crash would).
    pub fn stop_node(&self, node: &Node) {
        self.run(
            "pg_ctl",
            &["-D", path(&node.data), "-m", "immediate", "-w", "stop"],
        );
    }

    /// Promote the standby and wait until it takes writes.
    pub fn promote_standby(&self) {
        self.run("pg_ctl", &["-D", path(&self.standby.data), "-w", "promote"]);
        let promoted = self.wait(Duration::from_secs(60), || {
            self.query(self.standby.port, "select pg_is_in_recovery()") == "f"
        });
        assert!(promoted, "the standby did not leave recovery");
    }

    /// Run SQL on a node as the superuser.
    pub fn psql(&self, port: u16, sql: &str) {
        let out = self
            .psql_command(port, "postgres", sql)
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// One value from a node ("" if the query failed).
    pub fn query(&self, port: u16, sql: &str) -> String {
        self.query_in(port, "postgres", sql)
    }

    /// One value from a database of a node ("" if the query failed).
    pub fn query_in(&self, port: u16, db: &str, sql: &str) -> String {
        match self.psql_command(port, db, sql).output() {
            Ok(out) if out.status.success() => {
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            }
            Ok(out) => {
                eprintln!("psql: {}", String::from_utf8_lossy(&out.stderr).trim());
                String::new()
            }
            Err(e) => {
                eprintln!("psql: {e}");
                String::new()
            }
        }
    }

    fn psql_command(&self, port: u16, db: &str, sql: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join("psql"));
        cmd.args([
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-c",
            sql,
        ]);
        cmd
    }

    fn wait(&self, limit: Duration, mut done: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn chown(&self, dir: &Path) {
        if self.as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir)
                .status()
                .expect("chown");
            assert!(ok.success());
        }
    }

    /// A server tool, as the `postgres` user when the tests run as root.
    fn command(&self, tool: &str) -> Command {
        crate::cluster::server_tool(&self.bindir, self.as_postgres, tool)
    }

    fn run(&self, tool: &str, args: &[&str]) {
        crate::cluster::run_server_tool(&self.bindir, self.as_postgres, tool, args);
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let nodes = [&self.primary, &self.standby]
            .into_iter()
            .chain(self.second.as_ref());
        for node in nodes {
            let stop = ["-D", path(&node.data), "-m", "immediate", "stop"];
            let _ = self.command("pg_ctl").args(stop).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
