//! The I/O half of `ha:`: channel leases in a JetStream key-value bucket.
//!
//! The engine decides (see `chatbot_core::lease`); this module performs its
//! [`LeaseOp`]s against two buckets and reports every outcome as a [`LeaseEvent`]:
//!
//! * `{ha.bucket}`: one key per channel holding `{"instance","at"}`; history 1 and
//!   `max_age = lease_ttl`, so a key that is not rewritten disappears after the TTL.
//!   Acquire = create (fails while the key exists), renew = update on our revision,
//!   release = delete on our revision.
//! * `{ha.bucket}_state`: the limit state each owner leaves for the next one (the lease
//!   key itself cannot carry it: it expires exactly when a successor needs it). Kept a
//!   day.
//!
//! Operations of one channel run in order on that channel's own task; channels run in
//! parallel. Every operation has a deadline, so the engine always hears back.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_nats::Client;
use chatbot_core::config::HaConfig;
use chatbot_core::{LeaseEvent, LeaseOp, LimitSnapshot};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

/// How long the state bucket keeps a channel's limits.
const STATE_MAX_AGE: Duration = Duration::from_secs(86_400);

/// Why `ha` could not start.
#[derive(Debug, thiserror::Error)]
#[error("ha: cannot open the lease bucket `{bucket}` (JetStream must be enabled on the NATS server, e.g. nats-server -js): {reason}")]
pub struct HaError {
    bucket: String,
    reason: String,
}

/// The lease key of a channel: `c.` + the lower-cased name, bytes outside
/// `[A-Za-z0-9_-]` written as `=XX` (KV keys allow few characters).
pub fn lease_key(channel: &str) -> String {
    let mut k = String::from("c.");
    for b in channel.to_lowercase().bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            k.push(b as char);
        } else {
            k.push_str(&format!("={b:02X}"));
        }
    }
    k
}

/// The channel (lower-cased) a lease key names; `None` for other keys.
pub fn channel_of_key(key: &str) -> Option<String> {
    let rest = key.strip_prefix("c.")?;
    let mut bytes = Vec::with_capacity(rest.len());
    let mut it = rest.bytes();
    while let Some(b) = it.next() {
        if b == b'=' {
            let hex = [it.next()?, it.next()?];
            bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            bytes.push(b);
        }
    }
    String::from_utf8(bytes).ok()
}

/// The instance id when `ha.instance` is empty.
pub fn default_instance(hostname: &str) -> String {
    format!("{hostname}-{}", std::process::id())
}

/// Opened buckets and the per-channel workers.
pub struct Ha {
    leases: kv::Store,
    state: kv::Store,
    instance: String,
    op_timeout: Duration,
    events: mpsc::UnboundedSender<LeaseEvent>,
    workers: HashMap<String, mpsc::UnboundedSender<LeaseOp>>,
}

async fn open_bucket(js: &jetstream::Context, bucket: &str, max_age: Duration) -> Result<kv::Store, HaError> {
    let err = |e: &dyn std::fmt::Display| HaError { bucket: bucket.to_owned(), reason: e.to_string() };
    // The stream a key-value bucket is, made directly: async-nats' `create_key_value`
    // first reads account info in a shape nats-server 2.9 (Debian 12's) does not send.
    let config = jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: jetstream::stream::StorageType::File,
        num_replicas: 1,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    match js.get_or_create_stream(config).await {
        // Keys vanishing sooner than holders stop trusting them would allow two owners.
        Ok(stream) if stream.cached_info().config.max_age < max_age => {
            let have = stream.cached_info().config.max_age;
            return Err(err(&format!(
                "it exists with max_age {have:?}, shorter than ha.lease_ttl {max_age:?}; delete it while no instance runs, or set lease_ttl to at most {have:?}"
            )));
        }
        Ok(stream) if stream.cached_info().config.max_age > max_age => {
            tracing::warn!(bucket, max_age = ?stream.cached_info().config.max_age, "the bucket exists with a longer max_age than ha.lease_ttl; crash failover takes that long");
        }
        Ok(_) => {}
        Err(e) => return Err(err(&e)),
    }
    js.get_key_value(bucket).await.map_err(|e| err(&e))
}

impl Ha {
    /// Opens (creating if missing) both buckets. Outcomes go to `events`.
    pub async fn open(
        client: &Client,
        cfg: &HaConfig,
        events: mpsc::UnboundedSender<LeaseEvent>,
    ) -> Result<Ha, HaError> {
        let js = jetstream::new(client.clone());
        let leases = open_bucket(&js, &cfg.bucket, cfg.lease_ttl).await?;
        let state = open_bucket(&js, &format!("{}_state", cfg.bucket), STATE_MAX_AGE).await?;
        Ok(Ha {
            leases,
            state,
            instance: cfg.instance.clone(),
            op_timeout: (cfg.lease_ttl / 4).clamp(Duration::from_millis(200), Duration::from_secs(5)),
            events,
            workers: HashMap::new(),
        })
    }

    /// Queues `op` on its channel's worker.
    pub fn execute(&mut self, op: LeaseOp) {
        let tx = self.workers.entry(op.channel().to_lowercase()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let w = Worker {
                leases: self.leases.clone(),
                state: self.state.clone(),
                instance: self.instance.clone(),
                timeout: self.op_timeout,
                events: self.events.clone(),
            };
            tokio::spawn(w.run(rx));
            tx
        });
        let _ = tx.send(op);
    }

    /// Forwards the lease bucket's changes (`Seen`, `Free`) until the daemon stops;
    /// re-watches after an error.
    pub fn watch(&self, names: impl Fn(&str) -> Option<String> + Send + 'static) -> tokio::task::JoinHandle<()> {
        let (store, events) = (self.leases.clone(), self.events.clone());
        tokio::spawn(async move {
            loop {
                match store.watch_all().await {
                    Ok(mut w) => {
                        while let Some(entry) = w.next().await {
                            let Ok(entry) = entry else { break };
                            let Some(channel) = names(&entry.key) else { continue };
                            let ev = match entry.operation {
                                kv::Operation::Put => {
                                    let owner = serde_json::from_slice::<serde_json::Value>(&entry.value)
                                        .ok()
                                        .and_then(|v| v.get("instance").and_then(|i| i.as_str()).map(str::to_owned));
                                    match owner {
                                        Some(owner) => LeaseEvent::Seen { channel, owner },
                                        None => continue,
                                    }
                                }
                                kv::Operation::Delete | kv::Operation::Purge => LeaseEvent::Free { channel },
                            };
                            if events.send(ev).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "lease watch failed; retrying"),
                }
                if events.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }
}

/// One channel's operations, in order.
struct Worker {
    leases: kv::Store,
    state: kv::Store,
    instance: String,
    timeout: Duration,
    events: mpsc::UnboundedSender<LeaseEvent>,
}

impl Worker {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<LeaseOp>) {
        while let Some(op) = rx.recv().await {
            let channel = op.channel().to_owned();
            let answer = match tokio::time::timeout(self.timeout, self.perform(op)).await {
                Ok(answer) => answer,
                Err(_) => Some(LeaseEvent::Failed { channel: channel.clone() }),
            };
            if let Some(ev) = answer {
                if self.events.send(ev).is_err() {
                    return;
                }
            }
        }
    }

    fn value(&self) -> bytes::Bytes {
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        json!({"instance": self.instance, "at": at}).to_string().into()
    }

    async fn save(&self, key: &str, state: &LimitSnapshot) -> bool {
        match serde_json::to_vec(state) {
            Ok(body) => self.state.put(key, body.into()).await.is_ok(),
            Err(_) => false,
        }
    }

    async fn perform(&self, op: LeaseOp) -> Option<LeaseEvent> {
        match op {
            LeaseOp::Acquire { channel } => {
                let key = lease_key(&channel);
                Some(match self.leases.create(&key, self.value()).await {
                    Ok(revision) => {
                        let state = match self.state.get(&key).await {
                            Ok(Some(body)) => serde_json::from_slice(&body).ok(),
                            _ => None,
                        };
                        LeaseEvent::Acquired { channel, revision, state }
                    }
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => LeaseEvent::Taken { channel },
                    Err(e) => {
                        tracing::debug!(channel, error = %e, "lease acquire failed");
                        LeaseEvent::Failed { channel }
                    }
                })
            }
            LeaseOp::Renew { channel, revision } => {
                Some(match self.leases.update(lease_key(&channel), self.value(), revision).await {
                    Ok(revision) => LeaseEvent::Renewed { channel, revision },
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => LeaseEvent::Taken { channel },
                    Err(e) => {
                        tracing::debug!(channel, error = %e, "lease renewal failed");
                        LeaseEvent::Failed { channel }
                    }
                })
            }
            LeaseOp::Save { channel, state } => {
                if !self.save(&lease_key(&channel), &state).await {
                    tracing::debug!(channel, "saving limit state failed");
                }
                None
            }
            LeaseOp::Release { channel, revision, state } => {
                let key = lease_key(&channel);
                self.save(&key, &state).await;
                Some(match self.leases.delete_expect_revision(&key, Some(revision)).await {
                    Ok(()) => LeaseEvent::Released { channel },
                    Err(e) => {
                        tracing::debug!(channel, error = %e, "lease release failed");
                        LeaseEvent::Failed { channel }
                    }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_keys_are_valid_kv_keys_and_distinct() {
        assert_eq!(lease_key("Lounge"), "c.lounge");
        assert_eq!(lease_key("my.room"), "c.my=2Eroom");
        assert_eq!(lease_key("café"), "c.caf=C3=A9");
        assert_ne!(lease_key("a.b"), lease_key("a_b"));
        for name in ["lounge", "my.room", "café", "a=b"] {
            assert_eq!(channel_of_key(&lease_key(name)).as_deref(), Some(name));
        }
        assert_eq!(channel_of_key("other"), None);
    }
}
