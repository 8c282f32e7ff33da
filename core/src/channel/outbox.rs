//! The queue of messages waiting for their send slot, and the spacing between sends.
//!
//! CyTube's flood control silently drops lines that come too fast from a non-moderator,
//! so a message that is merely early waits here; it is never dropped for being early.
//! The queue is bounded by `nats.outbound_queue` (oldest dropped first, by the channel,
//! with a reason). It decides nothing about whether a reply should be said at all.

use std::collections::VecDeque;
use std::time::Duration;

use crate::contract::{Command, Reason};
use crate::time::Millis;
use crate::trigger::Trigger;

/// One message waiting to be published.
#[derive(Debug, Clone)]
pub(super) struct Outgoing {
    pub command: Command,
    pub trigger: Trigger,
    /// Lower-cased user whose per-user limit the reply counts against.
    pub user: Option<String>,
    /// The first message of a reply settles its limit accounting when sent.
    pub first: bool,
    /// An answer to a moderator's command: counts against no limit.
    pub notice: bool,
    /// `fallback` for an operator's fallback line.
    pub reason: Option<Reason>,
}

/// Messages in send order, and when the last one left.
#[derive(Debug, Clone, Default)]
pub(super) struct Outbox {
    queue: VecDeque<Outgoing>,
    /// When the channel last published a message.
    pub last_send: Option<Millis>,
}

/// Why [`Outbox::next_ready`] gave nothing.
pub(super) enum NotReady {
    /// The queue is empty.
    Empty,
    /// The next message may leave at this time.
    Until(Millis),
}

impl Outbox {
    /// Queues a message; returns the oldest ones beyond `cap`, which the caller drops.
    pub fn push(&mut self, o: Outgoing, cap: usize) -> Vec<Outgoing> {
        self.queue.push_back(o);
        let over = self.queue.len().saturating_sub(cap.max(1));
        self.queue.drain(..over).collect()
    }

    /// The next message, if `spacing` since the last send has passed at `now`; taking it
    /// counts as sending it now.
    pub fn next_ready(&mut self, now: Millis, spacing: Duration) -> Result<Outgoing, NotReady> {
        if self.queue.is_empty() {
            return Err(NotReady::Empty);
        }
        let ready_at = self.last_send.map_or(now, |t| t.after(spacing));
        if ready_at > now {
            return Err(NotReady::Until(ready_at));
        }
        let out = self.queue.pop_front().ok_or(NotReady::Empty)?;
        self.last_send = Some(now);
        Ok(out)
    }

    /// Empties the queue (mute, lost lease, removed channel): the caller drops each.
    pub fn take_all(&mut self) -> VecDeque<Outgoing> {
        std::mem::take(&mut self.queue)
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::CommandKind;

    fn msg(text: &str) -> Outgoing {
        Outgoing {
            command: Command {
                channel: "lounge".into(),
                kind: CommandKind::Say { text: text.into() },
                correlation_id: None,
                cause: None,
            },
            trigger: Trigger::Mention,
            user: None,
            first: true,
            notice: false,
            reason: None,
        }
    }

    #[test]
    fn an_early_message_waits_for_its_slot_and_is_not_dropped() {
        let mut out = Outbox::default();
        let spacing = Duration::from_secs(1);
        assert!(out.push(msg("a"), 10).is_empty());
        assert!(out.push(msg("b"), 10).is_empty());
        assert!(out.next_ready(Millis(1_000), spacing).is_ok());
        assert!(matches!(out.next_ready(Millis(1_500), spacing), Err(NotReady::Until(Millis(2_000)))));
        assert_eq!(out.len(), 1);
        assert_eq!(
            out.next_ready(Millis(2_000), spacing).map(|o| o.command.kind.text().to_owned()).ok(),
            Some("b".into())
        );
        assert!(matches!(out.next_ready(Millis(9_000), spacing), Err(NotReady::Empty)));
    }

    #[test]
    fn a_full_queue_gives_back_its_oldest_messages() {
        let mut out = Outbox::default();
        for t in ["a", "b"] {
            assert!(out.push(msg(t), 2).is_empty());
        }
        let dropped = out.push(msg("c"), 2);
        assert_eq!(dropped.iter().map(|o| o.command.kind.text()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(out.len(), 2);
    }
}
