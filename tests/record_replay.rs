//! `record` captures what Kryten publishes; `replay` reads it back, offline or against a
//! real (here: fake, over HTTP) provider.

use std::process::Command;
use std::time::Duration;

use chatbot_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_llm-chatbot");
use serde_json::Value;

const FIXTURE: &str = include_str!("../core/tests/fixtures/kryten-robot-1.12.6-session.jsonl");

fn replay_json(args: &[&str]) -> Value {
    let out = Command::new(BIN).arg("replay").args(args).args(["--format", "json"]).output().unwrap();
    assert!(out.status.success(), "replay failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_replays_with_every_event_it_received() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("bot.yaml");
    let corpus = dir.path().join("capture.jsonl");
    std::fs::write(&cfg_path, config(&nats.url(), "http://127.0.0.1:1/v1", free_port(), &["lounge"], "")).unwrap();

    let mut recorder =
        Bot::spawn_command(BIN, &["record", "-c", cfg_path.to_str().unwrap(), "-o", corpus.to_str().unwrap()], &[]);
    recorder.wait_for("recording", Duration::from_secs(10));
    let client = nats.client().await;
    let lines: Vec<&str> = FIXTURE.lines().filter(|l| !l.trim().is_empty()).collect();
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap();
        let event = v["event_name"].as_str().unwrap().to_lowercase();
        client.publish(format!("kryten.events.cytube.lounge.{event}"), line.to_string().into()).await.unwrap();
    }
    // Another channel's events are not recorded; garbage is skipped.
    client.publish("kryten.events.cytube.other.chatmsg", "{}".into()).await.unwrap();
    client.publish("kryten.events.cytube.lounge.chatmsg", "not json".into()).await.unwrap();
    client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    recorder.signal("INT");
    assert_eq!(recorder.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(recorder.logs().contains(&format!("recorded {} events", lines.len())), "{}", recorder.logs());

    let recorded = std::fs::read_to_string(&corpus).unwrap();
    assert_eq!(recorded.lines().filter(|l| !l.starts_with("//")).count(), lines.len());
    assert!(recorded.starts_with("//# {\"record\":\"recording\""), "the recorder's own note opens it");
    let report = replay_json(&[corpus.to_str().unwrap(), "-c", cfg_path.to_str().unwrap()]);
    assert_eq!(report["events"], lines.len());
    assert!(report["bad_lines"].as_array().unwrap().is_empty());
    let lounge = &report["channels"][0];
    assert_eq!(lounge["events"]["chatMsg"], 27);
    assert_eq!(lounge["ignored"]["backlog"], 4);
    assert_eq!(lounge["fired"]["mention"], 2, "two fresh lines mention the bot; the backlog one does not count");
    assert_eq!(lounge["fired"]["pm"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_with_the_http_llm_uses_the_configured_provider() {
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("bot.yaml");
    std::fs::write(&cfg_path, config("nats://127.0.0.1:1", &llm.base_url(), free_port(), &["lounge"], "")).unwrap();
    let cfg = cfg_path.to_str().unwrap().to_owned();
    let report = tokio::task::spawn_blocking(move || replay_json(&["corpus/demo.jsonl", "-c", &cfg, "--llm", "http"]))
        .await
        .unwrap();
    let replies = report["channels"][0]["replies"].as_array().unwrap();
    assert!(!replies.is_empty());
    assert!(replies.iter().all(|r| r["text"].as_str().unwrap().starts_with("echo: ")), "{replies:?}");
    assert_eq!(llm.request_count(), report["channels"][0]["llm_calls"]["reply"].as_u64().unwrap() as usize);
}

#[test]
fn replay_writes_html_to_a_file_and_reports_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    let out =
        Command::new(BIN).args(["replay", "corpus/demo.jsonl", "--format", "html", "-o"]).arg(&html).output().unwrap();
    assert!(out.status.success());
    assert!(std::fs::read_to_string(&html).unwrap().contains("<svg"));

    let out = Command::new(BIN).args(["replay", "no/such/corpus.jsonl"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/corpus.jsonl: cannot read"));

    let out = Command::new(BIN).args(["replay", "corpus/demo.jsonl", "--llm", "gpt5"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--llm gpt5: expected"));

    let out = Command::new(BIN).args(["replay", "corpus/demo.jsonl", "--faults", "timeout=7"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));

    let out = Command::new(BIN).args(["replay"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn check_prints_a_summary_or_the_located_error() {
    let out = Command::new(BIN).args(["check", "-c", "examples/config.yaml"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("examples/config.yaml: OK"), "{text}");
    assert!(text.contains("movies: provider main → backup"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "bot: { name: B }\nllm: { providers: { main: { base_url: 'http://x', model: m, api_key: sk-1 } } }\nchannels: [ { name: a } ]\n").unwrap();
    let out = Command::new(BIN).args(["check", "-c"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:2:") && err.contains("use api_key_env"), "{err}");
    assert!(!err.contains("sk-1"), "{err}");
}

#[test]
fn explain_shows_effective_settings_and_warns_about_risky_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("risky.yaml");
    std::fs::write(
        &cfg,
        "bot: { name: B }\nllm: { providers: { main: { base_url: 'http://x', model: m, api_key_env: LLMTEST_UNSET_KEY } } }\n\
         defaults: { limits: { send_spacing: 0s } }\nchannels: [ { name: a, triggers: { keywords: [ { words: [lol] } ] } } ]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--explain", "-c"])
        .arg(&cfg)
        .env_remove("LLMTEST_UNSET_KEY")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("channel a:") && text.contains("limits: 3/1m per user"), "{text}");
    assert!(text.contains("LLMTEST_UNSET_KEY is not set"), "{text}");
    assert!(text.contains("keyword `lol` is common"), "{text}");
    assert!(text.contains("send_spacing below 1s"), "{text}");

    let out = Command::new(BIN).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.starts_with("llm-chatbot 0."), "{version}");
}
