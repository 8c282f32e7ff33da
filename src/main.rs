//! `llm-chatbot`: the command line. Each subcommand is a thin wrapper; the work lives in
//! the `chatbot-*` crates.

use std::fs::File;
use std::io::{BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use chatbot_core::Config;
use chatbot_replay::{Compare, Options, Report};
use chatbot_sim::{FaultPlan, Faults, Offline, Responder, Script};
use clap::{Parser, Subcommand, ValueEnum};

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
        /// Seed of the engine's random choices (probabilities) and of injected faults.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// LLM: `offline` (deterministic, built in), `script:FILE` (canned replies and faults) or
        /// `http` (the config's real providers; keys from the environment).
        #[arg(long, default_value = "offline", value_name = "LLM")]
        llm: String,
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
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Human,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
    Html,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, log_format, log_level } => {
            let format = match log_format {
                LogFormatArg::Human => chatbot_runtime::LogFormat::Human,
                LogFormatArg::Json => chatbot_runtime::LogFormat::Json,
            };
            chatbot_runtime::init_logging(format, &log_level);
            let runtime = match tokio_runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(chatbot_runtime::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Record { config, output, duration } => {
            chatbot_runtime::init_logging(chatbot_runtime::LogFormat::Human, "info");
            let result = tokio_runtime().and_then(|rt| {
                rt.block_on(chatbot_runtime::record::record(&config, &output, duration)).map_err(|e| e.to_string())
            });
            match result {
                Ok(stats) => {
                    eprintln!(
                        "recorded {} events to {} ({} non-JSON skipped)",
                        stats.written,
                        output.display(),
                        stats.skipped
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Replay { corpus, config, seed, llm, faults, format, output, compare } => {
            let args = ReplayArgs { corpus, config, seed, llm, faults, format, output, compare };
            match replay(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config, explain } => match load_config(&config) {
            Ok(cfg) => {
                print!("{}", summary(&config, &cfg));
                if explain {
                    print!("{}", explain_config(&cfg));
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// One thread: the engine is single-threaded anyway, and keeping the NATS connection,
/// the engine loop and the LLM client on the same thread saves a cross-thread wake-up
/// per hop (mention → `say` p50 0.75 → 0.6 ms here). /health has a thread of its own.
fn tokio_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

struct ReplayArgs {
    corpus: PathBuf,
    config: Option<PathBuf>,
    seed: u64,
    llm: String,
    faults: Option<String>,
    format: Format,
    output: Option<PathBuf>,
    compare: Option<PathBuf>,
}

fn open(path: &Path) -> Result<BufReader<File>, String> {
    File::open(path).map(BufReader::new).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

fn responder(spec: &str, config: &Config) -> Result<Box<dyn Responder>, String> {
    let offline = Offline::new(&config.bot);
    if spec == "offline" {
        return Ok(Box::new(offline));
    }
    if spec == "http" {
        return Ok(Box::new(HttpResponder::new(config)?));
    }
    if let Some(file) = spec.strip_prefix("script:") {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: cannot read: {e}"))?;
        let mut script = Script::parse(&text, file).map_err(|e| e.to_string())?;
        script.offline = offline;
        return Ok(Box::new(script));
    }
    Err(format!("--llm {spec}: expected `offline`, `script:FILE` or `http`"))
}

/// `--llm http`: the config's real providers, called for real (latency is real too, so
/// such a replay is not reproducible byte for byte).
struct HttpResponder {
    rt: tokio::runtime::Runtime,
    client: chatbot_runtime::llm::LlmClient,
}

impl HttpResponder {
    fn new(config: &Config) -> Result<HttpResponder, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?;
        // The client's TLS connector must be built inside a runtime.
        let client = rt
            .block_on(async { chatbot_runtime::llm::LlmClient::new(&config.llm.providers, |v| std::env::var(v).ok()) })
            .map_err(|e| e.to_string())?;
        Ok(HttpResponder { rt, client })
    }
}

impl Responder for HttpResponder {
    fn respond(&mut self, call: &chatbot_core::LlmCall) -> chatbot_sim::Answer {
        let outcome = self.rt.block_on(self.client.complete(&call.provider, &call.messages));
        chatbot_sim::Answer { latency: outcome.elapsed, result: outcome.result }
    }
}

fn replay_one(args: &ReplayArgs, config: Config) -> Result<Report, String> {
    let plan = args.faults.as_deref().map(FaultPlan::parse).transpose().map_err(|e| format!("--faults: {e}"))?;
    let opts = Options {
        seed: args.seed,
        llm: responder(&args.llm, &config)?,
        faults: plan.filter(|p| !p.is_none()).map(|p| Faults::new(p, args.seed)),
        llm_label: args.llm.clone(),
    };
    // Progress only for runs long enough to wonder about, and only on a terminal.
    let started = Instant::now();
    let mut last = started;
    let show = std::io::stderr().is_terminal();
    let report = chatbot_replay::replay(open(&args.corpus)?, config, opts, |n| {
        if show && started.elapsed().as_secs_f64() > 1.0 && last.elapsed().as_millis() >= 250 {
            last = Instant::now();
            eprint!("\rreplaying {}: {n} events", args.corpus.display());
        }
    });
    if show && started.elapsed().as_secs_f64() > 1.0 {
        eprintln!(
            "\rreplayed {}: {} events in {:.1} s",
            args.corpus.display(),
            report.events,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(report)
}

fn replay_config(path: Option<&Path>, corpus: &Path) -> Result<Config, String> {
    match path {
        Some(p) => load_config(p),
        None => chatbot_replay::default_config(&chatbot_replay::corpus_channels(open(corpus)?)),
    }
}

fn replay(args: &ReplayArgs) -> Result<(), String> {
    let config = replay_config(args.config.as_deref(), &args.corpus)?;
    let a = replay_one(args, config)?;
    let rendered = match &args.compare {
        None => match args.format {
            Format::Text => a.to_text(),
            Format::Json => a.to_json(),
            Format::Html => a.to_html(),
        },
        Some(other) => {
            let b = replay_one(args, load_config(other)?)?;
            let label = |p: Option<&Path>| p.map_or("built-in defaults".to_string(), |p| p.display().to_string());
            let cmp = Compare { a_label: label(args.config.as_deref()), b_label: label(Some(other)), a, b };
            match args.format {
                Format::Text => cmp.to_text(),
                Format::Json => serde_json::to_string_pretty(&cmp).map_err(|e| e.to_string())?,
                Format::Html => return Err("--compare supports --format text or json".into()),
            }
        }
    };
    match &args.output {
        Some(path) => std::fs::write(path, rendered).map_err(|e| format!("{}: cannot write: {e}", path.display())),
        None => std::io::stdout().write_all(rendered.as_bytes()).map_err(|e| format!("stdout: {e}")),
    }
}

/// Reads and validates a config file; the error names the file (and line, column, key).
fn load_config(path: &Path) -> Result<Config, String> {
    chatbot_runtime::load_config(path)
}

fn summary(path: &Path, cfg: &Config) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "{}: OK", path.display());
    let _ = writeln!(s, "  bot: {} (aliases: {})", cfg.bot.name, list(&cfg.bot.aliases));
    let _ = writeln!(
        s,
        "  nats: {} ({:?} subjects, {:?} commands)",
        cfg.nats.servers.join(", "),
        cfg.nats.subjects,
        cfg.nats.commands
    );
    for (name, p) in &cfg.llm.providers {
        let _ = writeln!(
            s,
            "  provider {name}: {} at {} (key from {})",
            p.model,
            p.base_url,
            p.api_key_env.as_deref().unwrap_or("nowhere: no key")
        );
    }
    if cfg.ha.enabled {
        let _ = writeln!(
            s,
            "  ha: leases in JetStream bucket {} (ttl {}), instance {}",
            cfg.ha.bucket,
            humantime::format_duration(cfg.ha.lease_ttl),
            if cfg.ha.instance.is_empty() { "hostname-pid" } else { cfg.ha.instance.as_str() }
        );
    }
    let _ = writeln!(s, "  channels: {}", cfg.channels.len());
    for ch in &cfg.channels {
        let t = &ch.triggers;
        let mut on = Vec::new();
        if t.mention.enabled {
            on.push("mention".to_string());
        }
        if !t.keywords.is_empty() {
            on.push(format!("{} keyword group(s)", t.keywords.len()));
        }
        if t.pm_enabled {
            on.push("pm".into());
        }
        if t.media_change.enabled {
            on.push("media_change".into());
        }
        if t.contextual.enabled {
            on.push(format!("contextual every {}", humantime::format_duration(t.contextual.every)));
        }
        let _ = writeln!(
            s,
            "    {}: provider {}; triggers: {}; at most {}/{} per user, {}/{} per channel",
            ch.name,
            ch.providers.join(" → "),
            list(&on),
            ch.limits.per_user.max,
            humantime::format_duration(ch.limits.per_user.window),
            ch.limits.per_channel.max,
            humantime::format_duration(ch.limits.per_channel.window),
        );
    }
    s
}

/// `check --explain`: every channel's effective settings, then warnings.
fn explain_config(cfg: &Config) -> String {
    use std::fmt::Write;
    let d = |x: std::time::Duration| humantime::format_duration(x).to_string();
    let mut s = String::new();
    for ch in &cfg.channels {
        let (t, l, r) = (&ch.triggers, &ch.limits, &ch.response);
        let _ = writeln!(s, "\nchannel {}:", ch.name);
        let _ = writeln!(s, "  provider chain: {}", ch.providers.join(" → "));
        let _ = writeln!(s, "  context: {} lines, {}", ch.context.max_messages, d(ch.context.max_age));
        let _ = writeln!(
            s,
            "  mention: {} (p={}, cooldown {}); pm: {}; media_change: {} (p={}); contextual: {} (every {}, ≥{} new lines, p={})",
            t.mention.enabled, t.mention.probability, d(t.mention.cooldown), t.pm_enabled, t.media_change.enabled,
            t.media_change.probability, t.contextual.enabled, d(t.contextual.every), t.contextual.min_new_messages, t.contextual.probability
        );
        for k in &t.keywords {
            let _ = writeln!(s, "  keywords {:?}: p={}, cooldown {}", k.words, k.probability, d(k.cooldown));
        }
        let _ = writeln!(
            s,
            "  limits: {}/{} per user, {}/{} per channel, global cooldown {}, media cooldown {}, {} in flight, spacing {}",
            l.per_user.max, d(l.per_user.window), l.per_channel.max, d(l.per_channel.window), d(l.global_cooldown),
            d(l.media_change_cooldown), l.max_in_flight, d(l.send_spacing)
        );
        let _ = writeln!(
            s,
            "  response: ≤{} UTF-16 units × {} part(s), markdown stripped: {}, {} block pattern(s), {} block keyword(s), dedupe {}",
            r.max_length, r.max_parts, r.strip_markdown, r.block_patterns.len(), r.block_keywords.len(), r.dedupe_window
        );
        let (g, p, b) = (&ch.loop_guard, &ch.penalty, &ch.budget);
        let _ = writeln!(
            s,
            "  loop guard: {} exchanges / {}, backoff {}; penalty {}..{}; budget {}/h {}/day (PMs {})",
            g.max_exchanges,
            d(g.window),
            d(g.backoff),
            d(p.base),
            d(p.max),
            b.tokens_per_hour,
            b.tokens_per_day,
            if b.include_pms { "included" } else { "exempt" }
        );
        if !ch.ignore_users.is_empty() {
            let _ = writeln!(s, "  ignores: {}", ch.ignore_users.join(", "));
        }
    }
    let warnings = cfg.warnings(|var| std::env::var_os(var).is_some());
    if !warnings.is_empty() {
        let _ = writeln!(s, "\nwarnings:");
        for w in warnings {
            let _ = writeln!(s, "  - {w}");
        }
    }
    s
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}
