use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgmux::app::App;
use pgmux::config::{self, LogFormat};
use pgmux::reload::ConfigSource;

/// A transaction-pooling PostgreSQL proxy.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (default: $PGMUX_CONFIG, else ./proxy.toml if present).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print the effective configuration (secrets masked) and exit.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Probe a running pgmux's /readyz: exit 0 when ready, 1 otherwise
    /// (a container health check that needs no curl).
    Health {
        /// The metrics address of the pgmux to probe.
        #[arg(long, default_value = "127.0.0.1:9930")]
        addr: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Health { addr }) = &cli.command {
        return health(addr);
    }
    let env: config::Env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let file = cli
        .config
        .or_else(|| env.get("PGMUX_CONFIG").map(PathBuf::from))
        .or_else(|| {
            let local = PathBuf::from("proxy.toml");
            local.exists().then_some(local)
        });
    let source = ConfigSource { file, env };
    let cfg = match source.load() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("pgmux: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        match toml::to_string_pretty(&cfg) {
            Ok(text) => {
                println!(
                    "# effective configuration (profile {:?}, file {:?})",
                    cfg.profile, source.file
                );
                print!("{text}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("pgmux: cannot print the configuration: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    init_logging(source.env.get("PGMUX_LOG"), cfg.log_format);
    // The control plane (signals, reloads, metrics, housekeeping); clients
    // are served by the per-core workers that `App` starts.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgmux: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match App::start_with(cfg, Some(source)).await {
            Ok(app) => {
                app.run_until_signal().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pgmux: {e}");
                ExitCode::from(2)
            }
        }
    })
}

/// Human-readable lines by default, one JSON object per line on request.
/// `PGMUX_LOG` is a tracing filter (`info`, `pgmux=debug`, ...).
fn init_logging(filter: Option<&String>, format: LogFormat) {
    let filter = filter
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into a log file.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}

/// GET /readyz with plain std I/O and a short deadline.
fn health(addr: &str) -> ExitCode {
    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    use std::time::Duration;
    let deadline = Duration::from_secs(5);
    let probe = || -> std::io::Result<String> {
        let target = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("the address resolves to nothing"))?;
        let mut stream = TcpStream::connect_timeout(&target, deadline)?;
        stream.set_read_timeout(Some(deadline))?;
        stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: pgmux\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.take(64 * 1024).read_to_string(&mut response)?;
        Ok(response)
    };
    match probe() {
        Ok(response) if response.starts_with("HTTP/1.1 200") => ExitCode::SUCCESS,
        Ok(response) => {
            let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
            eprintln!("pgmux health: not ready: {}", body.trim());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("pgmux health: cannot reach {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}
