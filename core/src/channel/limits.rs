//! A channel's own limit marks: its reply window, replies pending, when it last fired,
//! each trigger's last firing, and the last media comment.
//!
//! A reply is *pending* from the moment its trigger fires until its first message is sent
//! or it is dropped. Windows record the send time. A trigger may fire only if
//! `sent in window + pending < max`, which guarantees that no window ever contains more
//! than `max` sends, however late the LLM answers. Per-user state is `users.rs`'s;
//! budgets are `budget.rs`'s.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{LimitsConfig, WindowConfig};
use crate::contract::Reason;
use crate::limit::{cooled_down, SlidingWindow};
use crate::time::Millis;
use crate::trigger::Trigger;

/// The channel-wide marks.
#[derive(Debug, Clone, Default)]
pub(super) struct Marks {
    pub window: SlidingWindow,
    pub pending: usize,
    /// When a reply last fired (a participation question does not count).
    pub last_fire: Option<Millis>,
    pub trigger_last: BTreeMap<Trigger, Millis>,
    pub last_media_comment: Option<Millis>,
}

impl Marks {
    /// The trigger's own cooldown and the media-change cooldown.
    pub fn trigger_allows(
        &self,
        trigger: Trigger,
        cooldown: Duration,
        lim: &LimitsConfig,
        now: Millis,
    ) -> Result<(), Reason> {
        if !cooled_down(self.trigger_last.get(&trigger).copied(), cooldown, now) {
            return Err(Reason::TriggerCooldown);
        }
        if trigger == Trigger::MediaChange && !cooled_down(self.last_media_comment, lim.media_change_cooldown, now) {
            return Err(Reason::MediaChangeCooldown);
        }
        Ok(())
    }

    /// The channel window (pending replies included) and, except for PMs (private: the
    /// room's pacing does not apply), the global cooldown since the last fire or send.
    pub fn channel_allows(
        &mut self,
        trigger: Trigger,
        last_send: Option<Millis>,
        lim: &LimitsConfig,
        now: Millis,
    ) -> Result<(), Reason> {
        if !self.window.allows(now, lim.per_channel, self.pending) {
            return Err(Reason::PerChannelLimit);
        }
        if trigger != Trigger::Pm && !cooled_down(self.last_fire.max(last_send), lim.global_cooldown, now) {
            return Err(Reason::GlobalCooldown);
        }
        Ok(())
    }

    /// A trigger fired at `now`; `reply` unless it only asks the participation question.
    pub fn fired(&mut self, trigger: Trigger, reply: bool, now: Millis) {
        self.trigger_last.insert(trigger, now);
        if trigger == Trigger::MediaChange {
            self.last_media_comment = Some(now);
        }
        if reply {
            self.last_fire = Some(now);
        }
    }

    /// A reply is pending.
    pub fn reserve(&mut self) {
        self.pending += 1;
    }

    /// A reply stopped pending; `sent_at` records it in the window.
    pub fn settle(&mut self, sent_at: Option<Millis>, cfg: WindowConfig) {
        self.pending = self.pending.saturating_sub(1);
        if let Some(t) = sent_at {
            self.window.record(t, cfg);
        }
    }
}
