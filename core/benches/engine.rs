//! Engine micro-benchmarks: `cargo bench -p chatbot-core`.
//!
//! Each benchmark feeds a batch of pre-built inputs to a fresh engine and drains every
//! effect, exactly as the runtime does; building the inputs is outside the timing.

use chatbot_core::response::{Recent, Rules};
use chatbot_core::{Config, Effect, Engine, Input, LlmReply, Millis};
use divan::counter::ItemsCount;
use divan::Bencher;

fn main() {
    divan::main();
}

const T0: u64 = 1_768_473_000_000;
const BATCH: usize = 10_000;

fn config(channels: usize) -> Config {
    let mut yaml = String::from(
        "bot: { name: KrytenBot, aliases: [kryten] }\nllm: { providers: { main: { base_url: 'http://127.0.0.1:1/v1', model: m } } }\n\
         defaults:\n  limits: { per_user: { max: 1000000, window: 1m }, per_channel: { max: 1000000, window: 1m }, global_cooldown: 0s, send_spacing: 0s, max_in_flight: 1000000 }\n\
         channels:\n",
    );
    for i in 0..channels {
        yaml.push_str(&format!("  - name: ch{i}\n"));
    }
    Config::parse(&yaml, "bench.yaml").unwrap()
}

fn chat(channel: &str, user: &str, text: &str, i: usize) -> Input {
    let body = format!(
        r#"{{"event_name": "chatMsg", "payload": {{"username": "{user}", "msg": "{text}", "meta": {{}}, "time": {}}}, "channel": "{channel}", "domain": "cytu.be", "timestamp": "2026-01-15T10:30:00.000000+00:00", "correlation_id": "6f1c2a3e-0000-4000-8000-{i:012}"}}"#,
        T0 + i as u64
    );
    Input::Event { subject: None, body: body.into_bytes() }
}

fn drain(engine: &mut Engine) -> usize {
    let mut n = 0;
    while let Some(e) = engine.poll_effect() {
        n += usize::from(matches!(e, Effect::Publish(_)));
    }
    n
}

/// Feeds a batch (one input per millisecond) to a fresh engine for `cfg`.
fn feed_batch(bencher: Bencher, cfg: Config, inputs: Vec<Input>) {
    bencher
        .counter(ItemsCount::new(inputs.len()))
        .with_inputs(|| (Engine::new(cfg.clone(), 1, Millis(T0)), inputs.clone()))
        .bench_local_values(|(mut engine, inputs)| {
            for (i, input) in inputs.into_iter().enumerate() {
                engine.handle(Millis(T0 + i as u64), input);
                drain(&mut engine);
            }
            engine
        });
}

/// Ordinary chat that triggers nothing: parse, decode, dedupe, context push.
#[divan::bench]
fn ordinary_chat(bencher: Bencher) {
    let inputs: Vec<Input> = (0..BATCH)
        .map(|i| chat("ch0", &format!("user{}", i % 40), "is this the 3 &lt; 4 channel? nice weather today", i))
        .collect();
    feed_batch(bencher, config(1), inputs);
}

/// Reading the envelope of an ordinary chat line alone (the first step of `ordinary_chat`).
#[divan::bench]
fn ordinary_chat_envelope(bencher: Bencher) {
    let bodies: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| match chat("ch0", &format!("user{}", i % 40), "is this the 3 &lt; 4 channel? nice weather today", i) {
            Input::Event { body, .. } => body,
            _ => unreachable!(),
        })
        .collect();
    bencher.counter(ItemsCount::new(BATCH)).bench_local(|| {
        bodies.iter().filter(|b| chatbot_core::event::parse(divan::black_box(b), None).is_ok()).count()
    });
}

/// A mention through to the published reply: event → LLM call → answer → `say`.
#[divan::bench]
fn mention_to_reply(bencher: Bencher) {
    const N: usize = 2_000;
    let inputs: Vec<Input> = (0..N).map(|i| chat("ch0", &format!("user{i}"), "hey kryten, how are you?", i)).collect();
    bencher
        .counter(ItemsCount::new(N))
        .with_inputs(|| (Engine::new(config(1), 1, Millis(T0)), inputs.clone()))
        .bench_local_values(|(mut engine, inputs)| {
            let mut sent = 0;
            for (i, input) in inputs.into_iter().enumerate() {
                let now = Millis(T0 + i as u64);
                engine.handle(now, input);
                let mut calls = Vec::new();
                while let Some(e) = engine.poll_effect() {
                    if let Effect::CallLlm(c) = e {
                        calls.push(c.id);
                    }
                }
                for id in calls {
                    let reply = LlmReply::new(format!("Doing fine, thanks! ({i})"), None);
                    engine.handle(now, Input::LlmDone { id, result: Ok(reply) });
                    sent += drain(&mut engine);
                }
            }
            assert_eq!(sent, N);
            engine
        });
}

/// Ordinary chat spread over 1,000 channels.
#[divan::bench]
fn thousand_channel_mix(bencher: Bencher) {
    let names: Vec<String> = (0..1000).map(|i| format!("ch{i}")).collect();
    let inputs: Vec<Input> =
        (0..BATCH).map(|i| chat(&names[(i * 7919) % 1000], &format!("user{}", i % 97), "lol same here", i)).collect();
    feed_batch(bencher, config(1000), inputs);
}

/// Context push with expiry at every step (the window is full and sliding).
#[divan::bench]
fn context_push_and_expire(bencher: Bencher) {
    use chatbot_core::context::{ChatLine, Context};
    let user: std::sync::Arc<str> = "alice".into();
    bencher
        .counter(ItemsCount::new(BATCH))
        .with_inputs(|| Context::new(50, std::time::Duration::from_secs(60)))
        .bench_local_values(|mut ctx| {
            for i in 0..BATCH as u64 {
                ctx.expire(Millis(T0 + i * 100));
                ctx.push(ChatLine {
                    at: Millis(T0 + i * 100),
                    user: user.clone(),
                    text: String::new(),
                    own: false,
                    action: false,
                });
            }
            ctx
        });
}

/// Cleaning a 2 KB markdown-heavy reply down to one CyTube line.
#[divan::bench]
fn process_2kb_reply(bencher: Bencher) {
    let cfg = config(1);
    let rules = Rules::new(&cfg.channels[0].response, &cfg.bot, &cfg.channels[0].system_prompt);
    let recent = Recent::default();
    let mut raw = String::from("KrytenBot: **Sure!** Here is what I think:\n\n");
    while raw.len() < 2048 {
        raw.push_str("- a *point* about `code` and [links](https://example.com) that goes on\n");
    }
    bencher.bench_local(|| rules.process(divan::black_box(&raw), &recent).unwrap());
}
