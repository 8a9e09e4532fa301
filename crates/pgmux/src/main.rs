use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use pgmux::app::App;
use pgmux::config;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: config::Env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    init_logging(&env);
    let file = cli
        .config
        .or_else(|| env.get("PGMUX_CONFIG").map(PathBuf::from))
        .or_else(|| {
            let local = PathBuf::from("proxy.toml");
            local.exists().then_some(local)
        });
    let cfg = match config::load(file.as_deref(), &env) {
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
                    cfg.profile, file
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
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if cfg.worker_threads > 0 {
        builder.worker_threads(cfg.worker_threads as usize);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgmux: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match App::start(cfg).await {
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

fn init_logging(env: &config::Env) {
    let filter = env
        .get("PGMUX_LOG")
        .cloned()
        .unwrap_or_else(|| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}
