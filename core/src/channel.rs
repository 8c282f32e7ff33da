//! One channel's state and decisions: what it remembers, which trigger fires, which limit
//! silences it, and the queue of replies waiting for their send slot.
//!
//! A channel never looks at another channel: its RNG, request ids, limits and timers are
//! its own, which is what makes channel isolation hold (and testable). It never emits an
//! effect except through [`Env`], and never reads time except `env.now`.
//!
//! Limit accounting: a reply is *pending* from the moment its trigger fires until its
//! first message is sent or it is dropped. Windows record the send time. A trigger may
//! fire only if `sent in window + pending < max`, which guarantees that no window ever
//! contains more than `max` sends, however late the LLM answers.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::budget::{self, Ledger};
use crate::config::{BotConfig, ChannelConfig, GlobalBudget, LlmConfig};
use crate::context::{ChatLine, Context};
use crate::contract::{
    Command, CommandKind, Decision, Effect, LlmCall, LlmError, LlmReply, Outcome, PromptMessage, Purpose, Reason,
    RequestId, Role,
};
use crate::event::Message;
use crate::lease::{LimitSnapshot, UserLimits, SNAPSHOT_USERS};
use crate::limit::{cooled_down, SlidingWindow};
use crate::response::{Recent, Rejection, Rules};
use crate::time::Millis;
use crate::timer::{TimerKey, Timers};
use crate::trigger::{Matcher, Trigger};

/// Bounds on per-channel memory (TigerBeetle style: everything has a limit).
const SEEN_EVENTS: usize = 1024;
const MAX_PM_THREADS: usize = 64;
const USER_PRUNE_THRESHOLD: usize = 1024;
const MAX_EVENT_KINDS: usize = 64;
const RECENT_DECISIONS: usize = 200;
/// Correlation ids of the last replies sent, handed to the next lease owner (`ha`).
const ANSWERED: usize = 64;
/// Lines remembered in `sent_log`.
const SENT_LOG: usize = 256;
/// Slack on top of the runtime's own timeouts and retries before the engine gives up on
/// a request by itself.
const DEADLINE_SLACK: Duration = Duration::from_secs(10);

/// A channel's compiled patterns, shared by every channel with the same settings: regexes
/// are the largest part of a channel's memory, and most channels share `defaults`.
pub(crate) type Compiled = (Arc<Matcher>, Arc<Rules>);

/// Compiles patterns once per distinct (keywords, response rules) in a config.
#[derive(Default)]
pub(crate) struct CompileCache {
    entries: Vec<(Vec<crate::config::KeywordConfig>, crate::config::ResponseConfig, String, Compiled)>,
}

impl CompileCache {
    pub fn get(&mut self, bot: &BotConfig, cfg: &ChannelConfig) -> Compiled {
        let (kw, resp) = (&cfg.triggers.keywords, &cfg.response);
        if let Some((_, _, _, c)) =
            self.entries.iter().find(|(k, r, p, _)| k == kw && r == resp && *p == cfg.system_prompt)
        {
            return c.clone();
        }
        let compiled = (Arc::new(Matcher::new(bot, kw)), Arc::new(Rules::new(resp, bot, &cfg.system_prompt)));
        self.entries.push((kw.clone(), resp.clone(), cfg.system_prompt.clone(), compiled.clone()));
        compiled
    }
}

/// What a channel needs from the engine for one step.
pub(crate) struct Env<'a> {
    pub now: Millis,
    pub start: Millis,
    pub bot: &'a BotConfig,
    pub llm: &'a LlmConfig,
    pub shutting_down: bool,
    pub connected: bool,
    pub outbound_queue: usize,
    /// Spend over all channels.
    pub global: &'a mut Ledger,
    pub out: &'a mut VecDeque<Effect>,
    pub timers: &'a mut Timers,
}

/// Counters a report or /metrics reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Events received, by CyTube event name (bounded; the rest under `other`).
    pub events: BTreeMap<String, u64>,
}

/// A point-in-time view for /health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelStatus {
    /// Configured name.
    pub name: String,
    /// Lines in the context window.
    pub context_len: usize,
    /// LLM requests outstanding.
    pub in_flight: usize,
    /// Messages waiting for their send slot.
    pub queued: usize,
    /// Tokens spent in the last hour.
    pub tokens_hour: u64,
    /// Tokens spent in the last day.
    pub tokens_day: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Audience {
    Channel,
    Pm(String),
}

#[derive(Debug, Clone)]
struct Pending {
    trigger: Trigger,
    purpose: Purpose,
    audience: Audience,
    /// Lower-cased user whose per-user limit this reply counts against.
    user: Option<String>,
    correlation_id: Option<String>,
    provider_index: usize,
    messages: Vec<PromptMessage>,
    /// Tokens reserved in the budgets while in flight.
    reserved: u64,
}

#[derive(Debug, Clone)]
struct Outgoing {
    command: Command,
    trigger: Trigger,
    user: Option<String>,
    /// The first message of a reply settles its limit accounting when sent.
    first: bool,
    reason: Option<Reason>,
}

#[derive(Debug, Clone, Default)]
struct UserState {
    window: SlidingWindow,
    pending: usize,
    /// When the bot last sent a reply to this user (loop guard).
    last_reply_at: Option<Millis>,
    /// Consecutive quick exchanges with this user.
    exchanges: u32,
    /// Loops detected with this user; each doubles the next backoff.
    loops: u32,
    /// Loop-guard backoff end.
    backoff_until: Option<Millis>,
    /// Limit hits; each doubles the next penalty.
    strikes: u32,
    /// Time of the last strike.
    last_strike: Option<Millis>,
    /// Penalty end.
    penalty_until: Option<Millis>,
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

/// A provider's circuit breaker as one channel sees it.
#[derive(Debug, Clone, Copy, Default)]
struct BreakerState {
    failures: u32,
    /// Open until then; past it, one trial request is let through (half-open).
    open_until: Option<Millis>,
    /// A half-open trial is in flight.
    trial: bool,
}

/// `base · 2^(n-1)`, at most `max`.
fn doubling(base: Duration, n: u32, max: Duration) -> Duration {
    base.saturating_mul(1u32 << n.saturating_sub(1).min(20)).min(max)
}

/// Recently seen event keys, bounded.
#[derive(Debug, Clone)]
struct Seen {
    order: VecDeque<u64>,
    set: HashSet<u64, Scramble>,
}

impl Seen {
    fn new(secret: u64) -> Seen {
        Seen { order: VecDeque::new(), set: HashSet::with_hasher(Scramble(secret)) }
    }

    /// Records `key`; false when it was already there.
    fn insert(&mut self, key: u64) -> bool {
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > SEEN_EVENTS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// Hashes for a set of keys that are hashes already: instead of hashing them again, each
/// is mixed with a secret. Anyone can compute a chat line's key, so without the secret,
/// crafted lines could all be made to land in one bucket.
#[derive(Debug, Clone, Copy)]
struct Scramble(u64);

impl BuildHasher for Scramble {
    type Hasher = Scrambler;
    fn build_hasher(&self) -> Scrambler {
        Scrambler(self.0)
    }
}

struct Scrambler(u64);

impl Hasher for Scrambler {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).rotate_left(8);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
    fn finish(&self) -> u64 {
        fmix64(self.0)
    }
}

/// MurmurHash3's 64-bit finaliser: a bijection that spreads every input bit.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn key_of(parts: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

#[derive(Clone)]
pub(crate) struct Channel {
    pub slot: u32,
    pub cfg: ChannelConfig,
    matcher: Arc<Matcher>,
    rules: Arc<Rules>,
    rng: ChaCha8Rng,
    seq: u32,
    context: Context,
    pm_threads: BTreeMap<String, Context>,
    users: BTreeMap<String, UserState>,
    /// Prune `users` when it grows past this: twice what the last pruning kept (at least
    /// USER_PRUNE_THRESHOLD), so a room with many active users is not scanned per reply.
    users_prune_at: usize,
    window: SlidingWindow,
    pending: usize,
    last_fire: Option<Millis>,
    trigger_last: BTreeMap<Trigger, Millis>,
    last_media: Option<u64>,
    last_media_comment: Option<Millis>,
    requests: BTreeMap<RequestId, Pending>,
    outbox: VecDeque<Outgoing>,
    last_send: Option<Millis>,
    recent: Recent,
    new_lines: usize,
    seen: Seen,
    fallback_next: usize,
    spend: Ledger,
    global_budget: GlobalBudget,
    /// This channel's view of each provider's health (per channel, so one channel's
    /// traffic never changes another's behaviour).
    breakers: BTreeMap<String, BreakerState>,
    /// Paused by an operator.
    pub muted: bool,
    /// May speak: always without `ha`; with it, while this instance holds the lease.
    /// A standby still reads everything (warm context) and counts the bot's own lines.
    pub owner: bool,
    /// Limit state changed since the engine last looked (for saving it with the lease).
    limits_dirty: bool,
    /// Correlation ids of the last events answered (bounded by `ANSWERED`).
    answered: VecDeque<String>,
    /// The bot's recent lines in this channel, sent here or seen echoed while another
    /// instance held the lease: (time, text fingerprint), bounded by `SENT_LOG`. A new
    /// lease owner counts each line once whoever reported it.
    sent_log: VecDeque<(Millis, u64)>,
    /// The last decisions, for `decisions.recent` (bounded).
    recent_decisions: VecDeque<Decision>,
    pub stats: ChannelStats,
}

impl Channel {
    pub fn new(
        slot: u32,
        cfg: ChannelConfig,
        compiled: Compiled,
        seed: u64,
        now: Millis,
        timers: &mut Timers,
    ) -> Channel {
        let rng = ChaCha8Rng::seed_from_u64(seed ^ key_of(cfg.name.to_ascii_lowercase()));
        let seen = Seen::new(fmix64(seed ^ key_of(("seen", cfg.name.to_ascii_lowercase()))));
        let ch = Channel {
            slot,
            matcher: compiled.0,
            rules: compiled.1,
            rng,
            seq: 0,
            context: Context::new(cfg.context.max_messages, cfg.context.max_age),
            pm_threads: BTreeMap::new(),
            users: BTreeMap::new(),
            users_prune_at: USER_PRUNE_THRESHOLD,
            window: SlidingWindow::default(),
            pending: 0,
            last_fire: None,
            trigger_last: BTreeMap::new(),
            last_media: None,
            last_media_comment: None,
            requests: BTreeMap::new(),
            outbox: VecDeque::new(),
            last_send: None,
            recent: Recent::default(),
            new_lines: 0,
            seen,
            fallback_next: 0,
            spend: Ledger::default(),
            global_budget: GlobalBudget::default(),
            breakers: BTreeMap::new(),
            muted: false,
            owner: true,
            limits_dirty: false,
            answered: VecDeque::new(),
            sent_log: VecDeque::new(),
            recent_decisions: VecDeque::new(),
            stats: ChannelStats::default(),
            cfg,
        };
        ch.arm_participation(now, timers);
        ch
    }

    /// Applies a reloaded config, keeping context, limits and queues.
    pub fn reconfigure(&mut self, cfg: ChannelConfig, compiled: Compiled, now: Millis, timers: &mut Timers) {
        (self.matcher, self.rules) = compiled;
        self.context.resize(cfg.context.max_messages, cfg.context.max_age);
        for t in self.pm_threads.values_mut() {
            t.resize(cfg.context.max_messages, cfg.context.max_age);
        }
        let contextual_changed = cfg.triggers.contextual != self.cfg.triggers.contextual;
        self.cfg = cfg;
        if contextual_changed {
            timers.disarm(TimerKey::Participation(self.slot));
            self.arm_participation(now, timers);
        }
    }

    /// The last decisions, newest last (at most `n`).
    pub fn recent_decisions(&self, n: usize) -> Vec<Decision> {
        let skip = self.recent_decisions.len().saturating_sub(n);
        self.recent_decisions.iter().skip(skip).cloned().collect()
    }

    /// Applies an operator control.
    pub fn control(&mut self, env: &mut Env, action: crate::contract::Control) {
        use crate::contract::Control;
        match action {
            Control::Mute => {
                self.muted = true;
                // Replies already waiting are not said either.
                for o in std::mem::take(&mut self.outbox) {
                    self.drop_outgoing(env, o, Reason::Muted);
                }
            }
            Control::Unmute => self.muted = false,
            Control::ClearContext => {
                self.context.clear();
                self.pm_threads.clear();
                self.new_lines = 0;
            }
        }
    }

    /// The bot-wide budget this channel's requests also count against.
    pub fn set_global_budget(&mut self, b: GlobalBudget) {
        self.global_budget = b;
    }

    fn arm_participation(&self, now: Millis, timers: &mut Timers) {
        if self.cfg.triggers.contextual.enabled {
            timers.arm(TimerKey::Participation(self.slot), now.after(self.cfg.triggers.contextual.every));
        }
    }

    pub fn status(&self, now: Millis) -> ChannelStatus {
        ChannelStatus {
            name: self.cfg.name.clone(),
            context_len: self.context.len(),
            in_flight: self.requests.len(),
            queued: self.outbox.len(),
            tokens_hour: self.spend.hour(now),
            tokens_day: self.spend.day(now),
        }
    }

    pub fn is_idle(&self) -> bool {
        self.requests.is_empty() && self.outbox.is_empty()
    }

    pub fn count_event(&mut self, kind: &str) {
        let n = self.stats.events.len();
        if let Some(c) = self.stats.events.get_mut(kind) {
            *c += 1;
        } else if n < MAX_EVENT_KINDS {
            self.stats.events.insert(kind.to_owned(), 1);
        } else {
            *self.stats.events.entry("other".into()).or_default() += 1;
        }
    }

    fn decide(
        &mut self,
        env: &mut Env,
        correlation_id: Option<&str>,
        user: Option<&str>,
        trigger: Option<Trigger>,
        outcome: Outcome,
        reason: Option<Reason>,
    ) {
        let d = Decision {
            at: env.now,
            channel: self.cfg.name.clone(),
            correlation_id: correlation_id.map(str::to_owned),
            user: user.map(str::to_owned),
            trigger,
            outcome,
            reason,
        };
        if self.recent_decisions.len() == RECENT_DECISIONS {
            self.recent_decisions.pop_front();
        }
        self.recent_decisions.push_back(d.clone());
        env.out.push_back(Effect::Decision(d));
    }

    /// A decision of the contextual trigger (no user, no event).
    fn contextual(&mut self, env: &mut Env, outcome: Outcome, reason: Reason) {
        self.decide(env, None, None, Some(Trigger::Contextual), outcome, Some(reason));
    }

    /// An `ignored` decision: the event is not considered at all.
    fn ignore(
        &mut self,
        env: &mut Env,
        cid: Option<&str>,
        user: Option<&str>,
        trigger: Option<Trigger>,
        reason: Reason,
    ) {
        self.decide(env, cid, user, trigger, Outcome::Ignored, Some(reason));
    }

    /// Records the event's identity; false (and an `ignored` decision) for a repeat.
    pub fn first_sighting(&mut self, env: &mut Env, correlation_id: Option<&str>, msg: Option<&Message<'_>>) -> bool {
        let by_id = correlation_id.map(|c| key_of(("id", c)));
        let by_content = msg.and_then(|m| m.time.map(|t| key_of(("msg", &m.user, t, &m.text))));
        let mut fresh = true;
        for key in [by_id, by_content].into_iter().flatten() {
            fresh &= self.seen.insert(key);
        }
        if !fresh {
            self.ignore(env, correlation_id, msg.map(|m| &*m.user), None, Reason::DuplicateEvent);
        }
        fresh
    }

    fn is_bot(env: &Env, name: &str) -> bool {
        same_name(name, &env.bot.name)
    }

    fn is_ignored_user(&self, name: &str) -> bool {
        self.cfg.ignore_users.iter().any(|u| same_name(name, u))
    }

    fn line(at: Millis, msg: &Message<'_>, own: bool) -> ChatLine {
        ChatLine { at, user: Arc::from(&*msg.user), text: msg.text.to_string(), own, action: msg.action }
    }

    // ------------------------------------------------------------------ inbound events

    pub fn on_chat(&mut self, env: &mut Env, msg: Message<'_>, correlation_id: Option<&str>) {
        let cid = correlation_id;
        if msg.user == "[server]" {
            return self.ignore(env, cid, None, None, Reason::ServerMessage);
        }
        let at = msg.time.map_or(env.now, |t| t.min(env.now));
        self.context.expire(env.now);
        if Self::is_bot(env, &msg.user) {
            self.context.push(Self::line(at, &msg, true));
            if !self.owner {
                // Another instance spoke for the bot: count it, so a takeover starts
                // from what was really sent even if that instance died before saving.
                self.window.record(at, self.cfg.limits.per_channel);
                self.last_send = self.last_send.max(Some(at));
                self.log_sent(at, &msg.text);
            }
            return self.ignore(env, cid, Some(&*msg.user), None, Reason::OwnMessage);
        }
        if msg.shadow {
            return self.ignore(env, cid, Some(&*msg.user), None, Reason::ShadowMuted);
        }
        if self.is_ignored_user(&msg.user) {
            return self.ignore(env, cid, Some(&*msg.user), None, Reason::IgnoredUser);
        }
        // The join backlog is real conversation: remember it, but never answer it.
        let backlog = msg.time.is_some_and(|t| t < env.start);
        if backlog {
            if msg.time.is_some_and(|t| t >= env.now.before(self.cfg.context.max_age)) {
                self.context.push(Self::line(at, &msg, false));
            }
            return self.ignore(env, cid, Some(&*msg.user), None, Reason::Backlog);
        }
        self.new_lines = self.new_lines.saturating_add(1);
        let t = &self.cfg.triggers;
        let mut candidates: Vec<(Trigger, f64, Duration)> = Vec::new();
        if t.mention.enabled && self.matcher.is_mention(&msg.text) {
            candidates.push((Trigger::Mention, t.mention.probability, t.mention.cooldown));
        }
        if !t.keywords.is_empty() {
            for k in self.matcher.keywords(&msg.text) {
                let kw = &t.keywords[k];
                candidates.push((Trigger::Keyword(k), kw.probability, kw.cooldown));
            }
        }
        if candidates.is_empty() {
            // Most lines: remembered, nothing to answer, so the text moves (no copy).
            let user = Arc::from(&*msg.user);
            self.context.push(ChatLine { at, user, text: msg.text.into_owned(), own: false, action: msg.action });
            return;
        }
        self.context.push(Self::line(at, &msg, false));
        // The first trigger that fires wins; a channel-wide limit silences them all.
        for (trigger, probability, cooldown) in candidates {
            let ask = Ask {
                trigger,
                user: Some(&*msg.user),
                correlation_id: cid,
                probability,
                cooldown,
                prompt: Prompt::Chat {
                    user: msg.user.to_string(),
                    text: msg.text.to_string(),
                    addressed: trigger == Trigger::Mention,
                },
            };
            match self.consider(env, ask) {
                Ok(()) => break,
                Err(reason) if !reason_is_per_trigger(reason) => break,
                Err(_) => {}
            }
        }
    }

    pub fn on_pm(&mut self, env: &mut Env, msg: Message<'_>, to: &str, correlation_id: Option<&str>) {
        let cid = correlation_id;
        if msg.user == "[server]" {
            return self.ignore(env, cid, None, Some(Trigger::Pm), Reason::ServerMessage);
        }
        if Self::is_bot(env, &msg.user) {
            let thread = self.pm_thread(env.now, &to.to_lowercase());
            thread.push(Self::line(env.now, &msg, true));
            return self.ignore(env, cid, Some(&*msg.user), Some(Trigger::Pm), Reason::OwnMessage);
        }
        if !Self::is_bot(env, to) {
            return self.ignore(env, cid, Some(&*msg.user), Some(Trigger::Pm), Reason::NotForBot);
        }
        if self.is_ignored_user(&msg.user) {
            return self.ignore(env, cid, Some(&*msg.user), Some(Trigger::Pm), Reason::IgnoredUser);
        }
        if msg.time.is_some_and(|t| t < env.start) {
            return self.ignore(env, cid, Some(&*msg.user), Some(Trigger::Pm), Reason::Backlog);
        }
        let user_lc = msg.user.to_lowercase();
        let now = env.now;
        self.pm_thread(now, &user_lc).push(Self::line(now, &msg, false));
        if self.cfg.triggers.pm_enabled {
            let ask = Ask {
                trigger: Trigger::Pm,
                user: Some(&*msg.user),
                correlation_id: cid,
                probability: 1.0,
                cooldown: Duration::ZERO,
                prompt: Prompt::Pm { user: msg.user.to_string(), text: msg.text.to_string() },
            };
            let _ = self.consider(env, ask);
        }
    }

    pub fn on_media(&mut self, env: &mut Env, id: &str, title: &str, fresh: bool, correlation_id: Option<&str>) {
        let key = key_of((id, title));
        let repeat = self.last_media == Some(key);
        self.last_media = Some(key);
        if !self.cfg.triggers.media_change.enabled {
            return;
        }
        let trigger = Some(Trigger::MediaChange);
        if repeat {
            return self.ignore(env, correlation_id, None, trigger, Reason::DuplicateMedia);
        }
        if !fresh {
            return self.ignore(env, correlation_id, None, trigger, Reason::MediaResync);
        }
        let ask = Ask {
            trigger: Trigger::MediaChange,
            user: None,
            correlation_id,
            probability: self.cfg.triggers.media_change.probability,
            cooldown: Duration::ZERO,
            prompt: Prompt::Media(title.to_owned()),
        };
        let _ = self.consider(env, ask);
    }

    /// The contextual trigger's timer.
    pub fn on_participation_timer(&mut self, env: &mut Env) {
        self.arm_participation(env.now, env.timers);
        if env.shutting_down {
            return;
        }
        let c = &self.cfg.triggers.contextual;
        if self.new_lines < c.min_new_messages.max(1) {
            return self.contextual(env, Outcome::Suppressed, Reason::NotEnoughNewMessages);
        }
        self.new_lines = 0;
        let ask = Ask {
            trigger: Trigger::Contextual,
            user: None,
            correlation_id: None,
            probability: c.probability,
            cooldown: Duration::ZERO,
            prompt: Prompt::ParticipationCheck,
        };
        let _ = self.consider(env, ask);
    }

    // ------------------------------------------------------------------ deciding to speak

    /// Runs the checks for one trigger and fires it (an LLM request) if all pass. The
    /// order is fixed: shutdown, the trigger's own cooldown, its probability, then the
    /// channel's limits; so a limit is only charged with silences that would otherwise
    /// have been replies.
    fn consider(&mut self, env: &mut Env, ask: Ask) -> Result<(), Reason> {
        let verdict = self.check(env, &ask);
        match verdict {
            Err(reason) => {
                self.decide(env, ask.correlation_id, ask.user, Some(ask.trigger), Outcome::Suppressed, Some(reason));
                Err(reason)
            }
            Ok(()) => {
                self.decide(env, ask.correlation_id, ask.user, Some(ask.trigger), Outcome::Fired, None);
                self.limits_dirty = true;
                self.trigger_last.insert(ask.trigger, env.now);
                if ask.trigger == Trigger::MediaChange {
                    self.last_media_comment = Some(env.now);
                }
                let purpose = match ask.prompt {
                    Prompt::ParticipationCheck => Purpose::ParticipationCheck,
                    _ => Purpose::Reply,
                };
                // A yes/no question is not a message: only replies start the cooldown.
                if purpose == Purpose::Reply {
                    self.last_fire = Some(env.now);
                }
                let user = ask.user.map(str::to_lowercase);
                if purpose == Purpose::Reply {
                    self.reserve(user.as_deref());
                }
                let audience = match &ask.prompt {
                    Prompt::Pm { user, .. } => Audience::Pm(user.clone()),
                    _ => Audience::Channel,
                };
                let messages = self.prompt(env, &ask.prompt);
                let pending = Pending {
                    trigger: ask.trigger,
                    purpose,
                    audience,
                    user,
                    correlation_id: ask.correlation_id.map(str::to_owned),
                    provider_index: 0,
                    messages,
                    reserved: 0,
                };
                self.call(env, pending);
                Ok(())
            }
        }
    }

    fn check(&mut self, env: &mut Env, ask: &Ask) -> Result<(), Reason> {
        if env.shutting_down {
            return Err(Reason::ShuttingDown);
        }
        if !self.owner {
            return Err(Reason::NotOwner);
        }
        if self.muted {
            return Err(Reason::Muted);
        }
        if let Some(user) = ask.user {
            let penalised =
                self.users.get(&user.to_lowercase()).and_then(|u| u.penalty_until).is_some_and(|t| t > env.now);
            if penalised {
                self.strike(user, env.now);
                return Err(Reason::Penalty);
            }
        }
        if !cooled_down(self.trigger_last.get(&ask.trigger).copied(), ask.cooldown, env.now) {
            return Err(Reason::TriggerCooldown);
        }
        if ask.trigger == Trigger::MediaChange
            && !cooled_down(self.last_media_comment, self.cfg.limits.media_change_cooldown, env.now)
        {
            return Err(Reason::MediaChangeCooldown);
        }
        if ask.probability < 1.0 && !self.chance(ask.probability) {
            return Err(Reason::Probability);
        }
        if let (Some(user), Prompt::Chat { text, .. }) = (ask.user, &ask.prompt) {
            self.loop_guard(user, text, env.now)?;
        }
        let verdict = self.check_limits(env.now, ask.trigger, ask.user, env.global);
        if let (Err(Reason::PerUserLimit), Some(user)) = (verdict, ask.user) {
            self.strike(user, env.now);
        }
        verdict
    }

    /// Detects a bot loop with `user`: their line answers ours within the window (or
    /// copies one of ours) `max_exchanges` times in a row. Then backs off from them,
    /// twice as long for each further loop.
    fn loop_guard(&mut self, user: &str, text: &str, now: Millis) -> Result<(), Reason> {
        let g = self.cfg.loop_guard;
        let copies_us = self.recent.resembles(text);
        let st = self.users.entry(user.to_lowercase()).or_default();
        if st.backoff_until.is_some_and(|t| now < t) {
            return Err(Reason::LoopGuard);
        }
        let answering_us = st.last_reply_at.is_some_and(|t| now < t.after(g.window));
        if answering_us || copies_us {
            st.exchanges += 1;
        } else {
            st.exchanges = 0;
            // A calm spell as long as the last backoff forgives earlier loops.
            if st
                .backoff_until
                .is_some_and(|t| now >= t.after(doubling(g.backoff, st.loops, Duration::from_secs(86_400))))
            {
                st.loops = 0;
            }
        }
        if st.exchanges >= g.max_exchanges {
            st.loops += 1;
            st.exchanges = 0;
            st.backoff_until = Some(now.after(doubling(g.backoff, st.loops, Duration::from_secs(86_400))));
            return Err(Reason::LoopGuard);
        }
        Ok(())
    }

    /// Counts a limit hit against `user` and (re)starts their penalty: `base`, doubling
    /// per strike up to `max`; strikes are forgotten after twice the current penalty
    /// without one.
    fn strike(&mut self, user: &str, now: Millis) {
        let p = self.cfg.penalty;
        if p.base.is_zero() {
            return;
        }
        let st = self.users.entry(user.to_lowercase()).or_default();
        let current = doubling(p.base, st.strikes, p.max);
        if st.last_strike.is_some_and(|t| now >= t.after(current.saturating_mul(2))) {
            st.strikes = 0;
        }
        st.strikes += 1;
        st.last_strike = Some(now);
        st.penalty_until = Some(now.after(doubling(p.base, st.strikes, p.max)));
    }

    /// The channel-wide limits (and the per-user one when a user asked).
    fn check_limits(
        &mut self,
        now: Millis,
        trigger: Trigger,
        user: Option<&str>,
        global: &Ledger,
    ) -> Result<(), Reason> {
        let b = self.cfg.budget;
        if trigger != Trigger::Pm || b.include_pms {
            let g = &self.global_budget;
            if !self.spend.allows(now, b.tokens_per_hour, b.tokens_per_day)
                || !global.allows(now, g.tokens_per_hour, g.tokens_per_day)
            {
                return Err(Reason::Budget);
            }
        }
        let lim = &self.cfg.limits;
        if self.requests.len() >= lim.max_in_flight as usize {
            return Err(Reason::MaxInFlight);
        }
        if let Some(user) = user {
            if let Some(state) = self.users.get_mut(&user.to_lowercase()) {
                if !state.window.allows(now, lim.per_user, state.pending) {
                    return Err(Reason::PerUserLimit);
                }
            }
        }
        if !self.window.allows(now, lim.per_channel, self.pending) {
            return Err(Reason::PerChannelLimit);
        }
        // PMs are private: the room's pacing does not apply to them.
        if trigger != Trigger::Pm {
            let last = self.last_fire.max(self.last_send);
            if !cooled_down(last, lim.global_cooldown, now) {
                return Err(Reason::GlobalCooldown);
            }
        }
        Ok(())
    }

    fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        let x = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        x < p
    }

    fn reserve(&mut self, user: Option<&str>) {
        self.pending += 1;
        if let Some(u) = user {
            self.users.entry(u.to_owned()).or_default().pending += 1;
        }
    }

    /// Ends a reply's pending state: `sent_at` records it in the windows.
    fn settle(&mut self, user: Option<&str>, sent_at: Option<Millis>) {
        self.pending = self.pending.saturating_sub(1);
        let lim = self.cfg.limits.clone();
        if let Some(t) = sent_at {
            self.window.record(t, lim.per_channel);
            self.limits_dirty = true;
        }
        if let Some(u) = user {
            let state = self.users.entry(u.to_owned()).or_default();
            state.pending = state.pending.saturating_sub(1);
            if let Some(t) = sent_at {
                state.window.record(t, lim.per_user);
            }
        }
        if self.users.len() > self.users_prune_at {
            let now = sent_at.unwrap_or(Millis::ZERO).max(self.last_send.unwrap_or(Millis::ZERO));
            let window = lim.per_user.window;
            let guard = self.cfg.loop_guard.window;
            self.users.retain(|_, s| s.is_live(now, window, guard));
            self.users_prune_at = (self.users.len() * 2).max(USER_PRUNE_THRESHOLD);
        }
    }

    fn next_id(&mut self) -> RequestId {
        self.seq = self.seq.wrapping_add(1);
        RequestId((u64::from(self.slot) << 32) | u64::from(self.seq))
    }

    /// Issues the LLM request for `pending` with its current provider.
    /// The first provider from `from` on whose breaker lets a request through now.
    fn pick_provider(&mut self, from: usize, now: Millis) -> Option<usize> {
        (from..self.cfg.providers.len()).find(|&i| {
            let b = self.breakers.entry(self.cfg.providers[i].clone()).or_default();
            match b.open_until {
                None => true,
                Some(t) if now >= t && !b.trial => {
                    b.trial = true;
                    true
                }
                Some(_) => false,
            }
        })
    }

    /// Records a request's outcome in its provider's breaker.
    fn breaker_outcome(&mut self, env: &Env, provider: &str, ok: bool) {
        let cfg = env.llm.providers.get(provider).map(|p| p.breaker).unwrap_or_default();
        let b = self.breakers.entry(provider.to_owned()).or_default();
        if ok {
            *b = BreakerState::default();
            return;
        }
        b.failures += 1;
        if cfg.failures > 0 && (b.trial || b.failures >= cfg.failures) {
            b.open_until = Some(env.now.after(cfg.cooldown));
            b.trial = false;
        }
    }

    /// Issues the LLM request for `pending` with the first usable provider of its chain;
    /// when every breaker is open, falls back at once.
    fn call(&mut self, env: &mut Env, mut pending: Pending) {
        let Some(index) = self.pick_provider(pending.provider_index, env.now) else {
            let (cid, user) = (pending.correlation_id.clone(), pending.user.clone());
            self.decide(
                env,
                cid.as_deref(),
                user.as_deref(),
                Some(pending.trigger),
                Outcome::Dropped,
                Some(Reason::ProvidersDown),
            );
            if pending.purpose == Purpose::Reply {
                self.fall_back(env, &pending);
                self.flush(env);
            }
            return;
        };
        pending.provider_index = index;
        let id = self.next_id();
        let provider = self.cfg.providers[index].clone();
        let max_tokens = env.llm.providers.get(&provider).map_or(0, |p| u64::from(p.max_tokens));
        pending.reserved = budget::estimate_prompt(&pending.messages) + max_tokens;
        self.spend.reserved += pending.reserved;
        env.global.reserved += pending.reserved;
        let budget = env.llm.providers.get(&provider).map_or(Duration::from_secs(30), |p| {
            p.timeout
                .saturating_mul(p.retries.saturating_add(1))
                .saturating_add(Duration::from_secs(u64::from(p.retries)))
        });
        env.timers.arm(TimerKey::LlmDeadline(id), env.now.after(budget + DEADLINE_SLACK));
        env.out.push_back(Effect::CallLlm(LlmCall {
            id,
            channel: self.cfg.name.clone(),
            provider,
            messages: pending.messages.clone(),
            purpose: pending.purpose,
        }));
        self.requests.insert(id, pending);
    }

    // ------------------------------------------------------------------ prompts

    /// Builds the messages for a request. Every remembered line carries its speaker; the
    /// line being answered is left out of the chatter and comes last, marked, so the model
    /// knows whom it answers.
    fn prompt(&mut self, env: &Env, prompt: &Prompt) -> Vec<PromptMessage> {
        let system = format!(
            "{}\n\nYou are {} in the CyTube chat room \"{}\". Chat lines appear as `name: text`. \
             Write only your own next line: no name prefix, no other speakers.",
            self.cfg.system_prompt, env.bot.name, self.cfg.name
        );
        let mut messages = vec![PromptMessage { role: Role::System, content: system }];
        let (lines, answering): (Vec<&ChatLine>, Option<(&str, &str)>) = match prompt {
            Prompt::Pm { user, text } => (
                self.pm_threads.get(&user.to_lowercase()).map(|t| t.lines().collect()).unwrap_or_default(),
                Some((user, text)),
            ),
            Prompt::Chat { user, text, .. } => (self.context.lines().collect(), Some((user, text))),
            _ => (self.context.lines().collect(), None),
        };
        let n = lines.len();
        for (i, l) in lines.into_iter().enumerate() {
            let is_answered = i + 1 == n && !l.own && answering.is_some_and(|(u, t)| *l.user == *u && l.text == t);
            if is_answered {
                continue;
            }
            let content = if l.own {
                l.text.clone()
            } else {
                let sep = if l.action { " " } else { ": " };
                let mut c = String::with_capacity(l.user.len() + sep.len() + l.text.len());
                c.push_str(&l.user);
                c.push_str(sep);
                c.push_str(&l.text);
                c
            };
            let role = if l.own { Role::Assistant } else { Role::User };
            messages.push(PromptMessage { role, content });
        }
        let last = match prompt {
            Prompt::Chat { user, text, addressed: true } => {
                format!("[{user} is talking to you; answer this] {user}: {text}")
            }
            Prompt::Chat { user, text, addressed: false } => {
                format!("[react to this line if you have something to add] {user}: {text}")
            }
            Prompt::Pm { user, text } => format!("[private message from {user}; answer privately] {user}: {text}"),
            Prompt::Media(title) => format!("[The video changed to: {title}] Say something short about it."),
            Prompt::ParticipationCheck => {
                "[Would you naturally join this conversation right now? Answer only yes or no.]".into()
            }
            Prompt::Contextual => "[Join the conversation with one short line.]".into(),
        };
        messages.push(PromptMessage { role: Role::User, content: last });
        messages
    }

    fn pm_thread(&mut self, now: Millis, user_lc: &str) -> &mut Context {
        if !self.pm_threads.contains_key(user_lc) && self.pm_threads.len() >= MAX_PM_THREADS {
            // Forget the conversation that has been quiet longest.
            if let Some(oldest) =
                self.pm_threads.iter().min_by_key(|(_, t)| t.last_at().unwrap_or(Millis::ZERO)).map(|(k, _)| k.clone())
            {
                self.pm_threads.remove(&oldest);
            }
        }
        let (max, age) = (self.cfg.context.max_messages, self.cfg.context.max_age);
        let thread = self.pm_threads.entry(user_lc.to_owned()).or_insert_with(|| Context::new(max, age));
        thread.expire(now);
        thread
    }

    // ------------------------------------------------------------------ LLM answers

    /// An LLM request finished (or its deadline passed). Unknown ids (late answers to
    /// abandoned requests) are ignored.
    pub fn on_llm_done(&mut self, env: &mut Env, id: RequestId, result: Result<LlmReply, LlmError>) {
        let Some(pending) = self.requests.remove(&id) else { return };
        env.timers.disarm(TimerKey::LlmDeadline(id));
        self.spend.reserved = self.spend.reserved.saturating_sub(pending.reserved);
        env.global.reserved = env.global.reserved.saturating_sub(pending.reserved);
        let provider = self.cfg.providers.get(pending.provider_index).cloned().unwrap_or_default();
        match &result {
            Ok(_) => self.breaker_outcome(env, &provider, true),
            Err(e) if e.is_transient() => self.breaker_outcome(env, &provider, false),
            // It answered (badly): reachable, so the breaker closes.
            Err(_) => self.breaker_outcome(env, &provider, true),
        }
        if let Ok(reply) = &result {
            let tokens = reply.usage.map_or_else(
                || budget::estimate_prompt(&pending.messages) + budget::estimate(&reply.text),
                |u| u.input_tokens + u.output_tokens,
            );
            self.spend.spend(env.now, tokens);
            env.global.spend(env.now, tokens);
        }
        let user = pending.user.clone();
        let cid = pending.correlation_id.clone();
        match (pending.purpose, result) {
            (Purpose::ParticipationCheck, Ok(reply)) => {
                if is_yes(&reply.text) {
                    // The check itself passed the limits; the reply must pass them again.
                    match self.check_limits(env.now, Trigger::Contextual, None, env.global) {
                        Err(reason) => {
                            self.contextual(env, Outcome::Suppressed, reason);
                        }
                        Ok(()) => {
                            self.reserve(None);
                            self.last_fire = Some(env.now);
                            let messages = self.prompt(env, &Prompt::Contextual);
                            let pending = Pending {
                                trigger: Trigger::Contextual,
                                purpose: Purpose::Reply,
                                audience: Audience::Channel,
                                user: None,
                                correlation_id: None,
                                provider_index: 0,
                                messages,
                                reserved: 0,
                            };
                            self.call(env, pending);
                        }
                    }
                } else {
                    self.contextual(env, Outcome::Suppressed, Reason::DeclinedToJoin);
                }
            }
            (Purpose::ParticipationCheck, Err(e)) => {
                self.contextual(env, Outcome::Dropped, Reason::LlmFailed(e));
            }
            (Purpose::Reply, Ok(reply)) => match self.rules.process(&reply.text, &self.recent) {
                Ok(parts) => self.enqueue(env, &pending, parts, None),
                Err(rejection) => {
                    let reason = match rejection {
                        Rejection::Empty => Reason::EmptyReply,
                        Rejection::Blocked => Reason::BlockedReply,
                        Rejection::Duplicate => Reason::DuplicateReply,
                        Rejection::ReasoningOnly => Reason::ReasoningOnly,
                        Rejection::PromptLeak => Reason::PromptLeak,
                    };
                    self.decide(
                        env,
                        cid.as_deref(),
                        user.as_deref(),
                        Some(pending.trigger),
                        Outcome::Dropped,
                        Some(reason),
                    );
                    self.settle(user.as_deref(), None);
                }
            },
            (Purpose::Reply, Err(e)) => {
                if e.is_transient() && pending.provider_index + 1 < self.cfg.providers.len() && !env.shutting_down {
                    let mut next = pending;
                    next.provider_index += 1;
                    return self.call(env, next);
                }
                self.decide(
                    env,
                    cid.as_deref(),
                    user.as_deref(),
                    Some(pending.trigger),
                    Outcome::Dropped,
                    Some(Reason::LlmFailed(e)),
                );
                self.fall_back(env, &pending);
            }
        }
        self.flush(env);
    }

    /// Says the next fallback response in rotation (one that passes the response rules),
    /// or settles the reply as silent.
    fn fall_back(&mut self, env: &mut Env, pending: &Pending) {
        let fallbacks = &env.llm.fallback_responses;
        for _ in 0..fallbacks.len() {
            let text = fallbacks[self.fallback_next % fallbacks.len()].clone();
            self.fallback_next = self.fallback_next.wrapping_add(1);
            // Operator-written lines may repeat: they skip dedupe (but not the other rules).
            if let Ok(parts) = self.rules.process(&text, &Recent::default()) {
                return self.enqueue(env, pending, parts, Some(Reason::Fallback));
            }
        }
        self.settle(pending.user.as_deref(), None);
    }

    fn enqueue(&mut self, env: &mut Env, pending: &Pending, parts: Vec<String>, reason: Option<Reason>) {
        if self.muted || !self.owner {
            let cid = pending.correlation_id.clone();
            let why = if self.owner { Reason::Muted } else { Reason::NotOwner };
            self.decide(
                env,
                cid.as_deref(),
                pending.user.as_deref(),
                Some(pending.trigger),
                Outcome::Dropped,
                Some(why),
            );
            return self.settle(pending.user.as_deref(), None);
        }
        if reason != Some(Reason::Fallback) {
            self.recent.remember(&parts.join(" "), self.cfg.response.dedupe_window);
        }
        for (i, text) in parts.into_iter().enumerate() {
            let kind = match &pending.audience {
                Audience::Channel => CommandKind::Say { text },
                Audience::Pm(to) => CommandKind::Pm { to: to.clone(), text },
            };
            self.outbox.push_back(Outgoing {
                command: Command {
                    channel: self.cfg.name.clone(),
                    kind,
                    correlation_id: pending.correlation_id.clone(),
                },
                trigger: pending.trigger,
                user: pending.user.clone(),
                first: i == 0,
                reason,
            });
        }
        while self.outbox.len() > env.outbound_queue.max(1) {
            if let Some(dropped) = self.outbox.pop_front() {
                self.drop_outgoing(env, dropped, Reason::QueueFull);
            }
        }
    }

    /// Throws away a queued message with its reason; the first part of a reply also ends
    /// the reply's pending state.
    fn drop_outgoing(&mut self, env: &mut Env, o: Outgoing, reason: Reason) {
        let cid = o.command.correlation_id.as_deref();
        self.decide(env, cid, o.user.as_deref(), Some(o.trigger), Outcome::Dropped, Some(reason));
        if o.first {
            self.settle(o.user.as_deref(), None);
        }
    }

    /// Sends what the spacing allows now and arms the timer for the rest.
    pub fn flush(&mut self, env: &mut Env) {
        if !env.connected || !self.owner {
            return;
        }
        while !self.outbox.is_empty() {
            let ready_at = self.last_send.map_or(env.now, |t| t.after(self.cfg.limits.send_spacing));
            if ready_at > env.now {
                env.timers.arm(TimerKey::SendSpacing(self.slot), ready_at);
                return;
            }
            let Some(out) = self.outbox.pop_front() else { break };
            self.last_send = Some(env.now);
            if out.first {
                self.settle(out.user.as_deref(), Some(env.now));
                if let Some(u) = &out.user {
                    self.users.entry(u.clone()).or_default().last_reply_at = Some(env.now);
                }
            }
            let user = match &out.command.kind {
                CommandKind::Pm { to, .. } => Some(to.clone()),
                CommandKind::Say { .. } => out.user.clone(),
            };
            let cid = out.command.correlation_id.clone();
            if let (true, Some(c)) = (out.first, &cid) {
                if self.answered.len() == ANSWERED {
                    self.answered.pop_front();
                }
                self.answered.push_back(c.clone());
            }
            if out.first {
                self.log_sent(env.now, out.command.kind.text());
            }
            env.out.push_back(Effect::Publish(out.command));
            self.decide(env, cid.as_deref(), user.as_deref(), Some(out.trigger), Outcome::Sent, out.reason);
        }
    }

    /// The engine gave up waiting for `id`.
    pub fn on_deadline(&mut self, env: &mut Env, id: RequestId) {
        if self.requests.contains_key(&id) {
            env.out.push_back(Effect::CancelLlm(id));
            self.on_llm_done(env, id, Err(LlmError::Timeout));
        }
    }

    /// Limit state changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.limits_dirty)
    }

    /// This instance no longer holds the channel's lease: stop speaking. Replies waiting
    /// to be sent are dropped (`not_owner`); replies still being generated are dropped
    /// when they arrive.
    pub fn lose_lease(&mut self, env: &mut Env) {
        self.owner = false;
        env.timers.disarm(TimerKey::SendSpacing(self.slot));
        for o in std::mem::take(&mut self.outbox) {
            self.drop_outgoing(env, o, Reason::NotOwner);
        }
    }

    /// This instance now holds the lease: merge the previous owner's saved limits into
    /// what this instance observed (its own lines echoed by the channel), then speak.
    ///
    /// `blind`: this instance may have missed echoes around the time of the saved state
    /// (it was starting or cut off). An owner saves within a second of any change, so
    /// what a crashed owner did not save it sent within a second after `state.at`: then
    /// count the most it could have sent in that second.
    pub fn gain_lease(&mut self, env: &mut Env, state: Option<LimitSnapshot>, blind: bool) {
        if let Some(s) = state {
            self.restore(&s);
            if blind && !s.released {
                let lim = self.cfg.limits.clone();
                let at = Millis(s.at).after(Duration::from_secs(1));
                let used = self.window.count(env.now.max(at), lim.per_channel.window) as u64;
                let room = u64::from(lim.per_channel.max).saturating_sub(used);
                let spacing = lim.send_spacing.as_millis() as u64;
                let possible = 1_000u64.checked_div(spacing).map_or(room, |n| room.min(1 + n));
                for _ in 0..possible {
                    self.window.record(at, lim.per_channel);
                }
                self.last_send = self.last_send.max(Some(at));
            }
        }
        self.owner = true;
        self.flush(env);
    }

    fn log_sent(&mut self, at: Millis, text: &str) {
        if self.sent_log.len() == SENT_LOG {
            self.sent_log.pop_front();
        }
        self.sent_log.push_back((at, crate::lease::fingerprint(text)));
    }

    /// The limit state a new owner needs. Replies in flight count as sent now.
    pub fn snapshot(&mut self, now: Millis) -> LimitSnapshot {
        let lim = self.cfg.limits.clone();
        let sends: Vec<u64> = self.window.times(now, lim.per_channel.window).map(|t| t.0).collect();
        let horizon = now.before(lim.per_channel.window);
        let lines = self.sent_log.iter().filter(|(t, _)| *t > horizon).map(|(t, h)| (t.0, *h)).collect();
        let mut users: Vec<UserLimits> = self
            .users
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
        if users.len() > SNAPSHOT_USERS {
            users.sort_by_key(|u| std::cmp::Reverse(u.sends.iter().max().copied()));
            users.truncate(SNAPSHOT_USERS);
        }
        LimitSnapshot {
            at: now.0,
            sends,
            last_send: self.last_send.map(|t| t.0),
            last_fire: self.last_fire.map(|t| t.0),
            last_media_comment: self.last_media_comment.map(|t| t.0),
            triggers: self.trigger_last.iter().map(|(t, at)| (trigger_key(*t), at.0)).collect(),
            users,
            answered: self.answered.iter().cloned().collect(),
            lines,
            in_flight: self.pending as u32,
            released: false,
        }
    }

    /// Merges a previous owner's state: the later of every mark, and the union of send
    /// times where a send this instance saw echoed within 5 s of a saved one counts once.
    fn restore(&mut self, s: &LimitSnapshot) {
        // An event the previous owner answered is never answered again, even if it
        // reaches this instance only now.
        for cid in &s.answered {
            self.seen.insert(key_of(("id", cid.as_str())));
        }
        let lim = self.cfg.limits.clone();
        let max = |a: Option<Millis>, b: Option<u64>| a.max(b.map(Millis));
        self.last_send = max(self.last_send, s.last_send);
        self.last_fire = max(self.last_fire, s.last_fire);
        self.last_media_comment = max(self.last_media_comment, s.last_media_comment);
        for (k, at) in &s.triggers {
            if let Some(t) = parse_trigger_key(k) {
                let e = self.trigger_last.entry(t).or_insert(Millis(*at));
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
        self.window = window_of(times, lim.per_channel);
        let mut log: Vec<(Millis, u64)> = s.lines.iter().map(|&(t, h)| (Millis(t), h)).chain(extra).collect();
        log.sort_unstable();
        self.sent_log = log.into_iter().rev().take(SENT_LOG).rev().collect();
        for u in &s.users {
            let st = self.users.entry(u.user.clone()).or_default();
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

    /// The channel is being removed: abandon everything it was doing.
    pub fn remove(mut self, env: &mut Env) {
        env.timers.disarm(TimerKey::Participation(self.slot));
        env.timers.disarm(TimerKey::SendSpacing(self.slot));
        for (id, p) in std::mem::take(&mut self.requests) {
            env.timers.disarm(TimerKey::LlmDeadline(id));
            env.global.reserved = env.global.reserved.saturating_sub(p.reserved);
            env.out.push_back(Effect::CancelLlm(id));
            self.decide(
                env,
                p.correlation_id.as_deref(),
                p.user.as_deref(),
                Some(p.trigger),
                Outcome::Dropped,
                Some(Reason::ChannelRemoved),
            );
        }
        for o in std::mem::take(&mut self.outbox) {
            self.drop_outgoing(env, o, Reason::ChannelRemoved);
        }
    }
}

/// The lines of `ours` that are not in `saved`: a saved line accounts for at most one
/// of ours with the same text fingerprint within 2 s of it (clocks and delivery differ
/// a little; the same text may well be said twice, e.g. a fallback line).
fn unmatched_lines(ours: &VecDeque<(Millis, u64)>, saved: &[(u64, u64)]) -> Vec<(Millis, u64)> {
    let mut used = vec![false; saved.len()];
    let mut extra = Vec::new();
    for &(t, h) in ours {
        let twin = saved
            .iter()
            .enumerate()
            .filter(|(i, (st, sh))| !used[*i] && *sh == h && st.abs_diff(t.0) <= 2_000)
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
fn window_of(mut times: Vec<u64>, cfg: crate::config::WindowConfig) -> SlidingWindow {
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

/// One trigger's request to speak.
struct Ask<'a> {
    trigger: Trigger,
    user: Option<&'a str>,
    correlation_id: Option<&'a str>,
    probability: f64,
    cooldown: Duration,
    prompt: Prompt,
}

/// What the prompt ends with.
enum Prompt {
    /// The channel context, answering `user`'s line (`addressed`: they spoke to the bot).
    Chat { user: String, text: String, addressed: bool },
    /// The PM conversation with `user`, answering their latest message.
    Pm { user: String, text: String },
    /// A comment on a new title.
    Media(String),
    /// The contextual yes/no question.
    ParticipationCheck,
    /// The contextual reply after a yes.
    Contextual,
}

/// Reasons specific to one trigger: another matching trigger may still fire.
fn reason_is_per_trigger(reason: Reason) -> bool {
    matches!(reason, Reason::Probability | Reason::TriggerCooldown)
}

/// Case-insensitive name equality; CyTube names are ASCII, so that path allocates nothing.
fn same_name(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b) || (!(a.is_ascii() && b.is_ascii()) && a.to_lowercase() == b.to_lowercase())
}

/// Does a participation answer mean yes? ("Yes.", "yes, …", "YES!")
fn is_yes(text: &str) -> bool {
    let t = text.trim_start_matches(|c: char| !c.is_alphanumeric());
    t.get(..3).is_some_and(|w| w.eq_ignore_ascii_case("yes")) && !t[3..].starts_with(|c: char| c.is_alphanumeric())
}
