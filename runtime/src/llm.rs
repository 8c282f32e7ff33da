//! The LLM client: OpenAI-compatible `POST {base_url}/chat/completions` over hyper.
//!
//! Hand-written on purpose (it is small and ours): one pooled HTTP/1.1 client for every
//! provider (HTTPS via rustls with ring, or plain HTTP), a timeout per attempt, bounded
//! retries on connect errors, 5xx and 429 on the schedule of
//! `ProviderConfig::retry_delay` (exponential, honouring `Retry-After`), a 1 MiB cap on response bodies, and failures mapped to the engine's
//! [`LlmError`] kinds. The API key is read from the environment once, kept in a
//! sensitive header value, and never formatted into a log line or error.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chatbot_core::config::ProviderConfig;
use chatbot_core::{LlmError, LlmReply, PromptMessage, Usage};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::json;

/// Largest response body read; a bigger one is `Malformed`.
const MAX_BODY: usize = 1024 * 1024;

/// One provider, ready to call.
struct Provider {
    cfg: ProviderConfig,
    url: hyper::Uri,
    auth: Option<HeaderValue>,
}

/// Every configured provider behind one connection pool.
pub struct LlmClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    providers: BTreeMap<String, Provider>,
}

/// A provider that cannot be used as configured.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `base_url` is not a valid URL.
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
}

/// What one completed request reports, for metrics and logs.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Reply or failure kind.
    pub result: Result<LlmReply, LlmError>,
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
}

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
}

enum Attempt {
    Done(Result<LlmReply, LlmError>),
    Retry { error: LlmError, after: Option<Duration> },
}

impl LlmClient {
    /// Builds the client; `key_of` reads an environment variable (injected for tests).
    pub fn new(
        providers: &BTreeMap<String, ProviderConfig>,
        key_of: impl Fn(&str) -> Option<String>,
    ) -> Result<LlmClient, ClientError> {
        // Mozilla's roots, compiled in: no file I/O at start-up (loading the system store
        // took ~200 ms here, most of the time to "ready").
        // No Nagle: a request (headers, then body) leaves at once instead of waiting for
        // the peer's ACK of the first segment.
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let http = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(https);
        let mut out = BTreeMap::new();
        for (name, cfg) in providers {
            let url: hyper::Uri =
                format!("{}/chat/completions", cfg.base_url).parse().map_err(|e: hyper::http::uri::InvalidUri| {
                    ClientError::BadUrl { provider: name.clone(), reason: e.to_string() }
                })?;
            let auth = match cfg.api_key_env.as_deref().and_then(&key_of) {
                Some(key) => {
                    let mut v = HeaderValue::from_str(&format!("Bearer {}", key.trim())).map_err(|_| {
                        ClientError::BadKey { provider: name.clone(), var: cfg.api_key_env.clone().unwrap_or_default() }
                    })?;
                    v.set_sensitive(true);
                    Some(v)
                }
                None => None,
            };
            out.insert(name.clone(), Provider { cfg: cfg.clone(), url, auth });
        }
        Ok(LlmClient { http, providers: out })
    }

    /// Builds the client with keys from the process environment.
    pub fn from_env(providers: &BTreeMap<String, ProviderConfig>) -> Result<LlmClient, ClientError> {
        LlmClient::new(providers, |var| std::env::var(var).ok())
    }

    /// Names of providers whose key variable is configured but unset.
    pub fn providers_without_key<'a>(&'a self) -> impl Iterator<Item = &'a str> + 'a {
        self.providers.iter().filter(|(_, p)| p.cfg.api_key_env.is_some() && p.auth.is_none()).map(|(n, _)| n.as_str())
    }

    /// Runs one chat completion with retries. Never panics; every failure is a kind.
    pub async fn complete(&self, provider: &str, messages: &[PromptMessage]) -> Outcome {
        let started = Instant::now();
        let Some(p) = self.providers.get(provider) else {
            return Outcome { result: Err(LlmError::Connect), elapsed: started.elapsed(), attempts: 0 };
        };
        let body = Bytes::from(
            json!({
                "model": p.cfg.model,
                "messages": messages.iter().map(|m| json!({"role": m.role.as_str(), "content": m.content})).collect::<Vec<_>>(),
                "temperature": p.cfg.temperature,
                "max_tokens": p.cfg.max_tokens,
            })
            .to_string(),
        );
        let mut attempts = 0;
        loop {
            attempts += 1;
            let attempt = match tokio::time::timeout(p.cfg.timeout, self.attempt(p, body.clone())).await {
                Ok(a) => a,
                Err(_) => Attempt::Retry { error: LlmError::Timeout, after: None },
            };
            match attempt {
                Attempt::Done(result) => return Outcome { result, elapsed: started.elapsed(), attempts },
                Attempt::Retry { error, after } => {
                    // The engine's deadline for this request is derived from the same
                    // schedule (`ProviderConfig::worst_case`).
                    let Some(delay) = p.cfg.retry_delay(attempts, after) else {
                        return Outcome { result: Err(error), elapsed: started.elapsed(), attempts };
                    };
                    tracing::debug!(
                        provider,
                        attempt = attempts,
                        error = error.label(),
                        delay_ms = delay.as_millis() as u64,
                        "llm retry"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn attempt(&self, p: &Provider, body: Bytes) -> Attempt {
        let mut req = Request::post(p.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("llm-chatbot/", env!("CARGO_PKG_VERSION")));
        if let Some(auth) = &p.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let Ok(req) = req.body(Full::new(body)) else { return Attempt::Done(Err(LlmError::Connect)) };
        let resp = match self.http.request(req).await {
            Ok(r) => r,
            // Connect errors and connections dropped mid-request are both worth a retry.
            Err(_) => return Attempt::Retry { error: LlmError::Connect, after: None },
        };
        let status = resp.status();
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            let after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64);
            return Attempt::Retry { error: LlmError::Status(status.as_u16()), after };
        }
        if !status.is_success() {
            return Attempt::Done(Err(LlmError::Status(status.as_u16())));
        }
        let bytes = match Limited::new(resp.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return Attempt::Done(Err(LlmError::Malformed)),
        };
        Attempt::Done(parse_reply(&bytes))
    }
}

/// Reads an OpenAI chat-completion body.
pub fn parse_reply(body: &[u8]) -> Result<LlmReply, LlmError> {
    let parsed: ChatResponse = serde_json::from_slice(body).map_err(|_| LlmError::Malformed)?;
    let text = parsed
        .choices
        .into_iter()
        .next()
        .and_then(|c| c.message)
        .and_then(|m| m.content)
        .filter(|t| !t.trim().is_empty())
        .ok_or(LlmError::EmptyChoices)?;
    let usage = parsed.usage.map(|u| Usage { input_tokens: u.prompt_tokens, output_tokens: u.completion_tokens });
    Ok(LlmReply { text, usage })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_bodies_parse_to_text_and_usage() {
        let r = parse_reply(br#"{"choices":[{"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":5,"completion_tokens":1}}"#).unwrap();
        assert_eq!(r.text, "hi");
        assert_eq!(r.usage, Some(Usage { input_tokens: 5, output_tokens: 1 }));
    }

    #[test]
    fn empty_and_malformed_bodies_are_typed_errors() {
        assert_eq!(parse_reply(br#"{"choices":[]}"#), Err(LlmError::EmptyChoices));
        assert_eq!(parse_reply(br#"{"choices":[{"message":{"content":"  "}}]}"#), Err(LlmError::EmptyChoices));
        assert_eq!(parse_reply(br#"{"choices":[{"message":{"content":null}}]}"#), Err(LlmError::EmptyChoices));
        assert_eq!(parse_reply(b"<html>bad gateway</html>"), Err(LlmError::Malformed));
    }
}
