//! The networks operators run the bot behind: a provider with a private CA (trusted by
//! `ca_file`, refused without it, with the certificate named), and a corporate HTTP proxy
//! (a real tinyproxy) taken from the environment as curl reads it, bypassed by
//! `NO_PROXY` and by `proxy: none`.

use std::time::Duration;

use chatbot_testkit::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_llm-chatbot");
const T: Duration = Duration::from_secs(10);

fn answering(text: &'static str) -> impl Fn(&Seen) -> Answer + Send + Sync + 'static {
    let n = std::sync::atomic::AtomicUsize::new(0);
    move |_| Answer::completion(&format!("{text} {}", n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)), "stop")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_with_a_private_ca_is_trusted_through_ca_file_and_refused_without_it() {
    let pki = Pki::new("Example Corp Private CA");
    let llm = FakeProvider::start_tls(&pki, answering("over tls")).await;
    let nats = Nats::start();
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;

    let trusted = format!("base_url: '{}/v1', model: m, ca_file: '{}', retries: 0", llm.url(), pki.ca_file.display());
    let bot = Bot::start(BIN, &config_with_provider(&nats.url(), &trusted, free_port()), &[]);
    mention(&client, "t-1").await;
    assert_eq!(commands.next(T).await.expect("answered over TLS")["args"]["message"], "over tls 0");
    drop(bot);

    // Without ca_file the certificate is refused: the log and /health say why, and the
    // bot keeps serving.
    let untrusted = format!("base_url: '{}/v1', model: m, retries: 0", llm.url());
    let bot = Bot::start(BIN, &config_with_provider(&nats.url(), &untrusted, free_port()), &[]);
    mention(&client, "t-2").await;
    bot.wait_for("llm request failed", T);
    commands.none(Duration::from_millis(200)).await;
    let logs = bot.logs();
    assert!(logs.contains("invalid peer certificate") && logs.contains("UnknownIssuer"), "{logs}");
    let (status, body) = http_get(bot.http_port, "/health").await;
    let h: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200);
    let last = h["llm"]["providers"]["main"]["last_error"].as_str().unwrap_or_default();
    assert!(last.starts_with("llm_connect: ") && last.contains("UnknownIssuer"), "{last}");
    assert_eq!(llm.seen().len(), 1, "nothing was sent over the refused connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_ca_file_stops_the_start_with_one_clear_line() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let cfg = config_with_provider(
        &nats.url(),
        &format!("base_url: 'https://127.0.0.1:9/v1', model: m, ca_file: '{}'", not_pem.display()),
        free_port(),
    );
    let mut bot = Bot::spawn(BIN, &cfg, &[], &[]);
    assert_eq!(bot.wait_exit(T), Some(1));
    assert!(
        bot.logs().contains("provider main: ca_file") && bot.logs().contains("no PEM certificate"),
        "{}",
        bot.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_from_the_environment_carries_requests_and_no_proxy_bypasses_it() {
    let proxy = Tinyproxy::start();
    let pki = Pki::new("Proxy Test CA");
    let llm = FakeProvider::start_tls(&pki, answering("via proxy")).await;
    let nats = Nats::start();
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;
    let provider = format!("base_url: '{}/v1', model: m, ca_file: '{}', retries: 0", llm.url(), pki.ca_file.display());
    let target = format!("CONNECT 127.0.0.1:{}", llm.addr.port());

    // Upper case, then lower case: both are honoured; loopback is not exempt by itself.
    for var in ["HTTPS_PROXY", "https_proxy"] {
        let before = proxy.relayed(&target);
        let bot = Bot::start(BIN, &config_with_provider(&nats.url(), &provider, free_port()), &[(var, &proxy.url())]);
        mention(&client, &format!("p-{var}")).await;
        commands.next(T).await.unwrap_or_else(|| panic!("answered through the proxy ({var}); {}", bot.logs()));
        // The connection opened at start (and the mention's, if it came first) went
        // through tinyproxy.
        assert!(proxy.relayed(&target) > before, "{var}: the request went through tinyproxy:\n{}", proxy.logs());
        drop(bot);
    }

    // NO_PROXY names the provider's host: straight there.
    let before = proxy.relayed(&target);
    let envs = [("HTTPS_PROXY", proxy.url()), ("NO_PROXY", "localhost,127.0.0.1".to_owned())];
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bot = Bot::start(BIN, &config_with_provider(&nats.url(), &provider, free_port()), &envs);
    mention(&client, "p-no").await;
    commands.next(T).await.expect("answered directly");
    assert_eq!(proxy.relayed(&target), before, "NO_PROXY bypassed the proxy");
    drop(bot);

    // `proxy: none` in the config wins over the environment.
    let direct = format!("{provider}, proxy: none");
    let bot =
        Bot::start(BIN, &config_with_provider(&nats.url(), &direct, free_port()), &[("HTTPS_PROXY", &proxy.url())]);
    mention(&client, "p-none").await;
    commands.next(T).await.expect("answered directly");
    assert_eq!(proxy.relayed(&target), before);
    drop(bot);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_proxy_is_used_and_an_unreachable_one_is_named_in_the_failure() {
    let proxy = Tinyproxy::start();
    let llm = FakeProvider::start(answering("plain via proxy")).await;
    let nats = Nats::start();
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;
    let target = format!("127.0.0.1:{}", llm.addr.port());

    let via = format!("base_url: '{}/v1', model: m, retries: 0, proxy: '{}'", llm.url(), proxy.url());
    let bot = Bot::start(BIN, &config_with_provider(&nats.url(), &via, free_port()), &[]);
    mention(&client, "c-1").await;
    commands.next(T).await.expect("answered through the configured proxy");
    assert!(proxy.relayed(&target) >= 1, "{}", proxy.logs());
    drop(bot);

    let dead = format!("http://127.0.0.1:{}", free_port());
    let bad = format!("base_url: '{}/v1', model: m, retries: 0, proxy: '{dead}'", llm.url());
    let bot = Bot::start(BIN, &config_with_provider(&nats.url(), &bad, free_port()), &[]);
    mention(&client, "c-2").await;
    bot.wait_for("llm request failed", T);
    assert!(bot.logs().contains(&format!("through proxy {dead}")), "{}", bot.logs());
}
