//! Token budgets: what a channel (and the whole bot) spent in the last hour and day.
//!
//! Spend is kept in per-minute buckets (at most 1,440, so bounded), fed from the
//! provider's `usage` or, when absent, estimated at four characters per token. Requests
//! in flight reserve their estimate, so a budget is checked against spent + reserved and
//! can be overshot by at most the one request that crossed it.

use std::collections::VecDeque;

use crate::contract::PromptMessage;
use crate::time::Millis;

const MINUTE: u64 = 60_000;
const DAY_MINUTES: u64 = 24 * 60;

/// Estimated tokens of a text: the common four-characters-per-token rule, at least 1.
pub fn estimate(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

/// Estimated prompt tokens of a request (plus the per-message overhead of chat formats).
pub fn estimate_prompt(messages: &[PromptMessage]) -> u64 {
    messages.iter().map(|m| estimate(&m.content) + 4).sum()
}

/// Tokens spent per minute over the last day, plus reservations in flight.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    minutes: VecDeque<(u64, u64)>,
    /// Tokens reserved by requests in flight.
    pub reserved: u64,
}

impl Ledger {
    fn prune(&mut self, now: Millis) {
        let oldest = (now.0 / MINUTE).saturating_sub(DAY_MINUTES - 1);
        while self.minutes.front().is_some_and(|(m, _)| *m < oldest) {
            self.minutes.pop_front();
        }
    }

    /// Records tokens spent at `now`.
    pub fn spend(&mut self, now: Millis, tokens: u64) {
        self.prune(now);
        let minute = now.0 / MINUTE;
        match self.minutes.back_mut() {
            Some((m, t)) if *m == minute => *t += tokens,
            _ => self.minutes.push_back((minute, tokens)),
        }
        debug_assert!(self.minutes.len() as u64 <= DAY_MINUTES);
    }

    /// Tokens spent in the last `minutes` minutes (this one included).
    pub fn spent(&self, now: Millis, minutes: u64) -> u64 {
        let from = (now.0 / MINUTE).saturating_sub(minutes - 1);
        self.minutes.iter().rev().take_while(|(m, _)| *m >= from).map(|(_, t)| t).sum()
    }

    /// Spent in the last hour.
    pub fn hour(&self, now: Millis) -> u64 {
        self.spent(now, 60)
    }

    /// Spent in the last day.
    pub fn day(&self, now: Millis) -> u64 {
        self.spent(now, DAY_MINUTES)
    }

    /// Whether spending more is allowed under these limits (0 = unlimited).
    pub fn allows(&self, now: Millis, per_hour: u64, per_day: u64) -> bool {
        (per_hour == 0 || self.hour(now) + self.reserved < per_hour)
            && (per_day == 0 || self.day(now) + self.reserved < per_day)
    }
}

/// How much of `current` repeats the start of `previous`, by characters: the share of
/// `current`'s characters (roles and contents) that equal a prefix of `previous`. What a
/// provider's prompt cache, or a local server's KV cache, can reuse between two
/// consecutive requests of one conversation.
pub fn prefix_reuse(previous: &[PromptMessage], current: &[PromptMessage]) -> (usize, usize) {
    let size = |m: &PromptMessage| m.role.as_str().len() + m.content.chars().count();
    let total: usize = current.iter().map(size).sum();
    let mut common = 0;
    for (a, b) in previous.iter().zip(current) {
        if a.role != b.role {
            break;
        }
        if a.content == b.content {
            common += size(b);
            continue;
        }
        common += a.role.as_str().len();
        common += a.content.chars().zip(b.content.chars()).take_while(|(x, y)| x == y).count();
        break;
    }
    (common, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spend_slides_out_of_the_hour_and_the_day() {
        let mut l = Ledger::default();
        l.spend(Millis(0), 100);
        l.spend(Millis(30 * MINUTE), 50);
        assert_eq!(l.hour(Millis(59 * MINUTE)), 150);
        assert_eq!(l.hour(Millis(60 * MINUTE)), 50);
        assert_eq!(l.day(Millis(60 * MINUTE)), 150);
        assert_eq!(l.day(Millis(DAY_MINUTES * MINUTE + 31 * MINUTE)), 0);
    }

    #[test]
    fn reservations_count_against_the_budget() {
        let mut l = Ledger::default();
        l.spend(Millis(0), 90);
        assert!(l.allows(Millis(0), 100, 0));
        l.reserved = 10;
        assert!(!l.allows(Millis(0), 100, 0));
        assert!(l.allows(Millis(0), 0, 0), "0 means no budget");
    }

    #[test]
    fn memory_is_bounded_to_a_day_of_minutes() {
        let mut l = Ledger::default();
        for m in 0..5 * DAY_MINUTES {
            l.spend(Millis(m * MINUTE), 1);
        }
        assert!(l.minutes.len() as u64 <= DAY_MINUTES);
        assert_eq!(l.day(Millis((5 * DAY_MINUTES - 1) * MINUTE)), DAY_MINUTES);
    }
}
