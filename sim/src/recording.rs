//! What a recording holds beside the room's events: the bot's own sessions and commands.
//!
//! `record` writes them into the corpus as *notes*: lines `//# {json}`, which every
//! corpus reader before them skips as comments, so a recording stays a corpus any
//! version can replay. A note is one of
//!
//! * `{"record":"recording","at":T,"service":S}`: the recorder started at `T`;
//! * `{"record":"session","at":T,"seed":N,"start":T0,"instance":I?}`: the bot (`service`
//!   S) announced it started its engine at `T0` with seed `N` (from its lifecycle
//!   `startup` message, `metadata.seed` / `metadata.session_start`);
//! * `{"record":"command","at":T,"channel":C,"kind":"say"|"pm","to":U?,"text":X,
//!   "correlation_id":E?,"trigger":K?,"llm_ms":L?}`: the bot published a command at `T`
//!   (its `meta.timestamp`), answering event `E` for trigger `K`, the LLM having taken
//!   `L` ms.
//!
//! Times are RFC 3339 like the envelopes' `timestamp`. [`Recorded`] answers a replay's
//! LLM requests with what the live bot's LLM said, at its latency.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::time::Duration;

use chatbot_core::{LlmCall, LlmReply, Millis, Purpose};
use serde::{Deserialize, Serialize};

use crate::corpus::{BadLine, CorpusEvent};
use crate::llm::{Answer, Responder};

/// The marker that starts a note line.
pub const NOTE_PREFIX: &str = "//# ";

/// A note of a recording (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Note {
    /// The recorder started.
    Recording {
        /// When.
        #[serde(with = "rfc3339")]
        at: Millis,
        /// The bot's service name whose sessions and commands are recorded.
        service: String,
    },
    /// The bot started an engine.
    Session {
        /// When the announcement arrived.
        #[serde(with = "rfc3339")]
        at: Millis,
        /// The engine's seed.
        seed: u64,
        /// The engine's start.
        #[serde(with = "rfc3339")]
        start: Millis,
        /// The `ha` instance, when leases are on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instance: Option<String>,
    },
    /// The bot published a command.
    Command(CommandNote),
}

/// A command the bot published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandNote {
    /// When it was published.
    #[serde(with = "rfc3339")]
    pub at: Millis,
    /// Channel.
    pub channel: String,
    /// `say` or `pm`.
    pub kind: String,
    /// The PM's recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The text.
    pub text: String,
    /// The event it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The trigger label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// The LLM's latency for this reply (none for fallbacks and notices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_ms: Option<u64>,
}

mod rfc3339 {
    use chatbot_core::Millis;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &Millis, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&m.to_rfc3339())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
        let s = String::deserialize(d)?;
        Millis::parse_rfc3339(&s).ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {s:?}")))
    }
}

impl Note {
    /// The note as a corpus line (without the newline).
    pub fn to_line(&self) -> String {
        format!("{NOTE_PREFIX}{}", serde_json::to_string(self).expect("a note serialises"))
    }

    /// Reads a corpus line: `None` when it is not a note (an envelope, a comment).
    pub fn parse(line_no: usize, line: &str) -> Option<Result<Note, BadLine>> {
        let json = line.trim().strip_prefix(NOTE_PREFIX.trim_end())?;
        Some(
            serde_json::from_str(json)
                .map_err(|e| BadLine { line: line_no, error: format!("not a recording note ({e})") }),
        )
    }
}

/// One item of a recording: an event, or a note.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A Kryten envelope.
    Event(CorpusEvent),
    /// A note, with its line number.
    Note(usize, Note),
}

/// Iterates a recording's events and notes, line by line.
pub fn read(reader: impl BufRead) -> impl Iterator<Item = Result<Item, BadLine>> {
    reader.lines().enumerate().filter_map(|(i, line)| {
        let line = match line {
            Ok(line) => line,
            Err(e) => return Some(Err(BadLine { line: i + 1, error: format!("unreadable: {e}") })),
        };
        if let Some(note) = Note::parse(i + 1, &line) {
            return Some(note.map(|n| Item::Note(i + 1, n)));
        }
        crate::corpus::parse_line(i + 1, &line).map(|r| r.map(Item::Event))
    })
}

/// The bot's side of a recording, read ahead of a replay.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// The bot's sessions, in order (one instance's; re-announcements folded).
    pub sessions: Vec<Session>,
    /// Commands with the event they answer, by correlation id.
    pub answers: HashMap<String, Vec<CommandNote>>,
    /// Contextual replies (no event of their own), per lower-cased channel, in order.
    pub contextual: BTreeMap<String, Vec<CommandNote>>,
    /// Every command, in order.
    pub commands: Vec<CommandNote>,
    /// Sessions of other `ha` instances, not replayed.
    pub other_instances: u64,
}

/// One engine run of the live bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// Its seed.
    pub seed: u64,
    /// Its start.
    pub start: Millis,
}

impl Recording {
    /// Collects the notes of a recording (bad lines are the replay's to report).
    pub fn scan(reader: impl BufRead) -> Recording {
        let mut rec = Recording::default();
        let mut instance: Option<Option<String>> = None;
        for item in read(reader).flatten() {
            let Item::Note(_, note) = item else { continue };
            match note {
                Note::Recording { .. } => {}
                Note::Session { seed, start, instance: i, .. } => {
                    if instance.get_or_insert_with(|| i.clone()) != &i {
                        rec.other_instances += 1;
                        continue;
                    }
                    let s = Session { seed, start };
                    if rec.sessions.last() != Some(&s) {
                        rec.sessions.push(s);
                    }
                }
                Note::Command(c) => {
                    match &c.correlation_id {
                        Some(cid) => rec.answers.entry(cid.clone()).or_default().push(c.clone()),
                        None if c.trigger.as_deref() == Some("contextual") => {
                            rec.contextual.entry(c.channel.to_lowercase()).or_default().push(c.clone())
                        }
                        None => {}
                    }
                    rec.commands.push(c);
                }
            }
        }
        rec
    }

    /// Whether the recording holds anything of the bot's.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.commands.is_empty()
    }
}

/// How long a participation check may precede the contextual reply it led to.
const CONTEXTUAL_HORIZON: Duration = Duration::from_secs(60);

/// Answers a replay's LLM requests as the live bot's LLM did: a request for an event the
/// live bot answered gets the text it sent (its parts joined), after the latency it
/// took; a participation check says yes when a contextual reply followed it live. Any
/// other request (one the live bot never made, or made and lost) goes to `fallback`.
pub struct Recorded {
    answers: HashMap<String, Vec<CommandNote>>,
    contextual: BTreeMap<String, std::collections::VecDeque<CommandNote>>,
    /// A "yes" given: the contextual reply it promised, per channel.
    promised: HashMap<String, CommandNote>,
    fallback: Box<dyn Responder>,
    /// Answers taken from the recording, and invented by `fallback`.
    pub counts: Provenance,
}

/// Where a replay's LLM answers came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Provenance {
    /// Answered with what the live bot's LLM said.
    pub recorded: u64,
    /// Answered by the stand-in (`offline` or `--llm`).
    pub invented: u64,
}

impl Recorded {
    /// A responder for `rec`, with `fallback` for what it does not hold.
    pub fn new(rec: &Recording, fallback: Box<dyn Responder>) -> Recorded {
        Recorded {
            answers: rec.answers.clone(),
            contextual: rec.contextual.iter().map(|(k, v)| (k.clone(), v.iter().cloned().collect())).collect(),
            promised: HashMap::new(),
            fallback,
            counts: Provenance::default(),
        }
    }

    fn recorded(&mut self, text: String, latency_ms: Option<u64>, call: &LlmCall, now: Millis) -> Answer {
        self.counts.recorded += 1;
        let latency = match latency_ms {
            Some(ms) => Duration::from_millis(ms),
            None => self.fallback.respond_at(call, now).latency,
        };
        Answer { latency, result: Ok(LlmReply::new(text, None)) }
    }

    fn lookup(&mut self, call: &LlmCall, now: Millis) -> Option<(String, Option<u64>)> {
        let channel = call.channel.to_lowercase();
        match (call.purpose, &call.correlation_id) {
            (Purpose::Reply, Some(cid)) => {
                let parts = self.answers.remove(cid)?;
                let text = parts.iter().map(|p| p.text.as_str()).collect::<Vec<_>>().join(" ");
                Some((text, parts.first().and_then(|p| p.llm_ms)))
            }
            (Purpose::Reply, None) => {
                let c = self.promised.remove(&channel)?;
                Some((c.text, c.llm_ms))
            }
            (Purpose::ParticipationCheck, _) => {
                let queue = self.contextual.get_mut(&channel)?;
                // Replies the replay has passed without asking are not waited for.
                while queue.front().is_some_and(|c| c.at < now) {
                    queue.pop_front();
                }
                let next = queue.front().filter(|c| c.at <= now.after(CONTEXTUAL_HORIZON))?.clone();
                queue.pop_front();
                // The check took what is left of the gap once the reply's own latency is out.
                let check_ms = (next.at.0 - now.0).saturating_sub(next.llm_ms.unwrap_or(0));
                self.promised.insert(channel, next);
                Some(("yes".to_owned(), Some(check_ms)))
            }
        }
    }
}

impl Responder for Recorded {
    fn respond(&mut self, call: &LlmCall) -> Answer {
        self.respond_at(call, Millis::ZERO)
    }

    fn respond_at(&mut self, call: &LlmCall, now: Millis) -> Answer {
        if let Some((text, ms)) = self.lookup(call, now) {
            return self.recorded(text, ms, call, now);
        }
        if call.purpose == Purpose::ParticipationCheck {
            // No contextual reply followed live: the check said no (or was not asked).
            self.counts.recorded += 1;
            let latency = self.fallback.respond_at(call, now).latency;
            return Answer { latency, result: Ok(LlmReply::new("no", None)) };
        }
        self.counts.invented += 1;
        self.fallback.respond_at(call, now)
    }

    fn provenance(&self) -> Option<Provenance> {
        Some(self.counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_round_trip_and_read_beside_envelopes() {
        let cmd = Note::Command(CommandNote {
            at: Millis(1_768_473_001_500),
            channel: "lounge".into(),
            kind: "say".into(),
            to: None,
            text: "hi alice".into(),
            correlation_id: Some("c1".into()),
            trigger: Some("mention".into()),
            llm_ms: Some(820),
        });
        let session =
            Note::Session { at: Millis(1_768_473_000_100), seed: 7, start: Millis(1_768_473_000_000), instance: None };
        let text = format!(
            "{}\n{}\n{{\"event_name\":\"chatMsg\",\"timestamp\":\"2026-01-15T10:30:01Z\",\"payload\":{{}}}}\n{}\n//# nonsense\n",
            session.to_line(),
            "// a plain comment",
            cmd.to_line()
        );
        let items: Vec<_> = read(text.as_bytes()).collect();
        assert_eq!(items.len(), 4, "the plain comment is skipped: {items:?}");
        assert_eq!(items[0], Ok(Item::Note(1, session)));
        assert!(matches!(&items[1], Ok(Item::Event(e)) if e.line == 3));
        assert_eq!(items[2], Ok(Item::Note(4, cmd)));
        assert_eq!(items[3].as_ref().unwrap_err().line, 5);
        // Older readers see comments only.
        assert_eq!(crate::corpus::read(text.as_bytes()).filter(Result::is_ok).count(), 1);
        let rec = Recording::scan(text.as_bytes());
        assert_eq!(rec.sessions, [Session { seed: 7, start: Millis(1_768_473_000_000) }]);
        assert_eq!(rec.answers["c1"][0].llm_ms, Some(820));
    }
}
