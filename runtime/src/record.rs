//! `llm-chatbot record`: captures the configured channels' Kryten events into a corpus.
//!
//! Each NATS message body (a Kryten envelope) becomes one JSONL line, flushed as it is
//! written, so stopping the recorder (Ctrl-C, SIGTERM, `--duration`) loses nothing it
//! already received. A body that is not JSON is skipped and counted, never written: a
//! corpus must replay.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::signal::unix::SignalKind;

use crate::daemon::{handler, StartError};
use crate::kryten;
use crate::load_config;

/// What a recording did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Envelopes written.
    pub written: u64,
    /// Bodies skipped because they were not JSON.
    pub skipped: u64,
}

/// Records until a signal or `duration`, appending to `output`.
pub async fn record(config_path: &Path, output: &Path, duration: Option<Duration>) -> Result<Recorded, StartError> {
    let config = load_config(config_path)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(output)
        .map_err(|e| StartError::Output { path: output.display().to_string(), reason: e.to_string() })?;
    let mut out = std::io::BufWriter::new(file);
    let (state_tx, _state_rx) = tokio::sync::mpsc::unbounded_channel();
    let name = format!("llm-chatbot recorder ({})", config.kryten.service_name);
    let client = crate::nats::connect(&config.nats, &name, state_tx, |v| std::env::var(v).ok()).await?;
    let mut streams = Vec::new();
    for ch in &config.channels {
        let subject = kryten::event_subject(config.nats.subjects, &ch.name);
        let sub = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| StartError::Subscribe { subject, reason: e.to_string() })?;
        streams.push(sub);
    }
    let _ = client.flush().await;
    let mut all = futures_util::stream::select_all(streams);
    let mut term = handler(SignalKind::terminate(), "SIGTERM")?;
    let mut int = handler(SignalKind::interrupt(), "SIGINT")?;
    let started = Instant::now();
    let until = duration.map(|d| tokio::time::Instant::now() + d);
    let far = tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let mut stats = Recorded::default();
    tracing::info!(channels = config.channels.len(), output = %output.display(), "recording");
    loop {
        tokio::select! {
            Some(msg) = all.next() => {
                // One line per envelope: re-encode compactly only if it spans lines.
                let line = match serde_json::from_slice::<serde_json::Value>(&msg.payload) {
                    Ok(v) if msg.payload.contains(&b'\n') => v.to_string().into_bytes(),
                    Ok(_) => msg.payload.to_vec(),
                    Err(_) => {
                        stats.skipped += 1;
                        continue;
                    }
                };
                let written = out.write_all(&line).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush());
                if let Err(e) = written {
                    tracing::error!(error = %e, "cannot write the corpus; stopping");
                    break;
                }
                stats.written += 1;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tokio::time::sleep_until(until.unwrap_or(far)) => break,
        }
    }
    tracing::info!(
        written = stats.written,
        skipped = stats.skipped,
        seconds = started.elapsed().as_secs(),
        "recording stopped"
    );
    Ok(stats)
}
