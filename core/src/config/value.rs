//! Value types that validate themselves while deserializing: durations, probabilities,
//! lengths, regexes, bucket names and the forbidden inline secrets. Because the checks run
//! inside serde, serde_yaml reports them with the line, column and key path of the value.
//! Nothing here knows about layering or defaults.

use std::fmt;
use std::time::Duration;

use regex::Regex;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration written as `500ms`, `30s`, `5m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Dur(pub(super) Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|e| de::Error::custom(format!("invalid duration `{s}` ({e}); write e.g. 500ms, 30s, 5m, 1h")))
    }
}

/// A duration that must be longer than zero (sliding windows, participation period).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PositiveDur(pub(super) Duration);

impl<'de> Deserialize<'de> for PositiveDur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Dur(v) = Dur::deserialize(d)?;
        if v.is_zero() {
            return Err(de::Error::custom("must be longer than zero"));
        }
        Ok(PositiveDur(v))
    }
}

/// A probability in `0..=1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Probability(pub(super) f64);

impl<'de> Deserialize<'de> for Probability {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !(0.0..=1.0).contains(&v) {
            return Err(de::Error::custom(format!("probability {v} is outside 0..=1")));
        }
        Ok(Probability(v))
    }
}

/// `max_length`: at least 20 UTF-16 code units, so a reply can say something.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct MaxLength(pub(super) usize);

impl<'de> Deserialize<'de> for MaxLength {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if v < 20 {
            return Err(de::Error::custom(format!("max_length {v} is below the minimum of 20")));
        }
        Ok(MaxLength(v.min(1_000_000) as usize))
    }
}

/// A regular expression, compiled at load time so a bad one is a config error.
#[derive(Debug, Clone)]
pub struct Pattern(pub Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Regex::new(&s)
            .map(Pattern)
            .map_err(|e| de::Error::custom(format!("invalid regex `{s}`: {}", first_line(&e.to_string()))))
    }
}

pub(super) fn first_line(s: &str) -> &str {
    s.lines().last().unwrap_or(s).trim()
}

/// Deserializes successfully from nothing: its presence is the error. Used for
/// `api_key:` so a secret pasted into the file is refused with a pointer to the fix.
#[derive(Debug, Clone)]
pub(super) struct Forbidden;

impl<'de> Deserialize<'de> for Forbidden {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(de::Error::custom("keys come from the environment: use api_key_env"))
    }
}

/// `provider: main` or `provider: [main, backup]`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ProviderList(pub(super) Vec<String>);

impl<'de> Deserialize<'de> for ProviderList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ProviderList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a provider name or a list of provider names")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ProviderList(vec![v.to_owned()]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    out.push(name);
                }
                if out.is_empty() {
                    return Err(de::Error::custom("the provider list is empty"));
                }
                Ok(ProviderList(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A JetStream key-value bucket name: letters, digits, `-` and `_`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BucketName(pub(super) String);

impl<'de> Deserialize<'de> for BucketName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(de::Error::custom(format!("invalid bucket name `{s}`: use letters, digits, `-` and `_` only")));
        }
        Ok(BucketName(s))
    }
}

/// `moderation.prefix`: what starts a command line (`!` in `!kryten mute`): 1 to 8
/// characters, no whitespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CommandPrefix(pub(super) String);

impl<'de> Deserialize<'de> for CommandPrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() || s.chars().count() > 8 || s.chars().any(char::is_whitespace) {
            return Err(de::Error::custom(format!(
                "invalid command prefix `{s}`: 1 to 8 characters without spaces, e.g. `!`"
            )));
        }
        Ok(CommandPrefix(s))
    }
}

/// A CyTube rank (0 guest, 1 member, 2 moderator, 3 channel admin, 4 owner, 255 site
/// admin): a number from 0 to 255.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Rank(pub(super) f64);

impl<'de> Deserialize<'de> for Rank {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !(0.0..=255.0).contains(&v) {
            return Err(de::Error::custom(format!(
                "rank {v} is outside 0..=255 (CyTube: 1 member, 2 moderator, 3 admin, 4 owner)"
            )));
        }
        Ok(Rank(v))
    }
}

/// An IANA time zone name (`UTC`, `Europe/Paris`), known to the bundled tz database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TimeZoneName(pub(super) String);

impl<'de> Deserialize<'de> for TimeZoneName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        jiff::tz::db().get(s.trim()).map_err(|_| {
            de::Error::custom(format!(
                "unknown time zone `{s}`: use an IANA name such as UTC, Europe/Paris, America/New_York"
            ))
        })?;
        Ok(TimeZoneName(s.trim().to_owned()))
    }
}

/// A lease TTL: at least 1 s (renewals go out every third of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LeaseTtl(pub(super) Duration);

impl<'de> Deserialize<'de> for LeaseTtl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Dur(v) = Dur::deserialize(d)?;
        if v < Duration::from_secs(1) {
            return Err(de::Error::custom("must be at least 1s (renewals go out every third of it)"));
        }
        Ok(LeaseTtl(v))
    }
}

/// Stream replicas of the lease buckets: 1 to 5 (JetStream's limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Replicas(pub(super) usize);

impl<'de> Deserialize<'de> for Replicas {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u64::deserialize(d)? {
            n @ 1..=5 => Ok(Replicas(n as usize)),
            _ => Err(de::Error::custom("must be 1 to 5 (JetStream replicates a stream on at most 5 servers), or null for one per cluster node up to 3")),
        }
    }
}

/// Like [`Forbidden`], for NATS secrets.
#[derive(Debug)]
pub(super) struct ForbiddenSecret;

impl<'de> Deserialize<'de> for ForbiddenSecret {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(de::Error::custom("secrets come from the environment: use password_env / token_env"))
    }
}

pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Dur::deserialize(d).map(|d| d.0)
}
