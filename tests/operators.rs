//! Operator controls over real NATS (`kryten.{service}.command`) and dry-run mode.

use std::time::Duration;

use chatbot_testkit::*;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_llm-chatbot");
const T: Duration = Duration::from_secs(10);

async fn ask(client: &async_nats::Client, body: Value) -> Value {
    let reply = client.request("kryten.llmtest.command", body.to_string().into()).await.unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_unmute_clear_recent_decisions_and_budget_status() {
    let nats = Nats::start();
    let llm = FakeLlm::start().await;
    let _bot = Bot::start(BIN, &config(&nats.url(), &llm.base_url(), free_port(), &["lounge"], ""), &[]);
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;

    let r = ask(&client, json!({"command": "channel.mute", "channel": "Lounge"})).await;
    assert_eq!((r["success"].as_bool(), r["data"]["muted"].as_bool()), (Some(true), Some(true)), "{r}");
    publish_event(&client, "lounge", "chatMsg", chat("lounge", "alice", "kryten, hello?", "o-1")).await;
    commands.none(Duration::from_millis(700)).await;
    let r = ask(&client, json!({"command": "decisions.recent", "args": {"channel": "lounge", "limit": 5}})).await;
    let last = r["data"]["decisions"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["outcome"].as_str(), last["reason"].as_str()), (Some("suppressed"), Some("muted")), "{r}");
    assert_eq!(last["correlation_id"], "o-1");

    ask(&client, json!({"command": "context.clear", "channel": "lounge"})).await;
    let r = ask(&client, json!({"command": "channel.unmute", "channel": "lounge"})).await;
    assert_eq!(r["data"]["muted"], false);
    publish_event(&client, "lounge", "chatMsg", chat("lounge", "bob", "kryten, now?", "o-2")).await;
    assert_eq!(commands.next(T).await.expect("answers again")["args"]["message"], "echo: bob: kryten, now?");
    let (body, _) = llm.requests.lock().unwrap().last().cloned().unwrap();
    assert_eq!(body["messages"].as_array().unwrap().len(), 3, "the cleared context no longer holds alice's line");

    let r = ask(&client, json!({"command": "budget.status"})).await;
    assert!(r["data"]["tokens_last_hour"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["data"]["channels"][0]["name"], "lounge");
    let r = ask(&client, json!({"command": "channel.mute", "channel": "nope"})).await;
    assert_eq!((r["success"].as_bool(), r["error"].as_str()), (Some(false), Some("unknown channel: nope")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_calls_the_llm_but_publishes_nothing() {
    let nats = Nats::start();
    let llm = FakeLlm::start().await;
    let cfg = format!("dry_run: true\n{}", config(&nats.url(), &llm.base_url(), free_port(), &["lounge"], ""));
    let bot = Bot::start(BIN, &cfg, &[]);
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;
    publish_event(&client, "lounge", "chatMsg", chat("lounge", "alice", "kryten?", "dry-1")).await;
    bot.wait_for("dry run: command not published", T);
    commands.none(Duration::from_millis(500)).await;
    assert_eq!(llm.request_count(), 1);
}
