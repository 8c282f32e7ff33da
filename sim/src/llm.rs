//! LLMs for the simulator: how long a request takes and what it answers, in virtual time.
//!
//! * [`Offline`]: deterministic and built in. It reads the prompt the engine built and
//!   derives a short, plausible line from it (who asked, about what), so a replay report
//!   reads like a real session without any network or key.
//! * [`Script`]: canned replies and faults from a YAML file, matched by call order, by a
//!   regex on the text being answered, or by provider (to stage an outage).
//! * [`Faults`]: wraps any responder and injects timeouts, errors, empty replies and
//!   latency from a seed, so a failure found in simulation replays exactly.
//!
//! The real HTTP provider lives in the runtime; replay adapts it to [`Responder`].

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use chatbot_core::{LlmCall, LlmError, LlmReply, Purpose, Role, Usage};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use regex::Regex;
use serde::Deserialize;

/// What a simulated request does.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Virtual time until the answer arrives.
    pub latency: Duration,
    /// The reply or the failure.
    pub result: Result<LlmReply, LlmError>,
}

/// Something that answers LLM calls in the simulator.
pub trait Responder {
    /// Answers one call. Called once per [`chatbot_core::Effect::CallLlm`], in order.
    fn respond(&mut self, call: &LlmCall) -> Answer;

    /// Answers one call made at virtual time `now` (what the simulator calls).
    fn respond_at(&mut self, call: &LlmCall, now: chatbot_core::Millis) -> Answer {
        let _ = now;
        self.respond(call)
    }

    /// For a responder replaying a recording: how many answers were recorded, and how
    /// many invented.
    fn provenance(&self) -> Option<crate::recording::Provenance> {
        None
    }
}

fn hash(x: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    x.hash(&mut h);
    h.finish()
}

/// Estimated tokens of a text (the common chars/4 rule), at least 1.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

fn usage(call: &LlmCall, reply: &str) -> Usage {
    Usage {
        input_tokens: call.messages.iter().map(|m| estimate_tokens(&m.content) + 4).sum(),
        output_tokens: estimate_tokens(reply),
        cached_input_tokens: 0,
    }
}

/// The built-in deterministic responder. `names` (the bot's name and aliases) are never
/// picked as the topic of a reply.
#[derive(Debug, Clone, Default)]
pub struct Offline {
    /// Lower-cased words never used as a topic.
    pub names: Vec<String>,
}

impl Offline {
    /// An offline responder that knows the bot's names.
    pub fn new(bot: &chatbot_core::config::BotConfig) -> Offline {
        let names = std::iter::once(&bot.name).chain(&bot.aliases);
        Offline { names: names.map(|n| n.trim_start_matches('@').to_lowercase()).collect() }
    }
}

const QUESTION: &[&str] = &[
    "Good question, {user}. I'd say it depends on the {topic}.",
    "Hmm, {topic}? Honestly not sure, {user}, but I'm curious too.",
    "{user}, my guess is yes. The {topic} usually works out.",
    "No idea about the {topic}, {user}. Anyone else know?",
];
const STATEMENT: &[&str] = &[
    "Ha, the {topic} is a whole mood.",
    "Agreed, {user}. The {topic} is underrated.",
    "Tell me more about the {topic}, {user}!",
    "Same here. The {topic} gets me every time.",
];
const MEDIA: &[&str] = &["Ooh, {title}. Good pick!", "{title}? This one takes me back.", "Oh nice, {title} is on."];
const JOIN: &[&str] = &["Just catching up. The {topic} talk sounds fun.", "Wait, are we still on the {topic}?"];

const STOPWORDS: &[&str] = &[
    "about", "after", "again", "anyone", "because", "could", "does", "doing", "going", "have", "just", "know", "like",
    "really", "should", "that", "there", "they", "think", "this", "what", "when", "where", "which", "with", "would",
    "your", "here", "been", "from", "will", "want",
];

impl Offline {
    /// The reply text for a call.
    pub fn text(&self, call: &LlmCall) -> String {
        let users: Vec<&str> =
            call.messages.iter().rev().filter(|m| m.role == Role::User).map(|m| m.content.as_str()).collect();
        // The instruction is the last line of the last message (the room's facts come
        // before it); the line answered is the message before it, or the instruction
        // quotes it (`[note] user: text`, other templates).
        let instruction = users.first().map_or("", |m| m.rsplit('\n').next().unwrap_or(m));
        if call.purpose == Purpose::ParticipationCheck {
            // The question is always the same: decide on the conversation before it.
            return if hash(&call.messages).is_multiple_of(3) { "yes".into() } else { "no".into() };
        }
        let h = hash(instruction);
        if let Some(title) =
            instruction.strip_prefix("[The video changed to: ").and_then(|r| r.split_once(']')).map(|r| r.0)
        {
            return pick(MEDIA, h).replace("{title}", title);
        }
        let last = match instruction.strip_prefix('[').and_then(|r| r.split_once("] ")) {
            Some((_, rest)) if rest.contains(": ") => rest,
            _ if instruction.starts_with('[') && !instruction.starts_with("[Join") => {
                users.get(1).copied().unwrap_or(instruction)
            }
            _ => instruction,
        };
        let h = hash(last);
        let line = last;
        let (user, text) = match line.split_once(": ") {
            Some((u, t)) if !line.starts_with('[') => (u, t),
            _ => ("friend", line),
        };
        let topic = self.topic_of(text, call).unwrap_or_else(|| "vibe".into());
        let template = if instruction.starts_with("[Join") {
            let context = call.messages.iter().rev().skip(1).find(|m| m.role == Role::User).map_or("", |m| &m.content);
            let topic = self.topic_of(context, call).unwrap_or_else(|| "conversation".into());
            return pick(JOIN, h).replace("{topic}", &topic);
        } else if text.contains('?') {
            pick(QUESTION, h)
        } else {
            pick(STATEMENT, h)
        };
        template.replace("{user}", user).replace("{topic}", &topic)
    }
}

fn pick(options: &[&'static str], h: u64) -> &'static str {
    options[(h % options.len() as u64) as usize]
}

impl Offline {
    /// The longest meaningful word of `text` (not a stopword, not the bot's name).
    fn topic_of(&self, text: &str, call: &LlmCall) -> Option<String> {
        let text = text.split_once(": ").map_or(text, |(_, t)| t);
        let system = call.messages.first().map_or("", |m| m.content.as_str()).to_lowercase();
        text.split(|c: char| !c.is_alphanumeric() && c != '\'')
            .filter(|w| w.chars().count() >= 4 && !w.contains("http"))
            .map(str::to_lowercase)
            .filter(|w| !STOPWORDS.contains(&w.as_str()) && !system.contains(w.as_str()) && !self.names.contains(w))
            .max_by_key(|w| (w.chars().count(), std::cmp::Reverse(w.clone())))
    }
}

impl Responder for Offline {
    fn respond(&mut self, call: &LlmCall) -> Answer {
        let text = self.text(call);
        let latency = Duration::from_millis(400 + hash((&text, call.id)) % 1200);
        Answer { latency, result: Ok(LlmReply { usage: Some(usage(call, &text)), text, truncated: false }) }
    }
}

/// One rule of a script file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    order: Option<u64>,
    #[serde(default, rename = "match")]
    pattern: Option<String>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    reply: Option<String>,
    #[serde(default)]
    fault: Option<String>,
    #[serde(default)]
    latency: Option<String>,
}

#[derive(Debug, Clone)]
struct Rule {
    order: Option<u64>,
    pattern: Option<Regex>,
    provider: Option<String>,
    outcome: Result<String, LlmError>,
    latency: Option<Duration>,
}

/// Canned replies and faults from a YAML list of rules, e.g.
///
/// ```yaml
/// - { order: 1, reply: "first call always says this" }
/// - { match: "(?i)pizza", reply: "pineapple belongs on it" }
/// - { provider: main, fault: "status:503" }        # stage an outage of `main`
/// - { match: "slow", reply: "sorry, thinking", latency: 20s }
/// ```
///
/// The first rule whose conditions all hold answers; with none, [`Offline`] does.
/// Faults: `timeout`, `connect`, `empty`, `malformed`, `status:NNN`.
#[derive(Debug, Clone)]
pub struct Script {
    rules: Vec<Rule>,
    calls: u64,
    /// Answers calls no rule matches.
    pub offline: Offline,
}

/// Why a script file was refused.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ScriptError {
    origin: String,
    message: String,
}

fn parse_fault(s: &str) -> Option<LlmError> {
    Some(match s.trim() {
        "timeout" => LlmError::Timeout,
        "connect" => LlmError::Connect,
        "empty" => LlmError::EmptyChoices,
        "malformed" => LlmError::Malformed,
        other => LlmError::Status(other.strip_prefix("status:")?.trim().parse().ok()?),
    })
}

impl Script {
    /// Parses a script; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Script, ScriptError> {
        let err = |message: String| ScriptError { origin: origin.into(), message };
        let raw: Vec<RawRule> = serde_yaml::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut rules = Vec::with_capacity(raw.len());
        for (i, r) in raw.into_iter().enumerate() {
            let outcome = match (r.reply, r.fault) {
                (Some(reply), None) => Ok(reply),
                (None, Some(fault)) => Err(parse_fault(&fault).ok_or_else(|| {
                    err(format!(
                        "rule {}: unknown fault `{fault}` (timeout, connect, empty, malformed, status:NNN)",
                        i + 1
                    ))
                })?),
                _ => return Err(err(format!("rule {}: give exactly one of `reply` or `fault`", i + 1))),
            };
            let pattern = r
                .pattern
                .map(|p| Regex::new(&p).map_err(|e| err(format!("rule {}: bad regex: {e}", i + 1))))
                .transpose()?;
            let latency = r
                .latency
                .map(|l| {
                    humantime::parse_duration(&l).map_err(|e| err(format!("rule {}: bad latency `{l}`: {e}", i + 1)))
                })
                .transpose()?;
            rules.push(Rule { order: r.order, pattern, provider: r.provider, outcome, latency });
        }
        Ok(Script { rules, calls: 0, offline: Offline::default() })
    }
}

impl Responder for Script {
    fn respond(&mut self, call: &LlmCall) -> Answer {
        self.calls += 1;
        let last = call.messages.iter().rev().find(|m| m.role == Role::User).map_or("", |m| m.content.as_str());
        let rule = self.rules.iter().find(|r| {
            r.order.is_none_or(|n| n == self.calls)
                && r.provider.as_ref().is_none_or(|p| *p == call.provider)
                && r.pattern.as_ref().is_none_or(|p| p.is_match(last))
        });
        let Some(rule) = rule else { return self.offline.respond(call) };
        let default_latency = if rule.outcome == Err(LlmError::Timeout) { 30_000 } else { 500 };
        Answer {
            latency: rule.latency.unwrap_or(Duration::from_millis(default_latency)),
            result: match &rule.outcome {
                Ok(text) => Ok(LlmReply::new(text.clone(), Some(usage(call, text)))),
                Err(e) => Err(*e),
            },
        }
    }
}

/// Seeded fault injection around another responder.
#[derive(Debug, Clone)]
pub struct Faults {
    rng: ChaCha8Rng,
    plan: FaultPlan,
}

/// Probabilities (0..=1) of each fault per call, and extra latency.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaultPlan {
    /// The request times out (after 30 s virtual).
    pub timeout: f64,
    /// The provider answers HTTP 500.
    pub error: f64,
    /// The provider answers with no choices.
    pub empty: f64,
    /// Extra latency added to every answer, uniformly in 0..=this.
    pub jitter: Duration,
}

impl FaultPlan {
    /// Parses `timeout=0.05,error=0.02,empty=0.01,jitter=2s`.
    pub fn parse(s: &str) -> Result<FaultPlan, String> {
        let mut plan = FaultPlan::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("`{part}`: expected key=value"))?;
            let p = || -> Result<f64, String> {
                v.parse::<f64>().ok().filter(|p| (0.0..=1.0).contains(p)).ok_or_else(|| format!("`{part}`: need 0..=1"))
            };
            match k {
                "timeout" => plan.timeout = p()?,
                "error" => plan.error = p()?,
                "empty" => plan.empty = p()?,
                "jitter" => plan.jitter = humantime::parse_duration(v).map_err(|e| format!("`{part}`: {e}"))?,
                _ => return Err(format!("`{k}`: unknown fault (timeout, error, empty, jitter)")),
            }
        }
        Ok(plan)
    }

    /// True when nothing is injected.
    pub fn is_none(&self) -> bool {
        *self == FaultPlan::default()
    }
}

impl Faults {
    /// Injects `plan` with randomness from `seed`.
    pub fn new(plan: FaultPlan, seed: u64) -> Faults {
        Faults { rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_fa17), plan }
    }

    fn unit(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Applies the plan to an answer.
    pub fn apply(&mut self, mut answer: Answer) -> Answer {
        let roll = self.unit();
        let p = self.plan;
        if roll < p.timeout {
            return Answer { latency: Duration::from_secs(30), result: Err(LlmError::Timeout) };
        } else if roll < p.timeout + p.error {
            answer.result = Err(LlmError::Status(500));
        } else if roll < p.timeout + p.error + p.empty {
            answer.result = Err(LlmError::EmptyChoices);
        }
        if !p.jitter.is_zero() {
            answer.latency += Duration::from_millis(self.rng.next_u64() % (p.jitter.as_millis() as u64 + 1));
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatbot_core::{PromptMessage, RequestId};

    fn call(purpose: Purpose, last: &str) -> LlmCall {
        LlmCall {
            id: RequestId(1),
            channel: "lounge".into(),
            provider: "main".into(),
            messages: vec![
                PromptMessage { role: Role::System, content: "You are KrytenBot.".into() },
                PromptMessage { role: Role::User, content: last.into() },
            ],
            purpose,
            thread: None,
            trigger: chatbot_core::Trigger::Mention,
            correlation_id: None,
        }
    }

    #[test]
    fn offline_replies_are_deterministic_and_about_the_prompt() {
        let c = call(Purpose::Reply, "alice: kryten, is the sequel any good?");
        let a = Offline::default().respond(&c);
        assert_eq!(a, Offline::default().respond(&c));
        let text = a.result.unwrap().text;
        assert!(text.contains("sequel"), "{text}");
        let media =
            Offline::default().text(&call(Purpose::Reply, "[The video changed to: Me at the zoo] Say something."));
        assert!(media.contains("Me at the zoo"), "{media}");
        let check = Offline::default().text(&call(Purpose::ParticipationCheck, "bob: hi"));
        assert!(check == "yes" || check == "no");
    }

    #[test]
    fn script_rules_match_by_order_text_and_provider() {
        let mut s = Script::parse(
            "- { order: 1, reply: first }\n- { match: '(?i)pizza', reply: pineapple }\n- { provider: main, fault: 'status:503' }\n",
            "s.yaml",
        )
        .unwrap();
        let text = |a: Answer| a.result.map(|r| r.text);
        assert_eq!(text(s.respond(&call(Purpose::Reply, "a: pizza"))), Ok("first".into()));
        assert_eq!(text(s.respond(&call(Purpose::Reply, "a: PIZZA"))), Ok("pineapple".into()));
        assert_eq!(text(s.respond(&call(Purpose::Reply, "a: hi"))), Err(LlmError::Status(503)));
    }

    #[test]
    fn bad_scripts_and_fault_plans_are_refused_clearly() {
        assert!(Script::parse("- { fault: lava }\n", "s.yaml")
            .unwrap_err()
            .to_string()
            .contains("unknown fault `lava`"));
        assert!(Script::parse("- { reply: a, fault: timeout }\n", "s.yaml").is_err());
        assert!(FaultPlan::parse("timeout=2").is_err());
        assert_eq!(FaultPlan::parse("error=0.5,jitter=1s").unwrap().error, 0.5);
    }

    #[test]
    fn fault_injection_is_reproducible_from_its_seed() {
        let plan = FaultPlan { timeout: 0.2, error: 0.2, empty: 0.2, jitter: Duration::from_secs(1) };
        let run = |seed| {
            let mut f = Faults::new(plan, seed);
            (0..50).map(|_| f.apply(Offline::default().respond(&call(Purpose::Reply, "a: hi")))).collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        let failures = run(3).iter().filter(|a| a.result.is_err()).count();
        assert!((15..=45).contains(&failures), "{failures}");
    }
}
