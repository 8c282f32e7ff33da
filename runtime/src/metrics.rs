//! Prometheus metrics (prometheus-client). Labels are bounded: channel, trigger,
//! outcome and reason only, never users or text.

use chatbot_core::Decision;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabel {
    channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    channel: String,
    trigger: String,
    outcome: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    channel: String,
    command: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    provider: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabel {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    provider: String,
    /// `input` (not cached), `cached_input` or `output`.
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// Failed lease operations by kind (`acquire`, `renew`, `save`, `release`, `watch`): a
/// handle the lease workers keep.
#[derive(Clone, Debug, Default)]
pub struct LeaseFailures(Family<KindLabel, Counter>);

impl LeaseFailures {
    /// One more failure of `kind`.
    pub fn inc(&self, kind: &'static str) {
        self.0.get_or_create(&KindLabel { kind }).inc();
    }
}

/// Every metric family the daemon exports.
pub struct Metrics {
    registry: Registry,
    events: Family<ChannelLabel, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    moderation: Family<CommandLabels, Counter>,
    llm_requests: Family<OutcomeLabels, Counter>,
    llm_latency: Family<ProviderLabel, Histogram>,
    llm_tokens: Family<TokenLabels, Counter>,
    llm_cost: Family<ProviderLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// 1 while connected to NATS.
    pub nats_connected: Gauge,
    ha_channel_owned: Family<ChannelLabel, Gauge>,
    messages_sent: Family<ChannelLabel, Counter>,
    /// Commands waiting in the channels' send queues.
    pub queue_depth: Gauge,
    /// LLM requests outstanding.
    pub in_flight: Gauge,
    /// NATS reconnections since start.
    pub reconnects: Counter,
    /// Channels configured.
    pub channels: Gauge,
    tokens_hour: Family<ChannelLabel, Gauge>,
    ha_owned: Gauge,
    ha_live: Gauge,
    ha_renewals: Counter,
    ha_takeovers: Counter,
    ha_acquired: Counter,
    ha_lost: Counter,
    /// Failed lease operations by kind.
    pub ha_lease_failures: LeaseFailures,
    /// Channels nobody has held for longer than the lease TTL, as this instance sees it.
    pub ha_orphaned: Gauge,
    /// 1 while the lease bucket answers.
    pub ha_bucket_reachable: Gauge,
    /// The lease counters last exported (counters advance by the difference).
    ha_last: std::sync::Mutex<chatbot_core::LeaseStats>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("llm_chatbot");
        let m = Metrics {
            events: Family::default(),
            decisions: Family::default(),
            moderation: Family::default(),
            llm_requests: Family::default(),
            llm_latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.05, 2.0, 10))),
            llm_tokens: Family::default(),
            llm_cost: Family::default(),
            nats_connected: Gauge::default(),
            ha_channel_owned: Family::default(),
            messages_sent: Family::default(),
            queue_depth: Gauge::default(),
            in_flight: Gauge::default(),
            reconnects: Counter::default(),
            channels: Gauge::default(),
            tokens_hour: Family::default(),
            ha_owned: Gauge::default(),
            ha_live: Gauge::default(),
            ha_renewals: Counter::default(),
            ha_takeovers: Counter::default(),
            ha_acquired: Counter::default(),
            ha_lost: Counter::default(),
            ha_lease_failures: LeaseFailures::default(),
            ha_orphaned: Gauge::default(),
            ha_bucket_reachable: Gauge::default(),
            ha_last: Default::default(),
            registry: Registry::default(),
        };
        registry.register("events", "Kryten events received, by channel", m.events.clone());
        registry.register("decisions", "Engine decisions by channel, trigger, outcome and reason", m.decisions.clone());
        registry.register(
            "moderation_commands",
            "Moderators' chat commands obeyed, by channel and command",
            m.moderation.clone(),
        );
        registry.register(
            "llm_requests",
            "LLM requests by provider and outcome (ok or the failure kind)",
            m.llm_requests.clone(),
        );
        registry.register(
            "llm_tokens",
            "LLM tokens by provider and kind (input not cached, cached_input, output), as providers reported them",
            m.llm_tokens.clone(),
        );
        registry.register(
            "llm_cost",
            "LLM spend at the providers' price_per_million (cached input at cached_input), in their currency",
            m.llm_cost.clone(),
        );
        registry.register("nats_connected", "1 while connected to NATS, 0 while not", m.nats_connected.clone());
        registry.register(
            "ha_channel_owned",
            "1 for each channel whose lease this instance holds, 0 for the others (ha)",
            m.ha_channel_owned.clone(),
        );
        registry.register(
            "llm_request_duration_seconds",
            "LLM request latency including retries, by provider",
            m.llm_latency.clone(),
        );
        registry.register("messages_sent", "Chat messages and PMs published, by channel", m.messages_sent.clone());
        registry.register("queue_depth", "Replies waiting for their send slot", m.queue_depth.clone());
        registry.register("llm_in_flight", "LLM requests outstanding", m.in_flight.clone());
        registry.register("nats_reconnects", "NATS reconnections since start", m.reconnects.clone());
        registry.register("channels", "Channels configured", m.channels.clone());
        registry.register("tokens_last_hour", "LLM tokens spent in the last hour, by channel", m.tokens_hour.clone());
        registry.register("ha_owned_channels", "Channel leases this instance holds (ha)", m.ha_owned.clone());
        registry.register("ha_live_instances", "Instances alive, this one included (ha)", m.ha_live.clone());
        registry.register("ha_lease_renewals", "Lease renewals (ha)", m.ha_renewals.clone());
        registry.register("ha_leases_acquired", "Leases acquired (ha)", m.ha_acquired.clone());
        registry.register(
            "ha_takeovers",
            "Leases acquired that another instance held before (ha)",
            m.ha_takeovers.clone(),
        );
        registry.register("ha_leases_lost", "Leases lost without releasing them (ha)", m.ha_lost.clone());
        registry.register(
            "ha_lease_failures",
            "Lease operations the bucket did not complete, by kind: acquire, renew, save, release, watch (ha)",
            m.ha_lease_failures.0.clone(),
        );
        registry.register(
            "ha_orphaned_channels",
            "Channels without an owner anywhere for longer than lease_ttl, as this instance sees them (ha)",
            m.ha_orphaned.clone(),
        );
        registry.register(
            "ha_bucket_reachable",
            "1 while the lease bucket answers (ha)",
            m.ha_bucket_reachable.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The event counter of `channel`; a subscription keeps it, so counting an event
    /// costs one atomic add (no label lookup or allocation per message).
    pub fn events_of(&self, channel: &str) -> Counter {
        self.events.get_or_create(&ChannelLabel { channel: channel.to_owned() }).clone()
    }

    /// One decision record.
    pub fn decision(&self, d: &Decision) {
        let labels = DecisionLabels {
            channel: d.channel.clone(),
            trigger: d.trigger.map_or("", |t| t.label()).to_owned(),
            outcome: d.outcome.label().to_owned(),
            reason: d.reason.map_or("", |r| r.label()).to_owned(),
        };
        self.decisions.get_or_create(&labels).inc();
    }

    /// One moderator command obeyed.
    pub fn moderation(&self, r: &chatbot_core::ModerationRecord) {
        self.moderation.get_or_create(&CommandLabels { channel: r.channel.clone(), command: r.command }).inc();
    }

    /// One LLM request to `provider` finished.
    pub fn llm(&self, provider: &str, outcome: &str, seconds: f64) {
        let labels = OutcomeLabels { provider: provider.to_owned(), outcome: outcome.to_owned() };
        self.llm_requests.get_or_create(&labels).inc();
        self.llm_latency.get_or_create(&ProviderLabel { provider: provider.to_owned() }).observe(seconds);
    }

    /// Tokens a reply from `provider` used, and what they cost.
    pub fn usage(&self, provider: &str, usage: &chatbot_core::Usage, cost: f64) {
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        for (kind, n) in
            [("input", usage.input_tokens - cached), ("cached_input", cached), ("output", usage.output_tokens)]
        {
            self.llm_tokens.get_or_create(&TokenLabels { provider: provider.to_owned(), kind }).inc_by(n);
        }
        self.llm_cost.get_or_create(&ProviderLabel { provider: provider.to_owned() }).inc_by(cost);
    }

    /// Whether this instance holds `channel`'s lease (`ha`).
    pub fn channel_owned(&self, channel: &str, owned: bool) {
        self.ha_channel_owned.get_or_create(&ChannelLabel { channel: channel.to_owned() }).set(i64::from(owned));
    }

    /// One message published to `channel`.
    pub fn sent(&self, channel: &str) {
        self.messages_sent.get_or_create(&ChannelLabel { channel: channel.to_owned() }).inc();
    }

    /// Tokens `channel` spent in the last hour.
    pub fn tokens(&self, channel: &str, tokens: u64) {
        self.tokens_hour.get_or_create(&ChannelLabel { channel: channel.to_owned() }).set(tokens as i64);
    }

    /// The lease figures (`ha`).
    pub fn leases(&self, s: chatbot_core::LeaseStats) {
        self.ha_owned.set(s.owned as i64);
        self.ha_live.set(s.live_instances as i64);
        if let Ok(mut last) = self.ha_last.lock() {
            self.ha_renewals.inc_by(s.renewals.saturating_sub(last.renewals));
            self.ha_takeovers.inc_by(s.takeovers.saturating_sub(last.takeovers));
            self.ha_acquired.inc_by(s.acquired.saturating_sub(last.acquired));
            self.ha_lost.inc_by(s.lost.saturating_sub(last.lost));
            *last = s;
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
