//! A throwaway PostgreSQL cluster: initdb into a temp dir, a free loopback
//! port, torn down when the test process exits. As root, the server runs as
//! the `postgres` user (it refuses root) from a directory that user owns.

#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::tls::Certs;
use crate::{APP_PASSWORD, APP_USER};

pub const SUPERUSER_PASSWORD: &str = "super-secret";

pub struct Cluster {
    pub port: u16,
    pub bindir: PathBuf,
    pub dir: PathBuf,
    /// The certificates it serves TLS with (`ssl = on`), and the others.
    pub certs: Certs,
    as_postgres: bool,
}

/// A database only TLS connections may reach (`hostssl` in pg_hba.conf).
pub const TLS_ONLY_DATABASE: &str = "tls_only";
/// A database whose logins are by client certificate (`cert`).
pub const CERT_DATABASE: &str = "cert_login";

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The cluster of this test process, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(Cluster::start)
}

extern "C" fn stop_at_exit() {
    if let Some(c) = CLUSTER.get() {
        c.stop();
    }
}

fn find_bindir() -> PathBuf {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success());
    let mut candidates: Vec<PathBuf> = from_pg_config
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .into_iter()
        .collect();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev());
    }
    candidates.into_iter().find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists()).unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: `pg_config --bindir` gave none and \
             /usr/lib/postgresql/*/bin has none. Install them with `apt-get install postgresql` (Debian)."
        )
    })
}

impl Cluster {
    fn start() -> Cluster {
        let bindir = find_bindir();
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = std::env::temp_dir().join(format!("pgmux-test-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(
                status.success(),
                "could not give {} to the postgres user (is there one?)",
                dir.display()
            );
        }
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD).unwrap();
        let data = dir.join("data");
        let port = free_port();
        let certs = Certs::generate(&dir.join("tls"));
        let mut c = Cluster {
            port,
            bindir,
            dir: dir.clone(),
            certs,
            as_postgres,
        };
        if as_postgres {
            Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&pwfile)
                .status()
                .unwrap();
        }
        c.run(
            "initdb",
            &[
                "-D",
                path(&data),
                "-U",
                "postgres",
                "--auth=md5",
                "--pwfile",
                path(&pwfile),
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
        );
        c.allow_tls_logins(&data);
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=500 -c shared_buffers=64MB -c ssl=on -c ssl_cert_file={} -c ssl_key_file={} -c ssl_ca_file={}",
            path(&dir),
            path(&c.certs.server.cert),
            path(&c.certs.server.key),
            path(&c.certs.ca),
        );
        let log = dir.join("server.log");
        // Registered before start so a failed start still cleans up.
        unsafe { libc::atexit(stop_at_exit) };
        c.run(
            "pg_ctl",
            &[
                "-D",
                path(&data),
                "-l",
                path(&log),
                "-w",
                "-t",
                "120",
                "-o",
                &opts,
                "start",
            ],
        );
        c.port = port;
        c.bootstrap_roles();
        c
    }

    /// TLS-only rules first in pg_hba.conf, and the key files readable by
    /// the server alone (it refuses a key others can read).
    fn allow_tls_logins(&self, data: &Path) {
        let hba = data.join("pg_hba.conf");
        let rest = std::fs::read_to_string(&hba).unwrap();
        let rules = format!(
            "hostssl {TLS_ONLY_DATABASE} all 127.0.0.1/32 md5\n\
             host {TLS_ONLY_DATABASE} all 127.0.0.1/32 reject\n\
             hostssl {CERT_DATABASE} all 127.0.0.1/32 cert\n\
             host {CERT_DATABASE} all 127.0.0.1/32 reject\n"
        );
        std::fs::write(&hba, rules + &rest).unwrap();
        for key in std::fs::read_dir(&self.certs.dir).unwrap() {
            let key = key.unwrap().path();
            if key.extension().is_some_and(|e| e == "key") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
        }
        if self.as_postgres {
            // Only what the server reads: libpq (run as root by the tests)
            // refuses a client key owned by another user.
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .args([
                    &self.certs.server.cert,
                    &self.certs.server.key,
                    &self.certs.ca,
                    &hba,
                ])
                .status()
                .expect("chown");
            assert!(status.success());
        }
    }

    fn command(&self, tool: &str) -> Command {
        server_tool(&self.bindir, self.as_postgres, tool)
    }

    fn run(&self, tool: &str, args: &[&str]) {
        run_server_tool(&self.bindir, self.as_postgres, tool, args);
    }

    fn stop(&self) {
        let data = self.dir.join("data");
        let _ = self
            .command("pg_ctl")
            .args(["-D", path(&data), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn bootstrap_roles(&self) {
        let sql = format!(
            "CREATE ROLE {APP_USER} LOGIN CREATEDB PASSWORD '{APP_PASSWORD}'; \
             SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'md5-secret'; \
             GRANT pg_signal_backend TO {APP_USER}; GRANT pg_read_all_stats TO {APP_USER};"
        );
        self.psql_super(&sql);
    }

    /// Run SQL as the superuser with psql (blocking).
    pub fn psql_super(&self, sql: &str) {
        let out = Command::new(self.bindir.join("psql"))
            .args([
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .env("PGPASSWORD", SUPERUSER_PASSWORD)
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A superuser connection straight to PostgreSQL.
    pub async fn admin(&self) -> tokio_postgres::Client {
        let dsn = format!(
            "host=127.0.0.1 port={} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres",
            self.port
        );
        crate::try_connect(&dsn).await.unwrap()
    }

    /// A path to a client tool (psql, pgbench, pg_isready) of the same version.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A PostgreSQL server tool from `bindir`, as the `postgres` user when
/// the tests run as root (the server refuses to run as root).
pub(crate) fn server_tool(bindir: &Path, as_postgres: bool, tool: &str) -> Command {
    let exe = bindir.join(tool);
    if as_postgres {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(exe);
        cmd
    } else {
        Command::new(exe)
    }
}

/// Run a server tool; its failure fails the test, with what it said.
pub(crate) fn run_server_tool(bindir: &Path, as_postgres: bool, tool: &str, args: &[&str]) {
    let out = server_tool(bindir, as_postgres, tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
