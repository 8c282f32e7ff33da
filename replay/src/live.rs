//! A recording replayed against what the live bot did: per event (by correlation id),
//! whether the bot answered it live and whether it does in replay, and why not.
//!
//! With the live config this is the proof that replay predicts production (every event
//! agrees); with another config it is the counterfactual: the events whose outcome the
//! new config changes, one by one.

use std::collections::{BTreeMap, HashMap};

use chatbot_core::{Config, Decision, Outcome, Trigger};
use chatbot_sim::recording::{Provenance, Recording};
use serde::Serialize;

/// Changes listed one by one; beyond this, counted.
const MAX_CHANGES: usize = 500;

/// How the replay compares with the live session.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LiveComparison {
    /// The live bot's sessions replayed (engine restarts + 1).
    pub sessions: usize,
    /// The seed came from the recording (not `--seed`).
    pub recorded_seed: bool,
    /// LLM answers replayed from the recording, and invented.
    pub answers: Provenance,
    /// Events a trigger matched (in replay) or the live bot answered.
    pub events: Tally,
    /// Of those, mentions, PMs, commands and triggers at probability 1.
    pub deterministic: Tally,
    /// Of those, triggers below probability 1.
    pub probabilistic: Tally,
    /// Contextual replies (no event of their own): live and replayed, per channel.
    pub contextual: BTreeMap<String, (u64, u64)>,
    /// The events whose outcome differs, in time order.
    pub changes: Vec<Change>,
    /// Changes beyond the listed ones.
    pub more_changes: u64,
}

/// Events and how many came out the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Events compared.
    pub events: u64,
    /// Of those, the same outcome.
    pub agree: u64,
}

impl Tally {
    fn add(&mut self, same: bool) {
        self.events += 1;
        self.agree += u64::from(same);
    }

    /// The share that agrees (1 when there is nothing to compare).
    pub fn share(&self) -> f64 {
        if self.events == 0 {
            1.0
        } else {
            self.agree as f64 / self.events as f64
        }
    }
}

/// One event whose outcome changed.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// Engine time of the event (epoch ms).
    pub at: u64,
    /// Its correlation id.
    pub correlation_id: String,
    /// Channel.
    pub channel: String,
    /// Who said it.
    pub user: Option<String>,
    /// The trigger (replay's, else the live command's).
    pub trigger: Option<String>,
    /// The line, when the report kept it.
    pub line: Option<String>,
    /// Live: `answered: <text>` or `silent`.
    pub live: String,
    /// Replay: `answered: <text>` or `silent (<reason>)`.
    pub replay: String,
}

/// What the replay did for one event.
struct Replayed<'a> {
    first: &'a Decision,
    trigger: Option<Trigger>,
    sent: bool,
    why: Option<String>,
}

/// Compares `decisions` (the replay's) with the commands of `rec`.
pub fn compare(
    config: &Config,
    rec: &Recording,
    decisions: &[Decision],
    sent_text: &HashMap<String, String>,
    lines: &HashMap<String, String>,
    answers: Provenance,
    recorded_seed: bool,
) -> LiveComparison {
    let mut by_event: HashMap<&str, Replayed> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    let mut contextual: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for d in decisions {
        if d.trigger == Some(Trigger::Contextual) && d.outcome == Outcome::Sent {
            contextual.entry(d.channel.to_lowercase()).or_default().1 += 1;
        }
        let Some(cid) = d.correlation_id.as_deref() else { continue };
        let r = by_event.entry(cid).or_insert_with(|| {
            order.push(cid);
            Replayed { first: d, trigger: None, sent: false, why: None }
        });
        r.trigger = r.trigger.or(d.trigger);
        match d.outcome {
            Outcome::Sent => r.sent = true,
            Outcome::Fired => {}
            Outcome::Suppressed | Outcome::Dropped | Outcome::Ignored => {
                r.why = Some(format!("{}: {}", d.outcome.label(), d.reason.map_or("-", |x| x.label())));
            }
        }
    }
    for c in rec.contextual.values().flatten() {
        contextual.entry(c.channel.to_lowercase()).or_default().0 += 1;
    }
    let mut out = LiveComparison {
        sessions: rec.sessions.len().max(1),
        recorded_seed,
        answers,
        contextual,
        ..LiveComparison::default()
    };
    let live_text = |cid: &str| {
        rec.answers.get(cid).map(|parts| parts.iter().map(|p| p.text.as_str()).collect::<Vec<_>>().join(" "))
    };
    for cid in &order {
        let r = &by_event[cid];
        let live = live_text(cid);
        // Only events a trigger looked at, or the live bot answered.
        if r.trigger.is_none() && live.is_none() {
            continue;
        }
        let same = live.is_some() == r.sent;
        out.events.add(same);
        let probabilistic = r.trigger.is_some_and(|t| probability(config, &r.first.channel, t) < 1.0);
        if probabilistic { &mut out.probabilistic } else { &mut out.deterministic }.add(same);
        if !same {
            let replay = if r.sent {
                format!("answered: {}", sent_text.get(*cid).map_or("", String::as_str))
            } else {
                format!("silent ({})", r.why.as_deref().unwrap_or("fired, not answered yet"))
            };
            push_change(
                &mut out,
                Change {
                    at: r.first.at.0,
                    correlation_id: (*cid).to_owned(),
                    channel: r.first.channel.clone(),
                    user: r.first.user.clone(),
                    trigger: r.trigger.map(|t| t.label().to_owned()),
                    line: lines.get(*cid).cloned(),
                    live: live.map_or_else(|| "silent".to_owned(), |t| format!("answered: {t}")),
                    replay,
                },
            );
        }
    }
    // Answered live, never seen by the replay's engine (before its start, or unrouted).
    let mut unseen: Vec<_> = rec.answers.iter().filter(|(cid, _)| !by_event.contains_key(cid.as_str())).collect();
    unseen.sort_by_key(|(_, parts)| parts[0].at);
    for (cid, parts) in unseen {
        out.events.add(false);
        out.deterministic.add(false);
        push_change(
            &mut out,
            Change {
                at: parts[0].at.0,
                correlation_id: cid.clone(),
                channel: parts[0].channel.clone(),
                user: None,
                trigger: parts[0].trigger.clone(),
                line: None,
                live: format!("answered: {}", live_text(cid).unwrap_or_default()),
                replay: "silent (the event is not in the replay)".into(),
            },
        );
    }
    out.changes.sort_by_key(|c| c.at);
    out
}

fn push_change(out: &mut LiveComparison, c: Change) {
    if out.changes.len() < MAX_CHANGES {
        out.changes.push(c);
    } else {
        out.more_changes += 1;
    }
}

/// The configured probability of `trigger` in `channel` (1 when unknown).
fn probability(config: &Config, channel: &str, trigger: Trigger) -> f64 {
    let Some(ch) = config.channels.iter().find(|c| c.name.eq_ignore_ascii_case(channel)) else { return 1.0 };
    let t = &ch.triggers;
    match trigger {
        Trigger::Mention => t.mention.probability,
        Trigger::Keyword(i) => t.keywords.get(i).map_or(1.0, |k| k.probability),
        Trigger::MediaChange => t.media_change.probability,
        Trigger::Contextual => t.contextual.probability,
        Trigger::Pm | Trigger::Command => 1.0,
    }
}
