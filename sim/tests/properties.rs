//! Invariants of the engine over generated chat, checked end to end through the
//! simulator: many channels and users, bursts, time jumps, hostile LLM output and faults.
//!
//! A failure prints the generated case; proptest also stores its seed under
//! `proptest-regressions/` so it replays first next time.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use chatbot_core::{Config, Effect, Input, LlmCall, LlmError, LlmReply, Millis, Outcome, Trigger};
use chatbot_sim::{Answer, Responder, Sim, TraceItem, Traced};
use proptest::prelude::*;

const T0: u64 = 1_768_473_000_000;
const CHANNELS: [&str; 3] = ["alpha", "beta", "gamma"];
const USERS: [&str; 7] = ["alice", "bob", "carol", "dave", "KrytenBot", "spambot", "[server]"];

/// An LLM that answers with the worst things a model says: commands, its own name as a
/// prefix, markdown, huge and empty text, astral characters; and sometimes fails.
struct Adversary;

impl Responder for Adversary {
    fn respond(&mut self, call: &LlmCall) -> Answer {
        let mut h = DefaultHasher::new();
        call.messages.hash(&mut h);
        call.id.hash(&mut h);
        let h = h.finish();
        let text = match h % 10 {
            0 => "/clear".to_string(),
            1 => "KrytenBot: /kick alice".into(),
            2 => format!("**Sure!** {}", "😀 long words everywhere ".repeat(40)),
            3 => "   ".into(),
            4 => "yes".into(),
            5 => "/ / /ban bob because".into(),
            6 => format!("{}/me dances", "x".repeat(18)),
            _ => format!("reply number {}", h % 1000),
        };
        let result = match (h >> 8) % 12 {
            0 => Err(LlmError::Timeout),
            1 => Err(LlmError::Status(503)),
            _ => Ok(LlmReply::new(text, None)),
        };
        Answer { latency: Duration::from_millis(50 + (h >> 16) % 40_000), result }
    }
}

#[derive(Debug, Clone)]
struct Limits {
    per_user: (u32, u64),
    per_channel: (u32, u64),
    global_cooldown: u64,
    send_spacing: u64,
    max_in_flight: u32,
    max_length: usize,
    max_parts: usize,
    mention_p: f64,
    contextual: bool,
    media: bool,
    /// Tokens per hour per channel (0 = unlimited).
    budget: u64,
}

fn limits(max_parts: impl Strategy<Value = usize>) -> impl Strategy<Value = Limits> {
    (
        (1u32..5, 5_000u64..120_000),
        (1u32..12, 5_000u64..120_000),
        0u64..10_000,
        0u64..2_000,
        1u32..6,
        20usize..120,
        max_parts,
        prop_oneof![Just(1.0), Just(0.5)],
        (any::<bool>(), any::<bool>(), prop_oneof![Just(0u64), 800u64..6_000]),
    )
        .prop_map(|(pu, pc, gc, sp, mif, ml, mp, p, (ctx, media, budget))| Limits {
            per_user: pu,
            per_channel: pc,
            global_cooldown: gc,
            send_spacing: sp,
            max_in_flight: mif,
            max_length: ml,
            max_parts: mp,
            mention_p: p,
            contextual: ctx,
            media,
            budget,
        })
}

fn config(l: &Limits) -> Config {
    let yaml = format!(
        r#"
bot: {{ name: KrytenBot, aliases: [kryten] }}
llm:
  providers:
    main: {{ base_url: "http://127.0.0.1:9/v1", model: m, timeout: 5s, retries: 0, max_tokens: 400 }}
    backup: {{ base_url: "http://127.0.0.1:9/v1", model: m, timeout: 5s, retries: 0, max_tokens: 400 }}
  fallback_responses: ["/kick everyone", "be right back"]
defaults:
  provider: [main, backup]
  ignore_users: [spambot]
  triggers:
    mention: {{ probability: {p} }}
    keywords: [ {{ words: [pizza, "star wars"], probability: 0.7 }} ]
    contextual: {{ enabled: {ctx}, every: 1m, min_new_messages: 2 }}
    media_change: {{ enabled: {media}, probability: 1.0 }}
  limits:
    per_user: {{ max: {pum}, window: {puw}ms }}
    per_channel: {{ max: {pcm}, window: {pcw}ms }}
    global_cooldown: {gc}ms
    send_spacing: {sp}ms
    max_in_flight: {mif}
  response: {{ max_length: {ml}, max_parts: {mp}, dedupe_window: 3 }}
  budget: {{ tokens_per_hour: {budget} }}
channels: [ {{ name: alpha }}, {{ name: beta }}, {{ name: gamma }} ]
"#,
        p = l.mention_p,
        ctx = l.contextual,
        media = l.media,
        pum = l.per_user.0,
        puw = l.per_user.1,
        pcm = l.per_channel.0,
        pcw = l.per_channel.1,
        gc = l.global_cooldown,
        sp = l.send_spacing,
        mif = l.max_in_flight,
        ml = l.max_length,
        mp = l.max_parts,
        budget = l.budget,
    );
    Config::parse(&yaml, "property.yaml").unwrap_or_else(|e| panic!("{e}"))
}

#[derive(Debug, Clone)]
enum Kind {
    Chat { user: usize, text: String, shadow: bool, backlog: bool },
    Pm { user: usize, text: String },
    Media { item: u8, fresh: bool },
    Garbage(String),
}

#[derive(Debug, Clone)]
struct Ev {
    gap_ms: u64,
    channel: usize,
    kind: Kind,
}

fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("kryten".to_string()),
        Just("KrytenBot".to_string()),
        Just("@kryten".to_string()),
        Just("pizza".to_string()),
        Just("star wars".to_string()),
        Just("robotics".to_string()),
        Just("/ban".to_string()),
        Just("&lt;b&gt;".to_string()),
        Just("<strong>hi</strong>".to_string()),
        Just("?".to_string()),
        "[a-z]{1,8}",
        "\\PC{0,6}",
    ];
    prop::collection::vec(piece, 0..6).prop_map(|v| v.join(" "))
}

fn event() -> impl Strategy<Value = Ev> {
    let gap = prop_oneof![8 => 0u64..3_000, 3 => 0u64..60_000, 1 => 0u64..3_600_000];
    let kind = prop_oneof![
        10 => (0..USERS.len(), text(), prop::bool::weighted(0.05), prop::bool::weighted(0.05))
            .prop_map(|(user, text, shadow, backlog)| Kind::Chat { user, text, shadow, backlog }),
        2 => (0..USERS.len(), text()).prop_map(|(user, text)| Kind::Pm { user, text }),
        1 => (0u8..4, any::<bool>()).prop_map(|(item, fresh)| Kind::Media { item, fresh }),
        1 => "\\PC{0,40}".prop_map(Kind::Garbage),
    ];
    (gap, 0..CHANNELS.len(), kind).prop_map(|(gap_ms, channel, kind)| Ev { gap_ms, channel, kind })
}

fn body(ev: &Ev, now: u64, n: usize) -> Vec<u8> {
    let channel = CHANNELS[ev.channel];
    let id = format!("{channel}-{n}");
    let v = match &ev.kind {
        Kind::Chat { user, text, shadow, backlog } => serde_json::json!({
            "event_name": "chatMsg", "channel": channel, "correlation_id": id,
            "payload": {"username": USERS[*user], "msg": text, "meta": {"shadow": shadow},
                        "time": if *backlog { T0 - 1 } else { now }}
        }),
        Kind::Pm { user, text } => serde_json::json!({
            "event_name": "pm", "channel": channel, "correlation_id": id,
            "payload": {"username": USERS[*user], "msg": text, "meta": {}, "time": now, "to": "KrytenBot"}
        }),
        Kind::Media { item, fresh } => serde_json::json!({
            "event_name": "changeMedia", "channel": channel, "correlation_id": id,
            "payload": {"id": item.to_string(), "title": format!("Video {item}"), "currentTime": if *fresh { -3.0 } else { 12.0 }}
        }),
        Kind::Garbage(s) => return s.clone().into_bytes(),
    };
    v.to_string().into_bytes()
}

fn run(cfg: &Config, events: &[Ev], seed: u64) -> Vec<Traced> {
    let mut sim = Sim::new(cfg.clone(), seed, Millis(T0), Box::new(Adversary), None);
    let mut now = T0;
    for (n, ev) in events.iter().enumerate() {
        now += ev.gap_ms;
        sim.feed(Millis(now), Input::Event { subject: None, body: body(ev, now, n) });
    }
    // A fixed end (not "when the last answer arrives", which depends on every channel).
    sim.advance_to(Millis(now + 900_000));
    sim.take_trace()
}

fn channel_of(t: &TraceItem) -> Option<String> {
    match t {
        TraceItem::Effect(Effect::CallLlm(c)) => Some(c.channel.clone()),
        TraceItem::Effect(Effect::Publish(c)) => Some(c.channel.clone()),
        TraceItem::Effect(Effect::Decision(d)) => Some(d.channel.clone()),
        TraceItem::Effect(Effect::Moderation(m)) => Some(m.channel.clone()),
        TraceItem::Effect(Effect::CancelLlm(id)) | TraceItem::Answered { id, .. } => {
            Some(CHANNELS[(id.0 >> 32) as usize].to_string())
        }
        TraceItem::Effect(Effect::ShutdownComplete | Effect::Lease(_) | Effect::Heartbeat) => None,
    }
}

/// Checks that no window of `window` ms holds more than `max` of `times`.
fn window_ok(times: &[u64], max: u32, window: u64) -> Result<(), String> {
    for (i, &t) in times.iter().enumerate() {
        let inside = times[..=i].iter().filter(|&&s| s + window > t).count();
        if inside > max as usize {
            return Err(format!("{inside} sends in the {window} ms before {t} (max {max})"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_message_is_too_long_empty_or_starts_with_a_slash(
        l in limits(1usize..4), events in prop::collection::vec(event(), 1..150), seed in any::<u64>()
    ) {
        let cfg = config(&l);
        for t in run(&cfg, &events, seed) {
            if let TraceItem::Effect(Effect::Publish(cmd)) = &t.what {
                let text = cmd.kind.text();
                prop_assert!(!text.is_empty());
                prop_assert!(!text.starts_with('/'), "{text:?}");
                prop_assert!(text.encode_utf16().count() <= l.max_length, "{} > {}: {text:?}", text.encode_utf16().count(), l.max_length);
                prop_assert!(text.trim() == text);
            }
        }
    }

    #[test]
    fn the_bot_never_answers_itself_ignored_users_or_the_server(
        l in limits(Just(1)), events in prop::collection::vec(event(), 1..150), seed in any::<u64>()
    ) {
        let cfg = config(&l);
        for t in run(&cfg, &events, seed) {
            if let TraceItem::Effect(Effect::Decision(d)) = &t.what {
                if d.outcome == Outcome::Fired || d.outcome == Outcome::Sent {
                    let user = d.user.clone().unwrap_or_default().to_lowercase();
                    prop_assert!(!["krytenbot", "spambot", "[server]"].contains(&user.as_str()), "{d:?}");
                }
            }
        }
    }

    #[test]
    fn per_user_and_per_channel_limits_hold_in_every_window(
        l in limits(Just(1)), events in prop::collection::vec(event(), 1..200), seed in any::<u64>()
    ) {
        let cfg = config(&l);
        let mut per_channel: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut per_user: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
        let mut last_send: BTreeMap<String, u64> = BTreeMap::new();
        for t in run(&cfg, &events, seed) {
            if let TraceItem::Effect(Effect::Decision(d)) = &t.what {
                if d.outcome != Outcome::Sent { continue; }
                per_channel.entry(d.channel.clone()).or_default().push(t.at.0);
                if let Some(u) = &d.user {
                    per_user.entry((d.channel.clone(), u.to_lowercase())).or_default().push(t.at.0);
                }
                if let Some(prev) = last_send.insert(d.channel.clone(), t.at.0) {
                    prop_assert!(t.at.0 >= prev + l.send_spacing, "send spacing broken in {}", d.channel);
                }
            }
        }
        for times in per_channel.values() {
            window_ok(times, l.per_channel.0, l.per_channel.1).map_err(TestCaseError::fail)?;
        }
        for times in per_user.values() {
            window_ok(times, l.per_user.0, l.per_user.1).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn a_budget_is_never_exceeded_by_more_than_one_reply(
        l in limits(Just(1)), events in prop::collection::vec(event(), 1..200), seed in any::<u64>()
    ) {
        prop_assume!(l.budget > 0);
        let cfg = config(&l);
        let mut prompts: BTreeMap<chatbot_core::RequestId, u64> = BTreeMap::new();
        // (channel, minute) → tokens, as the engine accounts them.
        let mut spent: BTreeMap<(u64, u64), u64> = BTreeMap::new();
        let mut largest = 0u64;
        for t in run(&cfg, &events, seed) {
            match &t.what {
                TraceItem::Effect(Effect::CallLlm(c)) => {
                    prompts.insert(c.id, chatbot_core::budget::estimate_prompt(&c.messages));
                }
                TraceItem::Answered { id, result: Ok(reply), .. } => {
                    let tokens = prompts[id] + chatbot_core::budget::estimate(&reply.text);
                    largest = largest.max(tokens);
                    *spent.entry((id.0 >> 32, t.at.0 / 60_000)).or_default() += tokens;
                }
                _ => {}
            }
        }
        for &(ch, minute) in spent.keys() {
            let hour: u64 = spent.range((ch, minute.saturating_sub(59))..=(ch, minute)).map(|(_, v)| v).sum();
            prop_assert!(hour <= l.budget + largest, "channel {ch}: {hour} tokens in the hour to minute {minute}, budget {} (+ one reply of at most {largest})", l.budget);
        }
    }

    #[test]
    fn a_channel_behaves_the_same_whatever_happens_in_other_channels(
        l in limits(1usize..3), events in prop::collection::vec(event(), 1..150), seed in any::<u64>()
    ) {
        let cfg = config(&l);
        // Keep every event's timing, but turn other channels' events into gaps.
        let only_alpha: Vec<Ev> = events.iter().map(|e| if e.channel == 0 { e.clone() } else {
            Ev { gap_ms: e.gap_ms, channel: 1, kind: Kind::Garbage(String::new()) }
        }).collect();
        let alpha = |trace: Vec<Traced>| -> Vec<Traced> {
            trace.into_iter().filter(|t| channel_of(&t.what).as_deref() == Some("alpha")).collect()
        };
        let full = alpha(run(&cfg, &events, seed));
        let alone = alpha(run(&cfg, &only_alpha, seed));
        prop_assert_eq!(full, alone);
    }

    #[test]
    fn same_seed_and_inputs_give_identical_effects(
        l in limits(1usize..3), events in prop::collection::vec(event(), 1..120), seed in any::<u64>()
    ) {
        let cfg = config(&l);
        prop_assert_eq!(run(&cfg, &events, seed), run(&cfg, &events, seed));
    }

    #[test]
    fn arbitrary_payloads_never_panic_and_are_counted(
        name in prop_oneof![Just("chatMsg".to_string()), Just("pm".to_string()), Just("changeMedia".to_string()),
            Just("addUser".to_string()), Just("userLeave".to_string()), Just("userlist".to_string()), "[a-zA-Z]{1,12}"],
        payload in arbitrary_json(),
        channel in prop_oneof![Just("alpha".to_string()), Just("ALPHA".to_string()), "[a-z]{0,5}"],
    ) {
        let cfg = config(&Limits { per_user: (3, 60_000), per_channel: (10, 60_000), global_cooldown: 0, send_spacing: 0,
            max_in_flight: 5, max_length: 320, max_parts: 1, mention_p: 1.0, contextual: true, media: true, budget: 0 });
        let mut sim = Sim::new(cfg, 1, Millis(T0), Box::new(Adversary), None);
        let body = serde_json::json!({"event_name": name, "channel": channel, "payload": payload}).to_string();
        sim.feed(Millis(T0 + 1), Input::Event { subject: None, body: body.into_bytes() });
        sim.finish(Duration::from_secs(120));
        // The engine is still alive and answering.
        let probe = serde_json::json!({"event_name": "chatMsg", "channel": "beta", "correlation_id": "probe",
            "payload": {"username": "zed", "msg": "kryten?", "time": T0 + 200_000}}).to_string();
        sim.feed(Millis(T0 + 200_000), Input::Event { subject: None, body: probe.into_bytes() });
        let fired = sim.trace().iter().any(|t| matches!(&t.what, TraceItem::Effect(Effect::Decision(d))
            if d.correlation_id.as_deref() == Some("probe") && d.outcome == Outcome::Fired && d.trigger == Some(Trigger::Mention)));
        prop_assert!(fired);
    }
}

fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
        "\\PC{0,12}".prop_map(serde_json::Value::from),
        prop_oneof![Just("username"), Just("msg"), Just("time"), Just("title"), Just("name")]
            .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("username".to_string()),
                    Just("msg".to_string()),
                    Just("time".to_string()),
                    Just("meta".to_string()),
                    Just("title".to_string()),
                    Just("name".to_string()),
                    Just("to".to_string()),
                    "[a-z]{1,4}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}
