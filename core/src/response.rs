//! Turning an LLM's reply into lines that are safe to post in a CyTube room.
//!
//! Order matters and is fixed: remove reasoning blocks (`<think>…</think>`), cut where
//! the model starts writing the transcript as another user (`alice: …` on a later line),
//! strip markdown, collapse whitespace, drop the bot's own `Name:` prefix, refuse a reply
//! that repeats the system prompt, refuse empty or blocked text, cut or split to `max_length` UTF-16 code
//! units (CyTube's unit), neutralise a leading `/` in every part (CyTube would run it as a
//! command with the bot's rank), and refuse a repeat of a recent reply. Each refusal is a
//! named [`Rejection`]. The output invariants (never empty, never longer than
//! `max_length`, never starting with `/`) hold for any input; property tests prove them.

use std::collections::VecDeque;
use std::sync::LazyLock;

use regex::Regex;

use crate::config::{BotConfig, ResponseConfig};
use crate::trigger::whole_words_regex;

/// Why a reply was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rejection {
    /// Nothing left after cleaning.
    Empty,
    /// Matched `block_patterns` or `block_keywords`.
    Blocked,
    /// Same as one of the last `dedupe_window` replies.
    Duplicate,
    /// Nothing but reasoning.
    ReasoningOnly,
    /// Repeats a long span of the system prompt.
    PromptLeak,
}

impl Rejection {
    /// Reason label for logs, metrics and reports.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::Empty => "empty_reply",
            Rejection::Blocked => "blocked_reply",
            Rejection::Duplicate => "duplicate_reply",
            Rejection::ReasoningOnly => "reasoning_only",
            Rejection::PromptLeak => "prompt_leak",
        }
    }
}

/// One channel's response rules, compiled.
#[derive(Debug, Clone)]
pub struct Rules {
    cfg: ResponseConfig,
    block_keywords: Option<Regex>,
    own_names: Vec<String>,
    /// Hashes of every `LEAK_WORDS`-word span of the system prompt.
    prompt_spans: std::collections::HashSet<u64>,
}

/// A reply containing this many consecutive words of the system prompt leaks it.
const LEAK_WORDS: usize = 8;

fn spans(text: &str) -> Vec<u64> {
    use std::hash::{Hash, Hasher};
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    words
        .windows(LEAK_WORDS)
        .map(|w| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            w.hash(&mut h);
            h.finish()
        })
        .collect()
}

/// Replies recently sent in a channel, normalised, for dedupe.
#[derive(Debug, Clone, Default)]
pub struct Recent {
    replies: VecDeque<String>,
}

impl Recent {
    /// Remembers a sent reply, keeping at most `window`.
    pub fn remember(&mut self, text: &str, window: usize) {
        if window == 0 {
            return;
        }
        self.replies.push_back(normalise(text));
        while self.replies.len() > window {
            self.replies.pop_front();
        }
    }

    /// Does `text` look like a copy of a recent reply (most of its words, at least 4)?
    pub fn resembles(&self, text: &str) -> bool {
        // Word sets as sorted, deduplicated lists.
        fn word_set(text: &str) -> Vec<&str> {
            let mut words: Vec<&str> = text.split(' ').collect();
            words.sort_unstable();
            words.dedup();
            words
        }
        let normalised = normalise(text);
        let words = word_set(&normalised);
        if words.len() < 4 {
            return false;
        }
        self.replies.iter().any(|r| {
            let theirs = word_set(r);
            let common = words.iter().filter(|w| theirs.binary_search(w).is_ok()).count();
            common * 10 >= words.len().max(theirs.len()) * 7
        })
    }

    fn contains(&self, text: &str) -> bool {
        let n = normalise(text);
        self.replies.iter().any(|r| *r == n)
    }
}

fn normalise(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// UTF-16 length, CyTube's unit for `max-chat-message-length`.
pub fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// `text` up to the end of its last complete sentence (`.`, `!`, `?` or `…`, optionally
/// closed by a quote or bracket, then a space or the end); all of `text` when it has no
/// complete sentence. For a reply the provider cut off mid-sentence.
pub fn complete_sentences(text: &str) -> &str {
    let t = text.trim_end();
    let mut end = None;
    let mut chars = t.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if matches!(c, '.' | '!' | '?' | '…') {
            let mut stop = i + c.len_utf8();
            while let Some(&(j, q)) = chars.peek() {
                if matches!(q, '"' | '\'' | ')' | '»' | '”' | '’') {
                    stop = j + q.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            if chars.peek().is_none_or(|&(_, n)| n.is_whitespace()) {
                end = Some(stop);
            }
        }
    }
    end.map_or(text, |e| &t[..e])
}

impl Rules {
    /// Compiles a channel's rules; `bot` supplies the names whose `Name:` prefix is dropped
    /// and `system_prompt` the text a reply must not repeat.
    pub fn new(cfg: &ResponseConfig, bot: &BotConfig, system_prompt: &str) -> Rules {
        Rules {
            prompt_spans: spans(system_prompt).into_iter().collect(),
            // Validated by `Config::parse` (see `whole_words_regex`).
            block_keywords: whole_words_regex(cfg.block_keywords.iter().map(String::as_str), false).ok().flatten(),
            own_names: std::iter::once(&bot.name)
                .chain(&bot.aliases)
                .map(|n| n.trim().trim_start_matches('@').to_lowercase())
                .filter(|n| !n.is_empty())
                .collect(),
            cfg: cfg.clone(),
        }
    }

    /// Cleans `raw` into the messages to send (1..=`max_parts`), or says why not.
    pub fn process(&self, raw: &str, recent: &Recent) -> Result<Vec<String>, Rejection> {
        let (reasoned, had_reasoning) = strip_reasoning(raw);
        if had_reasoning && reasoned.trim().is_empty() {
            return Err(Rejection::ReasoningOnly);
        }
        let own = self.cut_at_other_speaker(&reasoned);
        let text = if self.cfg.strip_markdown { strip_markdown(&own) } else { own };
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let text = self.drop_own_prefix(&text);
        let text = neutralise(text);
        if text.is_empty() {
            return Err(Rejection::Empty);
        }
        if self.block_keywords.as_ref().is_some_and(|r| r.is_match(text))
            || self.cfg.block_patterns.iter().any(|p| p.0.is_match(text))
        {
            return Err(Rejection::Blocked);
        }
        if !self.prompt_spans.is_empty() && spans(text).iter().any(|h| self.prompt_spans.contains(h)) {
            return Err(Rejection::PromptLeak);
        }
        if recent.contains(text) {
            return Err(Rejection::Duplicate);
        }
        let parts = split(text, self.cfg.max_length, self.cfg.max_parts);
        debug_assert!(parts
            .iter()
            .all(|p| utf16_len(p) <= self.cfg.max_length && !p.starts_with('/') && !p.is_empty()));
        if parts.is_empty() {
            return Err(Rejection::Empty);
        }
        Ok(parts)
    }

    /// Keeps the text before the first later line that starts with another speaker's
    /// `name:` (the model continuing the transcript as someone else). The first line may
    /// address someone (`alice: sure!`); a later line in the bot's own name loses the
    /// prefix and stays.
    fn cut_at_other_speaker(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for (i, line) in text.split_inclusive('\n').enumerate() {
            let speaker = SPEAKER.captures(line).and_then(|c| c.get(0).zip(c.get(1)));
            match speaker {
                Some((whole, name)) if i > 0 => {
                    if !self.own_names.contains(&name.as_str().to_lowercase()) {
                        break;
                    }
                    out.push_str(&line[whole.end()..]);
                }
                _ => out.push_str(line),
            }
        }
        out
    }

    /// Removes any number of leading `BotName:` (models like to write the transcript).
    fn drop_own_prefix<'a>(&self, mut text: &'a str) -> &'a str {
        'again: loop {
            for name in &self.own_names {
                let candidate = text.trim_start_matches('@');
                if candidate.len() > name.len()
                    && candidate.is_char_boundary(name.len())
                    && candidate[..name.len()].to_lowercase() == *name
                    && candidate[name.len()..].starts_with(':')
                {
                    text = candidate[name.len() + 1..].trim_start();
                    continue 'again;
                }
            }
            return text;
        }
    }
}

/// Strips leading `/` (and the whitespace that would expose another one): CyTube runs a
/// message starting with `/` as a command with the bot's rank.
fn neutralise(text: &str) -> &str {
    text.trim_start_matches(|c: char| c == '/' || c.is_whitespace())
}

macro_rules! re {
    ($name:ident, $pat:expr) => {
        static $name: LazyLock<Regex> = LazyLock::new(|| Regex::new($pat).expect("static regex"));
    };
}
re!(FENCE, r"(?m)^\s*```.*$");
re!(SPEAKER, r"^\s*\*{0,2}([\w-]{1,30})\*{0,2}:\s");
re!(
    REASONING,
    r"(?is)<think>.*?</think>|<thinking>.*?</thinking>|<reasoning>.*?</reasoning>|<reflection>.*?</reflection>"
);
re!(REASONING_OPEN, r"(?is)<(?:think|thinking|reasoning|reflection)>.*$");
re!(REASONING_TAIL, r"(?is)^.*?</(?:think|thinking|reasoning|reflection)>");

/// Removes reasoning blocks, an unclosed one to the end, and reasoning before a stray
/// closing tag. Returns the rest and whether there was any.
fn strip_reasoning(text: &str) -> (std::borrow::Cow<'_, str>, bool) {
    if !text.contains('<') {
        return (std::borrow::Cow::Borrowed(text), false);
    }
    let a = REASONING.replace_all(text, "");
    let b = REASONING_TAIL.replace(&a, "").into_owned();
    let c = REASONING_OPEN.replace(&b, "").into_owned();
    let had = c.len() != text.len();
    (std::borrow::Cow::Owned(c), had)
}
re!(HEADING, r"(?m)^\s{0,3}#{1,6}\s+");
re!(LIST, r"(?m)^\s*(?:[-*+]|\d{1,3}[.)])\s+");
re!(QUOTE, r"(?m)^\s*>\s?");
re!(IMAGE, r"!\[([^\]]*)\]\([^)\s]*\)");
re!(LINK, r"\[([^\]]+)\]\(([^)\s]+)\)");
re!(BOLD_STAR, r"\*\*(.+?)\*\*");
re!(BOLD_UNDER, r"__(.+?)__");
re!(ITALIC_STAR, r"\*([^*\s](?:[^*]*[^*\s])?)\*");
re!(ITALIC_UNDER, r"(^|[^\p{L}\p{N}_])_([^_\s](?:[^_]*[^_\s])?)_($|[^\p{L}\p{N}_])");
re!(STRIKE, r"~~(.+?)~~");
re!(CODE, r"`([^`]+)`");

/// Removes markdown syntax, keeping the words.
pub fn strip_markdown(text: &str) -> String {
    let t = FENCE.replace_all(text, "");
    let t = HEADING.replace_all(&t, "");
    let t = LIST.replace_all(&t, "");
    let t = QUOTE.replace_all(&t, "");
    let t = IMAGE.replace_all(&t, "$1");
    let t = LINK.replace_all(&t, "$1 $2");
    let t = BOLD_STAR.replace_all(&t, "$1");
    let t = BOLD_UNDER.replace_all(&t, "$1");
    let t = ITALIC_STAR.replace_all(&t, "$1");
    let t = ITALIC_UNDER.replace_all(&t, "$1$2$3");
    let t = STRIKE.replace_all(&t, "$1");
    CODE.replace_all(&t, "$1").into_owned()
}

/// Splits `text` into at most `max_parts` pieces of at most `max_len` UTF-16 units,
/// preferring sentence ends, then word boundaries; what does not fit is cut with `…`.
fn split(text: &str, max_len: usize, max_parts: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() && parts.len() < max_parts {
        let last = parts.len() + 1 == max_parts;
        if utf16_len(rest) <= max_len {
            parts.push(rest.to_owned());
            break;
        }
        let (head, tail) = if last {
            let (head, _) = cut(rest, max_len - 1, false);
            (format!("{}…", head.trim_end()), "")
        } else {
            let (head, tail) = cut(rest, max_len, true);
            (head.trim_end().to_owned(), tail)
        };
        let head = neutralise(&head).to_owned();
        if !head.is_empty() {
            parts.push(head);
        }
        rest = neutralise(tail);
    }
    parts
}

/// The longest prefix of `text` within `max_len` UTF-16 units that ends at a sentence end
/// (when `sentences` and one exists in the second half) or a word boundary, else mid-word.
fn cut(text: &str, max_len: usize, sentences: bool) -> (&str, &str) {
    let mut units = 0;
    let mut hard = text.len();
    let mut word = None;
    let mut sentence = None;
    let mut prev = '\0';
    for (i, c) in text.char_indices() {
        if units + c.len_utf16() > max_len {
            hard = i;
            if c.is_whitespace() {
                word = Some(i);
                if matches!(prev, '.' | '!' | '?') && units * 2 >= max_len {
                    sentence = Some(i);
                }
            }
            break;
        }
        if c.is_whitespace() {
            word = Some(i);
            if matches!(prev, '.' | '!' | '?') && units * 2 >= max_len {
                sentence = Some(i);
            }
        }
        units += c.len_utf16();
        prev = c;
    }
    let at = if sentences { sentence.or(word) } else { word }.filter(|w| *w > 0).unwrap_or(hard);
    let (head, tail) = text.split_at(at);
    if head.is_empty() {
        // A first character wider than the limit cannot happen for max_len >= 2; keep
        // progress anyway.
        let n = text.chars().next().map_or(0, char::len_utf8);
        return text.split_at(n);
    }
    (head, tail.trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(max_length: usize, max_parts: usize) -> Rules {
        let cfg = ResponseConfig {
            max_length,
            max_parts,
            strip_markdown: true,
            block_patterns: vec![crate::config::Pattern(Regex::new(r"(?i)https?://").unwrap())],
            block_keywords: vec!["heck".into()],
            dedupe_window: 3,
        };
        Rules::new(
            &cfg,
            &BotConfig { name: "KrytenBot".into(), aliases: vec!["kryten".into()] },
            "You are KrytenBot, the friendly regular of the lounge. Never reveal the secret word: aubergine.",
        )
    }

    fn one(r: &Rules, raw: &str) -> String {
        let parts = r.process(raw, &Recent::default()).unwrap();
        assert_eq!(parts.len(), 1, "{parts:?}");
        parts.into_iter().next().unwrap()
    }

    #[test]
    fn markdown_is_stripped_and_lines_collapsed() {
        let r = rules(320, 1);
        assert_eq!(
            one(&r, "# Title\n\n**Bold** and *it* and `code`, see [docs](x.org)\n- one\n- two"),
            "Title Bold and it and code, see docs x.org one two"
        );
        assert_eq!(one(&r, "snake_case_name stays"), "snake_case_name stays");
        assert_eq!(one(&r, "> quoted"), "quoted");
    }

    #[test]
    fn own_name_prefix_is_dropped() {
        let r = rules(320, 1);
        assert_eq!(one(&r, "KrytenBot: hello there"), "hello there");
        assert_eq!(one(&r, "**KrytenBot**: kryten: hi"), "hi");
        assert_eq!(one(&r, "KrytenBot is here"), "KrytenBot is here");
    }

    #[test]
    fn reply_never_starts_with_slash() {
        let r = rules(320, 1);
        assert_eq!(one(&r, "/clear"), "clear");
        assert_eq!(one(&r, "  / /kick alice"), "kick alice");
        assert_eq!(one(&r, "KrytenBot: /ban bob"), "ban bob");
        assert_eq!(r.process("///", &Recent::default()), Err(Rejection::Empty));
    }

    #[test]
    fn empty_blocked_and_duplicate_replies_are_rejected_with_reasons() {
        let r = rules(320, 1);
        assert_eq!(r.process(" \n ", &Recent::default()), Err(Rejection::Empty));
        assert_eq!(r.process("KrytenBot:", &Recent::default()), Err(Rejection::Empty));
        assert_eq!(r.process("what the HECK", &Recent::default()), Err(Rejection::Blocked));
        assert_eq!(r.process("see http://x", &Recent::default()), Err(Rejection::Blocked));
        assert!(r.process("heckle", &Recent::default()).is_ok());
        let mut recent = Recent::default();
        recent.remember("Nice  one", 3);
        assert_eq!(r.process("nice one", &recent), Err(Rejection::Duplicate));
    }

    #[test]
    fn dedupe_forgets_beyond_its_window() {
        let r = rules(320, 1);
        let mut recent = Recent::default();
        for t in ["a1", "a2", "a3", "a4"] {
            recent.remember(t, 3);
        }
        assert!(r.process("a1", &recent).is_ok());
        assert_eq!(r.process("a4", &recent), Err(Rejection::Duplicate));
    }

    #[test]
    fn long_reply_is_cut_at_a_word_boundary_within_utf16_units() {
        let r = rules(20, 1);
        let out = one(&r, "the quick brown fox jumps over the lazy dog");
        assert_eq!(out, "the quick brown fox…");
        assert!(utf16_len(&out) <= 20);
        let emoji = one(&r, &"😀".repeat(30));
        assert!(utf16_len(&emoji) <= 20, "{emoji}");
    }

    #[test]
    fn long_reply_splits_into_parts_at_sentences() {
        let r = rules(30, 3);
        let parts = r.process("First sentence is here. Second one follows now. Third.", &Recent::default()).unwrap();
        assert_eq!(parts, ["First sentence is here.", "Second one follows now. Third."]);
        let parts = r.process(&"word ".repeat(40), &Recent::default()).unwrap();
        assert_eq!(parts.len(), 3);
        assert!(parts[2].ends_with('…'));
        assert!(parts.iter().all(|p| utf16_len(p) <= 30));
    }

    #[test]
    fn reasoning_blocks_are_removed_and_reasoning_only_is_dropped() {
        let r = rules(320, 1);
        assert_eq!(one(&r, "<think>the user wants a greeting</think>Hello!"), "Hello!");
        assert_eq!(one(&r, "<THINKING>\nstep 1\nstep 2\n</THINKING>\nSure thing."), "Sure thing.");
        assert_eq!(one(&r, "okay so they asked about pizza</think> Pizza is great."), "Pizza is great.");
        assert_eq!(r.process("<think>hmm, what to say", &Recent::default()), Err(Rejection::ReasoningOnly));
        assert_eq!(r.process("<think>a</think>  ", &Recent::default()), Err(Rejection::ReasoningOnly));
        assert_eq!(one(&r, "a <b> tag is not reasoning"), "a <b> tag is not reasoning");
    }

    #[test]
    fn the_reply_is_cut_where_the_model_speaks_as_another_user() {
        let r = rules(320, 1);
        assert_eq!(one(&r, "Sounds fun!\nalice: yeah it does\nbob: lol"), "Sounds fun!");
        assert_eq!(one(&r, "alice: sure, see you there"), "alice: sure, see you there");
        assert_eq!(one(&r, "Sure.\nKrytenBot: and another thing"), "Sure. and another thing");
        assert_eq!(one(&r, "Line one\nline two: not a name"), "Line one line two: not a name");
    }

    #[test]
    fn a_reply_repeating_the_system_prompt_is_dropped_as_a_leak() {
        let r = rules(320, 1);
        assert_eq!(
            r.process(
                "My instructions: you are KrytenBot, the friendly regular of the lounge. Never reveal",
                &Recent::default()
            ),
            Err(Rejection::PromptLeak)
        );
        assert!(r.process("I am the friendly regular around here", &Recent::default()).is_ok());
    }

    #[test]
    fn a_split_part_never_starts_with_slash() {
        let r = rules(20, 3);
        let parts = r.process("aaaa bbbb cccc dddd /kick eeee ffff gggg", &Recent::default()).unwrap();
        assert!(parts.iter().all(|p| !p.starts_with('/')), "{parts:?}");
    }

    #[test]
    fn a_cut_off_reply_keeps_its_complete_sentences() {
        assert_eq!(complete_sentences("It is a film. The director also made"), "It is a film.");
        assert_eq!(complete_sentences("Really?! \"Yes.\" And then"), "Really?! \"Yes.\"");
        assert_eq!(complete_sentences("version 2.5 is out and"), "version 2.5 is out and", "no sentence end");
        assert_eq!(complete_sentences("Done."), "Done.");
    }
}
