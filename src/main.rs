//! `llm-chatbot`: the command line. Each subcommand is a thin wrapper; the work lives in
//! the `chatbot-*` crates.

mod check;
mod diff;
mod prompt;
mod replay;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::replay::{Format, ReplayArgs};

#[derive(Parser)]
#[command(
    name = "llm-chatbot",
    version = env!("LLM_CHATBOT_VERSION"),
    about = "An OpenAI-compatible LLM taking part in CyTube chat through Kryten-Robot and NATS",
    long_about = "An OpenAI-compatible LLM taking part in CyTube chat through Kryten-Robot and NATS.\n\n\
        `run` is the daemon; `check` validates a config; `replay` shows, offline, what a config would \
        do on recorded chat; `record` captures such chat from NATS."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: subscribe to Kryten events on NATS and take part in the channels.
    Run {
        /// The configuration file (SIGHUP reloads it).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Log format: `human` for a terminal, `json` for one object per line.
        #[arg(long, value_enum, default_value_t = LogFormatArg::Human)]
        log_format: LogFormatArg,
        /// Log level or filter (RUST_LOG wins when set). Chat text appears only at debug.
        #[arg(long, default_value = "info", value_name = "LEVEL")]
        log_level: String,
        /// The engine's seed (overrides the config's `seed`; default: random, logged at start).
        #[arg(long, value_name = "N")]
        seed: Option<u64>,
    },
    /// Validate a configuration file and print a short summary (exit 0), or the error (exit 1).
    Check {
        /// The configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Also print each channel's effective settings (after `defaults`) and warn about
        /// risky ones.
        #[arg(long)]
        explain: bool,
    },
    /// Capture the configured channels' Kryten events from NATS into a corpus (JSONL).
    Record {
        /// Configuration (its `nats` and `channels` are used).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Corpus file to append to.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Stop after this long (e.g. 30m, 1h); default: until Ctrl-C or SIGTERM.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
    },
    /// Replay a recorded corpus through the engine and report what the bot would do.
    Replay {
        /// Corpus: one Kryten event envelope per line (JSONL), as `record` writes.
        corpus: PathBuf,
        /// Configuration to replay under (default: built-in defaults, channels from the corpus).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Seed of the engine's random choices (probabilities) and of injected faults
        /// (default: the recorded bot's, else 0).
        #[arg(long, value_name = "N")]
        seed: Option<u64>,
        /// LLM: `offline` (deterministic, built in), `script:FILE` (canned replies and faults) or
        /// `http` (the config's real providers; keys from the environment). Default: a
        /// recording's own answers (what the live bot's LLM said), else `offline`.
        #[arg(long, value_name = "LLM")]
        llm: Option<String>,
        /// Inject LLM faults, e.g. `timeout=0.05,error=0.02,empty=0.01,jitter=2s`.
        #[arg(long, value_name = "SPEC")]
        faults: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Write the report here instead of standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Replay again under this second config and show both side by side.
        #[arg(long, value_name = "FILE")]
        compare: Option<PathBuf>,
        /// With `--format json`: include every LLM request's messages.
        #[arg(long)]
        prompts: bool,
    },
    /// Print the exact messages a request would send (what the model sees).
    Prompt {
        /// The configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The channel.
        #[arg(long, value_name = "NAME")]
        channel: String,
        /// mention (default), keyword, pm, media_change, contextual or participation_check.
        #[arg(long, value_name = "KIND")]
        trigger: Option<String>,
        /// Replay this corpus first (the room, the context), up to `--at`.
        #[arg(long, value_name = "FILE")]
        corpus: Option<PathBuf>,
        /// The corpus line (1-based) to answer: the lines before it are replayed, and a
        /// chat line or PM there is the line answered.
        #[arg(long, value_name = "N", requires = "corpus")]
        at: Option<usize>,
    },
    /// Compare the daemon's decisions (`run --log-format json` output) with a replay's
    /// (`replay --format json`), event by event; exit 1 when some differ.
    Diff {
        /// The live decisions: the daemon's JSON log (or a replay report).
        live: PathBuf,
        /// The replay's: a `replay --format json` report (or a JSON log).
        replay: PathBuf,
        /// How many differing events to list.
        #[arg(long, default_value_t = 20, value_name = "N")]
        show: usize,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Human,
    Json,
}

/// Why a subcommand failed (exit 1, one line on stderr).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// A config file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] chatbot_runtime::LoadError),
    /// A config that could not be built (replay's built-in one).
    #[error(transparent)]
    BuiltinConfig(#[from] chatbot_core::ConfigError),
    /// The daemon or the recorder could not start.
    #[error(transparent)]
    Start(#[from] chatbot_runtime::StartError),
    /// An LLM provider cannot be used (`--llm http`).
    #[error(transparent)]
    Llm(#[from] chatbot_runtime::llm::ClientError),
    /// A `--llm script:FILE` is invalid.
    #[error(transparent)]
    Script(#[from] chatbot_sim::llm::ScriptError),
    /// A file cannot be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// An output cannot be written.
    #[error("{path}: cannot write: {source}")]
    Write {
        /// The file (or `stdout`).
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// An option's value is wrong.
    #[error("{option}: {message}")]
    Option {
        /// The option (with its value where that helps), e.g. `--llm gpt5`.
        option: String,
        /// What is wrong.
        message: String,
    },
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    if let Command::Diff { live, replay, show } = &command {
        return match diff::run(live, replay, *show) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    match dispatch(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<(), CliError> {
    match command {
        Command::Run { config, log_format, log_level, seed } => {
            let format = match log_format {
                LogFormatArg::Human => chatbot_runtime::LogFormat::Human,
                LogFormatArg::Json => chatbot_runtime::LogFormat::Json,
            };
            chatbot_runtime::init_logging(format, &log_level);
            Ok(tokio_runtime()?.block_on(chatbot_runtime::run(config, seed))?)
        }
        Command::Record { config, output, duration } => {
            chatbot_runtime::init_logging(chatbot_runtime::LogFormat::Human, "info");
            let stats = tokio_runtime()?.block_on(chatbot_runtime::record::record(&config, &output, duration))?;
            eprintln!(
                "recorded {} events and {} of the bot's sessions and commands to {} ({} non-JSON skipped)",
                stats.written,
                stats.notes,
                output.display(),
                stats.skipped
            );
            Ok(())
        }
        Command::Replay { corpus, config, seed, llm, faults, format, output, compare, prompts } => {
            replay::run(&ReplayArgs { corpus, config, seed, llm, faults, format, output, compare, prompts })
        }
        Command::Diff { .. } => unreachable!("handled in main"),
        Command::Prompt { config, channel, trigger, corpus, at } => {
            let cfg = chatbot_runtime::load_config(&config)?;
            let trigger = trigger
                .as_deref()
                .map(prompt::kind)
                .transpose()
                .map_err(|message| CliError::Option { option: "--trigger".into(), message })?;
            print!("{}", prompt::run(prompt::PromptArgs { config: cfg, channel, trigger, corpus, at })?);
            Ok(())
        }
        Command::Check { config, explain } => {
            let cfg = chatbot_runtime::load_config(&config)?;
            print!("{}", check::summary(&config, &cfg));
            if explain {
                print!("{}", check::explain_config(&cfg));
            }
            Ok(())
        }
    }
}

/// One thread: the engine is single-threaded anyway, and keeping the NATS connection,
/// the engine loop and the LLM client on the same thread saves a cross-thread wake-up
/// per hop (mention → `say` p50 0.75 → 0.6 ms here). /health has a thread of its own.
fn tokio_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(CliError::Runtime)
}
