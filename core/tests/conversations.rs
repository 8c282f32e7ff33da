//! Both sides of the loop guard, on generated sessions with the default config:
//! a person talking to the bot at human pace (each line 8–40 s after the bot's previous
//! reply, varied wording and length) is never silenced by `loop_guard`; two bots
//! answering each other within 1–5 s are stopped after at most `max_exchanges`.

use std::collections::BTreeMap;

use chatbot_core::{CommandKind, Config, Decision, Effect, Engine, Input, LlmReply, Millis, Outcome, Reason};
use proptest::prelude::*;

const T0: u64 = 1_768_473_000_000;

/// The default config: nothing but the bot, a provider and the channel.
fn default_config(name: &str) -> Config {
    let yaml = format!(
        "bot: {{ name: {name}, aliases: [kryten] }}\n\
         llm: {{ providers: {{ main: {{ base_url: \"http://127.0.0.1:9/v1\", model: m }} }} }}\n\
         channels: [ {{ name: lounge }} ]\n"
    );
    Config::parse(&yaml, "default.yaml").unwrap()
}

fn chat(user: &str, text: &str, at: u64, id: u64) -> Input {
    let body = serde_json::json!({"event_name": "chatMsg", "channel": "lounge", "correlation_id": format!("c{id}"),
        "payload": {"username": user, "msg": text, "meta": {}, "time": at}});
    Input::Event { subject: None, body: body.to_string().into_bytes() }
}

const HUMAN_WORDS: &[&str] = &[
    "hm", "ok", "and", "what", "about", "the", "ending", "kryten", "really", "you", "think", "so", "why", "lol",
    "that", "scene", "was", "wild", "did", "anyone", "else", "notice", "music", "honestly", "wait", "who",
];
const BOT_WORDS: &[&str] = &[
    "certainly",
    "perhaps",
    "consider",
    "director",
    "cinematography",
    "remarkable",
    "subtle",
    "arguably",
    "narrative",
    "tension",
    "audiences",
    "themes",
    "composer",
    "originally",
    "released",
    "critics",
];

fn sentence(words: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(words), 1..max).prop_map(|w| w.join(" "))
}

/// One person's turn: how long after the bot's previous reply they write, what, and how
/// long the LLM takes and says in return.
#[derive(Debug, Clone)]
struct Turn {
    wait_ms: u64,
    line: String,
    latency_ms: u64,
    reply: String,
}

fn turn() -> impl Strategy<Value = Turn> {
    (8_000u64..=40_000, sentence(HUMAN_WORDS, 16), 200u64..4_000, sentence(BOT_WORDS, 40)).prop_map(
        |(wait_ms, line, latency_ms, reply)| Turn { wait_ms, line: format!("kryten {line}"), latency_ms, reply },
    )
}

/// Drives one engine through the turns; returns its decisions.
fn converse(turns: &[Turn]) -> Vec<Decision> {
    let mut engine = Engine::new(default_config("KrytenBot"), 3, Millis(T0));
    let mut now = T0 + 1_000;
    let mut decisions = Vec::new();
    let mut last_reply = now;
    for (i, t) in turns.iter().enumerate() {
        // After the bot's reply to their previous line, or after that line if it had none.
        now = now.max(last_reply) + t.wait_ms;
        let mut call = None;
        for e in engine.step(Millis(now), chat("alice", &t.line, now, i as u64)) {
            match e {
                Effect::CallLlm(c) => call = Some(c.id),
                Effect::Decision(d) => decisions.push(d),
                _ => {}
            }
        }
        let Some(id) = call else { continue };
        now += t.latency_ms;
        let answer = Input::LlmDone { id, result: Ok(LlmReply::new(t.reply.clone(), None)) };
        for e in engine.step(Millis(now), answer) {
            match e {
                Effect::Publish(_) => last_reply = now,
                Effect::Decision(d) => decisions.push(d),
                _ => {}
            }
        }
        // The bot's own line echoes back (it is remembered, never answered).
        for e in engine.step(Millis(now + 150), chat("KrytenBot", &t.reply, now + 150, 10_000 + i as u64)) {
            if let Effect::Decision(d) = e {
                decisions.push(d);
            }
        }
    }
    decisions
}

/// The default config with every other limit out of the way (as in two_bots.rs): with
/// the default 5 s global cooldown two bots this fast cannot keep a loop going at all, so
/// only the loop guard stands between them here.
fn unlimited(name: &str) -> Config {
    let yaml = format!(
        "bot: {{ name: {name} }}\n\
         llm: {{ providers: {{ main: {{ base_url: \"http://127.0.0.1:9/v1\", model: m }} }} }}\n\
         defaults:\n  limits: {{ per_user: {{ max: 100, window: 1m }}, per_channel: {{ max: 100, window: 1m }}, global_cooldown: 0s }}\n  \
         penalty: {{ base: 0s, max: 0s }}\n\
         channels: [ {{ name: lounge }} ]\n"
    );
    Config::parse(&yaml, "unlimited.yaml").unwrap()
}

/// Two engines answering each other: `latencies` (ms, cycled) is each answer's LLM time;
/// the echo adds 200 ms. Returns, per side, the times of replies to the other bot and of
/// loop-guard silences.
fn two_bots(latencies: &[u64], texts: &[String], minutes: u64) -> [(Vec<u64>, Vec<u64>); 2] {
    const NAMES: [&str; 2] = ["Alpha", "Beta"];
    let mut engines = NAMES.map(|n| Engine::new(unlimited(n), 1, Millis(T0)));
    // (at, seq) → (side to answer, or the line for both: (from, text))
    enum Next {
        Line(usize, String),
        Answer(usize, chatbot_core::RequestId),
    }
    let mut queue: BTreeMap<(u64, u64), Next> = BTreeMap::new();
    let mut seq = 0u64;
    queue.insert((T0 + 1_000, 0), Next::Line(2, "Alpha, what do you think?".into()));
    let mut out: [(Vec<u64>, Vec<u64>); 2] = Default::default();
    let (mut n_lat, mut n_text) = (0usize, 0usize);
    let end = T0 + minutes * 60_000;
    for _ in 0..200_000 {
        let next_timer = engines.iter().filter_map(Engine::poll_timeout).min().map(|m| m.0);
        let next_queue = queue.keys().next().map(|k| k.0);
        let Some(now) = [next_queue, next_timer].into_iter().flatten().min() else { break };
        if now > end {
            break;
        }
        let mut inputs: Vec<(usize, Input)> = Vec::new();
        if next_queue == Some(now) {
            match queue.pop_first().unwrap().1 {
                Next::Line(from, text) => {
                    let user = NAMES.get(from).copied().unwrap_or("carol");
                    for side in (0..2).filter(|&s| s != from) {
                        seq += 1;
                        inputs.push((side, chat(user, &text, now, seq)));
                    }
                }
                Next::Answer(side, id) => {
                    // Never the same twice (dedupe would end the exchange by itself).
                    let text = format!("{}, {} (my point {n_text})", NAMES[1 - side], texts[n_text % texts.len()]);
                    n_text += 1;
                    inputs.push((side, Input::LlmDone { id, result: Ok(LlmReply::new(text, None)) }));
                }
            }
        } else {
            inputs.extend((0..2).map(|s| (s, Input::Tick)));
        }
        for (side, input) in inputs {
            let effects: Vec<Effect> = engines[side].step(Millis(now), input).collect();
            for e in effects {
                seq += 1;
                match e {
                    Effect::CallLlm(c) => {
                        let lat = latencies[n_lat % latencies.len()];
                        n_lat += 1;
                        queue.insert((now + lat, seq), Next::Answer(side, c.id));
                    }
                    Effect::Publish(cmd) => {
                        if let CommandKind::Say { text } = cmd.kind {
                            out[side].0.push(now - T0);
                            queue.insert((now + 200, seq), Next::Line(side, text));
                        }
                    }
                    Effect::Decision(d) if d.reason == Some(Reason::LoopGuard) => out[side].1.push(now - T0),
                    _ => {}
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A 20-turn conversation at human pace is never cut by the loop guard (the per-user
    /// limit or a penalty may hold a line back; that is what they are for).
    #[test]
    fn a_person_at_human_pace_is_never_taken_for_a_bot(turns in prop::collection::vec(turn(), 20)) {
        let decisions = converse(&turns);
        let guarded: Vec<&Decision> = decisions.iter().filter(|d| d.reason == Some(Reason::LoopGuard)).collect();
        prop_assert!(guarded.is_empty(), "loop_guard cut a person off: {:?}", guarded);
        let answered = decisions.iter().filter(|d| d.outcome == Outcome::Sent).count();
        let limited = decisions
            .iter()
            .filter(|d| matches!(d.reason, Some(Reason::PerUserLimit | Reason::Penalty | Reason::GlobalCooldown | Reason::DuplicateReply)))
            .count();
        let summary: Vec<String> =
            decisions.iter().map(|d| format!("{} {}", d.outcome.label(), d.reason.map_or("", Reason::label))).collect();
        prop_assert_eq!(answered + limited, 20, "every line is answered or held back by a limit: {:?}", summary);
    }

    /// Two bots answering each other within 1–5 s (LLM time plus the echo) stop after at
    /// most `max_exchanges` (3) answers each, and stay stopped during the backoff.
    #[test]
    fn two_bots_answering_within_seconds_are_always_stopped(
        latencies in prop::collection::vec(800u64..4_800, 1..8),
        texts in prop::collection::vec(sentence(BOT_WORDS, 40), 3..8),
    ) {
        let sides = two_bots(&latencies, &texts, 4);
        let guards: usize = sides.iter().map(|(_, g)| g.len()).sum();
        prop_assert!(guards > 0, "the guard never fired: {:?}", sides);
        // Each side: the reply that opened the exchange and at most three answers it judged;
        // then silence for the rest of the backoff (5 min, longer than the run).
        for (side, (sent, _)) in sides.iter().enumerate() {
            prop_assert!(sent.len() <= 4, "side {}: {} replies: {:?}", side, sent.len(), sent);
        }
    }
}

/// The case the room issue measured: seven questions, each 25 s after the bot's previous
/// answer, with the default config. The guard of before answered three and then kept
/// five minutes of `loop_guard` silence.
#[test]
fn seven_questions_25_s_after_each_answer_get_seven_answers() {
    let turns: Vec<Turn> = (0..7)
        .map(|i| Turn {
            wait_ms: 25_000,
            line: format!("kryten, question number {i}: what do you think about the ending?"),
            latency_ms: 1_200,
            reply: format!("Answer {i}: the ending was arguably the subtle part of the narrative."),
        })
        .collect();
    let decisions = converse(&turns);
    let sent = decisions.iter().filter(|d| d.outcome == Outcome::Sent).count();
    assert_eq!(sent, 7, "{decisions:?}");
}
