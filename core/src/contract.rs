//! The engine's contract: what goes in ([`Input`]) and what comes out ([`Effect`]).
//!
//! These two enums and [`crate::Config`] are the whole interface between the decision
//! logic and the world. The runtime turns NATS messages, LLM responses, timers and
//! signals into inputs and executes effects; the simulator does the same in virtual time.
//! Nothing here knows about sockets, threads or clocks.

use std::fmt;

use crate::config::Config;
use crate::time::Millis;
use crate::trigger::Trigger;

/// Everything that can happen to the engine.
#[derive(Debug, Clone)]
pub enum Input {
    /// A Kryten event envelope as received (NATS message body), with its subject when it
    /// came from NATS (the channel is taken from it if the envelope lacks one).
    Event {
        /// NATS subject, if any.
        subject: Option<String>,
        /// The raw body.
        body: Vec<u8>,
    },
    /// The outcome of an [`Effect::CallLlm`].
    LlmDone {
        /// The request it answers.
        id: RequestId,
        /// Reply text or why there is none.
        result: Result<LlmReply, LlmError>,
    },
    /// Nothing but the passage of time: fire due timers.
    Tick,
    /// A new, already validated configuration (SIGHUP).
    Reload(Box<Config>),
    /// Stop starting new work; report [`Effect::ShutdownComplete`] once idle.
    Shutdown,
    /// An operator's instruction for one channel (from `kryten.{service}.command`).
    Control {
        /// Channel name (case-insensitive).
        channel: String,
        /// What to do.
        action: Control,
    },
    /// An outcome from the lease bucket (`ha`), or news of another instance.
    Lease(crate::lease::LeaseEvent),
    /// What Kryten-Robot keeps about a channel's room in JetStream, read at start and
    /// after a reconnect; events seen since the read began win over it.
    RoomState(RoomSnapshot),
    /// The link to NATS went up or down. While down, replies wait in the channel's queue
    /// (bounded by `nats.outbound_queue`) and leave with normal spacing on reconnect.
    Connection {
        /// True when connected.
        up: bool,
    },
}

/// Kryten-Robot's key-value state of one channel, as read (raw values; the engine
/// parses them as it parses the events they mirror).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSnapshot {
    /// Channel name (case-insensitive).
    pub channel: String,
    /// When the read began: an event seen since is newer than the snapshot.
    pub read_at: Millis,
    /// `kryten_{channel}_playlist` key `current` (a `changeMedia` payload plus `uid`)
    /// and when it was written.
    pub current: Option<(Vec<u8>, Millis)>,
    /// `kryten_{channel}_playlist` key `items` (a `playlist` payload).
    pub items: Option<Vec<u8>>,
    /// `kryten_{channel}_userlist` key `users` (a `userlist` payload).
    pub users: Option<Vec<u8>>,
}

/// Operator controls of a channel, from NATS or from a moderator in chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop speaking (events are still read and remembered), for this long or until
    /// unmuted.
    Mute(Option<std::time::Duration>),
    /// Speak again.
    Unmute,
    /// Forget the channel's context, PM conversations and what is playing.
    ClearContext,
}

impl Control {
    /// The command's name (`mute`, `unmute`, `forget`).
    pub fn label(self) -> &'static str {
        match self {
            Control::Mute(_) => "mute",
            Control::Unmute => "unmute",
            Control::ClearContext => "forget",
        }
    }
}

/// Identifies one LLM request. Unique per engine; encodes the channel's slot so ids in
/// one channel do not depend on traffic in others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// A successful completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmReply {
    /// The first choice's message content (never the model's separate reasoning).
    pub text: String,
    /// Token usage, when the provider reported it.
    pub usage: Option<Usage>,
    /// The provider stopped it at the token cap (`finish_reason: "length"`): the engine
    /// keeps only its complete sentences, when it has one.
    pub truncated: bool,
}

impl LlmReply {
    /// A whole reply.
    pub fn new(text: impl Into<String>, usage: Option<Usage>) -> LlmReply {
        LlmReply { text: text.into(), usage, truncated: false }
    }
}

/// Token usage of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Prompt tokens (cached ones included).
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Prompt tokens the provider served from its prompt cache (OpenAI's
    /// `prompt_tokens_details.cached_tokens`, DeepSeek's `prompt_cache_hit_tokens`).
    pub cached_input_tokens: u64,
}

/// Why an LLM request produced no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LlmError {
    /// No answer within the timeout (including the engine's own deadline).
    Timeout,
    /// Could not connect.
    Connect,
    /// Non-success HTTP status after retries.
    Status(u16),
    /// The body was not the expected JSON.
    Malformed,
    /// `choices` was empty or had no content.
    EmptyChoices,
    /// The token cap ended the reply before any text (a reasoning model spent it
    /// thinking): raise `max_tokens` or lower the reasoning effort.
    Truncated,
    /// Cancelled (shutdown, channel removed).
    Cancelled,
}

impl LlmError {
    /// Worth trying the next provider in the chain?
    pub fn is_transient(self) -> bool {
        match self {
            LlmError::Timeout | LlmError::Connect => true,
            LlmError::Status(s) => s == 429 || s >= 500,
            LlmError::Malformed | LlmError::EmptyChoices | LlmError::Truncated | LlmError::Cancelled => false,
        }
    }

    /// Reason label.
    pub fn label(self) -> &'static str {
        match self {
            LlmError::Timeout => "llm_timeout",
            LlmError::Connect => "llm_connect",
            LlmError::Status(429) => "llm_rate_limited",
            LlmError::Status(_) => "llm_http_status",
            LlmError::Malformed => "llm_malformed",
            LlmError::EmptyChoices => "llm_empty",
            LlmError::Truncated => "llm_truncated",
            LlmError::Cancelled => "llm_cancelled",
        }
    }
}

/// Everything the engine asks the world to do or wants recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send a chat-completion request; answer with [`Input::LlmDone`].
    CallLlm(LlmCall),
    /// Abandon a request (its answer will be ignored anyway).
    CancelLlm(RequestId),
    /// Publish a Kryten command.
    Publish(Command),
    /// A decision, for logs, metrics and reports.
    Decision(Decision),
    /// A lease-bucket operation (`ha`); most are answered with [`Input::Lease`].
    Lease(crate::lease::LeaseOp),
    /// Announce that this instance is alive: a Kryten lifecycle heartbeat
    /// (`kryten.lifecycle.{service}.heartbeat`). With `ha`, the other instances count
    /// live peers by it. Comes every [`crate::engine::HEARTBEAT`], or every lease renewal
    /// period when that is shorter.
    Heartbeat,
    /// A moderator's command from chat was obeyed (or refused): for logs, metrics and
    /// the replay report.
    Moderation(ModerationRecord),
    /// After [`Input::Shutdown`]: nothing is in flight or queued any more.
    ShutdownComplete,
}

/// What a moderator's chat command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModerationRecord {
    /// Engine time.
    pub at: Millis,
    /// Channel.
    pub channel: String,
    /// The command line's correlation id.
    pub correlation_id: Option<String>,
    /// The moderator.
    pub user: String,
    /// `mute`, `unmute`, `status`, `why`, `forget`, `help` or `unknown`.
    pub command: &'static str,
    /// What changed, in words (`muted for 10m`, `nothing: already speaking`).
    pub changed: String,
}

impl serde::Serialize for ModerationRecord {
    /// `{"at","channel","correlation_id","user","command","changed"}`, `at` in epoch ms.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("ModerationRecord", 6)?;
        st.serialize_field("at", &self.at.0)?;
        st.serialize_field("channel", &self.channel)?;
        st.serialize_field("correlation_id", &self.correlation_id)?;
        st.serialize_field("user", &self.user)?;
        st.serialize_field("command", self.command)?;
        st.serialize_field("changed", &self.changed)?;
        st.end()
    }
}

/// An LLM request.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmCall {
    /// Echo this in [`Input::LlmDone`].
    pub id: RequestId,
    /// Channel it is for.
    pub channel: String,
    /// Provider name (a key of `llm.providers`).
    pub provider: String,
    /// The chat messages, system prompt first.
    pub messages: Vec<PromptMessage>,
    /// Why it is asked.
    pub purpose: Purpose,
    /// The PM conversation it continues (lower-cased user); `None` for the channel's.
    pub thread: Option<String>,
    /// The trigger it answers.
    pub trigger: Trigger,
    /// Correlation id of the event that caused it, when there was one (a recorded
    /// session's reply to that event answers it in replay).
    pub correlation_id: Option<String>,
}

/// Why an LLM request is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The answer will be said (after processing).
    Reply,
    /// A yes/no "would you join in now?" for the contextual trigger.
    ParticipationCheck,
}

/// One chat message of a prompt.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PromptMessage {
    /// `system`, `user` or `assistant`.
    pub role: Role,
    /// Text.
    pub content: String,
}

/// OpenAI chat roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Instructions.
    System,
    /// Room members.
    User,
    /// The bot.
    Assistant,
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// A Kryten command to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Channel, as configured.
    pub channel: String,
    /// What to say and to whom.
    pub kind: CommandKind,
    /// Correlation id of the event that caused it, when there was one.
    pub correlation_id: Option<String>,
    /// What caused it: the trigger, and for an LLM's reply how long the LLM took
    /// (engine time from the first request to the answer). The daemon puts both in the
    /// command's `meta`, so a recording can replay the reply as it came.
    pub cause: Option<Cause>,
}

/// Why a command was sent (see [`Command::cause`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cause {
    /// The trigger.
    pub trigger: Trigger,
    /// The LLM's latency for a reply it wrote; `None` for a fallback or a notice.
    pub llm_ms: Option<u64>,
}

/// `say` or `pm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandKind {
    /// Public chat.
    Say {
        /// The line.
        text: String,
    },
    /// Private message.
    Pm {
        /// Recipient.
        to: String,
        /// The line.
        text: String,
    },
}

impl CommandKind {
    /// The text either way.
    pub fn text(&self) -> &str {
        match self {
            CommandKind::Say { text } | CommandKind::Pm { text, .. } => text,
        }
    }
}

/// One decision, in the same shape in logs, metrics and replay reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Engine time of the decision.
    pub at: Millis,
    /// Channel (as configured, or as the event named it).
    pub channel: String,
    /// Correlation id of the event it is about.
    pub correlation_id: Option<String>,
    /// User concerned, if any.
    pub user: Option<String>,
    /// Trigger concerned, if any.
    pub trigger: Option<Trigger>,
    /// What happened.
    pub outcome: Outcome,
    /// Why (none for a plain `fired`/`sent`).
    pub reason: Option<Reason>,
}

/// What a decision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// A trigger fired: an LLM request was made.
    Fired,
    /// A trigger matched but a rule kept the bot silent.
    Suppressed,
    /// An event was not considered at all.
    Ignored,
    /// A message was published.
    Sent,
    /// A reply was produced or pending but thrown away.
    Dropped,
}

impl Outcome {
    /// Label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Fired => "fired",
            Outcome::Suppressed => "suppressed",
            Outcome::Ignored => "ignored",
            Outcome::Sent => "sent",
            Outcome::Dropped => "dropped",
        }
    }
}

/// Every named reason for silence, ignoring, dropping or a fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    // --- ignored events
    /// The bot's own line or PM echo.
    OwnMessage,
    /// In `ignore_users`.
    IgnoredUser,
    /// `meta.shadow: true`.
    ShadowMuted,
    /// A `[server]` line.
    ServerMessage,
    /// Older than the engine's start (CyTube's join backlog).
    Backlog,
    /// Same correlation id, or same user+time+text, seen before.
    DuplicateEvent,
    /// A PM between other users.
    NotForBot,
    /// The envelope names a channel that is not configured.
    UnknownChannel,
    /// Not an envelope, or a used event with a payload of the wrong shape.
    MalformedEvent,
    /// The second `changeMedia` for the same item.
    DuplicateMedia,
    /// A `changeMedia` for an item already playing (sent on join / player resync).
    MediaResync,
    // --- suppressed triggers
    /// The trigger's probability said no.
    Probability,
    /// The trigger's own cooldown.
    TriggerCooldown,
    /// `media_change_cooldown`.
    MediaChangeCooldown,
    /// `global_cooldown`.
    GlobalCooldown,
    /// `limits.per_user`.
    PerUserLimit,
    /// `limits.per_channel`.
    PerChannelLimit,
    /// `max_in_flight`.
    MaxInFlight,
    /// Shutdown in progress.
    ShuttingDown,
    /// An operator muted the channel.
    Muted,
    /// Another instance holds the channel's lease (`ha`); this one stands by.
    NotOwner,
    /// Another account and the bot were going back and forth (bot loop): backing off.
    LoopGuard,
    /// A moderator command from someone below `moderation.min_rank`.
    NotModerator,
    /// The user kept hitting limits: their personal cooldown is running.
    Penalty,
    /// The channel's token budget is spent for now.
    Budget,
    /// Contextual: fewer than `min_new_messages` new lines.
    NotEnoughNewMessages,
    /// Contextual: the LLM did not answer yes.
    DeclinedToJoin,
    // --- dropped replies
    /// Empty after processing.
    EmptyReply,
    /// Matched a block pattern or keyword.
    BlockedReply,
    /// A repeat of a recent reply.
    DuplicateReply,
    /// The reply was only the model's reasoning (`<think>…</think>`).
    ReasoningOnly,
    /// The reply repeated a long span of the system prompt.
    PromptLeak,
    /// The LLM failed (the kind is in the label).
    LlmFailed(LlmError),
    /// Every provider in the channel's chain has its circuit breaker open.
    ProvidersDown,
    /// The queue of replies waiting to be sent was full.
    QueueFull,
    /// The channel was removed by a reload.
    ChannelRemoved,
    // --- sent
    /// A fallback response replaced a failed LLM reply.
    Fallback,
}

impl Reason {
    /// The stable label used in logs, metrics and reports.
    pub fn label(self) -> &'static str {
        match self {
            Reason::OwnMessage => "own_message",
            Reason::IgnoredUser => "ignored_user",
            Reason::ShadowMuted => "shadow_muted",
            Reason::ServerMessage => "server_message",
            Reason::Backlog => "backlog",
            Reason::DuplicateEvent => "duplicate_event",
            Reason::NotForBot => "not_for_bot",
            Reason::UnknownChannel => "unknown_channel",
            Reason::MalformedEvent => "malformed_event",
            Reason::DuplicateMedia => "duplicate_media",
            Reason::MediaResync => "media_resync",
            Reason::Probability => "probability",
            Reason::TriggerCooldown => "trigger_cooldown",
            Reason::MediaChangeCooldown => "media_change_cooldown",
            Reason::GlobalCooldown => "global_cooldown",
            Reason::PerUserLimit => "per_user_limit",
            Reason::PerChannelLimit => "per_channel_limit",
            Reason::MaxInFlight => "max_in_flight",
            Reason::ShuttingDown => "shutting_down",
            Reason::Muted => "muted",
            Reason::NotOwner => "not_owner",
            Reason::LoopGuard => "loop_guard",
            Reason::NotModerator => "not_moderator",
            Reason::Penalty => "penalty",
            Reason::Budget => "budget",
            Reason::NotEnoughNewMessages => "not_enough_new_messages",
            Reason::DeclinedToJoin => "declined_to_join",
            Reason::EmptyReply => "empty_reply",
            Reason::BlockedReply => "blocked_reply",
            Reason::DuplicateReply => "duplicate_reply",
            Reason::ReasoningOnly => "reasoning_only",
            Reason::PromptLeak => "prompt_leak",
            Reason::LlmFailed(e) => e.label(),
            Reason::ProvidersDown => "providers_down",
            Reason::QueueFull => "queue_full",
            Reason::ChannelRemoved => "channel_removed",
            Reason::Fallback => "fallback",
        }
    }
}

impl Reason {
    /// The reason in words, for a moderator's `why`.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::OwnMessage => "it was my own line",
            Reason::IgnoredUser => "that user is in ignore_users",
            Reason::ShadowMuted => "the sender is shadow-muted",
            Reason::ServerMessage => "it was a [server] line",
            Reason::Backlog => "it was older than my start",
            Reason::DuplicateEvent => "I had seen that event already",
            Reason::NotForBot => "the PM was not for me",
            Reason::UnknownChannel => "that channel is not configured",
            Reason::MalformedEvent => "the event was malformed",
            Reason::DuplicateMedia => "the same media was announced twice",
            Reason::MediaResync => "the media was already playing",
            Reason::Probability => "the trigger's probability said no",
            Reason::TriggerCooldown => "the trigger's cooldown was running",
            Reason::MediaChangeCooldown => "the media-change cooldown was running",
            Reason::GlobalCooldown => "the channel's global cooldown was running",
            Reason::PerUserLimit => "that user reached their reply limit",
            Reason::PerChannelLimit => "the channel reached its reply limit",
            Reason::MaxInFlight => "too many replies were being written",
            Reason::ShuttingDown => "I was shutting down",
            Reason::Muted => "I am muted",
            Reason::NotOwner => "another instance speaks for this channel",
            Reason::LoopGuard => "it looked like a bot loop",
            Reason::NotModerator => "a command from someone below moderator rank",
            Reason::Penalty => "that user's penalty cooldown was running",
            Reason::Budget => "the token budget is spent for now",
            Reason::NotEnoughNewMessages => "too few new lines to join in",
            Reason::DeclinedToJoin => "the model chose not to join in",
            Reason::EmptyReply => "the reply was empty",
            Reason::BlockedReply => "the reply matched a block pattern",
            Reason::DuplicateReply => "the reply repeated a recent one",
            Reason::ReasoningOnly => "the reply was only the model's reasoning",
            Reason::PromptLeak => "the reply repeated the system prompt",
            Reason::LlmFailed(LlmError::Timeout) => "the model did not answer in time",
            Reason::LlmFailed(LlmError::Connect) => "the model's server could not be reached",
            Reason::LlmFailed(LlmError::Status(429)) => "the provider rate-limited me",
            Reason::LlmFailed(LlmError::Status(_)) => "the provider returned an error",
            Reason::LlmFailed(LlmError::Malformed) => "the provider's answer was malformed",
            Reason::LlmFailed(LlmError::EmptyChoices) => "the provider's answer was empty",
            Reason::LlmFailed(LlmError::Truncated) => "the model ran out of tokens before answering",
            Reason::LlmFailed(LlmError::Cancelled) => "the request was cancelled",
            Reason::ProvidersDown => "every provider is failing",
            Reason::QueueFull => "too many replies were waiting to be sent",
            Reason::ChannelRemoved => "the channel was removed",
            Reason::Fallback => "the model failed and a fallback line was said",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl serde::Serialize for Decision {
    /// The one shape of a decision record, shared by the daemon's JSON logs and
    /// `replay --format json`: `{"at","channel","correlation_id","user","trigger",
    /// "outcome","reason"}` with `at` in epoch milliseconds and labels as strings.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Decision", 7)?;
        st.serialize_field("at", &self.at.0)?;
        st.serialize_field("channel", &self.channel)?;
        st.serialize_field("correlation_id", &self.correlation_id)?;
        st.serialize_field("user", &self.user)?;
        st.serialize_field("trigger", &self.trigger.map(Trigger::label))?;
        st.serialize_field("outcome", self.outcome.label())?;
        st.serialize_field("reason", &self.reason.map(Reason::label))?;
        st.end()
    }
}
