//! The engine: routes inputs to channels, fires timers, swaps configs, and queues effects.
//!
//! It owns the channels, the timer table and the effect queue, and the engine-wide
//! timers (lease upkeep, the lifecycle heartbeat); decisions themselves live in
//! `channel/`. `handle` is infallible: malformed input becomes a counted decision.
//! Time only moves forward: a `now` earlier than one already seen is treated as the
//! latest seen, so clock steps backwards cannot reopen a window or a cooldown.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use crate::budget::Ledger;
pub use crate::channel::RECENT_DECISIONS;
use crate::channel::{Channel, ChannelStats, ChannelStatus, CompileCache, Env};
use crate::config::Config;
use crate::contract::{Decision, Effect, Input, Outcome, Reason};
use crate::event::{self, Event};
use crate::lease::{Intent, LeaseEvent, LeaseOp, LeaseStats, Leases, LimitSnapshot, Transition};
use crate::time::Millis;
use crate::timer::{TimerKey, Timers};

/// Kryten's lifecycle heartbeat period (kryten-py sends one every 30 s).
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// The step context a channel works in, borrowed field by field from the engine (so a
/// channel can be borrowed mutably at the same time).
macro_rules! env {
    ($e:ident) => {
        Env {
            now: $e.now,
            start: $e.start,
            bot: &$e.config.bot,
            llm: &$e.config.llm,
            moderation: &$e.config.moderation,
            shutting_down: $e.shutting_down,
            connected: $e.connected,
            outbound_queue: $e.config.nats.outbound_queue,
            global: &mut $e.spend,
            out: &mut $e.effects,
            timers: &mut $e.timers,
        }
    };
}

/// The bot's decision logic for every configured channel. Cloning gives an independent
/// engine in the same state (compiled patterns are shared).
#[derive(Clone)]
pub struct Engine {
    config: Config,
    seed: u64,
    start: Millis,
    now: Millis,
    channels: BTreeMap<u32, Channel>,
    /// ASCII-lower-cased channel name → slot. Slots are never reused, so request ids
    /// and timers of a removed channel can never reach a new one.
    slots: HashMap<String, u32>,
    next_slot: u32,
    timers: Timers,
    effects: VecDeque<Effect>,
    shutting_down: bool,
    shutdown_reported: bool,
    connected: bool,
    /// Bodies that were not envelopes, or named no configured channel.
    unrouted: u64,
    /// Tokens spent over all channels.
    spend: Ledger,
    /// Channel leases when `ha.enabled`.
    ha: Option<Leases>,
    /// Recent spells without NATS (start, end; `None` while it lasts), bounded: while
    /// down, this instance did not see what another instance said.
    outages: VecDeque<(Millis, Option<Millis>)>,
}

impl Engine {
    /// Creates the engine at `now` (its start: chat older than this is backlog) with the
    /// seed of every channel's RNG.
    pub fn new(config: Config, seed: u64, now: Millis) -> Engine {
        let mut engine = Engine {
            config: config.clone(),
            seed,
            start: now,
            now,
            channels: BTreeMap::new(),
            slots: HashMap::new(),
            next_slot: 0,
            timers: Timers::default(),
            effects: VecDeque::new(),
            shutting_down: false,
            shutdown_reported: false,
            connected: true,
            unrouted: 0,
            spend: Ledger::default(),
            ha: config.ha.enabled.then(|| Leases::new(&config.ha)),
            outages: VecDeque::new(),
        };
        engine.apply_config(config);
        engine.timers.arm(TimerKey::Heartbeat, now.after(engine.heartbeat_every()));
        engine
    }

    /// How often this instance says it is alive: with `ha`, peers must hear it at least
    /// once per lease renewal period.
    fn heartbeat_every(&self) -> Duration {
        self.ha.as_ref().map_or(HEARTBEAT, |h| h.renew_every().min(HEARTBEAT))
    }

    /// Feeds one input at time `now`. Afterwards drain [`Engine::poll_effect`] until it
    /// returns `None`, then wake again at [`Engine::poll_timeout`] with [`Input::Tick`].
    pub fn handle(&mut self, now: Millis, input: Input) {
        self.now = self.now.max(now);
        self.fire_timers();
        match input {
            Input::Event { subject, body } => self.on_event(subject.as_deref(), &body),
            Input::LlmDone { id, result } => {
                let slot = (id.0 >> 32) as u32;
                self.with_channel(slot, |ch, env| ch.on_llm_done(env, id, result));
            }
            Input::Tick => {}
            Input::Control { channel, action } => {
                if let Some(slot) = self.slot_of(&channel) {
                    self.with_channel(slot, |ch, env| ch.control(env, action));
                }
            }
            Input::RoomState(snapshot) => {
                if let Some(slot) = self.slot_of(&snapshot.channel) {
                    self.with_channel(slot, |ch, env| ch.restore_room(env, &snapshot));
                }
            }
            Input::Reload(config) => self.apply_config(*config),
            Input::Shutdown => {
                self.shutting_down = true;
                for slot in self.channels.keys() {
                    self.timers.disarm(TimerKey::Participation(*slot));
                }
                if let Some(ha) = &mut self.ha {
                    ha.shut_down();
                }
                self.lease_tick();
            }
            Input::Lease(ev) => {
                // A save's answer: the channel counts the lines no save holds.
                let saved = match &ev {
                    LeaseEvent::Saved { channel } => self.slot_of(channel).map(|s| (s, true)),
                    LeaseEvent::SaveFailed { channel } => self.slot_of(channel).map(|s| (s, false)),
                    _ => None,
                };
                if let Some((slot, ok)) = saved {
                    self.with_channel(slot, |ch, env| ch.saved(env, ok));
                }
                if let Some(ha) = &mut self.ha {
                    let transitions = ha.on_event(self.now, ev);
                    self.apply_transitions(transitions);
                    self.lease_tick();
                }
            }
            Input::Connection { up } => {
                if up != self.connected {
                    if up {
                        if let Some(o) = self.outages.back_mut() {
                            o.1 = Some(self.now);
                        }
                    } else {
                        if self.outages.len() == 32 {
                            self.outages.pop_front();
                        }
                        self.outages.push_back((self.now, None));
                    }
                }
                self.connected = up;
                if up {
                    let slots: Vec<u32> = self.channels.keys().copied().collect();
                    for slot in slots {
                        self.with_channel(slot, Channel::flush);
                    }
                }
            }
        }
        if self.shutting_down
            && !self.shutdown_reported
            && self.channels.values().all(Channel::is_idle)
            && self.ha.as_ref().is_none_or(Leases::all_released)
        {
            self.shutdown_reported = true;
            self.effects.push_back(Effect::ShutdownComplete);
        }
    }

    /// Feeds one input and hands back every effect it produced, in order: the drain rule
    /// in one call. Both shells (the daemon and the simulator) step the engine with this,
    /// so they cannot follow different rules. Dropping the iterator early discards the
    /// effects not taken.
    pub fn step(&mut self, now: Millis, input: Input) -> std::collections::vec_deque::Drain<'_, Effect> {
        self.handle(now, input);
        self.effects.drain(..)
    }

    /// The next effect to execute, in order.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When the engine next needs a `Tick`, if ever.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.timers.next()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The latest time the engine has seen.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// Per-channel status for /health, in slot (config) order.
    pub fn status(&self) -> Vec<ChannelStatus> {
        self.channels.values().map(|c| c.status(self.now)).collect()
    }

    /// Per-channel event counters, by channel name.
    pub fn stats(&self) -> BTreeMap<String, ChannelStats> {
        self.channels.values().map(|c| (c.cfg.name.clone(), c.stats.clone())).collect()
    }

    /// Bodies that could not be routed to a channel (not an envelope, unknown channel).
    pub fn unrouted(&self) -> u64 {
        self.unrouted
    }

    /// Whether `channel` is configured (case-insensitive).
    pub fn has_channel(&self, channel: &str) -> bool {
        self.slot_of(channel).is_some()
    }

    /// The last `n` decisions of `channel`, newest last.
    pub fn recent_decisions(&self, channel: &str, n: usize) -> Vec<crate::contract::Decision> {
        self.slot_of(channel).and_then(|s| self.channels.get(&s)).map(|c| c.recent_decisions(n)).unwrap_or_default()
    }

    /// The messages a request of `kind` in `channel` would send now (answering `line`,
    /// user and text, when given), built exactly as a real request's; nothing changes.
    /// `None` for an unknown channel.
    pub fn preview_prompt(
        &mut self,
        channel: &str,
        kind: crate::template::Kind,
        line: Option<(&str, &str)>,
    ) -> Option<Vec<crate::contract::PromptMessage>> {
        let slot = self.slot_of(channel)?;
        let ch = self.channels.get(&slot)?;
        let env = env!(self);
        Some(ch.preview(&env, kind, line))
    }

    /// Whether `channel` is muted.
    pub fn is_muted(&self, channel: &str) -> bool {
        self.slot_of(channel).and_then(|s| self.channels.get(&s)).is_some_and(|c| c.is_muted(self.now))
    }

    /// Tokens spent over all channels in the last hour and day.
    pub fn spend(&self) -> (u64, u64) {
        (self.spend.hour(self.now), self.spend.day(self.now))
    }

    /// True once shutdown was requested.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    fn with_channel(&mut self, slot: u32, f: impl FnOnce(&mut Channel, &mut Env)) {
        let Some(ch) = self.channels.get_mut(&slot) else { return };
        let mut env = env!(self);
        f(ch, &mut env);
        if let Some(ha) = &mut self.ha {
            if ch.take_dirty() {
                ha.mark_dirty(&ch.cfg.name, self.now, ch.save_urgent());
                if let Some(t) = ha.next_deadline(self.now) {
                    self.timers.arm(TimerKey::Leases, t);
                }
            }
            // The last reply of a shutting-down channel left: its lease can go.
            if self.shutting_down && ch.is_idle() && ha.owns(&ch.cfg.name, self.now) {
                self.timers.arm(TimerKey::Leases, self.now);
            }
        }
    }

    /// Lease statistics when `ha` is on.
    pub fn lease_stats(&self) -> Option<LeaseStats> {
        self.ha.as_ref().map(|h| h.stats(self.now))
    }

    /// Channels that have had no owner anywhere (as far as this instance can tell) for
    /// longer than `ha.lease_ttl`, with how long (`ha` only).
    pub fn lease_orphans(&self) -> Vec<(String, std::time::Duration)> {
        let Some(ha) = &self.ha else { return Vec::new() };
        ha.orphans(self.now).into_iter().map(|(name, since)| (name, self.now.since(since))).collect()
    }

    /// Who speaks for `channel` as far as this instance knows (`ha` only): this
    /// instance's id when it holds the lease.
    pub fn lease_owner(&self, channel: &str) -> Option<&str> {
        self.ha.as_ref().and_then(|h| h.owner(channel))
    }

    /// Lease upkeep: apply expiries, emit due operations, re-arm the lease timer.
    fn lease_tick(&mut self) {
        let Some(ha) = &mut self.ha else { return };
        let channels = &self.channels;
        let slots = &self.slots;
        let idle = |name: &str| {
            slots.get(&name.to_ascii_lowercase()).and_then(|s| channels.get(s)).is_none_or(Channel::is_idle)
        };
        let (transitions, intents) = ha.tick(self.now, idle);
        if let Some(t) = ha.next_deadline(self.now) {
            self.timers.arm(TimerKey::Leases, t);
        }
        self.apply_transitions(transitions);
        self.emit_intents(intents);
    }

    fn apply_transitions(&mut self, transitions: Vec<Transition>) {
        for t in transitions {
            match t {
                Transition::Gained(name, state) => {
                    let unseen = state.as_ref().and_then(|s| self.unseen_since(Millis(s.at)));
                    if let Some(slot) = self.slot_of(&name) {
                        self.with_channel(slot, |ch, env| ch.gain_lease(env, state, unseen));
                    }
                }
                Transition::Lost(name) => {
                    if let Some(slot) = self.slot_of(&name) {
                        self.with_channel(slot, Channel::lose_lease);
                    }
                }
            }
        }
    }

    /// The latest time since `at` (another instance's clock: clocks are assumed within
    /// a second of each other) at which this instance could have missed the bot's own
    /// lines: it was not running yet, or NATS was down. None: it saw everything.
    fn unseen_since(&self, at: Millis) -> Option<Millis> {
        const SKEW: std::time::Duration = std::time::Duration::from_secs(1);
        let from = at.before(SKEW);
        let started = (self.start > from).then_some(self.start);
        let cut_off = self.outages.iter().map(|&(_, up)| up.unwrap_or(self.now)).filter(|&up| up > from).max();
        started.max(cut_off).map(|t| t.min(self.now))
    }

    fn emit_intents(&mut self, intents: Vec<Intent>) {
        for i in intents {
            let snapshot = |engine: &mut Engine, name: &str, to_save: bool| {
                let now = engine.now;
                engine
                    .slot_of(name)
                    .and_then(|s| engine.channels.get_mut(&s))
                    .map(|c| if to_save { c.snapshot_to_save(now) } else { c.snapshot(now) })
                    .unwrap_or_default()
            };
            let op = match i {
                Intent::Acquire(channel) => LeaseOp::Acquire { channel },
                Intent::Renew(channel, revision) => LeaseOp::Renew { channel, revision },
                Intent::Save(channel) => {
                    let state = snapshot(self, &channel, true);
                    LeaseOp::Save { channel, state }
                }
                Intent::Release(channel, revision) => {
                    let state = LimitSnapshot { released: true, ..snapshot(self, &channel, false) };
                    LeaseOp::Release { channel, revision, state }
                }
            };
            self.effects.push_back(Effect::Lease(op));
        }
    }

    fn fire_timers(&mut self) {
        // Bounded: each timer fires once per call and re-arms only into the future.
        let mut budget = self.timers.len() + 16;
        while let Some((_, key)) = self.timers.pop_due(self.now) {
            match key {
                TimerKey::Participation(slot) => self.with_channel(slot, Channel::on_participation_timer),
                TimerKey::SendSpacing(slot) => self.with_channel(slot, Channel::flush),
                TimerKey::LlmDeadline(id) => self.with_channel((id.0 >> 32) as u32, |ch, env| ch.on_deadline(env, id)),
                TimerKey::Leases => self.lease_tick(),
                TimerKey::Heartbeat => {
                    self.effects.push_back(Effect::Heartbeat);
                    self.timers.arm(TimerKey::Heartbeat, self.now.after(self.heartbeat_every()));
                }
            }
            budget -= 1;
            if budget == 0 {
                break;
            }
        }
    }

    fn slot_of(&self, name: &str) -> Option<u32> {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.slots.get(&name.to_ascii_lowercase()).copied()
        } else {
            self.slots.get(name).copied()
        }
    }

    fn unrouted_decision(&mut self, channel: &str, correlation_id: Option<String>, reason: Reason) {
        self.unrouted += 1;
        self.effects.push_back(Effect::Decision(Decision {
            at: self.now,
            channel: channel.to_owned(),
            correlation_id,
            user: None,
            trigger: None,
            outcome: Outcome::Ignored,
            reason: Some(reason),
        }));
    }

    fn on_event(&mut self, subject: Option<&str>, body: &[u8]) {
        let env = match event::parse(body, subject) {
            Ok(env) => env,
            Err(_) => {
                let channel = subject.and_then(event::split_subject).map_or("", |(c, _)| c);
                return self.unrouted_decision(channel, None, Reason::MalformedEvent);
            }
        };
        let Some(slot) = self.slot_of(&env.channel) else {
            return self.unrouted_decision(
                &env.channel,
                env.correlation_id.map(Cow::into_owned),
                Reason::UnknownChannel,
            );
        };
        let cid = env.correlation_id;
        self.with_channel(slot, |ch, e| {
            ch.count_event(env.event.kind());
            let message = match &env.event {
                Event::Chat(m) | Event::Pm { message: m, .. } => Some(m),
                _ => None,
            };
            let is_media = matches!(env.event, Event::MediaChange(_));
            if (message.is_some() || is_media) && !ch.first_sighting(e, cid.as_deref(), message) {
                return;
            }
            if ch.on_room(e, &env.event) {
                if let Event::MediaChange(media) = &env.event {
                    ch.on_media(e, media, cid.as_deref());
                }
                return;
            }
            match env.event {
                Event::Chat(m) => ch.on_chat(e, m, cid.as_deref()),
                Event::Pm { message, to } => ch.on_pm(e, message, &to, cid.as_deref()),
                Event::Malformed { .. } => e.out.push_back(Effect::Decision(Decision {
                    at: e.now,
                    channel: ch.cfg.name.clone(),
                    correlation_id: cid.map(Cow::into_owned),
                    user: None,
                    trigger: None,
                    outcome: Outcome::Ignored,
                    reason: Some(Reason::MalformedEvent),
                })),
                // Room events were taken above; the rest are only counted.
                _ => {}
            }
        });
    }

    /// Installs `config`: channels that stay keep their state, removed ones are dropped
    /// (their requests cancelled), added ones start empty.
    fn apply_config(&mut self, config: Config) {
        let mut keep: HashMap<String, u32> = HashMap::new();
        let mut cache = CompileCache::default();
        for cc in &config.channels {
            let compiled = cache.get(&config.bot, cc);
            let key = cc.name.to_ascii_lowercase();
            let slot = match self.slots.get(&key) {
                Some(&slot) => {
                    if let Some(ch) = self.channels.get_mut(&slot) {
                        ch.reconfigure(&config.bot, cc.clone(), compiled, self.now, &mut self.timers);
                        ch.set_global_budget(config.llm.budget);
                    }
                    slot
                }
                None => {
                    let slot = self.next_slot;
                    self.next_slot += 1;
                    let mut ch =
                        Channel::new(slot, &config.bot, cc.clone(), compiled, self.seed, self.now, &mut self.timers);
                    ch.set_global_budget(config.llm.budget);
                    self.channels.insert(slot, ch);
                    slot
                }
            };
            keep.insert(key, slot);
        }
        let removed: Vec<u32> = self.slots.values().copied().filter(|s| !keep.values().any(|k| k == s)).collect();
        let added: Vec<u32> = keep.values().copied().filter(|s| !self.slots.values().any(|k| k == s)).collect();
        self.slots = keep;
        if let Some(ha) = &mut self.ha {
            // A standby until the lease is ours.
            for slot in &added {
                if let Some(ch) = self.channels.get_mut(slot) {
                    ch.owner = false;
                }
            }
            let names: Vec<String> = config.channels.iter().map(|c| c.name.clone()).collect();
            let intents = ha.set_channels(&names, self.now);
            self.timers.arm(TimerKey::Leases, self.now);
            self.config = config;
            self.emit_intents(intents);
        } else {
            self.config = config;
        }
        for slot in removed {
            if let Some(ch) = self.channels.remove(&slot) {
                let mut env = env!(self);
                ch.remove(&mut env);
            }
        }
    }
}
