//! Connecting to NATS: auth and TLS from the config, secrets from the environment,
//! retries until `connect_timeout`, and connection-state events for the engine.
//!
//! After the first connection async-nats reconnects by itself (forever, with backoff)
//! and re-subscribes; we only relay its Connected/Disconnected events.

use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions, Event, ServerAddr};
use chatbot_core::config::NatsConfig;
use tokio::sync::mpsc::UnboundedSender;

/// Why NATS could not be reached at start-up.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// A server URL does not parse.
    #[error("nats.servers: invalid server URL `{url}`: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A secret's environment variable is not set.
    #[error("nats.{key}: environment variable {var} is not set")]
    MissingSecret {
        /// `password_env` or `token_env`.
        key: &'static str,
        /// The variable.
        var: String,
    },
    /// The creds file cannot be read.
    #[error("nats.creds_file: cannot read {path}: {reason}")]
    Creds {
        /// Path.
        path: String,
        /// Why.
        reason: String,
    },
    /// Retried until `connect_timeout`.
    #[error("cannot connect to NATS at {servers} within {timeout:?}: {last}")]
    Unreachable {
        /// Servers tried.
        servers: String,
        /// The configured timeout.
        timeout: Duration,
        /// The last error.
        last: String,
    },
}

/// Connection state changes relayed to the daemon: `true` connected, `false` lost.
pub type StateSender = UnboundedSender<bool>;

async fn options(
    cfg: &NatsConfig,
    name: &str,
    state: StateSender,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<ConnectOptions, NatsError> {
    let mut o = ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        .connection_timeout(cfg.connect_timeout.clamp(Duration::from_millis(200), Duration::from_secs(5)))
        // async-nats asks for a delay before every attempt, the first one included: try
        // at once, then back off exponentially up to 5 s.
        .reconnect_delay_callback(|attempts| match attempts {
            0 | 1 => Duration::ZERO,
            n => Duration::from_millis((50u64 << (n - 1).min(7)).min(5_000)),
        })
        .event_callback(move |event| {
            let state = state.clone();
            async move {
                match event {
                    Event::Connected => {
                        let _ = state.send(true);
                    }
                    Event::Disconnected => {
                        let _ = state.send(false);
                    }
                    other => tracing::warn!(event = %other, "nats event"),
                }
            }
        });
    if let Some(var) = &cfg.password_env {
        let password = env(var).ok_or_else(|| NatsError::MissingSecret { key: "password_env", var: var.clone() })?;
        o = o.user_and_password(cfg.user.clone().unwrap_or_default(), password);
    }
    if let Some(var) = &cfg.token_env {
        let token = env(var).ok_or_else(|| NatsError::MissingSecret { key: "token_env", var: var.clone() })?;
        o = o.token(token);
    }
    if let Some(path) = &cfg.creds_file {
        o = o
            .credentials_file(path)
            .await
            .map_err(|e| NatsError::Creds { path: path.clone(), reason: e.to_string() })?;
    }
    let tls = &cfg.tls;
    if let Some(ca) = &tls.ca_file {
        o = o.add_root_certificates(ca.into());
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        o = o.add_client_certificate(cert.into(), key.into());
    }
    if tls.ca_file.is_some() || tls.cert_file.is_some() {
        o = o.require_tls(true);
    }
    Ok(o)
}

/// Connects, retrying with backoff until `connect_timeout` has passed.
pub async fn connect(
    cfg: &NatsConfig,
    name: &str,
    state: StateSender,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Client, NatsError> {
    let servers: Vec<ServerAddr> = cfg
        .servers
        .iter()
        .map(|s| s.parse::<ServerAddr>().map_err(|e| NatsError::BadUrl { url: s.clone(), reason: e.to_string() }))
        .collect::<Result<_, _>>()?;
    let deadline = Instant::now() + cfg.connect_timeout;
    let mut backoff = Duration::from_millis(100);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        let opts = options(cfg, name, state.clone(), &env).await?;
        let last = match tokio::time::timeout(remaining, opts.connect(servers.clone())).await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        if Instant::now() + backoff >= deadline {
            return Err(NatsError::Unreachable { servers: cfg.servers.join(", "), timeout: cfg.connect_timeout, last });
        }
        tracing::info!(error = %last, retry_in_ms = backoff.as_millis() as u64, "nats not reachable yet");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}
