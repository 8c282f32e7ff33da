//! A session run "live" through the simulator with random LLM latencies, recorded as
//! `record` writes it (the bot's session, its commands with their cause, the events),
//! then replayed from that recording alone, makes the same decisions at the same times.

use std::time::Duration;

use chatbot_core::{CommandKind, Config, Decision, Effect, Input, LlmCall, LlmReply, Millis};
use chatbot_sim::recording::{self, CommandNote, Item, Note, Recorded, Recording};
use chatbot_sim::{Answer, Offline, Responder, Sim, TraceItem};
use proptest::prelude::*;

const T0: u64 = 1_768_473_000_000;

fn config(p: f64) -> Config {
    let yaml = format!(
        "bot: {{ name: KrytenBot, aliases: [kryten] }}\n\
         llm: {{ providers: {{ main: {{ base_url: \"http://127.0.0.1:9/v1\", model: m }} }} }}\n\
         defaults:\n  limits: {{ global_cooldown: 2s, send_spacing: 700ms, max_in_flight: 2, per_user: {{ max: 2, window: 20s }}, per_channel: {{ max: 5, window: 30s }} }}\n  \
         triggers: {{ mention: {{ probability: {p} }}, keywords: [ {{ words: [pizza], probability: 0.5, cooldown: 3s }} ] }}\n\
         channels: [ {{ name: lounge }}, {{ name: movies }} ]\n"
    );
    Config::parse(&yaml, "fidelity.yaml").unwrap()
}

/// The live LLM: unique replies (nothing is dropped as a duplicate) after a random latency.
struct Live {
    latencies: Vec<u64>,
    n: usize,
}

impl Responder for Live {
    fn respond(&mut self, call: &LlmCall) -> Answer {
        self.n += 1;
        let latency = Duration::from_millis(self.latencies[self.n % self.latencies.len()]);
        Answer { latency, result: Ok(LlmReply::new(format!("reply {} for {}", self.n, call.id), None)) }
    }
}

type Event = (u64, bool, u8, u8);

fn envelope(k: usize, at: u64, (_, movies, user, kind): Event) -> String {
    let channel = if movies { "movies" } else { "lounge" };
    let (name, text) = match kind % 6 {
        0 | 1 => ("chatMsg", format!("kryten, question {k}?")),
        2 => ("chatMsg", format!("pizza {k}")),
        3 => ("pm", format!("hello {k}")),
        _ => ("chatMsg", format!("chatter {k}")),
    };
    let mut payload = serde_json::json!({"username": format!("u{user}"), "msg": text, "meta": {}, "time": at});
    if name == "pm" {
        payload["to"] = "KrytenBot".into();
    }
    serde_json::json!({"event_name": name, "channel": channel, "timestamp": Millis(at).to_rfc3339(),
        "correlation_id": format!("e{k}"), "payload": payload})
    .to_string()
}

/// Runs the session live; returns the recording (as text) and the live decisions.
fn live(config: &Config, seed: u64, events: &[Event], latencies: Vec<u64>) -> (String, Vec<Decision>) {
    let start = Millis(T0);
    let mut sim = Sim::new(config.clone(), seed, start, Box::new(Live { latencies, n: 0 }), None);
    let mut lines = vec![(start, Note::Session { at: start, seed, start, instance: None }.to_line())];
    let mut at = T0 + 500;
    for (k, e) in events.iter().enumerate() {
        at += e.0;
        let line = envelope(k, at, *e);
        sim.feed(Millis(at), Input::Event { subject: None, body: line.clone().into_bytes() });
        lines.push((Millis(at), line));
    }
    sim.finish(Duration::from_secs(60));
    let mut decisions = Vec::new();
    for t in sim.take_trace() {
        match t.what {
            TraceItem::Effect(Effect::Decision(d)) => decisions.push(d),
            TraceItem::Effect(Effect::Publish(c)) => {
                let (kind, to) = match &c.kind {
                    CommandKind::Say { .. } => ("say", None),
                    CommandKind::Pm { to, .. } => ("pm", Some(to.clone())),
                };
                let note = Note::Command(CommandNote {
                    at: t.at,
                    channel: c.channel.clone(),
                    kind: kind.into(),
                    to,
                    text: c.kind.text().to_owned(),
                    correlation_id: c.correlation_id.clone(),
                    trigger: c.cause.map(|x| x.trigger.label().to_owned()),
                    llm_ms: c.cause.and_then(|x| x.llm_ms),
                });
                lines.push((t.at, note.to_line()));
            }
            _ => {}
        }
    }
    // In time order, as a recorder receives them (a stable sort keeps each time's order).
    lines.sort_by_key(|(at, _)| *at);
    (lines.into_iter().map(|(_, l)| l + "\n").collect(), decisions)
}

/// Replays a recording from its text alone.
fn replay(config: &Config, text: &str) -> Vec<Decision> {
    let rec = Recording::scan(text.as_bytes());
    let session = rec.sessions[0];
    let llm = Recorded::new(&rec, Box::new(Offline::new(&config.bot)));
    let mut sim = Sim::new(config.clone(), session.seed, session.start, Box::new(llm), None);
    for item in recording::read(text.as_bytes()) {
        if let Ok(Item::Event(ev)) = item {
            sim.feed(ev.at.unwrap(), Input::Event { subject: None, body: ev.body });
        }
    }
    sim.finish(Duration::from_secs(60));
    assert_eq!(sim.llm().provenance().unwrap().invented, 0, "every answer came from the recording");
    sim.take_trace()
        .into_iter()
        .filter_map(|t| match t.what {
            TraceItem::Effect(Effect::Decision(d)) => Some(d),
            _ => None,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_recorded_session_replays_to_the_same_decisions(
        seed in any::<u64>(),
        p in prop_oneof![Just(1.0), Just(0.5)],
        events in prop::collection::vec((50u64..3_000, any::<bool>(), 0u8..4, any::<u8>()), 10..120),
        latencies in prop::collection::vec(1u64..8_000, 1..20),
    ) {
        let config = config(p);
        let (text, live) = live(&config, seed, &events, latencies);
        let replayed = replay(&config, &text);
        prop_assert_eq!(live, replayed);
    }
}
