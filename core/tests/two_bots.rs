//! Two engines wired to each other: each one's messages become the other's chat events,
//! and each one's LLM always answers by addressing the other bot. Without the loop guard
//! they talk forever; with it the exchange stops within `max_exchanges` and restarts
//! only after the backoff.

use std::collections::BTreeMap;

use chatbot_core::{CommandKind, Config, Effect, Engine, Input, LlmReply, Millis, Outcome, Reason, RequestId};

const T0: u64 = 1_768_473_000_000;
const NAMES: [&str; 2] = ["Alpha", "Beta"];

fn config(name: &str, max_exchanges: u32) -> Config {
    Config::parse(
        &format!(
            r#"
bot: {{ name: {name} }}
llm: {{ providers: {{ main: {{ base_url: "http://127.0.0.1:1/v1", model: m }} }} }}
defaults:
  limits: {{ per_user: {{ max: 100, window: 1m }}, per_channel: {{ max: 100, window: 1m }}, global_cooldown: 0s, send_spacing: 1s }}
  penalty: {{ base: 0s, max: 0s }}
  loop_guard: {{ max_exchanges: {max_exchanges}, window: 2m, backoff: 5m }}
channels: [ {{ name: lounge }} ]
"#
        ),
        "two-bots.yaml",
    )
    .unwrap()
}

enum Pending {
    /// A chat line reaching both engines.
    Line { from: String, text: String },
    /// An LLM answer for one engine.
    Answer { side: usize, id: RequestId },
}

/// Runs both bots for `minutes` of virtual time; carol pokes Alpha at the given minutes.
/// Returns each engine's decisions.
fn run(max_exchanges: u32, minutes: u64, pokes: &[u64]) -> [Vec<chatbot_core::Decision>; 2] {
    let mut engines = NAMES.map(|n| Engine::new(config(n, max_exchanges), 1, Millis(T0)));
    let mut queue: BTreeMap<(u64, u64), Pending> = BTreeMap::new();
    let mut seq = 0u64;
    let mut push = |q: &mut BTreeMap<(u64, u64), Pending>, at: u64, p: Pending| {
        seq += 1;
        q.insert((at, seq), p);
    };
    for &m in pokes {
        push(
            &mut queue,
            T0 + m * 60_000,
            Pending::Line { from: "carol".into(), text: "Alpha, ask Beta what they think".into() },
        );
    }
    let end = T0 + minutes * 60_000;
    let mut decisions: [Vec<chatbot_core::Decision>; 2] = [Vec::new(), Vec::new()];
    let mut said = [0u64; 2];
    for _step in 0..1_000_000 {
        let next_queue = queue.keys().next().map(|k| k.0);
        let next_timer = engines.iter().filter_map(Engine::poll_timeout).min().map(|m| m.0);
        let now = match (next_queue, next_timer) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => break,
            },
        };
        if now > end {
            break;
        }
        let mut inputs: Vec<(usize, Input)> = Vec::new();
        if next_queue == Some(now) {
            let (_, p) = queue.pop_first().unwrap();
            match p {
                Pending::Line { from, text } => {
                    let body = serde_json::json!({"event_name": "chatMsg", "channel": "lounge", "correlation_id": format!("e{now}-{from}"),
                        "payload": {"username": from, "msg": text, "meta": {}, "time": now}});
                    for side in 0..2 {
                        inputs.push((side, Input::Event { subject: None, body: body.to_string().into_bytes() }));
                    }
                }
                Pending::Answer { side, id } => {
                    said[side] += 1;
                    let other = NAMES[1 - side];
                    let text = format!("{other}, that is point number {} from me. What do you think?", said[side]);
                    inputs.push((side, Input::LlmDone { id, result: Ok(LlmReply::new(text, None)) }));
                }
            }
        } else {
            inputs.extend((0..2).map(|side| (side, Input::Tick)));
        }
        for (side, input) in inputs {
            engines[side].handle(Millis(now), input);
            while let Some(effect) = engines[side].poll_effect() {
                match effect {
                    Effect::CallLlm(call) => push(&mut queue, now + 1_500, Pending::Answer { side, id: call.id }),
                    Effect::Publish(cmd) => {
                        if let CommandKind::Say { text } = cmd.kind {
                            push(&mut queue, now + 200, Pending::Line { from: NAMES[side].into(), text });
                        }
                    }
                    Effect::Decision(d) => decisions[side].push(d),
                    Effect::CancelLlm(_)
                    | Effect::Lease(_)
                    | Effect::Heartbeat
                    | Effect::Moderation(_)
                    | Effect::ShutdownComplete => {}
                }
            }
        }
    }
    decisions
}

fn replies_to(decisions: &[chatbot_core::Decision], user: &str) -> Vec<u64> {
    decisions
        .iter()
        .filter(|d| d.outcome == Outcome::Sent && d.user.as_deref() == Some(user))
        .map(|d| (d.at.0 - T0) / 1000)
        .collect()
}

#[test]
fn without_the_guard_two_bots_talk_forever() {
    let [alpha, _] = run(1_000_000, 20, &[0]);
    let n = replies_to(&alpha, "beta").len();
    eprintln!("without the guard: {n} replies from alpha to beta in 20 minutes");
    assert!(n > 150, "expected an endless exchange, got {n} replies in 20 minutes");
}

#[test]
fn the_guard_stops_the_exchange_within_max_exchanges_and_waits_out_the_backoff() {
    let max = 3;
    let [alpha, beta] = run(max, 30, &[0, 2, 8, 20]);
    for (me, other, decisions) in [("alpha", "beta", &alpha), ("beta", "alpha", &beta)] {
        let sent = replies_to(decisions, other);
        let guarded: Vec<u64> = decisions
            .iter()
            .filter(|d| {
                d.reason == Some(Reason::LoopGuard)
                    && d.user.as_deref() == Some(if other == "beta" { "Beta" } else { "Alpha" })
            })
            .map(|d| (d.at.0 - T0) / 1000)
            .collect();
        assert!(!guarded.is_empty(), "{me}: the guard never fired");
        // Between two guard backoffs, at most `max` replies to the other bot.
        let mut bursts: Vec<Vec<u64>> = vec![Vec::new()];
        for &t in &sent {
            if let Some(&prev) = bursts.last().and_then(|b| b.last()) {
                if t - prev > 120 {
                    bursts.push(Vec::new());
                }
            }
            bursts.last_mut().unwrap().push(t);
        }
        for b in &bursts {
            assert!(b.len() as u32 <= max, "{me}: {} replies to {other} in one exchange: {b:?}", b.len());
        }
        // No reply to the other bot while a backoff (5 min from the first suppression of a
        // loop) is running.
        let mut backoff_start = None;
        for &g in &guarded {
            if backoff_start.is_none_or(|s| g >= s + 300) {
                backoff_start = Some(g);
                assert!(
                    !sent.iter().any(|&t| t > g && t < g + 300),
                    "{me} answered {other} during the backoff that began at {g} s: {sent:?}"
                );
            }
        }
        eprintln!("{me}: replies to {other} at {sent:?} s; loop guard at {guarded:?} s");
    }
    let total: usize = replies_to(&alpha, "beta").len() + replies_to(&beta, "alpha").len();
    assert!(total <= 24, "the bots exchanged {total} messages in 30 minutes despite the guard");
}
