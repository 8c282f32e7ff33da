//! Which events a channel has already seen, so a redelivered or replayed event is never
//! answered twice.
//!
//! An event is known by its correlation id and, for chat and PMs, by its content (user,
//! CyTube time, text): Kryten gives a redelivery the same id, and CyTube's join backlog
//! the same content. The set is bounded (`SEEN_EVENTS`, oldest forgotten first). It never
//! decides anything else.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};

use crate::event::Message;

/// Event keys remembered per channel.
const SEEN_EVENTS: usize = 1024;

/// Recently seen event keys, bounded.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    order: VecDeque<u64>,
    set: HashSet<u64, Scramble>,
}

impl Seen {
    /// An empty set whose hashing is keyed by `secret`.
    pub fn new(secret: u64) -> Seen {
        Seen { order: VecDeque::new(), set: HashSet::with_hasher(Scramble(secret)) }
    }

    /// Records the event's identity; false when it (by id or by content) was seen before.
    pub fn first_sighting(&mut self, correlation_id: Option<&str>, msg: Option<&Message<'_>>) -> bool {
        let by_content = msg.and_then(|m| m.time.map(|t| key_of(("msg", &m.user, t, &m.text))));
        let mut fresh = true;
        for key in [correlation_id.map(id_key), by_content].into_iter().flatten() {
            fresh &= self.insert(key);
        }
        fresh
    }

    /// Marks an event answered elsewhere (by a previous lease owner) as seen.
    pub fn mark_answered(&mut self, correlation_id: &str) {
        self.insert(id_key(correlation_id));
    }

    /// Records `key`; false when it was already there.
    fn insert(&mut self, key: u64) -> bool {
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > SEEN_EVENTS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

fn id_key(correlation_id: &str) -> u64 {
    key_of(("id", correlation_id))
}

/// Hashes for a set of keys that are hashes already: instead of hashing them again, each
/// is mixed with a secret. Anyone can compute a chat line's key, so without the secret,
/// crafted lines could all be made to land in one bucket.
#[derive(Debug, Clone, Copy)]
struct Scramble(u64);

impl BuildHasher for Scramble {
    type Hasher = Scrambler;
    fn build_hasher(&self) -> Scrambler {
        Scrambler(self.0)
    }
}

struct Scrambler(u64);

impl Hasher for Scrambler {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).rotate_left(8);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
    fn finish(&self) -> u64 {
        fmix64(self.0)
    }
}

/// MurmurHash3's 64-bit finaliser: a bijection that spreads every input bit.
pub(super) fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A stable 64-bit key of `parts` (SipHash with fixed keys).
pub(super) fn key_of(parts: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::time::Millis;

    fn msg(text: &str) -> Message<'static> {
        Message {
            user: Cow::Borrowed("alice"),
            text: Cow::Owned(text.to_owned()),
            time: Some(Millis(5)),
            shadow: false,
            action: false,
        }
    }

    #[test]
    fn an_event_is_recognised_by_id_or_by_content() {
        let mut seen = Seen::new(7);
        assert!(seen.first_sighting(Some("a"), Some(&msg("hi"))));
        assert!(!seen.first_sighting(Some("a"), None), "same correlation id");
        assert!(!seen.first_sighting(Some("b"), Some(&msg("hi"))), "same user, time and text");
        assert!(seen.first_sighting(Some("c"), Some(&msg("hello"))));
        seen.mark_answered("d");
        assert!(!seen.first_sighting(Some("d"), None), "answered by a previous owner");
    }

    #[test]
    fn the_set_forgets_the_oldest_beyond_its_bound() {
        let mut seen = Seen::new(1);
        for i in 0..=SEEN_EVENTS {
            assert!(seen.first_sighting(Some(&format!("e{i}")), None));
        }
        assert_eq!(seen.order.len(), SEEN_EVENTS);
        assert!(seen.first_sighting(Some("e0"), None), "the oldest was forgotten");
        assert!(!seen.first_sighting(Some(&format!("e{SEEN_EVENTS}")), None));
    }
}
