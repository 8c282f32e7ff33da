//! Kryten event envelopes, parsed into the few events the bot acts on.
//!
//! Kryten-Robot publishes every CyTube socket.io event as
//! `{"event_name","payload","channel","domain","timestamp","correlation_id"}` (see
//! `reference/kryten-wire.md` §2). The payload is whatever CyTube sent: an object, a bare
//! number, a string or an array. Parsing therefore never fails on a payload's shape: an
//! event the bot does not use is [`Event::Other`], and a used event whose payload has the
//! wrong shape is [`Event::Malformed`], so the engine can count it and move on. Only a
//! body that is not a JSON envelope at all is an error.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::html;
use crate::time::Millis;

/// A parsed envelope. Strings borrow from the body where they can (most chat lines need
/// no copy until the engine keeps them).
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<'a> {
    /// The channel named in the envelope (or, failing that, in the subject).
    pub channel: Cow<'a, str>,
    /// Kryten's per-event uuid, when present.
    pub correlation_id: Option<Cow<'a, str>>,
    /// The robot's receive time, when present and parseable.
    pub timestamp: Option<Millis>,
    /// What happened.
    pub event: Event<'a>,
}

/// The events the engine distinguishes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    /// A public chat line (`chatMsg`), text already decoded from HTML.
    Chat(Message<'a>),
    /// A private message (`pm`); `to` is the recipient.
    Pm {
        /// The message.
        message: Message<'a>,
        /// Recipient's name.
        to: Cow<'a, str>,
    },
    /// New media started (`changeMedia`).
    MediaChange {
        /// Provider id of the item.
        id: String,
        /// Title as shown.
        title: String,
        /// True for a new item (`currentTime` ≤ 0, CyTube's lead-in); false for the item
        /// already playing, re-sent on join or player resync.
        fresh: bool,
    },
    /// A user joined (`addUser`).
    UserJoined(String),
    /// A user left (`userLeave`).
    UserLeft(String),
    /// The full user list (`userlist`).
    UserList(Vec<String>),
    /// A used event whose payload had the wrong shape.
    Malformed {
        /// CyTube's event name.
        event_name: String,
    },
    /// An event the bot has no use for (counted, otherwise ignored).
    Other {
        /// CyTube's event name.
        event_name: String,
    },
}

/// A chat line or PM as CyTube sent it, decoded to plain text.
#[derive(Debug, Clone, PartialEq)]
pub struct Message<'a> {
    /// Sender's name.
    pub user: Cow<'a, str>,
    /// Plain text.
    pub text: Cow<'a, str>,
    /// CyTube server time in ms (`payload.time`), when present.
    pub time: Option<Millis>,
    /// `meta.shadow`: sender is shadow-muted; only moderators see it.
    pub shadow: bool,
    /// `meta.addClass == "action"` (a `/me` line).
    pub action: bool,
}

/// Why a body could not be read as an envelope.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Not JSON, or not an object with `event_name`.
    #[error("not a Kryten event envelope: {0}")]
    NotAnEnvelope(String),
    /// Neither the envelope nor the subject names a channel.
    #[error("the event names no channel")]
    NoChannel,
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow)]
    event_name: Cow<'a, str>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    correlation_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(borrow)]
    username: Cow<'a, str>,
    #[serde(borrow)]
    msg: Cow<'a, str>,
    #[serde(default)]
    meta: Option<RawMeta<'a>>,
    #[serde(default)]
    time: Option<f64>,
    #[serde(borrow, default)]
    to: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
struct RawMeta<'a> {
    #[serde(default)]
    shadow: Option<bool>,
    #[serde(borrow, default, rename = "addClass")]
    add_class: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawMedia<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    title: Cow<'a, str>,
    #[serde(default, rename = "currentTime")]
    current_time: Option<f64>,
}

#[derive(Deserialize)]
struct RawUser<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

/// Splits an event subject of either scheme into (channel token, event token):
/// `kryten.events.cytube.{ch}.{event}` or legacy `cytube.events.{ch}.{event}`.
pub fn split_subject(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix("kryten.events.cytube.").or_else(|| subject.strip_prefix("cytube.events."))?;
    let (channel, event) = rest.split_once('.')?;
    (!channel.is_empty() && !event.is_empty() && !event.contains('.')).then_some((channel, event))
}

/// Parses one envelope. `subject` (when the body came from NATS) supplies the channel if
/// the envelope lacks one.
pub fn parse<'a>(body: &'a [u8], subject: Option<&'a str>) -> Result<Envelope<'a>, EnvelopeError> {
    // Fast path: Kryten writes `event_name` before `payload`, so a chat line or PM is read
    // in one pass, its payload in place. Anything it does not take (another event, the
    // payload first, a duplicate key, a payload of the wrong shape) goes through the
    // general path, which decides.
    if let Some(raw) = one_pass(body) {
        return build(raw, subject);
    }
    parse_general(body, subject)
}

/// A chat line or PM envelope read in one pass by serde's borrowed visitor; `None` for
/// anything else. (A hand-written reader was faster by only 1.2× on ordinary chat, not
/// enough to keep 355 lines of our own JSON: bench/README.md.)
fn one_pass(body: &[u8]) -> Option<Fields<'_>> {
    let text = std::str::from_utf8(body).ok()?;
    serde_json::from_str::<OnePass>(text).ok().map(|p| p.0)
}

/// The envelope of a chat line or PM, read in one pass.
struct OnePass<'a>(Fields<'a>);

/// A string that borrows from the body when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for OnePass<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, IgnoredAny, MapAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OnePass<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an event envelope")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                fn once<T, E: de::Error>(slot: &mut Option<T>, value: T, key: &'static str) -> Result<(), E> {
                    match slot.replace(value) {
                        None => Ok(()),
                        Some(_) => Err(E::duplicate_field(key)),
                    }
                }
                let mut name: Option<Cow<'de, str>> = None;
                let mut payload = None;
                let (mut channel, mut timestamp, mut correlation_id) = (None, None, None);
                // A key with escapes is not borrowed: an error here sends the body to
                // the general path.
                while let Some(key) = map.next_key::<&'de str>()? {
                    match key {
                        "event_name" => once(&mut name, map.next_value::<Text>()?.0, "event_name")?,
                        "payload" => {
                            // Another event (or no name yet): the general path reads it.
                            if !name.as_deref().is_some_and(is_message_event) {
                                return Err(de::Error::custom("not a chat line"));
                            }
                            once(&mut payload, Payload::Message(map.next_value()?), "payload")?;
                        }
                        "channel" => once(&mut channel, map.next_value::<Option<Text>>()?, "channel")?,
                        "timestamp" => once(&mut timestamp, map.next_value::<Option<Text>>()?, "timestamp")?,
                        "correlation_id" => {
                            once(&mut correlation_id, map.next_value::<Option<Text>>()?, "correlation_id")?
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(OnePass(Fields {
                    name: name.ok_or_else(|| de::Error::missing_field("event_name"))?,
                    payload: payload.ok_or_else(|| de::Error::missing_field("payload"))?,
                    channel: channel.flatten().map(|t| t.0),
                    timestamp: timestamp.flatten().map(|t| t.0),
                    correlation_id: correlation_id.flatten().map(|t| t.0),
                }))
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads the envelope with serde_json, the payload kept raw, then the payload by event
/// name. [`parse`] gives the same answer for every body, only faster for chat.
#[doc(hidden)]
pub fn parse_general<'a>(body: &'a [u8], subject: Option<&'a str>) -> Result<Envelope<'a>, EnvelopeError> {
    let raw: RawEnvelope = serde_json::from_slice(body).map_err(|e| EnvelopeError::NotAnEnvelope(e.to_string()))?;
    let read = Fields {
        name: raw.event_name,
        payload: raw.payload.map_or(Payload::Missing, Payload::Raw),
        channel: raw.channel,
        timestamp: raw.timestamp,
        correlation_id: raw.correlation_id,
    };
    build(read, subject)
}

fn build<'a>(raw: Fields<'a>, subject: Option<&'a str>) -> Result<Envelope<'a>, EnvelopeError> {
    let channel = match raw.channel {
        Some(Cow::Borrowed(c)) if !c.trim().is_empty() => Cow::Borrowed(c.trim()),
        Some(Cow::Owned(c)) if !c.trim().is_empty() => Cow::Owned(c.trim().to_owned()),
        _ => subject.and_then(split_subject).map(|(c, _)| Cow::Borrowed(c)).ok_or(EnvelopeError::NoChannel)?,
    };
    let name = raw.name.as_ref();
    let event = match raw.payload {
        Payload::Message(m) => Some(message_event(name, message_of(m))),
        Payload::Raw(p) => event_of(name, p.get()),
        Payload::Missing => event_of(name, "null"),
    };
    Ok(Envelope {
        channel,
        correlation_id: raw.correlation_id,
        timestamp: raw.timestamp.as_deref().and_then(Millis::parse_rfc3339),
        event: event.unwrap_or_else(|| Event::Malformed { event_name: name.to_owned() }),
    })
}

/// The event named `name` with this raw payload; `None` when the payload has the wrong shape.
fn event_of<'a>(name: &str, payload: &'a str) -> Option<Event<'a>> {
    if is_message_event(name) {
        message(payload).map(|m| message_event(name, m))
    } else if name.eq_ignore_ascii_case("changeMedia") {
        serde_json::from_str::<RawMedia>(payload).ok().map(|m| Event::MediaChange {
            id: m.id.unwrap_or_default().into_owned(),
            title: m.title.trim().to_owned(),
            fresh: m.current_time.is_none_or(|t| t <= 0.0),
        })
    } else if name.eq_ignore_ascii_case("addUser") {
        serde_json::from_str::<RawUser>(payload).ok().map(|u| Event::UserJoined(u.name.into_owned()))
    } else if name.eq_ignore_ascii_case("userLeave") {
        serde_json::from_str::<RawUser>(payload).ok().map(|u| Event::UserLeft(u.name.into_owned()))
    } else if name.eq_ignore_ascii_case("userlist") {
        serde_json::from_str::<Vec<RawUser>>(payload)
            .ok()
            .map(|us| Event::UserList(us.into_iter().map(|u| u.name.into_owned()).collect()))
    } else {
        Some(Event::Other { event_name: name.to_owned() })
    }
}

/// A chat line (`chatMsg`) or PM (`pm`, with its recipient).
fn message_event<'a>(name: &str, (message, to): (Message<'a>, Option<Cow<'a, str>>)) -> Event<'a> {
    if name.eq_ignore_ascii_case("pm") {
        Event::Pm { message, to: to.unwrap_or_default() }
    } else {
        Event::Chat(message)
    }
}

/// An envelope's fields as read, before they become an [`Envelope`].
struct Fields<'a> {
    name: Cow<'a, str>,
    payload: Payload<'a>,
    channel: Option<Cow<'a, str>>,
    timestamp: Option<Cow<'a, str>>,
    correlation_id: Option<Cow<'a, str>>,
}

/// A payload as read: kept raw (to be parsed by event name), or already read as a chat
/// line/PM (by the one-pass reader).
enum Payload<'a> {
    Missing,
    Raw(&'a RawValue),
    Message(RawMessage<'a>),
}

fn is_message_event(name: &str) -> bool {
    name.eq_ignore_ascii_case("chatMsg") || name.eq_ignore_ascii_case("pm")
}

fn message(payload: &str) -> Option<(Message<'_>, Option<Cow<'_, str>>)> {
    serde_json::from_str(payload).ok().map(message_of)
}

fn message_of(m: RawMessage<'_>) -> (Message<'_>, Option<Cow<'_, str>>) {
    let meta = m.meta.unwrap_or_default();
    let time = m.time.filter(|t| t.is_finite() && *t >= 0.0).map(|t| Millis(t as u64));
    (
        Message {
            user: m.username,
            text: plain_text(m.msg),
            time,
            shadow: meta.shadow.unwrap_or(false),
            action: meta.add_class.as_deref() == Some("action"),
        },
        m.to,
    )
}

/// `msg` decoded from HTML, still borrowed when there was nothing to decode.
fn plain_text(msg: Cow<'_, str>) -> Cow<'_, str> {
    match msg {
        Cow::Borrowed(m) => html::to_plain_text(m),
        Cow::Owned(m) => {
            let decoded = match html::to_plain_text(&m) {
                Cow::Owned(d) => Some(d),
                Cow::Borrowed(_) => None,
            };
            Cow::Owned(decoded.unwrap_or(m))
        }
    }
}

impl Event<'_> {
    /// CyTube's name for the event kind, for counting.
    pub fn kind(&self) -> &str {
        match self {
            Event::Chat(_) => "chatMsg",
            Event::Pm { .. } => "pm",
            Event::MediaChange { .. } => "changeMedia",
            Event::UserJoined(_) => "addUser",
            Event::UserLeft(_) => "userLeave",
            Event::UserList(_) => "userlist",
            Event::Malformed { event_name } | Event::Other { event_name } => event_name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Message<'_> {
        match parse(body.as_bytes(), None).unwrap().event {
            Event::Chat(m) => m,
            other => panic!("not chat: {other:?}"),
        }
    }

    #[test]
    fn chat_envelope_from_the_wire_reference_parses() {
        let body = r#"{"event_name":"chatMsg","channel":"lounge","domain":"cytu.be","timestamp":"2026-01-15T10:30:00.123456+00:00","correlation_id":"9b2f","payload":{"username":"alice","time":1768473000123,"meta":{},"msg":"hey KrytenBot, is &lt;b&gt; safe? <strong>really</strong>"}}"#;
        let env = parse(body.as_bytes(), None).unwrap();
        assert_eq!(env.channel, "lounge");
        assert_eq!(env.correlation_id.as_deref(), Some("9b2f"));
        assert_eq!(env.timestamp, Some(Millis(1_768_473_000_123)));
        let Event::Chat(m) = env.event else { panic!() };
        assert_eq!(m.user, "alice");
        assert_eq!(m.text, "hey KrytenBot, is <b> safe? really");
        assert_eq!(m.time, Some(Millis(1_768_473_000_123)));
    }

    #[test]
    fn shadow_and_action_meta_are_read() {
        let m = chat(
            r#"{"event_name":"chatMsg","channel":"c","payload":{"username":"u","msg":"x","meta":{"shadow":true,"addClass":"action","action":true},"time":1}}"#,
        );
        assert!(m.shadow && m.action);
    }

    #[test]
    fn pm_keeps_its_recipient() {
        let body = r#"{"event_name":"pm","channel":"lounge","payload":{"username":"alice","msg":"psst","meta":{},"time":5,"to":"KrytenBot"}}"#;
        let Event::Pm { message, to } = parse(body.as_bytes(), None).unwrap().event else { panic!() };
        assert_eq!((&*message.user, &*to), ("alice", "KrytenBot"));
    }

    #[test]
    fn any_payload_shape_is_accepted_without_error() {
        for payload in ["12", "\"motd\"", "[1,2]", "null", "{\"a\":{}}", "true", "1.5e300"] {
            for name in ["chatMsg", "pm", "changeMedia", "addUser", "userLeave", "userlist", "usercount", "rank"] {
                let body = format!(r#"{{"event_name":"{name}","channel":"c","payload":{payload}}}"#);
                let env = parse(body.as_bytes(), None).unwrap_or_else(|e| panic!("{body}: {e}"));
                assert!(
                    matches!(env.event, Event::Malformed { .. } | Event::Other { .. } | Event::UserList(_)),
                    "{body}"
                );
            }
        }
    }

    #[test]
    fn a_body_that_is_not_an_envelope_is_an_error() {
        assert!(matches!(parse(b"not json", None), Err(EnvelopeError::NotAnEnvelope(_))));
        assert!(matches!(parse(b"[1]", None), Err(EnvelopeError::NotAnEnvelope(_))));
        assert!(matches!(parse(br#"{"payload":{}}"#, None), Err(EnvelopeError::NotAnEnvelope(_))));
    }

    #[test]
    fn channel_falls_back_to_the_subject_in_both_schemes() {
        let body = br#"{"event_name":"usercount","payload":3}"#;
        assert_eq!(parse(body, Some("kryten.events.cytube.lounge.usercount")).unwrap().channel, "lounge");
        assert_eq!(parse(body, Some("cytube.events.movies.usercount")).unwrap().channel, "movies");
        assert_eq!(parse(body, Some("something.else")), Err(EnvelopeError::NoChannel));
        assert_eq!(split_subject("kryten.events.cytube.lounge.chatmsg"), Some(("lounge", "chatmsg")));
        assert_eq!(split_subject("kryten.events.cytube.lounge"), None);
    }

    #[test]
    fn media_change_and_user_events_parse() {
        let body = br#"{"event_name":"changeMedia","channel":"c","payload":{"id":"dQw","title":"Rick Astley - Never Gonna Give You Up","seconds":213}}"#;
        assert_eq!(
            parse(body, None).unwrap().event,
            Event::MediaChange { id: "dQw".into(), title: "Rick Astley - Never Gonna Give You Up".into(), fresh: true }
        );
        let body = br#"{"event_name":"userlist","channel":"c","payload":[{"name":"a","rank":1},{"name":"b"}]}"#;
        assert_eq!(parse(body, None).unwrap().event, Event::UserList(vec!["a".into(), "b".into()]));
    }

    mod one_pass {
        use super::super::*;
        use proptest::prelude::*;

        fn string() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("alice".to_owned()),
                Just("hi KrytenBot &lt;3 <em>yo</em>".to_owned()),
                Just("tab\\tquote\\\"".to_owned()),
                Just("\\u00e9t\\u00e9 \\ud83d\\ude00 \\/".to_owned()),
                Just("raw é 😀".to_owned()),
                Just("every \\\\ escape \\n\\r\\b\\f\\t\\/\\\"".to_owned()),
                // Not JSON, or not a string serde_json reads: the general path decides.
                Just("lone \\ud800 x".to_owned()),
                Just("\\udc00".to_owned()),
                Just("\\ud83d\\u0041".to_owned()),
                Just("bad \\x escape".to_owned()),
                Just("short \\u00".to_owned()),
                Just("control \u{1} char".to_owned()),
                "[a-z ]{0,8}",
                // An escape, quote or control byte at every offset within 8-byte words.
                (
                    "[a-zé ]{0,19}",
                    prop::sample::select(vec![r"\n", r#"\""#, r"\\", r"\u00e9", "\u{1f}"]),
                    "[a-z]{0,11}"
                )
                    .prop_map(|(a, e, b)| format!("{a}{e}{b}")),
            ]
            .prop_map(|s| format!("\"{s}\""))
        }

        fn value() -> impl Strategy<Value = String> {
            let leaf = prop_oneof![
                string(),
                Just("null".to_owned()),
                Just("true".to_owned()),
                Just("-1".to_owned()),
                Just("1768473000123".to_owned()),
                Just("2.5e3".to_owned()),
                prop::sample::select(vec!["0", "01", "-0", "1.", "1E+2", "-1.5e-3", "1e", "tru", "nul", "[", "]"])
                    .prop_map(str::to_owned),
            ];
            leaf.prop_recursive(2, 8, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..3).prop_map(|v| format!("[{}]", v.join(","))),
                    prop::collection::vec((field_name(), inner), 0..4).prop_map(|v| {
                        format!("{{{}}}", v.iter().map(|(k, x)| format!("\"{k}\":{x}")).collect::<Vec<_>>().join(","))
                    }),
                ]
            })
        }

        fn field_name() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "username",
                "msg",
                "meta",
                "time",
                "to",
                "shadow",
                "addClass",
                "id",
                "title",
                "currentTime",
                "name",
            ])
        }

        /// A chat/PM payload, well or badly shaped.
        fn message_payload() -> impl Strategy<Value = String> {
            let required = || prop::option::weighted(0.9, string());
            (
                required(),
                required(),
                prop::option::of(prop::sample::select(vec![
                    "{}",
                    r#"{"shadow":true,"addClass":"action"}"#,
                    "3",
                    "null",
                    r#"{"shadow":null,"addClass":null}"#,
                    r#"{"shadow":false,"x":[1,{"y":2.5e1}],"addClass":"shout"}"#,
                    r#"{"shadow":"yes"}"#,
                    r#"{"shadow":true,"shadow":false}"#,
                    "[true]",
                ])),
                prop::option::of(prop::sample::select(vec![
                    "1768473000123",
                    "-5",
                    "\"x\"",
                    "0",
                    "1.5",
                    "null",
                    "017",
                    "12345678901234567890",
                    "1e3",
                ])),
                prop::option::of(prop_oneof![string(), Just("null".to_owned())]),
            )
                .prop_map(|(u, m, meta, time, to)| {
                    let named = [("username", u), ("msg", m), ("meta", meta.map(str::to_owned))];
                    let more = [("time", time.map(str::to_owned)), ("to", to)];
                    let fields: Vec<String> =
                        named.into_iter().chain(more).filter_map(|(k, v)| v.map(|v| format!("\"{k}\":{v}"))).collect();
                    format!("{{{}}}", fields.join(","))
                })
        }

        /// Envelope-like bodies: any key order, duplicate and escaped keys, values of
        /// every type, and Kryten's own shape.
        fn body() -> impl Strategy<Value = String> {
            let name = prop_oneof![
                4 => prop::sample::select(vec!["chatMsg", "CHATMSG", "pm", "changeMedia", "addUser", "usercount"])
                    .prop_map(|n| format!("\"{n}\"")),
                1 => value(),
            ];
            let key = prop::sample::select(vec![
                "event_name",
                "payload",
                "channel",
                "timestamp",
                "correlation_id",
                "domain",
                "event\\u005fname",
            ]);
            let any_name = name.clone();
            let entry = key.prop_flat_map(move |k| {
                let likely = match k {
                    "payload" => message_payload().boxed(),
                    "domain" => value().boxed(),
                    k if k.starts_with("event") => any_name.clone().boxed(),
                    _ => string().boxed(),
                };
                (Just(k), prop_oneof![4 => likely, 1 => value()])
            });
            let spacing = prop::sample::select(vec![(":", ","), (": ", ", "), (" :\n", "\t,\r\n")]);
            let tail = prop::sample::select(vec!["", " ", "\n", "x", "}", " {}"]);
            let shaped = prop_oneof![
                (name.clone(), message_payload(), prop::option::of(string())).prop_map(|(n, p, c)| {
                    let channel = c.map(|c| format!(",\"channel\":{c}")).unwrap_or_default();
                    format!(
                        r#"{{"event_name":{n},"payload":{p}{channel},"timestamp":"2026-01-15T10:30:00.1+00:00","correlation_id":"c1"}}"#
                    )
                }),
                prop::collection::vec(entry, 0..8).prop_map(|entries| {
                    let fields: Vec<String> = entries.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", fields.join(","))
                }),
            ];
            // Spacing between tokens (also inside strings that hold `:` or `,`: both
            // readers see the same body) and what follows the object.
            (shaped, spacing, tail).prop_map(|(body, (colon, comma), tail)| {
                format!("{}{tail}", body.replace(':', colon).replace(',', comma))
            })
        }

        #[test]
        fn deep_nesting_is_left_to_the_general_path() {
            for depth in [10, 100, 200] {
                let junk = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
                let body = format!(
                    r#"{{"event_name":"chatMsg","payload":{{"username":"a","msg":"b","x":{junk}}},"channel":"c","domain":{junk}}}"#
                );
                assert_eq!(parse(body.as_bytes(), None), parse_general(body.as_bytes(), None), "depth {depth}");
            }
        }

        #[test]
        fn kryten_chat_lines_take_the_one_pass_reader() {
            let capture = include_str!("../tests/fixtures/kryten-robot-1.12.6-session.jsonl");
            let chats: Vec<&str> = capture.lines().filter(|l| l.contains(r#""event_name": "chatMsg""#)).collect();
            assert!(chats.len() > 10);
            for line in chats {
                assert!(one_pass(line.as_bytes()).is_some(), "{line}");
            }
            let escaped = r#"{"event_name": "pm", "payload": {"username": "al\"ice", "msg": "caf\u00e9 \ud83d\ude00", "meta": {}, "time": 1, "to": "KrytenBot"}, "channel": "c"}"#;
            assert!(one_pass(escaped.as_bytes()).is_some());
            assert_eq!(parse(escaped.as_bytes(), None), parse_general(escaped.as_bytes(), None));
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]
            /// The one-pass reading is only a shortcut: whatever it accepts reads exactly
            /// as the general path reads it, errors included.
            #[test]
            fn one_pass_reads_every_body_as_the_general_path_does(body in body()) {
                for subject in [None, Some("kryten.events.cytube.lounge.chatmsg")] {
                    prop_assert_eq!(parse(body.as_bytes(), subject), parse_general(body.as_bytes(), subject), "{}", body);
                }
            }
        }
    }

    #[test]
    fn every_line_of_the_real_robot_capture_parses() {
        let capture = include_str!("../tests/fixtures/kryten-robot-1.12.6-session.jsonl");
        let mut chats = 0;
        for line in capture.lines().filter(|l| !l.trim().is_empty()) {
            let env = parse(line.as_bytes(), None).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(env.channel, "lounge");
            assert!(env.timestamp.is_some());
            assert!(!matches!(env.event, Event::Malformed { .. }), "{line}");
            chats += usize::from(matches!(env.event, Event::Chat(_)));
        }
        assert!(chats > 10);
    }
}
