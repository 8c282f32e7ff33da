//! Circuit breakers: one channel's view of each provider's health.
//!
//! A provider whose requests keep failing transiently is skipped for `cooldown`, then one
//! trial request is let through (half-open); a success closes it. The state is per
//! channel, so one channel's traffic never changes another's behaviour. It only says
//! which provider to ask; retrying and falling back are the channel's.

use std::collections::BTreeMap;

use crate::config::Breaker;
use crate::time::Millis;

/// A provider's breaker.
#[derive(Debug, Clone, Copy, Default)]
struct BreakerState {
    failures: u32,
    /// Open until then; past it, one trial request is let through (half-open).
    open_until: Option<Millis>,
    /// A half-open trial is in flight.
    trial: bool,
}

/// The breakers of every provider a channel uses, by provider name.
#[derive(Debug, Clone, Default)]
pub(super) struct Breakers {
    by_provider: BTreeMap<String, BreakerState>,
}

impl Breakers {
    /// The first provider of `chain`, from index `from` on, whose breaker lets a request
    /// through at `now` (taking the half-open trial if that is what lets it through).
    pub fn pick(&mut self, chain: &[String], from: usize, now: Millis) -> Option<usize> {
        (from..chain.len()).find(|&i| {
            let b = self.by_provider.entry(chain[i].clone()).or_default();
            match b.open_until {
                None => true,
                Some(t) if now >= t && !b.trial => {
                    b.trial = true;
                    true
                }
                Some(_) => false,
            }
        })
    }

    /// Each provider of `chain` in words (`main ok`, `main failing, next try in 20s`).
    pub fn describe(&self, chain: &[String], now: Millis) -> Vec<String> {
        chain
            .iter()
            .map(|p| match self.by_provider.get(p) {
                Some(BreakerState { open_until: Some(t), .. }) if now < *t => {
                    format!("{p} failing, next try in {}s", t.since(now).as_secs().max(1))
                }
                Some(BreakerState { open_until: Some(_), .. }) => format!("{p} failing, trying again"),
                Some(b) if b.failures > 0 => format!("{p} ok ({} failures in a row)", b.failures),
                _ => format!("{p} ok"),
            })
            .collect()
    }

    /// Records a request's outcome: `reachable` is false for a transient failure.
    pub fn record(&mut self, provider: &str, cfg: Breaker, reachable: bool, now: Millis) {
        let b = self.by_provider.entry(provider.to_owned()).or_default();
        if reachable {
            *b = BreakerState::default();
            return;
        }
        b.failures += 1;
        if cfg.failures > 0 && (b.trial || b.failures >= cfg.failures) {
            b.open_until = Some(now.after(cfg.cooldown));
            b.trial = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_failing_provider_is_skipped_then_tried_once_after_the_cooldown() {
        let cfg = Breaker { failures: 2, cooldown: Duration::from_secs(30) };
        let chain = vec!["main".to_string(), "backup".to_string()];
        let mut b = Breakers::default();
        let t0 = Millis(1_000);
        assert_eq!(b.pick(&chain, 0, t0), Some(0));
        b.record("main", cfg, false, t0);
        assert_eq!(b.pick(&chain, 0, t0), Some(0), "one failure leaves it closed");
        b.record("main", cfg, false, t0);
        assert_eq!(b.pick(&chain, 0, t0), Some(1), "open: the next in the chain");
        let later = t0.after(cfg.cooldown);
        assert_eq!(b.pick(&chain, 0, later), Some(0), "half-open: one trial");
        assert_eq!(b.pick(&chain, 0, later), Some(1), "only one trial at a time");
        b.record("main", cfg, false, later);
        assert_eq!(b.pick(&chain, 0, later), Some(1), "a failed trial opens it again");
        b.record("main", cfg, true, later);
        assert_eq!(b.pick(&chain, 0, later), Some(0), "a success closes it");
    }
}
