//! Several instances sharing channels through leases (`ha:`), in virtual time.
//!
//! Each instance is a production [`Engine`] with its own clock (an offset and a rate
//! error against real time), its own network link (partitions cut it off from NATS:
//! events, the lease bucket and peers), and its own fate (start late, crash and restart,
//! stop gracefully). The lease bucket is a model of a JetStream key-value bucket: keys
//! with revisions, compare-and-set, and keys that vanish `lease_ttl` after their last
//! write by the *server's* clock, without a watch notification (as JetStream's `max_age`
//! does). Everything an instance publishes is echoed into the room, as CyTube does.
//! The bucket itself can be unavailable for a while (its stream electing a leader after
//! a node died): operations fail without being applied, the watch delivers nothing, and
//! an operation applied just before may lose its answer; the watches may come back
//! later than the bucket. Its compare-and-set may be checked against writes a moment
//! old, as a clustered stream checks against what it has applied, not what it is still
//! replicating (nats-server issues 4320 and 8469): two creates a moment apart can both
//! succeed, and the later one holds the key.
//!
//! [`run`] returns every reply published, so properties can check that no event is
//! answered by two instances and that per-channel limits hold across takeovers.

use std::collections::{BTreeMap, BTreeSet};

use chatbot_core::{Config, Effect, Engine, Input, LeaseEvent, LeaseOp, LimitSnapshot, LlmReply, Millis, RequestId};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::json;

/// One instance's clock, link and fate. Times are milliseconds after the start.
#[derive(Debug, Clone, Default)]
pub struct InstancePlan {
    /// Local clock minus real time at the start, in ms.
    pub clock_offset_ms: i64,
    /// Local clock rate error, parts per million (±10,000 is ±1 %).
    pub rate_ppm: i64,
    /// When it starts.
    pub start_at: u64,
    /// Cut off from NATS during `[from, to)`.
    pub partitions: Vec<(u64, u64)>,
    /// Killed (state lost) at this time ...
    pub crash_at: Option<u64>,
    /// ... and started again (a new instance id) at this time.
    pub restart_at: Option<u64>,
    /// Stopped gracefully (SIGTERM) at this time.
    pub stop_at: Option<u64>,
}

/// A cluster run.
#[derive(Debug, Clone, Default)]
pub struct ClusterPlan {
    /// The instances.
    pub instances: Vec<InstancePlan>,
    /// Mentions of the bot: (time, channel, correlation id).
    pub mentions: Vec<(u64, String, String)>,
    /// Largest extra delay of an event to one instance (ms).
    pub max_delivery_skew_ms: u64,
    /// Largest LLM latency (ms).
    pub max_llm_latency_ms: u64,
    /// How long to run (ms).
    pub duration_ms: u64,
    /// Seed of every random choice (delays, latencies) and of the engines.
    pub seed: u64,
    /// The lease bucket has no leader during `[from, to)` (ms): every operation fails
    /// unapplied, at once or after the client's timeout; watch notifications that would
    /// arrive meanwhile are lost (a watch made anew starts from new changes); an
    /// operation applied in the last hop before is applied but its answer is lost.
    pub bucket_outages: Vec<(u64, u64)>,
    /// How long after an outage the watches deliver again (ms): a watch is made anew
    /// once the bucket answers, which takes a while; notifications meanwhile are lost.
    pub watch_lag_ms: u64,
    /// How old (ms) the writes a compare-and-set is checked against may be: a write is
    /// seen by checks, answered and notified this long after it is made.
    pub commit_lag_ms: u64,
}

/// A message an instance published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Real time (ms after the start).
    pub at: u64,
    /// Instance id.
    pub instance: String,
    /// Channel.
    pub channel: String,
    /// The event it answers.
    pub correlation_id: Option<String>,
    /// Whether the instance was connected (a reply published while cut off may still
    /// leave later from the client's buffer, so properties count it too).
    pub connected: bool,
}

/// What happened in a run.
#[derive(Debug, Clone, Default)]
pub struct ClusterTrace {
    /// Every message published by any instance, in time order.
    pub published: Vec<Published>,
    /// Lease acquisitions (real time, instance, channel).
    pub acquisitions: Vec<(u64, String, String)>,
}

/// Epoch of the simulated world.
const T0: u64 = 1_768_473_000_000;
/// Latency of one hop between an instance and the NATS server.
const HOP_MS: u64 = 2;

#[derive(Debug)]
enum Msg {
    /// A room event is published (index into the plan's mentions, or an echo body).
    Room(Vec<u8>),
    /// An input reaches instance `i` (generation `g`); `net`: dropped when cut off.
    Deliver {
        i: usize,
        g: u32,
        input: Input,
        net: bool,
    },
    /// A lease operation reaches the server.
    Kv {
        i: usize,
        g: u32,
        op: LeaseOp,
    },
    /// Instance `i`'s engine timer.
    Wake {
        i: usize,
        g: u32,
    },
    Start(usize),
    Crash(usize),
    Stop(usize),
    Link {
        i: usize,
        up: bool,
    },
    /// The bucket has a leader again: every watch is made anew and replays the keys.
    Rewatch,
}

struct Node {
    plan: InstancePlan,
    engine: Option<Engine>,
    id: String,
    generation: u32,
    connected: bool,
    wake: Option<u64>,
    cancelled: BTreeSet<RequestId>,
}

impl Node {
    fn local(&self, real: u64) -> Millis {
        let elapsed = real.saturating_sub(T0) as i128;
        let l = real as i128 + self.plan.clock_offset_ms as i128 + elapsed * self.plan.rate_ppm as i128 / 1_000_000;
        Millis(l.max(0) as u64)
    }

    /// The first real time at which the local clock reads at least `at`.
    fn real(&self, at: Millis) -> u64 {
        let rate = 1.0 + self.plan.rate_ppm as f64 / 1e6;
        let guess = T0 as f64 + (at.0 as f64 - self.plan.clock_offset_ms as f64 - T0 as f64) / rate;
        let mut r = guess.max(0.0) as u64;
        while self.local(r) < at {
            r += 1;
        }
        while r > 0 && self.local(r - 1) >= at {
            r -= 1;
        }
        r
    }
}

/// One write of a lease key (`owner` None: deleted).
#[derive(Debug, Clone)]
struct Write {
    revision: u64,
    written: u64,
    owner: Option<String>,
}

/// Runs the plan; `config` must have `ha.enabled`.
pub fn run(config: &Config, plan: &ClusterPlan) -> ClusterTrace {
    let mut w = World::new(config, plan);
    w.run();
    w.trace
}

struct World<'a> {
    config: &'a Config,
    plan: &'a ClusterPlan,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Msg>,
    nodes: Vec<Node>,
    /// Per key, its recent writes, oldest first (the last is the key's value).
    leases: BTreeMap<String, Vec<Write>>,
    state: BTreeMap<String, LimitSnapshot>,
    revision: u64,
    rng: ChaCha8Rng,
    trace: ClusterTrace,
    echo: u64,
}

impl<'a> World<'a> {
    fn new(config: &'a Config, plan: &'a ClusterPlan) -> World<'a> {
        let mut w = World {
            config,
            plan,
            now: T0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes: Vec::new(),
            leases: BTreeMap::new(),
            state: BTreeMap::new(),
            revision: 0,
            rng: ChaCha8Rng::seed_from_u64(plan.seed),
            trace: ClusterTrace::default(),
            echo: 0,
        };
        for (i, p) in plan.instances.iter().enumerate() {
            w.nodes.push(Node {
                plan: p.clone(),
                engine: None,
                id: String::new(),
                generation: 0,
                connected: true,
                wake: None,
                cancelled: BTreeSet::new(),
            });
            w.at(T0 + p.start_at, Msg::Start(i));
            if let Some(t) = p.crash_at {
                w.at(T0 + t, Msg::Crash(i));
            }
            if let Some(t) = p.restart_at {
                w.at(T0 + t, Msg::Start(i));
            }
            if let Some(t) = p.stop_at {
                w.at(T0 + t, Msg::Stop(i));
            }
            for &(from, to) in &p.partitions {
                w.at(T0 + from, Msg::Link { i, up: false });
                w.at(T0 + to, Msg::Link { i, up: true });
            }
        }
        for &(_, to) in &plan.bucket_outages {
            w.at(T0 + to + plan.watch_lag_ms, Msg::Rewatch);
        }
        for (t, channel, cid) in &plan.mentions {
            let body = json!({"event_name": "chatMsg", "channel": channel, "correlation_id": cid,
                "payload": {"username": format!("user-{cid}"), "msg": format!("hey KrytenBot {cid}"), "meta": {}, "time": T0 + t}});
            w.at(T0 + t, Msg::Room(body.to_string().into_bytes()));
        }
        w
    }

    fn at(&mut self, t: u64, m: Msg) {
        self.seq += 1;
        self.queue.insert((t, self.seq), m);
    }

    fn rand(&mut self, max: u64) -> u64 {
        if max == 0 {
            0
        } else {
            self.rng.next_u64() % (max + 1)
        }
    }

    fn ttl(&self) -> u64 {
        self.config.ha.lease_ttl.as_millis() as u64
    }

    fn run(&mut self) {
        let end = T0 + self.plan.duration_ms;
        // Bounded: every message is handled once; engines add finitely many per input.
        let mut steps = 0u64;
        while let Some(((t, _), msg)) = self.queue.pop_first() {
            if t > end {
                break;
            }
            self.now = t;
            self.handle(msg);
            steps += 1;
            assert!(steps < 5_000_000, "cluster simulation does not settle");
        }
    }

    fn alive(&self, i: usize, g: u32) -> bool {
        self.nodes[i].engine.is_some() && self.nodes[i].generation == g
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Room(body) => {
                for i in 0..self.nodes.len() {
                    if self.nodes[i].engine.is_none() {
                        continue;
                    }
                    let d = HOP_MS + self.rand(self.plan.max_delivery_skew_ms);
                    let g = self.nodes[i].generation;
                    let input = Input::Event { subject: None, body: body.clone() };
                    self.at(self.now + d, Msg::Deliver { i, g, input, net: true });
                }
            }
            Msg::Deliver { i, g, input, net } => {
                if let Input::LlmDone { id, .. } = &input {
                    if self.nodes[i].cancelled.remove(id) {
                        return;
                    }
                }
                if self.alive(i, g) && (!net || self.nodes[i].connected) {
                    self.step(i, input);
                }
            }
            Msg::Kv { i, g, op } => self.kv(i, g, op),
            Msg::Wake { i, g } => {
                if self.alive(i, g) && self.nodes[i].wake == Some(self.now) {
                    self.nodes[i].wake = None;
                    self.step(i, Input::Tick);
                }
            }
            Msg::Start(i) => {
                let n = &mut self.nodes[i];
                if n.engine.is_some() {
                    return;
                }
                n.generation += 1;
                n.id = format!("i{i}.{}", n.generation);
                n.connected = !n.plan.partitions.iter().any(|&(f, t)| (T0 + f..T0 + t).contains(&self.now));
                let mut cfg = self.config.clone();
                cfg.ha.instance = n.id.clone();
                let local = n.local(self.now);
                n.engine = Some(Engine::new(cfg, self.plan.seed ^ (i as u64) << 8 ^ n.generation as u64, local));
                if !n.connected {
                    self.step(i, Input::Connection { up: false });
                }
                self.step(i, Input::Tick);
                // The lifecycle startup message: peers learn of it at once.
                self.announce(i);
            }
            Msg::Crash(i) => {
                self.nodes[i].engine = None;
                self.nodes[i].wake = None;
            }
            Msg::Stop(i) => {
                if self.nodes[i].engine.is_some() {
                    self.step(i, Input::Shutdown);
                }
            }
            Msg::Link { i, up } => {
                self.nodes[i].connected = up;
                if self.nodes[i].engine.is_some() {
                    self.step(i, Input::Connection { up });
                }
            }
            Msg::Rewatch => {
                let (now, ttl) = (self.now, self.ttl());
                let replay: Vec<LeaseEvent> = self
                    .leases
                    .iter()
                    .filter_map(|(channel, ws)| {
                        let w = ws.last().filter(|w| now < w.written + ttl)?;
                        Some(LeaseEvent::Seen {
                            channel: channel.clone(),
                            owner: w.owner.clone()?,
                            revision: w.revision,
                            fresh: false,
                        })
                    })
                    .collect();
                for ev in replay {
                    self.broadcast(None, ev);
                }
            }
        }
    }

    /// Whether the lease bucket has no leader at real time `t`.
    fn bucket_down(&self, t: u64) -> bool {
        self.plan.bucket_outages.iter().any(|&(f, to)| (T0 + f..T0 + to).contains(&t))
    }

    /// Whether watches deliver nothing at real time `t` (the bucket is down, or it is
    /// back but the watches are not yet).
    fn watch_down(&self, t: u64) -> bool {
        let lag = self.plan.watch_lag_ms;
        self.plan.bucket_outages.iter().any(|&(f, to)| (T0 + f..T0 + to + lag).contains(&t))
    }

    /// The write of `key` a compare-and-set at `now` is checked against, if it is a
    /// live lease: the latest one at least `commit_lag_ms` old.
    fn checked(&self, key: &str) -> Option<&Write> {
        let (now, ttl, lag) = (self.now, self.ttl(), self.plan.commit_lag_ms);
        let w = self.leases.get(key)?.iter().rev().find(|w| w.written + lag <= now)?;
        (w.owner.is_some() && now < w.written + ttl).then_some(w)
    }

    /// Writes `key` (a new revision); keeps the writes a check may still see.
    fn write(&mut self, key: String, owner: Option<String>) -> u64 {
        let (now, lag) = (self.now, self.plan.commit_lag_ms);
        self.revision += 1;
        let ws = self.leases.entry(key).or_default();
        ws.push(Write { revision: self.revision, written: now, owner });
        // The newest write old enough for every check, and the ones after it.
        if let Some(keep) = ws.iter().rposition(|w| w.written + lag <= now) {
            ws.drain(..keep);
        }
        self.revision
    }

    /// Sends `ev` to every running, connected instance but `except`, over the network.
    /// A watch notification (`Seen`, `Free`) leaves once its write is committed and is
    /// lost if it would arrive while the watches are down.
    fn broadcast(&mut self, except: Option<usize>, ev: LeaseEvent) {
        let watched = matches!(ev, LeaseEvent::Seen { .. } | LeaseEvent::Free { .. });
        for j in 0..self.nodes.len() {
            if Some(j) == except || self.nodes[j].engine.is_none() {
                continue;
            }
            let d = HOP_MS + self.rand(20) + if watched { self.plan.commit_lag_ms } else { 0 };
            if watched && self.watch_down(self.now + d) {
                continue;
            }
            let g = self.nodes[j].generation;
            self.at(self.now + d, Msg::Deliver { i: j, g, input: Input::Lease(ev.clone()), net: true });
        }
    }

    /// The server applies `op` from instance `i`, answers it and notifies watchers.
    fn kv(&mut self, i: usize, g: u32, op: LeaseOp) {
        let (now, ttl) = (self.now, self.ttl());
        let key = |c: &str| c.to_lowercase();
        let owner = self.nodes[i].id.clone();
        if self.bucket_down(now) {
            // No leader: nothing is applied; the client hears "no responders" at once or
            // gives up after its timeout.
            let when = if self.rand(1) == 0 { now + HOP_MS } else { now + ttl / 4 };
            self.at(when, Msg::Deliver { i, g, input: Input::Lease(op.failed()), net: false });
            return;
        }
        let (answer, notify) = match op {
            LeaseOp::Acquire { channel } => {
                if self.checked(&key(&channel)).is_some() {
                    (LeaseEvent::Taken { channel }, None)
                } else {
                    let revision = self.write(key(&channel), Some(owner.clone()));
                    self.trace.acquisitions.push((now - T0, owner.clone(), channel.clone()));
                    let state = self.state.get(&key(&channel)).cloned();
                    // A new ownership begins: the state says so (see LeaseOp::Acquire).
                    let at = self.nodes[i].local(now).0;
                    if let Some(taken) = LimitSnapshot::taken(state.as_ref(), at) {
                        self.state.insert(key(&channel), taken);
                    }
                    let seen = LeaseEvent::Seen { channel: channel.clone(), owner, revision, fresh: true };
                    (LeaseEvent::Acquired { channel, revision, state }, Some(seen))
                }
            }
            LeaseOp::Renew { channel, revision } => {
                if self.checked(&key(&channel)).is_some_and(|w| w.revision == revision) {
                    let revision = self.write(key(&channel), Some(owner.clone()));
                    let seen = LeaseEvent::Seen { channel: channel.clone(), owner, revision, fresh: true };
                    (LeaseEvent::Renewed { channel, revision }, Some(seen))
                } else {
                    (LeaseEvent::Taken { channel }, None)
                }
            }
            LeaseOp::Save { channel, state } => {
                self.state.insert(key(&channel), state);
                (LeaseEvent::Saved { channel }, None)
            }
            LeaseOp::Release { channel, revision, state } => {
                self.state.insert(key(&channel), state);
                if self.checked(&key(&channel)).is_some_and(|w| w.revision == revision) {
                    self.write(key(&channel), None);
                    (LeaseEvent::Released { channel: channel.clone() }, Some(LeaseEvent::Free { channel }))
                } else {
                    (LeaseEvent::Failed { channel }, None)
                }
            }
        };
        if let Some(ev) = notify {
            self.broadcast(None, ev);
        }
        // The answer leaves once the write is committed. It is lost if the link is down
        // when it arrives (the client times out), or if the leader dies before it leaves.
        let back = self.now + self.plan.commit_lag_ms + HOP_MS;
        let cut = self.nodes[i].plan.partitions.iter().any(|&(f, t)| (T0 + f..T0 + t).contains(&back))
            || self.bucket_down(back);
        let (when, ev) = if cut { (self.now + ttl / 4, failed(answer)) } else { (back, answer) };
        self.at(when, Msg::Deliver { i, g, input: Input::Lease(ev), net: false });
    }

    /// Instance `i` says it is alive (lifecycle startup or heartbeat), if it can be heard.
    fn announce(&mut self, i: usize) {
        if self.nodes[i].connected {
            let instance = self.nodes[i].id.clone();
            self.broadcast(Some(i), LeaseEvent::Peer { instance, alive: true });
        }
    }

    /// One input to instance `i` and the drain rule.
    fn step(&mut self, i: usize, input: Input) {
        let local = self.nodes[i].local(self.now);
        let g = self.nodes[i].generation;
        let Some(engine) = self.nodes[i].engine.as_mut() else { return };
        let effects: Vec<Effect> = engine.step(local, input).collect();
        let next = engine.poll_timeout();
        for e in effects {
            match e {
                Effect::CallLlm(call) => {
                    let latency = self.rand(self.plan.max_llm_latency_ms);
                    let text = format!("sure thing ({})", call.id.0);
                    let input = Input::LlmDone { id: call.id, result: Ok(LlmReply::new(text, None)) };
                    self.at(self.now + latency, Msg::Deliver { i, g, input, net: false });
                }
                Effect::CancelLlm(id) => {
                    self.nodes[i].cancelled.insert(id);
                }
                Effect::Publish(cmd) => {
                    let connected = self.nodes[i].connected;
                    self.trace.published.push(Published {
                        at: self.now - T0,
                        instance: self.nodes[i].id.clone(),
                        channel: cmd.channel.clone(),
                        correlation_id: cmd.correlation_id.clone(),
                        connected,
                    });
                    if connected {
                        self.echo += 1;
                        let body = json!({"event_name": "chatMsg", "channel": cmd.channel, "correlation_id": format!("echo-{}", self.echo),
                            "payload": {"username": self.config.bot.name, "msg": cmd.kind.text(), "meta": {}, "time": self.now}});
                        self.at(self.now + HOP_MS, Msg::Room(body.to_string().into_bytes()));
                    }
                }
                Effect::Lease(op) => {
                    if self.nodes[i].connected {
                        self.at(self.now + HOP_MS, Msg::Kv { i, g, op });
                    } else {
                        let when = self.now + self.ttl() / 4;
                        self.at(when, Msg::Deliver { i, g, input: Input::Lease(op.failed()), net: false });
                    }
                }
                Effect::ShutdownComplete => {
                    let instance = self.nodes[i].id.clone();
                    if self.nodes[i].connected {
                        self.broadcast(Some(i), LeaseEvent::Peer { instance, alive: false });
                    }
                    self.nodes[i].engine = None;
                    self.nodes[i].wake = None;
                    return;
                }
                Effect::Heartbeat => self.announce(i),
                Effect::Decision(_) | Effect::Moderation(_) => {}
            }
        }
        if let Some(t) = next {
            let real = self.nodes[i].real(t).max(self.now);
            if self.nodes[i].wake != Some(real) {
                self.nodes[i].wake = Some(real);
                self.at(real, Msg::Wake { i, g });
            }
        }
    }
}

fn failed(ev: LeaseEvent) -> LeaseEvent {
    match ev {
        LeaseEvent::Acquired { channel, .. }
        | LeaseEvent::Renewed { channel, .. }
        | LeaseEvent::Taken { channel }
        | LeaseEvent::Released { channel } => LeaseEvent::Failed { channel },
        LeaseEvent::Saved { channel } => LeaseEvent::SaveFailed { channel },
        other => other,
    }
}
