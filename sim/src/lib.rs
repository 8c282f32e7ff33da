//! The deterministic simulator: the production [`Engine`] driven in virtual time.
//!
//! Time jumps from one thing to the next (a corpus event, an LLM answer, an engine timer),
//! never by ticks, so hours of chat replay in milliseconds. LLM calls are answered by a
//! [`Responder`] after a virtual latency; faults come from a seed. The simulator obeys
//! the engine's drain rule exactly as the runtime does, so what replay shows is what the
//! daemon would do. Same corpus, config and seed give the same trace, byte for byte.

pub mod corpus;
pub mod ha;
pub mod llm;
pub mod recording;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chatbot_core::{Config, Effect, Engine, Input, LlmError, LlmReply, Millis, RequestId};

pub use llm::{Answer, FaultPlan, Faults, Offline, Responder, Script};

/// Something that happened in a simulation, at a virtual time.
#[derive(Debug, Clone, PartialEq)]
pub struct Traced {
    /// Virtual time.
    pub at: Millis,
    /// What happened.
    pub what: TraceItem,
}

/// The kinds of things a trace holds.
#[derive(Debug, Clone, PartialEq)]
pub enum TraceItem {
    /// An effect the engine produced.
    Effect(Effect),
    /// The simulated LLM answered a request (after its latency).
    Answered {
        /// Which request.
        id: RequestId,
        /// Provider that was asked.
        provider: String,
        /// Reply text or failure.
        result: Result<LlmReply, LlmError>,
    },
}

/// An answer on its way: request, provider asked, result.
type Pending = (RequestId, String, Result<LlmReply, LlmError>);

/// Livelock guard: no single `advance_to` may take more steps than this.
const MAX_STEPS_PER_ADVANCE: u64 = 10_000_000;

/// A running simulation.
pub struct Sim {
    engine: Engine,
    llm: Box<dyn Responder>,
    faults: Option<Faults>,
    now: Millis,
    /// Answers waiting for their virtual arrival: (time, sequence) → answer.
    answers: BTreeMap<(Millis, u64), Pending>,
    /// Requests the engine cancelled; their answers are not delivered.
    cancelled: BTreeSet<RequestId>,
    seq: u64,
    trace: Vec<Traced>,
}

impl Sim {
    /// A simulation starting at `start` (the engine's start: earlier chat is backlog).
    /// It is one instance holding every channel: `ha` is switched off (see [`ha`] for
    /// several instances sharing leases).
    pub fn new(mut config: Config, seed: u64, start: Millis, llm: Box<dyn Responder>, faults: Option<Faults>) -> Sim {
        config.ha.enabled = false;
        Sim {
            engine: Engine::new(config, seed, start),
            llm,
            faults,
            now: start,
            answers: BTreeMap::new(),
            cancelled: BTreeSet::new(),
            seq: 0,
            trace: Vec::new(),
        }
    }

    /// The bot restarted at `start` with `seed` (a recording's next session): a new
    /// engine, nothing in flight; the LLM and the faults carry on.
    pub fn restart(&mut self, mut config: Config, seed: u64, start: Millis) {
        config.ha.enabled = false;
        self.advance_to(start);
        self.engine = Engine::new(config, seed, start);
        self.answers.clear();
        self.cancelled.clear();
        self.now = self.now.max(start);
    }

    /// The LLM stand-in.
    pub fn llm(&self) -> &dyn Responder {
        self.llm.as_ref()
    }

    /// The current virtual time.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// The engine, for status and counters.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Everything traced so far.
    pub fn trace(&self) -> &[Traced] {
        &self.trace
    }

    /// Takes the trace, leaving it empty (for streaming consumers).
    pub fn take_trace(&mut self) -> Vec<Traced> {
        std::mem::take(&mut self.trace)
    }

    /// Delivers `input` at virtual time `at`, after everything due before it.
    pub fn feed(&mut self, at: Millis, input: Input) {
        let at = at.max(self.now);
        self.advance_to(at);
        self.step(at, input);
    }

    /// Lets virtual time pass up to `until`: LLM answers and engine timers fire in order.
    pub fn advance_to(&mut self, until: Millis) {
        let mut steps = 0u64;
        loop {
            let next_answer = self.answers.keys().next().map(|(t, _)| *t);
            let next_timer = self.engine.poll_timeout();
            let next = match (next_answer, next_timer) {
                (Some(a), Some(t)) => a.min(t),
                (a, t) => match a.or(t) {
                    Some(n) => n,
                    None => break,
                },
            };
            if next > until {
                break;
            }
            if next_answer == Some(next) {
                let Some((_, (id, provider, result))) = self.answers.pop_first() else { break };
                if self.cancelled.remove(&id) {
                    continue;
                }
                self.trace
                    .push(Traced { at: next, what: TraceItem::Answered { id, provider, result: result.clone() } });
                self.step(next, Input::LlmDone { id, result });
            } else {
                self.step(next, Input::Tick);
            }
            steps += 1;
            assert!(
                steps < MAX_STEPS_PER_ADVANCE,
                "simulation livelock at {next:?}: the engine keeps waking without progress"
            );
        }
        self.now = self.now.max(until);
    }

    /// Runs until no LLM answer is outstanding, then `tail` more (queued sends leave).
    pub fn finish(&mut self, tail: Duration) {
        while let Some((t, _)) = self.answers.keys().next().copied() {
            self.advance_to(t);
        }
        self.advance_to(self.now.after(tail));
    }

    /// One `handle` plus the drain rule.
    fn step(&mut self, at: Millis, input: Input) {
        self.now = self.now.max(at);
        let effects: Vec<Effect> = self.engine.step(self.now, input).collect();
        for effect in effects {
            match &effect {
                Effect::CallLlm(call) => {
                    let mut answer = self.llm.respond_at(call, self.now);
                    if let Some(f) = self.faults.as_mut() {
                        answer = f.apply(answer);
                    }
                    self.seq += 1;
                    let due = self.now.after(answer.latency);
                    self.answers.insert((due, self.seq), (call.id, call.provider.clone(), answer.result));
                }
                Effect::CancelLlm(id) => {
                    self.cancelled.insert(*id);
                }
                Effect::Publish(_)
                | Effect::Decision(_)
                | Effect::Moderation(_)
                | Effect::Lease(_)
                | Effect::Heartbeat
                | Effect::ShutdownComplete => {}
            }
            self.trace.push(Traced { at: self.now, what: TraceItem::Effect(effect) });
        }
    }
}
