//! `llm-chatbot check`: the summary of a valid config, and with `--explain` every
//! channel's effective settings and the config's warnings. Rendering only: validation is
//! `Config::parse`'s.

use std::path::Path;

use chatbot_core::Config;

pub fn summary(path: &Path, cfg: &Config) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "{}: OK", path.display());
    let _ = writeln!(s, "  bot: {} (aliases: {})", cfg.bot.name, list(&cfg.bot.aliases));
    let _ = writeln!(
        s,
        "  nats: {} ({:?} subjects, {:?} commands)",
        cfg.nats.servers.join(", "),
        cfg.nats.subjects,
        cfg.nats.commands
    );
    for (name, p) in &cfg.llm.providers {
        let _ = writeln!(
            s,
            "  provider {name}: {} at {} (key from {})",
            p.model,
            p.base_url,
            p.api_key_env.as_deref().unwrap_or("nowhere: no key")
        );
    }
    if cfg.ha.enabled {
        let _ = writeln!(
            s,
            "  ha: leases in JetStream bucket {} (ttl {}), instance {}",
            cfg.ha.bucket,
            humantime::format_duration(cfg.ha.lease_ttl),
            if cfg.ha.instance.is_empty() { "hostname-pid" } else { cfg.ha.instance.as_str() }
        );
    }
    let m = &cfg.moderation;
    if m.enabled {
        let _ = writeln!(
            s,
            "  moderation: `{}{} help` from rank {} and up (answered by PM)",
            m.prefix, cfg.bot.name, m.min_rank
        );
    } else {
        let _ = writeln!(s, "  moderation: off");
    }
    let _ = writeln!(s, "  channels: {}", cfg.channels.len());
    for ch in &cfg.channels {
        let t = &ch.triggers;
        let mut on = Vec::new();
        if t.mention.enabled {
            on.push("mention".to_string());
        }
        if !t.keywords.is_empty() {
            on.push(format!("{} keyword group(s)", t.keywords.len()));
        }
        if t.pm_enabled {
            on.push("pm".into());
        }
        if t.media_change.enabled {
            on.push("media_change".into());
        }
        if t.contextual.enabled {
            on.push(format!("contextual every {}", humantime::format_duration(t.contextual.every)));
        }
        let _ = writeln!(
            s,
            "    {}: provider {}; triggers: {}; at most {}/{} per user, {}/{} per channel",
            ch.name,
            ch.providers.join(" → "),
            list(&on),
            ch.limits.per_user.max,
            humantime::format_duration(ch.limits.per_user.window),
            ch.limits.per_channel.max,
            humantime::format_duration(ch.limits.per_channel.window),
        );
    }
    s
}

/// `check --explain`: every channel's effective settings, then warnings.
pub fn explain_config(cfg: &Config) -> String {
    use std::fmt::Write;
    let d = |x: std::time::Duration| humantime::format_duration(x).to_string();
    let mut s = String::new();
    for ch in &cfg.channels {
        let (t, l, r) = (&ch.triggers, &ch.limits, &ch.response);
        let _ = writeln!(s, "\nchannel {}:", ch.name);
        let _ = writeln!(s, "  provider chain: {}", ch.providers.join(" → "));
        let _ = writeln!(s, "  context: {} lines, {}", ch.context.max_messages, d(ch.context.max_age));
        let _ = writeln!(
            s,
            "  mention: {} (p={}, cooldown {}); pm: {}; media_change: {} (p={}); contextual: {} (every {}, ≥{} new lines, p={})",
            t.mention.enabled, t.mention.probability, d(t.mention.cooldown), t.pm_enabled, t.media_change.enabled,
            t.media_change.probability, t.contextual.enabled, d(t.contextual.every), t.contextual.min_new_messages, t.contextual.probability
        );
        for k in &t.keywords {
            let _ = writeln!(s, "  keywords {:?}: p={}, cooldown {}", k.words, k.probability, d(k.cooldown));
        }
        let _ = writeln!(
            s,
            "  limits: {}/{} per user, {}/{} per channel, global cooldown {}, media cooldown {}, {} in flight, spacing {}",
            l.per_user.max, d(l.per_user.window), l.per_channel.max, d(l.per_channel.window), d(l.global_cooldown),
            d(l.media_change_cooldown), l.max_in_flight, d(l.send_spacing)
        );
        let _ = writeln!(
            s,
            "  response: ≤{} UTF-16 units × {} part(s), markdown stripped: {}, {} block pattern(s), {} block keyword(s), dedupe {}",
            r.max_length, r.max_parts, r.strip_markdown, r.block_patterns.len(), r.block_keywords.len(), r.dedupe_window
        );
        let (g, p, b) = (&ch.loop_guard, &ch.penalty, &ch.budget);
        let _ = writeln!(
            s,
            "  loop guard: {} exchanges / {}, backoff {}; penalty {}..{}; budget {}/h {}/day (PMs {})",
            g.max_exchanges,
            d(g.window),
            d(g.backoff),
            d(p.base),
            d(p.max),
            b.tokens_per_hour,
            b.tokens_per_day,
            if b.include_pms { "included" } else { "exempt" }
        );
        if !ch.ignore_users.is_empty() {
            let _ = writeln!(s, "  ignores: {}", ch.ignore_users.join(", "));
        }
    }
    let warnings = cfg.warnings(|var| std::env::var_os(var).is_some());
    if !warnings.is_empty() {
        let _ = writeln!(s, "\nwarnings:");
        for w in warnings {
            let _ = writeln!(s, "  - {w}");
        }
    }
    s
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}
