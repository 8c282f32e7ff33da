//! Replay predicts production: the real daemon and `record` run side by side on a real
//! nats-server through a scripted session in which cooldowns, windows, in-flight limits
//! and a probability-0.5 keyword matter; the recording replayed under the same config
//! makes every decision the daemon made, event by event (`llm-chatbot diff`).

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatbot_core::Millis;
use chatbot_testkit::*;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_llm-chatbot");

/// Limits whose edges fall between the script's 100 ms steps: `offset` is 50 ms for an
/// instant LLM (replies leave right after their event) and 0 for a 250 ms one.
fn config(nats: &str, llm: &str, offset_ms: u64) -> String {
    let ms = |base: u64| format!("{}ms", base + offset_ms);
    format!(
        r#"bot: {{ name: KrytenBot, aliases: [kryten] }}
nats: {{ servers: ["{nats}"], connect_timeout: 2s }}
kryten: {{ domain: cytu.be, service_name: fidelity }}
http: {{ listen: "127.0.0.1:{port}" }}
llm:
  providers:
    main: {{ base_url: "{llm}", model: test-model, timeout: 5s, retries: 0 }}
defaults:
  limits: {{ global_cooldown: {cool}, send_spacing: 0s, per_user: {{ max: 2, window: {user} }}, per_channel: {{ max: 4, window: {chan} }} }}
  triggers:
    keywords:
      - {{ words: [popcorn], probability: 1.0, cooldown: 0s }}
      - {{ words: [pizza], probability: 0.5, cooldown: 0s }}
channels:
  - name: lounge
  - name: movies
"#,
        port = free_port(),
        cool = ms(1500),
        user = ms(5000),
        chan = ms(8000),
    )
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Publishes `steps` events, one every 100 ms: chat in two channels from six users,
/// about a third mentioning the bot, some keywords, a few PMs.
async fn play(client: &async_nats::Client, steps: u64) {
    let mut rng = 0x5eed_u64;
    let mut next = move || {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        rng >> 33
    };
    let start = tokio::time::Instant::now();
    for k in 0..steps {
        tokio::time::sleep_until(start + Duration::from_millis(100 * k)).await;
        let channel = if next() % 2 == 0 { "lounge" } else { "movies" };
        let user = format!("user{}", next() % 6);
        let (kind, text) = match next() % 20 {
            0..=6 => ("chatMsg", format!("kryten, what about scene {k}?")),
            7..=9 => ("chatMsg", format!("popcorn time {k}")),
            10..=12 => ("chatMsg", format!("pizza again {k}")),
            13 => ("pm", format!("psst {k}")),
            _ => ("chatMsg", format!("just chatting {k}")),
        };
        let at = now_ms();
        let mut payload = json!({"username": user, "msg": text, "meta": {}, "time": at});
        if kind == "pm" {
            payload["to"] = json!("KrytenBot");
        }
        let envelope = json!({"event_name": kind, "channel": channel, "domain": "cytu.be",
            "timestamp": Millis(at).to_rfc3339(), "correlation_id": format!("ev-{k}"), "payload": payload});
        let subject = format!("kryten.events.cytube.{channel}.{}", kind.to_lowercase());
        client.publish(subject, envelope.to_string().into()).await.unwrap();
    }
    client.flush().await.unwrap();
}

async fn live_session_replays_to_the_same_decisions(latency: Option<Duration>, offset_ms: u64) {
    let nats = Nats::start();
    let llm = FakeLlm::start().await;
    if let Some(d) = latency {
        for _ in 0..400 {
            llm.push(Behavior::SlowEcho(d));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bot.yaml");
    let corpus = dir.path().join("session.jsonl");
    let text = config(&nats.url(), &llm.base_url(), offset_ms);
    std::fs::write(&cfg, &text).unwrap();
    let mut recorder = Bot::spawn_command(
        BIN,
        &["record", "-c", cfg.to_str().unwrap(), "-o", corpus.to_str().unwrap()],
        &[("LLMTEST_UNUSED", "")],
    );
    recorder.wait_for("recording", Duration::from_secs(10));
    let mut bot = Bot::spawn(BIN, &text, &[], &["--log-format", "json"]);
    bot.wait_for("\"ready\"", Duration::from_secs(15));
    let client = nats.client().await;
    play(&client, 120).await;
    // Every reply out (at most 250 ms behind), then both stop.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    bot.signal("TERM");
    assert_eq!(bot.wait_exit(Duration::from_secs(10)), Some(0));
    tokio::time::sleep(Duration::from_millis(200)).await;
    recorder.signal("INT");
    assert_eq!(recorder.wait_exit(Duration::from_secs(10)), Some(0));

    let live_log = dir.path().join("live.log");
    std::fs::write(&live_log, bot.logs()).unwrap();
    let recorded = std::fs::read_to_string(&corpus).unwrap();
    assert!(recorded.lines().any(|l| l.starts_with("//# {\"record\":\"session\"")), "the bot's session is recorded");
    assert!(recorded.lines().any(|l| l.starts_with("//# {\"record\":\"command\"")), "its commands too");

    let report_path = dir.path().join("replay.json");
    let out = Command::new(BIN)
        .args(["replay", corpus.to_str().unwrap(), "-c", cfg.to_str().unwrap(), "--format", "json", "-o"])
        .arg(&report_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();

    // The replay ran with the live seed and the live answers.
    let seed_line = bot.logs().lines().find(|l| l.contains("engine seed")).map(str::to_owned).unwrap();
    let seed: Value = serde_json::from_str(&seed_line).unwrap();
    assert_eq!(report["seed"], seed["seed"], "{seed_line}");
    let live = &report["live"];
    assert_eq!(live["answers"]["invented"], 0, "{live}");
    assert!(live["answers"]["recorded"].as_u64().unwrap() > 10, "{live}");

    // Limits mattered, and so did chance: the session is not trivially "answer all".
    let reasons: Vec<&str> =
        report["decisions"].as_array().unwrap().iter().filter_map(|d| d["reason"].as_str()).collect();
    for r in ["global_cooldown", "probability"] {
        assert!(reasons.contains(&r), "no `{r}` suppression: {reasons:?}");
    }
    assert!(live["probabilistic"]["events"].as_u64().unwrap() >= 5, "{live}");

    // Every decision of every event agrees, probabilistic ones included.
    assert_eq!(live["events"]["agree"], live["events"]["events"], "{:#}", live["changes"]);
    let out = Command::new(BIN).arg("diff").arg(&live_log).arg(&report_path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(" 0 differ (100.0 % agreement)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_with_an_instant_llm_replays_to_the_same_decisions() {
    live_session_replays_to_the_same_decisions(None, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_with_a_slow_llm_replays_to_the_same_decisions() {
    live_session_replays_to_the_same_decisions(Some(Duration::from_millis(250)), 0).await;
}
