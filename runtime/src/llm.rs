//! The LLM client: OpenAI-compatible `POST {base_url}/chat/completions` over hyper.
//!
//! Hand-written on purpose (it is small and ours): one pooled HTTP/1.1 client for every
//! provider (HTTPS via rustls with ring, or plain HTTP), a timeout per attempt, bounded
//! retries on connect errors, 5xx and 429 on the schedule of
//! `ProviderConfig::retry_delay` (exponential, honouring `Retry-After`), a 1 MiB cap on
//! response bodies (after decompression: gzip, deflate and br answers are decoded
//! whether or not we asked), and failures mapped to the engine's [`LlmError`] kinds with
//! the reason in words (the provider's own `error.message`, the TLS or connect error).
//!
//! It adapts to the model once per request: OpenAI's reasoning models answer HTTP 400
//! with `param: max_tokens` / `temperature` and `code: unsupported_parameter` (or
//! `unsupported_value`); the request is then sent again with `max_completion_tokens`, or
//! without temperature, and so are later requests to that provider.
//!
//! The API key and `extra_headers_env` values are read from the environment once, kept
//! in sensitive header values, and never formatted into a log line or error.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chatbot_core::config::{MaxTokensParam, ProviderConfig, ProxySetting};
use chatbot_core::{LlmError, LlmReply, PromptMessage, Usage};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT,
};
use hyper::{Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;
use serde_json::{json, Value};

/// Largest response body read, compressed or decoded; a bigger one is `Malformed`.
const MAX_BODY: usize = 1024 * 1024;
/// Characters of a provider's error message kept for logs and /health.
const DETAIL_CHARS: usize = 300;

/// What the provider taught us about its model (OpenAI's 400s), kept for later requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Adapted {
    max_tokens_param: MaxTokensParam,
    temperature: bool,
}

/// The HTTP client of one provider (its own pool, roots and proxy).
type Http = Client<HttpsConnector<Transport>, Full<Bytes>>;

/// One provider, ready to call.
struct Provider {
    name: String,
    http: Http,
    cfg: ProviderConfig,
    url: hyper::Uri,
    /// The key (or `Authorization: Bearer`) and the extra headers, secrets marked
    /// sensitive.
    headers: HeaderMap,
    adapted: Mutex<Adapted>,
}

/// Every configured provider, each with its connection pool.
pub struct LlmClient {
    providers: BTreeMap<String, Provider>,
}

/// A provider that cannot be used as configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// `base_url` (with `extra_query`) is not a valid URL.
    #[error("provider {provider}: invalid base_url: {reason}")]
    BadUrl {
        /// Provider name.
        provider: String,
        /// Why.
        reason: String,
    },
    /// The API key variable holds something that cannot be a header.
    #[error("provider {provider}: the value of {var} is not a valid API key (it has control characters)")]
    BadKey {
        /// Provider name.
        provider: String,
        /// Environment variable name.
        var: String,
    },
    /// `ca_file` cannot be read or holds no usable certificate.
    #[error("provider {provider}: ca_file {path}: {reason}")]
    CaFile {
        /// Provider name.
        provider: String,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The proxy (`proxy:` or the environment's) is not a usable URL.
    #[error("provider {provider}: proxy {proxy}: {reason}")]
    BadProxy {
        /// Provider name.
        provider: String,
        /// Where it came from and what it is (credentials removed).
        proxy: String,
        /// Why.
        reason: String,
    },
    /// A header cannot be sent as configured.
    #[error("provider {provider}: header {header}: {reason}")]
    BadHeader {
        /// Provider name.
        provider: String,
        /// Header name.
        header: String,
        /// Why (never the value).
        reason: String,
    },
}

/// What one completed request reports, for metrics and logs.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Reply or failure kind.
    pub result: Result<LlmReply, LlmError>,
    /// Why it failed, in words: the provider's message or the connection's error (never
    /// a key, a header or a prompt).
    pub detail: Option<String>,
    /// Wall time including retries.
    pub elapsed: Duration,
    /// Attempts made.
    pub attempts: u32,
}

#[derive(Deserialize)]
struct ChatResponse {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    message: Option<ChoiceMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

/// Only `content` is read: `reasoning_content` / `reasoning` (DeepSeek, vLLM,
/// OpenRouter) are the model's thinking and never become a reply.
#[derive(Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct RawUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    /// DeepSeek's name for cached prompt tokens.
    #[serde(default)]
    prompt_cache_hit_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

/// A failed attempt: the kind and the reason in words.
#[derive(Debug, Clone, PartialEq)]
struct Failure {
    kind: LlmError,
    detail: Option<String>,
}

impl Failure {
    fn new(kind: LlmError, detail: impl Into<String>) -> Failure {
        Failure { kind, detail: Some(detail.into()) }
    }
}

/// A change the provider asked for (HTTP 400 on a parameter the model refuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adaptation {
    MaxCompletionTokens,
    NoTemperature,
}

enum Attempt {
    Done(Result<LlmReply, Failure>),
    Retry(Failure, Option<Duration>),
    Adapt(Adaptation, Failure),
}

impl LlmClient {
    /// Builds the client; `env` reads an environment variable (injected for tests).
    pub fn new(
        providers: &BTreeMap<String, ProviderConfig>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<LlmClient, ClientError> {
        let mut out = BTreeMap::new();
        for (name, cfg) in providers {
            let url = request_url(name, cfg)?;
            let provider = Provider {
                name: name.clone(),
                http: http_client(name, cfg, &url, &env)?,
                url,
                headers: headers(name, cfg, &env)?,
                adapted: Mutex::new(Adapted { max_tokens_param: cfg.max_tokens_param, temperature: true }),
                cfg: cfg.clone(),
            };
            out.insert(name.clone(), provider);
        }
        Ok(LlmClient { providers: out })
    }

    /// Builds the client with keys from the process environment.
    pub fn from_env(providers: &BTreeMap<String, ProviderConfig>) -> Result<LlmClient, ClientError> {
        LlmClient::new(providers, |var| std::env::var(var).ok())
    }

    /// Opens a connection to every provider now (`GET {base_url}/models`, which
    /// OpenAI-compatible servers answer cheaply; any answer, even an error, leaves the
    /// connection in the pool), so the first mention does not pay the TCP and TLS
    /// handshakes. Failures are only logged at debug: the real request will say why.
    pub async fn warm_up(&self) {
        let warm = self.providers.values().map(|p| async move {
            let Ok(url) = endpoint(&p.name, &p.cfg, "models") else { return };
            let mut req = Request::get(url).header(USER_AGENT, concat!("llm-chatbot/", env!("CARGO_PKG_VERSION")));
            if let Some(h) = req.headers_mut() {
                h.extend(p.headers.clone());
            }
            let Ok(req) = req.body(Full::new(Bytes::new())) else { return };
            let started = Instant::now();
            match tokio::time::timeout(p.cfg.timeout, p.http.request(req)).await {
                Ok(Ok(resp)) => {
                    let status = resp.status().as_u16();
                    // Read to the end, so the connection goes back to the pool.
                    let _ = read_body(resp).await;
                    tracing::debug!(provider = %p.name, status, elapsed_ms = started.elapsed().as_millis() as u64, "llm connection warmed");
                }
                Ok(Err(e)) => tracing::debug!(provider = %p.name, reason = %error_chain(&e), "llm warm-up failed"),
                Err(_) => tracing::debug!(provider = %p.name, "llm warm-up timed out"),
            }
        });
        futures_util::future::join_all(warm).await;
    }

    /// Names of providers whose key variable is configured but unset.
    pub fn providers_without_key<'a>(&'a self) -> impl Iterator<Item = &'a str> + 'a {
        self.providers
            .iter()
            .filter(|(_, p)| {
                let key_header = p.cfg.api_key_header.as_deref().unwrap_or(AUTHORIZATION.as_str());
                p.cfg.api_key_env.is_some() && !p.headers.contains_key(key_header)
            })
            .map(|(n, _)| n.as_str())
    }

    /// Runs one chat completion with retries. Never panics; every failure is a kind,
    /// with its reason in words.
    pub async fn complete(&self, provider: &str, messages: &[PromptMessage]) -> Outcome {
        let started = Instant::now();
        let Some(p) = self.providers.get(provider) else {
            let detail = Some(format!("no provider named {provider}"));
            return Outcome { result: Err(LlmError::Connect), detail, elapsed: started.elapsed(), attempts: 0 };
        };
        let (mut attempts, mut retries, mut adapted) = (0, 0, false);
        let done = |result: Result<LlmReply, Failure>, attempts| {
            let (result, detail) = match result {
                Ok(reply) => (Ok(reply), None),
                Err(f) => (Err(f.kind), f.detail),
            };
            Outcome { result, detail, elapsed: started.elapsed(), attempts }
        };
        loop {
            attempts += 1;
            let state = p.state();
            let body = Bytes::from(request_body(&p.cfg, messages, state).to_string());
            let attempt = match tokio::time::timeout(p.cfg.timeout, self.attempt(p, body, state)).await {
                Ok(a) => a,
                Err(_) => Attempt::Retry(
                    Failure::new(LlmError::Timeout, format!("no answer within {:?}", p.cfg.timeout)),
                    None,
                ),
            };
            match attempt {
                Attempt::Done(result) => return done(result, attempts),
                // At most one adaptation per request: a second 400 is the answer.
                Attempt::Adapt(change, failure) => {
                    if adapted {
                        return done(Err(failure), attempts);
                    }
                    adapted = true;
                    p.adapt(change);
                }
                Attempt::Retry(failure, after) => {
                    retries += 1;
                    // The engine's deadline for this request is derived from the same
                    // schedule (`ProviderConfig::worst_case`).
                    let Some(delay) = p.cfg.retry_delay(retries, after) else {
                        return done(Err(failure), attempts);
                    };
                    tracing::debug!(
                        provider,
                        attempt = attempts,
                        error = failure.kind.label(),
                        delay_ms = delay.as_millis() as u64,
                        "llm retry"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn attempt(&self, p: &Provider, body: Bytes, state: Adapted) -> Attempt {
        let mut req = Request::post(p.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("llm-chatbot/", env!("CARGO_PKG_VERSION")));
        if let Some(h) = req.headers_mut() {
            h.extend(p.headers.clone());
        }
        let req = match req.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => return Attempt::Done(Err(Failure::new(LlmError::Connect, e.to_string()))),
        };
        let resp = match p.http.request(req).await {
            Ok(r) => r,
            // Connect errors and connections dropped mid-request are both worth a retry.
            Err(e) => return Attempt::Retry(Failure::new(LlmError::Connect, error_chain(&e)), None),
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let body = read_body(resp).await;
        if !status.is_success() {
            let said = body.as_deref().map(ProviderError::parse).unwrap_or_default();
            let failure = Failure {
                kind: LlmError::Status(status.as_u16()),
                detail: Some(match &said.message {
                    Some(m) => format!("HTTP {}: {m}", status.as_u16()),
                    None => format!("HTTP {}", status.as_u16()),
                }),
            };
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                return Attempt::Retry(failure, retry_after);
            }
            if let Some(change) = (status == StatusCode::BAD_REQUEST).then(|| said.adaptation(state)).flatten() {
                return Attempt::Adapt(change, failure);
            }
            return Attempt::Done(Err(failure));
        }
        match body {
            Ok(bytes) => Attempt::Done(parse_reply(&bytes)),
            Err(detail) => Attempt::Done(Err(Failure::new(LlmError::Malformed, detail))),
        }
    }
}

impl Provider {
    fn state(&self) -> Adapted {
        *self.adapted.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies what a 400 taught us, for this and later requests; says once how to
    /// make it permanent.
    fn adapt(&self, change: Adaptation) {
        let mut state = self.adapted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = *state;
        let hint = match change {
            Adaptation::MaxCompletionTokens => {
                state.max_tokens_param = MaxTokensParam::MaxCompletionTokens;
                "the model refuses max_tokens: sending max_completion_tokens from now on; \
                 set `max_tokens_param: max_completion_tokens` for this provider to make it permanent"
            }
            Adaptation::NoTemperature => {
                state.temperature = false;
                "the model accepts only its default temperature: sending none from now on; \
                 set `temperature: null` for this provider to make it permanent"
            }
        };
        if *state != before {
            tracing::warn!(provider = %self.name, config = %format!("llm.providers.{}", self.name), "{hint}");
        }
    }
}

/// How connections to one provider are made: directly, or through an HTTP proxy's
/// `CONNECT` tunnel (TLS then runs end to end through it).
#[derive(Clone)]
enum Transport {
    Direct(HttpConnector),
    Proxied { tunnel: Box<Tunnel<HttpConnector>>, proxy: String },
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failure to reach the provider through its proxy, naming the proxy.
#[derive(Debug, thiserror::Error)]
#[error("through proxy {proxy}: {source}")]
struct ProxyError {
    proxy: String,
    source: BoxError,
}

impl tower_service::Service<hyper::Uri> for Transport {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        match self {
            Transport::Direct(c) => c.poll_ready(cx).map_err(Into::into),
            Transport::Proxied { tunnel, .. } => tunnel.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, dst: hyper::Uri) -> Self::Future {
        match self {
            Transport::Direct(c) => {
                let connecting = c.call(dst);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
            Transport::Proxied { tunnel, proxy } => {
                let (connecting, proxy) = (tunnel.call(dst), proxy.clone());
                Box::pin(async move { connecting.await.map_err(|e| ProxyError { proxy, source: e.into() }.into()) })
            }
        }
    }
}

/// The client of one provider: the built-in roots plus its `ca_file`, and its proxy
/// (`proxy:`, else the environment's, as curl reads it).
fn http_client(
    name: &str,
    cfg: &ProviderConfig,
    url: &hyper::Uri,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Http, ClientError> {
    // Mozilla's roots, compiled in: no file I/O at start-up (loading the system store
    // took ~200 ms here, most of the time to "ready").
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &cfg.ca_file {
        let bad = |reason: String| ClientError::CaFile { provider: name.into(), path: path.clone(), reason };
        let certs: Vec<_> = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no PEM certificate in it".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
    }
    let tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    // No Nagle: a request (headers, then body) leaves at once instead of waiting for
    // the peer's ACK of the first segment.
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    let transport = match proxy_for(name, cfg, url, env)? {
        None => Transport::Direct(tcp),
        Some(intercept) => {
            let proxy = format!("{}", intercept.uri());
            let mut tunnel = Tunnel::new(intercept.uri().clone(), tcp);
            if let Some(auth) = intercept.basic_auth() {
                tunnel = tunnel.with_auth(auth.clone());
            }
            tracing::debug!(provider = name, proxy = %proxy, "provider reached through a proxy");
            Transport::Proxied { tunnel: Box::new(tunnel), proxy }
        }
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(transport);
    Ok(Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(https))
}

/// The proxy for `url`: `proxy: none` → none; `proxy: URL` → that one; otherwise the
/// environment, as curl reads it (`HTTPS_PROXY` / `HTTP_PROXY` by the URL's scheme,
/// else `ALL_PROXY`; `NO_PROXY` exempts hosts; upper case first, then lower case;
/// loopback is not exempt unless `NO_PROXY` says so).
fn proxy_for(
    name: &str,
    cfg: &ProviderConfig,
    url: &hyper::Uri,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<Intercept>, ClientError> {
    let first = |vars: [&str; 2]| vars.into_iter().find_map(|v| env(v).filter(|s| !s.trim().is_empty()));
    let matcher = match &cfg.proxy {
        ProxySetting::Direct => return Ok(None),
        ProxySetting::Url(u) => Matcher::builder().all(u.as_str()).build(),
        ProxySetting::FromEnv => {
            let mut b = Matcher::builder();
            if let Some(v) = first(["ALL_PROXY", "all_proxy"]) {
                b = b.all(v);
            }
            if let Some(v) = first(["HTTP_PROXY", "http_proxy"]) {
                b = b.http(v);
            }
            if let Some(v) = first(["HTTPS_PROXY", "https_proxy"]) {
                b = b.https(v);
            }
            if let Some(v) = first(["NO_PROXY", "no_proxy"]) {
                b = b.no(v);
            }
            b.build()
        }
    };
    let Some(intercept) = matcher.intercept(url) else { return Ok(None) };
    if intercept.uri().scheme_str() != Some("http") {
        return Err(ClientError::BadProxy {
            provider: name.into(),
            proxy: format!("{}", intercept.uri()),
            reason: "only http:// proxies are supported (HTTPS goes through them with CONNECT)".into(),
        });
    }
    Ok(Some(intercept))
}

/// `{base_url}/chat/completions`, with `extra_query` appended.
fn request_url(name: &str, cfg: &ProviderConfig) -> Result<hyper::Uri, ClientError> {
    endpoint(name, cfg, "chat/completions")
}

/// `{base_url}/{path}`, with `extra_query` appended.
fn endpoint(name: &str, cfg: &ProviderConfig, path: &str) -> Result<hyper::Uri, ClientError> {
    let mut url = format!("{}/{path}", cfg.base_url);
    if !cfg.extra_query.is_empty() {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.extend_pairs(&cfg.extra_query);
        url.push('?');
        url.push_str(&q.finish());
    }
    url.parse()
        .map_err(|e: hyper::http::uri::InvalidUri| ClientError::BadUrl { provider: name.into(), reason: e.to_string() })
}

/// The key (as `Authorization: Bearer …` or bare in `api_key_header`) and the extra
/// headers; every value from the environment is marked sensitive. Never replaces a
/// header the bot sets itself.
fn headers(name: &str, cfg: &ProviderConfig, env: &impl Fn(&str) -> Option<String>) -> Result<HeaderMap, ClientError> {
    let mut out = HeaderMap::new();
    let bad = |header: &str, reason: &str| ClientError::BadHeader {
        provider: name.into(),
        header: header.into(),
        reason: reason.into(),
    };
    let header_name = |h: &str| HeaderName::from_bytes(h.as_bytes()).map_err(|_| bad(h, "not a valid header name"));
    if let Some(key) = cfg.api_key_env.as_deref().and_then(env) {
        let (header, value) = match &cfg.api_key_header {
            Some(h) => (header_name(h)?, key.trim().to_owned()),
            None => (AUTHORIZATION, format!("Bearer {}", key.trim())),
        };
        let mut v = HeaderValue::from_str(&value).map_err(|_| ClientError::BadKey {
            provider: name.into(),
            var: cfg.api_key_env.clone().unwrap_or_default(),
        })?;
        v.set_sensitive(true);
        out.insert(header, v);
    }
    for (h, var) in &cfg.extra_headers_env {
        let Some(value) = env(var) else {
            tracing::warn!(provider = name, header = %h, var = %var, "the variable of an extra_headers_env header is not set: the header is not sent");
            continue;
        };
        let mut v = HeaderValue::from_str(value.trim())
            .map_err(|_| bad(h, &format!("the value of {var} is not a valid header value")))?;
        v.set_sensitive(true);
        out.insert(header_name(h)?, v);
    }
    for (h, value) in &cfg.extra_headers {
        let n = header_name(h)?;
        if n == CONTENT_TYPE || n == USER_AGENT || out.contains_key(&n) {
            // The key's header and the extra_headers_env ones are already in `out`.
            tracing::warn!(
                provider = name,
                header = %h,
                "extra header ignored: the bot sets it itself (content type, user agent, the key) or extra_headers_env does"
            );
            continue;
        }
        out.insert(n, HeaderValue::from_str(value).map_err(|_| bad(h, "not a valid header value"))?);
    }
    Ok(out)
}

/// The request JSON: the bot's fields, then `extra_body` merged over them (`null`
/// removes one).
fn request_body(cfg: &ProviderConfig, messages: &[PromptMessage], state: Adapted) -> Value {
    let mut body = serde_json::Map::new();
    body.insert("model".into(), json!(cfg.model));
    let messages: Vec<Value> =
        messages.iter().map(|m| json!({"role": m.role.as_str(), "content": m.content})).collect();
    body.insert("messages".into(), Value::Array(messages));
    if let (true, Some(t)) = (state.temperature, cfg.temperature) {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(field) = state.max_tokens_param.field() {
        body.insert(field.into(), json!(cfg.max_tokens));
    }
    for (k, v) in &cfg.extra_body {
        if v.is_null() {
            body.remove(k);
        } else {
            body.insert(k.clone(), v.clone());
        }
    }
    Value::Object(body)
}

/// What a provider said in an error body. OpenAI (and most compatible servers) send
/// `{"error": {"message", "type", "param", "code"}}`; others `{"error": "…"}`,
/// `{"message": "…"}` or FastAPI's `{"detail": "…"}`.
#[derive(Debug, Default, PartialEq)]
struct ProviderError {
    message: Option<String>,
    param: Option<String>,
    code: Option<String>,
}

impl ProviderError {
    fn parse(body: &[u8]) -> ProviderError {
        let Ok(v) = serde_json::from_slice::<Value>(body) else { return ProviderError::default() };
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let err = v.get("error");
        let message = err
            .and_then(|e| e.get("message").and_then(text).or_else(|| text(e)))
            .or_else(|| v.get("message").and_then(text))
            .or_else(|| v.get("detail").and_then(text));
        ProviderError {
            message: message.map(|m| clean(&m)),
            param: err.and_then(|e| e.get("param")).and_then(text),
            code: err.and_then(|e| e.get("code")).and_then(text),
        }
    }

    /// The change this 400 asks for, if it is one we know and have not made yet.
    fn adaptation(&self, state: Adapted) -> Option<Adaptation> {
        let code = self.code.as_deref()?;
        match self.param.as_deref()? {
            "max_tokens" if code == "unsupported_parameter" && state.max_tokens_param == MaxTokensParam::MaxTokens => {
                Some(Adaptation::MaxCompletionTokens)
            }
            "temperature" if matches!(code, "unsupported_value" | "unsupported_parameter") && state.temperature => {
                Some(Adaptation::NoTemperature)
            }
            _ => None,
        }
    }
}

/// A message fit for a log line: control characters out, at most `DETAIL_CHARS`.
fn clean(s: &str) -> String {
    let cleaned: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).take(DETAIL_CHARS).collect();
    cleaned.trim().to_owned()
}

/// An error and its causes, "outer: inner: …" (the TLS or socket reason is the
/// innermost), without repeats.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    clean(&parts.join(": "))
}

/// The body, at most `MAX_BODY`, decoded from gzip, deflate or br when the provider
/// compressed it (whether or not we asked); the cap applies to the decoded body too, so
/// a compression bomb cannot exhaust memory.
async fn read_body(resp: hyper::Response<hyper::body::Incoming>) -> Result<Bytes, String> {
    let encoding = resp
        .headers()
        .get(CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let raw = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| match e.downcast_ref::<http_body_util::LengthLimitError>() {
            Some(_) => format!("the body exceeds {} KiB", MAX_BODY / 1024),
            None => format!("the body could not be read: {e}"),
        })?
        .to_bytes();
    decode(&encoding, raw)
}

fn decode(encoding: &str, raw: Bytes) -> Result<Bytes, String> {
    let capped = |mut reader: Box<dyn Read + '_>| -> Result<Bytes, String> {
        let mut out = Vec::new();
        (&mut reader)
            .take(MAX_BODY as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("the {encoding} body could not be decoded: {e}"))?;
        if out.len() > MAX_BODY {
            return Err(format!("the decoded body exceeds {} KiB", MAX_BODY / 1024));
        }
        Ok(Bytes::from(out))
    };
    match encoding {
        "" | "identity" => Ok(raw),
        "gzip" | "x-gzip" => capped(Box::new(flate2::read::MultiGzDecoder::new(&raw[..]))),
        // RFC 9110's deflate is zlib-wrapped; some servers send it raw.
        "deflate" => capped(Box::new(flate2::read::ZlibDecoder::new(&raw[..])))
            .or_else(|_| capped(Box::new(flate2::read::DeflateDecoder::new(&raw[..])))),
        "br" => capped(Box::new(brotli_decompressor::Decompressor::new(&raw[..], 4096))),
        other => Err(format!("unsupported Content-Encoding `{other}`")),
    }
}

/// Reads an OpenAI chat-completion body.
fn parse_reply(body: &[u8]) -> Result<LlmReply, Failure> {
    let parsed: ChatResponse = serde_json::from_slice(body)
        .map_err(|e| Failure::new(LlmError::Malformed, format!("not a chat completion: {e}")))?;
    let usage = parsed.usage.map(|u| Usage {
        input_tokens: u.prompt_tokens,
        output_tokens: u.completion_tokens,
        cached_input_tokens: u
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .or(u.prompt_cache_hit_tokens)
            .unwrap_or(0),
    });
    let Some(choice) = parsed.choices.into_iter().next() else {
        return Err(Failure::new(LlmError::EmptyChoices, "no choices"));
    };
    let truncated = choice.finish_reason.as_deref() == Some("length");
    match choice.message.and_then(|m| m.content).filter(|t| !t.trim().is_empty()) {
        Some(text) => Ok(LlmReply { text, usage, truncated }),
        None if truncated => Err(Failure::new(
            LlmError::Truncated,
            "the token cap ended the reply before any text (a reasoning model spends tokens thinking): \
             raise max_tokens or lower the reasoning effort",
        )),
        None => Err(Failure::new(LlmError::EmptyChoices, "the reply has no text")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn provider(yaml: &str) -> ProviderConfig {
        let text = format!(
            "bot: {{ name: B }}\nllm:\n  providers:\n    main: {{ base_url: 'https://api.example.test/v1', model: m{yaml} }}\nchannels: [ {{ name: c }} ]\n"
        );
        chatbot_core::Config::parse(&text, "t.yaml").unwrap().llm.providers["main"].clone()
    }

    fn body(cfg: &ProviderConfig) -> Value {
        let state = Adapted { max_tokens_param: cfg.max_tokens_param, temperature: true };
        request_body(cfg, &[], state)
    }

    #[test]
    fn completion_bodies_parse_to_text_and_usage() {
        let r = parse_reply(br#"{"choices":[{"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":5,"completion_tokens":1}}"#).unwrap();
        assert_eq!(r.text, "hi");
        assert_eq!(r.usage, Some(Usage { input_tokens: 5, output_tokens: 1, cached_input_tokens: 0 }));
        assert!(!r.truncated);
    }

    #[test]
    fn empty_and_malformed_bodies_are_typed_errors() {
        let kind = |b: &[u8]| parse_reply(b).map_err(|f| f.kind);
        assert_eq!(kind(br#"{"choices":[]}"#), Err(LlmError::EmptyChoices));
        assert_eq!(kind(br#"{"choices":[{"message":{"content":"  "}}]}"#), Err(LlmError::EmptyChoices));
        assert_eq!(kind(br#"{"choices":[{"message":{"content":null}}]}"#), Err(LlmError::EmptyChoices));
        assert_eq!(kind(b"<html>bad gateway</html>"), Err(LlmError::Malformed));
    }

    #[test]
    fn reasoning_models_cut_by_the_cap_are_truncated_and_their_thinking_never_becomes_text() {
        let only_thinking =
            br#"{"choices":[{"message":{"content":"","reasoning_content":"let me think"},"finish_reason":"length"}]}"#;
        let f = parse_reply(only_thinking).unwrap_err();
        assert_eq!(f.kind, LlmError::Truncated);
        assert!(f.detail.unwrap().contains("raise max_tokens"));
        let thinking_no_content =
            br#"{"choices":[{"message":{"content":null,"reasoning":"hmm"},"finish_reason":"stop"}]}"#;
        assert_eq!(parse_reply(thinking_no_content).unwrap_err().kind, LlmError::EmptyChoices);
        let cut =
            parse_reply(br#"{"choices":[{"message":{"content":"One. Two and"},"finish_reason":"length"}]}"#).unwrap();
        assert!(cut.truncated);
    }

    #[test]
    fn cached_prompt_tokens_are_read_in_openai_and_deepseek_shapes() {
        let openai = br#"{"choices":[{"message":{"content":"a"}}],"usage":{"prompt_tokens":2000,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":1536}}}"#;
        assert_eq!(parse_reply(openai).unwrap().usage.unwrap().cached_input_tokens, 1536);
        let deepseek = br#"{"choices":[{"message":{"content":"a"}}],"usage":{"prompt_tokens":900,"completion_tokens":5,"prompt_cache_hit_tokens":640,"prompt_cache_miss_tokens":260}}"#;
        assert_eq!(parse_reply(deepseek).unwrap().usage.unwrap().cached_input_tokens, 640);
    }

    #[test]
    fn the_request_body_follows_temperature_null_the_cap_field_and_extra_body() {
        let b = body(&provider(""));
        assert_eq!((b["temperature"].as_f64(), b["max_tokens"].as_u64()), (Some(0.800000011920929), Some(200)));
        let b = body(&provider(", temperature: null, max_tokens_param: max_completion_tokens"));
        assert!(b.get("temperature").is_none() && b.get("max_tokens").is_none());
        assert_eq!(b["max_completion_tokens"], 200);
        assert!(body(&provider(", max_tokens_param: none")).get("max_tokens").is_none());
        let b = body(&provider(
            ", extra_body: { reasoning_effort: low, chat_template_kwargs: { enable_thinking: false }, cache_prompt: true, max_tokens: null, model: other }",
        ));
        assert_eq!(b["reasoning_effort"], "low");
        assert_eq!(b["chat_template_kwargs"], json!({"enable_thinking": false}));
        assert_eq!(b["cache_prompt"], true);
        assert!(b.get("max_tokens").is_none(), "null removes a field the bot sends");
        assert_eq!(b["model"], "other", "extra_body is merged after the bot's own fields");
    }

    #[test]
    fn query_and_headers_are_built_from_the_config_and_secrets_are_sensitive() {
        let cfg = provider(
            ", api_key_env: K, api_key_header: api-key, extra_query: { api-version: '2024-10-21' }, extra_headers: { HTTP-Referer: 'https://example.test', X-Title: bot, User-Agent: mine }, extra_headers_env: { X-Gateway-Token: G }",
        );
        let url = request_url("main", &cfg).unwrap();
        assert_eq!(url.to_string(), "https://api.example.test/v1/chat/completions?api-version=2024-10-21");
        let env = |v: &str| match v {
            "K" => Some("sk-secret".to_owned()),
            "G" => Some("gw-secret".to_owned()),
            _ => None,
        };
        let h = headers("main", &cfg, &env).unwrap();
        assert_eq!(h["api-key"], "sk-secret");
        assert!(h["api-key"].is_sensitive() && h["x-gateway-token"].is_sensitive());
        assert!(!h.contains_key(AUTHORIZATION), "the key goes bare in api_key_header");
        assert_eq!(h["http-referer"], "https://example.test");
        assert!(!h.contains_key(USER_AGENT), "never replaces the bot's own headers");
        let bearer = headers("main", &provider(", api_key_env: K"), &env).unwrap();
        assert_eq!(bearer[AUTHORIZATION], "Bearer sk-secret");
        assert!(!format!("{h:?}").contains("secret"), "sensitive values never print");
    }

    #[test]
    fn openai_400s_for_the_cap_and_temperature_ask_for_one_adaptation_each() {
        let max_tokens = br#"{"error":{"message":"Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.","type":"invalid_request_error","param":"max_tokens","code":"unsupported_parameter"}}"#;
        let temperature = br#"{"error":{"message":"Unsupported value: 'temperature' does not support 0.8 with this model. Only the default (1) value is supported.","type":"invalid_request_error","param":"temperature","code":"unsupported_value"}}"#;
        let fresh = Adapted { max_tokens_param: MaxTokensParam::MaxTokens, temperature: true };
        let e = ProviderError::parse(max_tokens);
        assert_eq!(e.adaptation(fresh), Some(Adaptation::MaxCompletionTokens));
        let adapted = Adapted { max_tokens_param: MaxTokensParam::MaxCompletionTokens, ..fresh };
        assert_eq!(e.adaptation(adapted), None, "never the same change twice");
        assert!(e.message.unwrap().starts_with("Unsupported parameter: 'max_tokens'"));
        assert_eq!(ProviderError::parse(temperature).adaptation(fresh), Some(Adaptation::NoTemperature));
        let other = br#"{"error":{"message":"bad","param":"messages","code":"invalid_value"}}"#;
        assert_eq!(ProviderError::parse(other).adaptation(fresh), None);
    }

    #[test]
    fn provider_messages_come_from_every_common_error_shape_cleaned_and_capped() {
        let msg = |b: &[u8]| ProviderError::parse(b).message;
        assert_eq!(msg(br#"{"error":"model not found"}"#).as_deref(), Some("model not found"));
        assert_eq!(msg(br#"{"message":"quota"}"#).as_deref(), Some("quota"));
        assert_eq!(msg(br#"{"detail":"Not Found"}"#).as_deref(), Some("Not Found"));
        assert_eq!(msg(b"<html>"), None);
        let long = format!(r#"{{"error":{{"message":"a\nb{}"}}}}"#, "x".repeat(1000));
        let m = msg(long.as_bytes()).unwrap();
        assert!(m.starts_with("a b") && m.chars().count() <= DETAIL_CHARS);
    }

    #[test]
    fn compressed_bodies_are_decoded_and_capped_after_decoding() {
        let text = br#"{"choices":[{"message":{"content":"hi"}}]}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text).unwrap();
        assert_eq!(&decode("gzip", Bytes::from(gz.finish().unwrap())).unwrap()[..], text);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(text).unwrap();
        assert_eq!(&decode("deflate", Bytes::from(z.finish().unwrap())).unwrap()[..], text);
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(text).unwrap();
        assert_eq!(&decode("deflate", Bytes::from(raw.finish().unwrap())).unwrap()[..], text);
        // 64 MiB of zeros in ~64 KiB: refused once the decoded size passes the cap.
        let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        for _ in 0..64 {
            bomb.write_all(&vec![0u8; 1024 * 1024]).unwrap();
        }
        let err = decode("gzip", Bytes::from(bomb.finish().unwrap())).unwrap_err();
        assert!(err.contains("exceeds"), "{err}");
        // The same body brotli-compressed (Python's `brotli.compress`).
        let br: &[u8] = &[
            27, 41, 0, 248, 141, 211, 21, 243, 35, 132, 117, 175, 69, 246, 210, 182, 102, 95, 151, 14, 108, 192, 129,
            83, 128, 1, 134, 203, 109, 130, 11, 215, 160, 196, 36, 166, 133, 20, 249, 237, 119, 12,
        ];
        assert_eq!(&decode("br", Bytes::from_static(br)).unwrap()[..], text);
        assert!(decode("zstd", Bytes::new()).unwrap_err().contains("unsupported Content-Encoding"));
    }

    /// Every ```yaml block of docs/providers.md as its provider's config.
    fn presets() -> BTreeMap<String, ProviderConfig> {
        let doc = include_str!("../../docs/providers.md");
        let mut yaml = String::from("bot: { name: B }\nllm:\n  providers:\n");
        for block in doc.split("```yaml\n").skip(1) {
            let block = block.split("```").next().unwrap();
            for line in block.lines() {
                yaml.push_str(&format!("    {line}\n"));
            }
        }
        yaml.push_str("channels: [ { name: c, provider: openai } ]\n");
        chatbot_core::Config::parse(&yaml, "docs/providers.md").unwrap_or_else(|e| panic!("{e}")).llm.providers
    }

    #[test]
    fn the_presets_in_docs_providers_md_build_the_requests_each_provider_documents() {
        let presets = presets();
        assert_eq!(presets.len(), 13, "one block per provider");
        let env = |v: &str| Some(format!("key-of-{v}"));
        let request = |name: &str| {
            let cfg = &presets[name];
            let url = request_url(name, cfg).unwrap().to_string();
            let h = headers(name, cfg, &env).unwrap();
            let state = Adapted { max_tokens_param: cfg.max_tokens_param, temperature: true };
            (url, h, request_body(cfg, &[], state))
        };
        let bearer = |h: &HeaderMap, var: &str| {
            h.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(&format!("Bearer key-of-{var}"))
        };
        // (name, URL, key variable sent as Bearer or None)
        for (name, url, key) in [
            ("openai", "https://api.openai.com/v1/chat/completions", Some("OPENAI_API_KEY")),
            ("openai-reasoning", "https://api.openai.com/v1/chat/completions", Some("OPENAI_API_KEY")),
            ("openrouter", "https://openrouter.ai/api/v1/chat/completions", Some("OPENROUTER_API_KEY")),
            ("anthropic", "https://api.anthropic.com/v1/chat/completions", Some("ANTHROPIC_API_KEY")),
            (
                "gemini",
                "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions",
                Some("GEMINI_API_KEY"),
            ),
            ("groq", "https://api.groq.com/openai/v1/chat/completions", Some("GROQ_API_KEY")),
            ("deepseek", "https://api.deepseek.com/v1/chat/completions", Some("DEEPSEEK_API_KEY")),
            ("mistral", "https://api.mistral.ai/v1/chat/completions", Some("MISTRAL_API_KEY")),
            ("ollama", "http://127.0.0.1:11434/v1/chat/completions", None),
            ("llamacpp", "http://127.0.0.1:8080/v1/chat/completions", None),
            ("vllm", "http://127.0.0.1:8000/v1/chat/completions", Some("VLLM_API_KEY")),
            ("lmstudio", "http://127.0.0.1:1234/v1/chat/completions", None),
        ] {
            let (u, h, _) = request(name);
            assert_eq!(u, url, "{name}");
            match key {
                Some(var) => assert!(bearer(&h, var), "{name}: Bearer key"),
                None => assert!(h.is_empty(), "{name}: no key"),
            }
        }
        // What each one does differently, as its documentation says.
        let (_, _, b) = request("openai");
        assert!(b["max_tokens"] == 200 && b.get("temperature").is_some());
        let (_, _, b) = request("openai-reasoning");
        assert!(b.get("max_tokens").is_none() && b.get("temperature").is_none());
        assert_eq!((b["max_completion_tokens"].as_u64(), b["reasoning_effort"].as_str()), (Some(2000), Some("low")));
        let (u, h, _) = request("azure");
        assert_eq!(
            u,
            "https://my-resource.openai.azure.com/openai/deployments/my-gpt-4o/chat/completions?api-version=2024-10-21"
        );
        assert!(h["api-key"] == "key-of-AZURE_OPENAI_API_KEY" && !h.contains_key(AUTHORIZATION));
        let (_, h, b) = request("openrouter");
        assert!(h.contains_key("http-referer") && h["x-title"] == "KrytenBot");
        assert_eq!(b["provider"], json!({"sort": "price"}));
        assert_eq!(request("gemini").2["reasoning_effort"], "low");
        let (_, _, b) = request("groq");
        assert!(b.get("max_tokens").is_none() && b["max_completion_tokens"] == 200);
        assert_eq!(request("llamacpp").2["cache_prompt"], true);
        assert_eq!(request("vllm").2["chat_template_kwargs"], json!({"enable_thinking": false}));
        assert_eq!(request("anthropic").2["temperature"].as_f64().map(|t| (t * 10.0).round()), Some(7.0));
    }
}
