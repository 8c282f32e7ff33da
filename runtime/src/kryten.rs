//! The Kryten wire: subjects and JSON bodies exactly as Kryten-Robot 1.12 and kryten-py
//! 0.17 use them (`reference/kryten-wire.md`). Pure functions, so every shape is tested
//! without a server.

use chatbot_core::config::{CommandScheme, SubjectScheme};
use chatbot_core::{Command, CommandKind, Control, Millis};
use serde_json::{json, Value};

/// Kryten's subject token normalisation (`subject_builder.normalize_token`): lower-case,
/// drop `.`, space to `-`, drop wildcard and punctuation characters, at most 100 chars.
pub fn normalize_token(s: &str) -> String {
    s.to_lowercase()
        .replace('.', "")
        .replace(' ', "-")
        .chars()
        .filter(|c| !"*>!@#$%^&()+=[]{|}\\:;\"'<>,?/`".contains(*c))
        .take(100)
        .collect()
}

/// The subscription subject for one channel's events.
pub fn event_subject(scheme: SubjectScheme, channel: &str) -> String {
    match scheme {
        SubjectScheme::Kryten => format!("kryten.events.cytube.{}.>", normalize_token(channel)),
        SubjectScheme::Legacy => format!("cytube.events.{}.>", normalize_token(channel)),
    }
}

/// Where and what to publish for a command.
pub fn command_message(
    scheme: CommandScheme,
    cmd: &Command,
    domain: &str,
    service: &str,
    now: Millis,
    request_id: &str,
) -> (String, Vec<u8>) {
    let mut body = match scheme {
        CommandScheme::Robot => {
            let mut meta = json!({
                "source": service,
                "timestamp": now.to_rfc3339(),
                "domain": domain,
                "channel": cmd.channel,
                "request_id": request_id,
            });
            // What caused it, for `record` (the robot reads only `domain` and `channel`).
            cause_fields(&mut meta, cmd);
            let (command, args) = match &cmd.kind {
                CommandKind::Say { text } => ("say", json!({ "message": text })),
                CommandKind::Pm { to, text } => ("pm", json!({ "to": to, "msg": text })),
            };
            return (
                "kryten.robot.command".into(),
                json!({"command": command, "args": args, "meta": meta}).to_string().into_bytes(),
            );
        }
        CommandScheme::Legacy => match &cmd.kind {
            CommandKind::Say { text } => json!({"action": "chat", "data": {"message": text}}),
            CommandKind::Pm { to, text } => json!({"action": "pm", "data": {"to": to, "message": text}}),
        },
    };
    // Legacy: `data` becomes the emit's arguments, so the cause goes beside it (kryten-py
    // 0.4-0.9 sent `correlation_id` there too; the robot ignores it).
    cause_fields(&mut body, cmd);
    (format!("kryten.commands.cytube.{}.chat", normalize_token(&cmd.channel)), body.to_string().into_bytes())
}

/// `correlation_id` (the event answered), `trigger` and `llm_ms` (the LLM's latency)
/// of a command, added to `v` when known.
fn cause_fields(v: &mut Value, cmd: &Command) {
    if let Some(cid) = &cmd.correlation_id {
        v["correlation_id"] = json!(cid);
    }
    if let Some(cause) = cmd.cause {
        v["trigger"] = json!(cause.trigger.label());
        if let Some(ms) = cause.llm_ms {
            v["llm_ms"] = json!(ms);
        }
    }
}

/// Identity fields every lifecycle message carries (kryten-py `lifecycle_events.py`).
pub struct Identity<'a> {
    /// Our service name.
    pub service: &'a str,
    /// Our version.
    pub version: &'a str,
    /// This machine.
    pub hostname: &'a str,
    /// Port of /health and /metrics.
    pub http_port: u16,
    /// The instance id when `ha` is on (in `metadata.instance`).
    pub instance: Option<&'a str>,
    /// The engine's seed and start (in `metadata.seed`, `metadata.session_start`).
    pub session: Option<Session>,
}

/// One run of the engine: what a recording needs to replay it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// The engine's seed.
    pub seed: u64,
    /// When the engine started (chat older than this is backlog).
    pub start: Millis,
}

/// `kryten.lifecycle.{service}.{kind}` and its body.
pub fn lifecycle(id: &Identity, kind: &str, now: Millis, uptime_s: f64, reason: Option<&str>) -> (String, Vec<u8>) {
    let mut body = json!({
        "service": id.service,
        "version": id.version,
        "hostname": id.hostname,
        "timestamp": now.to_rfc3339(),
        "uptime_seconds": (uptime_s * 1000.0).round() / 1000.0,
        "metadata": {"endpoints": {
            "health": {"port": id.http_port, "path": "/health"},
            "metrics": {"port": id.http_port, "path": "/metrics"},
        }},
    });
    if let Some(r) = reason {
        body["reason"] = json!(r);
    }
    if let Some(i) = id.instance {
        body["metadata"]["instance"] = json!(i);
    }
    if let Some(session) = id.session {
        body["metadata"]["seed"] = json!(session.seed);
        body["metadata"]["session_start"] = json!(session.start.to_rfc3339());
    }
    (format!("kryten.lifecycle.{}.{kind}", id.service), body.to_string().into_bytes())
}

/// A command of ours seen on the wire, as a recording note: `service`'s robot commands
/// (`meta.source`) for one of `channels`, or a legacy command on a channel subject.
/// `received` dates a command without `meta.timestamp`.
pub fn command_note(
    subject: &str,
    body: &[u8],
    service: &str,
    channels: &[String],
    received: Millis,
) -> Option<chatbot_sim::recording::CommandNote> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let (kind, args, cause, channel, at) = if subject == "kryten.robot.command" {
        let meta = v.get("meta")?;
        if meta.get("source").and_then(Value::as_str) != Some(service) {
            return None;
        }
        let channel = str_of(meta, "channel")?;
        let at = meta.get("timestamp").and_then(Value::as_str).and_then(Millis::parse_rfc3339).unwrap_or(received);
        (str_of(&v, "command")?, v.get("args")?, meta, channel, at)
    } else {
        let token = subject.strip_prefix("kryten.commands.cytube.")?.split('.').next()?;
        let channel = channels.iter().find(|c| normalize_token(c) == token)?.clone();
        let kind = match v.get("action").and_then(Value::as_str)? {
            "chat" => "say",
            "pm" => "pm",
            _ => return None,
        };
        (kind.to_owned(), v.get("data")?, &v, channel, received)
    };
    let channel = channels.iter().find(|c| c.eq_ignore_ascii_case(&channel))?.clone();
    let text = str_of(args, "message").or_else(|| str_of(args, "msg"))?;
    Some(chatbot_sim::recording::CommandNote {
        at,
        channel,
        to: if kind == "pm" { str_of(args, "to") } else { None },
        kind,
        text,
        correlation_id: str_of(cause, "correlation_id"),
        trigger: str_of(cause, "trigger"),
        llm_ms: cause.get("llm_ms").and_then(Value::as_u64),
    })
}

/// Our lifecycle `startup` message as a recording note (it carries the engine's seed and
/// start since the replay-fidelity work; older bots' do not, and give `None`).
pub fn session_note(body: &[u8], received: Millis) -> Option<chatbot_sim::recording::Note> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let meta = v.get("metadata")?;
    Some(chatbot_sim::recording::Note::Session {
        at: received,
        seed: meta.get("seed")?.as_u64()?,
        start: Millis::parse_rfc3339(meta.get("session_start")?.as_str()?)?,
        instance: meta.get("instance").and_then(Value::as_str).map(str::to_owned),
    })
}

/// Another instance's lifecycle message as lease news (`ha`): startup and heartbeat say
/// it is alive, shutdown that it left. `None` for anything without an instance id.
pub fn peer_event(subject: &str, body: &[u8]) -> Option<chatbot_core::LeaseEvent> {
    let kind = subject.rsplit('.').next()?;
    let v: Value = serde_json::from_slice(body).ok()?;
    let instance = v.get("metadata")?.get("instance")?.as_str()?.to_owned();
    let alive = match kind {
        "startup" | "heartbeat" => true,
        "shutdown" => false,
        _ => return None,
    };
    Some(chatbot_core::LeaseEvent::Peer { instance, alive })
}

/// A request on `kryten.{service}.command`, parsed. Arguments may stand at the top level
/// or under `args` (kryten-py sends both shapes).
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceCommand {
    /// `channel.mute`, `channel.unmute`, `context.clear`: an operator control.
    Control {
        /// The channel named (not yet checked against the config).
        channel: Option<String>,
        /// What to do.
        action: Control,
    },
    /// `decisions.recent`: the channel's last decisions, at most `limit`.
    RecentDecisions {
        /// The channel named.
        channel: Option<String>,
        /// How many (default 20, at most [`chatbot_core::engine::RECENT_DECISIONS`]).
        limit: usize,
    },
    /// `budget.status`: tokens spent and allowed.
    BudgetStatus,
    /// `system.ping`.
    Ping,
    /// `system.health`: the /health document.
    Health,
    /// A known command with an unusable argument (why).
    BadArgument(String),
    /// A command we do not know.
    Unknown,
    /// Not a JSON object with a string `command`.
    Malformed,
}

/// A parsed service request: the command's name as sent (echoed in the reply) and what
/// it asks.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRequest {
    /// `command` as sent; empty when malformed.
    pub name: String,
    /// What it asks.
    pub command: ServiceCommand,
}

impl ServiceRequest {
    /// Reads a request body. Never fails: anything unusable is `Malformed`.
    pub fn parse(payload: &[u8]) -> ServiceRequest {
        let req: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        let Some(name) = req.get("command").and_then(Value::as_str).map(str::to_owned) else {
            return ServiceRequest { name: String::new(), command: ServiceCommand::Malformed };
        };
        let arg = |k: &str| req.get(k).or_else(|| req.get("args").and_then(|a| a.get(k)));
        let channel = arg("channel").and_then(Value::as_str).map(str::to_owned);
        let control = |action| ServiceCommand::Control { channel: channel.clone(), action };
        let command = match name.as_str() {
            "channel.mute" => {
                // An optional `duration` (`10m`); without one, until unmuted.
                match arg("duration").and_then(Value::as_str).map(|d| humantime::parse_duration(d.trim())) {
                    None => control(Control::Mute(None)),
                    Some(Ok(d)) if !d.is_zero() => control(Control::Mute(Some(d))),
                    Some(_) => ServiceCommand::BadArgument("duration: write e.g. 10m, 1h".into()),
                }
            }
            "channel.unmute" => control(Control::Unmute),
            "context.clear" => control(Control::ClearContext),
            "decisions.recent" => {
                let cap = chatbot_core::engine::RECENT_DECISIONS as u64;
                let limit = arg("limit").and_then(Value::as_u64).unwrap_or(20).min(cap) as usize;
                ServiceCommand::RecentDecisions { channel: channel.clone(), limit }
            }
            "budget.status" => ServiceCommand::BudgetStatus,
            "system.ping" => ServiceCommand::Ping,
            "system.health" => ServiceCommand::Health,
            _ => ServiceCommand::Unknown,
        };
        ServiceRequest { name, command }
    }

    /// A successful reply carrying `data`.
    pub fn ok(&self, service: &str, data: Value) -> Vec<u8> {
        json!({"service": service, "command": self.name, "success": true, "data": data}).to_string().into_bytes()
    }

    /// A failed reply saying why.
    pub fn fail(&self, service: &str, error: &str) -> Vec<u8> {
        match self.command {
            ServiceCommand::Malformed => {
                json!({"service": service, "success": false, "error": "expected a JSON object with \"command\""})
            }
            _ => json!({"service": service, "command": self.name, "success": false, "error": error}),
        }
        .to_string()
        .into_bytes()
    }
}

/// The reply to `system.ping`, `system.health` and requests we cannot serve (kryten-py's
/// shapes). `health` renders our health.
pub fn service_reply(
    id: &Identity,
    req: &ServiceRequest,
    now: Millis,
    uptime_s: f64,
    health: impl FnOnce() -> Value,
) -> Vec<u8> {
    match req.command {
        ServiceCommand::Ping => req.ok(
            id.service,
            json!({"pong": true, "service": id.service, "version": id.version,
                   "uptime_seconds": uptime_s, "timestamp": now.to_rfc3339()}),
        ),
        ServiceCommand::Health => req.ok(id.service, health()),
        _ => req.fail(id.service, &format!("unknown command: {}", req.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(kind: CommandKind) -> Command {
        Command { channel: "Lounge".into(), kind, correlation_id: None, cause: None }
    }

    #[test]
    fn event_subjects_follow_both_schemes() {
        assert_eq!(event_subject(SubjectScheme::Kryten, "Lounge"), "kryten.events.cytube.lounge.>");
        assert_eq!(event_subject(SubjectScheme::Legacy, "movies"), "cytube.events.movies.>");
        assert_eq!(normalize_token("My Room.v2*"), "my-roomv2");
    }

    #[test]
    fn say_is_a_robot_command_with_routing_meta() {
        let (subject, body) = command_message(
            CommandScheme::Robot,
            &cmd(CommandKind::Say { text: "hi".into() }),
            "cytu.be",
            "llm",
            Millis(1_768_473_000_123),
            "r-1",
        );
        assert_eq!(subject, "kryten.robot.command");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["command"], "say");
        assert_eq!(v["args"], json!({"message": "hi"}));
        assert_eq!(v["meta"]["domain"], "cytu.be");
        assert_eq!(v["meta"]["channel"], "Lounge");
        assert_eq!(v["meta"]["request_id"], "r-1");
        assert_eq!(v["meta"]["source"], "llm");
        assert_eq!(v["meta"]["timestamp"], "2026-01-15T10:30:00.123000+00:00");
        assert!(v["meta"].get("correlation_id").is_none(), "nothing caused it");

        let mut reply = cmd(CommandKind::Say { text: "hi".into() });
        reply.correlation_id = Some("ev-7".into());
        reply.cause = Some(chatbot_core::Cause { trigger: chatbot_core::Trigger::Mention, llm_ms: Some(840) });
        for scheme in [CommandScheme::Robot, CommandScheme::Legacy] {
            let (_, body) = command_message(scheme, &reply, "d", "llm", Millis(0), "r-2");
            let v: Value = serde_json::from_slice(&body).unwrap();
            let at = if matches!(scheme, CommandScheme::Robot) { &v["meta"] } else { &v };
            assert_eq!(
                (at["correlation_id"].as_str(), at["trigger"].as_str(), at["llm_ms"].as_u64()),
                (Some("ev-7"), Some("mention"), Some(840))
            );
        }
    }

    #[test]
    fn record_reads_our_commands_back_in_both_schemes_and_no_one_elses() {
        let mut reply = cmd(CommandKind::Pm { to: "alice".into(), text: "psst".into() });
        reply.correlation_id = Some("ev-9".into());
        reply.cause = Some(chatbot_core::Cause { trigger: chatbot_core::Trigger::Pm, llm_ms: Some(12) });
        let channels = ["lounge".to_string()];
        let sent = Millis(1_768_473_000_500);
        for scheme in [CommandScheme::Robot, CommandScheme::Legacy] {
            let (subject, body) = command_message(scheme, &reply, "d", "llm", sent, "r-3");
            let note = command_note(&subject, &body, "llm", &channels, Millis(1)).unwrap();
            assert_eq!(
                (note.channel.as_str(), note.kind.as_str(), note.to.as_deref(), note.text.as_str()),
                ("lounge", "pm", Some("alice"), "psst")
            );
            assert_eq!(
                (note.correlation_id.as_deref(), note.trigger.as_deref(), note.llm_ms),
                (Some("ev-9"), Some("pm"), Some(12))
            );
            let expected_at = if matches!(scheme, CommandScheme::Robot) { sent } else { Millis(1) };
            assert_eq!(note.at, expected_at, "meta.timestamp when there is one, else when it was seen");
            assert!(command_note(&subject, &body, "other-bot", &["movies".to_string()], Millis(1)).is_none());
        }
        let (subject, body) = command_message(CommandScheme::Robot, &reply, "d", "another-service", sent, "r-4");
        assert!(command_note(&subject, &body, "llm", &channels, Millis(1)).is_none(), "another service's command");
    }

    #[test]
    fn pm_uses_to_and_msg() {
        let (_, body) = command_message(
            CommandScheme::Robot,
            &cmd(CommandKind::Pm { to: "alice".into(), text: "psst".into() }),
            "d",
            "llm",
            Millis(0),
            "r",
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((v["command"].as_str(), &v["args"]), (Some("pm"), &json!({"to": "alice", "msg": "psst"})));
    }

    #[test]
    fn legacy_commands_go_to_the_channel_subject() {
        let (subject, body) = command_message(
            CommandScheme::Legacy,
            &cmd(CommandKind::Say { text: "hi".into() }),
            "d",
            "llm",
            Millis(0),
            "r",
        );
        assert_eq!(subject, "kryten.commands.cytube.lounge.chat");
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            json!({"action": "chat", "data": {"message": "hi"}})
        );
    }

    #[test]
    fn lifecycle_and_service_replies_have_kryten_py_shapes() {
        let session = Session { seed: 42, start: Millis(1_768_473_000_000) };
        let id = Identity {
            service: "llm",
            version: "0.1.0",
            hostname: "h",
            http_port: 8080,
            instance: None,
            session: Some(session),
        };
        let (subject, body) = lifecycle(&id, "shutdown", Millis(0), 1.5, Some("SIGTERM"));
        assert_eq!(subject, "kryten.lifecycle.llm.shutdown");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((v["service"].as_str(), v["reason"].as_str()), (Some("llm"), Some("SIGTERM")));
        assert_eq!(v["metadata"]["endpoints"]["health"]["port"], 8080);
        assert_eq!(v["metadata"]["seed"], 42);
        assert_eq!(v["metadata"]["session_start"], "2026-01-15T10:30:00.000000+00:00");

        let reply = |body: &[u8]| -> Value {
            serde_json::from_slice(&service_reply(
                &id,
                &ServiceRequest::parse(body),
                Millis(0),
                2.0,
                || json!({"status": "ok"}),
            ))
            .unwrap()
        };
        let ping = reply(br#"{"command":"system.ping"}"#);
        assert_eq!((ping["success"].as_bool(), ping["data"]["pong"].as_bool()), (Some(true), Some(true)));
        assert_eq!(reply(br#"{"command":"system.health"}"#)["data"]["status"], "ok");
        let bad = reply(b"nope");
        assert_eq!(bad["success"], false);
        assert!(bad.get("command").is_none());
        let unknown = reply(br#"{"command":"x.y"}"#);
        assert_eq!(
            (unknown["command"].as_str(), unknown["error"].as_str()),
            (Some("x.y"), Some("unknown command: x.y"))
        );
    }

    #[test]
    fn service_commands_parse_with_arguments_at_the_top_or_under_args() {
        let parse = |b: &str| ServiceRequest::parse(b.as_bytes()).command;
        let mute = ServiceCommand::Control { channel: Some("lounge".into()), action: Control::Mute(None) };
        assert_eq!(parse(r#"{"command":"channel.mute","channel":"lounge"}"#), mute);
        assert_eq!(parse(r#"{"command":"channel.mute","args":{"channel":"lounge"}}"#), mute);
        assert_eq!(
            parse(r#"{"command":"context.clear"}"#),
            ServiceCommand::Control { channel: None, action: Control::ClearContext }
        );
        assert_eq!(
            parse(r#"{"command":"decisions.recent","args":{"channel":"a","limit":5000}}"#),
            ServiceCommand::RecentDecisions {
                channel: Some("a".into()),
                limit: chatbot_core::engine::RECENT_DECISIONS
            }
        );
        assert_eq!(
            parse(r#"{"command":"decisions.recent","channel":"a"}"#),
            ServiceCommand::RecentDecisions { channel: Some("a".into()), limit: 20 }
        );
        assert_eq!(
            parse(r#"{"command":"channel.mute","args":{"channel":"lounge","duration":"10m"}}"#),
            ServiceCommand::Control {
                channel: Some("lounge".into()),
                action: Control::Mute(Some(std::time::Duration::from_secs(600)))
            }
        );
        assert!(matches!(parse(r#"{"command":"channel.mute","duration":"soon"}"#), ServiceCommand::BadArgument(_)));
        assert_eq!(parse(r#"{"command":"budget.status"}"#), ServiceCommand::BudgetStatus);
        assert_eq!(parse(r#"{"command":"what"}"#), ServiceCommand::Unknown);
        assert_eq!(parse(r#"{"command":3}"#), ServiceCommand::Malformed);
        assert_eq!(parse("[]"), ServiceCommand::Malformed);
    }
}
