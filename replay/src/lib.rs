//! `llm-chatbot replay`: runs a recorded corpus through the real engine (via the
//! simulator) and reports how often the bot would speak, to whom, and why it stayed
//! silent, so an operator can tune a config before deploying it.
//!
//! The corpus is streamed: the trace is folded into the report after every event, so
//! memory does not grow with the corpus beyond the report itself.

mod html;
pub mod live;
mod report;
mod text;

use std::io::BufRead;
use std::time::Duration;

use chatbot_core::event::{self, Event};
use chatbot_core::{Config, ConfigError, Effect, Input, Millis, Outcome};
use chatbot_sim::corpus::{self, BadLine};
use chatbot_sim::recording::{self, Item, Note, Recording};
use chatbot_sim::{Faults, Responder, Sim, TraceItem, Traced};

pub use report::{ChannelReport, Compare, ReplyLine, Report};

/// The configuration replay uses when none is given: the documented defaults, one
/// provider, and channels taken from the corpus itself.
pub const DEFAULT_CONFIG: &str = r#"
bot: { name: KrytenBot, aliases: [kryten] }
llm:
  providers:
    main: { base_url: "http://127.0.0.1:1/v1", model: offline, price_per_million: { input: 0.15, output: 0.60 } }
"#;

/// Builds the default config for a corpus: every channel that appears in it.
pub fn default_config(channels: &[String]) -> Result<Config, ConfigError> {
    let mut yaml = DEFAULT_CONFIG.to_string();
    yaml.push_str("channels:\n");
    for ch in channels {
        // A JSON string is a YAML scalar: any channel name, quoted and escaped.
        yaml.push_str(&format!("  - name: {}\n", serde_json::Value::String(ch.clone())));
    }
    Config::parse(&yaml, "<built-in replay config>")
}

/// Channel names found in a corpus, in order of first appearance.
pub fn corpus_channels(reader: impl BufRead) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for ev in corpus::read(reader).flatten() {
        if let Ok(env) = event::parse(&ev.body, None) {
            if !out.iter().any(|c| c.eq_ignore_ascii_case(&env.channel)) {
                out.push(env.channel.into_owned());
            }
        }
    }
    out
}

/// What to replay with.
pub struct Options {
    /// Seed of the engine's RNG (and of fault injection).
    pub seed: u64,
    /// The LLM stand-in.
    pub llm: Box<dyn Responder>,
    /// Faults to inject, if any.
    pub faults: Option<Faults>,
    /// A label for the LLM in the report (`offline`, `script:FILE`, `http`).
    pub llm_label: String,
    /// Keep every request's messages in the report (`--prompts`).
    pub prompts: bool,
    /// The live bot's side of a recording (read ahead with [`Recording::scan`]): the
    /// engine starts at its first session, restarts with each later one, and the report
    /// compares the replay with what the live bot did. `llm` should answer from it
    /// ([`chatbot_sim::recording::Recorded`]) to reproduce the session.
    pub recording: Option<Recording>,
    /// The seed is the recording's own (shown in the comparison).
    pub recorded_seed: bool,
}

/// Replays `reader` under `config`. `progress` is called now and then with the number
/// of events done, so a CLI can show progress on long corpora.
pub fn replay(reader: impl BufRead, config: Config, opts: Options, mut progress: impl FnMut(u64)) -> Report {
    let mut report = Report::new(&config, opts.seed, &opts.llm_label);
    report.keep_prompts = opts.prompts;
    report.live_on = opts.recording.is_some();
    let mut sim: Option<Sim> = None;
    let (mut llm, mut faults) = (Some(opts.llm), opts.faults);
    let sessions = opts.recording.as_ref().map_or(&[][..], |r| &r.sessions[..]);
    // A recording with the bot's sessions: the engine starts when the live one did.
    let mut session = 0;
    if let Some(first) = sessions.first() {
        report.start = first.start;
        let llm = llm.take().expect("the LLM is handed over once");
        sim = Some(Sim::new(config.clone(), opts.seed, first.start, llm, faults.take()));
    }
    let mut last_at: Option<Millis> = None;
    for (n, item) in recording::read(reader).enumerate() {
        let ev = match item {
            Ok(Item::Event(ev)) => ev,
            Ok(Item::Note(_, Note::Session { seed, start, .. })) => {
                // The live bot restarted: so does the replay's engine (a new seed unless
                // --seed fixed one), from a clean state as the daemon's was.
                let next = sessions.get(session + 1);
                if let (Some(next), Some(sim)) = (next, sim.as_mut()) {
                    if next.seed == seed && next.start == start {
                        session += 1;
                        let seed = if opts.recorded_seed { seed } else { opts.seed };
                        let trace = sim.take_trace();
                        report.absorb(&trace, None);
                        sim.restart(config.clone(), seed, start);
                    }
                }
                continue;
            }
            Ok(Item::Note(..)) => continue,
            Err(BadLine { line, error }) => {
                report.bad_lines.push(format!("line {line}: {error}"));
                continue;
            }
        };
        // The envelope's timestamp drives the clock; a line without one happens "now".
        let at = ev.at.or(last_at).unwrap_or(Millis::ZERO);
        if sessions.first().is_some_and(|s| at < s.start) {
            // Before the live bot started: it never saw this event.
            report.before_start += 1;
            continue;
        }
        let sim = sim.get_or_insert_with(|| {
            report.start = at;
            let llm = llm.take().expect("the LLM is handed over once");
            Sim::new(config.clone(), opts.seed, at, llm, faults.take())
        });
        last_at = Some(at.max(last_at.unwrap_or(at)));
        report.events += 1;
        sim.feed(at, Input::Event { subject: None, body: ev.body.clone() });
        let trace = sim.take_trace();
        report.absorb(&trace, Some(&ev.body));
        report.observe_event(sim.now(), ev.channel.as_deref(), &ev.event_name);
        if n % 4096 == 0 {
            progress(report.events);
        }
    }
    let mut provenance = None;
    if let Some(sim) = sim.as_mut() {
        sim.finish(Duration::from_secs(60));
        let trace = sim.take_trace();
        report.absorb(&trace, None);
        report.end = sim.now();
        report.set_event_counts(sim.engine().stats(), sim.engine().unrouted());
        provenance = sim.llm().provenance();
    }
    progress(report.events);
    report.finalise();
    if let Some(rec) = &opts.recording {
        report.live = Some(live::compare(
            &config,
            rec,
            &report.decisions,
            &report.sent_by_event,
            &report.causes,
            provenance.unwrap_or_default(),
            opts.recorded_seed,
        ));
    }
    report
}

impl Report {
    /// Folds trace items into the report. `current` is the corpus line just fed: a
    /// trigger that fired on it gets its text remembered for the reply list.
    fn absorb(&mut self, trace: &[Traced], current: Option<&[u8]>) {
        for t in trace {
            match &t.what {
                TraceItem::Effect(Effect::Decision(d)) => {
                    if d.outcome == Outcome::Fired || (self.live_on && d.trigger.is_some()) {
                        if let (Some(body), Some(cid)) = (current, d.correlation_id.as_deref()) {
                            if let Ok(env) = event::parse(body, None) {
                                let text = match env.event {
                                    Event::Chat(m) | Event::Pm { message: m, .. } => format!("{}: {}", m.user, m.text),
                                    Event::MediaChange(m) => format!("[media] {}", m.title),
                                    _ => String::new(),
                                };
                                self.remember_cause(cid, text);
                            }
                        }
                    }
                    self.decision(d);
                }
                TraceItem::Effect(Effect::Publish(cmd)) => self.published(t.at, cmd),
                TraceItem::Effect(Effect::CallLlm(call)) => self.called(t.at, call),
                TraceItem::Answered { id, provider, result } => self.answered(*id, provider, result),
                TraceItem::Effect(Effect::Moderation(r)) => self.moderated(r),
                TraceItem::Effect(
                    Effect::CancelLlm(_) | Effect::Lease(_) | Effect::Heartbeat | Effect::ShutdownComplete,
                ) => {}
            }
        }
    }
}
