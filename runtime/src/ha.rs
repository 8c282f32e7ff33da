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
//!   day. Read from the stream's leader (no direct gets: on a replicated stream a
//!   follower may answer those with a state a moment old).
//!
//! Both are streams with `ha.replicas` replicas, so a cluster that loses a node keeps
//! them once it has elected new leaders.
//!
//! Operations of one channel run in order on that channel's own task; channels run in
//! parallel. Every operation has a deadline, so the engine always hears back. Whether
//! the bucket answers is tracked in a [`Reach`] shared by all of them (health, logs,
//! metrics).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use async_nats::{Client, ServerInfo};
use chatbot_core::config::HaConfig;
use chatbot_core::{LeaseEvent, LeaseOp, LimitSnapshot};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

use crate::metrics::LeaseFailures;

/// How long the state bucket keeps a channel's limits.
const STATE_MAX_AGE: Duration = Duration::from_secs(86_400);

/// Why `ha` could not start.
#[derive(Debug, thiserror::Error)]
#[error("ha: cannot open the lease bucket `{bucket}` (JetStream must be enabled on the NATS server, e.g. nats-server -js): {reason}")]
pub struct HaError {
    bucket: String,
    reason: String,
}

/// Most replicas chosen when `ha.replicas` is not set.
const AUTO_REPLICAS_MAX: usize = 3;

/// The replicas both buckets get: `ha.replicas` when set; otherwise 1 on a single
/// server and, on a cluster, one per node the server reports (its `connect_urls`, which
/// list every server of the cluster) up to 3. The second value says why, for the log.
pub fn replicas(configured: Option<usize>, info: &ServerInfo) -> (usize, &'static str) {
    if let Some(n) = configured {
        return (n, "ha.replicas");
    }
    if info.cluster.is_none() {
        return (1, "a single server");
    }
    let mut nodes: Vec<&str> = info.connect_urls.iter().map(String::as_str).collect();
    nodes.sort_unstable();
    nodes.dedup();
    match nodes.len() {
        0 => (1, "a cluster that does not advertise its servers: set ha.replicas"),
        n => (n.min(AUTO_REPLICAS_MAX), "one per cluster node, at most 3"),
    }
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
    reach: Reach,
    replicas: usize,
    /// A watch quiet this long has stalled: two renewal periods (owners rewrite their
    /// keys every third of a TTL; its consumer may have died with a node this client
    /// was not connected to, which no reconnect reveals).
    watch_idle: Duration,
    /// Longest a new watch may take to start (its consumer is made by the stream's
    /// leader, which may be being elected): half a TTL, 0.5-5 s.
    watch_setup: Duration,
}

/// How one bucket is made.
struct BucketSpec<'a> {
    name: &'a str,
    max_age: Duration,
    replicas: usize,
    /// Direct gets (served by any replica): only where no read must be current.
    direct: bool,
}

async fn open_bucket(js: &jetstream::Context, spec: BucketSpec<'_>) -> Result<kv::Store, HaError> {
    let bucket = spec.name;
    let err = |e: &dyn std::fmt::Display| HaError { bucket: bucket.to_owned(), reason: e.to_string() };
    // The stream a key-value bucket is, made directly: async-nats' `create_key_value`
    // first reads account info in a shape nats-server 2.9 (Debian 12's) does not send.
    let config = jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age: spec.max_age,
        storage: jetstream::stream::StorageType::File,
        num_replicas: spec.replicas,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: spec.direct,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    let stream = js.get_or_create_stream(config).await.map_err(|e| {
        if spec.replicas > 1 {
            err(&format!(
                "{e} (ha.replicas {}: a replicated bucket needs a NATS cluster with JetStream on at least that many servers)",
                spec.replicas
            ))
        } else {
            err(&e)
        }
    })?;
    let have = stream.cached_info().config.clone();
    // Keys vanishing sooner than holders stop trusting them would allow two owners.
    if have.max_age < spec.max_age {
        return Err(err(&format!(
            "it exists with max_age {:?}, shorter than ha.lease_ttl {:?}; delete it while no instance runs, or set lease_ttl to at most {:?}",
            have.max_age, spec.max_age, have.max_age
        )));
    }
    if have.max_age > spec.max_age {
        tracing::warn!(bucket, max_age = ?have.max_age, "the bucket exists with a longer max_age than ha.lease_ttl; crash failover takes that long");
    }
    let stale_reads = have.allow_direct && !spec.direct;
    if have.num_replicas < spec.replicas || (stale_reads && have.num_replicas.max(spec.replicas) > 1) {
        let mut wanted = have.clone();
        wanted.num_replicas = have.num_replicas.max(spec.replicas);
        wanted.allow_direct = spec.direct;
        match js.update_stream(&wanted).await {
            Ok(_) => {
                tracing::info!(bucket, from = have.num_replicas, to = wanted.num_replicas, "ha: bucket replicas raised")
            }
            Err(e) => tracing::warn!(
                bucket, have = have.num_replicas, want = spec.replicas, error = %e,
                "ha: the bucket has fewer replicas than configured and the server refused to add them; losing the node that holds it silences the channels until it is back. Fix: `nats stream edit KV_{bucket} --replicas {}` (or delete the bucket while no instance runs), or set ha.replicas to {}",
                spec.replicas, have.num_replicas
            ),
        }
    } else if have.num_replicas > spec.replicas {
        tracing::info!(
            bucket,
            have = have.num_replicas,
            configured = spec.replicas,
            "ha: the bucket has more replicas than configured; kept"
        );
    }
    js.get_key_value(bucket).await.map_err(|e| err(&e))
}

/// Whether the lease bucket answers, as every operation and the watch find it.
#[derive(Debug, Default)]
struct ReachState {
    /// Since when operations fail (none: the last one worked).
    failing_since: Option<Instant>,
    /// Failures since then.
    failures: u64,
    /// The last failure: operation kind and why.
    last_error: Option<String>,
    /// Since when no watch is running (being made, or failed to be made).
    unwatched_since: Option<Instant>,
    /// A warning said the watch fails, and no watch has run since.
    watch_warned: bool,
}

/// What /health shows about the bucket.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BucketHealth {
    /// How long operations have been failing (none: they work).
    pub failing_for: Option<Duration>,
    /// Failures in a row.
    pub failures: u64,
    /// The last failure: kind and reason.
    pub last_error: Option<String>,
    /// How long no watch has been running, once that is longer than making one takes
    /// (a cluster electing its meta leader cannot make one): the others' leases are not
    /// seen meanwhile.
    pub unwatched_for: Option<Duration>,
}

/// Shared by the workers and the watch: logs the first failure (warning) and the
/// recovery (info), counts failures by kind.
#[derive(Clone)]
struct Reach {
    bucket: String,
    state: Arc<Mutex<ReachState>>,
    metrics: LeaseFailures,
    /// Signalled when operations work again after failing.
    recovered: Arc<tokio::sync::Notify>,
    /// Signalled (a permit kept until the watch takes it) when the client reconnected.
    rewatch: Arc<tokio::sync::Notify>,
}

impl Reach {
    fn lock(&self) -> std::sync::MutexGuard<'_, ReachState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn failed(&self, kind: &'static str, channel: Option<&str>, reason: &str) {
        self.metrics.inc(kind);
        let mut st = self.lock();
        if st.failing_since.is_none() {
            st.failing_since = Some(Instant::now());
            tracing::warn!(
                bucket = %self.bucket, kind, channel, error = reason,
                "ha: lease operations are failing (the bucket's stream may be electing a leader, or has lost quorum); the channels held here go silent if this lasts lease_ttl - lease_ttl/5 since their last renewal"
            );
        } else {
            tracing::debug!(kind, channel, error = reason, "lease operation failed");
        }
        st.failures += 1;
        st.last_error = Some(format!("{kind}: {reason}"));
    }

    fn answered(&self) {
        let mut st = self.lock();
        if let Some(since) = st.failing_since.take() {
            tracing::info!(bucket = %self.bucket, after = ?since.elapsed(), failures = st.failures, "ha: lease operations work again");
            st.failures = 0;
            // Wakes the watch if it waits on an old consumer (one being made is new).
            self.recovered.notify_waiters();
        }
    }

    /// The watch is being made (again): unwatched from now, unless it already was.
    fn unwatched(&self) {
        self.lock().unwatched_since.get_or_insert_with(Instant::now);
    }

    /// A watch runs.
    fn watching(&self) {
        let mut st = self.lock();
        st.unwatched_since = None;
        if std::mem::take(&mut st.watch_warned) {
            tracing::info!(bucket = %self.bucket, "ha: watching the lease bucket again");
        }
    }

    /// The watch could not be made, or broke: counted (kind `watch`), and a warning the
    /// first time until one runs again. Kept apart from the operations' failing state:
    /// operations may well work meanwhile (a cluster electing its meta leader cannot
    /// make consumers but stores writes), and /health tells the two apart.
    fn watch_failed(&self, reason: &str) {
        self.metrics.inc("watch");
        let mut st = self.lock();
        if st.watch_warned {
            tracing::debug!(error = reason, "the lease watch failed");
        } else {
            st.watch_warned = true;
            tracing::warn!(
                bucket = %self.bucket, error = reason,
                "ha: cannot watch the lease bucket; leases still work, but the other instances' leases are not seen until it is back"
            );
        }
        st.last_error = Some(format!("watch: {reason}"));
    }

    /// For /health; a watch missing for no longer than `setup` is being made as usual.
    fn health(&self, setup: Duration) -> BucketHealth {
        let st = self.lock();
        BucketHealth {
            failing_for: st.failing_since.map(|t| t.elapsed()),
            failures: st.failures,
            last_error: st.last_error.clone(),
            unwatched_for: st.unwatched_since.map(|t| t.elapsed()).filter(|d| *d > setup),
        }
    }
}

impl Ha {
    /// Opens (creating if missing) both buckets. Outcomes go to `events`; failed
    /// operations are counted in `failures`.
    pub async fn open(
        client: &Client,
        cfg: &HaConfig,
        events: mpsc::UnboundedSender<LeaseEvent>,
        failures: LeaseFailures,
    ) -> Result<Ha, HaError> {
        let js = jetstream::new(client.clone());
        let (replicas, why) = replicas(cfg.replicas, &client.server_info());
        tracing::info!(replicas, why, "ha: bucket replicas");
        let spec = BucketSpec { name: &cfg.bucket, max_age: cfg.lease_ttl, replicas, direct: true };
        let leases = open_bucket(&js, spec).await?;
        let state_bucket = format!("{}_state", cfg.bucket);
        let spec = BucketSpec { name: &state_bucket, max_age: STATE_MAX_AGE, replicas, direct: false };
        let state = open_bucket(&js, spec).await?;
        Ok(Ha {
            leases,
            state,
            instance: cfg.instance.clone(),
            op_timeout: (cfg.lease_ttl / 4).clamp(Duration::from_millis(200), Duration::from_secs(5)),
            events,
            workers: HashMap::new(),
            reach: Reach {
                bucket: cfg.bucket.clone(),
                state: Arc::default(),
                metrics: failures,
                recovered: Arc::default(),
                rewatch: Arc::default(),
            },
            replicas,
            watch_idle: cfg.lease_ttl * 2 / 3,
            watch_setup: (cfg.lease_ttl / 2).clamp(Duration::from_millis(500), Duration::from_secs(5)),
        })
    }

    /// Whether the bucket answers, for /health.
    pub fn health(&self) -> BucketHealth {
        self.reach.health(self.watch_setup)
    }

    /// The replicas the buckets were opened with.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The client reconnected (perhaps to another node): the watch's consumer may have
    /// gone with the old connection, so watch anew now rather than after two quiet
    /// renewal periods.
    pub fn rewatch(&self) {
        self.reach.rewatch.notify_one();
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
                reach: self.reach.clone(),
            };
            tokio::spawn(w.run(rx));
            tx
        });
        let _ = tx.send(op);
    }

    /// Forwards the lease bucket's keys and changes (`Seen`, `Free`) until the daemon
    /// stops. Every watch starts with the keys the bucket holds now (who owns what:
    /// replayed as not `fresh`), then follows changes. Watches again after an error or
    /// a setup that took longer than `watch_setup`, when the bucket answers again after
    /// failing (its stream may have a new leader, and the old consumer with it), when the
    /// client reconnected ([`Ha::rewatch`]), and when nothing arrived for two renewal
    /// periods (every owner rewrites its keys three times a TTL, so a quiet watch has
    /// stalled, or nobody holds anything and a new one costs little).
    pub fn watch(&self, names: impl Fn(&str) -> Option<String> + Send + 'static) -> tokio::task::JoinHandle<()> {
        let (store, events, reach) = (self.leases.clone(), self.events.clone(), self.reach.clone());
        let (idle, setup) = (self.watch_idle, self.watch_setup);
        tokio::spawn(async move {
            loop {
                reach.unwatched();
                let started = match tokio::time::timeout(setup, store.watch_with_history(">")).await {
                    Ok(started) => started.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("no watch within {setup:?}")),
                };
                let failed = match started {
                    Ok(mut w) => {
                        reach.watching();
                        loop {
                            let next = tokio::select! {
                                next = tokio::time::timeout(idle, w.next()) => next,
                                () = reach.recovered.notified() => {
                                    tracing::debug!("the lease bucket answers again: watching it anew");
                                    break false;
                                }
                                () = reach.rewatch.notified() => {
                                    tracing::debug!("reconnected to NATS: watching the lease bucket anew");
                                    break false;
                                }
                            };
                            let entry = match next {
                                Ok(Some(Ok(entry))) => entry,
                                Ok(Some(Err(e))) => {
                                    reach.watch_failed(&e.to_string());
                                    break true;
                                }
                                Ok(None) => break true,
                                Err(_) => {
                                    tracing::debug!(?idle, "the lease watch is quiet: watching it anew");
                                    break false;
                                }
                            };
                            reach.answered();
                            let Some(ev) = watched(&names, &entry) else { continue };
                            if events.send(ev).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        reach.watch_failed(&e);
                        true
                    }
                };
                if events.is_closed() {
                    return;
                }
                if failed {
                    // Again in a second, or at once if the client reconnects meanwhile.
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = reach.rewatch.notified() => {}
                    }
                }
            }
        })
    }
}

/// The event a watched bucket entry means, if it is a lease key.
fn watched(names: &impl Fn(&str) -> Option<String>, entry: &kv::Entry) -> Option<LeaseEvent> {
    let channel = names(&entry.key)?;
    Some(match entry.operation {
        kv::Operation::Put => {
            let value = serde_json::from_slice::<serde_json::Value>(&entry.value).ok()?;
            LeaseEvent::Seen {
                channel,
                owner: value.get("instance")?.as_str()?.to_owned(),
                revision: entry.revision,
                // Replayed keys come before the watch is current.
                fresh: entry.seen_current,
            }
        }
        kv::Operation::Delete | kv::Operation::Purge => LeaseEvent::Free { channel },
    })
}

/// One channel's operations, in order.
struct Worker {
    leases: kv::Store,
    state: kv::Store,
    instance: String,
    timeout: Duration,
    events: mpsc::UnboundedSender<LeaseEvent>,
    reach: Reach,
}

/// The answer to an operation, or why the bucket gave none.
type Outcome = Result<LeaseEvent, String>;

impl Worker {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<LeaseOp>) {
        while let Some(op) = rx.recv().await {
            let (channel, kind, failed) = (op.channel().to_owned(), op.kind(), op.failed());
            let outcome = tokio::time::timeout(self.timeout, self.perform(op))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)));
            let answer = match outcome {
                Ok(answer) => {
                    self.reach.answered();
                    answer
                }
                Err(reason) => {
                    self.reach.failed(kind, Some(&channel), &reason);
                    failed
                }
            };
            if self.events.send(answer).is_err() {
                return;
            }
        }
    }

    fn value(&self) -> bytes::Bytes {
        json!({"instance": self.instance, "at": crate::daemon::wall_clock().0}).to_string().into()
    }

    async fn save(&self, key: &str, state: &LimitSnapshot) -> Result<(), String> {
        let body = serde_json::to_vec(state).map_err(|e| e.to_string())?;
        self.state.put(key, body.into()).await.map(drop).map_err(|e| format!("saving the limit state: {e}"))
    }

    /// Reads the limit state a new owner starts from and marks it taken (see
    /// [`LeaseOp::Acquire`]): stored again unreleased, or empty at now if there is none.
    async fn take_state(&self, key: &str) -> Result<Option<LimitSnapshot>, String> {
        let body = self.state.get(key).await.map_err(|e| format!("reading the limit state: {e}"))?;
        let state: Option<LimitSnapshot> = body.and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(t) = LimitSnapshot::taken(state.as_ref(), crate::daemon::wall_clock().0) {
            self.save(key, &t).await?;
        }
        Ok(state)
    }

    async fn perform(&self, op: LeaseOp) -> Outcome {
        match op {
            LeaseOp::Acquire { channel } => {
                let key = lease_key(&channel);
                match self.leases.create(&key, self.value()).await {
                    Ok(revision) => match self.take_state(&key).await {
                        Ok(state) => Ok(LeaseEvent::Acquired { channel, revision, state }),
                        // Speaking without the previous owner's limits could exceed them:
                        // give the key back (or let it expire) and try again later.
                        Err(e) => {
                            let _ = self.leases.delete_expect_revision(&key, Some(revision)).await;
                            Err(e)
                        }
                    },
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(LeaseEvent::Taken { channel }),
                    Err(e) => Err(e.to_string()),
                }
            }
            LeaseOp::Renew { channel, revision } => {
                match self.leases.update(lease_key(&channel), self.value(), revision).await {
                    Ok(revision) => Ok(LeaseEvent::Renewed { channel, revision }),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(LeaseEvent::Taken { channel }),
                    Err(e) => Err(e.to_string()),
                }
            }
            LeaseOp::Save { channel, state } => {
                self.save(&lease_key(&channel), &state).await.map(|()| LeaseEvent::Saved { channel })
            }
            LeaseOp::Release { channel, revision, state } => {
                let key = lease_key(&channel);
                // The state first: the next owner may create the key the moment it is gone.
                self.save(&key, &state).await?;
                self.leases.delete_expect_revision(&key, Some(revision)).await.map_err(|e| e.to_string())?;
                Ok(LeaseEvent::Released { channel })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_reports_a_missing_watch_only_once_making_one_takes_longer_than_it_should() {
        let reach = Reach {
            bucket: "b".into(),
            state: Arc::default(),
            metrics: LeaseFailures::default(),
            recovered: Arc::default(),
            rewatch: Arc::default(),
        };
        let setup = Duration::from_millis(50);
        assert_eq!(reach.health(setup).unwatched_for, None);
        // Being made: not yet a problem; still missing after the setup time: reported,
        // from when the first attempt began (a retry does not restart the clock).
        reach.unwatched();
        assert_eq!(reach.health(setup).unwatched_for, None);
        std::thread::sleep(Duration::from_millis(60));
        // A failed attempt is the watch's failure, not the operations': those may work.
        reach.watch_failed("no watch within 50ms");
        assert_eq!(reach.health(setup).failing_for, None);
        assert_eq!(reach.health(setup).last_error.as_deref(), Some("watch: no watch within 50ms"));
        reach.unwatched();
        let blind = reach.health(setup).unwatched_for.expect("reported");
        assert!(blind >= Duration::from_millis(60), "{blind:?}");
        // A watch runs again.
        reach.watching();
        assert_eq!(reach.health(setup).unwatched_for, None);
    }

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
