//! Rate limits: sliding windows and cooldowns, and the reasons they silence the bot.
//!
//! A window remembers the times of recent replies (at most `max` of them, so it is
//! bounded) and answers whether one more fits in any window of `window` length ending
//! now. Cooldowns are a single "not before" time. The engine holds one window per channel
//! and one per user; this module holds no notion of users or channels.

use std::collections::VecDeque;
use std::time::Duration;

use crate::config::WindowConfig;
use crate::time::Millis;

/// At most `max` events in any `window`.
#[derive(Debug, Clone, Default)]
pub struct SlidingWindow {
    times: VecDeque<Millis>,
}

impl SlidingWindow {
    /// Drops times that have left the window ending at `now`.
    fn prune(&mut self, now: Millis, window: Duration) {
        // An event at `t` is inside the window ending at `now` while `now < t + window`.
        while self.times.front().is_some_and(|t| t.after(window) <= now) {
            self.times.pop_front();
        }
    }

    /// How many events fall inside the window ending at `now`.
    pub fn count(&mut self, now: Millis, window: Duration) -> usize {
        self.prune(now, window);
        self.times.len()
    }

    /// Whether `extra` more events (e.g. replies already in flight) plus one still fit.
    pub fn allows(&mut self, now: Millis, cfg: WindowConfig, extra: usize) -> bool {
        self.count(now, cfg.window) + extra < cfg.max as usize
    }

    /// Records an event at `at`. Keeps at most `max` times: older ones cannot matter.
    /// `at` may be older than the latest time (an echo delivered late, a send a new
    /// lease owner assumes it did not see): the times stay in order, so the oldest is
    /// the one forgotten.
    pub fn record(&mut self, at: Millis, cfg: WindowConfig) {
        self.prune(at, cfg.window);
        let i = self.times.partition_point(|t| *t <= at);
        self.times.insert(i, at);
        while self.times.len() > cfg.max as usize {
            self.times.pop_front();
        }
    }

    /// True when no event is inside the window ending at `now` (safe to forget).
    pub fn is_idle(&mut self, now: Millis, window: Duration) -> bool {
        self.count(now, window) == 0
    }

    /// The times inside the window ending at `now`, oldest first.
    pub fn times(&mut self, now: Millis, window: Duration) -> impl Iterator<Item = Millis> + '_ {
        self.prune(now, window);
        self.times.iter().copied()
    }

    /// Every time remembered, oldest first.
    pub fn all(&self) -> impl Iterator<Item = Millis> + '_ {
        self.times.iter().copied()
    }

    /// The time of the most recent event.
    pub fn last(&self) -> Option<Millis> {
        self.times.back().copied()
    }
}

/// Is `now` at least `gap` after `last`?
pub fn cooled_down(last: Option<Millis>, gap: Duration, now: Millis) -> bool {
    last.is_none_or(|t| now >= t.after(gap))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: WindowConfig = WindowConfig { max: 2, window: Duration::from_secs(60) };

    #[test]
    fn a_time_recorded_late_keeps_the_window_in_order_and_the_latest_times() {
        let mut w = SlidingWindow::default();
        w.record(Millis(50_000), CFG);
        // Older than what it holds: the window forgets the oldest, not the latest.
        w.record(Millis(1_000), CFG);
        w.record(Millis(2_000), CFG);
        assert_eq!(w.all().collect::<Vec<_>>(), [Millis(2_000), Millis(50_000)]);
        assert_eq!(w.last(), Some(Millis(50_000)));
        // 2 s has left the window by 62 s; 50 s has not, and one more fits.
        assert_eq!(w.count(Millis(62_000), CFG.window), 1);
        assert!(w.allows(Millis(62_000), CFG, 0));
    }

    #[test]
    fn window_allows_max_then_refuses_until_the_oldest_leaves() {
        let mut w = SlidingWindow::default();
        assert!(w.allows(Millis(0), CFG, 0));
        w.record(Millis(0), CFG);
        w.record(Millis(10_000), CFG);
        assert!(!w.allows(Millis(59_999), CFG, 0));
        assert!(w.allows(Millis(60_000), CFG, 0));
    }

    #[test]
    fn in_flight_replies_count_against_the_window() {
        let mut w = SlidingWindow::default();
        w.record(Millis(0), CFG);
        assert!(!w.allows(Millis(1), CFG, 1));
    }

    #[test]
    fn window_memory_is_bounded_by_max() {
        let mut w = SlidingWindow::default();
        for t in 0..100 {
            w.record(Millis(t), CFG);
        }
        assert_eq!(w.times.len(), 2);
    }

    #[test]
    fn cooldown_is_inclusive_of_its_end() {
        assert!(cooled_down(None, Duration::from_secs(5), Millis(0)));
        assert!(!cooled_down(Some(Millis(0)), Duration::from_secs(5), Millis(4_999)));
        assert!(cooled_down(Some(Millis(0)), Duration::from_secs(5), Millis(5_000)));
    }
}
