//! The whole engine takes arbitrary bodies (split on newlines, one event each, a second
//! apart) without panicking, and what it publishes keeps the output invariants.
#![no_main]
use chatbot_core::{Config, Effect, Engine, Input, LlmReply, Millis};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const T0: u64 = 1_768_473_000_000;

/// Built once (parsing the config and compiling its patterns is most of the cost of a
/// fresh engine); every run starts from a clone of it.
static TEMPLATE: OnceLock<Engine> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let template = TEMPLATE.get_or_init(|| {
        let cfg = Config::parse(
            "bot: { name: KrytenBot, aliases: [kryten] }\nllm: { providers: { main: { base_url: 'http://127.0.0.1:1/v1', model: m } } }\nchannels: [ { name: lounge }, { name: other } ]\n",
            "fuzz.yaml",
        )
        .expect("the fuzz config is valid");
        Engine::new(cfg, 1, Millis(T0))
    });
    let mut engine = template.clone();
    for (i, line) in data.split(|b| *b == b'\n').take(64).enumerate() {
        let now = Millis(T0 + 1_000 * i as u64);
        engine.handle(
            now,
            Input::Event { subject: Some("kryten.events.cytube.lounge.chatmsg".into()), body: line.to_vec() },
        );
        let mut calls = Vec::new();
        while let Some(e) = engine.poll_effect() {
            match e {
                Effect::CallLlm(c) => calls.push(c.id),
                Effect::Publish(cmd) => assert!(!cmd.kind.text().starts_with('/')),
                _ => {}
            }
        }
        for id in calls {
            let text = String::from_utf8_lossy(line).into_owned();
            engine.handle(now, Input::LlmDone { id, result: Ok(LlmReply { text, usage: None }) });
            while let Some(e) = engine.poll_effect() {
                if let Effect::Publish(cmd) = e {
                    let t = cmd.kind.text();
                    assert!(!t.is_empty() && !t.starts_with('/') && t.encode_utf16().count() <= 320, "{t:?}");
                }
            }
        }
    }
});
