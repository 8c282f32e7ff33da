//! The llm-chatbot daemon: a thin tokio shell around the sans-IO engine.
//!
//! It turns NATS messages, LLM answers, timers and signals into engine inputs and
//! executes the engine's effects (LLM requests, Kryten commands, decision logs). It holds
//! no trigger, limit or text logic: see `chatbot-core` for all of that.

pub mod daemon;
pub mod ha;
pub mod http;
pub mod kryten;
pub mod llm;
pub mod metrics;
pub mod nats;
pub mod record;
pub mod room;

pub use daemon::{run, StartError};

use std::path::Path;

use chatbot_core::{Config, ConfigError};

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file cannot be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid config (the error names file, line, column and key).
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// Reads and validates a config file.
pub fn load_config(path: &Path) -> Result<Config, LoadError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.display().to_string(), source })?;
    // Files the config names (system_prompt_file) are relative to the config file.
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let read = |p: &str| std::fs::read_to_string(base.join(p));
    Ok(Config::parse_with(&text, &path.display().to_string(), &read)?)
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global logger on stderr. `RUST_LOG` wins over `level` when set.
pub fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).try_init(),
    };
}
