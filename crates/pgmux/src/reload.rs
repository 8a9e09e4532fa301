//! SIGHUP and the console's RELOAD: re-read proxy.toml (layered over the
//! environment pgmux started with; a process cannot see its environment
//! change), and apply what changed. A configuration that does not load or validate
//! is refused as a whole: the running one stays, and the error is logged.

use std::path::PathBuf;

use crate::config::{self, ConfigError, Env};
use crate::pool::Pools;
use crate::stats;

/// Where the running configuration came from, to read it again.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    pub env: Env,
}

impl ConfigSource {
    pub fn load(&self) -> Result<config::Config, ConfigError> {
        config::load(self.file.as_deref(), &self.env)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(
        "pgmux was started from a configuration object, not a file; there is nothing to re-read"
    )]
    NoSource,
    #[error(transparent)]
    Config(#[from] ConfigError),
}

pub fn reload(pools: &Pools) -> Result<(), ReloadError> {
    let result = apply(pools);
    stats::reloaded(result.is_ok());
    match &result {
        Ok(()) => tracing::info!("configuration reloaded"),
        Err(e) => {
            tracing::error!(error = %e, "configuration reload refused; keeping the running configuration")
        }
    }
    result
}

fn apply(pools: &Pools) -> Result<(), ReloadError> {
    let source = pools.source().ok_or(ReloadError::NoSource)?;
    let config = source.load()?;
    let restart_needed = pools.reload(config)?;
    if !restart_needed.is_empty() {
        tracing::warn!(
            keys = %restart_needed.join(", "),
            "these settings changed but take effect only after a restart"
        );
    }
    Ok(())
}
