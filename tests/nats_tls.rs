//! NATS over TLS and mutual TLS, with certificates the test makes: nats-server with a
//! TLS config, the bot trusting its CA (and presenting a client certificate), and a
//! wrong CA refused at start with one line.

use std::path::Path;
use std::time::Duration;

use chatbot_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_llm-chatbot");
const T: Duration = Duration::from_secs(10);

fn tls_config(nats: &Nats, llm: &FakeLlm, tls: &str) -> String {
    let base = config(&nats.url(), &llm.base_url(), free_port(), &["lounge"], "");
    let line = base.lines().find(|l| l.starts_with("nats:")).unwrap().to_owned();
    base.replace(
        &line,
        &format!("nats: {{ servers: [\"tls://127.0.0.1:{}\"], connect_timeout: 2s, tls: {{ {tls} }} }}", nats.port),
    )
}

async fn tls_client(
    nats: &Nats,
    ca: &Path,
    client: Option<&(std::path::PathBuf, std::path::PathBuf)>,
) -> async_nats::Client {
    let mut o = async_nats::ConnectOptions::new().add_root_certificates(ca.into()).require_tls(true);
    if let Some((cert, key)) = client {
        o = o.add_client_certificate(cert.clone(), key.clone());
    }
    o.connect(format!("tls://127.0.0.1:{}", nats.port)).await.expect("the test client connects over TLS")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_works_over_nats_tls_with_a_private_ca() {
    let pki = Pki::new("NATS TLS Test CA");
    let nats = Nats::start_with(&["--tls", "--tlscert", path(&pki.cert_file), "--tlskey", path(&pki.key_file)]);
    let llm = FakeLlm::start().await;
    let _bot = Bot::start(BIN, &tls_config(&nats, &llm, &format!("ca_file: '{}'", pki.ca_file.display())), &[]);
    let client = tls_client(&nats, &pki.ca_file, None).await;
    let mut commands = Commands::subscribe(&client).await;
    publish_event(&client, "lounge", "chatMsg", chat("lounge", "alice", "hey kryten", "tls-1")).await;
    assert_eq!(commands.next(T).await.expect("answered over TLS")["args"]["message"], "echo: alice: hey kryten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_presents_its_client_certificate_for_mutual_tls() {
    let pki = Pki::new("NATS mTLS Test CA");
    let nats = Nats::start_with(&[
        "--tlsverify",
        "--tlscert",
        path(&pki.cert_file),
        "--tlskey",
        path(&pki.key_file),
        "--tlscacert",
        path(&pki.ca_file),
    ]);
    let llm = FakeLlm::start().await;
    let bot_cert = pki.client("bot");
    let tls = format!(
        "ca_file: '{}', cert_file: '{}', key_file: '{}'",
        pki.ca_file.display(),
        bot_cert.0.display(),
        bot_cert.1.display()
    );
    let _bot = Bot::start(BIN, &tls_config(&nats, &llm, &tls), &[]);
    let test_cert = pki.client("tester");
    let client = tls_client(&nats, &pki.ca_file, Some(&test_cert)).await;
    let mut commands = Commands::subscribe(&client).await;
    publish_event(&client, "lounge", "chatMsg", chat("lounge", "alice", "hey kryten", "mtls-1")).await;
    assert_eq!(commands.next(T).await.expect("answered over mutual TLS")["args"]["message"], "echo: alice: hey kryten");

    // Without its certificate the server refuses the bot: exit 1, one line.
    let mut refused =
        Bot::spawn(BIN, &tls_config(&nats, &llm, &format!("ca_file: '{}'", pki.ca_file.display())), &[], &[]);
    assert_eq!(refused.wait_exit(T), Some(1));
    assert_eq!(refused.logs().lines().filter(|l| l.starts_with("error:")).count(), 1, "{}", refused.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_for_nats_stops_the_start_with_one_line_naming_the_certificate() {
    let pki = Pki::new("The Server's CA");
    let other = Pki::new("Some Other CA");
    let nats = Nats::start_with(&["--tls", "--tlscert", path(&pki.cert_file), "--tlskey", path(&pki.key_file)]);
    let llm = FakeLlm::start().await;
    let mut bot =
        Bot::spawn(BIN, &tls_config(&nats, &llm, &format!("ca_file: '{}'", other.ca_file.display())), &[], &[]);
    assert_eq!(bot.wait_exit(T), Some(1));
    let errors: Vec<String> = bot.logs().lines().filter(|l| l.starts_with("error:")).map(str::to_owned).collect();
    assert_eq!(errors.len(), 1, "{}", bot.logs());
    assert!(
        errors[0].contains("cannot connect to NATS") && errors[0].to_lowercase().contains("certificate"),
        "{}",
        errors[0]
    );
}
