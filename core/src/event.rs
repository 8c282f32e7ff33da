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
    /// New media started, or the item playing re-sent on join or resync (`changeMedia`).
    MediaChange(Media),
    /// The position of what is playing (`mediaUpdate`, every few seconds while playing).
    MediaUpdate {
        /// Seconds into the item (negative during CyTube's lead-in).
        current_time: f64,
        /// Paused.
        paused: bool,
    },
    /// The playlist entry now playing (`setCurrent`, sent before its `changeMedia`).
    SetCurrent(i64),
    /// The whole playlist (`playlist`).
    Playlist(Vec<PlaylistItem>),
    /// An item queued after `after` (`queue`).
    Queue {
        /// The new entry.
        item: PlaylistItem,
        /// Where it goes.
        after: After,
    },
    /// An entry removed (`delete`).
    Delete(i64),
    /// An entry moved (`moveVideo`).
    MoveVideo {
        /// The entry's uid.
        from: i64,
        /// Where it goes.
        after: After,
    },
    /// A user joined (`addUser`).
    UserJoined(RoomUser),
    /// A user left (`userLeave`).
    UserLeft(String),
    /// Everyone present (`userlist`).
    UserList(Vec<RoomUser>),
    /// A user's rank changed (`setUserRank`).
    UserRank {
        /// Who.
        name: String,
        /// The new CyTube rank.
        rank: f64,
    },
    /// A user went AFK or came back (`setAFK`).
    UserAfk {
        /// Who.
        name: String,
        /// AFK now.
        afk: bool,
    },
    /// How many are connected, guests included (`usercount`).
    UserCount(u64),
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

/// A media item as `changeMedia` (or Kryten's `current` key) describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Media {
    /// Provider id (`dQw4w9WgXcQ`).
    pub id: String,
    /// Title as shown (CyTube caps it at 100 characters).
    pub title: String,
    /// Provider type (`yt`, `vi`, `fi`, …).
    pub kind: String,
    /// Length in seconds; `None` for live streams and unknown lengths.
    pub seconds: Option<f64>,
    /// Seconds into the item when sent (negative during the 3 s lead-in of a new item).
    pub current_time: f64,
    /// Paused when sent.
    pub paused: bool,
    /// Its playlist entry (only in Kryten's `current` key).
    pub uid: Option<i64>,
}

impl Media {
    /// A new item (CyTube's lead-in: `currentTime` ≤ 0), not the item already playing
    /// re-sent on join or player resync.
    pub fn is_fresh(&self) -> bool {
        self.current_time <= 0.0
    }
}

/// One playlist entry.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaylistItem {
    /// CyTube's entry id (unique in the playlist).
    pub uid: i64,
    /// Title.
    pub title: String,
    /// Length in seconds, when known.
    pub seconds: Option<f64>,
}

/// Where a queued or moved playlist entry goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// After this entry.
    Uid(i64),
    /// First.
    Prepend,
    /// Last.
    Append,
}

/// A user as `userlist` / `addUser` describe them.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomUser {
    /// Name as shown.
    pub name: String,
    /// CyTube rank (0 guest, 1 member, 2 moderator, 3 admin, 4 owner; missing = 0).
    pub rank: f64,
    /// AFK.
    pub afk: bool,
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
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    seconds: Option<f64>,
    #[serde(default, rename = "currentTime")]
    current_time: Option<f64>,
    #[serde(default)]
    paused: Option<bool>,
    #[serde(default)]
    uid: Option<i64>,
}

impl From<RawMedia<'_>> for Media {
    fn from(m: RawMedia<'_>) -> Media {
        Media {
            id: m.id.unwrap_or_default().into_owned(),
            title: m.title.trim().to_owned(),
            kind: m.kind.unwrap_or_default().into_owned(),
            seconds: m.seconds.filter(|s| s.is_finite() && *s > 0.0),
            // A missing position is a new item's.
            current_time: m.current_time.filter(|t| t.is_finite()).unwrap_or(0.0),
            paused: m.paused.unwrap_or(false),
            uid: m.uid,
        }
    }
}

#[derive(Deserialize)]
struct RawMediaUpdate {
    #[serde(rename = "currentTime")]
    current_time: f64,
    #[serde(default)]
    paused: Option<bool>,
}

#[derive(Deserialize)]
struct RawItem<'a> {
    #[serde(borrow)]
    media: RawMedia<'a>,
    uid: i64,
}

impl From<RawItem<'_>> for PlaylistItem {
    fn from(i: RawItem<'_>) -> PlaylistItem {
        let m = Media::from(i.media);
        PlaylistItem { uid: i.uid, title: m.title, seconds: m.seconds }
    }
}

#[derive(Deserialize)]
struct RawQueue<'a> {
    #[serde(borrow)]
    item: RawItem<'a>,
    #[serde(default)]
    after: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawMove {
    from: i64,
    #[serde(default)]
    after: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawUid {
    uid: i64,
}

#[derive(Deserialize)]
struct RawUser<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default)]
    rank: Option<f64>,
    #[serde(default)]
    meta: Option<RawUserMeta>,
}

#[derive(Deserialize, Default)]
struct RawUserMeta {
    #[serde(default)]
    afk: Option<bool>,
}

impl From<RawUser<'_>> for RoomUser {
    fn from(u: RawUser<'_>) -> RoomUser {
        RoomUser {
            name: u.name.trim().to_owned(),
            rank: u.rank.filter(|r| r.is_finite()).unwrap_or(0.0),
            afk: u.meta.unwrap_or_default().afk.unwrap_or(false),
        }
    }
}

#[derive(Deserialize)]
struct RawRank<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    rank: f64,
}

#[derive(Deserialize)]
struct RawAfk<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    afk: bool,
}

/// `after` of `queue` / `moveVideo`: a uid, `"prepend"` or `"append"` (missing: append).
fn after_of(v: Option<serde_json::Value>) -> Option<After> {
    match v {
        None | Some(serde_json::Value::Null) => Some(After::Append),
        Some(serde_json::Value::String(s)) if s == "prepend" => Some(After::Prepend),
        Some(serde_json::Value::String(s)) if s == "append" => Some(After::Append),
        Some(serde_json::Value::String(s)) => s.parse().ok().map(After::Uid),
        Some(v) => v.as_i64().map(After::Uid),
    }
}

/// A `changeMedia` payload or Kryten's `current` key.
pub fn media(payload: &[u8]) -> Option<Media> {
    serde_json::from_slice::<RawMedia>(payload).ok().map(Media::from)
}

/// A `playlist` payload or Kryten's `items` key. Entries of the wrong shape are skipped.
pub fn playlist(payload: &[u8]) -> Option<Vec<PlaylistItem>> {
    let items: Vec<&RawValue> = serde_json::from_slice(payload).ok()?;
    Some(items.into_iter().filter_map(|i| serde_json::from_str::<RawItem>(i.get()).ok()).map(Into::into).collect())
}

/// A `userlist` payload or Kryten's `users` key. Entries of the wrong shape are skipped.
pub fn users(payload: &[u8]) -> Option<Vec<RoomUser>> {
    let users: Vec<&RawValue> = serde_json::from_slice(payload).ok()?;
    Some(
        users
            .into_iter()
            .filter_map(|u| serde_json::from_str::<RawUser>(u.get()).ok())
            .map(RoomUser::from)
            .filter(|u| !u.name.is_empty())
            .collect(),
    )
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
    } else {
        room_event(name, payload).map(|e| e.unwrap_or_else(|| Event::Other { event_name: name.to_owned() }))
    }
}

/// The room's events (what is playing, who is here): `Some(None)` for an event the bot
/// does not use, `None` for a used one of the wrong shape.
fn room_event<'a>(name: &str, payload: &str) -> Option<Option<Event<'a>>> {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    let json = |p: &str| serde_json::from_str::<serde_json::Value>(p).ok();
    let p = payload.as_bytes();
    let event = if is("changeMedia") {
        Event::MediaChange(media(p)?)
    } else if is("mediaUpdate") {
        let u: RawMediaUpdate = serde_json::from_str(payload).ok()?;
        Event::MediaUpdate { current_time: u.current_time, paused: u.paused.unwrap_or(false) }
    } else if is("setCurrent") {
        Event::SetCurrent(json(payload)?.as_i64()?)
    } else if is("playlist") {
        Event::Playlist(playlist(p)?)
    } else if is("queue") {
        let q: RawQueue = serde_json::from_str(payload).ok()?;
        Event::Queue { item: q.item.into(), after: after_of(q.after)? }
    } else if is("delete") {
        Event::Delete(serde_json::from_str::<RawUid>(payload).ok()?.uid)
    } else if is("moveVideo") {
        let m: RawMove = serde_json::from_str(payload).ok()?;
        Event::MoveVideo { from: m.from, after: after_of(m.after)? }
    } else if is("addUser") {
        let u = RoomUser::from(serde_json::from_str::<RawUser>(payload).ok()?);
        (!u.name.is_empty()).then_some(())?;
        Event::UserJoined(u)
    } else if is("userLeave") {
        Event::UserLeft(serde_json::from_str::<RawUser>(payload).ok()?.name.trim().to_owned())
    } else if is("userlist") {
        Event::UserList(users(p)?)
    } else if is("setUserRank") {
        let r: RawRank = serde_json::from_str(payload).ok()?;
        Event::UserRank { name: r.name.trim().to_owned(), rank: r.rank }
    } else if is("setAFK") {
        let a: RawAfk = serde_json::from_str(payload).ok()?;
        Event::UserAfk { name: a.name.trim().to_owned(), afk: a.afk }
    } else if is("usercount") {
        Event::UserCount(json(payload)?.as_f64().filter(|n| n.is_finite() && *n >= 0.0)? as u64)
    } else {
        return Some(None);
    };
    Some(Some(event))
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
            Event::MediaChange(_) => "changeMedia",
            Event::MediaUpdate { .. } => "mediaUpdate",
            Event::SetCurrent(_) => "setCurrent",
            Event::Playlist(_) => "playlist",
            Event::Queue { .. } => "queue",
            Event::Delete(_) => "delete",
            Event::MoveVideo { .. } => "moveVideo",
            Event::UserJoined(_) => "addUser",
            Event::UserLeft(_) => "userLeave",
            Event::UserList(_) => "userlist",
            Event::UserRank { .. } => "setUserRank",
            Event::UserAfk { .. } => "setAFK",
            Event::UserCount(_) => "usercount",
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
                    matches!(
                        env.event,
                        Event::Malformed { .. } | Event::Other { .. } | Event::UserList(_) | Event::UserCount(_)
                    ),
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
        let Event::MediaChange(m) = parse(body, None).unwrap().event else { panic!() };
        assert_eq!(
            (m.id.as_str(), m.title.as_str(), m.seconds, m.is_fresh()),
            ("dQw", "Rick Astley - Never Gonna Give You Up", Some(213.0), true)
        );
        let body = br#"{"event_name":"changeMedia","channel":"c","payload":{"id":"x","title":"T","currentTime":39.4,"paused":false,"type":"yt"}}"#;
        let Event::MediaChange(m) = parse(body, None).unwrap().event else { panic!() };
        assert!(!m.is_fresh() && m.kind == "yt" && m.seconds.is_none());
        let body = br#"{"event_name":"userlist","channel":"c","payload":[{"name":"a","rank":1,"meta":{"afk":true}},{"name":"b"},{"rank":3},7]}"#;
        let user = |name: &str, rank, afk| RoomUser { name: name.into(), rank, afk };
        assert_eq!(
            parse(body, None).unwrap().event,
            Event::UserList(vec![user("a", 1.0, true), user("b", 0.0, false)]),
            "entries of the wrong shape are skipped"
        );
        fn ev(name: &str, payload: &str) -> Event<'static> {
            let body = format!(r#"{{"event_name":"{name}","channel":"c","payload":{payload}}}"#);
            // Room events own their strings: leak the body to keep the test short.
            parse(Box::leak(body.into_boxed_str()).as_bytes(), None).unwrap().event
        }
        assert_eq!(ev("setUserRank", r#"{"name":"a","rank":2}"#), Event::UserRank { name: "a".into(), rank: 2.0 });
        assert_eq!(ev("setAFK", r#"{"name":"a","afk":true}"#), Event::UserAfk { name: "a".into(), afk: true });
        assert_eq!(ev("usercount", "12"), Event::UserCount(12));
        assert_eq!(ev("setCurrent", "4"), Event::SetCurrent(4));
        assert_eq!(ev("delete", r#"{"uid":4}"#), Event::Delete(4));
        assert_eq!(
            ev("mediaUpdate", r#"{"currentTime":1.5,"paused":true}"#),
            Event::MediaUpdate { current_time: 1.5, paused: true }
        );
        assert_eq!(
            ev("moveVideo", r#"{"from":4,"after":"prepend"}"#),
            Event::MoveVideo { from: 4, after: After::Prepend }
        );
        assert_eq!(ev("moveVideo", r#"{"from":4,"after":2}"#), Event::MoveVideo { from: 4, after: After::Uid(2) });
        let Event::Queue { item, after } =
            ev("queue", r#"{"item":{"media":{"id":"z","title":"Zoo","seconds":19},"uid":9},"after":1}"#)
        else {
            panic!()
        };
        assert_eq!((item, after), (PlaylistItem { uid: 9, title: "Zoo".into(), seconds: Some(19.0) }, After::Uid(1)));
        for (name, bad) in
            [("setUserRank", r#"{"name":"a"}"#), ("usercount", "\"x\""), ("mediaUpdate", "{}"), ("queue", "{}")]
        {
            assert_eq!(ev(name, bad), Event::Malformed { event_name: name.into() }, "{name} {bad}");
        }
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
