//! A one-pass reader for the envelope Kryten-Robot writes for a chat line or a PM.
//!
//! Ordinary chat is most of what the bot reads, and reading it through serde_json (an
//! envelope, then its payload) was three quarters of the engine's time per line. This
//! reader walks the bytes once, borrows every string that has no escape, and builds the
//! same fields the general path builds. It reads strict JSON only and gives up (`None`)
//! on anything it does not expect: another event, `payload` before `event_name`, a
//! fractional `time`, a duplicate key, deep nesting, invalid JSON. Then the general path
//! (serde_json) reads the body and decides, so giving up is always safe; the tests hold
//! this reader to the general path's answer for every body it does take.

use std::borrow::Cow;

use super::{Fields, Payload, RawMessage, RawMeta};

/// Nesting deeper than this inside skipped values is left to the general path.
const MAX_DEPTH: usize = 32;

/// The fields of a `chatMsg` or `pm` envelope, or `None` for anything else.
pub(super) fn chat_envelope(text: &str) -> Option<Fields<'_>> {
    let mut s = Scanner { text, bytes: text.as_bytes(), at: 0 };
    let mut name: Option<Cow<'_, str>> = None;
    let mut payload = None;
    let (mut channel, mut timestamp, mut correlation_id) = (None, None, None);
    s.object(|s, key| {
        match key {
            "event_name" if name.is_none() => {
                let n = s.string()?;
                if !super::is_message_event(&n) {
                    return None;
                }
                name = Some(n);
            }
            // The payload is read in place, so the name must come first (it does).
            "payload" if payload.is_none() && name.is_some() => payload = Some(s.message()?),
            "channel" if channel.is_none() => channel = Some(s.optional_string()?),
            "timestamp" if timestamp.is_none() => timestamp = Some(s.optional_string()?),
            "correlation_id" if correlation_id.is_none() => correlation_id = Some(s.optional_string()?),
            "event_name" | "payload" | "channel" | "timestamp" | "correlation_id" => return None,
            _ => s.skip(0)?,
        }
        Some(())
    })?;
    s.ws();
    if s.at != s.bytes.len() {
        return None;
    }
    Some(Fields {
        name: name?,
        payload: Payload::Message(payload?),
        channel: channel.flatten(),
        timestamp: timestamp.flatten(),
        correlation_id: correlation_id.flatten(),
    })
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Non-zero when a byte of `x` is zero.
fn has_zero(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// Non-zero when a byte of `x` is below `n` (n ≤ 128).
fn has_below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn ws(&mut self) {
        while matches!(self.bytes.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// The next significant byte, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.ws();
        (self.bytes.get(self.at..self.at + word.len())? == word).then(|| self.at += word.len())
    }

    /// `null` (consumed) or not (nothing consumed).
    fn null(&mut self) -> bool {
        self.literal(b"null").is_some()
    }

    /// An object; `member` reads the value of each key.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &str) -> Option<()>) -> Option<()> {
        self.sequence(b'{', b'}', |s| {
            let key = s.string()?;
            s.eat(b':')?;
            member(s, &key)
        })
    }

    /// `open`, items separated by commas, `close`.
    fn sequence(&mut self, open: u8, close: u8, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(open)?;
        if self.eat(close).is_some() {
            return Some(());
        }
        loop {
            item(self)?;
            match self.peek()? {
                b',' => self.at += 1,
                b if b == close => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string: borrowed when it has no escape, decoded when it has.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.eat(b'"')?;
        let start = self.at;
        self.plain_run();
        match *self.bytes.get(self.at)? {
            b'"' => {
                self.at += 1;
                // Runs stop only at ASCII bytes, never inside a UTF-8 sequence.
                Some(Cow::Borrowed(&self.text[start..self.at - 1]))
            }
            b'\\' => {
                let mut out = String::from(&self.text[start..self.at]);
                loop {
                    match *self.bytes.get(self.at)? {
                        b'"' => {
                            self.at += 1;
                            return Some(Cow::Owned(out));
                        }
                        b'\\' => {
                            self.at += 1;
                            out.push(self.escape()?);
                        }
                        _ => {
                            let run = self.at;
                            self.plain_run();
                            if self.at == run {
                                return None; // a control character
                            }
                            out.push_str(&self.text[run..self.at]);
                        }
                    }
                }
            }
            _ => None, // a control character: not JSON
        }
    }

    /// Skips bytes that stand for themselves inside a string.
    fn plain_run(&mut self) {
        // Eight bytes at a time: the lowest flagged byte of a word is the first `"`, `\`
        // or control byte in it (flags above it may be spurious, never those below).
        while let Some(word) = self.bytes.get(self.at..self.at + 8) {
            let x = u64::from_le_bytes(word.try_into().unwrap_or_default());
            let hits =
                has_zero(x ^ (ONES * u64::from(b'"'))) | has_zero(x ^ (ONES * u64::from(b'\\'))) | has_below(x, 0x20);
            if hits != 0 {
                self.at += (hits.trailing_zeros() / 8) as usize;
                return;
            }
            self.at += 8;
        }
        while let Some(&b) = self.bytes.get(self.at) {
            if b == b'"' || b == b'\\' || b < 0x20 {
                break;
            }
            self.at += 1;
        }
    }

    /// The character an escape (after its backslash) stands for.
    fn escape(&mut self) -> Option<char> {
        let e = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let first = self.hex4()?;
                if (0xD800..0xDC00).contains(&first) {
                    // A surrogate pair; anything else is left to the general path.
                    if self.bytes.get(self.at..self.at + 2)? != b"\\u" {
                        return None;
                    }
                    self.at += 2;
                    let second = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&second) {
                        return None;
                    }
                    char::from_u32(0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00))?
                } else {
                    char::from_u32(first)? // a lone trailing surrogate is not a char
                }
            }
            _ => return None,
        })
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.bytes.get(self.at..self.at + 4)?;
        self.at += 4;
        digits.iter().try_fold(0u32, |n, &d| Some(n * 16 + char::from(d).to_digit(16)?))
    }

    /// `null`, or a string.
    fn optional_string(&mut self) -> Option<Option<Cow<'a, str>>> {
        if self.null() {
            return Some(None);
        }
        self.string().map(Some)
    }

    /// A non-negative integer of at most 19 digits, as the f64 serde_json makes of it.
    fn integer(&mut self) -> Option<f64> {
        self.ws();
        let start = self.at;
        let mut n = 0u64;
        while let Some(d) = self.bytes.get(self.at).filter(|b| b.is_ascii_digit()) {
            // 19 digits cannot overflow; longer numbers are refused below.
            n = n.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
            self.at += 1;
        }
        let len = self.at - start;
        let plain = (1..=19).contains(&len) && (len == 1 || self.bytes[start] != b'0');
        if !plain || matches!(self.bytes.get(self.at), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some(n as f64)
    }

    /// A chat/PM payload.
    fn message(&mut self) -> Option<RawMessage<'a>> {
        let (mut username, mut msg, mut meta, mut time, mut to) = (None, None, None, None, None);
        self.object(|s, key| {
            match key {
                "username" if username.is_none() => username = Some(s.string()?),
                "msg" if msg.is_none() => msg = Some(s.string()?),
                "meta" if meta.is_none() => meta = Some(if s.null() { None } else { Some(s.meta()?) }),
                "time" if time.is_none() => time = Some(if s.null() { None } else { Some(s.integer()?) }),
                "to" if to.is_none() => to = Some(s.optional_string()?),
                "username" | "msg" | "meta" | "time" | "to" => return None,
                _ => s.skip(1)?,
            }
            Some(())
        })?;
        Some(RawMessage {
            username: username?,
            msg: msg?,
            meta: meta.flatten(),
            time: time.flatten(),
            to: to.flatten(),
        })
    }

    /// A payload's `meta`.
    fn meta(&mut self) -> Option<RawMeta<'a>> {
        let (mut shadow, mut add_class) = (None, None);
        self.object(|s, key| {
            match key {
                "shadow" if shadow.is_none() => {
                    shadow = Some(if s.null() {
                        None
                    } else if s.literal(b"true").is_some() {
                        Some(true)
                    } else {
                        s.literal(b"false")?;
                        Some(false)
                    })
                }
                "addClass" if add_class.is_none() => add_class = Some(s.optional_string()?),
                "shadow" | "addClass" => return None,
                _ => s.skip(2)?,
            }
            Some(())
        })?;
        Some(RawMeta { shadow: shadow.flatten(), add_class: add_class.flatten() })
    }

    /// Skips any JSON value, checking that it is one.
    fn skip(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.object(|s, _| s.skip(depth + 1)),
            b'[' => self.sequence(b'[', b']', |s| s.skip(depth + 1)),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    /// Skips a number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        let digits = |s: &mut Self| {
            let start = s.at;
            while s.bytes.get(s.at).is_some_and(u8::is_ascii_digit) {
                s.at += 1;
            }
            s.at - start
        };
        if self.bytes.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        let leading_zero = self.bytes.get(self.at) == Some(&b'0');
        let n = digits(self);
        if n == 0 || (leading_zero && n > 1) {
            return None;
        }
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            if digits(self) == 0 {
                return None;
            }
        }
        if matches!(self.bytes.get(self.at), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.bytes.get(self.at), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if digits(self) == 0 {
                return None;
            }
        }
        Some(())
    }
}
