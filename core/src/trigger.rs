//! Which trigger a line matches: mention of the bot, or one of the keyword groups.
//!
//! Matching is whole-word and case-insensitive: `bot` must match "hey bot!" and "@bot"
//! but never "robotics". Patterns are compiled once per channel config; matching a line
//! never allocates. This module only answers "does it match"; probabilities, cooldowns
//! and limits are decided by the engine.

use regex::{Regex, RegexBuilder};

use crate::config::{BotConfig, KeywordConfig};

/// What made the bot consider speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Trigger {
    /// Its name or an alias, as a whole word.
    Mention,
    /// A keyword group, by index in the channel's `triggers.keywords`.
    Keyword(usize),
    /// A private message to the bot.
    Pm,
    /// New media in the channel.
    MediaChange,
    /// The periodic participation check.
    Contextual,
    /// A moderator's command (`!kryten mute`): answered by PM, never by the LLM.
    Command,
}

impl Trigger {
    /// Label used in logs, metrics and reports (`keyword` for every group).
    pub fn label(self) -> &'static str {
        match self {
            Trigger::Mention => "mention",
            Trigger::Keyword(_) => "keyword",
            Trigger::Pm => "pm",
            Trigger::MediaChange => "media_change",
            Trigger::Contextual => "contextual",
            Trigger::Command => "command",
        }
    }
}

/// Compiled matchers for one channel.
#[derive(Debug, Clone)]
pub struct Matcher {
    mention: Option<Regex>,
    keywords: Vec<Option<Regex>>,
}

/// A word boundary that also works next to non-word characters in a name (`K-9`, `@bot`).
const EDGE_L: &str = r"(?:^|[^\p{L}\p{N}_])";
const EDGE_R: &str = r"(?:$|[^\p{L}\p{N}_])";

fn alternation<'a>(terms: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut alts: Vec<String> = terms
        .map(|t| t.trim().trim_start_matches('@').trim())
        .filter(|t| !t.is_empty())
        .map(|t| t.split_whitespace().map(regex::escape).collect::<Vec<_>>().join(r"\s+"))
        .collect();
    if alts.is_empty() {
        return None;
    }
    // Longest first so `KrytenBot` is tried before `Kryten`.
    alts.sort_by_key(|a| std::cmp::Reverse(a.len()));
    alts.dedup();
    Some(alts.join("|"))
}

/// A case-insensitive regex matching any of `terms` as whole words (phrases allow any
/// spacing); `None` when there are no terms. Shared with the response block list. The
/// terms are escaped, so the only possible error is size: a list too long for the regex
/// engine's limit. `Config::parse` compiles every list the engine will, so that error is
/// a config error and never reaches the engine.
pub fn whole_words_regex<'a>(
    terms: impl Iterator<Item = &'a str>,
    optional_at: bool,
) -> Result<Option<Regex>, regex::Error> {
    alternation(terms).map(|alt| whole_words(&alt, optional_at)).transpose()
}

fn whole_words(alt: &str, optional_at: bool) -> Result<Regex, regex::Error> {
    let at = if optional_at { "@?" } else { "" };
    RegexBuilder::new(&format!("{EDGE_L}{at}({alt}){EDGE_R}")).case_insensitive(true).build()
}

/// The names that count as a mention of the bot.
pub fn bot_names(bot: &BotConfig) -> impl Iterator<Item = &str> {
    std::iter::once(bot.name.as_str()).chain(bot.aliases.iter().map(String::as_str))
}

impl Matcher {
    /// Compiles the bot's names and the channel's keyword groups. Every list was compiled
    /// once already by `Config::parse`, which refuses one too large, so nothing here fails
    /// for a parsed config.
    pub fn new(bot: &BotConfig, keywords: &[KeywordConfig]) -> Matcher {
        Matcher {
            mention: whole_words_regex(bot_names(bot), true).ok().flatten(),
            keywords: keywords
                .iter()
                .map(|k| whole_words_regex(k.words.iter().map(String::as_str), false).ok().flatten())
                .collect(),
        }
    }

    /// Does `text` mention the bot?
    pub fn is_mention(&self, text: &str) -> bool {
        self.mention.as_ref().is_some_and(|r| r.is_match(text))
    }

    /// The word of keyword group `group` that `text` contains, as written in `text`.
    pub fn keyword_in(&self, group: usize, text: &str) -> Option<String> {
        let c = self.keywords.get(group)?.as_ref()?.captures(text)?;
        c.get(1).map(|m| m.as_str().to_owned())
    }

    /// Keyword groups matching `text`, in config order.
    pub fn keywords<'a>(&'a self, text: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.keywords
            .iter()
            .enumerate()
            .filter(move |(_, r)| r.as_ref().is_some_and(|r| r.is_match(text)))
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn matcher(name: &str, aliases: &[&str], keywords: &[&[&str]]) -> Matcher {
        let bot = BotConfig { name: name.into(), aliases: aliases.iter().map(|s| s.to_string()).collect() };
        let kws: Vec<KeywordConfig> = keywords
            .iter()
            .map(|ws| KeywordConfig {
                words: ws.iter().map(|s| s.to_string()).collect(),
                probability: 1.0,
                cooldown: Duration::ZERO,
            })
            .collect();
        Matcher::new(&bot, &kws)
    }

    #[test]
    fn mention_with_alias_fires_case_insensitively() {
        let m = matcher("KrytenBot", &["kryten", "@bot"], &[]);
        for yes in ["hey KRYTENBOT", "kryten?", "@Kryten hi", "ask the bot", "BOT: hi", "hi @krytenbot!"] {
            assert!(m.is_mention(yes), "{yes}");
        }
    }

    #[test]
    fn mention_needs_a_whole_word() {
        let m = matcher("KrytenBot", &["bot"], &[]);
        for no in ["robotics", "bots are cool", "krytenbotty", "abbot", "bot_name"] {
            assert!(!m.is_mention(no), "{no}");
        }
    }

    #[test]
    fn names_with_punctuation_still_match_as_words() {
        let m = matcher("K-9", &[], &[]);
        assert!(m.is_mention("good dog K-9!"));
        assert!(!m.is_mention("xK-9"));
    }

    #[test]
    fn keyword_phrases_match_across_spacing_and_case() {
        let m = matcher("B", &[], &[&["pizza"], &["star wars", "sequel"]]);
        assert_eq!(m.keywords("Who likes PIZZA?").collect::<Vec<_>>(), vec![0]);
        assert_eq!(m.keywords("star   Wars is great").collect::<Vec<_>>(), vec![1]);
        assert_eq!(m.keywords("pizzas and sequels").count(), 0);
        assert_eq!(m.keywords("pizza sequel").collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(m.keyword_in(1, "the Star  Wars sequel").as_deref(), Some("Star  Wars"));
        assert_eq!(m.keyword_in(0, "no match"), None);
    }

    #[test]
    fn regex_metacharacters_in_names_are_literal() {
        let m = matcher("a.b", &["c++"], &[&["(x)"]]);
        assert!(m.is_mention("hi a.b"));
        assert!(!m.is_mention("hi axb"));
        assert!(m.is_mention("c++ rocks"));
        assert_eq!(m.keywords("say (x) now").count(), 1);
    }
}
