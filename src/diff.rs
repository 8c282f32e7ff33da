//! `llm-chatbot diff LIVE REPLAY`: the daemon's decision log against a replay's, joined
//! by correlation id (SPEC §1: one decision shape everywhere).
//!
//! Each side is either a JSON-lines log (the daemon's `--log-format json` output; lines
//! that are not decision records are skipped) or a JSON replay report (its
//! `decisions`). Decisions without a correlation id (contextual ones) are compared as
//! counts per channel. Exit 0 when every event agrees, 1 when some differ.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use serde_json::Value;

use crate::CliError;

/// One decision, reduced to what must agree.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Step {
    trigger: String,
    outcome: String,
    reason: String,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let trigger = if self.trigger.is_empty() { "-" } else { &self.trigger };
        write!(f, "{} {}", trigger, self.outcome)?;
        if !self.reason.is_empty() {
            write!(f, " ({})", self.reason)?;
        }
        Ok(())
    }
}

/// A side's decisions: per event (correlation id) in order, and the rest counted.
#[derive(Debug, Default)]
struct Side {
    events: BTreeMap<String, (u64, String, Vec<Step>)>,
    without_id: BTreeMap<(String, Step), u64>,
    decisions: u64,
}

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_owned()
}

impl Side {
    fn add(&mut self, d: &Value) {
        let step = Step { trigger: text(d, "trigger"), outcome: text(d, "outcome"), reason: text(d, "reason") };
        if step.outcome.is_empty() {
            return;
        }
        self.decisions += 1;
        let channel = text(d, "channel").to_lowercase();
        match d.get("correlation_id").and_then(Value::as_str).filter(|c| !c.is_empty()) {
            Some(cid) => {
                let at = d.get("at").and_then(Value::as_u64).unwrap_or(0);
                self.events.entry(cid.to_owned()).or_insert_with(|| (at, channel, Vec::new())).2.push(step);
            }
            None => *self.without_id.entry((channel, step)).or_default() += 1,
        }
    }

    fn read(path: &Path) -> Result<Side, CliError> {
        let body = std::fs::read_to_string(path)
            .map_err(|source| CliError::Read { path: path.display().to_string(), source })?;
        let mut side = Side::default();
        // A replay report is one JSON document with `decisions`.
        if let Ok(report) = serde_json::from_str::<Value>(&body) {
            if let Some(list) = report.get("decisions").and_then(Value::as_array) {
                list.iter().for_each(|d| side.add(d));
                return Ok(side);
            }
        }
        for line in body.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
            // The daemon's log: decision events only (their target is `decision`).
            let is_decision = v.get("target").and_then(Value::as_str).is_none_or(|t| t == "decision");
            if is_decision && v.get("outcome").is_some() {
                side.add(&v);
            }
        }
        if side.decisions == 0 {
            return Err(CliError::Option {
                option: path.display().to_string(),
                message: "holds no decision records (expected `run --log-format json` output or a `replay --format json` report)".into(),
            });
        }
        Ok(side)
    }
}

fn steps(s: &[Step]) -> String {
    s.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Compares and prints; `Ok(true)` when everything agrees.
pub fn run(live: &Path, replay: &Path, show: usize) -> Result<bool, CliError> {
    let (a, b) = (Side::read(live)?, Side::read(replay)?);
    let mut ids: Vec<(&String, u64)> = a.events.iter().map(|(k, v)| (k, v.0)).collect();
    ids.extend(b.events.iter().filter(|(k, _)| !a.events.contains_key(*k)).map(|(k, v)| (k, v.0)));
    ids.sort_by_key(|(k, at)| (*at, (*k).clone()));
    let mut agree = 0;
    let mut out = String::new();
    let mut differ = Vec::new();
    let none = (0, String::new(), Vec::new());
    for (cid, _) in &ids {
        let (x, y) = (a.events.get(*cid).unwrap_or(&none), b.events.get(*cid).unwrap_or(&none));
        if x.2 == y.2 {
            agree += 1;
        } else {
            differ.push((cid, x, y));
        }
    }
    let _ = writeln!(
        out,
        "{} events: {} agree, {} differ ({:.1} % agreement); {} and {} decisions",
        ids.len(),
        agree,
        differ.len(),
        if ids.is_empty() { 100.0 } else { agree as f64 * 100.0 / ids.len() as f64 },
        a.decisions,
        b.decisions
    );
    for (cid, x, y) in differ.iter().take(show) {
        let channel = if x.1.is_empty() { &y.1 } else { &x.1 };
        let _ = writeln!(out, "  {cid} ({channel})\n    live:   {}\n    replay: {}", steps(&x.2), steps(&y.2));
    }
    if differ.len() > show {
        let _ = writeln!(out, "  … and {} more", differ.len() - show);
    }
    let mut keys: Vec<&(String, Step)> = a.without_id.keys().chain(b.without_id.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut counts_agree = true;
    for k in keys {
        let (x, y) = (a.without_id.get(k).copied().unwrap_or(0), b.without_id.get(k).copied().unwrap_or(0));
        if x != y {
            counts_agree = false;
            let _ = writeln!(out, "  without an event id, {} {}: {x} live, {y} in replay", k.0, k.1);
        }
    }
    print!("{out}");
    Ok(differ.is_empty() && counts_agree)
}
