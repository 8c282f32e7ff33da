//! Real parts for end-to-end tests and benchmarks: a `nats-server` on a free loopback
//! port, an in-process OpenAI-compatible server whose answers a test scripts, and the
//! real `llm-chatbot` binary. Everything is started by its owner and stopped on drop;
//! every wait is bounded.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

mod cluster;
pub use cluster::NatsCluster;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn wait_for_port(port: u16, up: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let open = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if open == up {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("port {port} did not become {}", if up { "open" } else { "closed" });
}

/// A real nats-server process on loopback.
pub struct Nats {
    pub port: u16,
    child: Option<Child>,
    auth: Vec<String>,
    /// JetStream's store, kept across restarts.
    _store: Option<tempfile::TempDir>,
}

impl Nats {
    pub fn start() -> Nats {
        Nats::start_with(&[])
    }

    /// Starts with extra server arguments (e.g. `--auth TOKEN`).
    pub fn start_with(args: &[&str]) -> Nats {
        let mut n =
            Nats { port: free_port(), child: None, auth: args.iter().map(|a| a.to_string()).collect(), _store: None };
        n.restart();
        n
    }

    /// Starts with JetStream on (`-js`), its store in a temp dir that survives restarts.
    pub fn start_jetstream() -> Nats {
        let store = tempfile::tempdir().unwrap();
        let dir = store.path().to_str().expect("utf-8 temp path").to_owned();
        let mut n =
            Nats { port: free_port(), child: None, auth: vec!["-js".into(), "-sd".into(), dir], _store: Some(store) };
        n.restart();
        n
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port.
    pub fn restart(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.auth)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (Debian package nats-server)");
        self.child = Some(child);
        wait_for_port(self.port, true);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_for_port(self.port, false);
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url()).await.expect("test client connects")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every request the fake LLM received: its JSON body and its Authorization header.
pub type Requests = Arc<Mutex<Vec<(Value, Option<String>)>>>;

/// What the fake LLM does for one request.
#[derive(Debug, Clone)]
pub enum Behavior {
    Reply(String),
    Status(u16, Option<u64>),
    Malformed,
    Empty,
    /// Answer after this long.
    Slow(Duration, String),
    /// The default (echo) answer, after this long.
    SlowEcho(Duration),
}

/// An in-process OpenAI-compatible server.
pub struct FakeLlm {
    pub addr: SocketAddr,
    pub script: Arc<Mutex<VecDeque<Behavior>>>,
    pub requests: Requests,
    task: tokio::task::JoinHandle<()>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeLlm {
    /// Starts on a free port; unscripted requests answer "echo: <last user message>", or
    /// "sure thing, here you go tokN" when the prompt carries a benchmark token `tokN`.
    pub async fn start() -> FakeLlm {
        let script: Arc<Mutex<VecDeque<Behavior>>> = Arc::default();
        let requests: Requests = Arc::default();
        let (s, r) = (script.clone(), requests.clone());
        let (addr, task, connections) = serve(move |req| handle(req, s.clone(), r.clone())).await;
        FakeLlm { addr, script, requests, task, connections }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn push(&self, b: Behavior) {
        self.script.lock().unwrap().push_back(b);
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves HTTP/1.1 on a free loopback port with `handler` until the task is aborted.
async fn serve<F, Fut>(handler: F) -> Served
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    serve_on(None, handler).await
}

/// A running fake server: its address, the task serving it, and how many TCP
/// connections it accepted.
type Served = (SocketAddr, tokio::task::JoinHandle<()>, Arc<std::sync::atomic::AtomicUsize>);

/// OpenAI's `GET /models` answer (what clients ask first, and the bot at start to
/// open its connection): a list with one model. Such requests are not recorded.
fn models_list(req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    (req.method() == hyper::Method::GET && req.uri().path().ends_with("/models")).then(|| {
        let body = json!({"object": "list", "data": [{"id": "test-model", "object": "model", "owned_by": "test"}]});
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
        resp
    })
}

/// [`serve`], over TLS with `tls` when given.
async fn serve_on<F, Fut>(tls: Option<tokio_rustls::TlsAcceptor>, handler: F) -> Served
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = connections.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            let (handler, tls) = (handler.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(handler);
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    // A client that refuses our certificate ends the handshake: fine.
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    });
    (addr, task, connections)
}

/// Collects a child's stderr and stdout lines as they come (one thread per pipe).
fn capture(child: &mut Child) -> (Arc<Mutex<Vec<String>>>, Vec<std::thread::JoinHandle<()>>) {
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let pipes = [
        child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ];
    let readers = pipes
        .into_iter()
        .flatten()
        .map(|pipe| {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            })
        })
        .collect();
    (log, readers)
}

/// The test config (see [`config`]) with `provider` (the inside of a YAML flow mapping)
/// as the provider `main`, and one channel, `lounge`.
pub fn config_with_provider(nats: &str, provider: &str, http_port: u16) -> String {
    let base = config(nats, "http://127.0.0.1:9/v1", http_port, &["lounge"], "");
    let line = base.lines().find(|l| l.trim_start().starts_with("main: {")).expect("a provider line").to_owned();
    base.replace(&line, &format!("    main: {{ {provider} }}"))
}

/// alice mentions the bot in `lounge` (correlation id `id`).
pub async fn mention(client: &async_nats::Client, id: &str) {
    publish_event(client, "lounge", "chatMsg", chat("lounge", "alice", &format!("kryten, question {id}?"), id)).await;
}

/// A real HTTP proxy, Debian's `tinyproxy`, on a free loopback port, any CONNECT port
/// allowed; its log shows every request it relayed.
pub struct Tinyproxy {
    child: Option<Child>,
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    pub fn start() -> Tinyproxy {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("tinyproxy.conf");
        // No ConnectPort line: CONNECT to any port (the fakes listen on random ports).
        let text =
            format!("Port {port}\nListen 127.0.0.1\nTimeout 30\nLogLevel Info\nMaxClients 50\nAllow 127.0.0.1\n");
        std::fs::write(&conf, text).unwrap();
        let bin = ["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"].into_iter().find(|p| std::path::Path::new(p).exists());
        let mut child = Command::new(bin.unwrap_or("tinyproxy"))
            .args(["-d", "-c"])
            .arg(&conf)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tinyproxy is installed (.ci/run installs it)");
        let (log, _readers) = capture(&mut child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tinyproxy did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Tinyproxy { child: Some(child), port, log, _dir: dir }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many requests it relayed whose request line contains `needle` (e.g.
    /// `CONNECT 127.0.0.1:4433`).
    pub fn relayed(&self, needle: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|l| l.contains("Request (file descriptor") && l.contains(needle)).count()
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A certificate authority made for one test, and a server certificate it signed for
/// `127.0.0.1` / `localhost`, as PEM files in a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    /// The CA certificate (what a client must trust).
    pub ca_file: PathBuf,
    /// The server's certificate and key.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    cert_pem: String,
    key_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    /// A fresh CA named `name` and a server certificate from it.
    pub fn new(name: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, name);
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        leaf.subject_alt_names.push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        leaf.distinguished_name.push(DnType::CommonName, format!("{name} server"));
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let write = |file: &str, text: &str| {
            let p = dir.path().join(file);
            std::fs::write(&p, text).unwrap();
            p
        };
        let (cert_pem, key_pem) = (leaf_cert.pem(), leaf_key.serialize_pem());
        Pki {
            ca_file: write("ca.pem", &ca_cert.pem()),
            cert_file: write("server.pem", &cert_pem),
            key_file: write("server.key", &key_pem),
            dir,
            cert_pem,
            key_pem,
            issuer,
        }
    }

    /// A client certificate (for mutual TLS) signed by the CA: (certificate, key) files.
    pub fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (self.dir.path().join(format!("{name}.pem")), self.dir.path().join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// A TLS acceptor presenting the server certificate.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = vec![CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
        let cfg = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    }
}

/// One request as a provider fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Path and query, e.g. `/openai/deployments/d/chat/completions?api-version=…`.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: std::collections::BTreeMap<String, String>,
    /// The JSON body (`Null` when it was not JSON).
    pub body: Value,
}

/// What a provider fake answers.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// A 200 chat completion with `text` (and `finish_reason`).
    pub fn completion(text: &str, finish_reason: &str) -> Answer {
        let body = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
                          "usage": {"prompt_tokens": 10, "completion_tokens": 3}});
        Answer::json(200, body)
    }

    /// `status` with a JSON body.
    pub fn json(status: u16, body: Value) -> Answer {
        Answer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }
}

/// An in-process server that behaves as one provider documents: `answer` decides each
/// response from the request; every request is kept in `seen`.
pub struct FakeProvider {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
    scheme: &'static str,
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeProvider {
    pub async fn start(answer: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> FakeProvider {
        FakeProvider::start_on(None, answer).await
    }

    /// The same over HTTPS with `pki`'s server certificate.
    pub async fn start_tls(pki: &Pki, answer: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> FakeProvider {
        let mut p = FakeProvider::start_on(Some(pki.acceptor()), answer).await;
        p.scheme = "https";
        p
    }

    async fn start_on(
        tls: Option<tokio_rustls::TlsAcceptor>,
        answer: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
    ) -> FakeProvider {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let answer = Arc::new(answer);
        let s = seen.clone();
        let (addr, task, connections) = serve_on(tls, move |req: Request<Incoming>| {
            let (s, answer) = (s.clone(), answer.clone());
            async move {
                if let Some(models) = models_list(&req) {
                    return Ok(models);
                }
                let path = req.uri().path_and_query().map_or(String::new(), |p| p.to_string());
                let headers = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                    .collect();
                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let request = Seen { path, headers, body: serde_json::from_slice(&body).unwrap_or(Value::Null) };
                let a = answer(&request);
                s.lock().unwrap().push(request);
                let mut resp = Response::new(Full::new(Bytes::from(a.body)));
                *resp.status_mut() = StatusCode::from_u16(a.status).unwrap();
                for (k, v) in a.headers {
                    resp.headers_mut()
                        .insert(hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
                }
                Ok::<_, Infallible>(resp)
            }
        })
        .await;
        FakeProvider { addr, seen, task, scheme: "http", connections }
    }

    /// `http(s)://127.0.0.1:PORT` (append the provider's path).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The requests so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn completion(text: &str) -> String {
    json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
           "usage": {"prompt_tokens": 10, "completion_tokens": 3}})
    .to_string()
}

async fn handle(
    req: Request<Incoming>,
    script: Arc<Mutex<VecDeque<Behavior>>>,
    requests: Requests,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(models) = models_list(&req) {
        return Ok(models);
    }
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let content = |back: usize| {
        body["messages"].as_array().and_then(|m| m.iter().rev().nth(back)).and_then(|m| m["content"].as_str())
    };
    // Our prompts end with an instruction (`[…]`, after the room's facts) and have the line
    // answered just before it; other bots (kryten-llm) end with the line, templated.
    let instruction = content(0).unwrap_or("").rsplit('\n').next().unwrap_or("");
    let line = match instruction.split_once("] ") {
        Some((_, line)) => line.to_owned(),
        None if instruction.starts_with('[') => content(1).unwrap_or("").to_owned(),
        None => instruction.to_owned(),
    };
    requests.lock().unwrap().push((body, auth));
    // Benchmarks mark lines with a token (`tok…`) and look for it in the reply: answer
    // with the token whatever the prompt's shape.
    let token = line
        .split(|c: char| !c.is_ascii_alphanumeric())
        .rfind(|w| w.len() > 3 && w.starts_with("tok"))
        .map(str::to_owned);
    let last = line;
    let default = match token {
        Some(t) => format!("sure thing, here you go {t}"),
        None => format!("echo: {last}"),
    };
    let behavior = script.lock().unwrap().pop_front().unwrap_or_else(|| Behavior::Reply(default.clone()));
    let (status, text, retry_after) = match behavior {
        Behavior::Reply(t) => (200, completion(&t), None),
        Behavior::Slow(d, t) => {
            tokio::time::sleep(d).await;
            (200, completion(&t), None)
        }
        Behavior::SlowEcho(d) => {
            tokio::time::sleep(d).await;
            (200, completion(&default), None)
        }
        Behavior::Status(code, ra) => (code, "{\"error\":{\"message\":\"nope\"}}".to_string(), ra),
        Behavior::Malformed => (200, "<html>not json</html>".to_string(), None),
        Behavior::Empty => (200, "{\"choices\":[]}".to_string(), None),
    };
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    // As OpenAI sends it (aiohttp-based clients refuse JSON without it).
    resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
    if let Some(s) = retry_after {
        resp.headers_mut().insert("retry-after", s.to_string().parse().unwrap());
    }
    Ok(resp)
}

/// The real binary, running `llm-chatbot run` with a config written to a temp dir.
pub struct Bot {
    child: Option<Child>,
    readers: Vec<std::thread::JoinHandle<()>>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
    pub http_port: u16,
}

/// A config for the tests: instant limits so only what a test sets can silence the bot.
pub fn config(nats: &str, llm: &str, http_port: u16, channels: &[&str], extra: &str) -> String {
    let channels: Vec<String> = channels.iter().map(|c| format!("  - name: {c}\n")).collect();
    format!(
        r#"bot: {{ name: KrytenBot, aliases: [kryten] }}
nats: {{ servers: ["{nats}"], connect_timeout: 2s }}
kryten: {{ domain: cytu.be, service_name: llmtest }}
http: {{ listen: "127.0.0.1:{http_port}" }}
llm:
  providers:
    main: {{ base_url: "{llm}", model: test-model, api_key_env: LLMTEST_API_KEY, timeout: 2s, retries: 1 }}
{extra}defaults:
  limits: {{ global_cooldown: 0s, send_spacing: 0s, per_user: {{ max: 100, window: 1m }}, per_channel: {{ max: 100, window: 1m }} }}
channels:
{}"#,
        channels.concat()
    )
}

impl Bot {
    /// Starts the bot (the binary at `bin`) and waits for its "ready" line.
    pub fn start(bin: &str, config_text: &str, envs: &[(&str, &str)]) -> Bot {
        let bot = Bot::spawn(bin, config_text, envs, &[]);
        bot.wait_for("ready", Duration::from_secs(15));
        bot
    }

    /// Starts `llm-chatbot run` without waiting.
    pub fn spawn(bin: &str, config_text: &str, envs: &[(&str, &str)], args: &[&str]) -> Bot {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("bot.yaml");
        std::fs::write(&config, config_text).unwrap();
        let http_port = config_text
            .split("listen: \"127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let mut all = vec!["run", "-c", config.to_str().expect("utf-8 temp path")];
        all.extend_from_slice(args);
        let mut bot = Bot::spawn_command(bin, &all, envs);
        bot.dir = dir;
        bot.config = config;
        bot.http_port = http_port;
        bot
    }

    /// Starts the binary with any arguments, capturing its output.
    pub fn spawn_command(bin: &str, args: &[&str], envs: &[(&str, &str)]) -> Bot {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.env_remove("RUST_LOG");
        // Hermetic: the machine's proxy settings never reach a test's daemon (loopback
        // is not exempt from them); a test that wants a proxy sets it in `envs`.
        for var in
            ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy"]
        {
            cmd.env_remove(var);
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the binary starts");
        let (log, readers) = capture(&mut child);
        let config = dir.path().join("none.yaml");
        Bot { child: Some(child), readers, dir, config, log, http_port: 0 }
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no log line with {needle:?} within {timeout:?}; log:\n{}", self.logs());
    }

    pub fn count(&self, needle: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().unwrap().success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                // The pipes are closed: the readers end after the last lines.
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("the bot did not exit within {timeout:?}; log:\n{}", self.logs());
    }
}

impl Drop for Bot {
    /// Asks the daemon to stop (SIGTERM) so it exits the way it does in production, and
    /// writes its coverage profile when instrumented; kills it if it is still running
    /// after 1.5 s (e.g. a test left a request hanging).
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A chatMsg envelope as Kryten-Robot publishes it.
pub fn chat(channel: &str, user: &str, msg: &str, id: &str) -> Vec<u8> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    json!({"event_name": "chatMsg", "payload": {"username": user, "msg": msg, "meta": {}, "time": now + 1000},
           "channel": channel, "domain": "cytu.be", "timestamp": "2026-01-15T10:30:00.000000+00:00", "correlation_id": id})
    .to_string()
    .into_bytes()
}

pub fn pm(channel: &str, user: &str, msg: &str, id: &str) -> Vec<u8> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    json!({"event_name": "pm", "payload": {"username": user, "msg": msg, "meta": {}, "time": now + 1000, "to": "KrytenBot"},
           "channel": channel, "domain": "cytu.be", "timestamp": "2026-01-15T10:30:00.000000+00:00", "correlation_id": id})
    .to_string()
    .into_bytes()
}

/// A JetStream key-value bucket, created as Kryten-Robot's are. The stream is made
/// directly: async-nats' `create_key_value` reads account info in a shape nats-server 2.9
/// (Debian 12's) does not send.
pub async fn kv_bucket(client: &async_nats::Client, bucket: &str) -> async_nats::jetstream::kv::Store {
    use async_nats::jetstream;
    let js = jetstream::new(client.clone());
    let config = jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    js.get_or_create_stream(config).await.expect("the bucket's stream");
    js.get_key_value(bucket).await.expect("the bucket")
}

/// Publishes an event on the subject Kryten-Robot would use.
pub async fn publish_event(client: &async_nats::Client, channel: &str, event: &str, body: Vec<u8>) {
    let subject = format!("kryten.events.cytube.{}.{}", channel.to_lowercase(), event.to_lowercase());
    client.publish(subject, body.into()).await.unwrap();
    client.flush().await.unwrap();
}

/// Collects robot commands.
pub struct Commands {
    sub: async_nats::Subscriber,
}

impl Commands {
    pub async fn subscribe(client: &async_nats::Client) -> Commands {
        let sub = client.subscribe("kryten.robot.command").await.unwrap();
        client.flush().await.unwrap();
        Commands { sub }
    }

    /// The next command within `timeout`, parsed.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        let msg = tokio::time::timeout(timeout, self.sub.next()).await.ok()??;
        Some(serde_json::from_slice(&msg.payload).expect("commands are JSON"))
    }

    /// Asserts nothing arrives within `quiet`.
    pub async fn none(&mut self, quiet: Duration) {
        if let Some(v) = self.next(quiet).await {
            panic!("unexpected command: {v}");
        }
    }
}

/// GET a path on the bot's HTTP port.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("http connects");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get(path).header("host", "localhost").body(Full::new(Bytes::new())).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
