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
    /// The link to NATS went up or down. While down, replies wait in the channel's queue
    /// (bounded by `nats.outbound_queue`) and leave with normal spacing on reconnect.
    Connection {
        /// True when connected.
        up: bool,
    },
}

/// Operator controls of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop speaking (events are still read and remembered).
    Mute,
    /// Speak again.
    Unmute,
    /// Forget the channel's context and PM conversations.
    ClearContext,
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
    /// After [`Input::Shutdown`]: nothing is in flight or queued any more.
    ShutdownComplete,
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
