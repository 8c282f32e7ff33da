//! What a channel hands to the next lease owner (`ha`), and how it takes over from one.
//!
//! The owner keeps the correlation ids it answered and a fingerprint of each line it said;
//! a standby logs the bot's lines as CyTube echoes them. A snapshot carries the limit
//! marks, per-user limits, those lines and ids; a new owner merges the snapshot with what
//! it saw itself, counting a line once whoever reported it. Nothing here decides who owns
//! a channel: that is `lease.rs`.

use std::collections::VecDeque;
use std::time::Duration;

use super::limits::Marks;
use super::seen::Seen;
use super::users::Users;
use crate::config::{LimitsConfig, WindowConfig};
use crate::lease::{LimitSnapshot, UserLimits, SNAPSHOT_USERS, UNSAVED_LINES};
use crate::limit::SlidingWindow;
use crate::time::Millis;
use crate::trigger::Trigger;

/// Correlation ids of the last replies sent, handed to the next lease owner.
const ANSWERED: usize = 64;
/// Lines remembered in `sent_log`.
const SENT_LOG: usize = 256;
/// A saved line and an echoed one this close together, with the same text, are one.
const SAME_LINE: u64 = 2_000;

/// The channel's handover state.
#[derive(Debug, Clone, Default)]
pub(super) struct Handover {
    /// Limit state changed since the engine last looked (for saving it with the lease).
    dirty: bool,
    /// Correlation ids of the last events answered (bounded by `ANSWERED`).
    answered: VecDeque<String>,
    /// The bot's recent lines in this channel, sent here or seen echoed while another
    /// instance held the lease: (time, text fingerprint), bounded by `SENT_LOG`.
    sent_log: VecDeque<(Millis, u64)>,
    /// This instance holds the channel's lease (`ha`): its lines are counted until a
    /// save holds them.
    leased: bool,
    /// Lines said that no answered save holds.
    unsaved: u32,
    /// Saves sent and not answered yet: how many of `unsaved` each one holds.
    saving: VecDeque<u32>,
}

impl Handover {
    /// Limit state changed.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Limit state changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// The lease was gained or lost: nothing unsaved of ours from now on.
    pub fn set_leased(&mut self, leased: bool) {
        self.leased = leased;
        self.unsaved = 0;
        self.saving.clear();
    }

    /// Whether another line may be said now: not while [`UNSAVED_LINES`] lines no save
    /// holds are out.
    pub fn may_say(&self) -> bool {
        !self.leased || self.unsaved < UNSAVED_LINES
    }

    /// A line was said (it counts against the channel's limits).
    pub fn said(&mut self) {
        if self.leased {
            self.unsaved += 1;
        }
        self.dirty = true;
    }

    /// Whether the next save should go at once (the channel waits for it to say more).
    pub fn save_urgent(&self) -> bool {
        !self.may_say()
    }

    /// A save of the state as it is now goes out.
    pub fn saving(&mut self) {
        if self.leased {
            self.saving.push_back(self.unsaved);
        }
    }

    /// The oldest save out was answered: `ok` if it stored the state.
    pub fn saved(&mut self, ok: bool) {
        let Some(held) = self.saving.pop_front() else { return };
        if ok {
            self.unsaved -= held.min(self.unsaved);
            for s in &mut self.saving {
                *s -= held.min(*s);
            }
        }
    }

    /// The event `correlation_id` was answered.
    pub fn answered(&mut self, correlation_id: &str) {
        if self.answered.len() == ANSWERED {
            self.answered.pop_front();
        }
        self.answered.push_back(correlation_id.to_owned());
    }

    /// The bot said `text` at `at` (here, or echoed from another instance).
    pub fn log_sent(&mut self, at: Millis, text: &str) {
        if self.sent_log.len() == SENT_LOG {
            self.sent_log.pop_front();
        }
        self.sent_log.push_back((at, crate::lease::fingerprint(text)));
    }

    /// The limit state a new owner needs. Replies in flight count as sent now.
    pub fn snapshot(
        &self,
        marks: &mut Marks,
        last_send: Option<Millis>,
        users: &mut Users,
        lim: &LimitsConfig,
        now: Millis,
    ) -> LimitSnapshot {
        let sends: Vec<u64> = marks.window.times(now, lim.per_channel.window).map(|t| t.0).collect();
        let horizon = now.before(lim.per_channel.window);
        let lines = self.sent_log.iter().filter(|(t, _)| *t > horizon).map(|(t, h)| (t.0, *h)).collect();
        let mut saved: Vec<UserLimits> = users
            .iter_mut()
            .filter_map(|(name, st)| {
                let mut sends: Vec<u64> = st.window.times(now, lim.per_user.window).map(|t| t.0).collect();
                sends.extend(std::iter::repeat_n(now.0, st.pending));
                let live = |t: Option<Millis>| t.filter(|t| *t > now).map(|t| t.0);
                let u = UserLimits {
                    user: name.clone(),
                    sends,
                    penalty_until: live(st.penalty_until),
                    strikes: st.strikes,
                    backoff_until: live(st.backoff_until),
                };
                (!u.sends.is_empty() || u.penalty_until.is_some() || u.backoff_until.is_some()).then_some(u)
            })
            .collect();
        if saved.len() > SNAPSHOT_USERS {
            saved.sort_by_key(|u| std::cmp::Reverse(u.sends.iter().max().copied()));
            saved.truncate(SNAPSHOT_USERS);
        }
        LimitSnapshot {
            at: now.0,
            sends,
            last_send: last_send.map(|t| t.0),
            last_fire: marks.last_fire.map(|t| t.0),
            last_media_comment: marks.last_media_comment.map(|t| t.0),
            triggers: marks.trigger_last.iter().map(|(t, at)| (trigger_key(*t), at.0)).collect(),
            users: saved,
            answered: self.answered.iter().cloned().collect(),
            lines,
            in_flight: marks.pending as u32,
            released: false,
        }
    }

    /// Merges a previous owner's state: the later of every mark, and the union of send
    /// times where a send this instance saw echoed close to a saved one counts once.
    pub fn restore(
        &mut self,
        s: &LimitSnapshot,
        marks: &mut Marks,
        last_send: &mut Option<Millis>,
        users: &mut Users,
        seen: &mut Seen,
        lim: &LimitsConfig,
    ) {
        // An event the previous owner answered is never answered again, even if it
        // reaches this instance only now.
        for cid in &s.answered {
            seen.mark_answered(cid);
        }
        let max = |a: Option<Millis>, b: Option<u64>| a.max(b.map(Millis));
        *last_send = max(*last_send, s.last_send);
        marks.last_fire = max(marks.last_fire, s.last_fire);
        marks.last_media_comment = max(marks.last_media_comment, s.last_media_comment);
        for (k, at) in &s.triggers {
            if let Some(t) = parse_trigger_key(k) {
                let e = marks.trigger_last.entry(t).or_insert(Millis(*at));
                *e = (*e).max(Millis(*at));
            }
        }
        // The channel window: the saved sends, plus the lines this instance logged that
        // the saved state does not know (an echo of a send the old owner never saved).
        // A reply that was in flight at `at` counts once: by its echo if this instance
        // saw one after `at`, else as sent at `at`.
        let extra = unmatched_lines(&self.sent_log, &s.lines);
        let echoed_later = extra.iter().filter(|(t, _)| *t >= Millis(s.at).before(Duration::from_secs(1))).count();
        let unseen = (s.in_flight as usize).saturating_sub(echoed_later);
        let mut times: Vec<u64> = s.sends.clone();
        times.extend(extra.iter().map(|(t, _)| t.0));
        times.extend(std::iter::repeat_n(s.at, unseen));
        marks.window = window_of(times, lim.per_channel);
        let mut log: Vec<(Millis, u64)> = s.lines.iter().map(|&(t, h)| (Millis(t), h)).chain(extra).collect();
        log.sort_unstable();
        self.sent_log = log.into_iter().rev().take(SENT_LOG).rev().collect();
        for u in &s.users {
            let st = users.entry(&u.user);
            // Same clock or not, a time seen twice is one send.
            let mut times: Vec<u64> = st.window.all().map(|t| t.0).chain(u.sends.iter().copied()).collect();
            times.sort_unstable();
            times.dedup();
            st.window = window_of(times, lim.per_user);
            st.penalty_until = max(st.penalty_until, u.penalty_until);
            st.backoff_until = max(st.backoff_until, u.backoff_until);
            st.strikes = st.strikes.max(u.strikes);
        }
    }
}

/// A successor that could not see the room at some time after a crashed owner's last
/// save, the latest such time being `at`: the owner may have said there what it did not
/// save, which is at most [`UNSAVED_LINES`] lines. It assumes the most the owner could
/// have sent, as late as it could have gone unseen.
pub(super) fn assume_unseen_sends(
    marks: &mut Marks,
    last_send: &mut Option<Millis>,
    at: Millis,
    lim: &LimitsConfig,
    now: Millis,
) {
    let used = marks.window.count(now.max(at), lim.per_channel.window) as u64;
    let room = u64::from(lim.per_channel.max).saturating_sub(used);
    for _ in 0..room.min(u64::from(UNSAVED_LINES)) {
        marks.window.record(at, lim.per_channel);
    }
    *last_send = (*last_send).max(Some(at));
}

/// The lines of `ours` that are not in `saved`: a saved line accounts for at most one
/// of ours with the same text fingerprint within `SAME_LINE` of it (clocks and delivery
/// differ a little; the same text may well be said twice, e.g. a fallback line).
fn unmatched_lines(ours: &VecDeque<(Millis, u64)>, saved: &[(u64, u64)]) -> Vec<(Millis, u64)> {
    let mut used = vec![false; saved.len()];
    let mut extra = Vec::new();
    for &(t, h) in ours {
        let twin = saved
            .iter()
            .enumerate()
            .filter(|(i, (st, sh))| !used[*i] && *sh == h && st.abs_diff(t.0) <= SAME_LINE)
            .min_by_key(|(_, (st, _))| st.abs_diff(t.0))
            .map(|(i, _)| i);
        match twin {
            Some(i) => used[i] = true,
            None => extra.push((t, h)),
        }
    }
    extra
}

/// A window holding `times` (the latest `max` of them).
fn window_of(mut times: Vec<u64>, cfg: WindowConfig) -> SlidingWindow {
    times.sort_unstable();
    let mut w = SlidingWindow::default();
    for t in times {
        w.record(Millis(t), cfg);
    }
    w
}

/// A trigger's name in a [`LimitSnapshot`].
fn trigger_key(t: Trigger) -> String {
    match t {
        Trigger::Keyword(k) => format!("keyword:{k}"),
        other => other.label().to_owned(),
    }
}

fn parse_trigger_key(s: &str) -> Option<Trigger> {
    Some(match s {
        "mention" => Trigger::Mention,
        "pm" => Trigger::Pm,
        "media_change" => Trigger::MediaChange,
        "contextual" => Trigger::Contextual,
        _ => Trigger::Keyword(s.strip_prefix("keyword:")?.parse().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_keys_round_trip() {
        for t in [Trigger::Mention, Trigger::Pm, Trigger::MediaChange, Trigger::Contextual, Trigger::Keyword(3)] {
            assert_eq!(parse_trigger_key(&trigger_key(t)), Some(t));
        }
        assert_eq!(parse_trigger_key("keyword:x"), None);
    }

    #[test]
    fn an_echo_matches_at_most_one_saved_line_of_the_same_text_nearby() {
        let h = crate::lease::fingerprint("hello");
        let ours: VecDeque<(Millis, u64)> = [(Millis(10_000), h), (Millis(10_500), h), (Millis(30_000), h)].into();
        let saved = [(10_200, h)];
        assert_eq!(unmatched_lines(&ours, &saved), vec![(Millis(10_500), h), (Millis(30_000), h)]);
    }
}
