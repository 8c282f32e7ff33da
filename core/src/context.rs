//! The conversations a channel remembers: the room's last `max_messages` lines within
//! `max_age`, and one such window per PM conversation ([`PmThreads`], bounded).
//!
//! Lines arrive in time order, so a ring buffer gives O(1) push and O(1) amortised expiry
//! from the front. The context owns no policy about who is worth remembering; the engine
//! decides what to push. It never grows past `max_messages`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::time::Millis;

/// One remembered line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatLine {
    /// When it was seen (engine time).
    pub at: Millis,
    /// Who said it.
    pub user: Arc<str>,
    /// Plain text.
    pub text: String,
    /// Said by the bot itself (its own echo).
    pub own: bool,
    /// A `/me` action line ("alice waves"), rendered without a colon.
    pub action: bool,
}

/// A bounded, time-limited window of lines.
#[derive(Debug, Clone)]
pub struct Context {
    lines: VecDeque<ChatLine>,
    max_messages: usize,
    max_age: Duration,
}

impl Context {
    /// An empty window.
    pub fn new(max_messages: usize, max_age: Duration) -> Context {
        Context { lines: VecDeque::with_capacity(max_messages.min(64)), max_messages: max_messages.max(1), max_age }
    }

    /// Applies new bounds (config reload), trimming at once.
    pub fn resize(&mut self, max_messages: usize, max_age: Duration) {
        self.max_messages = max_messages.max(1);
        self.max_age = max_age;
        while self.lines.len() > self.max_messages {
            self.lines.pop_front();
        }
    }

    /// Remembers a line. A full window forgets its oldest 60 % at once rather than one
    /// line per new one, so that consecutive prompts share everything up to their newest
    /// lines (provider prompt caches reuse a common prefix): the window holds between
    /// `max_messages - 3/5 max_messages + 1` (21 of 50) and `max_messages` lines, never
    /// more. (Measured on a busy channel, 3/5 gives the longest shared prefixes: a
    /// smaller chunk forgets more often, a larger one leaves less to share.)
    pub fn push(&mut self, line: ChatLine) {
        if self.lines.len() >= self.max_messages {
            let chunk = (self.max_messages * 3 / 5).max(1);
            self.lines.drain(..chunk.min(self.lines.len()));
        }
        self.lines.push_back(line);
        debug_assert!(self.lines.len() <= self.max_messages);
    }

    /// Forgets lines older than `max_age` at `now`: once the oldest line is that old, every
    /// line that would be within the next quarter of `max_age` goes with it (in chunks,
    /// as [`Context::push`] does; never later than `max_age`).
    pub fn expire(&mut self, now: Millis) {
        let oldest_kept = now.before(self.max_age);
        if self.lines.front().is_some_and(|l| l.at < oldest_kept) {
            let chunk_end = now.before(self.max_age - self.max_age / 4);
            while self.lines.front().is_some_and(|l| l.at < chunk_end) {
                self.lines.pop_front();
            }
        }
    }

    /// The remembered lines, oldest first.
    pub fn lines(&self) -> impl ExactSizeIterator<Item = &ChatLine> {
        self.lines.iter()
    }

    /// How many lines are remembered.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Time of the newest line.
    pub fn last_at(&self) -> Option<Millis> {
        self.lines.back().map(|l| l.at)
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.lines.clear();
    }
}

/// PM conversations remembered per channel.
const MAX_PM_THREADS: usize = 64;

/// The private conversations with each user, by lower-cased name: each a [`Context`]
/// with the channel's bounds. At most `MAX_PM_THREADS`; a new one pushes out the one
/// that has been quiet longest.
#[derive(Debug, Clone, Default)]
pub struct PmThreads {
    threads: std::collections::BTreeMap<String, Context>,
}

impl PmThreads {
    /// The conversation with `user_lc`, created with these bounds, expired at `now`.
    pub fn thread(&mut self, user_lc: &str, now: Millis, max_messages: usize, max_age: Duration) -> &mut Context {
        if !self.threads.contains_key(user_lc) && self.threads.len() >= MAX_PM_THREADS {
            if let Some(oldest) =
                self.threads.iter().min_by_key(|(_, t)| t.last_at().unwrap_or(Millis::ZERO)).map(|(k, _)| k.clone())
            {
                self.threads.remove(&oldest);
            }
        }
        let thread = self.threads.entry(user_lc.to_owned()).or_insert_with(|| Context::new(max_messages, max_age));
        thread.expire(now);
        thread
    }

    /// The conversation with `user_lc`, if any.
    pub fn get(&self, user_lc: &str) -> Option<&Context> {
        self.threads.get(user_lc)
    }

    /// Applies new bounds to every conversation (config reload).
    pub fn resize(&mut self, max_messages: usize, max_age: Duration) {
        for t in self.threads.values_mut() {
            t.resize(max_messages, max_age);
        }
    }

    /// Forgets every conversation.
    pub fn clear(&mut self) {
        self.threads.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(at: u64, text: &str) -> ChatLine {
        ChatLine { at: Millis(at), user: "u".into(), text: text.into(), own: false, action: false }
    }

    #[test]
    fn a_full_context_forgets_its_oldest_lines_in_one_chunk() {
        let mut c = Context::new(4, Duration::from_secs(60));
        for i in 0..5 {
            c.push(line(i, &i.to_string()));
        }
        // 4 * 3/5 = 2 forgotten at once.
        assert_eq!(c.lines().map(|l| l.text.as_str()).collect::<Vec<_>>(), ["2", "3", "4"]);
        c.push(line(5, "5"));
        assert_eq!(c.len(), 4, "never more than max_messages");
        c.push(line(6, "6"));
        assert_eq!(c.lines().map(|l| l.text.as_str()).collect::<Vec<_>>(), ["4", "5", "6"]);
        let mut one = Context::new(1, Duration::from_secs(60));
        one.push(line(0, "a"));
        one.push(line(1, "b"));
        assert_eq!(one.lines().map(|l| l.text.as_str()).collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn lines_older_than_max_age_expire_with_the_next_quarter() {
        let mut c = Context::new(10, Duration::from_secs(60));
        c.push(line(0, "old"));
        c.push(line(30_000, "mid"));
        c.push(line(50_000, "late"));
        c.push(line(70_000, "new"));
        c.expire(Millis(59_000));
        assert_eq!(c.len(), 4, "nothing is that old yet");
        c.expire(Millis(90_000));
        // "old" is past 60 s; "mid" (60 s old at 90 s) would be within 15 s: it goes too.
        assert_eq!(c.lines().map(|l| l.text.as_str()).collect::<Vec<_>>(), ["late", "new"]);
        c.expire(Millis(200_000));
        assert!(c.is_empty());
    }

    #[test]
    fn a_new_pm_thread_beyond_the_bound_replaces_the_quietest() {
        let mut t = PmThreads::default();
        let age = Duration::from_secs(3_600);
        for i in 0..MAX_PM_THREADS as u64 {
            t.thread(&format!("u{i}"), Millis(i), 5, age).push(line(1_000 + i, "hi"));
        }
        t.thread("u0", Millis(2_000), 5, age).push(line(2_000, "again"));
        t.thread("new", Millis(2_001), 5, age);
        assert!(t.get("u1").is_none(), "u1 had been quiet longest");
        assert!(t.get("u0").is_some() && t.get("new").is_some());
    }

    #[test]
    fn shrinking_on_reload_trims_the_oldest() {
        let mut c = Context::new(5, Duration::from_secs(60));
        for i in 0..5 {
            c.push(line(i, &i.to_string()));
        }
        c.resize(2, Duration::from_secs(60));
        assert_eq!(c.lines().map(|l| l.text.as_str()).collect::<Vec<_>>(), ["3", "4"]);
    }
}
