//! Time as the engine sees it: milliseconds since the Unix epoch, passed in by the caller.
//!
//! The engine never reads a clock. The runtime derives `Millis` from the wall clock once
//! and advances it monotonically; the simulator takes it from corpus timestamps. Using
//! epoch milliseconds (not `std::time::Instant`) makes CyTube's `payload.time` directly
//! comparable with `now`, which the stale-backlog check needs.

use std::fmt;
use std::time::Duration;

/// Milliseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    /// The earliest representable time.
    pub const ZERO: Millis = Millis(0);

    /// `self + d`, saturating at the far future.
    pub fn after(self, d: Duration) -> Millis {
        Millis(self.0.saturating_add(d.as_millis().min(u64::MAX as u128) as u64))
    }

    /// `self - d`, saturating at the epoch.
    pub fn before(self, d: Duration) -> Millis {
        Millis(self.0.saturating_sub(d.as_millis().min(u64::MAX as u128) as u64))
    }

    /// Time elapsed from `earlier` to `self` (zero when `earlier` is later).
    pub fn since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// Parses an RFC 3339 / Python `isoformat()` timestamp such as
    /// `2026-01-15T10:30:00.123456+00:00` (what Kryten-Robot puts in `timestamp`).
    ///
    /// Hand-written because it is the one date function the engine needs; a date crate
    /// would be pulled in for this alone.
    pub fn parse_rfc3339(s: &str) -> Option<Millis> {
        let b = s.trim().as_bytes();
        // Fixed-width decimal field; every byte must be a digit (no sign, no space).
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            let part = b.get(r)?;
            if part.is_empty() {
                return None;
            }
            part.iter().try_fold(0i64, |n, &d| d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0')))
        };
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
            return None;
        }
        if !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
            return None;
        }
        let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
            return None;
        }
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        let mut i = 19;
        let mut millis = 0i64;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                if i - start < 3 {
                    millis = millis * 10 + i64::from(b[i] - b'0');
                }
                i += 1;
            }
            if i == start {
                return None;
            }
            for _ in (i - start)..3 {
                millis *= 10;
            }
        }
        let offset_minutes = match b.get(i) {
            None => 0,
            Some(b'Z' | b'z') if i + 1 == b.len() => 0,
            Some(&sign @ (b'+' | b'-')) if b.len() == i + 6 && b[i + 3] == b':' => {
                let m = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
                if sign == b'+' {
                    m
                } else {
                    -m
                }
            }
            _ => return None,
        };
        let days = days_from_civil(year, month, day);
        let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
        let ms = secs.checked_mul(1000)?.checked_add(millis)?;
        u64::try_from(ms).ok().map(Millis)
    }
}

impl Millis {
    /// Formats as Python's `datetime.isoformat()` for UTC
    /// (`2026-01-15T10:30:00.123000+00:00`), the shape Kryten writes in timestamps.
    pub fn to_rfc3339(self) -> String {
        let secs = self.0 / 1000;
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(days as i64);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}+00:00",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            (self.0 % 1000) * 1000
        )
    }
}

/// The date of a day count since 1970-01-01 (inverse of `days_from_civil`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl fmt::Display for Millis {
    /// Formats as `HH:MM:SS.mmm` UTC of the day, which is what reports and logs need.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0 % 1000;
        let s = self.0 / 1000;
        write!(f, "{:02}:{:02}:{:02}.{:03}", (s / 3600) % 24, (s / 60) % 60, s % 60, ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_isoformat_with_offset_parses_to_epoch_millis() {
        assert_eq!(Millis::parse_rfc3339("2026-01-15T10:30:00.123456+00:00"), Some(Millis(1_768_473_000_123)));
    }

    #[test]
    fn zulu_and_offsets_are_honoured() {
        let z = Millis::parse_rfc3339("2026-11-26T01:12:56Z").unwrap();
        let plus = Millis::parse_rfc3339("2026-11-26T02:12:56+01:00").unwrap();
        assert_eq!(z, plus);
        assert_eq!(Millis::parse_rfc3339("1970-01-01T00:00:00.5Z"), Some(Millis(500)));
    }

    #[test]
    fn garbage_timestamps_are_rejected_not_guessed() {
        for bad in ["", "yesterday", "2026-13-01T00:00:00Z", "2026-01-01T00:00:00+0000", "2026-01-01T00:00:00.Z"] {
            assert_eq!(Millis::parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn formatting_round_trips_through_parsing() {
        for ms in [0, 1_768_473_000_123, 951_782_400_000, 4_107_542_399_999] {
            let text = Millis(ms).to_rfc3339();
            assert_eq!(Millis::parse_rfc3339(&text), Some(Millis(ms)), "{text}");
        }
        assert_eq!(Millis(1_768_473_000_123).to_rfc3339(), "2026-01-15T10:30:00.123000+00:00");
    }

    #[test]
    fn display_shows_time_of_day() {
        assert_eq!(Millis(1_768_473_000_123).to_string(), "10:30:00.123");
    }
}
