//! The dashboard and the alerts operators plug in name only metrics the daemon really
//! exports: the real binary's /metrics is scraped and every `llm_chatbot_*` name in
//! deploy/grafana/llm-chatbot.json and deploy/prometheus/alerts.yml is looked up in it.

use std::collections::BTreeSet;
use std::time::Duration;

use chatbot_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_llm-chatbot");

/// Every sample name the exposition can carry, from its `# TYPE` lines.
fn exported(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

/// The `llm_chatbot_*` names a text mentions.
fn named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("llm_chatbot_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alerts_name_only_metrics_the_daemon_exports() {
    // With `ha` on (JetStream), so the lease families have series too.
    let nats = Nats::start_jetstream();
    let llm = FakeLlm::start().await;
    let ha = "ha: { enabled: true, lease_ttl: 3s, instance: mon }\n";
    let bot = Bot::start(BIN, &config(&nats.url(), &llm.base_url(), free_port(), &["lounge"], ha), &[]);
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;
    // Answered once this instance holds the channel's lease.
    for i in 0..50 {
        publish_event(
            &client,
            "lounge",
            "chatMsg",
            chat("lounge", "alice", &format!("hey kryten {i}"), &format!("mon-{i}")),
        )
        .await;
        if commands.next(Duration::from_millis(200)).await.is_some() {
            break;
        }
    }
    // /metrics is refreshed with /health (every 250 ms); wait for the reply's figures.
    let mut metrics = String::new();
    for _ in 0..40 {
        metrics = http_get(bot.http_port, "/metrics").await.1;
        if metrics.contains("llm_chatbot_llm_tokens_total{")
            && metrics.contains(r#"llm_chatbot_ha_channel_owned{channel="lounge"} 1"#)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let have = exported(&metrics);
    for file in ["deploy/grafana/llm-chatbot.json", "deploy/prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(file).unwrap();
        let wanted = named(&text);
        assert!(wanted.len() >= 4, "{file} names metrics");
        let missing: Vec<&String> = wanted.iter().filter(|n| !have.contains(*n)).collect();
        assert!(missing.is_empty(), "{file} names metrics /metrics does not export: {missing:?}\n{metrics}");
    }
    // The labels the panels group by are there.
    for sample in [
        r#"llm_chatbot_llm_requests_total{provider="main",outcome="ok"}"#,
        r#"llm_chatbot_llm_request_duration_seconds_count{provider="main"}"#,
        r#"llm_chatbot_ha_channel_owned{channel="lounge"} 1"#,
        r#"llm_chatbot_llm_tokens_total{provider="main",kind="cached_input"}"#,
        r#"llm_chatbot_llm_cost_total{provider="main"}"#,
        "llm_chatbot_nats_connected 1",
    ] {
        assert!(metrics.contains(sample), "no {sample} in\n{metrics}");
    }
}
