//! The configuration: the YAML schema of SPEC.md §3, parsed in two stages.
//!
//! Stage one is a raw serde model that mirrors the file (every channel field optional, so
//! `defaults:` and each channel can set any subset); stage two layers channel over
//! `defaults` over the built-in defaults and produces the validated [`Config`] the engine
//! uses. Value checks (probability ranges, durations, regexes, the forbidden `api_key`)
//! live in the deserializers of small newtypes, so serde_yaml reports them with the line,
//! column and key path of the offending value. This module never reads files or the
//! environment: the caller hands it text and a name for that text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use regex::Regex;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

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

// ---------------------------------------------------------------------------------------
// Value types that validate themselves while deserializing.
// ---------------------------------------------------------------------------------------

/// A duration written as `500ms`, `30s`, `5m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|e| de::Error::custom(format!("invalid duration `{s}` ({e}); write e.g. 500ms, 30s, 5m, 1h")))
    }
}

/// A duration that must be longer than zero (sliding windows, participation period).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PositiveDur(Duration);

impl<'de> Deserialize<'de> for PositiveDur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Dur(v) = Dur::deserialize(d)?;
        if v.is_zero() {
            return Err(de::Error::custom("must be longer than zero"));
        }
        Ok(PositiveDur(v))
    }
}

/// A probability in `0..=1`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Probability(f64);

impl<'de> Deserialize<'de> for Probability {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !(0.0..=1.0).contains(&v) {
            return Err(de::Error::custom(format!("probability {v} is outside 0..=1")));
        }
        Ok(Probability(v))
    }
}

/// `max_length`: at least 20 UTF-16 code units, so a reply can say something.
#[derive(Debug, Clone, Copy, PartialEq)]
struct MaxLength(usize);

impl<'de> Deserialize<'de> for MaxLength {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if v < 20 {
            return Err(de::Error::custom(format!("max_length {v} is below the minimum of 20")));
        }
        Ok(MaxLength(v.min(1_000_000) as usize))
    }
}

/// A regular expression, compiled at load time so a bad one is a config error.
#[derive(Debug, Clone)]
pub struct Pattern(pub Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Regex::new(&s)
            .map(Pattern)
            .map_err(|e| de::Error::custom(format!("invalid regex `{s}`: {}", first_line(&e.to_string()))))
    }
}

fn first_line(s: &str) -> &str {
    s.lines().last().unwrap_or(s).trim()
}

/// Deserializes successfully from nothing: its presence is the error. Used for
/// `api_key:` so a secret pasted into the file is refused with a pointer to the fix.
#[derive(Debug, Clone)]
struct Forbidden;

impl<'de> Deserialize<'de> for Forbidden {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(de::Error::custom("keys come from the environment: use api_key_env"))
    }
}

/// `provider: main` or `provider: [main, backup]`.
#[derive(Debug, Clone, PartialEq)]
struct ProviderList(Vec<String>);

impl<'de> Deserialize<'de> for ProviderList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ProviderList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a provider name or a list of provider names")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ProviderList(vec![v.to_owned()]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    out.push(name);
                }
                if out.is_empty() {
                    return Err(de::Error::custom("the provider list is empty"));
                }
                Ok(ProviderList(out))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------
// Stage one: the raw, layered model of a channel's settings.
// ---------------------------------------------------------------------------------------

/// Combines two layers of the same settings: `self` wins field by field.
trait Layer: Sized {
    fn over(self, _under: Self) -> Self {
        self
    }
}

fn layer<T: Layer>(over: Option<T>, under: Option<T>) -> Option<T> {
    match (over, under) {
        (Some(a), Some(b)) => Some(a.over(b)),
        (a, b) => a.or(b),
    }
}

impl Layer for Dur {}
impl Layer for PositiveDur {}
impl Layer for Probability {}
impl Layer for MaxLength {}
impl Layer for ProviderList {}
impl Layer for String {}
impl Layer for bool {}
impl Layer for NonZeroU32 {}
impl Layer for NonZeroUsize {}
impl Layer for usize {}
impl Layer for u64 {}
impl<T> Layer for Vec<T> {}

/// Declares a raw settings struct whose fields are all optional and which layers field by
/// field (nested structs recursively; lists and scalars replace).
macro_rules! layered {
    ($(#[$m:meta])* struct $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name { $( $field: Option<$ty>, )* }
        impl Layer for $name {
            fn over(self, under: Self) -> Self {
                Self { $( $field: layer(self.$field, under.$field), )* }
            }
        }
    };
}

layered!(
    /// A channel (or the `defaults:` block).
    struct RawChannel {
        name: String,
        provider: ProviderList,
        system_prompt: String,
        context: RawContext,
        triggers: RawTriggers,
        limits: RawLimits,
        response: RawResponse,
        ignore_users: Vec<String>,
        loop_guard: RawLoopGuard,
        penalty: RawPenalty,
        budget: RawBudget,
    }
);
layered!(
    struct RawLoopGuard {
        max_exchanges: NonZeroU32,
        window: PositiveDur,
        backoff: PositiveDur,
    }
);
layered!(
    struct RawPenalty {
        base: Dur,
        max: Dur,
    }
);
layered!(
    struct RawBudget {
        tokens_per_hour: u64,
        tokens_per_day: u64,
        include_pms: bool,
    }
);
layered!(
    struct RawContext {
        max_messages: NonZeroUsize,
        max_age: PositiveDur,
    }
);
layered!(
    struct RawTriggers {
        mention: RawMention,
        keywords: Vec<RawKeyword>,
        contextual: RawContextual,
        pm: RawPm,
        media_change: RawMediaChange,
    }
);
layered!(
    struct RawMention {
        enabled: bool,
        probability: Probability,
        cooldown: Dur,
    }
);
layered!(
    struct RawContextual {
        enabled: bool,
        every: PositiveDur,
        min_new_messages: usize,
        probability: Probability,
    }
);
layered!(
    struct RawPm {
        enabled: bool,
    }
);
layered!(
    struct RawMediaChange {
        enabled: bool,
        probability: Probability,
    }
);
layered!(
    struct RawLimits {
        per_user: RawWindow,
        per_channel: RawWindow,
        global_cooldown: Dur,
        media_change_cooldown: Dur,
        max_in_flight: NonZeroU32,
        send_spacing: Dur,
    }
);
layered!(
    struct RawWindow {
        max: NonZeroU32,
        window: PositiveDur,
    }
);
layered!(
    struct RawResponse {
        max_length: MaxLength,
        max_parts: NonZeroUsize,
        strip_markdown: bool,
        block_patterns: Vec<Pattern>,
        block_keywords: Vec<String>,
        dedupe_window: usize,
    }
);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyword {
    words: Vec<String>,
    probability: Option<Probability>,
    cooldown: Option<Dur>,
}

/// The built-in defaults every channel starts from (SPEC.md §3), written as YAML so they
/// read exactly like the documented example.
const BUILTIN_DEFAULTS: &str = r#"
provider: main
system_prompt: "You are a friendly regular in this chat room. Reply in one short line."
context: { max_messages: 50, max_age: 30m }
triggers:
  mention: { enabled: true, probability: 1.0, cooldown: 0s }
  keywords: []
  contextual: { enabled: false, every: 10m, min_new_messages: 5, probability: 1.0 }
  pm: { enabled: true }
  media_change: { enabled: false, probability: 0.5 }
limits:
  per_user: { max: 3, window: 1m }
  per_channel: { max: 10, window: 1m }
  global_cooldown: 5s
  media_change_cooldown: 30s
  max_in_flight: 10
  send_spacing: 1s
response:
  max_length: 320
  max_parts: 1
  strip_markdown: true
  block_patterns: []
  block_keywords: []
  dedupe_window: 10
ignore_users: []
loop_guard: { max_exchanges: 3, window: 2m, backoff: 5m }
penalty: { base: 30s, max: 30m }
budget: { tokens_per_hour: 0, tokens_per_day: 0, include_pms: true }
"#;

// ---------------------------------------------------------------------------------------
// Stage one: the raw model of the global sections.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    bot: BotConfig,
    #[serde(default)]
    nats: RawNats,
    #[serde(default)]
    kryten: KrytenConfig,
    #[serde(default)]
    http: HttpConfig,
    #[serde(default)]
    llm: RawLlm,
    #[serde(default)]
    defaults: RawChannel,
    #[serde(default)]
    channels: Vec<RawChannel>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    ha: RawHa,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHa {
    #[serde(default)]
    enabled: bool,
    #[serde(default = "default_ha_bucket")]
    bucket: BucketName,
    #[serde(default = "default_lease_ttl")]
    lease_ttl: LeaseTtl,
    #[serde(default)]
    instance: Option<String>,
}

impl Default for RawHa {
    fn default() -> Self {
        RawHa { enabled: false, bucket: default_ha_bucket(), lease_ttl: default_lease_ttl(), instance: None }
    }
}

fn default_ha_bucket() -> BucketName {
    BucketName("llm_chatbot_leases".into())
}
fn default_lease_ttl() -> LeaseTtl {
    LeaseTtl(Duration::from_secs(10))
}

/// A JetStream key-value bucket name: letters, digits, `-` and `_`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BucketName(String);

impl<'de> Deserialize<'de> for BucketName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(de::Error::custom(format!("invalid bucket name `{s}`: use letters, digits, `-` and `_` only")));
        }
        Ok(BucketName(s))
    }
}

/// A lease TTL: at least 1 s (renewals go out every third of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LeaseTtl(Duration);

impl<'de> Deserialize<'de> for LeaseTtl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Dur(v) = Dur::deserialize(d)?;
        if v < Duration::from_secs(1) {
            return Err(de::Error::custom("must be at least 1s (renewals go out every third of it)"));
        }
        Ok(LeaseTtl(v))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNats {
    #[serde(default = "default_servers")]
    servers: Vec<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    password_env: Option<String>,
    #[serde(default)]
    token_env: Option<String>,
    #[serde(default)]
    creds_file: Option<String>,
    #[serde(default)]
    tls: TlsConfig,
    #[serde(default = "default_connect_timeout")]
    connect_timeout: Dur,
    #[serde(default)]
    subjects: SubjectScheme,
    #[serde(default)]
    commands: CommandScheme,
    #[serde(default = "default_outbound_queue")]
    outbound_queue: usize,
    #[serde(default, rename = "password")]
    _password: Option<ForbiddenSecret>,
    #[serde(default, rename = "token")]
    _token: Option<ForbiddenSecret>,
}

impl Default for RawNats {
    fn default() -> Self {
        RawNats {
            servers: default_servers(),
            user: None,
            password_env: None,
            token_env: None,
            creds_file: None,
            tls: TlsConfig::default(),
            connect_timeout: default_connect_timeout(),
            subjects: SubjectScheme::default(),
            commands: CommandScheme::default(),
            outbound_queue: default_outbound_queue(),
            _password: None,
            _token: None,
        }
    }
}

/// Like [`Forbidden`], for NATS secrets.
#[derive(Debug)]
struct ForbiddenSecret;

impl<'de> Deserialize<'de> for ForbiddenSecret {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(de::Error::custom("secrets come from the environment: use password_env / token_env"))
    }
}

fn default_servers() -> Vec<String> {
    vec!["nats://127.0.0.1:4222".into()]
}
fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_outbound_queue() -> usize {
    100
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLlm {
    #[serde(default)]
    providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    fallback_responses: Vec<String>,
    #[serde(default)]
    budget: GlobalBudget,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    base_url: String,
    #[serde(default)]
    api_key_env: Option<String>,
    #[serde(default, rename = "api_key")]
    _api_key: Option<Forbidden>,
    model: String,
    #[serde(default = "default_temperature")]
    temperature: f32,
    #[serde(default = "default_max_tokens")]
    max_tokens: u32,
    #[serde(default = "default_llm_timeout")]
    timeout: PositiveDur,
    #[serde(default = "default_retries")]
    retries: u32,
    #[serde(default)]
    price_per_million: Price,
    #[serde(default)]
    breaker: Breaker,
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
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Dur::deserialize(d).map(|d| d.0)
}

fn default_temperature() -> f32 {
    0.8
}
fn default_max_tokens() -> u32 {
    200
}
fn default_llm_timeout() -> PositiveDur {
    PositiveDur(Duration::from_secs(30))
}
fn default_retries() -> u32 {
    2
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
    /// Several instances sharing the channels through leases.
    pub ha: HaConfig,
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
}

impl Default for HaConfig {
    fn default() -> Self {
        let raw = RawHa::default();
        HaConfig { enabled: false, bucket: raw.bucket.0, lease_ttl: raw.lease_ttl.0, instance: String::new() }
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
    /// Sampling temperature.
    pub temperature: f32,
    /// Completion token cap.
    pub max_tokens: u32,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries on connect error, 5xx and 429.
    pub retries: u32,
    /// Prices, for spend reports.
    pub price_per_million: Price,
    /// Circuit breaker settings.
    pub breaker: Breaker,
}

/// One channel, with `defaults` applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelConfig {
    /// CyTube channel name as the robot is configured.
    pub name: String,
    /// Providers in fallback order.
    pub providers: Vec<String>,
    /// The system prompt.
    pub system_prompt: String,
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

/// `loop_guard:`: after `max_exchanges` quick exchanges with one account, back off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopGuardConfig {
    /// Exchanges allowed within `window` before backing off.
    pub max_exchanges: u32,
    /// How close an answer to our reply must be to count as an exchange.
    pub window: Duration,
    /// First backoff; doubles for each further loop with the same account.
    pub backoff: Duration,
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
    /// Parses and validates YAML text. `origin` names the text in errors (the file path).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let at = Locator { text, origin };
        let raw: RawConfig =
            serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text)).map_err(|e| at.yaml(e))?;
        let builtin_at = Locator { text: BUILTIN_DEFAULTS, origin: "<built-in defaults>" };
        let builtin: RawChannel =
            serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(BUILTIN_DEFAULTS))
                .map_err(|e| builtin_at.yaml(e))?;

        if raw.bot.name.trim().is_empty() {
            return Err(at.key("bot.name", "name", "", 0, "the bot's account name must not be empty"));
        }
        if raw.defaults.name.is_some() {
            return Err(at.key("defaults.name", "name", "", 0, "a name belongs to a channel, not to defaults"));
        }
        let nats = resolve_nats(raw.nats, &at)?;
        let llm = resolve_llm(raw.llm, &at)?;
        if raw.channels.is_empty() {
            return Err(ConfigError::Unlocated {
                file: origin.into(),
                path: "channels".into(),
                message: "at least one channel is required".into(),
            });
        }
        let defaults = raw.defaults.over(builtin);
        let mut seen = BTreeSet::new();
        let mut names: Vec<String> = vec![raw.bot.name.clone()];
        let mut channels = Vec::with_capacity(raw.channels.len());
        for (i, ch) in raw.channels.into_iter().enumerate() {
            let path = format!("channels[{i}]");
            let Some(name) = ch.name.clone().filter(|n| !n.trim().is_empty()) else {
                return Err(ConfigError::Unlocated {
                    file: origin.into(),
                    path: format!("{path}.name"),
                    message: "every channel needs a name".into(),
                });
            };
            if !seen.insert(name.to_lowercase()) {
                // Lines before this one that also show `name: …<name>…`.
                let nth = names.iter().filter(|n| n.contains(name.as_str())).count();
                return Err(at.key(
                    &format!("{path}.name"),
                    "name",
                    &name,
                    nth,
                    &format!("channel `{name}` is listed twice"),
                ));
            }
            names.push(name.clone());
            let merged = ch.over(defaults.clone());
            channels.push(resolve_channel(name, merged, &path, &llm, &at)?);
        }
        let ha = HaConfig {
            enabled: raw.ha.enabled,
            bucket: raw.ha.bucket.0,
            lease_ttl: raw.ha.lease_ttl.0,
            instance: raw.ha.instance.unwrap_or_default(),
        };
        Ok(Config { bot: raw.bot, nats, kryten: raw.kryten, http: raw.http, llm, channels, dry_run: raw.dry_run, ha })
    }

    /// Risky settings worth a second look (`check --explain`). `env_is_set` tells whether
    /// an environment variable is set (the core never reads the environment itself).
    pub fn warnings(&self, env_is_set: impl Fn(&str) -> bool) -> Vec<String> {
        const COMMON: &[&str] = &[
            "the", "a", "and", "is", "it", "lol", "lmao", "hi", "hey", "hello", "yes", "no", "ok", "what", "why",
            "you", "i", "me", "this", "that", "good", "nice", "gg", "wow",
        ];
        let mut w = Vec::new();
        for (name, p) in &self.llm.providers {
            if let Some(var) = &p.api_key_env {
                if !env_is_set(var) {
                    w.push(format!("provider {name}: {var} is not set in this environment"));
                }
            }
        }
        for ch in &self.channels {
            let (l, n) = (&ch.limits, &ch.name);
            if l.per_user.max >= 30 && l.per_channel.max >= 60 && l.global_cooldown.is_zero() {
                w.push(format!(
                    "{n}: limits are effectively off (per_user {}, per_channel {}, no global cooldown)",
                    l.per_user.max, l.per_channel.max
                ));
            }
            if l.send_spacing < Duration::from_secs(1) {
                w.push(format!("{n}: send_spacing below 1s: CyTube drops faster lines unless the bot is a moderator"));
            }
            for k in &ch.triggers.keywords {
                for word in &k.words {
                    if k.probability >= 1.0 && k.cooldown.is_zero() && COMMON.contains(&word.to_lowercase().as_str()) {
                        w.push(format!(
                            "{n}: keyword `{word}` is common and fires every time (probability 1, no cooldown)"
                        ));
                    }
                }
            }
            if ch.response.max_length > 320 {
                w.push(format!(
                    "{n}: max_length {} is above CyTube's default of 320: the channel's server must allow it",
                    ch.response.max_length
                ));
            }
            if ch.triggers.contextual.enabled && ch.triggers.contextual.every < Duration::from_secs(60) {
                w.push(format!("{n}: contextual checks more often than once a minute cost an LLM call each"));
            }
        }
        w
    }

    /// The channel with this name, compared case-insensitively.
    pub fn channel(&self, name: &str) -> Option<&ChannelConfig> {
        self.channels.iter().find(|c| c.name.eq_ignore_ascii_case(name))
    }
}

fn resolve_nats(raw: RawNats, at: &Locator) -> Result<NatsConfig, ConfigError> {
    if raw.servers.is_empty() {
        return Err(at.key("nats.servers", "servers", "", 0, "at least one NATS server URL is required"));
    }
    Ok(NatsConfig {
        servers: raw.servers,
        user: raw.user,
        password_env: raw.password_env,
        token_env: raw.token_env,
        creds_file: raw.creds_file,
        tls: raw.tls,
        connect_timeout: raw.connect_timeout.0,
        subjects: raw.subjects,
        commands: raw.commands,
        outbound_queue: raw.outbound_queue,
    })
}

fn resolve_llm(raw: RawLlm, at: &Locator) -> Result<LlmConfig, ConfigError> {
    let mut providers = BTreeMap::new();
    for (name, p) in raw.providers {
        if !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://")) {
            return Err(at.key(
                &format!("llm.providers.{name}.base_url"),
                "base_url",
                &p.base_url,
                0,
                "base_url must start with http:// or https://",
            ));
        }
        providers.insert(
            name,
            ProviderConfig {
                base_url: p.base_url.trim_end_matches('/').to_owned(),
                api_key_env: p.api_key_env,
                model: p.model,
                temperature: p.temperature,
                max_tokens: p.max_tokens,
                timeout: p.timeout.0,
                retries: p.retries,
                price_per_million: p.price_per_million,
                breaker: p.breaker,
            },
        );
    }
    Ok(LlmConfig { providers, fallback_responses: raw.fallback_responses, budget: raw.budget })
}

/// Takes a field that the built-in defaults always provide.
fn need<T>(v: Option<T>, path: &str, origin: &str) -> Result<T, ConfigError> {
    v.ok_or_else(|| ConfigError::Unlocated {
        file: origin.into(),
        path: path.into(),
        message: "missing value (and no built-in default)".into(),
    })
}

fn resolve_channel(
    name: String,
    raw: RawChannel,
    path: &str,
    llm: &LlmConfig,
    at: &Locator,
) -> Result<ChannelConfig, ConfigError> {
    let o = at.origin;
    let providers = need(raw.provider, &format!("{path}.provider"), o)?.0;
    for p in &providers {
        if !llm.providers.contains_key(p) {
            let known: Vec<_> = llm.providers.keys().map(String::as_str).collect();
            let hint = if known.is_empty() {
                "no providers are defined under llm.providers".to_string()
            } else {
                format!("defined: {}", known.join(", "))
            };
            return Err(at.key(
                &format!("{path}.provider"),
                "provider",
                p,
                0,
                &format!("unknown provider `{p}` ({hint})"),
            ));
        }
    }
    let ctx = need(raw.context, &format!("{path}.context"), o)?;
    let tr = need(raw.triggers, &format!("{path}.triggers"), o)?;
    let mention = need(tr.mention, &format!("{path}.triggers.mention"), o)?;
    let contextual = need(tr.contextual, &format!("{path}.triggers.contextual"), o)?;
    let media = need(tr.media_change, &format!("{path}.triggers.media_change"), o)?;
    let pm = need(tr.pm, &format!("{path}.triggers.pm"), o)?;
    let keywords = need(tr.keywords, &format!("{path}.triggers.keywords"), o)?;
    for (k, kw) in keywords.iter().enumerate() {
        if kw.words.iter().all(|w| w.trim().is_empty()) {
            return Err(at.key(
                &format!("{path}.triggers.keywords[{k}].words"),
                "words",
                "",
                0,
                "a keyword group needs at least one word",
            ));
        }
    }
    let lim = need(raw.limits, &format!("{path}.limits"), o)?;
    let window = |w: Option<RawWindow>, p: &str| -> Result<WindowConfig, ConfigError> {
        let w = need(w, p, o)?;
        Ok(WindowConfig {
            max: need(w.max, &format!("{p}.max"), o)?.get(),
            window: need(w.window, &format!("{p}.window"), o)?.0,
        })
    };
    let resp = need(raw.response, &format!("{path}.response"), o)?;
    Ok(ChannelConfig {
        name,
        providers,
        system_prompt: need(raw.system_prompt, &format!("{path}.system_prompt"), o)?,
        context: ContextConfig {
            max_messages: need(ctx.max_messages, &format!("{path}.context.max_messages"), o)?.get(),
            max_age: need(ctx.max_age, &format!("{path}.context.max_age"), o)?.0,
        },
        triggers: TriggersConfig {
            mention: MentionConfig {
                enabled: need(mention.enabled, "mention.enabled", o)?,
                probability: need(mention.probability, "mention.probability", o)?.0,
                cooldown: need(mention.cooldown, "mention.cooldown", o)?.0,
            },
            keywords: keywords
                .into_iter()
                .map(|k| KeywordConfig {
                    words: k.words.into_iter().filter(|w| !w.trim().is_empty()).collect(),
                    probability: k.probability.map_or(1.0, |p| p.0),
                    cooldown: k.cooldown.map_or(Duration::ZERO, |d| d.0),
                })
                .collect(),
            contextual: ContextualConfig {
                enabled: need(contextual.enabled, "contextual.enabled", o)?,
                every: need(contextual.every, "contextual.every", o)?.0,
                min_new_messages: need(contextual.min_new_messages, "contextual.min_new_messages", o)?,
                probability: need(contextual.probability, "contextual.probability", o)?.0,
            },
            pm_enabled: need(pm.enabled, "pm.enabled", o)?,
            media_change: MediaChangeConfig {
                enabled: need(media.enabled, "media_change.enabled", o)?,
                probability: need(media.probability, "media_change.probability", o)?.0,
            },
        },
        limits: LimitsConfig {
            per_user: window(lim.per_user, &format!("{path}.limits.per_user"))?,
            per_channel: window(lim.per_channel, &format!("{path}.limits.per_channel"))?,
            global_cooldown: need(lim.global_cooldown, "limits.global_cooldown", o)?.0,
            media_change_cooldown: need(lim.media_change_cooldown, "limits.media_change_cooldown", o)?.0,
            max_in_flight: need(lim.max_in_flight, "limits.max_in_flight", o)?.get(),
            send_spacing: need(lim.send_spacing, "limits.send_spacing", o)?.0,
        },
        response: ResponseConfig {
            max_length: need(resp.max_length, "response.max_length", o)?.0,
            max_parts: need(resp.max_parts, "response.max_parts", o)?.get(),
            strip_markdown: need(resp.strip_markdown, "response.strip_markdown", o)?,
            block_patterns: need(resp.block_patterns, "response.block_patterns", o)?,
            block_keywords: need(resp.block_keywords, "response.block_keywords", o)?,
            dedupe_window: need(resp.dedupe_window, "response.dedupe_window", o)?,
        },
        loop_guard: {
            let g = need(raw.loop_guard, &format!("{path}.loop_guard"), o)?;
            LoopGuardConfig {
                max_exchanges: need(g.max_exchanges, "loop_guard.max_exchanges", o)?.get(),
                window: need(g.window, "loop_guard.window", o)?.0,
                backoff: need(g.backoff, "loop_guard.backoff", o)?.0,
            }
        },
        penalty: {
            let p = need(raw.penalty, &format!("{path}.penalty"), o)?;
            PenaltyConfig { base: need(p.base, "penalty.base", o)?.0, max: need(p.max, "penalty.max", o)?.0 }
        },
        budget: {
            let b = need(raw.budget, &format!("{path}.budget"), o)?;
            BudgetConfig {
                tokens_per_hour: need(b.tokens_per_hour, "budget.tokens_per_hour", o)?,
                tokens_per_day: need(b.tokens_per_day, "budget.tokens_per_day", o)?,
                include_pms: need(b.include_pms, "budget.include_pms", o)?,
            }
        },
        ignore_users: need(raw.ignore_users, &format!("{path}.ignore_users"), o)?
            .into_iter()
            .map(|u| u.to_lowercase())
            .collect(),
    })
}

// ---------------------------------------------------------------------------------------
// Error locations.
// ---------------------------------------------------------------------------------------

/// Finds where a key stands in the text, for errors found after parsing (cross-field
/// checks), which serde cannot locate.
struct Locator<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Locator<'_> {
    /// An error at the `skip`-th line (0-based) that has `key:` followed by `value`
    /// (any value when `value` is empty); unlocated when no such line exists.
    fn key(&self, path: &str, key: &str, value: &str, skip: usize, message: &str) -> ConfigError {
        let found = self
            .text
            .lines()
            .enumerate()
            .filter_map(|(i, line)| {
                let col = line.find(&format!("{key}:"))?;
                let rest = &line[col + key.len() + 1..];
                (value.is_empty() || rest.contains(value)).then_some((i + 1, col + 1))
            })
            .nth(skip);
        match found {
            Some((line, column)) => ConfigError::Invalid {
                file: self.origin.into(),
                line,
                column,
                path: path.into(),
                message: message.into(),
            },
            None => ConfigError::Unlocated { file: self.origin.into(), path: path.into(), message: message.into() },
        }
    }
}

impl Locator<'_> {
    /// Turns a serde_yaml error (with the full key path tracked by serde_path_to_error)
    /// into ours. serde_yaml places a value error at the start of the enclosing map, so
    /// the position is moved forward to the offending key itself.
    fn yaml(&self, e: serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
        let path = e.path().to_string();
        let inner = e.inner();
        let mut message = inner.to_string();
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
        // serde_yaml prefixes its own (shorter) path: drop it, ours is complete.
        if let Some((prefix, rest)) = message.split_once(": ") {
            if !prefix.contains(' ') && path.starts_with(prefix.trim_start_matches('.')) {
                message = rest.to_owned();
            }
        }
        if let Some(hint) = did_you_mean(&message) {
            message = format!("{message} (did you mean `{hint}`?)");
        }
        let Some(loc) = inner.location() else {
            return ConfigError::Unlocated { file: self.origin.into(), path, message };
        };
        let leaf = path.rsplit('.').next().filter(|k| !k.ends_with(']') && !k.is_empty());
        let (line, column) =
            leaf.and_then(|k| self.find_key_after(k, loc.line(), loc.column())).unwrap_or((loc.line(), loc.column()));
        ConfigError::Invalid { file: self.origin.into(), line, column, path, message }
    }

    /// The first `key:` at or after (line, column), 1-based.
    fn find_key_after(&self, key: &str, line: usize, column: usize) -> Option<(usize, usize)> {
        let needle = format!("{key}:");
        self.text.lines().enumerate().skip(line.saturating_sub(1)).find_map(|(i, text)| {
            let from = if i + 1 == line { column.saturating_sub(1).min(text.len()) } else { 0 };
            let at = text.get(from..)?.find(&needle)? + from;
            let boundary = at == 0 || !text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_');
            boundary.then_some((i + 1, at + 1))
        })
    }
}

/// For serde's "unknown field `x`, expected `a`, `b`" finds the expected name closest to
/// `x` (edit distance ≤ 2).
fn did_you_mean(message: &str) -> Option<String> {
    if !message.starts_with("unknown field") && !message.starts_with("unknown variant") {
        return None;
    }
    let mut quoted = message.split('`').skip(1).step_by(2);
    let unknown = quoted.next()?;
    quoted
        .map(|c| (edit_distance(unknown, c), c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "bot: { name: KrytenBot }\nllm:\n  providers:\n    main: { base_url: 'http://127.0.0.1:9/v1', model: m }\nchannels:\n  - name: lounge\n";

    fn err(yaml: &str) -> String {
        Config::parse(yaml, "bot.yaml").expect_err("config should be refused").to_string()
    }

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let c = Config::parse(MINIMAL, "bot.yaml").unwrap();
        let ch = &c.channels[0];
        assert_eq!(ch.providers, vec!["main"]);
        assert_eq!(ch.limits.per_user, WindowConfig { max: 3, window: Duration::from_secs(60) });
        assert_eq!(ch.limits.send_spacing, Duration::from_secs(1));
        assert_eq!(ch.response.max_length, 320);
        assert!(ch.triggers.mention.enabled && ch.triggers.pm_enabled && !ch.triggers.contextual.enabled);
        assert_eq!(c.nats.servers, vec!["nats://127.0.0.1:4222"]);
        assert_eq!(c.http.listen, "127.0.0.1:8080");
        assert_eq!(c.kryten.domain, "cytu.be");
    }

    #[test]
    fn channel_overrides_defaults_field_by_field_in_nested_blocks() {
        let yaml = format!(
            "{MINIMAL}  - name: movies\n    limits: {{ per_user: {{ max: 7 }} }}\ndefaults:\n  limits: {{ per_user: {{ window: 2m }}, global_cooldown: 9s }}\n"
        );
        let c = Config::parse(&yaml, "bot.yaml").unwrap();
        let movies = c.channel("MOVIES").unwrap();
        assert_eq!(movies.limits.per_user, WindowConfig { max: 7, window: Duration::from_secs(120) });
        assert_eq!(movies.limits.global_cooldown, Duration::from_secs(9));
        let lounge = c.channel("lounge").unwrap();
        assert_eq!(lounge.limits.per_user, WindowConfig { max: 3, window: Duration::from_secs(120) });
    }

    #[test]
    fn unknown_key_is_named_with_line_column_and_a_hint() {
        let e = err(&format!("{MINIMAL}    limits: {{ per_usr: {{ max: 1 }} }}\n"));
        assert!(e.starts_with("bot.yaml:7:"), "{e}");
        assert!(e.contains("channels[0].limits"), "{e}");
        assert!(e.contains("did you mean `per_user`"), "{e}");
    }

    #[test]
    fn probability_out_of_range_is_refused_at_its_line() {
        let e = err(&format!("{MINIMAL}    triggers: {{ mention: {{ probability: 1.5 }} }}\n"));
        assert!(e.starts_with("bot.yaml:7:"), "{e}");
        assert!(e.contains("channels[0].triggers.mention.probability"), "{e}");
        assert!(e.contains("outside 0..=1"), "{e}");
    }

    #[test]
    fn api_key_literal_is_refused_with_the_fix() {
        let e = err("bot: { name: B }\nllm:\n  providers:\n    main:\n      base_url: https://x/v1\n      model: m\n      api_key: sk-123\nchannels: [ { name: a } ]\n");
        assert!(e.contains("keys come from the environment: use api_key_env"), "{e}");
        assert!(e.starts_with("bot.yaml:7:"), "{e}");
        assert!(!e.contains("sk-123"), "the secret must not be echoed: {e}");
    }

    #[test]
    fn bad_durations_regexes_and_lengths_are_refused() {
        assert!(err(&format!("{MINIMAL}    limits: {{ global_cooldown: soon }}\n")).contains("invalid duration `soon`"));
        assert!(err(&format!("{MINIMAL}    limits: {{ per_user: {{ window: 0s }} }}\n")).contains("longer than zero"));
        assert!(err(&format!("{MINIMAL}    response: {{ block_patterns: ['(unclosed'] }}\n")).contains("invalid regex"));
        assert!(err(&format!("{MINIMAL}    response: {{ max_length: 5 }}\n")).contains("minimum of 20"));
    }

    #[test]
    fn cross_field_errors_name_their_line() {
        let e = err(&format!("{MINIMAL}  - name: Lounge\n"));
        assert!(e.contains("channel `Lounge` is listed twice"), "{e}");
        assert!(e.starts_with("bot.yaml:7:"), "{e}");
        let e = err(&format!("{MINIMAL}    provider: [main, backup]\n"));
        assert!(e.contains("unknown provider `backup` (defined: main)"), "{e}");
        assert!(e.starts_with("bot.yaml:7:"), "{e}");
    }

    #[test]
    fn risky_settings_are_warned_about() {
        let yaml = format!(
            "{MINIMAL}    limits: {{ per_user: {{ max: 100 }}, per_channel: {{ max: 500 }}, global_cooldown: 0s, send_spacing: 0s }}\n    response: {{ max_length: 500 }}\n    triggers: {{ keywords: [ {{ words: [lol], probability: 1.0 }} ] }}\n"
        )
        .replace("model: m }", "model: m, api_key_env: SOME_KEY }");
        let c = Config::parse(&yaml, "bot.yaml").unwrap();
        let w = c.warnings(|_| false).join("\n");
        for needle in [
            "SOME_KEY is not set",
            "limits are effectively off",
            "send_spacing below 1s",
            "keyword `lol`",
            "max_length 500",
        ] {
            assert!(w.contains(needle), "{needle} missing in:\n{w}");
        }
        let quiet = Config::parse(MINIMAL, "bot.yaml").unwrap();
        assert!(quiet.warnings(|_| true).is_empty(), "{:?}", quiet.warnings(|_| true));
    }

    #[test]
    fn no_channel_is_an_error() {
        assert!(err("bot: { name: B }\nchannels: []\n").contains("at least one channel"));
    }

    #[test]
    fn syntax_errors_carry_a_location() {
        let e = err("bot: { name: B\nchannels: [\n");
        assert!(e.starts_with("bot.yaml:"), "{e}");
        assert!(matches!(Config::parse("bot: [", "x.yaml"), Err(ConfigError::Invalid { .. })));
    }
}
