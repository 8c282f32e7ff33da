//! Stage one: the raw serde model that mirrors the YAML file. Every channel field is
//! optional, so `defaults:` and each channel can set any subset; [`Layer`] combines a
//! channel over `defaults` over the built-in defaults field by field. No validation
//! beyond what the value types do, and no defaults resolution: that is `resolve.rs`.

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use serde::Deserialize;

use super::value::*;
use super::{
    BotConfig, Breaker, CommandScheme, GlobalBudget, HttpConfig, KrytenConfig, MaxTokensParam, Price, SubjectScheme,
    TlsConfig,
};

/// Combines two layers of the same settings: `self` wins field by field.
pub(super) trait Layer: Sized {
    fn over(self, _under: Self) -> Self {
        self
    }
}

pub(super) fn layer<T: Layer>(over: Option<T>, under: Option<T>) -> Option<T> {
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
impl Layer for TimeZoneName {}
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
        pub(super) struct $name { $( pub(super) $field: Option<$ty>, )* }
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
        system_prompt_file: String,
        prompts: RawPrompts,
        timezone: TimeZoneName,
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
    /// Per-trigger instruction templates; `null` keeps the built-in wording.
    struct RawPrompts {
        mention: String,
        keyword: String,
        pm: String,
        media_change: String,
        contextual: String,
        participation_check: String,
    }
);
layered!(
    struct RawLoopGuard {
        max_exchanges: NonZeroU32,
        window: PositiveDur,
        backoff: PositiveDur,
        quick_reply: Dur,
        typing_speed: NonZeroU32,
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
pub(super) struct RawKeyword {
    pub(super) words: Vec<String>,
    pub(super) probability: Option<Probability>,
    pub(super) cooldown: Option<Dur>,
}

/// The built-in defaults every channel starts from (SPEC.md §3), written as YAML so they
/// read exactly like the documented example.
pub(super) const BUILTIN_DEFAULTS: &str = r#"
provider: main
system_prompt: "You are a friendly regular in this chat room. Reply in one short line."
timezone: UTC
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
loop_guard: { max_exchanges: 3, window: 2m, backoff: 5m, quick_reply: 6s, typing_speed: 15 }
penalty: { base: 30s, max: 30m }
budget: { tokens_per_hour: 0, tokens_per_day: 0, include_pms: true }
"#;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) bot: BotConfig,
    #[serde(default)]
    pub(super) nats: RawNats,
    #[serde(default)]
    pub(super) kryten: KrytenConfig,
    #[serde(default)]
    pub(super) http: HttpConfig,
    #[serde(default)]
    pub(super) llm: RawLlm,
    #[serde(default)]
    pub(super) defaults: RawChannel,
    #[serde(default)]
    pub(super) channels: Vec<RawChannel>,
    #[serde(default)]
    pub(super) dry_run: bool,
    #[serde(default)]
    pub(super) seed: Option<u64>,
    #[serde(default)]
    pub(super) ha: RawHa,
    #[serde(default)]
    pub(super) moderation: RawModeration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModeration {
    #[serde(default = "yes")]
    pub(super) enabled: bool,
    #[serde(default = "default_prefix")]
    pub(super) prefix: CommandPrefix,
    #[serde(default = "default_min_rank")]
    pub(super) min_rank: Rank,
}

impl Default for RawModeration {
    fn default() -> Self {
        RawModeration { enabled: true, prefix: default_prefix(), min_rank: default_min_rank() }
    }
}

fn yes() -> bool {
    true
}
fn default_prefix() -> CommandPrefix {
    CommandPrefix("!".into())
}
fn default_min_rank() -> Rank {
    Rank(2.0)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHa {
    #[serde(default)]
    pub(super) enabled: bool,
    #[serde(default = "default_ha_bucket")]
    pub(super) bucket: BucketName,
    #[serde(default = "default_lease_ttl")]
    pub(super) lease_ttl: LeaseTtl,
    #[serde(default)]
    pub(super) instance: Option<String>,
    #[serde(default)]
    pub(super) replicas: Option<Replicas>,
}

impl Default for RawHa {
    fn default() -> Self {
        RawHa {
            enabled: false,
            bucket: default_ha_bucket(),
            lease_ttl: default_lease_ttl(),
            instance: None,
            replicas: None,
        }
    }
}

pub(super) fn default_ha_bucket() -> BucketName {
    BucketName("llm_chatbot_leases".into())
}
pub(super) fn default_lease_ttl() -> LeaseTtl {
    LeaseTtl(Duration::from_secs(10))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNats {
    #[serde(default = "default_servers")]
    pub(super) servers: Vec<String>,
    #[serde(default)]
    pub(super) user: Option<String>,
    #[serde(default)]
    pub(super) password_env: Option<String>,
    #[serde(default)]
    pub(super) token_env: Option<String>,
    #[serde(default)]
    pub(super) creds_file: Option<String>,
    #[serde(default)]
    pub(super) tls: TlsConfig,
    #[serde(default = "default_connect_timeout")]
    pub(super) connect_timeout: Dur,
    #[serde(default)]
    pub(super) subjects: SubjectScheme,
    #[serde(default)]
    pub(super) commands: CommandScheme,
    #[serde(default = "default_outbound_queue")]
    pub(super) outbound_queue: usize,
    #[serde(default, rename = "password")]
    pub(super) _password: Option<ForbiddenSecret>,
    #[serde(default, rename = "token")]
    pub(super) _token: Option<ForbiddenSecret>,
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

pub(super) fn default_servers() -> Vec<String> {
    vec!["nats://127.0.0.1:4222".into()]
}
pub(super) fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
pub(super) fn default_outbound_queue() -> usize {
    100
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLlm {
    #[serde(default)]
    pub(super) providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    pub(super) fallback_responses: Vec<String>,
    #[serde(default)]
    pub(super) budget: GlobalBudget,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    pub(super) base_url: String,
    #[serde(default)]
    pub(super) api_key_env: Option<String>,
    #[serde(default, rename = "api_key")]
    pub(super) _api_key: Option<Forbidden>,
    pub(super) model: String,
    /// Absent: the default; `null`: not sent.
    #[serde(default = "default_temperature", deserialize_with = "nullable")]
    pub(super) temperature: Option<f32>,
    #[serde(default = "default_max_tokens")]
    pub(super) max_tokens: u32,
    #[serde(default)]
    pub(super) max_tokens_param: MaxTokensParam,
    #[serde(default)]
    pub(super) extra_body: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub(super) extra_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) extra_headers_env: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) extra_query: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) api_key_header: Option<String>,
    #[serde(default)]
    pub(super) ca_file: Option<String>,
    #[serde(default)]
    pub(super) proxy: Option<String>,
    #[serde(default = "default_llm_timeout")]
    pub(super) timeout: PositiveDur,
    #[serde(default = "default_retries")]
    pub(super) retries: u32,
    #[serde(default)]
    pub(super) price_per_million: Price,
    #[serde(default)]
    pub(super) breaker: Breaker,
}

pub(super) fn default_temperature() -> Option<f32> {
    Some(0.8)
}
/// A value that may be written `null` (which differs from leaving the key out).
fn nullable<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Option::<T>::deserialize(d)
}
pub(super) fn default_max_tokens() -> u32 {
    200
}
pub(super) fn default_llm_timeout() -> PositiveDur {
    PositiveDur(Duration::from_secs(30))
}
pub(super) fn default_retries() -> u32 {
    2
}
