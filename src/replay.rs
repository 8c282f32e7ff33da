//! `llm-chatbot replay`: a corpus through the simulator under a config, rendered as the
//! report an operator asked for (text, JSON, HTML, or two configs side by side).

use std::fs::File;
use std::io::{BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use chatbot_core::Config;
use chatbot_replay::{Compare, Options, Report};
use chatbot_sim::recording::{Recorded, Recording};
use chatbot_sim::{FaultPlan, Faults, Offline, Responder, Script};
use clap::ValueEnum;

use crate::CliError;

/// Report formats.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Html,
}

/// What `replay` was asked.
pub struct ReplayArgs {
    pub corpus: PathBuf,
    pub config: Option<PathBuf>,
    pub seed: Option<u64>,
    pub llm: Option<String>,
    pub faults: Option<String>,
    pub format: Format,
    pub output: Option<PathBuf>,
    pub compare: Option<PathBuf>,
    pub prompts: bool,
}

fn open(path: &Path) -> Result<BufReader<File>, CliError> {
    File::open(path).map(BufReader::new).map_err(|source| CliError::Read { path: path.display().to_string(), source })
}

fn responder(spec: &str, config: &Config) -> Result<Box<dyn Responder>, CliError> {
    let offline = Offline::new(&config.bot);
    if spec == "offline" {
        return Ok(Box::new(offline));
    }
    if spec == "http" {
        return Ok(Box::new(HttpResponder::new(config)?));
    }
    if let Some(file) = spec.strip_prefix("script:") {
        let text = std::fs::read_to_string(file).map_err(|source| CliError::Read { path: file.to_owned(), source })?;
        let mut script = Script::parse(&text, file)?;
        script.offline = offline;
        return Ok(Box::new(script));
    }
    Err(CliError::Option {
        option: format!("--llm {spec}"),
        message: "expected `offline`, `script:FILE` or `http`".into(),
    })
}

/// `--llm http`: the config's real providers, called for real (latency is real too, so
/// such a replay is not reproducible byte for byte).
struct HttpResponder {
    rt: tokio::runtime::Runtime,
    client: chatbot_runtime::llm::LlmClient,
}

impl HttpResponder {
    fn new(config: &Config) -> Result<HttpResponder, CliError> {
        let rt = crate::tokio_runtime()?;
        // The client's TLS connector must be built inside a runtime.
        let client = rt.block_on(async { chatbot_runtime::llm::LlmClient::from_env(&config.llm.providers) })?;
        Ok(HttpResponder { rt, client })
    }
}

impl Responder for HttpResponder {
    fn respond(&mut self, call: &chatbot_core::LlmCall) -> chatbot_sim::Answer {
        let outcome = self.rt.block_on(self.client.complete(&call.provider, &call.messages));
        chatbot_sim::Answer { latency: outcome.elapsed, result: outcome.result }
    }
}

fn replay_one(args: &ReplayArgs, config: Config) -> Result<Report, CliError> {
    // A recording with the bot's side replays it: its seed, its start, its LLM's answers.
    let recording = Some(Recording::scan(open(&args.corpus)?)).filter(|r| !r.is_empty());
    let recorded_seed = recording.as_ref().and_then(|r| r.sessions.first()).map(|s| s.seed);
    let seed = args.seed.or(recorded_seed).unwrap_or(0);
    let plan = args
        .faults
        .as_deref()
        .map(FaultPlan::parse)
        .transpose()
        .map_err(|message| CliError::Option { option: "--faults".into(), message })?;
    let (llm, llm_label): (Box<dyn Responder>, String) = match (&args.llm, &recording) {
        (Some(spec), _) => (responder(spec, &config)?, spec.clone()),
        (None, Some(rec)) => (Box::new(Recorded::new(rec, Box::new(Offline::new(&config.bot)))), "recorded".into()),
        (None, None) => (responder("offline", &config)?, "offline".into()),
    };
    let opts = Options {
        seed,
        llm,
        faults: plan.filter(|p| !p.is_none()).map(|p| Faults::new(p, seed)),
        llm_label,
        prompts: args.prompts,
        recorded_seed: args.seed.is_none() && recorded_seed.is_some(),
        recording,
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

fn replay_config(path: Option<&Path>, corpus: &Path) -> Result<Config, CliError> {
    match path {
        Some(p) => Ok(chatbot_runtime::load_config(p)?),
        None => Ok(chatbot_replay::default_config(&chatbot_replay::corpus_channels(open(corpus)?))?),
    }
}

/// Runs the replay (twice with `--compare`) and writes the report.
pub fn run(args: &ReplayArgs) -> Result<(), CliError> {
    let config = replay_config(args.config.as_deref(), &args.corpus)?;
    let a = replay_one(args, config)?;
    let rendered = match &args.compare {
        None => match args.format {
            Format::Text => a.to_text(),
            Format::Json => a.to_json(),
            Format::Html => a.to_html(),
        },
        Some(other) => {
            let b = replay_one(args, chatbot_runtime::load_config(other)?)?;
            let label = |p: Option<&Path>| p.map_or("built-in defaults".to_string(), |p| p.display().to_string());
            let cmp = Compare { a_label: label(args.config.as_deref()), b_label: label(Some(other)), a, b };
            match args.format {
                Format::Text => cmp.to_text(),
                Format::Json => serde_json::to_string_pretty(&cmp)
                    .map_err(|e| CliError::Write { path: "the comparison".into(), source: e.into() })?,
                Format::Html => {
                    return Err(CliError::Option {
                        option: "--compare".into(),
                        message: "supports --format text or json".into(),
                    })
                }
            }
        }
    };
    let write_err = |path: String| move |source| CliError::Write { path, source };
    match &args.output {
        Some(path) => std::fs::write(path, rendered).map_err(write_err(path.display().to_string())),
        None => std::io::stdout().write_all(rendered.as_bytes()).map_err(write_err("stdout".into())),
    }
}
