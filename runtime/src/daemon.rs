//! `llm-chatbot run`: the event loop that feeds the engine and executes its effects.
//!
//! One task owns the [`Engine`] inside [`Daemon`]. The loop waits on everything that can
//! happen (a NATS event, an LLM answer, the engine's next timer, a connection change, a
//! signal, a service request, the health-refresh tick); each `select!` arm calls one
//! `Daemon` method, and every input reaches the engine through [`Daemon::feed`], which
//! drains the engine's effects right after each `handle` (the engine's drain rule, the
//! same one the simulator follows). LLM requests run as their own tasks, so a slow
//! provider never delays NATS handling or other channels. No decision is made here:
//! which event matters, whether to speak, what to say and when to announce ourselves all
//! belong to the engine.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::{Client, Subscriber};
use chatbot_core::{Config, Effect, Engine, Input, Millis, RequestId, RoomSnapshot};
use futures_util::stream::SelectAll;
use futures_util::{FutureExt, StreamExt};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::ha::{self, Ha};
use crate::http::{self, Shared};
use crate::kryten::{self, Identity, ServiceCommand, ServiceRequest};
use crate::llm::{LlmClient, Outcome};
use crate::metrics::Metrics;
use crate::{load_config, LoadError};
use crate::{nats, room};

/// How long SIGTERM waits for in-flight requests and queued replies.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long a reload waits for in-flight requests before swapping anyway.
const RELOAD_GRACE: Duration = Duration::from_secs(5);
/// At most this many waiting events are handled before the loop looks at anything else
/// (replies included): bounds the delay a flood adds to a reply to well under 0.1 ms.
const EVENT_BATCH: usize = 32;
/// How stale /health may be.
const HEALTH_REFRESH: Duration = Duration::from_millis(250);

/// Why the daemon (or the recorder) could not start (exit code 1, one line on stderr).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The config file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] LoadError),
    /// NATS could not be reached.
    #[error(transparent)]
    Nats(#[from] nats::NatsError),
    /// The HTTP listener could not bind.
    #[error("http.listen: cannot listen on {addr}: {reason}")]
    Http {
        /// Address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// An LLM provider cannot be used.
    #[error(transparent)]
    Llm(#[from] crate::llm::ClientError),
    /// `ha` is on but the lease bucket cannot be used.
    #[error(transparent)]
    Ha(#[from] ha::HaError),
    /// A NATS subscription failed.
    #[error("nats: cannot subscribe to {subject}: {reason}")]
    Subscribe {
        /// Subject.
        subject: String,
        /// Why.
        reason: String,
    },
    /// A signal handler could not be installed.
    #[error("cannot install the {signal} handler: {reason}")]
    Signal {
        /// `SIGHUP`, `SIGTERM` or `SIGINT`.
        signal: &'static str,
        /// Why.
        reason: String,
    },
    /// An output file (`record -o`) cannot be written.
    #[error("{path}: cannot write: {reason}")]
    Output {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Installs a handler for `kind`, named `name` in the error.
pub(crate) fn handler(kind: SignalKind, name: &'static str) -> Result<Signal, StartError> {
    signal(kind).map_err(|e| StartError::Signal { signal: name, reason: e.to_string() })
}

/// The system clock in epoch milliseconds.
pub(crate) fn wall_clock() -> Millis {
    Millis(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

/// Epoch milliseconds from a monotonic clock anchored once at start.
#[derive(Clone, Copy)]
struct Clock {
    base_ms: u64,
    base: Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock { base_ms: wall_clock().0, base: Instant::now() }
    }

    fn now(&self) -> Millis {
        Millis(self.base_ms + self.base.elapsed().as_millis() as u64)
    }

    fn instant(&self, at: Millis) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.base + Duration::from_millis(at.0.saturating_sub(self.base_ms)))
    }
}

/// The channels' subscriptions, polled by the engine task itself (no forwarding task,
/// no extra queue between NATS and the engine: one hop less per event).
struct Subscriptions {
    client: Client,
    events: SelectAll<ChannelEvents>,
    shared: Arc<Shared>,
}

/// One channel's subscription, counting its events.
struct ChannelEvents {
    subject: String,
    sub: Subscriber,
    counter: prometheus_client::metrics::counter::Counter,
}

impl futures_util::Stream for ChannelEvents {
    type Item = async_nats::Message;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<async_nats::Message>> {
        let polled = self.sub.poll_next_unpin(cx);
        if let std::task::Poll::Ready(Some(_)) = &polled {
            self.counter.inc();
        }
        polled
    }
}

impl Subscriptions {
    /// Subscribes channels that are new in `config` and drops those no longer in it
    /// (dropping a subscriber unsubscribes it).
    async fn sync(&mut self, config: &Config) -> Result<(), StartError> {
        let mut wanted: HashMap<String, String> = config
            .channels
            .iter()
            .map(|c| (kryten::event_subject(config.nats.subjects, &c.name), c.name.clone()))
            .collect();
        for s in std::mem::take(&mut self.events) {
            if wanted.remove(&s.subject).is_some() {
                self.events.push(s);
            } else {
                tracing::info!(subject = %s.subject, "unsubscribing");
            }
        }
        for (subject, channel) in wanted {
            let sub = self
                .client
                .subscribe(subject.clone())
                .await
                .map_err(|e| StartError::Subscribe { subject: subject.clone(), reason: e.to_string() })?;
            self.events.push(ChannelEvents { subject, sub, counter: self.shared.metrics.events_of(&channel) });
        }
        Ok(())
    }

    fn stop(&mut self) {
        self.events = SelectAll::new();
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Everything the loop owns: the engine and the state of executing its effects.
struct Daemon {
    engine: Engine,
    /// This run's session: the engine's seed and start (logged, announced, on /health).
    session: kryten::Session,
    config_path: PathBuf,
    clock: Clock,
    started: Instant,
    client: Client,
    subs: Subscriptions,
    llm: Arc<LlmClient>,
    llm_tx: mpsc::UnboundedSender<(RequestId, String, Outcome)>,
    in_flight: HashMap<RequestId, AbortHandle>,
    shared: Arc<Shared>,
    hostname: String,
    http_port: u16,
    request_seq: u64,
    request_salt: u64,
    /// Leases when `ha.enabled`.
    ha: Option<Ha>,
    /// Where reads of the robot's stored room state report.
    room_tx: mpsc::UnboundedSender<RoomSnapshot>,
    connected: bool,
    reconnects: u64,
    seen_first_connect: bool,
    /// A reload waiting for in-flight requests (at most until the instant).
    pending_reload: Option<(Config, Instant)>,
    /// Set by SIGTERM/SIGINT: when the grace period ends.
    shutdown_deadline: Option<tokio::time::Instant>,
    shutdown_reason: &'static str,
    /// The engine reported that nothing is in flight or queued after a shutdown.
    shutdown_done: bool,
}

impl Daemon {
    fn identity(&self) -> Identity<'_> {
        let config = self.engine.config();
        Identity {
            service: &config.kryten.service_name,
            version: env!("CARGO_PKG_VERSION"),
            hostname: &self.hostname,
            http_port: self.http_port,
            instance: config.ha.enabled.then_some(config.ha.instance.as_str()),
            session: Some(self.session),
        }
    }

    async fn lifecycle(&self, kind: &str, reason: Option<&str>) {
        let (subject, body) =
            kryten::lifecycle(&self.identity(), kind, self.clock.now(), self.started.elapsed().as_secs_f64(), reason);
        if let Err(e) = self.client.publish(subject, body.into()).await {
            tracing::warn!(error = %e, kind, "cannot publish lifecycle event");
        }
    }

    /// Hands one input to the engine and executes what it asks for: the drain rule.
    async fn feed(&mut self, input: Input) {
        // Collected first: executing an effect needs the daemon (and reads the engine).
        // Most events produce none, and an empty Vec does not allocate.
        let effects: Vec<Effect> = self.engine.step(self.clock.now(), input).collect();
        for effect in effects {
            self.execute(effect).await;
        }
    }

    async fn execute(&mut self, effect: Effect) {
        match effect {
            Effect::CallLlm(call) => {
                let llm = self.llm.clone();
                let tx = self.llm_tx.clone();
                let (id, provider) = (call.id, call.provider.clone());
                tracing::debug!(channel = %call.channel, request = %id, provider, messages = ?call.messages, "llm call");
                let task = tokio::spawn(async move {
                    let outcome = llm.complete(&call.provider, &call.messages).await;
                    let _ = tx.send((call.id, call.provider, outcome));
                });
                self.in_flight.insert(id, task.abort_handle());
                self.shared.metrics.in_flight.set(self.in_flight.len() as i64);
            }
            Effect::CancelLlm(id) => {
                if let Some(task) = self.in_flight.remove(&id) {
                    task.abort();
                }
                self.shared.metrics.in_flight.set(self.in_flight.len() as i64);
            }
            Effect::Publish(cmd) => {
                let config = self.engine.config();
                self.request_seq += 1;
                let request_id = request_id(self.request_salt, self.request_seq);
                let (subject, body) = kryten::command_message(
                    config.nats.commands,
                    &cmd,
                    &config.kryten.domain,
                    &config.kryten.service_name,
                    self.clock.now(),
                    &request_id,
                );
                tracing::debug!(channel = %cmd.channel, text = cmd.kind.text(), "publishing");
                if config.dry_run {
                    let kind = match cmd.kind {
                        chatbot_core::CommandKind::Say { .. } => "say",
                        chatbot_core::CommandKind::Pm { .. } => "pm",
                    };
                    tracing::info!(channel = %cmd.channel, kind, subject, "dry run: command not published");
                    return;
                }
                match self.client.publish(subject, body.into()).await {
                    Ok(()) => self.shared.metrics.sent(&cmd.channel),
                    Err(e) => tracing::warn!(channel = %cmd.channel, error = %e, "publish failed"),
                }
            }
            Effect::Decision(d) => {
                self.shared.metrics.decision(&d);
                tracing::info!(
                    target: "decision",
                    at = d.at.0,
                    channel = %d.channel,
                    correlation_id = d.correlation_id.as_deref().unwrap_or(""),
                    user = d.user.as_deref().unwrap_or(""),
                    trigger = d.trigger.map_or("", |t| t.label()),
                    outcome = d.outcome.label(),
                    reason = d.reason.map_or("", |r| r.label()),
                );
            }
            Effect::Moderation(r) => {
                self.shared.metrics.moderation(&r);
                tracing::info!(
                    target: "moderation",
                    channel = %r.channel,
                    correlation_id = r.correlation_id.as_deref().unwrap_or(""),
                    user = %r.user,
                    command = r.command,
                    changed = %r.changed,
                    "moderator command"
                );
            }
            Effect::Lease(op) => {
                tracing::debug!(?op, "lease op");
                if let Some(ha) = &mut self.ha {
                    ha.execute(op);
                }
            }
            Effect::Heartbeat => self.lifecycle("heartbeat", None).await,
            Effect::ShutdownComplete => self.shutdown_done = true,
        }
    }

    /// A Kryten event, and (bounded) the ones already waiting behind it.
    async fn on_events(&mut self, first: async_nats::Message) {
        let event = |msg: async_nats::Message| Input::Event {
            subject: Some(msg.subject.to_string()),
            body: msg.payload.to_vec(),
        };
        self.feed(event(first)).await;
        for _ in 1..EVENT_BATCH {
            match self.subs.events.next().now_or_never() {
                Some(Some(msg)) => self.feed(event(msg)).await,
                _ => break,
            }
        }
    }

    async fn on_llm_done(&mut self, id: RequestId, provider: String, outcome: Outcome) {
        self.in_flight.remove(&id);
        self.shared.metrics.in_flight.set(self.in_flight.len() as i64);
        self.record_llm(&provider, &outcome);
        self.feed(Input::LlmDone { id, result: outcome.result }).await;
    }

    /// Reads the robot's stored room state of `channels` in the background; each one
    /// found comes back as an input (events seen meanwhile win over it).
    fn read_rooms(&self, channels: Vec<String>) {
        let js = async_nats::jetstream::new(self.client.clone());
        let (tx, clock) = (self.room_tx.clone(), self.clock);
        tokio::spawn(async move {
            let reads = futures_util::stream::iter(channels).map(|c| {
                let js = js.clone();
                async move { room::read(&js, &c, clock.now()).await }
            });
            let mut reads = reads.buffer_unordered(8);
            let mut found = 0usize;
            while let Some(read) = reads.next().await {
                if let Some(s) = read {
                    found += 1;
                    let _ = tx.send(s);
                }
            }
            tracing::debug!(channels = found, "read the robot's stored room state");
        });
    }

    fn channel_names(&self) -> Vec<String> {
        self.engine.config().channels.iter().map(|c| c.name.clone()).collect()
    }

    async fn on_connection(&mut self, up: bool) {
        if up {
            if self.seen_first_connect && !self.connected {
                self.reconnects += 1;
                self.shared.metrics.reconnects.inc();
                tracing::info!(reconnects = self.reconnects, "nats reconnected");
                // Events were missed while away: what the robot stored fills the gap.
                self.read_rooms(self.channel_names());
                if let Some(ha) = &self.ha {
                    ha.rewatch();
                }
            }
            self.seen_first_connect = true;
        } else {
            tracing::warn!("nats connection lost; replies are held until it is back");
        }
        if up != self.connected {
            self.connected = up;
            self.feed(Input::Connection { up }).await;
        }
        self.refresh_health();
    }

    /// SIGHUP: read the file now; the swap waits for in-flight requests (`after_step`).
    fn on_hangup(&mut self) {
        match load_config(&self.config_path) {
            Err(e) => tracing::error!(error = %e, "reload refused; keeping the running config"),
            Ok(new) => {
                tracing::info!(channels = new.channels.len(), "reload accepted");
                self.pending_reload = Some((new, Instant::now() + RELOAD_GRACE));
            }
        }
    }

    /// SIGTERM/SIGINT: stop taking events and let what is in flight finish.
    async fn on_stop(&mut self, reason: &'static str) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        self.shutdown_reason = reason;
        tracing::info!(
            in_flight = self.in_flight.len(),
            "shutting down: no new events; waiting for in-flight requests"
        );
        self.subs.stop();
        self.shutdown_deadline = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
        self.feed(Input::Shutdown).await;
    }

    /// A request on `kryten.{service}.command`, answered on its reply subject. Operator
    /// controls go to the engine as inputs; queries read it.
    async fn on_service_request(&mut self, msg: async_nats::Message) {
        use serde_json::{json, Value};
        let req = ServiceRequest::parse(&msg.payload);
        let service = self.engine.config().kryten.service_name.clone();
        let known = |engine: &Engine, c: &Option<String>| c.as_ref().filter(|c| engine.has_channel(c)).cloned();
        let unknown = |c: &Option<String>| format!("unknown channel: {}", c.as_deref().unwrap_or_default());
        let body = match &req.command {
            ServiceCommand::Control { channel, action } => match known(&self.engine, channel) {
                None => req.fail(&service, &unknown(channel)),
                Some(ch) => {
                    tracing::info!(channel = %ch, command = req.name, "operator control");
                    self.feed(Input::Control { channel: ch.clone(), action: *action }).await;
                    req.ok(&service, json!({"channel": ch, "muted": self.engine.is_muted(&ch)}))
                }
            },
            ServiceCommand::RecentDecisions { channel, limit } => match known(&self.engine, channel) {
                None => req.fail(&service, &unknown(channel)),
                Some(ch) => {
                    req.ok(&service, json!({"channel": ch, "decisions": self.engine.recent_decisions(&ch, *limit)}))
                }
            },
            ServiceCommand::BudgetStatus => {
                let engine = &self.engine;
                let (hour, day) = engine.spend();
                let config = engine.config();
                let channels: Vec<Value> = engine
                    .status()
                    .into_iter()
                    .map(|c| {
                        let b = config.channel(&c.name).map(|cc| cc.budget);
                        json!({"name": c.name, "tokens_last_hour": c.tokens_hour, "tokens_last_day": c.tokens_day,
                               "tokens_per_hour": b.map(|b| b.tokens_per_hour), "tokens_per_day": b.map(|b| b.tokens_per_day)})
                    })
                    .collect();
                req.ok(
                    &service,
                    json!({"tokens_last_hour": hour, "tokens_last_day": day,
                           "tokens_per_hour": config.llm.budget.tokens_per_hour, "tokens_per_day": config.llm.budget.tokens_per_day,
                           "channels": channels}),
                )
            }
            ServiceCommand::BadArgument(why) => req.fail(&service, why),
            ServiceCommand::Ping | ServiceCommand::Health | ServiceCommand::Unknown | ServiceCommand::Malformed => {
                let uptime = self.started.elapsed().as_secs_f64();
                kryten::service_reply(&self.identity(), &req, self.clock.now(), uptime, || self.shared.health_json())
            }
        };
        if let Some(reply) = msg.reply {
            let _ = self.client.publish(reply, body.into()).await;
        }
    }

    /// ha: another instance started, is alive, or left.
    async fn on_peer(&mut self, msg: async_nats::Message) {
        if let Some(ev) = kryten::peer_event(&msg.subject, &msg.payload) {
            tracing::debug!(?ev, "lease event");
            self.feed(Input::Lease(ev)).await;
        }
    }

    /// Work that waits for a quiet moment: a reload swaps once nothing is in flight (or
    /// its grace period is over).
    async fn after_step(&mut self) {
        let due = self
            .pending_reload
            .as_ref()
            .is_some_and(|(_, deadline)| self.in_flight.is_empty() || Instant::now() >= *deadline);
        if due {
            if let Some((new, _)) = self.pending_reload.take() {
                self.apply_reload(new).await;
            }
        }
    }

    async fn apply_reload(&mut self, new: Config) {
        let old = self.engine.config();
        if old.nats != new.nats || old.http != new.http || old.kryten.service_name != new.kryten.service_name {
            tracing::warn!("changes to nats, http or kryten.service_name take effect after a restart");
        }
        if old.ha != new.ha {
            tracing::warn!("changes to ha take effect after a restart");
        }
        let mut new = new;
        new.ha = old.ha.clone();
        if old.llm.providers != new.llm.providers {
            match LlmClient::from_env(&new.llm.providers) {
                Ok(client) => {
                    self.llm = Arc::new(client);
                    warm_up(&self.llm);
                }
                Err(e) => {
                    tracing::error!(error = %e, "reload refused: provider unusable; keeping the running config");
                    return;
                }
            }
        }
        if let Err(e) = self.subs.sync(&new).await {
            tracing::error!(error = %e, "reload: subscription change failed");
        }
        let added: Vec<String> =
            new.channels.iter().filter(|c| !self.engine.has_channel(&c.name)).map(|c| c.name.clone()).collect();
        self.feed(Input::Reload(Box::new(new))).await;
        if !added.is_empty() {
            self.read_rooms(added);
        }
        tracing::info!(channels = self.engine.config().channels.len(), "reloaded");
    }

    fn refresh_health(&self) {
        let engine = &self.engine;
        let channels = engine.status();
        let queued: usize = channels.iter().map(|c| c.queued).sum();
        for c in &channels {
            self.shared.metrics.tokens(&c.name, c.tokens_hour);
        }
        self.shared.metrics.queue_depth.set(queued as i64);
        self.shared.metrics.nats_connected.set(i64::from(self.connected));
        self.shared.metrics.channels.set(channels.len() as i64);
        self.shared.update_health(|h| {
            h.session = Some(self.session);
            h.channels = channels;
            h.nats_connected = self.connected;
            // The server the client is on (a cluster moves it on a node loss).
            h.nats_server = self.connected.then(|| self.client.server_info().server_name).filter(|n| !n.is_empty());
            h.reconnects = self.reconnects;
            h.shutting_down = self.shutdown_deadline.is_some();
            h.spend = engine.spend();
            h.problems.clear();
            if !self.connected {
                h.problems.push("not connected to NATS".to_owned());
            }
            h.ha = engine.lease_stats().map(|s| {
                self.shared.metrics.leases(s);
                let bucket = self.ha.as_ref().map(Ha::health).unwrap_or_default();
                // Without a watch the others' leases are not seen: whether a channel has an
                // owner elsewhere is unknown, not "no".
                let orphans = if bucket.unwatched_for.is_some() { Vec::new() } else { engine.lease_orphans() };
                self.shared.metrics.ha_bucket_reachable.set(i64::from(bucket.failing_for.is_none()));
                self.shared.metrics.ha_orphaned.set(orphans.len() as i64);
                if let Some(failing) = bucket.failing_for {
                    h.problems.push(format!(
                        "cannot reach the lease bucket `{}` for {:.1} s ({} operations failed; last: {})",
                        engine.config().ha.bucket,
                        failing.as_secs_f64(),
                        bucket.failures,
                        bucket.last_error.as_deref().unwrap_or("?"),
                    ));
                }
                if let Some(blind) = bucket.unwatched_for {
                    h.problems.push(format!(
                        "cannot watch the lease bucket `{}` for {:.1} s (last error: {}): the other instances' leases are not seen",
                        engine.config().ha.bucket,
                        blind.as_secs_f64(),
                        bucket.last_error.as_deref().unwrap_or("?"),
                    ));
                }
                if !orphans.is_empty() {
                    let names: Vec<String> =
                        orphans.iter().map(|(c, d)| format!("{c} ({:.1} s)", d.as_secs_f64())).collect();
                    h.problems.push(format!(
                        "{} channel(s) without an owner anywhere for longer than lease_ttl: {}",
                        orphans.len(),
                        names.join(", ")
                    ));
                }
                for c in &engine.config().channels {
                    let mine = engine.lease_owner(&c.name) == Some(engine.config().ha.instance.as_str());
                    self.shared.metrics.channel_owned(&c.name, mine);
                }
                let owners: serde_json::Map<String, serde_json::Value> = engine
                    .config()
                    .channels
                    .iter()
                    .map(|c| (c.name.clone(), serde_json::json!(engine.lease_owner(&c.name))))
                    .collect();
                serde_json::json!({
                    "instance": engine.config().ha.instance, "owned": s.owned, "live_instances": s.live_instances,
                    "renewals": s.renewals, "acquired": s.acquired, "takeovers": s.takeovers, "lost": s.lost,
                    "owners": owners,
                    "replicas": self.ha.as_ref().map(Ha::replicas),
                    "bucket": {
                        "state": if bucket.failing_for.is_some() { "failing" } else { "ok" },
                        "failing_seconds": bucket.failing_for.map(|d| (d.as_secs_f64() * 10.0).round() / 10.0),
                        "failures": bucket.failures,
                        "last_error": bucket.last_error,
                        "unwatched_seconds": bucket.unwatched_for.map(|d| (d.as_secs_f64() * 10.0).round() / 10.0),
                    },
                    "orphaned": orphans.iter().map(|(c, d)| (c.clone(), serde_json::json!((d.as_secs_f64() * 10.0).round() / 10.0))).collect::<serde_json::Map<_, _>>(),
                })
            });
        });
    }

    fn record_llm(&self, provider: &str, outcome: &Outcome) {
        let label = match &outcome.result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        self.shared.metrics.llm(provider, label, outcome.elapsed.as_secs_f64());
        let price = self.engine.config().llm.providers.get(provider).map(|p| p.price_per_million).unwrap_or_default();
        self.shared.update_health(|h| {
            let p = h.providers.entry(provider.to_owned()).or_default();
            match &outcome.result {
                Ok(reply) => {
                    p.ok += 1;
                    p.consecutive_failures = 0;
                    if let Some(u) = &reply.usage {
                        let cost = price.cost(u);
                        self.shared.metrics.usage(provider, u, cost);
                        p.input_tokens += u.input_tokens;
                        p.cached_input_tokens += u.cached_input_tokens.min(u.input_tokens);
                        p.output_tokens += u.output_tokens;
                        p.cost += cost;
                    }
                }
                Err(e) => {
                    p.consecutive_failures += 1;
                    let why = outcome.detail.as_deref().unwrap_or("");
                    p.last_error =
                        Some(if why.is_empty() { e.label().to_owned() } else { format!("{}: {why}", e.label()) });
                    tracing::warn!(
                        provider,
                        error = e.label(),
                        reason = why,
                        attempts = outcome.attempts,
                        "llm request failed"
                    );
                }
            }
        });
    }
}

/// Opens the providers' connections in the background (start-up does not wait).
fn warm_up(llm: &Arc<LlmClient>) {
    let llm = llm.clone();
    tokio::spawn(async move { llm.warm_up().await });
}

/// A uuid4-shaped id for `meta.request_id`.
fn request_id(salt: u64, seq: u64) -> String {
    let a = RandomState::new().hash_one((salt, seq));
    let b = salt ^ seq.rotate_left(17);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// Runs the daemon until SIGTERM/SIGINT. Errors are start-up failures.
/// Runs the daemon until SIGTERM/SIGINT. `seed` (from `run --seed`) overrides the
/// config's `seed`; without either, a random one.
pub async fn run(config_path: PathBuf, seed: Option<u64>) -> Result<(), StartError> {
    let started = Instant::now();
    let clock = Clock::new();
    let mut config = load_config(&config_path)?;
    let env = |var: &str| std::env::var(var).ok();
    let hostname = hostname();
    if config.ha.instance.is_empty() {
        config.ha.instance = ha::default_instance(&hostname);
    }

    let shared = Arc::new(Shared::new(Metrics::new(), started));
    let listener = http::bind(&config.http.listen)
        .map_err(|e| StartError::Http { addr: config.http.listen.clone(), reason: e.to_string() })?;
    let http_port = listener.local_addr().map_or(0, |a| a.port());
    let llm = Arc::new(LlmClient::from_env(&config.llm.providers)?);
    for p in llm.providers_without_key() {
        tracing::warn!(provider = p, "the provider's api_key_env variable is not set: requests go without a key");
    }
    warm_up(&llm);

    let (state_tx, mut state_rx) = mpsc::unbounded_channel();
    let client =
        nats::connect(&config.nats, &format!("llm-chatbot ({})", config.kryten.service_name), state_tx, env).await?;
    let mut subs = Subscriptions { client: client.clone(), events: SelectAll::new(), shared: shared.clone() };
    subs.sync(&config).await?;
    let service = config.kryten.service_name.clone();
    let subscribe = |subject: String| {
        let client = client.clone();
        async move {
            client
                .subscribe(subject.clone())
                .await
                .map_err(|e| StartError::Subscribe { subject, reason: e.to_string() })
        }
    };
    let mut commands = subscribe(format!("kryten.{service}.command")).await?;
    let mut discovery = subscribe("kryten.service.discovery.poll".into()).await?;
    // ha: the lease buckets, their watch, and the other instances' lifecycle messages.
    let (lease_tx, mut lease_rx) = mpsc::unbounded_channel();
    let (ha, mut peers) = if config.ha.enabled {
        let ha = Ha::open(&client, &config.ha, lease_tx.clone(), shared.metrics.ha_lease_failures.clone()).await?;
        ha.watch(ha::channel_of_key);
        let peers = subscribe(format!("kryten.lifecycle.{service}.>")).await?;
        tracing::info!(instance = %config.ha.instance, bucket = %config.ha.bucket, lease_ttl = ?config.ha.lease_ttl, replicas = ha.replicas(), "ha: leases on");
        (Some(ha), Some(peers))
    } else {
        (None, None)
    };
    // Subscriptions are registered with the server before we call ourselves ready.
    let _ = client.flush().await;

    let (llm_tx, mut llm_rx) = mpsc::unbounded_channel();
    let (room_tx, mut room_rx) = mpsc::unbounded_channel();
    // A random seed stays below 2^53, so that every JSON reader (jq too) shows it exactly.
    let seed = seed.or(config.seed).unwrap_or_else(|| RandomState::new().hash_one(clock.now().0) & ((1 << 53) - 1));
    let session = kryten::Session { seed, start: clock.now() };
    tracing::info!(seed, start = %session.start.to_rfc3339(), "engine seed (replay a recording of this run with it)");
    let mut d = Daemon {
        engine: Engine::new(config, seed, session.start),
        session,
        config_path,
        clock,
        started,
        client: client.clone(),
        subs,
        llm,
        llm_tx,
        in_flight: HashMap::new(),
        shared: shared.clone(),
        hostname,
        http_port,
        request_seq: 0,
        request_salt: seed.rotate_left(29),
        ha,
        room_tx,
        connected: true,
        reconnects: 0,
        seen_first_connect: false,
        pending_reload: None,
        shutdown_deadline: None,
        shutdown_reason: "stopped",
        shutdown_done: false,
    };
    http::spawn(listener, shared.clone())
        .map_err(|e| StartError::Http { addr: d.engine.config().http.listen.clone(), reason: e.to_string() })?;
    d.lifecycle("startup", None).await;
    // Subscribed first: events that arrive while the stored state is read are newer.
    d.read_rooms(d.channel_names());
    d.refresh_health();
    tracing::info!(
        channels = d.engine.config().channels.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        http = %d.engine.config().http.listen,
        "ready"
    );

    let mut hup = handler(SignalKind::hangup(), "SIGHUP")?;
    let mut term = handler(SignalKind::terminate(), "SIGTERM")?;
    let mut int = handler(SignalKind::interrupt(), "SIGINT")?;
    let mut health_tick = tokio::time::interval(HEALTH_REFRESH);
    // "No timer": a fixed far-off instant, so the timer below is re-armed only when the
    // engine's next deadline really changes, not on every event.
    let never = tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 86_400);
    let timer = tokio::time::sleep_until(never);
    tokio::pin!(timer);

    loop {
        let wake = d.engine.poll_timeout().map_or(never, |t| d.clock.instant(t));
        if timer.deadline() != wake {
            timer.as_mut().reset(wake);
        }
        let stop_at = d.shutdown_deadline.unwrap_or(never);
        let stopping = d.shutdown_deadline.is_some();
        tokio::select! {
            // A Kryten event for one of our channels (none are taken once stopping).
            Some(msg) = d.subs.events.next(), if !stopping => d.on_events(msg).await,
            // An LLM request finished (its task sends exactly once).
            Some((id, provider, outcome)) = llm_rx.recv() => d.on_llm_done(id, provider, outcome).await,
            // The engine's next timer (send spacing, participation, LLM deadline, leases,
            // heartbeat).
            _ = &mut timer => d.feed(Input::Tick).await,
            // The robot's stored state of a channel's room (start, reconnect, new channel).
            Some(snapshot) = room_rx.recv() => d.feed(Input::RoomState(snapshot)).await,
            // NATS went down or came back: the engine holds replies meanwhile.
            Some(up) = state_rx.recv() => d.on_connection(up).await,
            _ = hup.recv() => d.on_hangup(),
            _ = term.recv() => d.on_stop("SIGTERM").await,
            _ = int.recv() => d.on_stop("SIGINT").await,
            // kryten.{service}.command: controls, queries, system.ping / system.health.
            Some(req) = commands.next() => d.on_service_request(req).await,
            // A discovery poll is answered with our startup announcement.
            Some(_) = discovery.next() => d.lifecycle("startup", None).await,
            // ha: a lease operation finished, or the bucket watch saw a change.
            Some(ev) = lease_rx.recv() => {
                tracing::debug!(?ev, "lease event");
                d.feed(Input::Lease(ev)).await;
            }
            // ha: another instance started, is alive, or left.
            Some(msg) = async { match peers.as_mut() { Some(p) => p.next().await, None => std::future::pending().await } } => d.on_peer(msg).await,
            // /health is a snapshot: refreshed here, served from its own thread.
            _ = health_tick.tick() => d.refresh_health(),
            // The shutdown grace period is over: whatever is left is abandoned.
            _ = tokio::time::sleep_until(stop_at), if stopping => {
                tracing::warn!(in_flight = d.in_flight.len(), "shutdown grace period over; abandoning what is left");
                break;
            }
        }
        d.after_step().await;
        if d.shutdown_done {
            break;
        }
    }

    for (_, task) in d.in_flight.drain() {
        task.abort();
    }
    d.lifecycle("shutdown", Some(d.shutdown_reason)).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
    tracing::info!(reason = d.shutdown_reason, elapsed_ms = started.elapsed().as_millis() as u64, "stopped");
    Ok(())
}
