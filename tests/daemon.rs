//! The real binary against a real nats-server and an HTTP fake of an OpenAI-compatible
//! LLM, checked at the NATS level as Kryten-Robot would see it.

use std::time::Duration;

use chatbot_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_llm-chatbot");
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

async fn setup(channels: &[&str], extra: &str) -> (Nats, FakeLlm, Bot, async_nats::Client, Commands) {
    let nats = Nats::start();
    let llm = FakeLlm::start().await;
    let bot = Bot::start(BIN, &config(&nats.url(), &llm.base_url(), free_port(), channels, extra), &[]);
    let client = nats.client().await;
    let commands = Commands::subscribe(&client).await;
    (nats, llm, bot, client, commands)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mention_produces_exactly_one_say_with_the_reply() {
    let (_nats, llm, bot, client, mut commands) = setup(&["lounge"], "").await;
    llm.push(Behavior::Reply("Hello alice!".into()));
    publish_event(&client, "lounge", "chatMsg", chat("lounge", "alice", "hey KrytenBot", "c-1")).await;
    let cmd = commands.next(T).await.expect("a say command");
    assert_eq!(cmd["command"], "say");
    assert_eq!(cmd["args"]["message"], "Hello alice!");
    assert_eq!(cmd["meta"]["channel"], "lounge");
    assert_eq!(cmd["meta"]["domain"], "cytu.be");
    assert_eq!(cmd["meta"]["source"], "llmtest");
    assert!(cmd["meta"]["request_id"].as_str().is_some_and(|r| r.len() == 36));
    commands.none(Duration::from_millis(500)).await;
    // The prompt carried the line being answered, with its speaker.
    let (body, _) = llm.requests.lock().unwrap()[0].clone();
    assert_eq!(body["model"], "test-model");
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages[messages.len() - 2]["content"], "alice: hey KrytenBot");
    assert_eq!(messages.last().unwrap()["content"], "[alice is talking to you; reply to them]");
    // Ordinary chat and the bot's own echo produce nothing.
    publish_event(&client, "lounge", "chatMsg", chat("lounge", "bob", "nice weather", "c-2")).await;
    publish_event(&client, "lounge", "chatMsg", chat("lounge", "KrytenBot", "Hello kryten!", "c-3")).await;
    commands.none(Duration::from_millis(500)).await;
    assert_eq!(llm.request_count(), 1);
    drop(bot);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pm_is_answered_with_a_pm() {
    let (_nats, llm, _bot, client, mut commands) = setup(&["lounge"], "").await;
    llm.push(Behavior::Reply("psst back".into()));
    publish_event(&client, "lounge", "pm", pm("lounge", "alice", "are you there?", "p-1")).await;
    let cmd = commands.next(T).await.expect("a pm command");
    assert_eq!(cmd["command"], "pm");
    assert_eq!(cmd["args"]["to"], "alice");
    assert_eq!(cmd["args"]["msg"], "psst back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_channel_never_changes_another_channels_behaviour() {
    let extra = "";
    let nats = Nats::start();
    let llm = FakeLlm::start().await;
    let cfg = config(&nats.url(), &llm.base_url(), free_port(), &["alpha", "beta"], extra)
        .replace("  - name: beta\n", "  - name: beta\n    limits: { per_channel: { max: 1, window: 10m } }\n");
    let _bot = Bot::start(BIN, &cfg, &[]);
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;
    // Exhaust beta's limit, and flood it with chatter.
    for i in 0..3 {
        publish_event(&client, "beta", "chatMsg", chat("beta", "bob", &format!("kryten {i}"), &format!("b-{i}"))).await;
    }
    for i in 0..50 {
        publish_event(&client, "beta", "chatMsg", chat("beta", "bob", "chatter", &format!("bc-{i}"))).await;
    }
    let first = commands.next(T).await.expect("beta answers once");
    assert_eq!(first["meta"]["channel"], "beta");
    commands.none(Duration::from_millis(500)).await;
    // Alpha is unaffected.
    publish_event(&client, "alpha", "chatMsg", chat("alpha", "alice", "kryten, hi", "a-1")).await;
    let cmd = commands.next(T).await.expect("alpha answers");
    assert_eq!(cmd["meta"]["channel"], "alpha");
    assert_eq!(cmd["args"]["message"], "echo: alice: kryten, hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_reconnects_resubscribes_and_delivers_the_held_reply() {
    let (mut nats, llm, bot, client, commands) = setup(&["lounge"], "").await;
    // The reply is produced while NATS is down.
    llm.push(Behavior::Slow(Duration::from_millis(1500), "made while you were away".into()));
    publish_event(&client, "lounge", "chatMsg", chat("lounge", "alice", "kryten?", "r-1")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(commands);
    drop(client);
    nats.stop();
    bot.wait_for("nats connection lost", T);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, health) = http_get(bot.http_port, "/health").await;
    assert_eq!(status, 200, "health answers 200 even when degraded");
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["nats"]["state"], "disconnected");
    tokio::time::sleep(Duration::from_millis(1400)).await;
    nats.restart();
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;
    let held = commands.next(Duration::from_secs(20)).await.expect("the held reply is delivered after reconnect");
    assert_eq!(held["args"]["message"], "made while you were away");
    bot.wait_for("nats reconnected", T);
    // Resubscribed: a new mention is answered.
    publish_event(&client, "lounge", "chatMsg", chat("lounge", "bob", "kryten again", "r-2")).await;
    let cmd = commands.next(T).await.expect("answered after reconnect");
    assert_eq!(cmd["args"]["message"], "echo: bob: kryten again");
    let (_, health) = http_get(bot.http_port, "/health").await;
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["nats"]["reconnects"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_failures_fall_back_and_the_next_request_still_works() {
    let (_nats, llm, _bot, client, mut commands) =
        setup(&["lounge"], "  fallback_responses: [\"one moment please\"]\n").await;
    let cases = [
        Behavior::Slow(Duration::from_secs(5), "too late".into()),
        Behavior::Status(500, None),
        Behavior::Malformed,
        Behavior::Empty,
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let retried = matches!(case, Behavior::Slow(..) | Behavior::Status(..));
        llm.push(case.clone());
        if retried {
            llm.push(case); // retries: 1 → the retry fails the same way
        }
        // A new asker per case: the loop guard rightly stops one account's quick
        // back-and-forth with the bot.
        let asker = format!("alice{i}");
        publish_event(&client, "lounge", "chatMsg", chat("lounge", &asker, &format!("kryten {i}"), &format!("f-{i}")))
            .await;
        let cmd = commands.next(Duration::from_secs(15)).await.expect("a fallback line");
        assert_eq!(cmd["args"]["message"], "one moment please", "case {i}");
        // The next request works.
        publish_event(
            &client,
            "lounge",
            "chatMsg",
            chat("lounge", &format!("bob{i}"), &format!("kryten ok {i}"), &format!("g-{i}")),
        )
        .await;
        let cmd = commands.next(T).await.expect("a real reply");
        assert_eq!(cmd["args"]["message"], format!("echo: bob{i}: kryten ok {i}"));
    }
    // 429 with Retry-After is retried after the wait and then succeeds.
    llm.push(Behavior::Status(429, Some(1)));
    llm.push(Behavior::Reply("after waiting".into()));
    publish_event(&client, "lounge", "chatMsg", chat("lounge", "carol", "kryten?", "h-1")).await;
    let cmd = commands.next(T).await.expect("reply after Retry-After");
    assert_eq!(cmd["args"]["message"], "after waiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_by_the_provider_falls_back() {
    let nats = Nats::start();
    let closed = free_port();
    let cfg = format!(
        r#"bot: {{ name: KrytenBot }}
nats: {{ servers: ["{}"] }}
http: {{ listen: "127.0.0.1:{}" }}
llm:
  providers:
    main: {{ base_url: "http://127.0.0.1:{closed}/v1", model: m, timeout: 1s, retries: 1 }}
  fallback_responses: ["brb"]
channels: [ {{ name: lounge }} ]
"#,
        nats.url(),
        free_port()
    );
    let _bot = Bot::start(BIN, &cfg, &[]);
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;
    publish_event(&client, "lounge", "chatMsg", chat("lounge", "alice", "KrytenBot?", "x-1")).await;
    let cmd = commands.next(T).await.expect("a fallback line");
    assert_eq!(cmd["args"]["message"], "brb");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_a_channel_and_an_invalid_file_keeps_the_old_config() {
    let (nats, llm, bot, client, mut commands) = setup(&["lounge"], "").await;
    let good = std::fs::read_to_string(&bot.config).unwrap();
    // Invalid: the old config keeps running.
    std::fs::write(&bot.config, "bot: [\n").unwrap();
    bot.signal("HUP");
    bot.wait_for("reload refused", T);
    publish_event(&client, "lounge", "chatMsg", chat("lounge", "alice", "kryten?", "s-1")).await;
    assert_eq!(commands.next(T).await.expect("still answering")["meta"]["channel"], "lounge");
    // Valid: a new channel is subscribed without a restart.
    std::fs::write(&bot.config, good.replace("  - name: lounge\n", "  - name: lounge\n  - name: games\n")).unwrap();
    bot.signal("HUP");
    bot.wait_for("reloaded", T);
    publish_event(&client, "games", "chatMsg", chat("games", "bob", "kryten, gg", "s-2")).await;
    let cmd = commands.next(T).await.expect("the new channel answers");
    assert_eq!(cmd["meta"]["channel"], "games");
    let _ = (&nats, &llm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_the_in_flight_request_then_exits_0() {
    let (_nats, llm, mut bot, client, mut commands) = setup(&["lounge"], "").await;
    llm.push(Behavior::Slow(Duration::from_millis(1200), "last words".into()));
    publish_event(&client, "lounge", "chatMsg", chat("lounge", "alice", "kryten?", "t-1")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    bot.signal("TERM");
    let cmd = commands.next(T).await.expect("the in-flight reply is still sent");
    assert_eq!(cmd["args"]["message"], "last words");
    assert_eq!(bot.wait_exit(Duration::from_secs(35)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_bot_exits_0_on_sigterm_and_announces_it() {
    let (_nats, _llm, mut bot, client, _commands) = setup(&["lounge"], "").await;
    let mut lifecycle = client.subscribe("kryten.lifecycle.llmtest.shutdown").await.unwrap();
    client.flush().await.unwrap();
    bot.signal("TERM");
    assert_eq!(bot.wait_exit(Duration::from_secs(10)), Some(0));
    let msg = tokio::time::timeout(T, futures_util::StreamExt::next(&mut lifecycle)).await.unwrap().unwrap();
    let v: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!((v["service"].as_str(), v["reason"].as_str()), (Some("llmtest"), Some("SIGTERM")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_lifecycle_and_service_commands_answer() {
    let (_nats, _llm, bot, client, mut commands) = setup(&["lounge"], "").await;
    publish_event(&client, "lounge", "chatMsg", chat("lounge", "alice", "kryten?", "m-1")).await;
    commands.next(T).await.expect("a reply");
    // /health is a snapshot refreshed every 250 ms: poll (bounded) until it shows the line.
    let mut h = Value::Null;
    for _ in 0..100 {
        let (status, body) = http_get(bot.http_port, "/health").await;
        assert_eq!(status, 200);
        h = serde_json::from_str(&body).unwrap();
        if h["channels"][0]["context_size"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h["status"], "ok");
    assert_eq!(h["nats"]["state"], "connected");
    assert_eq!(h["channels"][0]["name"], "lounge");
    assert_eq!(h["channels"][0]["context_size"], 1);
    assert_eq!(h["llm"]["providers"]["main"]["ok"], 1);
    let (status, metrics) = http_get(bot.http_port, "/metrics").await;
    assert_eq!(status, 200);
    for family in [
        "llm_chatbot_events_total{channel=\"lounge\"} 1",
        "llm_chatbot_decisions_total{channel=\"lounge\",trigger=\"mention\",outcome=\"fired\",reason=\"\"} 1",
        "llm_chatbot_llm_requests_total{provider=\"main\",outcome=\"ok\"} 1",
        "llm_chatbot_messages_sent_total{channel=\"lounge\"} 1",
        "llm_chatbot_llm_request_duration_seconds_count{provider=\"main\"} 1",
        "llm_chatbot_nats_reconnects_total 0",
    ] {
        assert!(metrics.contains(family), "missing {family} in\n{metrics}");
    }
    assert_eq!(http_get(bot.http_port, "/nope").await.0, 404);
    let reply = client.request("kryten.llmtest.command", "{\"command\":\"system.ping\"}".into()).await.unwrap();
    let v: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!((v["success"].as_bool(), v["data"]["pong"].as_bool()), (Some(true), Some(true)));
    let reply = client.request("kryten.llmtest.command", "{\"command\":\"system.health\"}".into()).await.unwrap();
    let v: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v["data"]["status"], "ok");
    let mut startup = client.subscribe("kryten.lifecycle.llmtest.startup").await.unwrap();
    client.publish("kryten.service.discovery.poll", "{}".into()).await.unwrap();
    let msg = tokio::time::timeout(T, futures_util::StreamExt::next(&mut startup)).await.unwrap().unwrap();
    let v: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(v["service"], "llmtest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_never_appears_in_any_output_even_at_trace() {
    let nats = Nats::start();
    let llm = FakeLlm::start().await;
    let secret = "sk-test-7d1f0c9e5b2a4c8f";
    let mut bot = Bot::spawn(
        BIN,
        &config(&nats.url(), &llm.base_url(), free_port(), &["lounge"], ""),
        &[("LLMTEST_API_KEY", secret), ("RUST_LOG", "trace")],
        &["--log-format", "json"],
    );
    bot.wait_for("ready", T);
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;
    publish_event(&client, "lounge", "chatMsg", chat("lounge", "alice", "kryten, secret plans?", "k-1")).await;
    commands.next(T).await.expect("a reply");
    let (_, auth) = llm.requests.lock().unwrap()[0].clone();
    assert_eq!(auth.as_deref(), Some(format!("Bearer {secret}").as_str()), "the key is sent to the provider");
    bot.signal("TERM");
    bot.wait_exit(T);
    let logs = bot.logs();
    assert!(logs.lines().count() > 5);
    assert!(!logs.contains(secret), "the API key leaked into the output");
    assert!(!logs.contains("sk-test"), "part of the API key leaked into the output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_text_is_logged_only_at_debug() {
    let (_nats, _llm, mut bot, client, mut commands) = setup(&["lounge"], "").await;
    publish_event(&client, "lounge", "chatMsg", chat("lounge", "alice", "kryten, my-private-words", "d-1")).await;
    commands.next(T).await.expect("a reply");
    bot.signal("TERM");
    bot.wait_exit(T);
    let logs = bot.logs();
    assert!(logs.contains("outcome=\"fired\"") || logs.contains("outcome=fired"), "decisions are logged:\n{logs}");
    assert!(!logs.contains("my-private-words"), "chat text leaked at info:\n{logs}");
}

#[test]
fn invalid_yaml_exits_1_naming_file_and_line() {
    let mut bot =
        Bot::spawn(BIN, "bot: { name: B }\nchannels:\n  - name: a\n    limits: { per_user: { max: 0 } }\n", &[], &[]);
    assert_eq!(bot.wait_exit(T), Some(1));
    let logs = bot.logs();
    assert!(logs.contains("bot.yaml:4:"), "{logs}");
    assert!(logs.contains("channels[0].limits.per_user.max"), "{logs}");
}

#[test]
fn unreachable_nats_exits_1_with_a_clear_line() {
    let port = free_port();
    let cfg = format!(
        "bot: {{ name: B }}\nnats: {{ servers: [\"nats://127.0.0.1:{port}\"], connect_timeout: 1s }}\nhttp: {{ listen: \"127.0.0.1:{}\" }}\nllm: {{ providers: {{ main: {{ base_url: \"http://127.0.0.1:1/v1\", model: m }} }} }}\nchannels: [ {{ name: a }} ]\n",
        free_port()
    );
    let mut bot = Bot::spawn(BIN, &cfg, &[], &[]);
    assert_eq!(bot.wait_exit(T), Some(1));
    assert!(
        bot.logs().contains(&format!("error: cannot connect to NATS at nats://127.0.0.1:{port} within 1s")),
        "{}",
        bot.logs()
    );
}

#[test]
fn a_port_in_use_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = format!(
        "bot: {{ name: B }}\nhttp: {{ listen: \"127.0.0.1:{port}\" }}\nllm: {{ providers: {{ main: {{ base_url: \"http://127.0.0.1:1/v1\", model: m }} }} }}\nchannels: [ {{ name: a }} ]\n"
    );
    let mut bot = Bot::spawn(BIN, &cfg, &[], &[]);
    assert_eq!(bot.wait_exit(T), Some(1));
    assert!(bot.logs().contains(&format!("error: http.listen: cannot listen on 127.0.0.1:{port}")), "{}", bot.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_password_auth_come_from_the_environment() {
    for (server_args, nats_cfg, envs) in [
        (vec!["--auth", "s3cret-token"], "token_env: NATS_TEST_TOKEN", vec![("NATS_TEST_TOKEN", "s3cret-token")]),
        (
            vec!["--user", "bot", "--pass", "pw-123"],
            "user: bot, password_env: NATS_TEST_PASSWORD",
            vec![("NATS_TEST_PASSWORD", "pw-123")],
        ),
    ] {
        let nats = Nats::start_with(&server_args);
        let llm = FakeLlm::start().await;
        let cfg = config(&nats.url(), &llm.base_url(), free_port(), &["lounge"], "")
            .replace("connect_timeout: 2s }", &format!("connect_timeout: 2s, {nats_cfg} }}"));
        let bot = Bot::start(BIN, &cfg, &envs);
        let opts = match envs[0].0 {
            "NATS_TEST_TOKEN" => async_nats::ConnectOptions::with_token("s3cret-token".into()),
            _ => async_nats::ConnectOptions::with_user_and_password("bot".into(), "pw-123".into()),
        };
        let client = opts.connect(nats.url()).await.unwrap();
        let mut commands = Commands::subscribe(&client).await;
        publish_event(&client, "lounge", "chatMsg", chat("lounge", "alice", "kryten?", "auth-1")).await;
        assert!(commands.next(T).await.is_some(), "{nats_cfg}: the bot answers through an authenticated connection");
        drop(bot);
        // Without the secret the bot refuses to start, naming the variable.
        let mut unset = Bot::spawn(BIN, &cfg, &[], &[]);
        assert_eq!(unset.wait_exit(T), Some(1));
        assert!(unset.logs().contains(&format!("environment variable {} is not set", envs[0].0)), "{}", unset.logs());
    }
}
