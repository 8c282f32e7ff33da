//! Timers as state: a table of "wake me at" entries keyed by what they are for.
//!
//! Arming a key replaces its previous deadline (re-arming is idempotent), and the engine
//! asks only for the earliest. A wake-up with nothing due is a no-op, so a spurious
//! `Tick` from the runtime is harmless.

use std::collections::{BTreeMap, BTreeSet};

use crate::contract::RequestId;
use crate::time::Millis;

/// What a timer is for. Channels are identified by their stable slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKey {
    /// The contextual trigger's periodic check.
    Participation(u32),
    /// The next reply may leave the channel's queue.
    SendSpacing(u32),
    /// An LLM request is overdue: give up on it so the channel never stalls.
    LlmDeadline(RequestId),
    /// Lease upkeep (`ha`): renewals, saves, expiry, acquisition attempts.
    Leases,
    /// The next lifecycle heartbeat ([`crate::Effect::Heartbeat`]).
    Heartbeat,
}

/// Deadlines by key, ordered by time.
#[derive(Debug, Default, Clone)]
pub struct Timers {
    by_key: BTreeMap<TimerKey, Millis>,
    by_time: BTreeSet<(Millis, TimerKey)>,
}

impl Timers {
    /// Sets (or moves) the deadline of `key`.
    pub fn arm(&mut self, key: TimerKey, at: Millis) {
        if let Some(old) = self.by_key.insert(key, at) {
            self.by_time.remove(&(old, key));
        }
        self.by_time.insert((at, key));
    }

    /// Removes `key` if armed.
    pub fn disarm(&mut self, key: TimerKey) {
        if let Some(old) = self.by_key.remove(&key) {
            self.by_time.remove(&(old, key));
        }
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Millis> {
        self.by_time.first().map(|(t, _)| *t)
    }

    /// Removes and returns the earliest timer due at or before `now`.
    pub fn pop_due(&mut self, now: Millis) -> Option<(Millis, TimerKey)> {
        let &(at, key) = self.by_time.first()?;
        if at > now {
            return None;
        }
        self.by_time.pop_first();
        self.by_key.remove(&key);
        Some((at, key))
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True when no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rearming_moves_a_timer_instead_of_adding_one() {
        let mut t = Timers::default();
        t.arm(TimerKey::SendSpacing(1), Millis(50));
        t.arm(TimerKey::SendSpacing(1), Millis(10));
        assert_eq!(t.len(), 1);
        assert_eq!(t.next(), Some(Millis(10)));
    }

    #[test]
    fn due_timers_pop_in_time_order_and_future_ones_stay() {
        let mut t = Timers::default();
        t.arm(TimerKey::Participation(2), Millis(30));
        t.arm(TimerKey::SendSpacing(1), Millis(20));
        t.arm(TimerKey::LlmDeadline(RequestId(7)), Millis(99));
        assert_eq!(t.pop_due(Millis(35)), Some((Millis(20), TimerKey::SendSpacing(1))));
        assert_eq!(t.pop_due(Millis(35)), Some((Millis(30), TimerKey::Participation(2))));
        assert_eq!(t.pop_due(Millis(35)), None);
        assert_eq!(t.next(), Some(Millis(99)));
        t.disarm(TimerKey::LlmDeadline(RequestId(7)));
        assert!(t.is_empty());
    }
}
