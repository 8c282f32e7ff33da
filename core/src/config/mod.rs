//! The configuration: the YAML schema of SPEC.md §3, parsed in two stages.
//!
//! Stage one is a raw serde model that mirrors the file (every channel field optional, so
//! `defaults:` and each channel can set any subset); stage two layers channel over
//! `defaults` over the built-in defaults and produces the validated [`Config`] the engine
//! uses. Value checks (probability ranges, durations, regexes, the forbidden `api_key`)
//! live in the deserializers of small newtypes, so serde_yaml reports them with the line,
//! column and key path of the offending value. This module never reads files or the
//! environment: the caller hands it text and a name for that text.
//!
//! By stage (ripgrep's `flags/` split): `raw.rs` mirrors the YAML and layers it,
//! `value.rs` holds the self-validating value types, `resolve.rs` turns the layers into
//! this module's validated types, `locate.rs` places errors at their line and key, and
//! `warnings.rs` lists risky but valid settings.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

mod locate;
mod raw;
mod resolve;
#[cfg(test)]
mod tests;
mod value;
mod warnings;

use value::duration;
pub use value::Pattern;

/// Why a configuration was refused. Every variant names the file; located variants also
/// carry the line, column and key path of the problem.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value or key is wrong at a known place in the file.
    #[error("{file}:{line}:{column}: {path}: {message}")]
    Invalid {
        /// The file (or other origin) the text came from.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// Key path such as `channels[1].limits.per_user.max`.
        path: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A problem that has no single place in the file (e.g. no channel at all).
    #[error("{file}: {path}: {message}")]
    Unlocated {
        /// The file the text came from.
        file: String,
        /// Key path.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// `llm.budget:` tokens the whole bot may spend (0 = no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalBudget {
    /// Tokens in any hour, over all channels.
    #[serde(default)]
    pub tokens_per_hour: u64,
    /// Tokens in any 24 hours, over all channels.
    #[serde(default)]
    pub tokens_per_day: u64,
}

/// Prices in currency units per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Per million prompt tokens.
    #[serde(default)]
    pub input: f64,
    /// Per million completion tokens.
    #[serde(default)]
    pub output: f64,
    /// Per million prompt tokens served from the provider's prompt cache; unset: the
    /// `input` price.
    #[serde(default)]
    pub cached_input: Option<f64>,
}

impl Price {
    /// What `usage` costs: cached prompt tokens at `cached_input`, the rest of the prompt
    /// at `input`, the completion at `output`.
    pub fn cost(&self, usage: &crate::Usage) -> f64 {
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let fresh = usage.input_tokens - cached;
        (fresh as f64 * self.input
            + cached as f64 * self.cached_input.unwrap_or(self.input)
            + usage.output_tokens as f64 * self.output)
            / 1e6
    }
}

/// A provider's circuit breaker: opens after `failures` transient failures in a row,
/// lets one request through after `cooldown`, closes on success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Breaker {
    /// Consecutive failures that open it (0 = never).
    #[serde(default = "default_breaker_failures")]
    pub failures: u32,
    /// How long it stays open before one trial request.
    #[serde(default = "default_breaker_cooldown", deserialize_with = "duration")]
    pub cooldown: Duration,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker { failures: default_breaker_failures(), cooldown: default_breaker_cooldown() }
    }
}

fn default_breaker_failures() -> u32 {
    3
}
fn default_breaker_cooldown() -> Duration {
    Duration::from_secs(30)
}

// ---------------------------------------------------------------------------------------
// Stage two: the validated configuration.
// ---------------------------------------------------------------------------------------

/// The validated, defaults-resolved configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Who the bot is.
    pub bot: BotConfig,
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// Kryten identity and routing.
    pub kryten: KrytenConfig,
    /// The health/metrics listener.
    pub http: HttpConfig,
    /// LLM providers and fallback lines.
    pub llm: LlmConfig,
    /// The channels, in file order, with `defaults` applied.
    pub channels: Vec<ChannelConfig>,
    /// Run everything, the LLM included, but log commands instead of publishing them.
    pub dry_run: bool,
    /// The engine's seed (probabilities, jitter); `None`: a random one at every start.
    /// The daemon logs and announces the seed it uses, so a recording can replay it.
    pub seed: Option<u64>,
    /// Several instances sharing the channels through leases.
    pub ha: HaConfig,
    /// Moderators steering the bot from chat (`!kryten mute 10m`).
    pub moderation: ModerationConfig,
}

/// `moderation:` commands a room's moderators give the bot in chat or by PM.
#[derive(Debug, Clone, PartialEq)]
pub struct ModerationConfig {
    /// Off: a command line is an ordinary chat line.
    pub enabled: bool,
    /// What starts a command (`!` in `!kryten mute 10m`).
    pub prefix: String,
    /// The lowest CyTube rank obeyed (2: moderator).
    pub min_rank: f64,
}

impl Default for ModerationConfig {
    fn default() -> Self {
        ModerationConfig { enabled: true, prefix: "!".into(), min_rank: 2.0 }
    }
}

/// `ha:` several instances, one voice per channel (JetStream key-value leases).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaConfig {
    /// Off: one instance speaks for every channel, no JetStream needed.
    pub enabled: bool,
    /// The lease bucket (created if missing); limit state goes to `{bucket}_state`.
    pub bucket: String,
    /// A lease not renewed for this long expires (a crashed instance's channels are
    /// taken over after it).
    pub lease_ttl: Duration,
    /// This instance's id; empty in the file means "hostname-pid", filled in by the
    /// runtime before the engine starts.
    pub instance: String,
    /// Stream replicas of both buckets; `None`: one on a single server, one per cluster
    /// node (as the server reports them) up to 3 on a cluster.
    pub replicas: Option<usize>,
}

impl Default for HaConfig {
    fn default() -> Self {
        let raw = raw::RawHa::default();
        HaConfig {
            enabled: false,
            bucket: raw.bucket.0,
            lease_ttl: raw.lease_ttl.0,
            instance: String::new(),
            replicas: None,
        }
    }
}

/// `bot:`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotConfig {
    /// The CyTube account the bot posts as.
    pub name: String,
    /// Extra names that count as a mention.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// `nats:`
#[derive(Debug, Clone, PartialEq)]
pub struct NatsConfig {
    /// Server URLs.
    pub servers: Vec<String>,
    /// Optional user name.
    pub user: Option<String>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// Environment variable holding the token.
    pub token_env: Option<String>,
    /// NATS `.creds` file.
    pub creds_file: Option<String>,
    /// TLS files.
    pub tls: TlsConfig,
    /// How long to keep trying at start-up.
    pub connect_timeout: Duration,
    /// Which event subjects to subscribe.
    pub subjects: SubjectScheme,
    /// Which command shape to publish.
    pub commands: CommandScheme,
    /// Commands buffered while disconnected.
    pub outbound_queue: usize,
}

/// `nats.tls:`
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA bundle to trust.
    pub ca_file: Option<String>,
    /// Client certificate.
    pub cert_file: Option<String>,
    /// Client key.
    pub key_file: Option<String>,
}

/// Event subject scheme.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectScheme {
    /// `kryten.events.cytube.{channel}.{event}` (Kryten-Robot ≥ 0.6).
    #[default]
    Kryten,
    /// `cytube.events.{channel}.{event}`.
    Legacy,
}

/// Command publishing scheme.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandScheme {
    /// `kryten.robot.command` with `say` / `pm`.
    #[default]
    Robot,
    /// `kryten.commands.cytube.{channel}.chat` with `action`/`data`.
    Legacy,
}

/// `kryten:`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KrytenConfig {
    /// The robot's configured domain, sent verbatim in command meta.
    #[serde(default = "default_domain")]
    pub domain: String,
    /// Our lifecycle / discovery identity.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

impl Default for KrytenConfig {
    fn default() -> Self {
        KrytenConfig { domain: default_domain(), service_name: default_service_name() }
    }
}

fn default_domain() -> String {
    "cytu.be".into()
}
fn default_service_name() -> String {
    "llm".into()
}

/// `http:`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address for /health and /metrics.
    #[serde(default = "default_listen")]
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: default_listen() }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

/// `llm:`
#[derive(Debug, Clone, PartialEq)]
pub struct LlmConfig {
    /// Providers by name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Lines said, in rotation, when the LLM fails; empty means silence.
    pub fallback_responses: Vec<String>,
    /// Budget over all channels.
    pub budget: GlobalBudget,
}

/// One OpenAI-compatible endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    /// e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// Environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// Model name.
    pub model: String,
    /// Sampling temperature; `None`: not sent (reasoning models accept only their own).
    pub temperature: Option<f32>,
    /// Completion token cap (what budgets reserve per request).
    pub max_tokens: u32,
    /// The request field `max_tokens` is sent as.
    pub max_tokens_param: MaxTokensParam,
    /// Merged into the top level of the request JSON after the bot's own fields; a
    /// `null` removes a field the bot would send.
    pub extra_body: serde_json::Map<String, serde_json::Value>,
    /// Literal extra headers (never one of the bot's own, never a secret).
    pub extra_headers: BTreeMap<String, String>,
    /// Extra headers whose values come from these environment variables (secrets).
    pub extra_headers_env: BTreeMap<String, String>,
    /// Appended to the request URL as a query (Azure's `api-version`).
    pub extra_query: BTreeMap<String, String>,
    /// Send the key bare in this header instead of `Authorization: Bearer …` (Azure's
    /// `api-key`).
    pub api_key_header: Option<String>,
    /// PEM CA certificates trusted for this provider besides the built-in roots.
    pub ca_file: Option<String>,
    /// How to reach the provider.
    pub proxy: ProxySetting,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries on connect error, 5xx and 429.
    pub retries: u32,
    /// Prices, for spend reports.
    pub price_per_million: Price,
    /// Circuit breaker settings.
    pub breaker: Breaker,
}

/// A provider's `proxy:`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ProxySetting {
    /// Not set: the environment decides, as curl does (`HTTPS_PROXY`, `HTTP_PROXY`,
    /// `ALL_PROXY`, `NO_PROXY`, upper or lower case).
    #[default]
    FromEnv,
    /// `none`: connect directly whatever the environment says.
    Direct,
    /// An `http://` proxy URL (credentials in it are sent as `Proxy-Authorization`).
    Url(String),
}

/// How a provider wants the completion cap named.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensParam {
    /// `max_tokens` (most OpenAI-compatible servers).
    #[default]
    MaxTokens,
    /// `max_completion_tokens` (OpenAI's reasoning models: gpt-5, o-series).
    MaxCompletionTokens,
    /// Not sent at all.
    None,
}

impl MaxTokensParam {
    /// The JSON field name, if any.
    pub fn field(self) -> Option<&'static str> {
        match self {
            MaxTokensParam::MaxTokens => Some("max_tokens"),
            MaxTokensParam::MaxCompletionTokens => Some("max_completion_tokens"),
            MaxTokensParam::None => None,
        }
    }
}

/// First wait before retrying a failed request; doubles with each further attempt.
pub const RETRY_BACKOFF: Duration = Duration::from_millis(250);
/// How many times one request may be sent again changed, because the provider refused a
/// parameter (OpenAI's reasoning models and `max_tokens` or `temperature`).
pub const ADAPTATIONS: u32 = 1;
/// The longest wait before a retry: a provider's `Retry-After` beyond it is not waited
/// for (the request fails instead).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

impl ProviderConfig {
    /// The wait before retry number `attempt` (1 = the first retry) after a failure worth
    /// retrying, `retry_after` being what the provider asked for; `None`: give up. The
    /// runtime's client follows this schedule and the engine's deadline is derived from
    /// it ([`ProviderConfig::worst_case`]), so the two always agree.
    pub fn retry_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if attempt == 0 || attempt > self.retries {
            return None;
        }
        let delay = retry_after.unwrap_or(RETRY_BACKOFF.saturating_mul(2u32.saturating_pow(attempt - 1)));
        (delay <= MAX_RETRY_AFTER).then_some(delay)
    }

    /// The longest one request can take: every attempt's timeout (retries and
    /// [`ADAPTATIONS`] included), plus the longest wait [`ProviderConfig::retry_delay`]
    /// allows before each retry.
    pub fn worst_case(&self) -> Duration {
        let attempts = self.retries.saturating_add(1).saturating_add(ADAPTATIONS);
        let waits = (1..=self.retries).map(|a| self.retry_delay(a, Some(MAX_RETRY_AFTER)).unwrap_or_default());
        self.timeout.saturating_mul(attempts).saturating_add(waits.sum())
    }
}

/// One channel, with `defaults` applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelConfig {
    /// CyTube channel name as the robot is configured.
    pub name: String,
    /// Providers in fallback order.
    pub providers: Vec<String>,
    /// The system prompt: a template (from `system_prompt`, or the text of
    /// `system_prompt_file`).
    pub system_prompt: String,
    /// Where the system prompt came from, when it was a file (as written in the config).
    pub system_prompt_file: Option<String>,
    /// Per-trigger instruction templates (`None`: the built-in wording).
    pub prompts: PromptsConfig,
    /// IANA time zone of `now` and `date` in templates.
    pub timezone: String,
    /// Context window.
    pub context: ContextConfig,
    /// When to speak.
    pub triggers: TriggersConfig,
    /// How often to speak.
    pub limits: LimitsConfig,
    /// What may be said.
    pub response: ResponseConfig,
    /// Users never answered and never put in context (lower-cased).
    pub ignore_users: Vec<String>,
    /// Back-and-forth with another account that looks like a bot loop.
    pub loop_guard: LoopGuardConfig,
    /// Growing personal cooldown for users who keep hitting limits.
    pub penalty: PenaltyConfig,
    /// Token budget of the channel (0 = unlimited).
    pub budget: BudgetConfig,
}

/// `prompts:` the per-trigger instruction templates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PromptsConfig {
    /// A mention.
    pub mention: Option<String>,
    /// A keyword.
    pub keyword: Option<String>,
    /// A PM.
    pub pm: Option<String>,
    /// A media change.
    pub media_change: Option<String>,
    /// A contextual reply (after a yes).
    pub contextual: Option<String>,
    /// The contextual yes/no question.
    pub participation_check: Option<String>,
}

impl ChannelConfig {
    /// Every template source, indexed by [`crate::template::Kind`].
    pub fn template_sources(&self) -> [String; 7] {
        use crate::template::Kind;
        let p = &self.prompts;
        let or = |t: &Option<String>, k: Kind| t.clone().unwrap_or_else(|| k.default_source().to_owned());
        [
            self.system_prompt.clone(),
            or(&p.mention, Kind::Mention),
            or(&p.keyword, Kind::Keyword),
            or(&p.pm, Kind::Pm),
            or(&p.media_change, Kind::MediaChange),
            or(&p.contextual, Kind::Contextual),
            or(&p.participation_check, Kind::ParticipationCheck),
        ]
    }
}

/// `loop_guard:`: after `max_exchanges` bot-like exchanges in a row with one account,
/// back off. A line is a bot-like exchange when it answers our reply to that account
/// faster than a person does: within `quick_reply`, or typed faster than `typing_speed`,
/// or copying one of our recent lines (`docs/configuration.md`, "The loop guard").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopGuardConfig {
    /// Bot-like exchanges in a row before backing off.
    pub max_exchanges: u32,
    /// How long after our reply a line still answers it.
    pub window: Duration,
    /// First backoff; doubles for each further loop with the same account.
    pub backoff: Duration,
    /// An answer this soon after our reply is faster than a person reads and types.
    pub quick_reply: Duration,
    /// Characters per second no person types: a longer line, sooner, is a program's.
    pub typing_speed: u32,
}

/// `penalty:`: a user's cooldown after hitting limits, doubling per strike up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PenaltyConfig {
    /// First penalty (0s disables penalties).
    pub base: Duration,
    /// Longest penalty.
    pub max: Duration,
}

/// `budget:`: tokens the channel may spend (0 = no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetConfig {
    /// Tokens (prompt + completion) in any hour.
    pub tokens_per_hour: u64,
    /// Tokens in any 24 hours.
    pub tokens_per_day: u64,
    /// Whether PM replies are subject to the budget too.
    pub include_pms: bool,
}

/// `context:`
#[derive(Debug, Clone, PartialEq)]
pub struct ContextConfig {
    /// Lines kept.
    pub max_messages: usize,
    /// Lines older than this are dropped.
    pub max_age: Duration,
}

/// `triggers:`
#[derive(Debug, Clone, PartialEq)]
pub struct TriggersConfig {
    /// The bot's name or an alias.
    pub mention: MentionConfig,
    /// Keyword groups, in order.
    pub keywords: Vec<KeywordConfig>,
    /// Periodic participation.
    pub contextual: ContextualConfig,
    /// Private messages.
    pub pm_enabled: bool,
    /// New media.
    pub media_change: MediaChangeConfig,
}

/// `triggers.mention:`
#[derive(Debug, Clone, PartialEq)]
pub struct MentionConfig {
    /// On or off.
    pub enabled: bool,
    /// Chance to answer.
    pub probability: f64,
    /// Quiet time after firing.
    pub cooldown: Duration,
}

/// One `triggers.keywords[]` group.
#[derive(Debug, Clone, PartialEq)]
pub struct KeywordConfig {
    /// Words or phrases, matched case-insensitively as whole words.
    pub words: Vec<String>,
    /// Chance to answer.
    pub probability: f64,
    /// Quiet time after firing.
    pub cooldown: Duration,
}

/// `triggers.contextual:`
#[derive(Debug, Clone, PartialEq)]
pub struct ContextualConfig {
    /// On or off.
    pub enabled: bool,
    /// Period of the participation check.
    pub every: Duration,
    /// New lines needed since the previous check.
    pub min_new_messages: usize,
    /// Chance to ask.
    pub probability: f64,
}

/// `triggers.media_change:`
#[derive(Debug, Clone, PartialEq)]
pub struct MediaChangeConfig {
    /// On or off.
    pub enabled: bool,
    /// Chance to comment.
    pub probability: f64,
}

/// `limits:`
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Replies to one user.
    pub per_user: WindowConfig,
    /// Replies in the channel.
    pub per_channel: WindowConfig,
    /// Minimum gap between two replies in the channel.
    pub global_cooldown: Duration,
    /// Minimum gap between two media comments.
    pub media_change_cooldown: Duration,
    /// Concurrent LLM requests for the channel.
    pub max_in_flight: u32,
    /// Minimum gap between two sends to the channel.
    pub send_spacing: Duration,
}

/// A sliding window: at most `max` in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowConfig {
    /// Count allowed.
    pub max: u32,
    /// Window length.
    pub window: Duration,
}

/// `response:`
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseConfig {
    /// Cap in UTF-16 code units (CyTube's unit).
    pub max_length: usize,
    /// A long reply may be split into up to this many messages.
    pub max_parts: usize,
    /// Remove markdown syntax.
    pub strip_markdown: bool,
    /// A reply matching one is dropped.
    pub block_patterns: Vec<Pattern>,
    /// A reply containing one (whole word, case-insensitive) is dropped.
    pub block_keywords: Vec<String>,
    /// A reply equal to one of the last N is dropped.
    pub dedupe_window: usize,
}

impl Config {
    /// The channel with this name, compared case-insensitively.
    pub fn channel(&self, name: &str) -> Option<&ChannelConfig> {
        self.channels.iter().find(|c| c.name.eq_ignore_ascii_case(name))
    }
}
