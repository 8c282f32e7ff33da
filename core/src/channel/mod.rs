//! One channel's state and decisions: which trigger fires, which limit silences it, and
//! what becomes of each reply.
//!
//! A channel never looks at another channel: its RNG, request ids, limits and timers are
//! its own, which is what makes channel isolation hold (and testable). It never emits an
//! effect except through [`Env`], and never reads time except `env.now`.
//!
//! The state is split by what it owns, each part in its own file with its own rules:
//! `seen.rs` (events already seen), `users.rs` (per-user windows, loop guard,
//! penalties), `limits.rs` (the channel's own limit marks), `breaker.rs` (provider
//! health), `outbox.rs` (messages waiting for their send slot), `handover.rs` (what a
//! new lease owner needs), `prompt.rs` (the messages a request sends), `room.rs` (what
//! is playing, who is here) and `moderation.rs` (moderators' command lines). This file
//! holds the flow between them: events in, checks, requests, answers, sends.

mod breaker;
mod handover;
mod limits;
mod moderation;
mod outbox;
mod prompt;
pub(crate) mod room;
mod seen;
mod users;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use self::breaker::Breakers;
use self::handover::Handover;
use self::limits::Marks;
use self::moderation::ModCommand;
use self::outbox::{NotReady, Outbox, Outgoing};
use self::prompt::Prompt;
use self::room::Room;
use self::seen::{fmix64, key_of, Seen};
use self::users::Users;
use crate::budget::{self, Ledger};
use crate::config::{BotConfig, ChannelConfig, GlobalBudget, LlmConfig, ModerationConfig};
use crate::context::{ChatLine, Context, PmThreads};
use crate::contract::{
    Cause, Command, CommandKind, Control, Decision, Effect, LlmCall, LlmError, LlmReply, ModerationRecord, Outcome,
    PromptMessage, Purpose, Reason, RequestId,
};
use crate::event::{Event, Media, Message};
use crate::lease::LimitSnapshot;
use crate::response::{Recent, Rejection, Rules};
use crate::template::{self, Templates};
use crate::time::Millis;
use crate::timer::{TimerKey, Timers};
use crate::trigger::{Matcher, Trigger};

/// Event kinds counted per channel before the rest go under `other`.
const MAX_EVENT_KINDS: usize = 64;
/// The last decisions kept per channel (for `decisions.recent`).
pub const RECENT_DECISIONS: usize = 200;

/// A channel's compiled patterns and templates, shared by every channel with the same
/// settings: they are the largest part of a channel's memory, and most channels share
/// `defaults`.
#[derive(Clone)]
pub(crate) struct Compiled {
    matcher: Arc<Matcher>,
    rules: Arc<Rules>,
    templates: Arc<Templates>,
    timezone: jiff::tz::TimeZone,
}

/// What a compiled entry depends on.
type CompileKey = (Vec<crate::config::KeywordConfig>, crate::config::ResponseConfig, [String; 7], String);

/// Compiles once per distinct (keywords, response rules, templates, time zone) in a config.
#[derive(Default)]
pub(crate) struct CompileCache {
    entries: Vec<(CompileKey, Compiled)>,
}

impl CompileCache {
    pub fn get(&mut self, bot: &BotConfig, cfg: &ChannelConfig) -> Compiled {
        let key: CompileKey =
            (cfg.triggers.keywords.clone(), cfg.response.clone(), cfg.template_sources(), cfg.timezone.clone());
        if let Some((_, c)) = self.entries.iter().find(|(k, _)| *k == key) {
            return c.clone();
        }
        let compiled = Compiled {
            matcher: Arc::new(Matcher::new(bot, &key.0)),
            rules: Arc::new(Rules::new(&key.1, bot, &cfg.system_prompt)),
            templates: Arc::new(Templates::new(&key.2)),
            // Checked by `Config::parse`.
            timezone: jiff::tz::db().get(&key.3).unwrap_or(jiff::tz::TimeZone::UTC),
        };
        self.entries.push((key, compiled.clone()));
        compiled
    }
}

/// What a channel needs from the engine for one step.
pub(crate) struct Env<'a> {
    pub now: Millis,
    pub start: Millis,
    pub bot: &'a BotConfig,
    pub llm: &'a LlmConfig,
    pub moderation: &'a ModerationConfig,
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
    /// Muted (by an operator or a moderator).
    pub muted: bool,
    /// Users present, as the robot reported them.
    pub users: usize,
    /// What is playing, when known.
    pub playing: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Audience {
    Channel,
    Pm(String),
}

/// A reply (or participation question) from its firing until it is sent or dropped.
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
    /// When the first request for it was made (fallback providers included).
    asked_at: Millis,
}

#[derive(Clone)]
pub(crate) struct Channel {
    pub slot: u32,
    pub cfg: ChannelConfig,
    matcher: Arc<Matcher>,
    rules: Arc<Rules>,
    templates: Arc<Templates>,
    timezone: jiff::tz::TimeZone,
    /// The system prompt, when its template names only fixed values (rendered once).
    system_static: Option<String>,
    rng: ChaCha8Rng,
    seq: u32,
    context: Context,
    pm_threads: PmThreads,
    users: Users,
    marks: Marks,
    last_media: Option<u64>,
    requests: BTreeMap<RequestId, Pending>,
    outbox: Outbox,
    recent: Recent,
    new_lines: usize,
    seen: Seen,
    fallback_next: usize,
    spend: Ledger,
    global_budget: GlobalBudget,
    breakers: Breakers,
    /// What is playing and who is here.
    room: Room,
    /// Replies sent (per minute, for `status`).
    replies: Ledger,
    /// Paused by an operator or a moderator: until then, or until unmuted (`None`).
    mute: Option<Option<Millis>>,
    /// May speak: always without `ha`; with it, while this instance holds the lease.
    /// A standby still reads everything (warm context) and counts the bot's own lines.
    pub owner: bool,
    handover: Handover,
    /// The last decisions, for `decisions.recent` (bounded).
    recent_decisions: VecDeque<Decision>,
    pub stats: ChannelStats,
}

impl Channel {
    pub fn new(
        slot: u32,
        bot: &BotConfig,
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
            system_static: compiled.templates.fixed_system(&prompt::bot_vars(bot), &cfg.name),
            matcher: compiled.matcher,
            rules: compiled.rules,
            templates: compiled.templates,
            timezone: compiled.timezone,
            rng,
            seq: 0,
            context: Context::new(cfg.context.max_messages, cfg.context.max_age),
            pm_threads: PmThreads::default(),
            users: Users::default(),
            marks: Marks::default(),
            last_media: None,
            requests: BTreeMap::new(),
            outbox: Outbox::default(),
            recent: Recent::default(),
            new_lines: 0,
            seen,
            fallback_next: 0,
            spend: Ledger::default(),
            global_budget: GlobalBudget::default(),
            breakers: Breakers::default(),
            room: Room::default(),
            replies: Ledger::default(),
            mute: None,
            owner: true,
            handover: Handover::default(),
            recent_decisions: VecDeque::new(),
            stats: ChannelStats::default(),
            cfg,
        };
        ch.arm_participation(now, timers);
        ch
    }

    /// Applies a reloaded config, keeping context, limits and queues.
    pub fn reconfigure(
        &mut self,
        bot: &BotConfig,
        cfg: ChannelConfig,
        compiled: Compiled,
        now: Millis,
        timers: &mut Timers,
    ) {
        self.system_static = compiled.templates.fixed_system(&prompt::bot_vars(bot), &cfg.name);
        Compiled { matcher: self.matcher, rules: self.rules, templates: self.templates, timezone: self.timezone } =
            compiled;
        self.context.resize(cfg.context.max_messages, cfg.context.max_age);
        self.pm_threads.resize(cfg.context.max_messages, cfg.context.max_age);
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

    /// Muted at `now`.
    pub fn is_muted(&self, now: Millis) -> bool {
        self.mute.is_some_and(|until| until.is_none_or(|t| now < t))
    }

    /// Applies an operator control (from NATS, or a moderator's command from chat).
    pub fn control(&mut self, env: &mut Env, action: Control) {
        match action {
            Control::Mute(d) => {
                self.mute = Some(d.map(|d| env.now.after(d)));
                // Replies already waiting are not said either.
                self.drop_queued(env, Reason::Muted);
            }
            Control::Unmute => self.mute = None,
            Control::ClearContext => {
                self.context.clear();
                self.pm_threads.clear();
                self.new_lines = 0;
                self.room.forget_media();
            }
        }
    }

    /// A room event (what is playing, who is here); false for any other event.
    pub fn on_room(&mut self, env: &mut Env, event: &Event<'_>) -> bool {
        self.room.apply(event, env.now)
    }

    /// Kryten-Robot's stored room state, read at start or after a reconnect.
    pub fn restore_room(&mut self, env: &mut Env, snapshot: &crate::contract::RoomSnapshot) {
        self.room.restore(snapshot, env.now);
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
            muted: self.is_muted(now),
            users: self.room.users(),
            playing: self.room.playing().map(|(_, t)| t.to_owned()),
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

    /// A `dropped` decision about a pending reply (the caller settles it, or not).
    fn drop_reply(&mut self, env: &mut Env, p: &Pending, reason: Reason) {
        self.decide(
            env,
            p.correlation_id.as_deref(),
            p.user.as_deref(),
            Some(p.trigger),
            Outcome::Dropped,
            Some(reason),
        );
    }

    /// Records the event's identity; false (and an `ignored` decision) for a repeat.
    pub fn first_sighting(&mut self, env: &mut Env, correlation_id: Option<&str>, msg: Option<&Message<'_>>) -> bool {
        let fresh = self.seen.first_sighting(correlation_id, msg);
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
                self.marks.window.record(at, self.cfg.limits.per_channel);
                self.outbox.last_send = self.outbox.last_send.max(Some(at));
                self.handover.log_sent(at, &msg.text);
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
        if let Some(cmd) = self.command_in(env, &msg) {
            return self.moderate(env, &msg.user, cmd, cid);
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
                    keyword: match trigger {
                        Trigger::Keyword(k) => self.matcher.keyword_in(k, &msg.text),
                        _ => None,
                    },
                },
            };
            match self.consider(env, ask) {
                Ok(()) => break,
                Err(reason) if !reason_is_per_trigger(reason) => break,
                Err(_) => {}
            }
        }
    }

    fn pm_thread(&mut self, now: Millis, user_lc: &str) -> &mut Context {
        let (max, age) = (self.cfg.context.max_messages, self.cfg.context.max_age);
        self.pm_threads.thread(user_lc, now, max, age)
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
        if let Some(cmd) = self.command_in(env, &msg) {
            return self.moderate(env, &msg.user, cmd, cid);
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

    pub fn on_media(&mut self, env: &mut Env, media: &Media, correlation_id: Option<&str>) {
        let (id, title, fresh) = (media.id.as_str(), media.title.as_str(), media.is_fresh());
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

    // ------------------------------------------------------------------ moderators

    /// The moderator command in `msg`, when moderation is on and it is one.
    fn command_in(&self, env: &Env, msg: &Message<'_>) -> Option<ModCommand> {
        let m = env.moderation;
        if !m.enabled || !msg.text.trim_start().starts_with(m.prefix.as_str()) {
            return None;
        }
        moderation::parse(&msg.text, &m.prefix, env.bot)
    }

    /// Obeys a moderator's command, or ignores it (`not_moderator`) from anyone whose
    /// rank, as the robot reported it, is below `moderation.min_rank`. Either way the
    /// line is not conversation: never in the context, never sent to the LLM. Mute,
    /// unmute and forget are the NATS controls; the answer goes to the moderator by PM
    /// (only from the instance that speaks for the channel; a standby obeys silently, so
    /// that a takeover keeps what the moderator said).
    fn moderate(&mut self, env: &mut Env, user: &str, cmd: ModCommand, cid: Option<&str>) {
        let trigger = Some(Trigger::Command);
        if self.room.rank(user) < env.moderation.min_rank {
            return self.ignore(env, cid, Some(user), trigger, Reason::NotModerator);
        }
        let name = self.cfg.name.clone();
        let (prefix, bot) = (env.moderation.prefix.as_str(), env.bot.name.as_str());
        let (changed, answer): (String, Vec<String>) = match &cmd {
            ModCommand::Mute(d) => {
                let was = self.is_muted(env.now);
                self.control(env, Control::Mute(*d));
                let how = d.map_or_else(|| "until unmuted".to_owned(), |d| format!("for {}", moderation::short(d)));
                let again = if was { " (was muted already)" } else { "" };
                (format!("muted {how}"), vec![format!("Muted in {name} {how}{again}. {prefix}{bot} unmute to undo.")])
            }
            ModCommand::Unmute => {
                let was = self.is_muted(env.now);
                self.control(env, Control::Unmute);
                if was {
                    ("unmuted".into(), vec![format!("Speaking again in {name}.")])
                } else {
                    ("nothing: not muted".into(), vec![format!("I was not muted in {name}.")])
                }
            }
            ModCommand::Forget => {
                let lines = self.context.len();
                self.control(env, Control::ClearContext);
                (
                    format!("context cleared ({lines} lines)"),
                    vec![format!("Forgot the conversation in {name} ({lines} lines) and what is playing.")],
                )
            }
            ModCommand::Status => ("nothing".into(), self.status_lines(env)),
            ModCommand::Why => ("nothing".into(), self.why_lines(env)),
            ModCommand::Help => ("nothing".into(), vec![moderation::help(prefix, bot)]),
            ModCommand::BadDuration(arg) => (
                "nothing: bad duration".into(),
                vec![format!("\"{arg}\" is not a duration: write e.g. {prefix}{bot} mute 10m, or just mute.")],
            ),
            ModCommand::Unknown(word) => (
                "nothing: unknown command".into(),
                vec![format!("Unknown command \"{word}\". {}", moderation::help(prefix, bot))],
            ),
        };
        env.out.push_back(Effect::Moderation(ModerationRecord {
            at: env.now,
            channel: name,
            correlation_id: cid.map(str::to_owned),
            user: user.to_owned(),
            command: cmd.label(),
            changed,
        }));
        if !self.owner {
            return self.decide(env, cid, Some(user), trigger, Outcome::Suppressed, Some(Reason::NotOwner));
        }
        let max_len = self.cfg.response.max_length;
        for text in moderation::pack(&answer, max_len, 3) {
            let o = Outgoing {
                command: Command {
                    channel: self.cfg.name.clone(),
                    kind: CommandKind::Pm { to: user.to_owned(), text },
                    correlation_id: cid.map(str::to_owned),
                    cause: Some(Cause { trigger: Trigger::Command, llm_ms: None }),
                },
                trigger: Trigger::Command,
                user: None,
                first: true,
                notice: true,
                reason: None,
            };
            self.queue(env, o);
        }
        self.flush(env);
    }

    /// Queues a message for its send slot; the oldest beyond `nats.outbound_queue` are
    /// dropped (`queue_full`).
    fn queue(&mut self, env: &mut Env, o: Outgoing) {
        for dropped in self.outbox.push(o, env.outbound_queue) {
            self.drop_outgoing(env, dropped, Reason::QueueFull);
        }
    }

    /// `status`: muted or not, the providers, replies in the last hour, budget left.
    fn status_lines(&self, env: &Env) -> Vec<String> {
        let now = env.now;
        let state = match self.mute {
            Some(Some(t)) if now < t => format!("muted for {} more", moderation::short(t.since(now))),
            Some(None) => "muted until unmuted".into(),
            _ => "speaking".into(),
        };
        let providers = self.breakers.describe(&self.cfg.providers, now).join(", ");
        let replies = self.replies.hour(now);
        let b = self.cfg.budget;
        let budget = match (b.tokens_per_hour, b.tokens_per_day) {
            (0, 0) => "no token budget".to_owned(),
            (h, 0) => format!("{} of {h} tokens left this hour", h.saturating_sub(self.spend.hour(now))),
            (0, d) => format!("{} of {d} tokens left today", d.saturating_sub(self.spend.day(now))),
            (h, d) => format!(
                "{} of {h} tokens left this hour, {} of {d} today",
                h.saturating_sub(self.spend.hour(now)),
                d.saturating_sub(self.spend.day(now))
            ),
        };
        let who = if self.room.users() > 0 { format!(", {} here", self.room.users()) } else { String::new() };
        vec![format!(
            "{}: {state}. Providers: {providers}. {replies} replies in the last hour; {budget}{who}.",
            self.cfg.name
        )]
    }

    /// `why`: the last few silences, newest first, in words.
    fn why_lines(&self, env: &Env) -> Vec<String> {
        let silent = |d: &&Decision| {
            matches!(d.outcome, Outcome::Suppressed | Outcome::Dropped)
                && d.trigger != Some(Trigger::Command)
                && d.reason.is_some()
        };
        let lines: Vec<String> = self
            .recent_decisions
            .iter()
            .rev()
            .filter(silent)
            .take(5)
            .map(|d| {
                let ago = moderation::short(Duration::from_secs(env.now.since(d.at).as_secs()));
                let what = match (&d.user, d.trigger) {
                    (Some(u), Some(t)) => format!("{u}'s {}", t.label().replace('_', " ")),
                    (None, Some(t)) => t.label().replace('_', " "),
                    (u, None) => u.clone().unwrap_or_default(),
                };
                format!("{ago} ago, {what}: {}.", d.reason.map_or("", Reason::describe))
            })
            .collect();
        if lines.is_empty() {
            return vec![format!("No recent silences in {}.", self.cfg.name)];
        }
        std::iter::once(format!("Last silences in {}:", self.cfg.name)).chain(lines).collect()
    }

    // ------------------------------------------------------------------ deciding to speak

    /// Runs the checks for one trigger and fires it (an LLM request) if all pass. The
    /// order is fixed: shutdown, the trigger's own cooldown, its probability, then the
    /// channel's limits; so a limit is only charged with silences that would otherwise
    /// have been replies.
    fn consider(&mut self, env: &mut Env, ask: Ask) -> Result<(), Reason> {
        if let Err(reason) = self.check(env, &ask) {
            self.decide(env, ask.correlation_id, ask.user, Some(ask.trigger), Outcome::Suppressed, Some(reason));
            return Err(reason);
        }
        self.decide(env, ask.correlation_id, ask.user, Some(ask.trigger), Outcome::Fired, None);
        self.handover.mark_dirty();
        let purpose = match ask.prompt {
            Prompt::ParticipationCheck => Purpose::ParticipationCheck,
            _ => Purpose::Reply,
        };
        // A yes/no question is not a message: only replies start the cooldown.
        self.marks.fired(ask.trigger, purpose == Purpose::Reply, env.now);
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
            asked_at: env.now,
        };
        self.call(env, pending);
        Ok(())
    }

    fn check(&mut self, env: &mut Env, ask: &Ask) -> Result<(), Reason> {
        if env.shutting_down {
            return Err(Reason::ShuttingDown);
        }
        if !self.owner {
            return Err(Reason::NotOwner);
        }
        if self.is_muted(env.now) {
            return Err(Reason::Muted);
        }
        if let Some(user) = ask.user {
            if self.users.penalised(user, env.now, self.cfg.penalty) {
                return Err(Reason::Penalty);
            }
        }
        self.marks.trigger_allows(ask.trigger, ask.cooldown, &self.cfg.limits, env.now)?;
        if ask.probability < 1.0 && !self.chance(ask.probability) {
            return Err(Reason::Probability);
        }
        if let (Some(user), Prompt::Chat { text, .. }) = (ask.user, &ask.prompt) {
            let copies_us = self.recent.resembles(text);
            self.users.loop_guard(user, copies_us, text.chars().count(), env.now, self.cfg.loop_guard)?;
        }
        let verdict = self.check_limits(env.now, ask.trigger, ask.user, env.global);
        if let (Err(Reason::PerUserLimit), Some(user)) = (verdict, ask.user) {
            self.users.strike(user, env.now, self.cfg.penalty);
        }
        verdict
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
        if user.is_some_and(|u| !self.users.allows(u, now, lim.per_user)) {
            return Err(Reason::PerUserLimit);
        }
        self.marks.channel_allows(trigger, self.outbox.last_send, lim, now)
    }

    fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        let x = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        x < p
    }

    fn reserve(&mut self, user: Option<&str>) {
        self.marks.reserve();
        if let Some(u) = user {
            self.users.reserve(u);
        }
    }

    /// Ends a reply's pending state: `sent_at` records it in the windows.
    fn settle(&mut self, user: Option<&str>, sent_at: Option<Millis>) {
        let lim = &self.cfg.limits;
        self.marks.settle(sent_at, lim.per_channel);
        if sent_at.is_some() {
            self.handover.mark_dirty();
        }
        if let Some(u) = user {
            self.users.settle(u, sent_at, lim.per_user);
        }
        let now = sent_at.unwrap_or(Millis::ZERO).max(self.outbox.last_send.unwrap_or(Millis::ZERO));
        self.users.prune(now, lim.per_user.window, self.cfg.loop_guard.window);
    }

    fn next_id(&mut self) -> RequestId {
        self.seq = self.seq.wrapping_add(1);
        RequestId((u64::from(self.slot) << 32) | u64::from(self.seq))
    }

    /// Issues the LLM request for `pending` with the first usable provider of its chain;
    /// when every breaker is open, falls back at once.
    fn call(&mut self, env: &mut Env, mut pending: Pending) {
        let Some(index) = self.breakers.pick(&self.cfg.providers, pending.provider_index, env.now) else {
            self.drop_reply(env, &pending, Reason::ProvidersDown);
            if pending.purpose == Purpose::Reply {
                self.fall_back(env, &pending);
                self.flush(env);
            }
            return;
        };
        pending.provider_index = index;
        let id = self.next_id();
        let provider = self.cfg.providers[index].clone();
        let cfg = env.llm.providers.get(&provider);
        pending.reserved = budget::estimate_prompt(&pending.messages) + cfg.map_or(0, |p| u64::from(p.max_tokens));
        self.spend.reserved += pending.reserved;
        env.global.reserved += pending.reserved;
        let deadline = cfg.map_or(Duration::from_secs(30), |p| p.worst_case());
        env.timers.arm(TimerKey::LlmDeadline(id), env.now.after(deadline + DEADLINE_SLACK));
        env.out.push_back(Effect::CallLlm(LlmCall {
            id,
            channel: self.cfg.name.clone(),
            provider,
            messages: pending.messages.clone(),
            purpose: pending.purpose,
            thread: match &pending.audience {
                Audience::Pm(user) => Some(user.to_lowercase()),
                Audience::Channel => None,
            },
            trigger: pending.trigger,
            correlation_id: pending.correlation_id.clone(),
        }));
        self.requests.insert(id, pending);
    }

    /// The messages a request of `kind` would send now, answering `line` (user, text)
    /// when given, which is remembered first as the real line would be. Changes nothing.
    pub fn preview(&self, env: &Env, kind: template::Kind, line: Option<(&str, &str)>) -> Vec<PromptMessage> {
        let mut ch = self.clone();
        let (user, text) = line.unwrap_or(("viewer", ""));
        let msg = Message { user: user.into(), text: text.into(), time: Some(env.now), shadow: false, action: false };
        let chat = |addressed: bool, keyword: Option<String>| Prompt::Chat {
            user: user.to_owned(),
            text: text.to_owned(),
            addressed,
            keyword,
        };
        let p = match kind {
            template::Kind::Mention | template::Kind::System => chat(true, None),
            template::Kind::Keyword => {
                let group = ch.matcher.keywords(text).next();
                let word = group.and_then(|g| ch.matcher.keyword_in(g, text));
                chat(false, word.or_else(|| ch.cfg.triggers.keywords.first().and_then(|k| k.words.first().cloned())))
            }
            template::Kind::Pm => Prompt::Pm { user: user.to_owned(), text: text.to_owned() },
            template::Kind::MediaChange => {
                Prompt::Media(ch.room.playing().map_or_else(|| "an example video".to_owned(), |(_, t)| t.to_owned()))
            }
            template::Kind::Contextual => Prompt::Contextual,
            template::Kind::ParticipationCheck => Prompt::ParticipationCheck,
        };
        match (&p, line) {
            (Prompt::Pm { .. }, Some(_)) => {
                let now = env.now;
                ch.pm_thread(now, &user.to_lowercase()).push(Self::line(now, &msg, false));
            }
            (Prompt::Chat { .. }, Some(_)) => {
                ch.context.expire(env.now);
                ch.context.push(Self::line(env.now, &msg, false));
            }
            _ => {}
        }
        ch.prompt(env, &p)
    }

    /// The messages for a request.
    fn prompt(&self, env: &Env, p: &Prompt) -> Vec<PromptMessage> {
        let conversation = match p {
            Prompt::Pm { user, .. } => self.pm_threads.get(&user.to_lowercase()),
            _ => Some(&self.context),
        };
        let facts = self.room.facts(env.now, &env.bot.name);
        let wording = prompt::Wording {
            templates: &self.templates,
            system_static: self.system_static.as_deref(),
            bot: env.bot,
            channel: &self.cfg.name,
            facts: &facts,
            timezone: &self.timezone,
            now: env.now,
        };
        prompt::messages(&wording, conversation, p)
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
        let breaker = env.llm.providers.get(&provider).map(|p| p.breaker).unwrap_or_default();
        // A non-transient error answered (badly): the provider is reachable.
        let reachable = result.as_ref().err().is_none_or(|e| !e.is_transient());
        self.breakers.record(&provider, breaker, reachable, env.now);
        if let Ok(reply) = &result {
            let tokens = reply.usage.map_or_else(
                || budget::estimate_prompt(&pending.messages) + budget::estimate(&reply.text),
                |u| u.input_tokens + u.output_tokens,
            );
            self.spend.spend(env.now, tokens);
            env.global.spend(env.now, tokens);
        }
        match (pending.purpose, result) {
            (Purpose::ParticipationCheck, Ok(reply)) => {
                if !is_yes(&reply.text) {
                    self.contextual(env, Outcome::Suppressed, Reason::DeclinedToJoin);
                } else if let Err(reason) = self.check_limits(env.now, Trigger::Contextual, None, env.global) {
                    // The check itself passed the limits; the reply must pass them again.
                    self.contextual(env, Outcome::Suppressed, reason);
                } else {
                    self.reserve(None);
                    self.marks.last_fire = Some(env.now);
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
                        asked_at: env.now,
                    };
                    self.call(env, pending);
                }
            }
            (Purpose::ParticipationCheck, Err(e)) => {
                self.contextual(env, Outcome::Dropped, Reason::LlmFailed(e));
            }
            (Purpose::Reply, Ok(reply)) => match self.rules.process(reply_text(&reply), &self.recent) {
                Ok(parts) => self.enqueue(env, &pending, parts, None),
                Err(rejection) => {
                    let reason = match rejection {
                        Rejection::Empty => Reason::EmptyReply,
                        Rejection::Blocked => Reason::BlockedReply,
                        Rejection::Duplicate => Reason::DuplicateReply,
                        Rejection::ReasoningOnly => Reason::ReasoningOnly,
                        Rejection::PromptLeak => Reason::PromptLeak,
                    };
                    self.drop_reply(env, &pending, reason);
                    self.settle(pending.user.as_deref(), None);
                }
            },
            (Purpose::Reply, Err(e)) => {
                if e.is_transient() && pending.provider_index + 1 < self.cfg.providers.len() && !env.shutting_down {
                    let mut next = pending;
                    next.provider_index += 1;
                    return self.call(env, next);
                }
                self.drop_reply(env, &pending, Reason::LlmFailed(e));
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
        if self.is_muted(env.now) || !self.owner {
            let why = if self.owner { Reason::Muted } else { Reason::NotOwner };
            self.drop_reply(env, pending, why);
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
            let o = Outgoing {
                command: Command {
                    channel: self.cfg.name.clone(),
                    kind,
                    correlation_id: pending.correlation_id.clone(),
                    cause: Some(Cause {
                        trigger: pending.trigger,
                        llm_ms: (reason != Some(Reason::Fallback))
                            .then(|| env.now.0.saturating_sub(pending.asked_at.0)),
                    }),
                },
                trigger: pending.trigger,
                user: pending.user.clone(),
                first: i == 0,
                notice: false,
                reason,
            };
            self.queue(env, o);
        }
    }

    /// Throws away a queued message with its reason; the first part of a reply also ends
    /// the reply's pending state.
    fn drop_outgoing(&mut self, env: &mut Env, o: Outgoing, reason: Reason) {
        let cid = o.command.correlation_id.as_deref();
        self.decide(env, cid, o.user.as_deref(), Some(o.trigger), Outcome::Dropped, Some(reason));
        if o.first && !o.notice {
            self.settle(o.user.as_deref(), None);
        }
    }

    /// Throws away every queued message with `reason`.
    fn drop_queued(&mut self, env: &mut Env, reason: Reason) {
        for o in self.outbox.take_all() {
            self.drop_outgoing(env, o, reason);
        }
    }

    /// Sends what the spacing allows now and arms the timer for the rest.
    pub fn flush(&mut self, env: &mut Env) {
        if !env.connected || !self.owner {
            return;
        }
        loop {
            // `ha`: too many lines no save holds yet; the next save's answer flushes.
            if !self.handover.may_say() {
                return;
            }
            let out = match self.outbox.next_ready(env.now, self.cfg.limits.send_spacing) {
                Ok(out) => out,
                Err(NotReady::Until(at)) => return env.timers.arm(TimerKey::SendSpacing(self.slot), at),
                Err(NotReady::Empty) => return,
            };
            let reply = out.first && !out.notice;
            if reply {
                self.settle(out.user.as_deref(), Some(env.now));
                self.replies.spend(env.now, 1);
                if let Some(u) = &out.user {
                    self.users.replied(u, env.now);
                }
            }
            let user = match &out.command.kind {
                CommandKind::Pm { to, .. } => Some(to.clone()),
                CommandKind::Say { .. } => out.user.clone(),
            };
            let cid = out.command.correlation_id.clone();
            if reply {
                if let Some(c) = &cid {
                    self.handover.answered(c);
                }
                self.handover.log_sent(env.now, out.command.kind.text());
                self.handover.said();
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

    // ------------------------------------------------------------------ leases (`ha`)

    /// Limit state changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        self.handover.take_dirty()
    }

    /// This instance no longer holds the channel's lease: stop speaking. Replies waiting
    /// to be sent are dropped (`not_owner`); replies still being generated are dropped
    /// when they arrive.
    pub fn lose_lease(&mut self, env: &mut Env) {
        self.owner = false;
        self.handover.set_leased(false);
        env.timers.disarm(TimerKey::SendSpacing(self.slot));
        self.drop_queued(env, Reason::NotOwner);
    }

    /// This instance now holds the lease: merge the previous owner's saved limits into
    /// what this instance observed (its own lines echoed by the channel), then speak.
    ///
    /// `unseen`: the latest time since the saved state at which this instance could not
    /// see the room (it was not running yet, or NATS was down), if any. What a crashed
    /// owner did not save it may have said then: count the most it could have.
    pub fn gain_lease(&mut self, env: &mut Env, state: Option<LimitSnapshot>, unseen: Option<Millis>) {
        if let Some(s) = state {
            let lim = &self.cfg.limits;
            let last_send = &mut self.outbox.last_send;
            self.handover.restore(&s, &mut self.marks, last_send, &mut self.users, &mut self.seen, lim);
            if let Some(at) = unseen.filter(|_| !s.released) {
                handover::assume_unseen_sends(&mut self.marks, last_send, at, lim, env.now);
            }
        }
        self.owner = true;
        self.handover.set_leased(true);
        self.flush(env);
    }

    /// The limit state a new owner needs. Replies in flight count as sent now.
    pub fn snapshot(&mut self, now: Millis) -> LimitSnapshot {
        self.handover.snapshot(&mut self.marks, self.outbox.last_send, &mut self.users, &self.cfg.limits, now)
    }

    /// The snapshot a `Save` carries (its answer comes to [`Channel::saved`]).
    pub fn snapshot_to_save(&mut self, now: Millis) -> LimitSnapshot {
        self.handover.saving();
        self.snapshot(now)
    }

    /// The oldest save out was answered (`ok`: stored): lines waiting for it may go.
    pub fn saved(&mut self, env: &mut Env, ok: bool) {
        self.handover.saved(ok);
        self.flush(env);
    }

    /// Whether the next save should go at once: lines wait for it.
    pub fn save_urgent(&self) -> bool {
        self.handover.save_urgent()
    }

    /// The channel is being removed: abandon everything it was doing.
    pub fn remove(mut self, env: &mut Env) {
        env.timers.disarm(TimerKey::Participation(self.slot));
        env.timers.disarm(TimerKey::SendSpacing(self.slot));
        for (id, p) in std::mem::take(&mut self.requests) {
            env.timers.disarm(TimerKey::LlmDeadline(id));
            env.global.reserved = env.global.reserved.saturating_sub(p.reserved);
            env.out.push_back(Effect::CancelLlm(id));
            self.drop_reply(env, &p, Reason::ChannelRemoved);
        }
        self.drop_queued(env, Reason::ChannelRemoved);
    }
}

/// Slack on top of a provider's worst case (timeouts, retries and their waits) before
/// the engine gives up on a request by itself.
const DEADLINE_SLACK: Duration = Duration::from_secs(10);

/// One trigger's request to speak.
struct Ask<'a> {
    trigger: Trigger,
    user: Option<&'a str>,
    correlation_id: Option<&'a str>,
    probability: f64,
    cooldown: Duration,
    prompt: Prompt,
}

/// What of a reply may be said: a reply cut by the token cap keeps only its complete
/// sentences, when it has one.
fn reply_text(reply: &LlmReply) -> &str {
    if reply.truncated {
        crate::response::complete_sentences(&reply.text)
    } else {
        &reply.text
    }
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
