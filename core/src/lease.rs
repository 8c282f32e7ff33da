//! Channel leases: which instance speaks for a channel when several share the config.
//!
//! This is the decision half of high availability (`ha:`): when to acquire, renew and
//! release a lease, how long one is trusted, and how many one instance holds. The
//! runtime does the key-value operations (JetStream KV, compare-and-set on revisions,
//! keys expiring `lease_ttl` after their last write) and reports each outcome back as an
//! [`LeaseEvent`]; the simulator does the same against a model of the bucket.
//!
//! Safety rests on one rule: a lease is trusted until `sent + ttl - margin`, where `sent`
//! is when *this* instance sent the write that created or renewed it, measured on its own
//! monotonic clock. The server starts the key's `ttl` later than `sent` (the write was in
//! transit), so the holder stops trusting its lease before anyone else can create the key
//! again, whatever the offsets between the machines' clocks. Only clock *rates* matter,
//! and `margin` (a fifth of the TTL) covers drift far beyond real hardware.
//!
//! A second rule covers a clustered bucket, whose compare-and-set is checked against
//! what the stream has applied rather than what it is replicating: a new owner stays
//! silent until a renewal, sent [`Leases::confirm_after`] its create, finds the key
//! still at its revision (see there).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::HaConfig;
use crate::time::Millis;

/// What the runtime (or simulator) reports about the lease bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Our `Acquire` created the key (the previous one had expired or been released).
    /// `state` is the limit state the previous owner saved, if any.
    Acquired {
        /// Channel, as configured.
        channel: String,
        /// The key's new revision.
        revision: u64,
        /// Limit state saved by the previous owner.
        state: Option<LimitSnapshot>,
    },
    /// Our `Renew` succeeded.
    Renewed {
        /// Channel.
        channel: String,
        /// The key's new revision.
        revision: u64,
    },
    /// The key belongs to someone else: `Acquire` found it present, or `Renew` found a
    /// revision other than ours.
    Taken {
        /// Channel.
        channel: String,
    },
    /// The operation did not complete (timeout, NATS down, server error).
    Failed {
        /// Channel.
        channel: String,
    },
    /// Our `Save` stored the state.
    Saved {
        /// Channel.
        channel: String,
    },
    /// Our `Save` did not complete: it is tried again after a backoff (meanwhile the
    /// owner says at most [`UNSAVED_LINES`] lines no save holds).
    SaveFailed {
        /// Channel.
        channel: String,
    },
    /// Our `Release` finished (the key is deleted, the state saved).
    Released {
        /// Channel.
        channel: String,
    },
    /// The bucket watch saw a lease written by `owner`: just now (`fresh`), or at some
    /// time within the last TTL (the bucket's current value, replayed when a watch
    /// starts).
    Seen {
        /// Channel.
        channel: String,
        /// The instance that wrote it.
        owner: String,
        /// The write's revision (an owner ignores writes older than its own).
        revision: u64,
        /// Written as it was delivered, not replayed.
        fresh: bool,
    },
    /// The bucket watch saw a lease deleted (released).
    Free {
        /// Channel.
        channel: String,
    },
    /// Another instance announced itself (lifecycle startup/heartbeat) or left (shutdown).
    Peer {
        /// Its instance id.
        instance: String,
        /// False when it announced its shutdown.
        alive: bool,
    },
}

/// A key-value operation for the runtime to perform; it answers with a [`LeaseEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOp {
    /// Create the channel's lease key with our instance id (fails when it exists); then
    /// read the saved limit state and mark it taken: store it again with `released`
    /// false, or an empty one (at now) if there is none. So a state marked released
    /// was the last word of its channel's last owner, and a channel without one has
    /// never had an owner. Answer `Acquired` (with the state as read), `Taken` or
    /// `Failed` (then the key is given back or left to expire).
    Acquire {
        /// Channel, as configured.
        channel: String,
    },
    /// Rewrite the lease key if its revision is still `revision`. Answer `Renewed`,
    /// `Taken` or `Failed`.
    Renew {
        /// Channel.
        channel: String,
        /// The revision we hold.
        revision: u64,
    },
    /// Store the channel's limit state. Answer `Saved` or `SaveFailed`.
    Save {
        /// Channel.
        channel: String,
        /// The state.
        state: LimitSnapshot,
    },
    /// Store the state, then delete the lease key if its revision is still `revision`.
    /// Answer `Released` (or `Failed`).
    Release {
        /// Channel.
        channel: String,
        /// The revision we hold.
        revision: u64,
        /// The state to leave for the next owner.
        state: LimitSnapshot,
    },
}

impl LeaseOp {
    /// `acquire`, `renew`, `save` or `release` (metrics, logs).
    pub fn kind(&self) -> &'static str {
        match self {
            LeaseOp::Acquire { .. } => "acquire",
            LeaseOp::Renew { .. } => "renew",
            LeaseOp::Save { .. } => "save",
            LeaseOp::Release { .. } => "release",
        }
    }

    /// The answer when it did not complete: `SaveFailed` for a `Save`, else `Failed`.
    pub fn failed(&self) -> LeaseEvent {
        let channel = self.channel().to_owned();
        match self {
            LeaseOp::Save { .. } => LeaseEvent::SaveFailed { channel },
            _ => LeaseEvent::Failed { channel },
        }
    }

    /// The channel it is about.
    pub fn channel(&self) -> &str {
        match self {
            LeaseOp::Acquire { channel }
            | LeaseOp::Renew { channel, .. }
            | LeaseOp::Save { channel, .. }
            | LeaseOp::Release { channel, .. } => channel,
        }
    }
}

/// The rate-limit state a new owner starts from: recent send times and cooldown marks,
/// in epoch milliseconds of the writer's clock. Replies still being generated count as
/// sent (at `at`, unless the new owner saw them echoed), so a takeover can only
/// over-count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitSnapshot {
    /// When it was taken.
    pub at: u64,
    /// Send times inside the per-channel window.
    pub sends: Vec<u64>,
    /// The last message sent (global cooldown).
    pub last_send: Option<u64>,
    /// The last reply fired (global cooldown).
    pub last_fire: Option<u64>,
    /// The last media comment (media cooldown).
    pub last_media_comment: Option<u64>,
    /// Each trigger's last firing: `mention`, `pm`, `media_change`, `contextual`,
    /// `keyword:N`.
    pub triggers: Vec<(String, u64)>,
    /// Users with live limits.
    pub users: Vec<UserLimits>,
    /// Correlation ids of the last events answered: the next owner never answers them
    /// again, even when they reach it late.
    #[serde(default)]
    pub answered: Vec<String>,
    /// The bot's lines inside the per-channel window: (time, [`fingerprint`] of the
    /// text). A new owner recognises its own echo of each by the fingerprint.
    #[serde(default)]
    pub lines: Vec<(u64, u64)>,
    /// Replies being generated at `at` (each may be sent later).
    #[serde(default)]
    pub in_flight: u32,
    /// Written by a graceful release (complete), not by the periodic save of an owner
    /// that may have gone on sending for up to a second before it crashed or was cut off.
    #[serde(default)]
    pub released: bool,
}

impl LimitSnapshot {
    /// What an `Acquire` stores to mark the state `read` taken (see [`LeaseOp::Acquire`]):
    /// the same, no longer released; empty at `now` if there was none; nothing to store
    /// if it is already unreleased.
    pub fn taken(read: Option<&LimitSnapshot>, now: u64) -> Option<LimitSnapshot> {
        match read {
            Some(s) if !s.released => None,
            Some(s) => Some(LimitSnapshot { released: false, ..s.clone() }),
            None => Some(LimitSnapshot { at: now, ..LimitSnapshot::default() }),
        }
    }
}

/// A fingerprint of a line's text (FNV-1a: the same in every build of every instance).
pub fn fingerprint(text: &str) -> u64 {
    fnv(text.bytes())
}

fn fnv(bytes: impl Iterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// One user's part of a [`LimitSnapshot`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserLimits {
    /// Lower-cased user name.
    pub user: String,
    /// Send times inside the per-user window.
    pub sends: Vec<u64>,
    /// Personal cooldown end (penalty).
    pub penalty_until: Option<u64>,
    /// Strikes counted towards the penalty.
    pub strikes: u32,
    /// Loop-guard backoff end.
    pub backoff_until: Option<u64>,
}

/// Most users a snapshot carries (the ones with the latest sends).
pub const SNAPSHOT_USERS: usize = 500;

/// How an instance stands towards one channel's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Not ours. Try to acquire at `next_try` (if under the cap).
    Standby { owner: Option<String>, next_try: Millis },
    /// An `Acquire` is out, sent at `sent`.
    Acquiring { sent: Millis },
    /// Our `Acquire` created the key, but a clustered bucket's compare-and-set is not
    /// atomic (see [`Leases::confirm_after`]): silent until a `Renew`, sent at
    /// `confirm_at` or later, finds the key still ours. `state` is what the acquire read.
    Confirming {
        revision: u64,
        valid_until: Millis,
        confirm_at: Millis,
        renewing: Option<Millis>,
        state: Option<LimitSnapshot>,
    },
    /// Ours until `valid_until`.
    Owned { revision: u64, valid_until: Millis, next_renew: Millis, renewing: Option<Millis> },
    /// A `Release` is out, sent at `sent`.
    Releasing { sent: Millis },
}

#[derive(Debug, Clone)]
struct Lease {
    name: String,
    state: State,
    /// Limit state changed since the last save.
    /// Limit state changed since the last save was sent.
    dirty: bool,
    /// The earliest the next save may go (once a second; later after a failure; at once
    /// when the channel has said [`UNSAVED_LINES`] lines no save holds).
    next_save: Millis,
    /// The last owner seen other than us (a later acquisition is a takeover).
    other_owner_seen: bool,
    /// The last time the channel was known to have an owner, here or elsewhere (or when
    /// this instance started looking).
    owner_at: Millis,
    /// Its next acquire or renewal waits because the bucket failed: due at once when
    /// the bucket answers again.
    backing_off: bool,
}

/// Most lines an owner says that no answered save holds: more wait in the outbox until
/// a save is answered (one is sent at once). So a successor that could not see the room
/// for a while misses at most this many lines of a crashed owner's.
pub const UNSAVED_LINES: u32 = 3;

/// What changed for a channel, for the engine to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Now ours: restore limits from the state (if any) and start answering.
    Gained(String, Option<LimitSnapshot>),
    /// No longer ours: stop answering, drop queued replies.
    Lost(String),
}

/// An operation the engine must complete with the channel's limit state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// Emit [`LeaseOp::Acquire`].
    Acquire(String),
    /// Emit [`LeaseOp::Renew`].
    Renew(String, u64),
    /// Emit [`LeaseOp::Save`] with the channel's snapshot.
    Save(String),
    /// Emit [`LeaseOp::Release`] with the channel's snapshot.
    Release(String, u64),
}

/// Counters for /health and /metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseStats {
    /// Leases held now.
    pub owned: usize,
    /// Successful renewals.
    pub renewals: u64,
    /// Leases acquired that another instance held before.
    pub takeovers: u64,
    /// Leases acquired in all.
    pub acquired: u64,
    /// Leases lost without releasing them (expired locally or taken).
    pub lost: u64,
    /// Instances alive, this one included.
    pub live_instances: usize,
    /// Lease operations that failed in a row (the bucket did not answer), across channels.
    pub failing: u32,
}

/// Every channel's lease as this instance sees it.
#[derive(Debug, Clone)]
pub struct Leases {
    me: String,
    ttl: Duration,
    leases: BTreeMap<String, Lease>,
    /// Other instances by id → last time heard from.
    peers: BTreeMap<String, Millis>,
    stats: LeaseStats,
    shutting_down: bool,
    /// While `stats.failing > 0`: when the next acquire may probe the bucket.
    next_probe: Millis,
}

fn key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// A stable per-(instance, channel) rank, so instances prefer different channels when
/// they shed load (FNV-1a: fixed across builds and platforms, unlike `DefaultHasher`).
fn rank(me: &str, channel: &str) -> u64 {
    fnv(me.bytes().chain([0]).chain(channel.bytes()))
}

impl Leases {
    /// No lease held yet; every channel will be tried at once.
    pub fn new(cfg: &HaConfig) -> Leases {
        Leases {
            me: cfg.instance.clone(),
            ttl: cfg.lease_ttl,
            leases: BTreeMap::new(),
            peers: BTreeMap::new(),
            stats: LeaseStats::default(),
            shutting_down: false,
            next_probe: Millis(0),
        }
    }

    /// How often an owned lease is renewed (a third of the TTL).
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    fn margin(&self) -> Duration {
        self.ttl / 5
    }

    /// How long after creating a key an instance waits before confirming it with a
    /// renewal (a tenth of the TTL, 100 ms to 1 s). On a clustered stream the server
    /// checks a write's expected revision against what it has *applied*, not against
    /// writes still being replicated (nats-server issues 4320 and 8469, worst right
    /// after a leader election): two creates a moment apart can both succeed, and the
    /// later one wins the key. Every write proposed before ours was applied is applied
    /// within the cluster's commit latency, so after this wait a renewal on our revision
    /// succeeds only if no such write landed after ours.
    pub fn confirm_after(&self) -> Duration {
        (self.ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    fn retry(&self) -> Duration {
        self.renew_every().min(Duration::from_secs(1))
    }

    /// The wait after the `n`th failure in a row: 200 ms doubling up to [`retry`].
    /// While the bucket fails, only one acquire goes out per wait (a probe) and owned
    /// leases retry their renewal at this pace, so a bucket without a leader costs about
    /// one failure a second per instance and channel held, not a spin.
    ///
    /// [`retry`]: Leases::retry
    fn backoff(&self, n: u32) -> Duration {
        (Duration::from_millis(200) * 2u32.saturating_pow(n.saturating_sub(1).min(16))).min(self.retry())
    }

    /// The bucket answered (an operation completed either way, or the watch delivered):
    /// after failures, everything that waited for it is due now.
    fn bucket_answered(&mut self, now: Millis) {
        if self.stats.failing == 0 {
            return;
        }
        self.stats.failing = 0;
        for l in self.leases.values_mut() {
            if std::mem::take(&mut l.backing_off) {
                match &mut l.state {
                    State::Standby { next_try, .. } => *next_try = (*next_try).min(now),
                    // (A failed confirmation was sent after its wait already.)
                    State::Owned { next_renew: due, renewing: None, .. }
                    | State::Confirming { confirm_at: due, renewing: None, .. } => *due = (*due).min(now),
                    _ => {}
                }
            }
        }
    }

    /// Channels that have had no owner anywhere, as far as this instance can tell, for
    /// longer than the TTL: (name, since when).
    pub fn orphans(&self, now: Millis) -> Vec<(String, Millis)> {
        if self.shutting_down {
            return Vec::new();
        }
        self.leases
            .values()
            .filter(|l| !matches!(l.state, State::Owned { valid_until, .. } if now < valid_until))
            .filter(|l| now >= l.owner_at.after(self.ttl))
            .map(|l| (l.name.clone(), l.owner_at))
            .collect()
    }

    /// Makes the set of channels `names` (config order); new ones start in standby and
    /// are tried at once, removed ones are released if held.
    pub fn set_channels(&mut self, names: &[String], now: Millis) -> Vec<Intent> {
        let wanted: BTreeMap<String, &String> = names.iter().map(|n| (key(n), n)).collect();
        let mut out = Vec::new();
        let gone: Vec<String> = self.leases.keys().filter(|k| !wanted.contains_key(*k)).cloned().collect();
        for k in gone {
            if let Some(l) = self.leases.remove(&k) {
                if let State::Owned { revision, .. } = l.state {
                    // Removed by a reload: leave it for nobody; the key expires or is deleted.
                    out.push(Intent::Release(l.name, revision));
                }
            }
        }
        for (k, name) in wanted {
            self.leases.entry(k).or_insert_with(|| Lease {
                name: name.clone(),
                state: State::Standby { owner: None, next_try: now },
                dirty: false,
                next_save: now,
                other_owner_seen: false,
                owner_at: now,
                backing_off: false,
            });
        }
        out
    }

    /// Whether this instance may speak for `channel` at `now`.
    pub fn owns(&self, channel: &str, now: Millis) -> bool {
        matches!(self.leases.get(&key(channel)).map(|l| &l.state),
            Some(State::Owned { valid_until, .. }) if now < *valid_until)
    }

    /// The owner as far as this instance knows: `Some(me)` when held here.
    pub fn owner(&self, channel: &str) -> Option<&str> {
        match &self.leases.get(&key(channel))?.state {
            State::Owned { .. } | State::Releasing { .. } => Some(&self.me),
            State::Standby { owner, .. } => owner.as_deref(),
            State::Acquiring { .. } | State::Confirming { .. } => None,
        }
    }

    /// Counters and gauges.
    pub fn stats(&self, now: Millis) -> LeaseStats {
        LeaseStats {
            owned: self.leases.values().filter(|l| matches!(l.state, State::Owned { .. })).count(),
            live_instances: self.live(now),
            ..self.stats
        }
    }

    fn live(&self, now: Millis) -> usize {
        1 + self.peers.values().filter(|t| now < t.after(self.ttl)).count()
    }

    /// The most leases this instance should hold: `ceil(channels / live) + 1`.
    pub fn cap(&self, now: Millis) -> usize {
        self.leases.len().div_ceil(self.live(now)) + 1
    }

    /// Limit state of `channel` changed (a send, a firing): save it within a second, or
    /// at once if `urgent` (the channel waits for a save to say more).
    pub fn mark_dirty(&mut self, channel: &str, now: Millis, urgent: bool) {
        if let Some(l) = self.leases.get_mut(&key(channel)) {
            if matches!(l.state, State::Owned { .. }) {
                l.dirty = true;
                if urgent {
                    l.next_save = l.next_save.min(now);
                }
            }
        }
    }

    /// Shutdown: release every lease as soon as its channel is idle (`release_idle`),
    /// acquire no more.
    pub fn shut_down(&mut self) {
        self.shutting_down = true;
    }

    /// True when no lease is held or being released (shutdown may complete).
    pub fn all_released(&self) -> bool {
        self.leases.values().all(|l| matches!(l.state, State::Standby { .. }))
    }

    /// Applies an outcome from the bucket.
    pub fn on_event(&mut self, now: Millis, ev: LeaseEvent) -> Vec<Transition> {
        let mut out = Vec::new();
        let (ttl, margin, renew) = (self.ttl, self.margin(), self.renew_every());
        let me = self.me.clone();
        if !matches!(ev, LeaseEvent::Failed { .. } | LeaseEvent::SaveFailed { .. } | LeaseEvent::Peer { .. }) {
            self.bucket_answered(now);
        }
        match ev {
            LeaseEvent::Peer { instance, alive } => {
                if instance != me {
                    if alive {
                        self.peers.insert(instance, now);
                    } else {
                        self.peers.remove(&instance);
                        // The cap just rose and its leases are (being) released: look now.
                        for l in self.leases.values_mut() {
                            if let State::Standby { owner, next_try } = &mut l.state {
                                if owner.is_none() || owner.as_deref() == Some(instance.as_str()) {
                                    *next_try = (*next_try).min(now);
                                }
                            }
                        }
                    }
                }
            }
            LeaseEvent::Acquired { channel, revision, state } => {
                let confirm = self.confirm_after();
                let Some(l) = self.leases.get_mut(&key(&channel)) else { return out };
                if let State::Acquiring { sent } = l.state {
                    l.state = State::Confirming {
                        revision,
                        valid_until: sent.after(ttl.saturating_sub(margin)),
                        confirm_at: now.after(confirm),
                        renewing: None,
                        state,
                    };
                    l.owner_at = now;
                }
            }
            LeaseEvent::Renewed { channel, revision } => {
                let Some(l) = self.leases.get_mut(&key(&channel)) else { return out };
                match &mut l.state {
                    State::Owned { revision: r, valid_until, next_renew, renewing } => {
                        if let Some(sent) = renewing.take() {
                            *r = revision;
                            *valid_until = (*valid_until).max(sent.after(ttl.saturating_sub(margin)));
                            *next_renew = sent.after(renew);
                            self.stats.renewals += 1;
                        }
                    }
                    // Confirmed: ours, and nobody wrote the key after us.
                    State::Confirming { valid_until, renewing: Some(sent), state, .. } => {
                        let (sent, state) = (*sent, state.take());
                        l.state = State::Owned {
                            revision,
                            valid_until: (*valid_until).max(sent.after(ttl.saturating_sub(margin))),
                            next_renew: sent.after(renew),
                            renewing: None,
                        };
                        l.dirty = false;
                        l.next_save = now;
                        l.owner_at = now;
                        self.stats.acquired += 1;
                        if std::mem::take(&mut l.other_owner_seen) {
                            self.stats.takeovers += 1;
                        }
                        out.push(Transition::Gained(l.name.clone(), state));
                    }
                    _ => {}
                }
            }
            LeaseEvent::Taken { channel } => {
                let Some(l) = self.leases.get_mut(&key(&channel)) else { return out };
                // The key exists: someone wrote it within a TTL (the watch may be late).
                l.owner_at = now;
                match l.state {
                    // Another create landed after ours: it was never ours to speak for.
                    State::Acquiring { .. } | State::Confirming { .. } => {
                        l.other_owner_seen = true;
                        l.state = State::Standby { owner: None, next_try: now.after(renew) };
                    }
                    State::Owned { .. } => {
                        self.stats.lost += 1;
                        l.other_owner_seen = true;
                        l.state = State::Standby { owner: None, next_try: now.after(renew) };
                        out.push(Transition::Lost(l.name.clone()));
                    }
                    _ => {}
                }
            }
            LeaseEvent::Failed { channel } => {
                self.stats.failing = self.stats.failing.saturating_add(1);
                let wait = self.backoff(self.stats.failing);
                self.next_probe = now.after(wait);
                let Some(l) = self.leases.get_mut(&key(&channel)) else { return out };
                match &mut l.state {
                    // Again after the backoff: a hiccup retries in 200 ms, a bucket that
                    // keeps failing is probed by one acquire at a time (see `tick`).
                    State::Acquiring { .. } => {
                        l.backing_off = true;
                        l.state = State::Standby { owner: None, next_try: now.after(wait) }
                    }
                    State::Owned { renewing, next_renew: due, .. }
                    | State::Confirming { renewing, confirm_at: due, .. } => {
                        l.backing_off = true;
                        *renewing = None;
                        *due = now.after(wait);
                    }
                    // Could not delete it: it expires by itself.
                    State::Releasing { .. } => l.state = State::Standby { owner: None, next_try: now.after(ttl) },
                    State::Standby { .. } => {}
                }
            }
            // The channel counts its unsaved lines (the engine tells it).
            LeaseEvent::Saved { .. } => {}
            LeaseEvent::SaveFailed { channel } => {
                self.stats.failing = self.stats.failing.saturating_add(1);
                let wait = self.backoff(self.stats.failing);
                let Some(l) = self.leases.get_mut(&key(&channel)) else { return out };
                // Its changes still need saving: again after the backoff.
                if matches!(l.state, State::Owned { .. }) {
                    l.dirty = true;
                    l.next_save = now.after(wait);
                }
            }
            LeaseEvent::Released { channel } => {
                let Some(l) = self.leases.get_mut(&key(&channel)) else { return out };
                if matches!(l.state, State::Releasing { .. }) {
                    // Leave it to the others for a while (balancing, handover).
                    l.state = State::Standby { owner: None, next_try: now.after(ttl) };
                }
            }
            LeaseEvent::Seen { channel, owner, revision, fresh } => {
                let Some(l) = self.leases.get_mut(&key(&channel)) else { return out };
                // A write older than our own (a watch replaying or catching up) says
                // nothing about now.
                let stale = matches!(l.state, State::Owned { revision: ours, .. } | State::Confirming { revision: ours, .. }
                    if revision <= ours);
                if owner != me && !stale {
                    l.other_owner_seen = true;
                    l.owner_at = now;
                    match &mut l.state {
                        State::Standby { owner: o, next_try } => {
                            *o = Some(owner);
                            // It cannot expire before `ttl` after this write.
                            if fresh {
                                *next_try = (*next_try).max(now.after(ttl + Duration::from_millis(100)));
                            }
                        }
                        // Another create landed after ours: it was never ours.
                        State::Confirming { .. } => {
                            l.state = State::Standby { owner: Some(owner), next_try: now.after(ttl) };
                        }
                        // Another instance wrote our key after us: we lost it.
                        State::Owned { .. } => {
                            self.stats.lost += 1;
                            l.state = State::Standby { owner: Some(owner), next_try: now.after(ttl) };
                            out.push(Transition::Lost(l.name.clone()));
                        }
                        _ => {}
                    }
                }
            }
            LeaseEvent::Free { channel } => {
                let Some(l) = self.leases.get_mut(&key(&channel)) else { return out };
                if let State::Standby { owner, next_try } = &mut l.state {
                    *owner = None;
                    *next_try = (*next_try).min(now);
                }
            }
        }
        out
    }

    /// Time passes: leases past their trust expire, renewals and saves fall due, free
    /// channels are tried, surplus is shed. `idle` tells whether a channel has nothing in
    /// flight or queued (only idle channels are given away).
    pub fn tick(&mut self, now: Millis, idle: impl Fn(&str) -> bool) -> (Vec<Transition>, Vec<Intent>) {
        let (mut trans, mut intents) = (Vec::new(), Vec::new());
        let retry = self.retry();
        let cap = self.cap(now);
        let mut held = 0;
        for l in self.leases.values_mut() {
            let confirmed = matches!(l.state, State::Owned { .. });
            if let State::Owned { revision, valid_until, next_renew: due, renewing }
            | State::Confirming { revision, valid_until, confirm_at: due, renewing, .. } = &mut l.state
            {
                if now >= *valid_until {
                    // One never confirmed was never spoken for (the bucket kept failing).
                    if confirmed {
                        self.stats.lost += 1;
                        trans.push(Transition::Lost(l.name.clone()));
                        l.owner_at = *valid_until;
                    }
                    l.state = State::Standby { owner: None, next_try: now.after(retry) };
                    continue;
                }
                l.owner_at = now;
                held += 1;
                // The next renewal, or the one that confirms a new lease.
                if renewing.is_none() && now >= *due {
                    *renewing = Some(now);
                    intents.push(Intent::Renew(l.name.clone(), *revision));
                }
                if confirmed && l.dirty && now >= l.next_save {
                    l.dirty = false;
                    l.next_save = now.after(Duration::from_secs(1));
                    intents.push(Intent::Save(l.name.clone()));
                }
            } else if let State::Acquiring { sent } | State::Releasing { sent } = l.state {
                if now >= sent.after(self.ttl) {
                    // No answer within a TTL (it cannot be ours any more): start over.
                    l.state = State::Standby { owner: None, next_try: now };
                } else if matches!(l.state, State::Acquiring { .. }) {
                    // Leases on their way out do not count: they are going.
                    held += 1;
                }
            }
        }
        if self.shutting_down {
            for l in self.leases.values_mut() {
                if let State::Owned { revision, .. } = l.state {
                    if idle(&l.name) {
                        l.state = State::Releasing { sent: now };
                        trans.push(Transition::Lost(l.name.clone()));
                        intents.push(Intent::Release(l.name.clone(), revision));
                    }
                }
            }
            return (trans, intents);
        }
        if held > cap {
            // Shed the surplus: idle channels with the highest rank first.
            let mut owned: Vec<(u64, String)> = self
                .leases
                .values()
                .filter(|l| matches!(l.state, State::Owned { .. }) && idle(&l.name))
                .map(|l| (rank(&self.me, &l.name), key(&l.name)))
                .collect();
            owned.sort_unstable_by(|a, b| b.cmp(a));
            for (_, k) in owned.into_iter().take(held - cap) {
                if let Some(l) = self.leases.get_mut(&k) {
                    if let State::Owned { revision, .. } = l.state {
                        l.state = State::Releasing { sent: now };
                        // Silent from now on: the key may be someone else's a moment later.
                        trans.push(Transition::Lost(l.name.clone()));
                        intents.push(Intent::Release(l.name.clone(), revision));
                    }
                }
            }
        } else {
            let mut room = cap - held;
            // The bucket is failing: one acquire probes it per backoff, the rest wait for
            // its answer (all due at once when it comes, see `bucket_answered`).
            let probing = self.stats.failing > 0;
            if probing {
                room = if now >= self.next_probe { room.min(1) } else { 0 };
            }
            let wait = self.backoff(self.stats.failing);
            // When the ones not probing look again.
            let resume = if now >= self.next_probe { now.after(wait) } else { self.next_probe };
            let mut due: Vec<(u64, String)> = self
                .leases
                .values()
                .filter(|l| matches!(l.state, State::Standby { next_try, .. } if now >= next_try))
                .map(|l| (rank(&self.me, &l.name), key(&l.name)))
                .collect();
            due.sort_unstable();
            for (_, k) in due {
                let Some(l) = self.leases.get_mut(&k) else { continue };
                if room == 0 && probing {
                    if let State::Standby { next_try, .. } = &mut l.state {
                        *next_try = (*next_try).max(resume);
                        l.backing_off = true;
                    }
                    continue;
                }
                if room == 0 {
                    // At the cap: look again soon (the cap moves as peers come and go;
                    // only free or unknown channels are due, so this is rare and cheap).
                    if let State::Standby { next_try, .. } = &mut l.state {
                        *next_try = now.after(Duration::from_millis(100));
                    }
                    continue;
                }
                l.state = State::Acquiring { sent: now };
                l.backing_off = false;
                intents.push(Intent::Acquire(l.name.clone()));
                room -= 1;
                if probing {
                    self.next_probe = now.after(wait);
                }
            }
        }
        (trans, intents)
    }

    /// When `tick` next has something to do.
    pub fn next_deadline(&self, now: Millis) -> Option<Millis> {
        let mut next: Option<Millis> = None;
        let mut at = |t: Millis| next = Some(next.map_or(t, |n| n.min(t)));
        for l in self.leases.values() {
            match &l.state {
                State::Standby { next_try, .. } if !self.shutting_down => at(*next_try),
                State::Acquiring { sent } | State::Releasing { sent } => at(sent.after(self.ttl)),
                State::Owned { valid_until, next_renew: due, renewing, .. }
                | State::Confirming { valid_until, confirm_at: due, renewing, .. } => {
                    at(*valid_until);
                    if renewing.is_none() {
                        at(*due);
                    }
                    // Saves wait for the confirmation (see `tick`).
                    if l.dirty && matches!(l.state, State::Owned { .. }) {
                        at(l.next_save.max(now));
                    }
                }
                _ => {}
            }
        }
        // Peers expiring change the cap: look again once a renew period.
        if !self.peers.is_empty() && !self.shutting_down {
            at(now.after(self.renew_every()));
        }
        next
    }
}
