//! The sans-IO engine of llm-chatbot: it decides when the bot speaks, how often, and
//! what it may say, for any number of CyTube channels at once.
//!
//! The engine is a synchronous state machine in the style of quinn-proto and str0m. It
//! never reads a clock, sleeps, does I/O, spawns or touches a global RNG: time arrives as
//! an argument ([`Millis`]), randomness comes from per-channel ChaCha8 generators seeded
//! at construction, and everything it wants done comes out as an [`Effect`].
//!
//! # The drain rule
//!
//! Callers (the runtime and the simulator alike) must follow one loop:
//!
//! 1. call [`Engine::handle`]`(now, input)` for each input (NATS event, LLM answer,
//!    reload, shutdown, connection change), or with [`Input::Tick`] when the timeout
//!    from step 3 has passed;
//! 2. drain [`Engine::poll_effect`] until it returns `None`, executing each effect;
//! 3. sleep until [`Engine::poll_timeout`] (or the next input), then go to 1.
//!
//! [`Engine::step`] is steps 1 and 2 in one call; the daemon and the simulator both step
//! the engine with it, one input at a time, so neither can batch inputs before draining
//! (a test runs the real daemon and the simulator on the same events and compares their
//! decisions). Same config, seed and inputs (with the same `now`s) give the same
//! effects, byte for byte.
#![warn(missing_docs)]

pub mod budget;
mod channel;
pub mod config;
pub mod context;
pub mod contract;
pub mod engine;
pub mod event;
pub mod html;
pub mod lease;
pub mod limit;
pub mod response;
pub mod template;
pub mod time;
pub mod timer;
pub mod trigger;

pub use channel::{ChannelStats, ChannelStatus};
pub use config::{Config, ConfigError};
pub use contract::{
    Cause, Command, CommandKind, Control, Decision, Effect, Input, LlmCall, LlmError, LlmReply, ModerationRecord,
    Outcome, PromptMessage, Purpose, Reason, RequestId, Role, RoomSnapshot, Usage,
};
pub use engine::Engine;
pub use lease::{LeaseEvent, LeaseOp, LeaseStats, LimitSnapshot};
pub use time::Millis;
pub use trigger::Trigger;
