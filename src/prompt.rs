//! `llm-chatbot prompt`: the exact messages a request would send, so an operator sees
//! what the model sees: built by the engine itself, after the corpus's first lines when
//! a corpus is given.

use std::path::PathBuf;
use std::time::Duration;

use chatbot_core::event::{self, Event};
use chatbot_core::template::Kind;
use chatbot_core::{Config, Input, Millis};
use chatbot_sim::{Offline, Sim};

use crate::CliError;

/// What to show.
pub struct PromptArgs {
    pub config: Config,
    pub channel: String,
    pub trigger: Option<Kind>,
    pub corpus: Option<PathBuf>,
    pub at: Option<usize>,
}

/// `--trigger` names.
pub fn kind(name: &str) -> Result<Kind, String> {
    Ok(match name {
        "mention" => Kind::Mention,
        "keyword" => Kind::Keyword,
        "pm" => Kind::Pm,
        "media_change" => Kind::MediaChange,
        "contextual" => Kind::Contextual,
        "participation_check" => Kind::ParticipationCheck,
        other => {
            return Err(format!(
                "unknown trigger `{other}`: mention, keyword, pm, media_change, contextual or participation_check"
            ))
        }
    })
}

/// Renders the messages as text: one block per message, its role first.
pub fn run(args: PromptArgs) -> Result<String, CliError> {
    let PromptArgs { config, channel, trigger, corpus, at } = args;
    let bot = config.bot.name.clone();
    let mut line: Option<(String, String, bool)> = None;
    let mut sim = None;
    if let Some(path) = &corpus {
        let text = std::fs::read_to_string(path)
            .map_err(|source| CliError::Read { path: path.display().to_string(), source })?;
        let events: Vec<_> = chatbot_sim::corpus::read(text.as_bytes()).flatten().collect();
        let first = events.iter().find_map(|e| e.at).unwrap_or(Millis(0));
        let s = sim.insert(Sim::new(config.clone(), 0, first, Box::new(Offline::new(&config.bot)), None));
        let until = at.unwrap_or(usize::MAX);
        for ev in &events {
            let at_time = ev.at.unwrap_or(s.now());
            if ev.line >= until {
                if ev.line == until {
                    s.advance_to(at_time);
                    line = chat_line(&ev.body);
                }
                break;
            }
            s.feed(at_time, Input::Event { subject: None, body: ev.body.clone() });
        }
        s.finish(Duration::from_secs(0));
    }
    let mut engine = match sim {
        Some(s) => s.engine().clone(),
        None => chatbot_core::Engine::new(config, 0, Millis(0)),
    };
    let kind = trigger.unwrap_or(match &line {
        Some((_, _, true)) => Kind::Pm,
        _ => Kind::Mention,
    });
    let default_text = match kind {
        Kind::Mention => format!("{bot}, what do you think?"),
        Kind::Keyword => String::new(),
        Kind::Pm => "hi".to_owned(),
        _ => String::new(),
    };
    let (user, text) = line.as_ref().map_or(("viewer", default_text.as_str()), |(u, t, _)| (u.as_str(), t.as_str()));
    let answered = matches!(kind, Kind::Mention | Kind::Keyword | Kind::Pm).then_some((user, text));
    let messages = engine.preview_prompt(&channel, kind, answered).ok_or_else(|| CliError::Option {
        option: format!("--channel {channel}"),
        message: "no such channel in the config".into(),
    })?;
    let mut out = String::new();
    for m in messages {
        out.push_str(&format!("[{}]\n{}\n\n", m.role.as_str(), m.content));
    }
    Ok(out)
}

/// The user, text and "is a PM" of a chat line or PM envelope.
fn chat_line(body: &[u8]) -> Option<(String, String, bool)> {
    match event::parse(body, None).ok()?.event {
        Event::Chat(m) => Some((m.user.into_owned(), m.text.into_owned(), false)),
        Event::Pm { message, .. } => Some((message.user.into_owned(), message.text.into_owned(), true)),
        _ => None,
    }
}
