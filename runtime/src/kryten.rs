//! The Kryten wire: subjects and JSON bodies exactly as Kryten-Robot 1.12 and kryten-py
//! 0.17 use them (`reference/kryten-wire.md`). Pure functions, so every shape is tested
//! without a server.

use chatbot_core::config::{CommandScheme, SubjectScheme};
use chatbot_core::{Command, CommandKind, Millis};
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
    let body = match scheme {
        CommandScheme::Robot => {
            let meta = json!({
                "source": service,
                "timestamp": now.to_rfc3339(),
                "domain": domain,
                "channel": cmd.channel,
                "request_id": request_id,
            });
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
    (format!("kryten.commands.cytube.{}.chat", normalize_token(&cmd.channel)), body.to_string().into_bytes())
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
    (format!("kryten.lifecycle.{}.{kind}", id.service), body.to_string().into_bytes())
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

/// The reply to a request on `kryten.{service}.command`. `health` renders our health.
pub fn service_reply(
    id: &Identity,
    request: &[u8],
    now: Millis,
    uptime_s: f64,
    health: impl FnOnce() -> Value,
) -> Vec<u8> {
    let command = serde_json::from_slice::<Value>(request)
        .ok()
        .and_then(|v| v.get("command").and_then(Value::as_str).map(str::to_owned));
    let reply = match command.as_deref() {
        Some("system.ping") => json!({
            "service": id.service, "command": "system.ping", "success": true,
            "data": {"pong": true, "service": id.service, "version": id.version,
                     "uptime_seconds": uptime_s, "timestamp": now.to_rfc3339()},
        }),
        Some("system.health") => json!({
            "service": id.service, "command": "system.health", "success": true, "data": health(),
        }),
        Some(other) => {
            json!({"service": id.service, "command": other, "success": false, "error": format!("unknown command: {other}")})
        }
        None => json!({"service": id.service, "success": false, "error": "expected a JSON object with \"command\""}),
    };
    reply.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(kind: CommandKind) -> Command {
        Command { channel: "Lounge".into(), kind, correlation_id: None }
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
        let id = Identity { service: "llm", version: "0.1.0", hostname: "h", http_port: 8080, instance: None };
        let (subject, body) = lifecycle(&id, "shutdown", Millis(0), 1.5, Some("SIGTERM"));
        assert_eq!(subject, "kryten.lifecycle.llm.shutdown");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((v["service"].as_str(), v["reason"].as_str()), (Some("llm"), Some("SIGTERM")));
        assert_eq!(v["metadata"]["endpoints"]["health"]["port"], 8080);

        let ping: Value =
            serde_json::from_slice(&service_reply(&id, br#"{"command":"system.ping"}"#, Millis(0), 2.0, || json!({})))
                .unwrap();
        assert_eq!((ping["success"].as_bool(), ping["data"]["pong"].as_bool()), (Some(true), Some(true)));
        let health: Value = serde_json::from_slice(&service_reply(
            &id,
            br#"{"command":"system.health"}"#,
            Millis(0),
            2.0,
            || json!({"status": "ok"}),
        ))
        .unwrap();
        assert_eq!(health["data"]["status"], "ok");
        let bad: Value = serde_json::from_slice(&service_reply(&id, b"nope", Millis(0), 2.0, || json!({}))).unwrap();
        assert_eq!(bad["success"], false);
    }
}
