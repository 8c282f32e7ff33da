//! A tiny driver for engine tests: builds envelopes, feeds them at chosen times, answers
//! LLM calls by hand and collects effects.
#![allow(dead_code)]

use chatbot_core::{
    Command, CommandKind, Config, Decision, Effect, Engine, Input, LeaseEvent, LeaseOp, LlmCall, LlmError, LlmReply,
    Millis,
};
use chatbot_core::{Outcome, Reason};

/// Engine start time used by tests: 2026-01-15T10:30:00Z.
pub const T0: u64 = 1_768_473_000_000;

pub const BASE: &str = r#"
bot: { name: KrytenBot, aliases: [kryten] }
llm:
  providers:
    main: { base_url: "http://127.0.0.1:9/v1", model: m }
    backup: { base_url: "http://127.0.0.1:10/v1", model: m }
defaults:
  limits: { global_cooldown: 0s, send_spacing: 0s }
"#;

pub fn config(extra: &str) -> Config {
    Config::parse(&format!("{BASE}{extra}"), "test.yaml").unwrap_or_else(|e| panic!("{e}"))
}

pub struct Bot {
    pub engine: Engine,
    pub now: u64,
    pub effects: Vec<Effect>,
    seq: u64,
    /// Lease state saves (`ha`) are answered `Saved` at once, as a healthy bucket does;
    /// false leaves them unanswered, for the test to answer.
    pub answer_saves: bool,
}

pub fn chat_body(channel: &str, user: &str, text: &str, time: u64, id: &str) -> Vec<u8> {
    serde_json::json!({
        "event_name": "chatMsg", "channel": channel, "domain": "cytu.be",
        "timestamp": "2026-01-15T10:30:00.000000+00:00", "correlation_id": id,
        "payload": {"username": user, "msg": text, "meta": {}, "time": time}
    })
    .to_string()
    .into_bytes()
}

impl Bot {
    pub fn new(extra: &str) -> Bot {
        Bot::with_seed(extra, 7)
    }

    pub fn with_seed(extra: &str, seed: u64) -> Bot {
        Bot {
            engine: Engine::new(config(extra), seed, Millis(T0)),
            now: T0,
            effects: Vec::new(),
            seq: 0,
            answer_saves: true,
        }
    }

    /// A bot from a complete config (not layered on `BASE`).
    pub fn from_yaml(yaml: &str) -> Bot {
        let cfg = Config::parse(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"));
        Bot { engine: Engine::new(cfg, 1, Millis(T0)), now: T0, effects: Vec::new(), seq: 0, answer_saves: true }
    }

    /// Advances time by `ms`, firing each timer at its time (as the daemon's loop does),
    /// and collects effects.
    pub fn wait(&mut self, ms: u64) {
        let until = self.now + ms;
        // Bounded: a timer that keeps re-arming in the past still moves time on.
        for _ in 0..100_000 {
            match self.engine.poll_timeout() {
                Some(t) if t.0 < until => {
                    self.now = self.now.max(t.0);
                    self.input(Input::Tick);
                }
                _ => break,
            }
        }
        self.now = until;
        self.input(Input::Tick);
    }

    pub fn input(&mut self, input: Input) {
        self.engine.handle(Millis(self.now), input);
        let mut saved = Vec::new();
        while let Some(e) = self.engine.poll_effect() {
            if let Effect::Lease(LeaseOp::Save { channel, .. }) = &e {
                saved.push(channel.clone());
            }
            self.effects.push(e);
        }
        if self.answer_saves {
            for channel in saved {
                self.input(Input::Lease(LeaseEvent::Saved { channel }));
            }
        }
        // Timers due now fire now, as the daemon's loop does.
        if self.engine.poll_timeout().is_some_and(|t| t.0 <= self.now) {
            self.input(Input::Tick);
        }
    }

    pub fn body(&mut self, body: Vec<u8>) {
        self.input(Input::Event { subject: None, body });
    }

    /// A chat line in `channel` from `user`, stamped now.
    pub fn say_in(&mut self, channel: &str, user: &str, text: &str) {
        self.seq += 1;
        let id = format!("ev-{}", self.seq);
        let body = chat_body(channel, user, text, self.now, &id);
        self.body(body);
    }

    pub fn say(&mut self, user: &str, text: &str) {
        self.say_in("lounge", user, text);
    }

    pub fn pm(&mut self, user: &str, to: &str, text: &str) {
        self.seq += 1;
        let body = serde_json::json!({
            "event_name": "pm", "channel": "lounge", "correlation_id": format!("pm-{}", self.seq),
            "payload": {"username": user, "msg": text, "meta": {}, "time": self.now, "to": to}
        });
        self.body(body.to_string().into_bytes());
    }

    pub fn media(&mut self, id: &str, title: &str, current_time: f64) {
        self.seq += 1;
        let body = serde_json::json!({
            "event_name": "changeMedia", "channel": "lounge", "correlation_id": format!("m-{}", self.seq),
            "payload": {"id": id, "title": title, "seconds": 100, "currentTime": current_time, "paused": true}
        });
        self.body(body.to_string().into_bytes());
    }

    /// Any Kryten event in `lounge`, shaped as the robot publishes it.
    pub fn event(&mut self, name: &str, payload: serde_json::Value) {
        self.seq += 1;
        let body = serde_json::json!({
            "event_name": name, "channel": "lounge", "correlation_id": format!("ev-{}", self.seq),
            "timestamp": "2026-01-15T10:30:00.000000+00:00", "payload": payload
        });
        self.body(body.to_string().into_bytes());
    }

    /// PMs published so far, as (recipient, text).
    pub fn pms(&self) -> Vec<(String, String)> {
        self.published()
            .into_iter()
            .filter_map(|c| match c.kind {
                CommandKind::Pm { to, text } => Some((to, text)),
                CommandKind::Say { .. } => None,
            })
            .collect()
    }

    /// LLM calls made so far and not yet answered by this helper.
    pub fn calls(&self) -> Vec<LlmCall> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::CallLlm(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn last_call(&self) -> LlmCall {
        self.calls().pop().expect("an LLM call")
    }

    pub fn reply(&mut self, call: &LlmCall, text: &str) {
        self.input(Input::LlmDone { id: call.id, result: Ok(LlmReply::new(text, None)) });
    }

    pub fn fail(&mut self, call: &LlmCall, error: LlmError) {
        self.input(Input::LlmDone { id: call.id, result: Err(error) });
    }

    /// Answers the most recent call.
    pub fn answer(&mut self, text: &str) {
        let call = self.last_call();
        self.reply(&call, text);
    }

    pub fn published(&self) -> Vec<Command> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Publish(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn said(&self) -> Vec<String> {
        self.published()
            .into_iter()
            .filter_map(|c| match c.kind {
                CommandKind::Say { text } => Some(text),
                CommandKind::Pm { .. } => None,
            })
            .collect()
    }

    pub fn decisions(&self) -> Vec<Decision> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Decision(d) => Some(d.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn reasons(&self, outcome: Outcome) -> Vec<Reason> {
        self.decisions().into_iter().filter(|d| d.outcome == outcome).filter_map(|d| d.reason).collect()
    }

    pub fn clear(&mut self) {
        self.effects.clear();
    }
}
