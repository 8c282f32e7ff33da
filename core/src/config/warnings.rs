//! Risky but valid settings, for `check --explain`: each warning names the channel (or
//! provider) and why the setting deserves a second look. Never refuses a config.

use std::time::Duration;

use super::Config;

impl Config {
    /// Risky settings worth a second look (`check --explain`). `env_is_set` tells whether
    /// an environment variable is set (the core never reads the environment itself).
    pub fn warnings(&self, env_is_set: impl Fn(&str) -> bool) -> Vec<String> {
        const COMMON: &[&str] = &[
            "the", "a", "and", "is", "it", "lol", "lmao", "hi", "hey", "hello", "yes", "no", "ok", "what", "why",
            "you", "i", "me", "this", "that", "good", "nice", "gg", "wow",
        ];
        let mut w = Vec::new();
        for (name, p) in &self.llm.providers {
            if let Some(var) = &p.api_key_env {
                if !env_is_set(var) {
                    w.push(format!("provider {name}: {var} is not set in this environment"));
                }
            }
        }
        for ch in &self.channels {
            let (l, n) = (&ch.limits, &ch.name);
            if l.per_user.max >= 30 && l.per_channel.max >= 60 && l.global_cooldown.is_zero() {
                w.push(format!(
                    "{n}: limits are effectively off (per_user {}, per_channel {}, no global cooldown)",
                    l.per_user.max, l.per_channel.max
                ));
            }
            if l.send_spacing < Duration::from_secs(1) {
                w.push(format!("{n}: send_spacing below 1s: CyTube drops faster lines unless the bot is a moderator"));
            }
            for k in &ch.triggers.keywords {
                for word in &k.words {
                    if k.probability >= 1.0 && k.cooldown.is_zero() && COMMON.contains(&word.to_lowercase().as_str()) {
                        w.push(format!(
                            "{n}: keyword `{word}` is common and fires every time (probability 1, no cooldown)"
                        ));
                    }
                }
            }
            if ch.response.max_length > 320 {
                w.push(format!(
                    "{n}: max_length {} is above CyTube's default of 320: the channel's server must allow it",
                    ch.response.max_length
                ));
            }
            if ch.triggers.contextual.enabled && ch.triggers.contextual.every < Duration::from_secs(60) {
                w.push(format!("{n}: contextual checks more often than once a minute cost an LLM call each"));
            }
        }
        w
    }
}
