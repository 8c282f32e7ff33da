//! Moderators steering the bot from chat: `!NAME COMMAND [ARGS]` (NAME the bot's name
//! or an alias, case-insensitive; `!` is `moderation.prefix`).
//!
//! This file reads a command line and words the bot's private answers; who may give a
//! command (rank, from the room's state) and what it changes are the channel's, through
//! the same path as the NATS controls.

use std::time::Duration;

use crate::config::BotConfig;
use crate::response::utf16_len;
use crate::trigger::bot_names;

/// The longest mute a moderator can set from chat.
pub(super) const MAX_MUTE: Duration = Duration::from_secs(30 * 86_400);

/// A command line, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ModCommand {
    /// `mute [DURATION]`.
    Mute(Option<Duration>),
    /// `unmute`.
    Unmute,
    /// `status`.
    Status,
    /// `why`.
    Why,
    /// `forget`.
    Forget,
    /// `help`, or the name alone.
    Help,
    /// `mute` with an argument that is not a duration.
    BadDuration(String),
    /// Anything else.
    Unknown(String),
}

impl ModCommand {
    /// The label in records and metrics (bounded).
    pub fn label(&self) -> &'static str {
        match self {
            ModCommand::Mute(_) | ModCommand::BadDuration(_) => "mute",
            ModCommand::Unmute => "unmute",
            ModCommand::Status => "status",
            ModCommand::Why => "why",
            ModCommand::Forget => "forget",
            ModCommand::Help => "help",
            ModCommand::Unknown(_) => "unknown",
        }
    }
}

fn bare(name: &str) -> &str {
    name.trim().trim_start_matches('@').trim_end_matches([':', ',']).trim()
}

/// Reads `text` as a command to this bot; `None` for any other line.
pub(super) fn parse(text: &str, prefix: &str, bot: &BotConfig) -> Option<ModCommand> {
    let rest = text.trim_start().strip_prefix(prefix)?;
    if rest.starts_with(char::is_whitespace) {
        return None;
    }
    let mut words = rest.split_whitespace();
    let name = bare(words.next()?);
    if name.is_empty() || !bot_names(bot).any(|n| bare(n).to_lowercase() == name.to_lowercase()) {
        return None;
    }
    let Some(word) = words.next() else { return Some(ModCommand::Help) };
    let arg: Vec<&str> = words.collect();
    Some(match word.to_lowercase().as_str() {
        "mute" | "quiet" | "hush" => match arg.first() {
            None => ModCommand::Mute(None),
            Some(d) if ["forever", "indefinitely"].contains(&d.to_lowercase().as_str()) => ModCommand::Mute(None),
            Some(d) => match humantime::parse_duration(&arg.join(" ")) {
                Ok(d) if !d.is_zero() => ModCommand::Mute(Some(d.min(MAX_MUTE))),
                _ => ModCommand::BadDuration((*d).to_owned()),
            },
        },
        "unmute" | "speak" => ModCommand::Unmute,
        "status" => ModCommand::Status,
        "why" => ModCommand::Why,
        "forget" | "clear" => ModCommand::Forget,
        "help" | "commands" | "?" => ModCommand::Help,
        other => ModCommand::Unknown(other.chars().take(20).collect()),
    })
}

/// A duration the way an operator writes one: `1h 30m`, `45s`.
pub(super) fn short(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, s / 60 % 60, s % 60);
    match (h, m, sec) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, 0, _) if h % 24 == 0 => format!("{}d", h / 24),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}

/// The help text.
pub(super) fn help(prefix: &str, bot: &str) -> String {
    let c = |w: &str| format!("{prefix}{bot} {w}");
    format!(
        "Moderator commands: {} (e.g. 10m; none = until unmuted), {}, {} (muted? providers, replies, budget), {} (recent silences), {} (clear my memory of this chat), {}.",
        c("mute [time]"),
        c("unmute"),
        c("status"),
        c("why"),
        c("forget"),
        c("help")
    )
}

/// Packs `lines` into messages of at most `max_len` UTF-16 units each (a line that is
/// longer alone is cut), at most `max_parts` messages.
pub(super) fn pack(lines: &[String], max_len: usize, max_parts: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in lines {
        let line = fit(line, max_len);
        let joins = out.last().is_some_and(|last| utf16_len(last) + 1 + utf16_len(&line) <= max_len);
        if joins {
            let last = out.last_mut().expect("checked above");
            last.push(' ');
            last.push_str(&line);
        } else if out.len() < max_parts {
            out.push(line);
        } else {
            break;
        }
    }
    out
}

/// `text` cut to `max_len` UTF-16 units (with `…`).
fn fit(text: &str, max_len: usize) -> String {
    if utf16_len(text) <= max_len {
        return text.to_owned();
    }
    let mut out = String::new();
    for c in text.chars() {
        if utf16_len(&out) + c.len_utf16() + 1 > max_len {
            break;
        }
        out.push(c);
    }
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bot() -> BotConfig {
        BotConfig { name: "KrytenBot".into(), aliases: vec!["kryten".into(), "@bot".into()] }
    }

    #[test]
    fn command_lines_name_the_bot_after_the_prefix() {
        let p = |t: &str| parse(t, "!", &bot());
        assert_eq!(p("!kryten mute 10m"), Some(ModCommand::Mute(Some(Duration::from_secs(600)))));
        assert_eq!(p("!KRYTENBOT mute"), Some(ModCommand::Mute(None)));
        assert_eq!(p("  !bot unmute"), Some(ModCommand::Unmute));
        assert_eq!(p("!@bot status"), Some(ModCommand::Status));
        assert_eq!(p("!kryten: why"), Some(ModCommand::Why));
        assert_eq!(p("!kryten Forget"), Some(ModCommand::Forget));
        assert_eq!(p("!kryten"), Some(ModCommand::Help));
        assert_eq!(p("!kryten mute 1h 30m"), Some(ModCommand::Mute(Some(Duration::from_secs(5400)))));
        assert_eq!(p("!kryten mute soon"), Some(ModCommand::BadDuration("soon".into())));
        assert_eq!(p("!kryten mute forever"), Some(ModCommand::Mute(None)));
        assert_eq!(p("!kryten mute 400d"), Some(ModCommand::Mute(Some(MAX_MUTE))));
        assert_eq!(p("!kryten dance"), Some(ModCommand::Unknown("dance".into())));
        for no in ["kryten mute", "!krytenbots mute", "! kryten mute", "hey !kryten mute", "!other mute", "!"] {
            assert_eq!(p(no), None, "{no}");
        }
        assert_eq!(parse("~~kryten mute", "~~", &bot()), Some(ModCommand::Mute(None)));
        assert_eq!(parse("!kryten mute", "~~", &bot()), None);
    }

    #[test]
    fn answers_fit_in_cytube_messages() {
        let lines: Vec<String> = (0..10).map(|i| format!("{i}: {}", "x".repeat(100))).collect();
        let msgs = pack(&lines, 320, 3);
        assert_eq!(msgs.len(), 3);
        assert!(msgs.iter().all(|m| utf16_len(m) <= 320));
        assert_eq!(pack(&["y".repeat(400)], 320, 3)[0].chars().count(), 320);
        assert!(utf16_len(&help("!", "KrytenBot")) <= 320);
        assert_eq!(
            (short(Duration::from_secs(600)), short(Duration::from_secs(5400))),
            ("10m".into(), "1h 30m".into())
        );
    }
}
