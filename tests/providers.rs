//! The real binary against fakes that behave as each provider documents: OpenAI's
//! reasoning models (their 400s for `max_tokens` and `temperature`), Azure OpenAI
//! (deployment path, `api-version`, `api-key`), a gateway that always gzips, a reply cut
//! by the token cap, OpenRouter-style extra headers and body fields, and secrets that
//! never reach a log line.

use std::io::Write;
use std::time::Duration;

use chatbot_testkit::*;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_llm-chatbot");
const T: Duration = Duration::from_secs(10);

async fn health(bot: &Bot) -> Value {
    serde_json::from_str(&http_get(bot.http_port, "/health").await.1).unwrap()
}

/// OpenAI's answer for a body a reasoning model (gpt-5, o-series) refuses, as its API
/// sends it; `None` when the body is acceptable.
fn openai_reasoning_refusal(body: &Value) -> Option<Answer> {
    if body.get("max_tokens").is_some() {
        return Some(Answer::json(
            400,
            json!({"error": {
            "message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
            "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}}),
        ));
    }
    if body.get("temperature").is_some_and(|t| t.as_f64() != Some(1.0)) {
        return Some(Answer::json(
            400,
            json!({"error": {
            "message": "Unsupported value: 'temperature' does not support 0.8 with this model. Only the default (1) value is supported.",
            "type": "invalid_request_error", "param": "temperature", "code": "unsupported_value"}}),
        ));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_reasoning_models_are_adapted_to_once_per_request_and_the_reason_is_said() {
    let nats = Nats::start();
    let n = std::sync::atomic::AtomicUsize::new(0);
    let openai = FakeProvider::start(move |r| {
        let n = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        openai_reasoning_refusal(&r.body).unwrap_or_else(|| Answer::completion(&format!("Hi alice! ({n})"), "stop"))
    })
    .await;
    let cfg = config_with_provider(
        &nats.url(),
        &format!("base_url: '{}/v1', model: gpt-5-mini, timeout: 2s, retries: 0", openai.url()),
        free_port(),
    );
    let bot = Bot::start(BIN, &cfg, &[]);
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;

    // First mention: max_tokens refused → resent with max_completion_tokens (the one
    // adaptation) → temperature refused: that is the answer, no loop.
    mention(&client, "m-1").await;
    bot.wait_for("llm request failed", T);
    commands.none(Duration::from_millis(300)).await;
    let seen = openai.seen();
    assert_eq!(seen.len(), 2, "one adaptation per request, never a loop");
    assert!(seen[0].body.get("max_tokens").is_some() && seen[1].body.get("max_completion_tokens").is_some());
    assert!(bot.logs().contains("Unsupported value: 'temperature' does not support 0.8"), "{}", bot.logs());
    assert!(bot.logs().contains("max_tokens_param: max_completion_tokens"), "the warning names the config line");
    let h = health(&bot).await;
    let last = h["llm"]["providers"]["main"]["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(last.starts_with("llm_http_status: HTTP 400: Unsupported value: 'temperature'"), "{last}");

    // Second mention: max_completion_tokens from the start; temperature refused → resent
    // without it → answered. Later requests keep both changes.
    mention(&client, "m-2").await;
    let say = commands.next(T).await.expect("the second mention is answered");
    assert_eq!(say["args"]["message"], "Hi alice! (3)");
    assert!(bot.logs().contains("temperature: null"));
    mention(&client, "m-3").await;
    commands.next(T).await.expect("the third mention is answered");
    let seen = openai.seen();
    assert_eq!(seen.len(), 5);
    let last = &seen[4].body;
    assert!(
        last.get("temperature").is_none() && last.get("max_tokens").is_none() && last["max_completion_tokens"] == 200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_openai_needs_its_deployment_path_api_version_and_api_key_header() {
    // Azure OpenAI: POST {endpoint}/openai/deployments/{deployment}/chat/completions
    // ?api-version=…, the key in `api-key`; 404 without the version, 401 without the key.
    let azure = FakeProvider::start(|r| {
        if !r.path.starts_with("/openai/deployments/chat-4o/chat/completions") || !r.path.contains("api-version=2024-10-21") {
            return Answer::json(404, json!({"error": {"code": "404", "message": "Resource not found"}}));
        }
        if r.headers.get("api-key").map(String::as_str) != Some("azure-key-1") {
            return Answer::json(401, json!({"error": {"code": "401", "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."}}));
        }
        Answer::completion("from azure", "stop")
    })
    .await;
    let nats = Nats::start();
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;
    let base = format!("base_url: '{}/openai/deployments/chat-4o', model: gpt-4o, api_key_env: AZ_KEY, api_key_header: api-key, retries: 0", azure.url());

    let right = config_with_provider(
        &nats.url(),
        &format!("{base}, extra_query: {{ api-version: '2024-10-21' }}"),
        free_port(),
    );
    let bot = Bot::start(BIN, &right, &[("AZ_KEY", "azure-key-1")]);
    mention(&client, "a-1").await;
    assert_eq!(commands.next(T).await.expect("answered")["args"]["message"], "from azure");
    assert!(!azure.seen()[0].headers.contains_key("authorization"), "the key goes bare in api-key");
    drop(bot);

    let no_version = config_with_provider(&nats.url(), &base, free_port());
    let bot = Bot::start(BIN, &no_version, &[("AZ_KEY", "azure-key-1")]);
    mention(&client, "a-2").await;
    bot.wait_for("Resource not found", T);
    drop(bot);

    let bot = Bot::start(BIN, &right, &[]);
    mention(&client, "a-3").await;
    bot.wait_for("Access denied due to invalid subscription key", T);
    commands.none(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_always_gzips_its_answers_is_understood() {
    let gateway = FakeProvider::start(|_| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(Answer::completion("zipped hello", "stop").body.as_slice()).unwrap();
        let mut a = Answer::completion("", "stop");
        a.body = gz.finish().unwrap();
        a.headers.push(("content-encoding".into(), "gzip".into()));
        a
    })
    .await;
    let nats = Nats::start();
    let bot = Bot::start(
        BIN,
        &config_with_provider(&nats.url(), &format!("base_url: '{}/v1', model: m", gateway.url()), free_port()),
        &[],
    );
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;
    mention(&client, "g-1").await;
    assert_eq!(commands.next(T).await.expect("answered")["args"]["message"], "zipped hello");
    assert!(!gateway.seen()[0].headers.contains_key("content-encoding"), "requests are never compressed");
    drop(bot);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reasoning_reply_cut_by_the_cap_is_dropped_as_llm_truncated_with_a_hint() {
    let llm = FakeProvider::start(|_| {
        Answer::json(200, json!({"choices": [{"index": 0, "finish_reason": "length",
            "message": {"role": "assistant", "content": "", "reasoning_content": "The user asks... let me think step by step"}}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 200, "completion_tokens_details": {"reasoning_tokens": 200}}}))
    })
    .await;
    let nats = Nats::start();
    let bot = Bot::start(
        BIN,
        &config_with_provider(
            &nats.url(),
            &format!("base_url: '{}/v1', model: deepseek-reasoner", llm.url()),
            free_port(),
        ),
        &[],
    );
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;
    mention(&client, "r-1").await;
    bot.wait_for("llm_truncated", T);
    commands.none(Duration::from_millis(300)).await;
    assert!(bot.logs().contains("raise max_tokens or lower the reasoning effort"));
    assert!(!bot.logs().contains("step by step"), "the model's reasoning is never logged or said");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_headers_and_body_reach_the_provider_and_secrets_never_reach_a_log_even_at_trace() {
    let router = FakeProvider::start(|_| Answer::completion("routed", "stop")).await;
    let nats = Nats::start();
    let provider = format!(
        "base_url: '{}/api/v1', model: 'meta-llama/llama-3.3-70b-instruct', api_key_env: OR_KEY, \
         extra_headers: {{ HTTP-Referer: 'https://bot.example', X-Title: KrytenBot }}, \
         extra_headers_env: {{ X-Gateway-Token: GW_TOKEN }}, \
         extra_body: {{ provider: {{ order: [groq, together], allow_fallbacks: false }}, temperature: null }}",
        router.url()
    );
    let secrets = [("OR_KEY", "sk-or-v1-SECRETKEY123"), ("GW_TOKEN", "gw-SECRETTOKEN456"), ("RUST_LOG", "trace")];
    let bot = Bot::spawn(BIN, &config_with_provider(&nats.url(), &provider, free_port()), &secrets, &[]);
    bot.wait_for("ready", Duration::from_secs(15));
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;
    mention(&client, "o-1").await;
    assert_eq!(commands.next(T).await.expect("answered")["args"]["message"], "routed");
    let seen = &router.seen()[0];
    assert_eq!(seen.path, "/api/v1/chat/completions");
    assert_eq!(seen.headers["authorization"], "Bearer sk-or-v1-SECRETKEY123");
    assert_eq!(seen.headers["x-gateway-token"], "gw-SECRETTOKEN456");
    assert_eq!(
        (seen.headers["http-referer"].as_str(), seen.headers["x-title"].as_str()),
        ("https://bot.example", "KrytenBot")
    );
    assert_eq!(seen.body["provider"], json!({"order": ["groq", "together"], "allow_fallbacks": false}));
    assert!(seen.body.get("temperature").is_none(), "extra_body's null removed the bot's temperature");
    let logs = bot.logs();
    assert!(logs.contains("TRACE") || logs.contains("trace"), "the log really is at trace");
    for secret in ["SECRETKEY123", "SECRETTOKEN456"] {
        assert!(!logs.contains(secret), "{secret} leaked into the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_mention_finds_the_providers_connection_already_open() {
    let n = std::sync::atomic::AtomicUsize::new(0);
    let llm = FakeProvider::start(move |_| {
        Answer::completion(&format!("warm {}", n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)), "stop")
    })
    .await;
    let nats = Nats::start();
    let bot = Bot::start(
        BIN,
        &config_with_provider(&nats.url(), &format!("base_url: '{}/v1', model: m", llm.url()), free_port()),
        &[],
    );
    // The connection is opened at start (GET /v1/models), before anyone speaks.
    for _ in 0..100 {
        if llm.connections() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(llm.connections(), 1, "connected at start");
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;
    mention(&client, "w-1").await;
    assert_eq!(commands.next(T).await.expect("answered")["args"]["message"], "warm 0");
    assert_eq!(llm.connections(), 1, "the mention went over the connection opened at start");
    assert_eq!(llm.seen().len(), 1, "the warm-up is not a completion request");
    drop(bot);
}
