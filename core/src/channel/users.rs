//! What a channel remembers about each user: their reply window and replies pending, the
//! loop guard (quick back-and-forth with the bot) and penalties (a user who keeps hitting
//! limits).
//!
//! Users are keyed by lower-cased name. The map is pruned of users whom nothing affects
//! any more, amortised (it is scanned only when it has doubled since the last pruning), so
//! a room with thousands of active users is not scanned per reply. It decides only about
//! one user at a time; channel-wide limits are the channel's.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{LoopGuardConfig, PenaltyConfig, WindowConfig};
use crate::contract::Reason;
use crate::limit::SlidingWindow;
use crate::time::Millis;

/// Prune when the map grows past this (at least).
const USER_PRUNE_THRESHOLD: usize = 1024;
/// The longest loop-guard backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(86_400);

/// One user's state.
#[derive(Debug, Clone, Default)]
pub(super) struct UserState {
    pub window: SlidingWindow,
    pub pending: usize,
    /// When the bot last sent a reply to this user (loop guard).
    last_reply_at: Option<Millis>,
    /// Their first line after that reply has been judged (later ones do not answer it).
    judged: bool,
    /// Consecutive quick exchanges with this user.
    exchanges: u32,
    /// Loops detected with this user; each doubles the next backoff.
    loops: u32,
    /// Loop-guard backoff end.
    pub backoff_until: Option<Millis>,
    /// Limit hits; each doubles the next penalty.
    pub strikes: u32,
    /// Time of the last strike.
    last_strike: Option<Millis>,
    /// Penalty end.
    pub penalty_until: Option<Millis>,
}

impl UserState {
    /// Worth keeping: something about this user still affects decisions at `now`.
    fn is_live(&mut self, now: Millis, window: Duration, guard_window: Duration) -> bool {
        self.pending > 0
            || !self.window.is_idle(now, window)
            || self.backoff_until.is_some_and(|t| t > now)
            || self.penalty_until.is_some_and(|t| t > now)
            || self.last_reply_at.is_some_and(|t| now < t.after(guard_window))
            || self.loops > 0
            || self.strikes > 0
    }
}

/// Every user a channel keeps state for.
#[derive(Debug, Clone)]
pub(super) struct Users {
    by_name: BTreeMap<String, UserState>,
    /// Prune when `by_name` grows past this: twice what the last pruning kept (at least
    /// `USER_PRUNE_THRESHOLD`).
    prune_at: usize,
}

impl Default for Users {
    fn default() -> Users {
        Users { by_name: BTreeMap::new(), prune_at: USER_PRUNE_THRESHOLD }
    }
}

/// `base · 2^(n-1)`, at most `max`.
fn doubling(base: Duration, n: u32, max: Duration) -> Duration {
    base.saturating_mul(1u32 << n.saturating_sub(1).min(20)).min(max)
}

impl Users {
    /// The state of `user_lc` (lower-cased), created empty.
    pub fn entry(&mut self, user_lc: &str) -> &mut UserState {
        if !self.by_name.contains_key(user_lc) {
            self.by_name.insert(user_lc.to_owned(), UserState::default());
        }
        self.by_name.get_mut(user_lc).expect("inserted above")
    }

    /// Every user, by lower-cased name.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut UserState)> {
        self.by_name.iter_mut()
    }

    /// Whether `user` is serving a penalty at `now` (which counts as one more strike).
    pub fn penalised(&mut self, user: &str, now: Millis, p: PenaltyConfig) -> bool {
        let lc = user.to_lowercase();
        let penalised = self.by_name.get(&lc).and_then(|u| u.penalty_until).is_some_and(|t| t > now);
        if penalised {
            self.strike(&lc, now, p);
        }
        penalised
    }

    /// The bot just sent a reply to `user_lc`: their next line answers it.
    pub fn replied(&mut self, user_lc: &str, now: Millis) {
        let st = self.entry(user_lc);
        st.last_reply_at = Some(now);
        st.judged = false;
    }

    /// Whether one more reply to `user` fits their window, counting pending ones.
    pub fn allows(&mut self, user: &str, now: Millis, cfg: WindowConfig) -> bool {
        self.by_name.get_mut(&user.to_lowercase()).is_none_or(|s| s.window.allows(now, cfg, s.pending))
    }

    /// Detects a bot loop with `user`: `max_exchanges` bot-like exchanges in a row. A
    /// line is bot-like when it answers our reply to them (within `window`) faster than a
    /// person does: sooner than `quick_reply`, or `line_chars` typed faster than
    /// `typing_speed`; or when it copies one of our recent lines (`copies_us`, whenever
    /// it comes). Any
    /// human-paced line ends the streak. Then backs off from them, twice as long for each
    /// further loop.
    pub fn loop_guard(
        &mut self,
        user: &str,
        copies_us: bool,
        line_chars: usize,
        now: Millis,
        g: LoopGuardConfig,
    ) -> Result<(), Reason> {
        let st = self.entry(&user.to_lowercase());
        if st.backoff_until.is_some_and(|t| now < t) {
            return Err(Reason::LoopGuard);
        }
        // Only their first line after our reply answers it; later ones neither count nor
        // end the streak (a person or a bot repeating themselves meets the per-user limit).
        let answer = st.last_reply_at.filter(|_| !st.judged).map(|t| now.since(t)).filter(|d| *d < g.window);
        st.judged = true;
        let quick = |d: Duration| d < g.quick_reply || line_chars as f64 > d.as_secs_f64() * f64::from(g.typing_speed);
        if copies_us || answer.is_some_and(quick) {
            st.exchanges += 1;
        } else if answer.is_some() || st.last_reply_at.is_none_or(|t| now.since(t) >= g.window) {
            st.exchanges = 0;
            // A calm spell as long as the last backoff forgives earlier loops.
            if st.backoff_until.is_some_and(|t| now >= t.after(doubling(g.backoff, st.loops, MAX_BACKOFF))) {
                st.loops = 0;
            }
        }
        if st.exchanges >= g.max_exchanges {
            st.loops += 1;
            st.exchanges = 0;
            st.backoff_until = Some(now.after(doubling(g.backoff, st.loops, MAX_BACKOFF)));
            return Err(Reason::LoopGuard);
        }
        Ok(())
    }

    /// Counts a limit hit against `user` and (re)starts their penalty: `base`, doubling
    /// per strike up to `max`; strikes are forgotten after twice the current penalty
    /// without one.
    pub fn strike(&mut self, user: &str, now: Millis, p: PenaltyConfig) {
        if p.base.is_zero() {
            return;
        }
        let st = self.entry(&user.to_lowercase());
        let current = doubling(p.base, st.strikes, p.max);
        if st.last_strike.is_some_and(|t| now >= t.after(current.saturating_mul(2))) {
            st.strikes = 0;
        }
        st.strikes += 1;
        st.last_strike = Some(now);
        st.penalty_until = Some(now.after(doubling(p.base, st.strikes, p.max)));
    }

    /// A reply to `user_lc` is pending.
    pub fn reserve(&mut self, user_lc: &str) {
        self.entry(user_lc).pending += 1;
    }

    /// A reply to `user_lc` stopped pending; `sent_at` records it in their window.
    pub fn settle(&mut self, user_lc: &str, sent_at: Option<Millis>, cfg: WindowConfig) {
        let state = self.entry(user_lc);
        state.pending = state.pending.saturating_sub(1);
        if let Some(t) = sent_at {
            state.window.record(t, cfg);
        }
    }

    /// Forgets users whom nothing affects at `now`, once the map has doubled.
    pub fn prune(&mut self, now: Millis, window: Duration, guard_window: Duration) {
        if self.by_name.len() > self.prune_at {
            self.by_name.retain(|_, s| s.is_live(now, window, guard_window));
            self.prune_at = (self.by_name.len() * 2).max(USER_PRUNE_THRESHOLD);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUARD: LoopGuardConfig = LoopGuardConfig {
        max_exchanges: 3,
        window: Duration::from_secs(120),
        backoff: Duration::from_secs(300),
        quick_reply: Duration::from_secs(6),
        typing_speed: 15,
    };
    const PENALTY: PenaltyConfig = PenaltyConfig { base: Duration::from_secs(30), max: Duration::from_secs(1800) };

    #[test]
    fn quick_answers_to_our_replies_trip_the_loop_guard_and_back_off_doubling() {
        let mut users = Users::default();
        let mut now = Millis(1_000_000);
        let mut outcomes = Vec::new();
        for _ in 0..4 {
            users.replied("bot2", now);
            now = now.after(Duration::from_secs(2));
            outcomes.push(users.loop_guard("Bot2", false, 40, now, GUARD));
        }
        assert_eq!(outcomes, [Ok(()), Ok(()), Err(Reason::LoopGuard), Err(Reason::LoopGuard)]);
        let first_end = users.entry("bot2").backoff_until.unwrap();
        assert_eq!(first_end, Millis(1_000_000).after(Duration::from_secs(6 + 300)));
    }

    #[test]
    fn a_person_answering_at_human_pace_is_never_a_loop() {
        let mut users = Users::default();
        let mut now = Millis(1_000_000);
        for (i, wait) in [8u64, 25, 9, 40, 12, 8, 30, 8, 8, 8].into_iter().enumerate() {
            users.replied("alice", now);
            now = now.after(Duration::from_secs(wait));
            assert_eq!(users.loop_guard("alice", false, 60, now, GUARD), Ok(()), "turn {i}");
        }
    }

    #[test]
    fn fast_long_lines_and_copies_are_bot_like_even_when_slower_than_quick_reply() {
        let mut users = Users::default();
        let mut now = Millis(1_000_000);
        let mut out = Vec::new();
        for (chars, copies) in [(200, false), (30, true), (200, false)] {
            users.replied("bot2", now);
            now = now.after(Duration::from_secs(10));
            out.push(users.loop_guard("bot2", copies, chars, now, GUARD));
        }
        assert_eq!(out, [Ok(()), Ok(()), Err(Reason::LoopGuard)], "200 characters in 10 s is 20 per second");
        // A human-paced line in between ends the streak.
        let mut users = Users::default();
        for (wait, chars) in [(2u64, 40), (2, 40), (20, 40), (2, 40), (2, 40)] {
            users.replied("x", now);
            now = now.after(Duration::from_secs(wait));
            assert_eq!(users.loop_guard("x", false, chars, now, GUARD), Ok(()));
        }
    }

    #[test]
    fn only_the_first_line_after_a_reply_answers_it() {
        let mut users = Users::default();
        let mut now = Millis(1_000_000);
        let mut out = Vec::new();
        for _ in 0..3 {
            users.replied("chatty", now);
            now = now.after(Duration::from_secs(2));
            out.push(users.loop_guard("chatty", false, 40, now, GUARD));
            // Unanswered repeats (a cooldown held them back) neither count nor end the streak.
            for _ in 0..2 {
                now = now.after(Duration::from_secs(8));
                out.push(users.loop_guard("chatty", false, 40, now, GUARD));
            }
        }
        assert!(out[..6].iter().all(Result::is_ok), "{out:?}");
        assert_eq!(out[6], Err(Reason::LoopGuard), "the third quick answer: {out:?}");
    }

    #[test]
    fn penalties_double_per_strike_up_to_the_maximum() {
        let mut users = Users::default();
        let now = Millis(10_000);
        users.strike("Spammy", now, PENALTY);
        users.strike("spammy", now, PENALTY);
        assert_eq!(users.entry("spammy").penalty_until, Some(now.after(Duration::from_secs(60))));
        assert!(users.penalised("SPAMMY", now.after(Duration::from_secs(1)), PENALTY));
        for _ in 0..10 {
            users.strike("spammy", now, PENALTY);
        }
        assert_eq!(users.entry("spammy").penalty_until, Some(now.after(PENALTY.max)));
    }

    #[test]
    fn pruning_keeps_only_users_who_still_matter() {
        let mut users = Users::default();
        let cfg = WindowConfig { max: 3, window: Duration::from_secs(60) };
        for i in 0..=USER_PRUNE_THRESHOLD {
            users.reserve(&format!("u{i}"));
            users.settle(&format!("u{i}"), Some(Millis(0)), cfg);
        }
        users.reserve("busy");
        users.prune(Millis(3_600_000), cfg.window, GUARD.window);
        assert_eq!(users.by_name.len(), 1);
        assert!(users.by_name.contains_key("busy"));
    }
}
