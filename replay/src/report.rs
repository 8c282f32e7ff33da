//! The replay report: what the bot would have done, per channel, and why.
//!
//! Built incrementally from the simulator's trace; every count is keyed by the same
//! labels the daemon uses in logs and metrics (trigger, outcome, reason), so a number in
//! a report can be looked up in production dashboards.

use std::collections::{BTreeMap, HashMap};

use chatbot_core::{
    ChannelStats, CommandKind, Config, Decision, LlmCall, LlmError, LlmReply, Millis, Outcome, Purpose, RequestId,
};
use chatbot_sim::llm::estimate_tokens;
use serde::Serialize;

/// Causes remembered for the reply list; older ones are forgotten (bounded memory).
const MAX_CAUSES: usize = 4096;

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// RNG seed used.
    pub seed: u64,
    /// LLM stand-in used.
    pub llm: String,
    /// Corpus events read.
    pub events: u64,
    /// Lines that were not envelopes, with their numbers.
    pub bad_lines: Vec<String>,
    /// Virtual time of the first event (epoch ms).
    #[serde(serialize_with = "ms")]
    pub start: Millis,
    /// Virtual time at the end (epoch ms).
    #[serde(serialize_with = "ms")]
    pub end: Millis,
    /// Events for channels not in the config, or not parseable at all.
    pub unrouted: u64,
    /// Per channel, in config order.
    pub channels: Vec<ChannelReport>,
    /// Every decision record, in the daemon's log shape.
    pub decisions: Vec<Decision>,
    /// A recording's events before the live bot started (not replayed).
    #[serde(skip_serializing_if = "is_zero")]
    pub before_start: u64,
    /// A recording replayed: how the replay compares with what the live bot did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<crate::live::LiveComparison>,
    #[serde(skip)]
    pub(crate) live_on: bool,
    /// What was sent for each event (a recording's comparison lists it).
    #[serde(skip)]
    pub(crate) sent_by_event: HashMap<String, String>,
    /// With `--prompts`: every LLM request's messages, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<PromptRecord>,
    #[serde(skip)]
    pub(crate) keep_prompts: bool,
    /// The previous request of each conversation (channel, PM thread).
    #[serde(skip)]
    last_prompt: HashMap<(String, Option<String>), Vec<chatbot_core::PromptMessage>>,
    #[serde(skip)]
    pub(crate) causes: HashMap<String, String>,
    #[serde(skip)]
    cause_order: std::collections::VecDeque<String>,
    #[serde(skip)]
    calls: HashMap<RequestId, (String, u64)>,
    #[serde(skip)]
    prices: BTreeMap<String, chatbot_core::config::Price>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn ms<S: serde::Serializer>(m: &Millis, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(m.0)
}

/// One LLM request as sent (`replay --format json --prompts`).
#[derive(Debug, Clone, Serialize)]
pub struct PromptRecord {
    /// Virtual time (epoch ms).
    #[serde(serialize_with = "ms")]
    pub at: Millis,
    /// Channel.
    pub channel: String,
    /// The request id (`slot-seq`).
    pub request: String,
    /// `reply` or `participation_check`.
    pub purpose: &'static str,
    /// The PM conversation it continues, if any.
    pub thread: Option<String>,
    /// The messages: `{role, content}`.
    pub messages: Vec<serde_json::Value>,
}

/// OpenAI caches prompts of at least this many tokens, in steps of [`CACHE_STEP`].
const CACHE_MIN_TOKENS: u64 = 1024;
const CACHE_STEP: u64 = 128;

/// One channel's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChannelReport {
    /// Channel name.
    pub name: String,
    /// Events received, by CyTube event name.
    pub events: BTreeMap<String, u64>,
    /// Lines not considered, by reason.
    pub ignored: BTreeMap<String, u64>,
    /// Triggers that fired, by trigger.
    pub fired: BTreeMap<String, u64>,
    /// Triggers that matched but were silenced: trigger → reason → count.
    pub suppressed: BTreeMap<String, BTreeMap<String, u64>>,
    /// Silences by reason, over all triggers.
    pub silences: BTreeMap<String, u64>,
    /// Replies produced but not sent, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Chat messages sent.
    pub said: u64,
    /// Private messages sent.
    pub pms: u64,
    /// Of the messages sent, fallback lines.
    pub fallbacks: u64,
    /// Chat messages sent per hour of corpus time.
    pub said_per_hour: f64,
    /// Users whose lines fired triggers most often.
    pub top_users: Vec<(String, u64)>,
    /// LLM requests by purpose.
    pub llm_calls: BTreeMap<String, u64>,
    /// LLM answers by provider: `ok` or the failure label.
    pub llm_answers: BTreeMap<String, BTreeMap<String, u64>>,
    /// Estimated prompt tokens.
    pub input_tokens: u64,
    /// Estimated completion tokens.
    pub output_tokens: u64,
    /// Prompt tokens the provider reported as served from its cache.
    pub cached_input_tokens: u64,
    /// Estimated cost at the providers' `price_per_million`.
    pub cost: f64,
    /// Tokens per hour of corpus time.
    pub tokens_per_hour: f64,
    /// Median share of a request (by characters) that repeats the start of the previous
    /// request of the same conversation: what a provider's prompt cache can reuse.
    pub prefix_reuse: Option<f64>,
    /// The same by tokens, from the cached tokens providers reported (none offline).
    pub prefix_reuse_tokens: Option<f64>,
    /// What prompt caching saves at the providers' `cached_input` price (estimated from
    /// the shared prefixes, by OpenAI's rule: prompts of 1,024 tokens or more, cached in
    /// steps of 128 tokens).
    pub cache_savings: f64,
    #[serde(skip)]
    shares: Vec<f64>,
    #[serde(skip)]
    token_shares: Vec<f64>,
    /// Every message sent.
    pub replies: Vec<ReplyLine>,
    /// Moderators' chat commands and what each changed.
    pub commands: Vec<chatbot_core::ModerationRecord>,
    /// Per minute since the start: (chat lines, messages sent).
    pub per_minute: BTreeMap<u64, (u64, u64)>,
    #[serde(skip)]
    user_fires: BTreeMap<String, u64>,
}

/// One message the bot sent.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReplyLine {
    /// Virtual time (epoch ms).
    #[serde(serialize_with = "ms")]
    pub at: Millis,
    /// Trigger that caused it.
    pub trigger: String,
    /// `say` or `pm`.
    pub kind: &'static str,
    /// PM recipient.
    pub to: Option<String>,
    /// What was sent.
    pub text: String,
    /// The line that caused it (`user: text`), when known.
    pub cause: Option<String>,
    /// Set for fallback lines.
    pub fallback: bool,
}

/// The median, to two decimals; `None` for no values.
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).map(|m| (m * 100.0).round() / 100.0)
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    *map.entry(key.to_owned()).or_default() += 1;
}

impl Report {
    pub(crate) fn new(config: &Config, seed: u64, llm: &str) -> Report {
        Report {
            seed,
            llm: llm.to_owned(),
            events: 0,
            bad_lines: Vec::new(),
            start: Millis::ZERO,
            end: Millis::ZERO,
            unrouted: 0,
            channels: config
                .channels
                .iter()
                .map(|c| ChannelReport { name: c.name.clone(), ..ChannelReport::default() })
                .collect(),
            decisions: Vec::new(),
            before_start: 0,
            live: None,
            live_on: false,
            sent_by_event: HashMap::new(),
            prompts: Vec::new(),
            keep_prompts: false,
            last_prompt: HashMap::new(),
            causes: HashMap::new(),
            cause_order: Default::default(),
            calls: HashMap::new(),
            prices: config.llm.providers.iter().map(|(n, p)| (n.clone(), p.price_per_million)).collect(),
        }
    }

    pub(crate) fn moderated(&mut self, r: &chatbot_core::ModerationRecord) {
        if let Some(ch) = self.channel_mut(&r.channel) {
            ch.commands.push(r.clone());
        }
    }

    fn channel_mut(&mut self, name: &str) -> Option<&mut ChannelReport> {
        self.channels.iter_mut().find(|c| c.name.eq_ignore_ascii_case(name))
    }

    fn minute(&self, at: Millis) -> u64 {
        at.0.saturating_sub(self.start.0) / 60_000
    }

    pub(crate) fn remember_cause(&mut self, correlation_id: &str, text: String) {
        if self.causes.insert(correlation_id.to_owned(), text).is_none() {
            self.cause_order.push_back(correlation_id.to_owned());
            if self.cause_order.len() > MAX_CAUSES {
                if let Some(old) = self.cause_order.pop_front() {
                    self.causes.remove(&old);
                }
            }
        }
    }

    pub(crate) fn observe_event(&mut self, at: Millis, channel: Option<&str>, event_name: &str) {
        if !event_name.eq_ignore_ascii_case("chatMsg") {
            return;
        }
        let minute = self.minute(at);
        if let Some(ch) = channel.and_then(|c| self.channel_mut(c)) {
            ch.per_minute.entry(minute).or_default().0 += 1;
        }
    }

    pub(crate) fn decision(&mut self, d: &Decision) {
        self.decisions.push(d.clone());
        let Some(ch) = self.channel_mut(&d.channel) else { return };
        let trigger = d.trigger.map_or("-", |t| t.label());
        let reason = d.reason.map_or("-", |r| r.label());
        match d.outcome {
            Outcome::Ignored => bump(&mut ch.ignored, reason),
            Outcome::Fired => {
                bump(&mut ch.fired, trigger);
                if let Some(u) = &d.user {
                    bump(&mut ch.user_fires, u);
                }
            }
            Outcome::Suppressed => {
                bump(ch.suppressed.entry(trigger.to_owned()).or_default(), reason);
                bump(&mut ch.silences, reason);
            }
            Outcome::Dropped => bump(&mut ch.dropped, reason),
            Outcome::Sent => {}
        }
    }

    pub(crate) fn published(&mut self, at: Millis, cmd: &chatbot_core::Command) {
        let minute = self.minute(at);
        let cause = cmd.correlation_id.as_ref().and_then(|c| self.causes.get(c).cloned());
        if let (true, Some(cid)) = (self.live_on, &cmd.correlation_id) {
            let text = self.sent_by_event.entry(cid.clone()).or_default();
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(cmd.kind.text());
        }
        // The Sent decision right after this publish carries trigger and reason.
        let Some(ch) = self.channel_mut(&cmd.channel) else { return };
        let (kind, to, text) = match &cmd.kind {
            CommandKind::Say { text } => {
                ch.said += 1;
                ch.per_minute.entry(minute).or_default().1 += 1;
                ("say", None, text.clone())
            }
            CommandKind::Pm { to, text } => {
                ch.pms += 1;
                ("pm", Some(to.clone()), text.clone())
            }
        };
        ch.replies.push(ReplyLine { at, trigger: String::new(), kind, to, text, cause, fallback: false });
    }

    pub(crate) fn called(&mut self, at: Millis, call: &LlmCall) {
        let input: u64 = call.messages.iter().map(|m| estimate_tokens(&m.content) + 4).sum();
        self.calls.insert(call.id, (call.channel.clone(), input));
        let purpose = match call.purpose {
            Purpose::Reply => "reply",
            Purpose::ParticipationCheck => "participation_check",
        };
        if self.keep_prompts {
            self.prompts.push(PromptRecord {
                at,
                channel: call.channel.clone(),
                request: call.id.to_string(),
                purpose,
                thread: call.thread.clone(),
                messages: call
                    .messages
                    .iter()
                    .map(|m| serde_json::json!({"role": m.role.as_str(), "content": m.content}))
                    .collect(),
            });
        }
        let key = (call.channel.to_ascii_lowercase(), call.thread.clone());
        let reuse = self
            .last_prompt
            .insert(key, call.messages.clone())
            .map(|prev| chatbot_core::budget::prefix_reuse(&prev, &call.messages));
        let price = self.prices.get(&call.provider).copied().unwrap_or_default();
        if let Some(ch) = self.channel_mut(&call.channel) {
            if let Some((common, total)) = reuse {
                ch.shares.push(common as f64 / total.max(1) as f64);
                let prefix_tokens = (common as u64).div_ceil(4);
                if input >= CACHE_MIN_TOKENS {
                    let cached = prefix_tokens / CACHE_STEP * CACHE_STEP;
                    let discount = price.input - price.cached_input.unwrap_or(price.input);
                    ch.cache_savings += cached as f64 * discount / 1e6;
                }
            }
            bump(&mut ch.llm_calls, purpose);
        }
    }

    pub(crate) fn answered(&mut self, id: RequestId, provider: &str, result: &Result<LlmReply, LlmError>) {
        let Some((channel, estimated_input)) = self.calls.remove(&id) else { return };
        let price = self.prices.get(provider).copied().unwrap_or_default();
        let Some(ch) = self.channel_mut(&channel) else { return };
        let outcome = match result {
            Ok(reply) => {
                let usage = reply.usage.unwrap_or(chatbot_core::Usage {
                    input_tokens: estimated_input,
                    output_tokens: estimate_tokens(&reply.text),
                    cached_input_tokens: 0,
                });
                ch.input_tokens += usage.input_tokens;
                ch.output_tokens += usage.output_tokens;
                ch.cached_input_tokens += usage.cached_input_tokens;
                if usage.cached_input_tokens > 0 {
                    ch.token_shares.push(usage.cached_input_tokens as f64 / usage.input_tokens.max(1) as f64);
                }
                ch.cost += price.cost(&usage);
                "ok"
            }
            Err(e) => e.label(),
        };
        bump(ch.llm_answers.entry(provider.to_owned()).or_default(), outcome);
    }

    /// Attaches the trigger of each Sent decision to the reply it follows.
    pub(crate) fn finalise(&mut self) {
        let mut sent: HashMap<String, Vec<&Decision>> = HashMap::new();
        for d in self.decisions.iter().filter(|d| d.outcome == Outcome::Sent) {
            sent.entry(d.channel.to_ascii_lowercase()).or_default().push(d);
        }
        let hours = (self.end.0.saturating_sub(self.start.0) as f64 / 3_600_000.0).max(1.0 / 60.0);
        for ch in &mut self.channels {
            let decisions = sent.remove(&ch.name.to_ascii_lowercase()).unwrap_or_default();
            for (reply, d) in ch.replies.iter_mut().zip(decisions) {
                reply.trigger = d.trigger.map_or("-", |t| t.label()).to_owned();
                reply.fallback = d.reason == Some(chatbot_core::Reason::Fallback);
            }
            ch.fallbacks = ch.replies.iter().filter(|r| r.fallback).count() as u64;
            ch.said_per_hour = (ch.said as f64 / hours * 10.0).round() / 10.0;
            ch.tokens_per_hour = ((ch.input_tokens + ch.output_tokens) as f64 / hours).round();
            ch.cost = (ch.cost * 1e6).round() / 1e6;
            ch.cache_savings = (ch.cache_savings * 1e6).round() / 1e6;
            ch.prefix_reuse = median(&mut ch.shares);
            ch.prefix_reuse_tokens = median(&mut ch.token_shares);
            let mut users: Vec<(String, u64)> = std::mem::take(&mut ch.user_fires).into_iter().collect();
            users.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            users.truncate(5);
            ch.top_users = users;
        }
    }

    pub(crate) fn set_event_counts(&mut self, stats: BTreeMap<String, ChannelStats>, unrouted: u64) {
        self.unrouted = unrouted;
        for (name, s) in stats {
            if let Some(ch) = self.channel_mut(&name) {
                ch.events = s.events;
            }
        }
    }

    /// Hours of corpus time covered.
    pub fn hours(&self) -> f64 {
        self.end.0.saturating_sub(self.start.0) as f64 / 3_600_000.0
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }
}

/// Two reports of the same corpus under two configs.
#[derive(Debug, Clone, Serialize)]
pub struct Compare {
    /// Label of the first config (its path).
    pub a_label: String,
    /// Label of the second.
    pub b_label: String,
    /// First report.
    pub a: Report,
    /// Second report.
    pub b: Report,
}
