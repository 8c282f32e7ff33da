//! Several instances sharing channels through JetStream leases (`ha:`), against a real
//! nats-server with JetStream (`-js`), checked at the NATS level: every mention is
//! answered by exactly one instance, before and after instances stop or crash.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chatbot_testkit::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_llm-chatbot");
const TTL_S: u64 = 3;

fn ha_bot(nats: &Nats, llm: &FakeLlm, channels: &[&str], instance: &str, defaults: &str) -> Bot {
    let extra = format!("ha: {{ enabled: true, lease_ttl: {TTL_S}s, instance: {instance} }}\n");
    let mut text = config(&nats.url(), &llm.base_url(), free_port(), channels, &extra);
    let debug = [("RUST_LOG", "info,chatbot_runtime=debug")];
    if !defaults.is_empty() {
        text = text.replace("defaults:\n  limits: { global_cooldown: 0s, send_spacing: 0s, per_user: { max: 100, window: 1m }, per_channel: { max: 100, window: 1m } }\n", defaults);
    }
    Bot::start(BIN, &text, &debug)
}

/// The `ha` section of a bot's /health.
async fn ha_health(bot: &Bot) -> Value {
    let (_, body) = http_get(bot.http_port, "/health").await;
    serde_json::from_str::<Value>(&body).expect("health is JSON")["ha"].clone()
}

/// Channels each bot holds, by instance id (from each bot's own /health).
async fn holdings(bots: &[(&str, &Bot)]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (id, bot) in bots {
        let ha = ha_health(bot).await;
        let held: BTreeSet<String> = ha["owners"]
            .as_object()
            .map(|o| o.iter().filter(|(_, v)| v.as_str() == Some(id)).map(|(k, _)| k.clone()).collect())
            .unwrap_or_default();
        out.insert(id.to_string(), held);
    }
    out
}

/// Waits (bounded) until every channel is held by exactly one of `bots`, and none holds
/// more than `ceil(channels / bots) + 1`; the holdings.
async fn settled(bots: &[(&str, &Bot)], channels: usize, within: Duration) -> BTreeMap<String, BTreeSet<String>> {
    let deadline = Instant::now() + within;
    let cap = channels.div_ceil(bots.len()) + 1;
    loop {
        let h = holdings(bots).await;
        let all: Vec<&String> = h.values().flatten().collect();
        let distinct: BTreeSet<&String> = all.iter().copied().collect();
        if all.len() == channels && distinct.len() == channels && h.values().all(|held| held.len() <= cap) {
            return h;
        }
        assert!(Instant::now() < deadline, "leases did not settle within {within:?}: {h:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends one mention per channel (token `tag-channel`) and returns how many `say`
/// commands carried each token within `wait`.
async fn mention_all(
    client: &async_nats::Client,
    commands: &mut Commands,
    channels: &[String],
    tag: &str,
    wait: Duration,
) -> BTreeMap<String, usize> {
    for ch in channels {
        let token = format!("{tag}-{ch}");
        publish_event(client, ch, "chatMsg", chat(ch, &format!("u{tag}"), &format!("hey KrytenBot {token}"), &token))
            .await;
    }
    let mut seen: BTreeMap<String, usize> = channels.iter().map(|c| (format!("{tag}-{c}"), 0)).collect();
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        let Some(cmd) = commands.next(Duration::from_millis(100)).await else { continue };
        let text = cmd["args"]["message"].as_str().unwrap_or("").to_owned();
        for (token, n) in seen.iter_mut() {
            if text.contains(token.as_str()) {
                *n += 1;
            }
        }
    }
    seen
}

fn assert_one_voice(answers: &BTreeMap<String, usize>) {
    let wrong: Vec<_> = answers.iter().filter(|(_, n)| **n != 1).collect();
    assert!(wrong.is_empty(), "every mention must be answered exactly once; not so for {wrong:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_over_twenty_channels_speak_with_one_voice_through_stops_and_crashes() {
    let nats = Nats::start_jetstream();
    let llm = FakeLlm::start().await;
    let names: Vec<String> = (0..20).map(|i| format!("room{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let a = ha_bot(&nats, &llm, &refs, "a", "");
    let mut b = ha_bot(&nats, &llm, &refs, "b", "");
    let mut c = ha_bot(&nats, &llm, &refs, "c", "");
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;

    // Spread: ceil(20 / 3) + 1 = 8 at most each.
    let h = settled(&[("a", &a), ("b", &b), ("c", &c)], 20, Duration::from_secs(20)).await;
    for (id, held) in &h {
        assert!((1..=8).contains(&held.len()), "instance {id} holds {} channels: {h:?}", held.len());
    }
    assert_one_voice(&mention_all(&client, &mut commands, &names, "m1", Duration::from_secs(3)).await);

    // SIGTERM: b releases its leases at once; the others take them well under a second.
    let b_channels = h["b"].clone();
    let t0 = Instant::now();
    b.signal("TERM");
    let mut handover = None;
    while t0.elapsed() < Duration::from_secs(5) {
        let now = holdings(&[("a", &a), ("c", &c)]).await;
        if b_channels.iter().all(|ch| now.values().any(|held| held.contains(ch))) {
            handover = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let handover = handover.expect("b's channels were taken over");
    if handover >= Duration::from_secs(1) {
        for (id, bot) in [("a", &a), ("c", &c)] {
            let logs = bot.logs();
            let lines: Vec<&str> =
                logs.lines().filter(|l| l.contains("lease")).map(|l| &l[..l.len().min(260)]).collect::<Vec<_>>();
            eprintln!("==== {id}\n{}", lines[lines.len().saturating_sub(60)..].join("\n"));
        }
        eprintln!("b channels: {b_channels:?} t0 {:?}", t0);
    }
    eprintln!("graceful handover of {} channels: {handover:?}", b_channels.len());
    assert!(handover < Duration::from_secs(1), "graceful handover took {handover:?}");
    assert_eq!(b.wait_exit(Duration::from_secs(10)), Some(0));
    assert_one_voice(&mention_all(&client, &mut commands, &names, "m2", Duration::from_secs(3)).await);

    // SIGKILL: c's leases expire; a answers its channels within lease_ttl + 2 s.
    let h = settled(&[("a", &a), ("c", &c)], 20, Duration::from_secs(10)).await;
    let c_channels: Vec<String> = h["c"].iter().cloned().collect();
    assert!(!c_channels.is_empty());
    let t0 = Instant::now();
    c.signal("KILL");
    let _ = c.wait_exit(Duration::from_secs(5));
    let mut first_answer: BTreeMap<String, Duration> = BTreeMap::new();
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    let mut round = 0;
    while first_answer.len() < c_channels.len() && t0.elapsed() < Duration::from_secs(TTL_S + 6) {
        round += 1;
        let waiting: Vec<String> = c_channels.iter().filter(|ch| !first_answer.contains_key(*ch)).cloned().collect();
        let got = mention_all(&client, &mut commands, &waiting, &format!("k{round}"), Duration::from_millis(250)).await;
        for (token, n) in got {
            let ch = token.split_once('-').map(|(_, ch)| ch.to_owned()).unwrap_or_default();
            if n > 0 {
                first_answer.entry(ch).or_insert(t0.elapsed());
            }
            answers.insert(token, n);
        }
    }
    let slowest = first_answer.values().max().copied().unwrap_or_default();
    eprintln!("crash takeover of {} channels: slowest first answer {slowest:?}", c_channels.len());
    assert_eq!(first_answer.len(), c_channels.len(), "unanswered after the crash: {first_answer:?}");
    assert!(slowest <= Duration::from_secs(TTL_S + 2), "takeover took {slowest:?}");
    assert!(answers.values().all(|n| *n <= 1), "a mention was answered twice: {answers:?}");
    assert_one_voice(&mention_all(&client, &mut commands, &names, "m3", Duration::from_secs(3)).await);
    let ha = ha_health(&a).await;
    assert_eq!(ha["owned"], 20);
    assert!(ha["takeovers"].as_u64().unwrap() >= c_channels.len() as u64, "{ha}");
    let (_, metrics) = http_get(a.http_port, "/metrics").await;
    assert!(metrics.contains("llm_chatbot_ha_owned_channels 20"), "{metrics}");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mention_burst_across_a_crash_takeover_never_exceeds_the_channel_limit() {
    let nats = Nats::start_jetstream();
    let llm = FakeLlm::start().await;
    let limits = "defaults:\n  limits: { global_cooldown: 0s, send_spacing: 0s, per_user: { max: 100, window: 1m }, per_channel: { max: 5, window: 1m } }\n";
    let a = ha_bot(&nats, &llm, &["burst"], "a", limits);
    let b = ha_bot(&nats, &llm, &["burst"], "b", limits);
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;
    let h = settled(&[("a", &a), ("b", &b)], 1, Duration::from_secs(10)).await;
    let owner = if h["a"].is_empty() { &b } else { &a };
    // The standby has been reading the channel for a while (one that only just started
    // would rightly assume the worst about what it did not see).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // CyTube echoes what the bot says into the channel; so does this harness.
    let echo = |text: &str, i: usize| chat("burst", "KrytenBot", text, &format!("echo-{i}"));
    let mut said = 0;
    for i in 0..4 {
        publish_event(
            &client,
            "burst",
            "chatMsg",
            chat("burst", &format!("user{i}"), &format!("KrytenBot q{i}"), &format!("q{i}")),
        )
        .await;
        let Some(cmd) = commands.next(Duration::from_secs(5)).await else {
            panic!("the owner did not answer; logs:\n{}\n=====\n{}", a.logs(), b.logs());
        };
        said += 1;
        publish_event(&client, "burst", "chatMsg", echo(cmd["args"]["message"].as_str().unwrap(), i)).await;
    }
    // Crash right after the burst: the lease bucket may hold only part of it.
    owner.signal("KILL");
    let t0 = Instant::now();
    let mut i = 4;
    while t0.elapsed() < Duration::from_secs(TTL_S + 4) {
        publish_event(
            &client,
            "burst",
            "chatMsg",
            chat("burst", &format!("user{i}"), &format!("KrytenBot r{i}"), &format!("r{i}")),
        )
        .await;
        if let Some(cmd) = commands.next(Duration::from_millis(200)).await {
            said += 1;
            publish_event(&client, "burst", "chatMsg", echo(cmd["args"]["message"].as_str().unwrap(), i)).await;
        }
        i += 1;
    }
    assert_eq!(said, 5, "per_channel max 5 per minute must hold across the takeover (and the new owner must speak)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_recover_after_a_nats_restart_without_double_replies() {
    let mut nats = Nats::start_jetstream();
    let llm = FakeLlm::start().await;
    let names: Vec<String> = (0..4).map(|i| format!("r{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let a = ha_bot(&nats, &llm, &refs, "a", "");
    let b = ha_bot(&nats, &llm, &refs, "b", "");
    settled(&[("a", &a), ("b", &b)], 4, Duration::from_secs(10)).await;

    // Down for longer than the TTL: both instances stop trusting their leases.
    nats.stop();
    tokio::time::sleep(Duration::from_secs(TTL_S + 1)).await;
    nats.restart();
    settled(&[("a", &a), ("b", &b)], 4, Duration::from_secs(20)).await;
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;
    assert_one_voice(&mention_all(&client, &mut commands, &names, "after", Duration::from_secs(3)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_without_jetstream_exits_with_a_clear_error() {
    let nats = Nats::start();
    let llm = FakeLlm::start().await;
    let extra = "ha: { enabled: true }\n";
    let mut bot = Bot::spawn(BIN, &config(&nats.url(), &llm.base_url(), free_port(), &["lounge"], extra), &[], &[]);
    assert_eq!(bot.wait_exit(Duration::from_secs(15)), Some(1));
    let logs = bot.logs();
    assert!(logs.contains("ha: cannot open the lease bucket") && logs.contains("-js"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_whose_keys_outlive_less_than_the_lease_is_refused() {
    let nats = Nats::start_jetstream();
    let llm = FakeLlm::start().await;
    let first = ha_bot(&nats, &llm, &["lounge"], "a", "");
    drop(first);
    // Same bucket, longer TTL: its keys would expire while their holder still trusts them.
    let extra = "ha: { enabled: true, lease_ttl: 10s }\n";
    let mut bot = Bot::spawn(BIN, &config(&nats.url(), &llm.base_url(), free_port(), &["lounge"], extra), &[], &[]);
    assert_eq!(bot.wait_exit(Duration::from_secs(15)), Some(1));
    let logs = bot.logs();
    assert!(logs.contains("shorter than ha.lease_ttl"), "{logs}");
}
