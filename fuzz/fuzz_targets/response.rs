//! Whatever the LLM says, a processed reply is 1..=max_parts non-empty messages, each at
//! most max_length UTF-16 units, none starting with `/`.
#![no_main]
use chatbot_core::config::{BotConfig, ResponseConfig};
use chatbot_core::response::{utf16_len, Recent, Rules};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::sync::Mutex;

/// Compiling the rules (regexes) dominates a run: compile once per knob value.
static RULES: Mutex<Option<HashMap<u8, (ResponseConfig, Rules)>>> = Mutex::new(None);

fn config(knobs: u8) -> ResponseConfig {
    ResponseConfig {
        max_length: 20 + usize::from(knobs & 0x3f),
        max_parts: 1 + usize::from(knobs >> 6),
        strip_markdown: knobs & 1 == 0,
        block_patterns: Vec::new(),
        block_keywords: vec!["heck".into()],
        dedupe_window: 3,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, rest)) = data.split_first() else { return };
    let Ok(raw) = std::str::from_utf8(rest) else { return };
    let mut cache = RULES.lock().unwrap();
    let (cfg, rules) = cache.get_or_insert_with(HashMap::new).entry(knobs).or_insert_with(|| {
        let cfg = config(knobs);
        let bot = BotConfig { name: "KrytenBot".into(), aliases: vec!["kryten".into(), "@bot".into()] };
        let rules = Rules::new(&cfg, &bot, "You are KrytenBot, a friendly regular of this chat room.");
        (cfg, rules)
    });
    if let Ok(parts) = rules.process(raw, &Recent::default()) {
        assert!(!parts.is_empty() && parts.len() <= cfg.max_parts);
        for p in &parts {
            assert!(!p.is_empty());
            assert!(!p.starts_with('/'), "{p:?}");
            assert!(utf16_len(p) <= cfg.max_length, "{} > {}", utf16_len(p), cfg.max_length);
        }
    }
});
