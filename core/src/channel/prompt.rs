//! The messages a request sends: the system prompt, the remembered lines with their
//! speakers, and the instruction for what the bot should do now.
//!
//! The line being answered is left out of the chatter and comes last, marked, so the
//! model knows whom it answers. The room's facts (what is playing, who is here) change
//! with every request, so they come after the chat lines, in the last message next to
//! the instruction: everything before them stays a common prefix. This file owns the
//! wording; which lines are remembered is `context.rs`'s, the facts are `room.rs`'s,
//! and when to ask is the channel's.

use std::fmt::Write;

use super::room::Facts;
use crate::context::{ChatLine, Context};
use crate::contract::{PromptMessage, Role};

/// What the prompt ends with.
pub(super) enum Prompt {
    /// The channel context, answering `user`'s line (`addressed`: they spoke to the bot).
    Chat { user: String, text: String, addressed: bool },
    /// The PM conversation with `user`, answering their latest message.
    Pm { user: String, text: String },
    /// A comment on a new title.
    Media(String),
    /// The contextual yes/no question.
    ParticipationCheck,
    /// The contextual reply after a yes.
    Contextual,
}

/// Builds the messages for `prompt`: `lines` is the conversation it draws on (the
/// channel's context, or the PM thread with the user answered).
pub(super) fn messages(
    system_prompt: &str,
    bot_name: &str,
    channel: &str,
    conversation: Option<&Context>,
    facts: &Facts,
    prompt: &Prompt,
) -> Vec<PromptMessage> {
    let system = format!(
        "{system_prompt}\n\nYou are {bot_name} in the CyTube chat room \"{channel}\". Chat lines appear as `name: text`. \
         Write only your own next line: no name prefix, no other speakers."
    );
    let mut messages = vec![PromptMessage { role: Role::System, content: system }];
    let lines: Vec<&ChatLine> = conversation.map(|c| c.lines().collect()).unwrap_or_default();
    let answering = match prompt {
        Prompt::Pm { user, text } | Prompt::Chat { user, text, .. } => Some((user.as_str(), text.as_str())),
        _ => None,
    };
    let n = lines.len();
    for (i, l) in lines.into_iter().enumerate() {
        let is_answered = i + 1 == n && !l.own && answering.is_some_and(|(u, t)| *l.user == *u && l.text == t);
        if is_answered {
            continue;
        }
        let content = if l.own {
            l.text.clone()
        } else {
            let sep = if l.action { " " } else { ": " };
            let mut c = String::with_capacity(l.user.len() + sep.len() + l.text.len());
            c.push_str(&l.user);
            c.push_str(sep);
            c.push_str(&l.text);
            c
        };
        let role = if l.own { Role::Assistant } else { Role::User };
        messages.push(PromptMessage { role, content });
    }
    let last = match prompt {
        Prompt::Chat { user, text, addressed: true } => {
            format!("[{user} is talking to you; answer this] {user}: {text}")
        }
        Prompt::Chat { user, text, addressed: false } => {
            format!("[react to this line if you have something to add] {user}: {text}")
        }
        Prompt::Pm { user, text } => format!("[private message from {user}; answer privately] {user}: {text}"),
        Prompt::Media(title) => format!("[The video changed to: {title}] Say something short about it."),
        Prompt::ParticipationCheck => {
            "[Would you naturally join this conversation right now? Answer only yes or no.]".into()
        }
        Prompt::Contextual => "[Join the conversation with one short line.]".into(),
    };
    let content = match room_line(facts) {
        Some(room) => format!("{room}\n{last}"),
        None => last,
    };
    messages.push(PromptMessage { role: Role::User, content });
    messages
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
