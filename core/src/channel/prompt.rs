//! The messages a request sends: the system prompt, the remembered lines with their
//! speakers, and the instruction for what the bot should do now.
//!
//! The layout keeps a long common prefix between consecutive requests, which provider
//! prompt caches (and local servers' KV caches) reuse: the system prompt, then every
//! remembered line oldest first (the line answered among them, where it was said), then
//! the volatile part last: the room's facts (what is playing, who is here) and the
//! instruction, which names the line answered. The wording is the operator's templates
//! (`template.rs`); which lines are remembered is `context.rs`'s, the facts are
//! `room.rs`'s, and when to ask is the channel's.

use std::fmt::Write;

use super::room::Facts;
use crate::config::BotConfig;
use crate::context::{ChatLine, Context};
use crate::contract::{PromptMessage, Role};
use crate::template::{BotVars, Kind, MediaVars, Templates, UserVars, Vars};
use crate::time::Millis;

/// What the prompt ends with.
pub(super) enum Prompt {
    /// The channel context, answering `user`'s line (`addressed`: they spoke to the bot;
    /// otherwise `keyword` matched).
    Chat { user: String, text: String, addressed: bool, keyword: Option<String> },
    /// The PM conversation with `user`, answering their latest message.
    Pm { user: String, text: String },
    /// A comment on a new title.
    Media(String),
    /// The contextual yes/no question.
    ParticipationCheck,
    /// The contextual reply after a yes.
    Contextual,
}

impl Prompt {
    /// The template that words it.
    pub fn kind(&self) -> Kind {
        match self {
            Prompt::Chat { addressed: true, .. } => Kind::Mention,
            Prompt::Chat { addressed: false, .. } => Kind::Keyword,
            Prompt::Pm { .. } => Kind::Pm,
            Prompt::Media(_) => Kind::MediaChange,
            Prompt::ParticipationCheck => Kind::ParticipationCheck,
            Prompt::Contextual => Kind::Contextual,
        }
    }

    fn trigger(&self) -> &'static str {
        match self.kind() {
            Kind::Mention => "mention",
            Kind::Keyword => "keyword",
            Kind::Pm => "pm",
            Kind::MediaChange => "media_change",
            Kind::ParticipationCheck => "participation_check",
            Kind::Contextual | Kind::System => "contextual",
        }
    }
}

/// Everything a request's wording depends on besides the conversation.
pub(super) struct Wording<'a> {
    pub templates: &'a Templates,
    /// The system prompt rendered once for the channel, when it can be.
    pub system_static: Option<&'a str>,
    pub bot: &'a BotConfig,
    pub channel: &'a str,
    pub facts: &'a Facts,
    pub timezone: &'a jiff::tz::TimeZone,
    pub now: Millis,
}

/// The template variables for `prompt`.
fn vars(w: &Wording, prompt: &Prompt) -> Vars {
    let (user, text) = match prompt {
        Prompt::Chat { user, text, .. } | Prompt::Pm { user, text } => (user.clone(), text.clone()),
        _ => (String::new(), String::new()),
    };
    let keyword = match prompt {
        Prompt::Chat { keyword: Some(k), .. } => k.clone(),
        _ => String::new(),
    };
    let f = w.facts;
    let mut media = MediaVars::default();
    if let Some((title, position, length, _)) = &f.playing {
        media.title = title.to_string();
        media.position = clock(*position);
        media.duration = length.map(clock).unwrap_or_default();
    }
    if let Prompt::Media(title) = prompt {
        media.title.clone_from(title);
    }
    media.next = f.next.as_deref().unwrap_or("").to_owned();
    let zoned = jiff::Timestamp::from_millisecond(w.now.0 as i64).map(|t| t.to_zoned(w.timezone.clone()));
    let (now, date) = zoned.map_or_else(
        |_| (String::new(), String::new()),
        |z| (z.strftime("%H:%M").to_string(), z.strftime("%Y-%m-%d").to_string()),
    );
    Vars {
        bot: bot_vars(w.bot),
        channel: w.channel.to_owned(),
        user,
        text,
        trigger: prompt.trigger(),
        keyword,
        media,
        users: UserVars {
            count: f.count,
            names: f.names.iter().map(|n| n.to_string()).collect(),
            moderators: f.moderators.iter().map(|n| n.to_string()).collect(),
        },
        room: room_line(f).unwrap_or_default(),
        now,
        date,
    }
}

/// `bot.*` for templates.
pub(super) fn bot_vars(bot: &BotConfig) -> BotVars {
    BotVars { name: bot.name.clone(), aliases: bot.aliases.clone() }
}

/// Builds the messages for `prompt`: the system prompt, every remembered line of the
/// conversation (the channel's context, or the PM thread with the user answered) oldest
/// first, then the room's facts and the instruction. Consecutive requests share
/// everything up to the newest lines.
pub(super) fn messages(w: &Wording, conversation: Option<&Context>, prompt: &Prompt) -> Vec<PromptMessage> {
    let vars = vars(w, prompt);
    let persona = match w.system_static {
        Some(s) => s.to_owned(),
        None => w.templates.render(Kind::System, &vars),
    };
    let (bot_name, channel) = (&w.bot.name, w.channel);
    let system = format!(
        "{persona}\n\nYou are {bot_name} in the CyTube chat room \"{channel}\". Chat lines appear as `name: text`. \
         Write only your own next line: no name prefix, no other speakers."
    );
    let lines = conversation.map_or(0, Context::len);
    let mut messages = Vec::with_capacity(lines + 2);
    messages.push(PromptMessage { role: Role::System, content: system });
    for l in conversation.into_iter().flat_map(Context::lines) {
        messages.push(line_message(l));
    }
    let kind = prompt.kind();
    let instruction = w.templates.render(kind, &vars);
    let content = if !vars.room.is_empty() && !w.templates.places_facts(kind) {
        format!("{}\n{instruction}", vars.room)
    } else {
        instruction
    };
    messages.push(PromptMessage { role: Role::User, content });
    messages
}

/// One remembered line as a message: the bot's own as `assistant`, others as
/// `user` with their name.
fn line_message(l: &ChatLine) -> PromptMessage {
    if l.own {
        return PromptMessage { role: Role::Assistant, content: l.text.clone() };
    }
    let sep = if l.action { " " } else { ": " };
    let mut c = String::with_capacity(l.user.len() + sep.len() + l.text.len());
    c.push_str(&l.user);
    c.push_str(sep);
    c.push_str(&l.text);
    PromptMessage { role: Role::User, content: c }
}

/// `1:05`, `1:02:03`.
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// The room's facts as one bracketed line, or `None` when nothing is known.
fn room_line(f: &Facts) -> Option<String> {
    if f.is_empty() {
        return None;
    }
    let mut line = String::from("[Room now:");
    if let Some((title, position, length, paused)) = &f.playing {
        let _ = write!(line, " playing \"{title}\"");
        match length {
            Some(len) => {
                let _ = write!(line, " ({} of {}", clock(*position), clock(*len));
            }
            None => {
                let _ = write!(line, " ({} in", clock(*position));
            }
        }
        line.push_str(if *paused { ", paused)." } else { ")." });
        if let Some(next) = &f.next {
            let _ = write!(line, " Up next: \"{next}\".");
        }
    }
    if f.count > 0 {
        let _ = write!(line, " {} here", f.count);
        if !f.names.is_empty() {
            let names: Vec<&str> = f.names.iter().map(|n| &**n).collect();
            let _ = write!(line, ", including {}", names.join(", "));
        }
        line.push('.');
        if !f.moderators.is_empty() {
            let mods: Vec<&str> = f.moderators.iter().map(|n| &**n).collect();
            let _ = write!(line, " Moderators: {}.", mods.join(", "));
        }
    }
    line.push(']');
    Some(line)
}
