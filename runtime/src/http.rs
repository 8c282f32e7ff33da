//! `GET /health` and `GET /metrics` on hyper.
//!
//! Served on a thread of its own, from shared state the daemon refreshes, never by
//! asking the engine task: a busy event loop cannot slow a health probe, and a flood of
//! probes cannot slow the event loop. /health always answers 200: `status` says
//! `degraded` (and `reasons` why) while NATS is down, or with `ha` while the lease
//! bucket does not answer or a channel has had no owner anywhere for longer than the
//! lease TTL. Anything else is 404; a malformed request only closes
//! its own connection.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use chatbot_core::ChannelStatus;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// What /health reports, refreshed by the daemon.
#[derive(Debug, Clone, Default)]
pub struct HealthState {
    /// Connected to NATS right now.
    pub nats_connected: bool,
    /// NATS reconnections since start.
    pub reconnects: u64,
    /// The name of the NATS server connected to.
    pub nats_server: Option<String>,
    /// Per channel.
    pub channels: Vec<ChannelStatus>,
    /// Per provider: consecutive failures and the last failure kind.
    pub providers: BTreeMap<String, ProviderHealth>,
    /// Shutdown in progress.
    pub shutting_down: bool,
    /// Tokens spent over all channels in the last hour and day.
    pub spend: (u64, u64),
    /// Leases (`ha`): figures and who speaks for each channel.
    pub ha: Option<Value>,
    /// The engine's seed and start.
    pub session: Option<crate::kryten::Session>,
    /// Why `status` is `degraded`, in words (empty: `ok`).
    pub problems: Vec<String>,
}

/// One provider's recent record.
#[derive(Debug, Clone, Default)]
pub struct ProviderHealth {
    /// Failures since the last success.
    pub consecutive_failures: u64,
    /// The last failure: its label and why, in words.
    pub last_error: Option<String>,
    /// Requests answered successfully.
    pub ok: u64,
    /// Prompt tokens reported (cached ones included).
    pub input_tokens: u64,
    /// Of those, served from the provider's prompt cache.
    pub cached_input_tokens: u64,
    /// Completion tokens reported.
    pub output_tokens: u64,
    /// Spend at `price_per_million`.
    pub cost: f64,
}

/// Everything the HTTP handlers read.
pub struct Shared {
    /// Health snapshot, and its rendering while it has not changed.
    health: Mutex<(HealthState, Option<Bytes>)>,
    /// Metric families.
    pub metrics: Metrics,
    /// Process start.
    pub started: Instant,
}

impl Shared {
    /// Shared state for a daemon started at `started`.
    pub fn new(metrics: Metrics, started: Instant) -> Shared {
        Shared { health: Mutex::new((HealthState::default(), None)), metrics, started }
    }

    /// The snapshot and its rendering. A panic elsewhere while it was held leaves a
    /// snapshot that is still whole (every change is a plain assignment): keep serving it.
    fn health(&self) -> MutexGuard<'_, (HealthState, Option<Bytes>)> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the health snapshot.
    pub fn update_health(&self, f: impl FnOnce(&mut HealthState)) {
        let mut h = self.health();
        f(&mut h.0);
        h.1 = None;
    }

    /// The /health document.
    pub fn health_json(&self) -> Value {
        let mut doc = document(&self.health().0);
        doc["uptime_seconds"] = json!(self.uptime());
        doc
    }

    /// The /health body: rendered once per change of the snapshot (the daemon refreshes
    /// it four times a second), with the uptime put in per request.
    fn health_body(&self) -> Bytes {
        let rendered = {
            let (state, rendered) = &mut *self.health();
            rendered.get_or_insert_with(|| Bytes::from(document(state).to_string())).clone()
        };
        // `rendered` is a JSON object with at least one member: `{` + members + `}`.
        let mut body = format!("{{\"uptime_seconds\":{},", self.uptime()).into_bytes();
        body.extend_from_slice(&rendered[1..]);
        Bytes::from(body)
    }

    fn uptime(&self) -> f64 {
        (self.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
    }
}

/// The /health document without the uptime.
fn document(h: &HealthState) -> Value {
    let queue: usize = h.channels.iter().map(|c| c.queued).sum();
    let mut doc = json!({
        "status": if h.nats_connected && h.problems.is_empty() { "ok" } else { "degraded" },
        "reasons": h.problems,
        "version": env!("CARGO_PKG_VERSION"),
        "shutting_down": h.shutting_down,
        "nats": {"state": if h.nats_connected { "connected" } else { "disconnected" }, "server": h.nats_server, "queue_depth": queue, "reconnects": h.reconnects},
        "llm": {"providers": h.providers.iter().map(|(name, p)| (name.clone(), json!({
            "state": if p.consecutive_failures == 0 { "ok" } else { "failing" },
            "consecutive_failures": p.consecutive_failures,
            "last_error": p.last_error,
            "ok": p.ok,
            "tokens": {"input": p.input_tokens, "cached_input": p.cached_input_tokens, "output": p.output_tokens},
            "cost": (p.cost * 1e6).round() / 1e6,
        }))).collect::<serde_json::Map<_, _>>()},
        "spend": {"tokens_last_hour": h.spend.0, "tokens_last_day": h.spend.1},
        "channels": h.channels.iter().map(|c| json!({
            "name": c.name, "context_size": c.context_len, "in_flight": c.in_flight, "queued": c.queued,
            "tokens_last_hour": c.tokens_hour, "tokens_last_day": c.tokens_day,
            "muted": c.muted, "users": c.users, "playing": c.playing,
        })).collect::<Vec<_>>(),
    });
    if let Some(ha) = &h.ha {
        doc["ha"] = ha.clone();
    }
    if let Some(s) = h.session {
        doc["seed"] = json!(s.seed);
        doc["session_start"] = json!(s.start.to_rfc3339());
    }
    doc
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => respond(StatusCode::OK, "application/json", shared.health_body()),
        (&Method::GET, "/metrics") => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics.render(),
        ),
        (_, "/health" | "/metrics") => respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n"),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found: try /health or /metrics\n"),
    })
}

/// Binds `addr` (failing at once if it cannot, e.g. port in use).
pub fn bind(addr: &str) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves on a thread of its own (with its own small runtime), so a busy event loop
/// cannot slow a health probe and a flood of probes cannot slow the event loop. The
/// thread lives as long as the process.
pub fn spawn(listener: std::net::TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("http".into()).spawn(move || {
        runtime.block_on(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => serve(listener, shared).await,
                Err(e) => tracing::error!(error = %e, "http: cannot use the listener"),
            }
        })
    })?;
    Ok(())
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _peer): (_, SocketAddr) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| route(shared.clone(), req));
            // A bad request or a dropped client ends this connection only.
            let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
