//! Several instances sharing channels through JetStream leases (`ha:`), against a real
//! nats-server with JetStream (`-js`) and a real 3-node cluster, checked at the NATS
//! level: every mention is answered by exactly one instance, before and after instances
//! stop or crash and cluster nodes die.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chatbot_testkit::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_llm-chatbot");
const TTL_S: u64 = 3;

fn ha_bot(nats: &Nats, llm: &FakeLlm, channels: &[&str], instance: &str, defaults: &str) -> Bot {
    ha_bot_at(&nats.url(), llm, channels, instance, defaults)
}

/// A bot with `ha` on, configured with the one NATS server `url` (on a cluster it learns
/// the other nodes from the server).
fn ha_bot_at(url: &str, llm: &FakeLlm, channels: &[&str], instance: &str, defaults: &str) -> Bot {
    let extra = format!("ha: {{ enabled: true, lease_ttl: {TTL_S}s, instance: {instance} }}\n");
    let mut text = config(url, &llm.base_url(), free_port(), channels, &extra);
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
    let held = settled(&[("a", &a), ("b", &b)], 4, Duration::from_secs(20)).await;
    // Both watches are back: each instance knows who holds every channel, from the
    // owners' renewals (one a second).
    let expected: BTreeMap<String, String> =
        held.iter().flat_map(|(id, chs)| chs.iter().map(move |c| (c.clone(), id.clone()))).collect();
    let deadline = Instant::now() + Duration::from_secs(TTL_S);
    for (id, bot) in [("a", &a), ("b", &b)] {
        loop {
            let owners = ha_health(bot).await["owners"].clone();
            let view: BTreeMap<String, String> = owners
                .as_object()
                .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
                .unwrap_or_default();
            if view == expected {
                break;
            }
            assert!(Instant::now() < deadline, "{id} sees {view:?}, not {expected:?}\n{}", lease_log(bot, 40));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
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

const BUCKET: &str = "llm_chatbot_leases";

/// The server leading `stream` now (none during an election).
async fn stream_leader(client: &async_nats::Client, stream: &str) -> Option<String> {
    let js = async_nats::jetstream::new(client.clone());
    let mut s = tokio::time::timeout(Duration::from_secs(1), js.get_stream(stream)).await.ok()?.ok()?;
    let info = tokio::time::timeout(Duration::from_secs(1), s.info()).await.ok()?.ok()?;
    info.cluster.as_ref().and_then(|c| c.leader.clone())
}

/// Waits (bounded) until both buckets' streams have a leader and `replicas` current
/// replicas (the leader included).
async fn buckets_replicated(client: &async_nats::Client, replicas: usize, within: Duration) {
    let js = async_nats::jetstream::new(client.clone());
    let deadline = Instant::now() + within;
    for stream in [format!("KV_{BUCKET}"), format!("KV_{BUCKET}_state")] {
        loop {
            let current = match js.get_stream(&stream).await {
                Ok(mut s) => match s.info().await {
                    Ok(info) => info.cluster.as_ref().map_or(0, |c| {
                        usize::from(c.leader.is_some()) + c.replicas.iter().filter(|r| r.current && !r.offline).count()
                    }),
                    Err(_) => 0,
                },
                Err(_) => 0,
            };
            if current >= replicas {
                break;
            }
            assert!(Instant::now() < deadline, "{stream} did not get {replicas} current replicas within {within:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A bot's /health.
async fn health(bot: &Bot) -> Value {
    let (_, body) = http_get(bot.http_port, "/health").await;
    serde_json::from_str(&body).expect("health is JSON")
}

/// Failed lease operations a bot counted (all kinds).
async fn lease_failures(bot: &Bot) -> u64 {
    let (_, metrics) = http_get(bot.http_port, "/metrics").await;
    metrics
        .lines()
        .filter(|l| l.starts_with("llm_chatbot_ha_lease_failures_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// What a stretch of probing saw.
#[derive(Debug, Default)]
struct Probe {
    /// Per channel: when (after the start) the first answered mention after the last
    /// unanswered one was sent; missing if the channel never answered again.
    recovered: BTreeMap<String, Duration>,
    /// Per channel: the latest answered mention sent (after the start).
    last_answer: BTreeMap<String, Duration>,
    /// Mentions answered more than once.
    doubles: Vec<String>,
    /// Mentions sent, and answered.
    sent: usize,
    answered: usize,
    /// Every distinct degraded reason the bots' /health gave meanwhile.
    reasons: BTreeSet<String>,
    /// Per round: when it was sent and how many channels answered it.
    timeline: Vec<(u64, usize)>,
}

impl Probe {
    fn slowest(&self) -> Duration {
        self.recovered.values().max().copied().unwrap_or_default()
    }
}

/// Mentions every channel every 250 ms from `t0` on, until each channel has answered
/// `calm` rounds in a row (after `at_least`), or `within` passes; samples the bots'
/// /health every round. `tag` (a letter) keeps each probe's events distinct: a bot
/// rightly ignores an event id it has seen.
async fn probe(
    tag: char,
    client: &async_nats::Client,
    commands: &mut Commands,
    channels: &[String],
    bots: &[&Bot],
    t0: Instant,
    (at_least, calm, within): (Duration, usize, Duration),
) -> Probe {
    // Per channel, per round: (sent at, token).
    let mut rounds: Vec<(Duration, Vec<String>)> = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut reasons = BTreeSet::new();
    let answered = |seen: &BTreeMap<String, usize>, token: &str| seen.get(token).copied().unwrap_or(0) > 0;
    let mut n = 0;
    loop {
        n += 1;
        let at = t0.elapsed();
        let tokens: Vec<String> = channels.iter().map(|ch| format!("p{tag}{n}x-{ch}")).collect();
        for (ch, token) in channels.iter().zip(&tokens) {
            publish_event(client, ch, "chatMsg", chat(ch, &format!("u{n}"), &format!("hey KrytenBot {token}"), token))
                .await;
        }
        rounds.push((at, tokens));
        let until = Instant::now() + Duration::from_millis(250);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            let Some(cmd) = commands.next(left).await else { break };
            let text = cmd["args"]["message"].as_str().unwrap_or("");
            if let Some(token) = text.split_whitespace().find(|w| w.starts_with('p') && w.contains("x-")) {
                *seen.entry(token.trim_matches(|c: char| !c.is_alphanumeric()).to_owned()).or_default() += 1;
            }
        }
        for bot in bots {
            let h = health(bot).await;
            for r in h["reasons"].as_array().into_iter().flatten() {
                // "… for 3.2 s (…)": the figures change every round; keep the words.
                let words: String = r
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take_while(|c| *c != '(')
                    .filter(|c| !c.is_ascii_digit() && *c != '.')
                    .collect();
                reasons.insert(words);
            }
        }
        // Settled: the last `calm` rounds before this one all answered everywhere.
        let done = rounds.len() > calm
            && t0.elapsed() >= at_least
            && rounds[rounds.len() - 1 - calm..rounds.len() - 1]
                .iter()
                .all(|(_, ts)| ts.iter().all(|t| answered(&seen, t)));
        if done || t0.elapsed() >= within {
            break;
        }
    }
    // Late answers.
    while let Some(cmd) = commands.next(Duration::from_millis(500)).await {
        let text = cmd["args"]["message"].as_str().unwrap_or("");
        if let Some(token) = text.split_whitespace().find(|w| w.starts_with('p') && w.contains("x-")) {
            *seen.entry(token.trim_matches(|c: char| !c.is_alphanumeric()).to_owned()).or_default() += 1;
        }
    }
    let mut out = Probe { reasons, ..Probe::default() };
    out.timeline = rounds
        .iter()
        .map(|(at, ts)| (at.as_millis() as u64, ts.iter().filter(|t| answered(&seen, t)).count()))
        .collect();
    for (i, ch) in channels.iter().enumerate() {
        let mut last_miss = None;
        for (r, (at, tokens)) in rounds.iter().enumerate() {
            out.sent += 1;
            if answered(&seen, &tokens[i]) {
                out.answered += 1;
                out.last_answer.insert(ch.clone(), *at);
            } else {
                last_miss = Some(r);
            }
        }
        let first_after = last_miss.map_or(Some(0), |r| (r + 1 < rounds.len()).then_some(r + 1));
        if let Some(r) = first_after {
            out.recovered.insert(ch.clone(), rounds[r].0);
        }
    }
    out.doubles = seen.iter().filter(|(_, n)| **n > 1).map(|(t, n)| format!("{t}×{n}")).collect();
    out
}

/// The node a bot is connected to, from its /health.
async fn server_of(bot: &Bot) -> Option<String> {
    health(bot).await["nats"]["server"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_loses_a_node_and_every_channel_answers_again_with_one_voice() {
    let mut cluster = NatsCluster::start(3).await;
    let llm = FakeLlm::start().await;
    let names: Vec<String> = (0..6).map(|i| format!("hall{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    // Each instance is given one node; it learns the others from the cluster.
    // The probes mention each channel four times a second: no limit may get in the way.
    let limits = "defaults:\n  limits: { global_cooldown: 0s, send_spacing: 0s, per_user: { max: 100, window: 1m }, per_channel: { max: 10000, window: 1m } }\n";
    let bots: Vec<Bot> = (0..3).map(|i| ha_bot_at(&cluster.url(i), &llm, &refs, &format!("i{i}"), limits)).collect();
    let ids = [("i0", &bots[0]), ("i1", &bots[1]), ("i2", &bots[2])];
    let all: Vec<&Bot> = bots.iter().collect();
    let client = cluster.client().await;
    let mut commands = Commands::subscribe(&client).await;
    settled(&ids, 6, Duration::from_secs(20)).await;
    assert_eq!(health(&bots[0]).await["ha"]["replicas"], 3, "three nodes: three replicas by default");
    buckets_replicated(&client, 3, Duration::from_secs(10)).await;
    assert_one_voice(&mention_all(&client, &mut commands, &names, "c1", Duration::from_secs(2)).await);

    // 1. The node leading the lease bucket's stream dies.
    let leader = stream_leader(&client, &format!("KV_{BUCKET}")).await.expect("the bucket has a leader");
    let k = cluster.index_of(&leader).unwrap();
    let failures_before: u64 = futures_util::future::join_all(all.iter().map(|b| lease_failures(b))).await.iter().sum();
    let (seer, mut seen) = observer(&cluster, &[k]).await;
    let t0 = Instant::now();
    cluster.kill(k);
    let p =
        probe('a', &seer, &mut seen, &names, &all, t0, (Duration::from_secs(TTL_S), 8, Duration::from_secs(30))).await;
    let failures: u64 = futures_util::future::join_all(all.iter().map(|b| lease_failures(b))).await.iter().sum::<u64>()
        - failures_before;
    let new_leader = stream_leader(&client, &format!("KV_{BUCKET}")).await;
    eprintln!(
        "leader {leader} killed: every channel answers again {:?} after (per channel {:?}); {}/{} mentions answered; \
         {failures} failed lease operations over 3 instances; new leader {new_leader:?}; health said {:?}",
        p.slowest(),
        p.recovered,
        p.answered,
        p.sent,
        p.reasons
    );
    assert_no_doubles(&p, &bots);
    assert_all_recovered(&p, &names, &bots);
    assert!(p.slowest() <= Duration::from_secs(TTL_S + 9 + 3), "recovery took {:?}", p.slowest());
    assert!(
        p.reasons.iter().any(|r| r.contains("cannot reach the lease bucket")),
        "/health said degraded while the bucket had no leader: {:?}",
        p.reasons
    );
    // Backoff: no 200 ms spin (that was about 29 failures a second per instance).
    let outage = p.slowest().as_secs_f64().max(1.0);
    assert!((failures as f64) / outage / 3.0 < 8.0, "{failures} failures in {outage:.1} s over 3 instances");
    // The instance that was on the dead node is on another one now.
    for (i, bot) in bots.iter().enumerate() {
        let on = server_of(bot).await;
        assert!(on.is_some() && on.as_deref() != Some(leader.as_str()), "instance i{i} is on {on:?}");
    }
    all_ok_after_elections(&bots).await;
    // The node comes back: it catches up, and still one voice.
    cluster.restart(k);
    back_to_one_voice(&cluster, &client, &mut commands, &ids, &names, "c2").await;

    // 2. The node an instance is connected to dies (one leading neither bucket, if any).
    let leaders = [
        stream_leader(&client, &format!("KV_{BUCKET}")).await,
        stream_leader(&client, &format!("KV_{BUCKET}_state")).await,
    ];
    let mut homes = Vec::new();
    for bot in &bots {
        homes.push(server_of(bot).await.expect("every instance is connected"));
    }
    let leads = |node: &str| leaders.iter().any(|l| l.as_deref() == Some(node));
    let victim = homes.iter().find(|h| !leads(h)).unwrap_or(&homes[0]).clone();
    let moved: Vec<usize> = (0..bots.len()).filter(|&i| homes[i] == victim).collect();
    let mut reconnects = Vec::new();
    for &i in &moved {
        reconnects.push(health(&bots[i]).await["nats"]["reconnects"].as_u64().unwrap_or(0));
    }
    let v = cluster.index_of(&victim).unwrap();
    let (seer, mut seen) = observer(&cluster, &[v]).await;
    let t0 = Instant::now();
    cluster.kill(v);
    let p =
        probe('b', &seer, &mut seen, &names, &all, t0, (Duration::from_secs(TTL_S), 8, Duration::from_secs(30))).await;
    eprintln!(
        "node {victim} killed (home of instances {moved:?}, leading a bucket: {}): every channel answers again {:?} after; \
         {}/{} mentions answered; health said {:?}",
        leads(&victim),
        p.slowest(),
        p.answered,
        p.sent,
        p.reasons
    );
    assert_no_doubles(&p, &bots);
    assert_all_recovered(&p, &names, &bots);
    assert!(p.slowest() <= Duration::from_secs(TTL_S + 9 + 3), "recovery took {:?}", p.slowest());
    for (&i, before) in moved.iter().zip(reconnects) {
        let h = health(&bots[i]).await;
        let on = h["nats"]["server"].as_str().unwrap_or("");
        assert!(!on.is_empty() && on != victim, "instance i{i} is on {on:?}");
        assert!(h["nats"]["reconnects"].as_u64().unwrap_or(0) > before, "instance i{i} counted its reconnect: {h}");
    }
    all_ok_after_elections(&bots).await;
    cluster.restart(v);
    back_to_one_voice(&cluster, &client, &mut commands, &ids, &names, "c3").await;

    // 3. Two of three nodes die: JetStream has no quorum, no lease can be renewed, and
    // every owner falls silent within the TTL (ttl - ttl/5 after its last renewal).
    let survivor = cluster.index_of(&stream_leader(&client, &format!("KV_{BUCKET}")).await.unwrap()).unwrap();
    let (d1, d2) = match survivor {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    let (seer, mut seen) = observer(&cluster, &[d1, d2]).await;
    let t0 = Instant::now();
    cluster.kill(d1);
    cluster.kill(d2);
    let quiet = Duration::from_secs(TTL_S * 3);
    let p = probe('c', &seer, &mut seen, &names, &all, t0, (quiet, usize::MAX, quiet)).await;
    let last = p.last_answer.values().max().copied().unwrap_or_default();
    eprintln!(
        "no quorum (only {} up): the last mention answered was sent {last:?} after; {}/{} answered in {quiet:?}; health said {:?}",
        cluster.name(survivor),
        p.answered,
        p.sent,
        p.reasons
    );
    assert_no_doubles(&p, &bots);
    assert!(last < Duration::from_secs(TTL_S), "an owner spoke {last:?} after quorum was lost (ttl {TTL_S} s)");
    for bot in &bots {
        let h = health(bot).await;
        assert_eq!(h["status"], "degraded", "{h}");
        let reasons = h["reasons"].to_string();
        assert!(reasons.contains("cannot reach the lease bucket"), "{reasons}");
    }
    // One node back: quorum again, and every channel answers again.
    let t0 = Instant::now();
    cluster.restart(d1);
    let p = probe('d', &seer, &mut seen, &names, &all, t0, (Duration::from_secs(1), 8, Duration::from_secs(40))).await;
    eprintln!(
        "quorum back ({} restarted): every channel answers again {:?} after the restart; {}/{} answered",
        cluster.name(d1),
        p.slowest(),
        p.answered,
        p.sent
    );
    assert_no_doubles(&p, &bots);
    assert_all_recovered(&p, &names, &bots);
    cluster.restart(d2);
    back_to_one_voice(&cluster, &client, &mut commands, &ids, &names, "c4").await;
}

/// After a node restarted: JetStream is whole again, every channel is held, and a
/// mention of each is answered exactly once.
async fn back_to_one_voice(
    cluster: &NatsCluster,
    client: &async_nats::Client,
    commands: &mut Commands,
    ids: &[(&str, &Bot)],
    names: &[String],
    tag: &str,
) {
    cluster.wait_for_jetstream(Duration::from_secs(20)).await;
    buckets_replicated(client, 3, Duration::from_secs(20)).await;
    settled(ids, names.len(), Duration::from_secs(10)).await;
    let answers = mention_all(client, commands, names, tag, Duration::from_secs(2)).await;
    if answers.values().any(|n| *n != 1) {
        let logs: Vec<String> = ids.iter().map(|(id, b)| format!("{id}: {}", lease_log(b, 60))).collect();
        eprintln!("{}", logs.join("\n\n"));
    }
    assert_one_voice(&answers);
}

/// A client (and its command subscription) on a node other than `avoid`: the probe's
/// view of the room must not depend on its own reconnection.
async fn observer(cluster: &NatsCluster, avoid: &[usize]) -> (async_nats::Client, Commands) {
    let i = (0..cluster.len()).find(|i| !avoid.contains(i)).expect("a node survives");
    let client = cluster.client_at(i).await;
    let commands = Commands::subscribe(&client).await;
    (client, commands)
}

/// No mention answered twice (or who said the first one twice, and the lease logs).
fn assert_no_doubles(p: &Probe, bots: &[Bot]) {
    let Some(first) = p.doubles.first() else { return };
    let token = first.split('×').next().unwrap_or_default();
    let said: Vec<String> = bots
        .iter()
        .enumerate()
        .flat_map(|(i, b)| {
            let logs = b.logs();
            logs.lines().filter(|l| l.contains(token)).map(|l| format!("i{i}: {l}")).collect::<Vec<_>>()
        })
        .collect();
    let logs: Vec<String> = bots.iter().map(|b| lease_log(b, 80)).collect();
    panic!("mentions answered twice: {:?}\n{}\n\n{}", p.doubles, said.join("\n"), logs.join("\n\n"));
}

/// Every channel answered again by the end of a probe (or the bots' lease logs).
fn assert_all_recovered(p: &Probe, names: &[String], bots: &[Bot]) {
    if p.recovered.len() != names.len() {
        let logs: Vec<String> = bots.iter().map(|b| lease_log(b, 150)).collect();
        panic!("channels that never answered again: {p:?}\n{}", logs.join("\n\n"));
    }
}

/// A bot's last `n` log lines about leases, for failure messages.
fn lease_log(bot: &Bot, n: usize) -> String {
    let logs = bot.logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| {
            ["chatbot_runtime::ha", "ha:", "Seen", "Free", "Taken", "Acquired", "Failed", "panicked", "ERROR"]
                .iter()
                .any(|w| l.contains(w))
        })
        .collect();
    format!("its last lease log lines:\n{}", lines[lines.len().saturating_sub(n)..].join("\n"))
}

/// Waits (bounded) until every bot's /health says `ok` once the cluster has elected
/// whatever leaders it lost (a new meta leader takes several seconds, and no watch can
/// be made until then).
async fn all_ok_after_elections(bots: &[Bot]) {
    for bot in bots {
        wait_until_ok(bot, Duration::from_secs(12)).await;
    }
}

/// Waits (bounded) until a bot's /health says `ok`.
async fn wait_until_ok(bot: &Bot, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let h = health(bot).await;
        if h["status"] == "ok" {
            return;
        }
        assert!(Instant::now() < deadline, "still degraded after {within:?}: {}\n{}", h["reasons"], lease_log(bot, 60));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
