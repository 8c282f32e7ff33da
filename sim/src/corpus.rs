//! Reading corpora: one Kryten envelope per line (JSONL), in time order.
//!
//! Blank lines and lines starting with `//` are skipped. A line that is not an envelope
//! is returned as a [`BadLine`] with its number, and reading goes on: one bad line never
//! costs the rest of a recording.

use std::borrow::Cow;
use std::io::BufRead;

use chatbot_core::Millis;
use serde::Deserialize;

/// One event of a corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct CorpusEvent {
    /// 1-based line number.
    pub line: usize,
    /// CyTube's event name.
    pub event_name: String,
    /// The envelope's channel, if it names one.
    pub channel: Option<String>,
    /// The envelope's `timestamp`, which drives the virtual clock.
    pub at: Option<Millis>,
    /// The line itself, fed to the engine as a NATS body would be.
    pub body: Vec<u8>,
}

/// A line that could not be read as an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {error}")]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub error: String,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    event_name: Cow<'a, str>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
}

/// Reads one line; `None` for blank and comment lines.
pub fn parse_line(line_no: usize, line: &str) -> Option<Result<CorpusEvent, BadLine>> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with("//") {
        return None;
    }
    Some(match serde_json::from_str::<Head>(trimmed) {
        Ok(head) => Ok(CorpusEvent {
            line: line_no,
            event_name: head.event_name.into_owned(),
            channel: head.channel.map(Cow::into_owned),
            at: head.timestamp.as_deref().and_then(Millis::parse_rfc3339),
            body: trimmed.as_bytes().to_vec(),
        }),
        Err(e) => Err(BadLine { line: line_no, error: format!("not a Kryten event envelope ({e})") }),
    })
}

/// Iterates a corpus from a reader, line by line (constant memory).
pub fn read(reader: impl BufRead) -> impl Iterator<Item = Result<CorpusEvent, BadLine>> {
    reader.lines().enumerate().filter_map(|(i, line)| match line {
        Ok(line) => parse_line(i + 1, &line),
        Err(e) => Some(Err(BadLine { line: i + 1, error: format!("unreadable: {e}") })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_comment_and_bad_lines_are_skipped_or_reported_with_numbers() {
        let text = "// a comment\n\n{\"event_name\":\"chatMsg\",\"timestamp\":\"2026-01-15T10:30:00Z\",\"payload\":{}}\nnot json\n{\"payload\":1}\n";
        let out: Vec<_> = read(text.as_bytes()).collect();
        assert_eq!(out.len(), 3);
        let ev = out[0].as_ref().unwrap();
        assert_eq!((ev.line, ev.event_name.as_str(), ev.at), (3, "chatMsg", Some(Millis(1_768_473_000_000))));
        assert_eq!(out[1].as_ref().unwrap_err().line, 4);
        assert_eq!(out[2].as_ref().unwrap_err().line, 5);
    }
}
