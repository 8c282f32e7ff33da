//! The daemon and the simulator run the same engine under the same drain rule: fed the
//! same events, they must reach the same decisions. This runs the real binary on a real
//! nats-server with a burst of events (so the daemon takes its batched path), then feeds
//! the very same envelopes to the simulator, and compares every decision per event.

use std::collections::BTreeMap;
use std::time::Duration;

use chatbot_core::{Config, Input, LlmCall, LlmReply, Millis};
use chatbot_sim::{Answer, Responder, Sim};
use chatbot_testkit::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_llm-chatbot");

/// Answers as the fake LLM does when unscripted: "echo: <the line answered>".
struct Echo;

impl Responder for Echo {
    fn respond(&mut self, call: &LlmCall) -> Answer {
        // The line answered sits just before the instruction.
        let n = call.messages.len();
        let line = call.messages.get(n.saturating_sub(2)).map_or("", |m| m.content.as_str());
        Answer { latency: Duration::from_millis(1), result: Ok(LlmReply::new(format!("echo: {line}"), None)) }
    }
}

/// (channel, correlation id) → the decisions about that event, sorted: the order of one
/// event's decisions relative to another's (a reply sent before or after a redelivery
/// arrives) depends on the LLM's latency, which differs between the two.
type ByEvent = BTreeMap<(String, String), Vec<String>>;

fn record(by: &mut ByEvent, channel: &str, cid: &str, trigger: &str, outcome: &str, reason: &str) {
    let decisions = by.entry((channel.to_owned(), cid.to_owned())).or_default();
    decisions.push(format!("{trigger}/{outcome}/{reason}"));
    decisions.sort();
}

/// The events of the session: mentions that run into the per-user limit and then the
/// penalty, chatter, a PM, the bot's own echo, a redelivered event, two channels.
fn session() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for ch in ["alpha", "beta"] {
        for i in 0..6 {
            out.push((
                ch,
                "chatMsg",
                chat(ch, "alice", &format!("kryten question {i} in {ch}"), &format!("{ch}-a{i}")),
            ));
            out.push((ch, "chatMsg", chat(ch, "bob", &format!("just chatting {i}"), &format!("{ch}-b{i}"))));
        }
        out.push((ch, "chatMsg", chat(ch, "carol", "hey KrytenBot, what's up?", &format!("{ch}-c0"))));
        out.push((ch, "pm", pm(ch, "dave", "psst kryten", &format!("{ch}-p0"))));
        out.push((ch, "chatMsg", chat(ch, "KrytenBot", "echo: hello", &format!("{ch}-own"))));
        // Kryten redelivers an event with the same correlation id.
        out.push((ch, "chatMsg", chat(ch, "erin", "kryten once", &format!("{ch}-e0"))));
        out.push((ch, "chatMsg", chat(ch, "erin", "kryten once", &format!("{ch}-e0"))));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_and_the_simulator_decide_alike_on_the_same_events() {
    let nats = Nats::start();
    let llm = FakeLlm::start().await;
    // Only rules that do not depend on how fast the LLM answers: the per-user window
    // counts pending replies, so it is the same whatever the latency; the loop guard
    // (which times answers to our replies) is out of the way.
    let channels = "    limits: { per_user: { max: 3, window: 1m }, max_in_flight: 100 }\n    loop_guard: { max_exchanges: 100 }\n";
    let cfg = config(&nats.url(), &llm.base_url(), free_port(), &["alpha", "beta"], "")
        .replace("  - name: alpha\n", &format!("  - name: alpha\n{channels}"))
        .replace("  - name: beta\n", &format!("  - name: beta\n{channels}"));
    let mut bot = Bot::spawn(BIN, &cfg, &[], &["--log-format", "json"]);
    bot.wait_for("ready", Duration::from_secs(15));
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;
    let events = session();
    // One burst, flushed once: the daemon reads them in batches.
    for (ch, kind, body) in &events {
        let subject = format!("kryten.events.cytube.{ch}.{}", kind.to_lowercase());
        client.publish(subject, body.clone().into()).await.unwrap();
    }
    client.flush().await.unwrap();
    // Every answer leaves: 2 channels × (3 for alice + carol + the PM + erin).
    for _ in 0..12 {
        commands.next(Duration::from_secs(10)).await.expect("a reply");
    }
    commands.none(Duration::from_millis(500)).await;
    bot.signal("TERM");
    assert_eq!(bot.wait_exit(Duration::from_secs(10)), Some(0));

    let mut live = ByEvent::new();
    for line in bot.logs().lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        if v["target"] != "decision" {
            continue;
        }
        let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
        record(&mut live, &s("channel"), &s("correlation_id"), &s("trigger"), &s("outcome"), &s("reason"));
    }

    let config = Config::parse(&cfg, "bot.yaml").unwrap();
    let first_time = events
        .iter()
        .filter_map(|(_, _, b)| serde_json::from_slice::<Value>(b).ok()?["payload"]["time"].as_u64())
        .min()
        .unwrap();
    let start = Millis(first_time - 5_000);
    let mut sim = Sim::new(config, 0, start, Box::new(Echo), None);
    for (i, (ch, kind, body)) in events.iter().enumerate() {
        let subject = Some(format!("kryten.events.cytube.{ch}.{}", kind.to_lowercase()));
        sim.feed(start.after(Duration::from_millis(i as u64)), Input::Event { subject, body: body.clone() });
    }
    sim.finish(Duration::from_secs(5));
    let mut simulated = ByEvent::new();
    for t in sim.trace() {
        if let chatbot_sim::TraceItem::Effect(chatbot_core::Effect::Decision(d)) = &t.what {
            let label = |o: Option<&'static str>| o.unwrap_or("").to_owned();
            record(
                &mut simulated,
                &d.channel,
                d.correlation_id.as_deref().unwrap_or(""),
                &label(d.trigger.map(|t| t.label())),
                d.outcome.label(),
                &label(d.reason.map(|r| r.label())),
            );
        }
    }
    // The session exercised what it meant to: limits, penalties, duplicates, own lines.
    let all: Vec<&String> = simulated.values().flatten().collect();
    for needle in ["per_user_limit", "penalty", "duplicate_event", "own_message", "mention/sent/", "pm/sent/"] {
        assert!(all.iter().any(|d| d.contains(needle)), "no {needle} decision in {all:?}");
    }
    assert_eq!(live, simulated, "the daemon and the simulator decided differently");
}
