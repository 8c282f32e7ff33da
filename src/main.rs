//! `llm-chatbot`: the command line. Each subcommand is a thin wrapper; the work lives in
//! the `chatbot-*` crates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chatbot_core::Config;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "llm-chatbot",
    version,
    about = "An OpenAI-compatible LLM taking part in CyTube chat through Kryten-Robot and NATS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file and print a short summary (exit 0), or the error (exit 1).
    Check {
        /// The configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match load_config(&config) {
            Ok(cfg) => {
                print!("{}", summary(&config, &cfg));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Reads and validates a config file; the error names the file (and line, column, key).
fn load_config(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    Config::parse(&text, &path.display().to_string()).map_err(|e| e.to_string())
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

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}
