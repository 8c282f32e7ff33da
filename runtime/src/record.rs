//! `llm-chatbot record`: captures the configured channels' Kryten events into a corpus,
//! and what the bot did: its sessions (seed and start, from its lifecycle `startup`
//! announcements; a discovery poll at start makes a running bot repeat its own) and the
//! commands it published, as notes (`//# {json}` lines older readers skip; see
//! `chatbot_sim::recording`). Replay then reproduces the live session.
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

use chatbot_core::config::CommandScheme;
use chatbot_sim::recording::Note;

use crate::daemon::{handler, wall_clock, StartError};
use crate::kryten;
use crate::load_config;

/// What a recording did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Envelopes written.
    pub written: u64,
    /// Bodies skipped because they were not JSON.
    pub skipped: u64,
    /// Notes written: the bot's sessions and commands.
    pub notes: u64,
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
    // The bot's side: its commands and its startup announcements.
    let service = config.kryten.service_name.clone();
    let channels: Vec<String> = config.channels.iter().map(|c| c.name.clone()).collect();
    let mut own_subjects = vec![format!("kryten.lifecycle.{service}.startup")];
    match config.nats.commands {
        CommandScheme::Robot => own_subjects.push("kryten.robot.command".into()),
        CommandScheme::Legacy => own_subjects
            .extend(channels.iter().map(|c| format!("kryten.commands.cytube.{}.>", kryten::normalize_token(c)))),
    }
    let mut own = Vec::new();
    for subject in own_subjects {
        let sub = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| StartError::Subscribe { subject, reason: e.to_string() })?;
        own.push(sub);
    }
    let _ = client.flush().await;
    let mut all = futures_util::stream::select_all(streams);
    let mut own = futures_util::stream::select_all(own);
    let mut term = handler(SignalKind::terminate(), "SIGTERM")?;
    let mut int = handler(SignalKind::interrupt(), "SIGINT")?;
    let started = Instant::now();
    let until = duration.map(|d| tokio::time::Instant::now() + d);
    let far = tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let mut stats = Recorded::default();
    let write = |out: &mut std::io::BufWriter<std::fs::File>, line: &[u8]| {
        out.write_all(line).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush())
    };
    let opening = Note::Recording { at: wall_clock(), service: service.clone() };
    if let Err(e) = write(&mut out, opening.to_line().as_bytes()) {
        return Err(StartError::Output { path: output.display().to_string(), reason: e.to_string() });
    }
    // A running bot answers a discovery poll with its startup announcement (its session).
    let poll = serde_json::json!({"service": name, "timestamp": wall_clock().to_rfc3339()});
    if let Err(e) = client.publish("kryten.service.discovery.poll", poll.to_string().into()).await {
        tracing::warn!(error = %e, "cannot poll for the bot's session");
    }
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
                if let Err(e) = write(&mut out, &line) {
                    tracing::error!(error = %e, "cannot write the corpus; stopping");
                    break;
                }
                stats.written += 1;
            }
            Some(msg) = own.next() => {
                let now = wall_clock();
                let note = if msg.subject.as_str().starts_with("kryten.lifecycle.") {
                    kryten::session_note(&msg.payload, now)
                } else {
                    kryten::command_note(msg.subject.as_str(), &msg.payload, &service, &channels, now).map(Note::Command)
                };
                let Some(note) = note else { continue };
                if let Err(e) = write(&mut out, note.to_line().as_bytes()) {
                    tracing::error!(error = %e, "cannot write the corpus; stopping");
                    break;
                }
                stats.notes += 1;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tokio::time::sleep_until(until.unwrap_or(far)) => break,
        }
    }
    tracing::info!(
        written = stats.written,
        skipped = stats.skipped,
        notes = stats.notes,
        seconds = started.elapsed().as_secs(),
        "recording stopped"
    );
    Ok(stats)
}
